//! The lifecycle part of storage (issue #10): access key lifecycle and
//! lockout state, revoking agents and enrollment tokens, deregistering
//! servers, master-key rotation, and reading and pruning the audit trail.
//! Its own trait beside [`Store`](super::Store), implemented for SQLite in
//! `sqlite_lifecycle.rs`; tests are in the conformance style below.

use chrono::{DateTime, Utc};

use super::{AuditEntry, Role, StoreResult};

/// An access key as `ecsd admin access-key list` shows it (never the SK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyInfo {
    pub ak: String,
    pub project_id: String,
    pub role: Role,
    pub enabled: bool,
    pub created: DateTime<Utc>,
    /// Locked after too many consecutive failed authentications, until then.
    pub locked_until: Option<DateTime<Utc>>,
    /// Consecutive failed authentications since the last success or lock.
    pub failures: u32,
}

/// What authentication must know about a key before any expensive work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGate {
    pub enabled: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub failures: u32,
}

/// An enrollment (or re-key) token as listed: never the token or its hash,
/// only a short id (a prefix of the hash) to revoke it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollTokenInfo {
    pub id: String,
    pub project_id: String,
    pub uses_left: i64,
    pub expires: DateTime<Utc>,
    pub created: DateTime<Utc>,
    /// Set for a re-key token: the one server it re-keys.
    pub server_id: Option<String>,
}

/// How long a listed token id is (hex characters of the token's SHA-256).
pub const TOKEN_ID_LEN: usize = 12;

/// What revoking a token by id prefix did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    One(String),
    None,
    /// The prefix names several tokens; nothing was revoked.
    Ambiguous(usize),
}

/// One stored audit record and its trace id.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub trace_id: i64,
    pub entry: AuditEntry,
    pub rating: TraceRating,
}

/// CTS `trace_rating`: normal (succeeded), warning (refused or denied),
/// incident (failed inside ecsd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceRating {
    Normal,
    Warning,
    Incident,
}

impl TraceRating {
    pub const ALL: [TraceRating; 3] = [
        TraceRating::Normal,
        TraceRating::Warning,
        TraceRating::Incident,
    ];

    /// The rating of a call from its outcome: no error code is a success;
    /// a 5xx status is an incident; any other error is a warning.
    pub fn of(error_code: Option<&str>, http_status: Option<u16>) -> TraceRating {
        match (error_code, http_status) {
            (_, Some(s)) if s >= 500 => TraceRating::Incident,
            (None, _) => TraceRating::Normal,
            (Some(_), _) => TraceRating::Warning,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TraceRating::Normal => "normal",
            TraceRating::Warning => "warning",
            TraceRating::Incident => "incident",
        }
    }

    pub fn parse(s: &str) -> Option<TraceRating> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Filters of `GET /v3/{project_id}/traces`, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub project_id: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// A user name, user id, or credential id (AK).
    pub user: Option<String>,
    pub action: Option<String>,
    pub resource_id: Option<String>,
    pub ratings: Option<Vec<TraceRating>>,
    /// Only records older than this trace id (the previous page's marker).
    pub before: Option<i64>,
    pub limit: u32,
}

/// The lockout rule (Huawei's gateway: more than five consecutive failures
/// lock the AK for five minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    pub max_failures: u32,
    pub lock: chrono::Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            max_failures: 5,
            lock: chrono::Duration::minutes(5),
        }
    }
}

impl LockPolicy {
    /// After one more failure: the new consecutive-failure count and, when
    /// the key locks now, until when (the count then starts again at 0).
    pub fn after_failure(&self, failures: u32, now: DateTime<Utc>) -> (u32, Option<DateTime<Utc>>) {
        let n = failures.saturating_add(1);
        if n >= self.max_failures {
            (0, Some(now + self.lock))
        } else {
            (n, None)
        }
    }
}

impl KeyGate {
    /// The key is locked at `now`.
    pub fn locked(&self, now: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }
}

/// Re-encrypts one stored secret: (owner, old blob) → new blob.
pub type Reseal = dyn Fn(&str, &[u8]) -> Result<Vec<u8>, String> + Send + Sync;

#[async_trait::async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    /// Access keys, of one project or all, oldest first.
    async fn list_access_keys(&self, project_id: Option<&str>) -> StoreResult<Vec<AccessKeyInfo>>;
    /// Enables or disables a key; false if there is no such key.
    async fn set_access_key_enabled(&self, ak: &str, enabled: bool) -> StoreResult<bool>;
    /// Deletes a key for good; false if there is no such key.
    async fn delete_access_key(&self, ak: &str) -> StoreResult<bool>;
    /// Clears a key's lock and failure count; false if there is no such key.
    async fn unlock_access_key(&self, ak: &str) -> StoreResult<bool>;
    /// The key's state for authentication; `None` for an unknown key.
    async fn key_gate(&self, ak: &str) -> StoreResult<Option<KeyGate>>;
    /// Counts a failed authentication (atomically, so replicas sharing the
    /// database count together); returns the lock's end if the key is
    /// locked now.
    async fn record_auth_failure(
        &self,
        ak: &str,
        now: DateTime<Utc>,
        policy: LockPolicy,
    ) -> StoreResult<Option<DateTime<Utc>>>;
    /// A success: the consecutive-failure count starts again.
    async fn reset_auth_failures(&self, ak: &str) -> StoreResult<()>;

    /// Removes a server: its agent credential, open work, tokens and
    /// challenges go with it (its audit records stay). Returns its project,
    /// or `None` if there is no such server.
    async fn deregister_server(&self, server_id: &str) -> StoreResult<Option<String>>;
    /// Forgets the server's agent credential (the agent must enroll again);
    /// false if there is no such server.
    async fn revoke_agent(&self, server_id: &str) -> StoreResult<bool>;
    /// Enrollment and re-key tokens still usable at `now`, oldest first.
    async fn list_enroll_tokens(
        &self,
        project_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<EnrollTokenInfo>>;
    /// Deletes the token whose id starts with `id_prefix`.
    async fn revoke_enroll_token(&self, id_prefix: &str) -> StoreResult<Revoked>;

    /// Re-encrypts every secret sealed under the master key in one
    /// transaction (all or nothing); returns how many.
    async fn reseal_all(&self, reseal: Box<Reseal>) -> StoreResult<usize>;

    /// One page of audit records, newest first.
    async fn list_audit(&self, q: AuditQuery) -> StoreResult<Vec<AuditRecord>>;
    /// Deletes at most `batch` records older than `before`; returns how many.
    async fn prune_audit(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize>;
    /// Deletes at most `batch` finished reset requests (every target
    /// APPLIED, FAILED or SUPERSEDED) created before `before`, with their
    /// targets, in one transaction; returns how many requests. A request
    /// with an open target is never deleted. A server whose last reset is
    /// deleted reports no last reset.
    async fn prune_resets(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize>;
    /// Deletes at most `batch` finished power jobs (every sub-job SUCCESS or
    /// FAIL) begun before `before`, with their sub-jobs, in one transaction;
    /// returns how many jobs. A job with an open sub-job is never deleted.
    async fn prune_jobs(&self, before: DateTime<Utc>, batch: u32) -> StoreResult<usize>;
    /// Checkpoints the write-ahead log and truncates it (if the backend has
    /// one; readers in the way leave it for the next round).
    async fn checkpoint(&self) -> StoreResult<()>;
    /// Gives up to `max_pages` free pages (left by pruning) back to the file
    /// system, in one transaction; returns how many. SQLite: `PRAGMA
    /// incremental_vacuum(N)` on an `auto_vacuum = INCREMENTAL` database
    /// (0 on an older one until `ecsd admin vacuum`); the file itself
    /// shrinks at the next checkpoint.
    async fn reclaim_pages(&self, max_pages: u32) -> StoreResult<usize>;
    /// Rewrites the database compactly and (SQLite) turns on `auto_vacuum =
    /// INCREMENTAL` for good: `ecsd admin vacuum`, once, for a database made
    /// before auto_vacuum was set. Holds the write lock throughout.
    async fn vacuum(&self) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fifth_consecutive_failure_locks_for_five_minutes() {
        let p = LockPolicy::default();
        let now = Utc::now();
        let mut n = 0;
        for _ in 0..4 {
            let (next, lock) = p.after_failure(n, now);
            assert_eq!(lock, None);
            n = next;
        }
        assert_eq!(n, 4);
        let (n, lock) = p.after_failure(n, now);
        assert_eq!((n, lock), (0, Some(now + chrono::Duration::minutes(5))));
    }

    #[test]
    fn a_lock_ends_by_time() {
        let now = Utc::now();
        let g = KeyGate {
            enabled: true,
            locked_until: Some(now + chrono::Duration::seconds(1)),
            failures: 0,
        };
        assert!(g.locked(now));
        assert!(!g.locked(now + chrono::Duration::seconds(1)));
        assert!(
            !KeyGate {
                locked_until: None,
                ..g
            }
            .locked(now)
        );
    }

    #[test]
    fn ratings_follow_the_outcome() {
        assert_eq!(TraceRating::of(None, None), TraceRating::Normal);
        assert_eq!(TraceRating::of(None, Some(204)), TraceRating::Normal);
        assert_eq!(
            TraceRating::of(Some("APIGW.0301"), Some(401)),
            TraceRating::Warning
        );
        assert_eq!(
            TraceRating::of(Some("Ecs.0114"), None),
            TraceRating::Warning
        );
        assert_eq!(
            TraceRating::of(Some("Common.0001"), Some(500)),
            TraceRating::Incident
        );
        for r in TraceRating::ALL {
            assert_eq!(TraceRating::parse(r.as_str()), Some(r));
        }
        assert_eq!(TraceRating::parse("fail"), None);
    }
}
