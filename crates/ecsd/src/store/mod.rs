//! The storage interface. The API and the agent service speak only to the
//! [`Store`] trait (and its siblings [`IdentityStore`], [`AuthzStore`],
//! [`LifecycleStore`]); `sqlite` is the embedded implementation, `postgres`
//! the shared one (several replicas), both run by the same conformance suites.

pub mod authz;
pub mod authz_conformance;
pub mod conformance;
pub mod escrow;
pub mod escrow_conformance;
pub mod identity;
#[cfg(test)]
pub mod identity_conformance;
pub mod lifecycle;
pub mod lifecycle_conformance;
pub mod page_starts;
pub mod sqlite;
mod sqlite_authz;
mod sqlite_escrow;
pub mod sqlite_group;
mod sqlite_identity;
mod sqlite_lifecycle;

pub mod postgres;
mod postgres_authz;
mod postgres_escrow;
mod postgres_identity;
mod postgres_lifecycle;
mod postgres_schema;

use chrono::{DateTime, Utc};
use ecs_policy::OsType;

pub use crate::config::DuplicateMachineId;

pub use escrow::EscrowStore;
pub use identity::IdentityStore;
pub use lifecycle::LifecycleStore;
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, explain_open_error};

pub use authz::AuthzStore;

/// The store reports the domain's errors: `Storage` (with its source),
/// `NotFound`, `Busy` (with the server ids), `Conflict`.
pub use crate::domain::Error as StoreError;

pub type StoreResult<T> = Result<T, StoreError>;

/// What an access key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every API call of its project.
    Admin,
    /// Read-only calls; mutating calls answer 403 `APIGW.0302`.
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "readonly",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "readonly" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct AccessKey {
    pub ak: String,
    pub project_id: String,
    /// The SK, encrypted under the master key with the AK as associated data.
    pub sk_sealed: Vec<u8>,
    pub role: Role,
}

pub use ecs_api::{JobStatus, ResetState, ServerStatus};

#[derive(Debug, Clone)]
pub struct Server {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub os_type: OsType,
    /// Huawei status: ACTIVE, SHUTOFF, REBOOT, HARD_REBOOT, ...
    pub status: ServerStatus,
    /// The agent's X25519 public key; `None` = no plug-in enrolled.
    pub agent_public_key: Option<Vec<u8>>,
    pub agent_version: Option<String>,
    pub agent_last_seen: Option<DateTime<Utc>>,
    pub boot_id: Option<String>,
    pub hostname: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// The last reset request that targeted this server and its state there.
    pub last_reset: Option<(String, ResetState)>,
    /// Huawei task state (`rebooting`, `powering-off`, ...), if any.
    pub task_state: Option<String>,
    /// IP addresses the agent reported from.
    pub addresses: Vec<String>,
    pub tags: Vec<String>,
    /// Something can power this server on (see `Heartbeat::power_driver`).
    pub power_driver: bool,
}

/// A new server registered by an operator (`ecsd admin server register`).
#[derive(Debug, Clone)]
pub struct NewServer {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub os_type: OsType,
    pub agent_public_key: Option<Vec<u8>>,
}

/// An accepted reset, written in one transaction with its audit record.
#[derive(Debug, Clone)]
pub struct NewReset {
    pub request_id: String,
    pub project_id: String,
    pub apply_now: bool,
    pub created: DateTime<Utc>,
    /// (server id, sealed password) in request order.
    pub targets: Vec<(String, Vec<u8>)>,
    pub audit: AuditEntry,
}

#[derive(Debug, Clone)]
pub struct TargetState {
    pub server_id: String,
    pub state: ResetState,
    pub reason: Option<String>,
    pub updated: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ResetOutcome {
    pub request_id: String,
    pub project_id: String,
    pub apply_now: bool,
    pub created: DateTime<Utc>,
    pub targets: Vec<TargetState>,
}

/// One audit record (contract §3.5). Never holds a password.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub request_id: String,
    pub project_id: String,
    pub actor: String,
    pub action: String,
    pub servers: Vec<String>,
    pub dry_run: bool,
    pub outcome: String,
    pub source: String,
    /// The IAM user behind the credential (`actor`), when there is one.
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    /// The error code of a refused or failed call; `None` for a success.
    pub error_code: Option<String>,
    /// The HTTP status answered, when known.
    pub http_status: Option<u16>,
}

/// What an agent sends to enroll (contract §4).
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub machine_id: String,
    pub hostname: String,
    pub os_type: OsType,
    pub public_key: Vec<u8>,
    pub agent_version: String,
    pub credential_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub server_id: String,
    pub project_id: String,
    /// True when the machine had enrolled before (same project and machine id).
    pub re_enrolled: bool,
}

/// The newest undelivered or unapplied reset for a server.
#[derive(Debug, Clone)]
pub struct Work {
    pub request_id: String,
    pub sealed: Vec<u8>,
    pub apply_now: bool,
    /// The server's work sequence number of this item.
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub agent_version: String,
    pub boot_id: String,
    pub uptime_secs: u64,
    /// The address the heartbeat came from (shown in `addresses`).
    pub address: Option<String>,
    /// The sender can start this server when it is off (a simulator's BMC).
    pub power_driver: bool,
}

pub use crate::domain::{Job, PowerKind, SubJob};

/// A new batch power job: one sub-job per server.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub project_id: String,
    pub kind: PowerKind,
    pub hard: bool,
    pub created: DateTime<Utc>,
    /// (sub-job id, server id, failed at once with this reason).
    pub subs: Vec<(String, String, Option<String>)>,
    pub audit: AuditEntry,
}

/// A power action for an agent to carry out.
#[derive(Debug, Clone)]
pub struct PowerWork {
    pub sub_job_id: String,
    pub kind: PowerKind,
    pub hard: bool,
    /// The server's work sequence number of this item.
    pub seq: u64,
}

/// What an enrollment did.
#[derive(Debug, Clone)]
pub enum EnrollResult {
    Enrolled(Enrolled),
    /// Unknown, expired or used-up token.
    BadToken,
    /// The machine id is already a server's and duplicates are refused.
    DuplicateMachine {
        server_id: String,
    },
}

/// A work-signing key as stored: the secret sealed under the master key.
#[derive(Debug, Clone)]
pub struct StoredWorkKey {
    pub public_key: String,
    pub secret_sealed: Vec<u8>,
    pub endorsed_by: Option<String>,
    pub signature: Option<String>,
    pub created: DateTime<Utc>,
}

/// Filters of `GET /cloudservers/detail`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ListFilter {
    pub name: Option<String>,
    pub status: Option<String>,
    pub ip: Option<String>,
    pub ip_eq: Option<String>,
    pub tags: Option<String>,
    pub not_tags: Option<String>,
    /// `Linux` or `Windows` (ours); another value matches no server.
    pub os_type: Option<String>,
    /// Overrides every other filter.
    pub server_ids: Option<Vec<String>>,
}

/// One line of [`Store::agent_census`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCount {
    pub version: String,
    pub up: u64,
    pub stale: u64,
}

/// What a poll took ([`Store::take_next`]).
#[derive(Debug, Clone)]
pub enum NextWork {
    Power(PowerWork),
    Reset(Work),
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // --- administration ---
    async fn create_project(&self, name: &str) -> StoreResult<Project>;
    async fn project_by_name(&self, name: &str) -> StoreResult<Option<Project>>;
    async fn project(&self, id: &str) -> StoreResult<Option<Project>>;
    async fn create_access_key(&self, key: AccessKey) -> StoreResult<()>;
    async fn register_server(&self, server: NewServer) -> StoreResult<Server>;
    async fn create_enroll_token(
        &self,
        project_id: &str,
        token_hash: &str,
        expires: DateTime<Utc>,
        uses: u32,
    ) -> StoreResult<()>;

    // --- public API ---
    async fn access_key(&self, ak: &str) -> StoreResult<Option<AccessKey>>;
    /// Servers with these ids, in any project, in no particular order.
    async fn servers_by_ids(&self, ids: &[String]) -> StoreResult<Vec<Server>>;
    async fn server(&self, project_id: &str, id: &str) -> StoreResult<Option<Server>>;
    /// Stores an accepted reset, supersedes older open resets of the same
    /// servers, and writes the audit record, in one durable transaction.
    async fn create_reset(&self, reset: NewReset) -> StoreResult<()>;
    async fn reset_outcome(
        &self,
        project_id: &str,
        request_id: &str,
    ) -> StoreResult<Option<ResetOutcome>>;
    /// The id of the project's newest reset request.
    async fn latest_reset_id(&self, project_id: &str) -> StoreResult<Option<String>>;
    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()>;

    /// One page of the project's servers (newest first) and the total count.
    /// `marker`: the id of the last server of the previous page.
    async fn list_servers(
        &self,
        project_id: &str,
        filter: ListFilter,
        limit: u32,
        page: u32,
        marker: Option<String>,
    ) -> StoreResult<(Vec<Server>, u64)>;
    /// Stores a power job; refuses (Conflict) if a server has an open sub-job.
    async fn create_job(&self, job: NewJob) -> StoreResult<()>;
    async fn job(&self, project_id: &str, job_id: &str) -> StoreResult<Option<Job>>;
    /// Fails sub-jobs open for longer than `older_than`; returns how many.
    async fn expire_sub_jobs(
        &self,
        older_than: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<usize>;

    // --- agents ---
    /// Consumes one use of a valid token: an enrollment token registers a
    /// new server (a machine id already known in the project becomes a new
    /// server, or is refused, per `duplicate`); a re-key token re-keys its
    /// one server. Nothing is written unless the result is `Enrolled`.
    async fn enroll(
        &self,
        token_hash: &str,
        enrollment: Enrollment,
        now: DateTime<Utc>,
        duplicate: DuplicateMachineId,
    ) -> StoreResult<EnrollResult>;
    /// Re-keys a server whose agent proved possession of its current key.
    async fn rekey(
        &self,
        server_id: &str,
        enrollment: Enrollment,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Enrolled>>;
    /// A one-use token that re-keys this one server; returns its project,
    /// or `None` if the server does not exist.
    async fn create_rekey_token(
        &self,
        server_id: &str,
        token_hash: &str,
        expires: DateTime<Utc>,
    ) -> StoreResult<Option<String>>;
    async fn create_rekey_challenge(
        &self,
        challenge_id: &str,
        server_id: &str,
        answer_hash: &str,
        expires: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Removes and returns an unexpired challenge: (server id, answer hash).
    async fn take_rekey_challenge(
        &self,
        challenge_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(String, String)>>;
    /// The work-signing keys, oldest first.
    async fn work_keys(&self) -> StoreResult<Vec<StoredWorkKey>>;
    /// Adds a work-signing key; with `first`, only if there is none yet
    /// (returns false then).
    async fn add_work_key(&self, key: StoredWorkKey, first: bool) -> StoreResult<bool>;
    /// When the reset request was accepted (`None`: unknown or pruned).
    async fn reset_accepted_at(&self, request_id: &str) -> StoreResult<Option<DateTime<Utc>>>;
    /// Servers with an agent (a key, or a heartbeat) by agent version: how many
    /// were heard from at or after `stale_before` (`up`) and how many not.
    /// Ordered by version; an agent that never reported counts as version
    /// `unknown`.
    async fn agent_census(&self, stale_before: DateTime<Utc>) -> StoreResult<Vec<AgentCount>>;
    /// The id of the server whose agent holds this credential (`None`
    /// after a revoke or a re-key). Every agent call asks it first.
    async fn agent_server_id(&self, credential_hash: &str) -> StoreResult<Option<String>>;
    async fn heartbeat(
        &self,
        server_id: &str,
        hb: Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// The oldest undelivered power action for the server; marks it RUNNING
    /// and the server's status (REBOOT, HARD_REBOOT) accordingly.
    async fn take_power(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<PowerWork>>;
    /// The agent's word on a power action: `ok` = it is being carried out.
    async fn power_ack(
        &self,
        server_id: &str,
        sub_job_id: &str,
        ok: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// The newest open reset for the server; marks it DELIVERED.
    async fn take_work(&self, server_id: &str, now: DateTime<Utc>) -> StoreResult<Option<Work>>;
    /// What an agent's poll takes: its oldest undelivered power action
    /// ([`Store::take_power`]), else — unless `power_only` — its newest
    /// open reset ([`Store::take_work`]). A store may look for both at
    /// once (SQLite: one read for the empty poll, the common case).
    async fn take_next(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
        power_only: bool,
    ) -> StoreResult<Option<NextWork>> {
        if let Some(p) = self.take_power(server_id, now).await? {
            return Ok(Some(NextWork::Power(p)));
        }
        if power_only {
            return Ok(None);
        }
        Ok(self.take_work(server_id, now).await?.map(NextWork::Reset))
    }
    /// Records the agent's outcome. Returns false if the reset was no longer
    /// open for this server (superseded, already final, or unknown).
    async fn ack(
        &self,
        server_id: &str,
        request_id: &str,
        applied: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}

/// Formats a time the way the store keeps it (RFC 3339, milliseconds, `Z`).
pub fn fmt_time(t: DateTime<Utc>) -> String {
    // The same text as `format("%Y-%m-%dT%H:%M:%S%.3fZ")` for every year
    // 0–9999 (test `fmt_time_is_the_strftime_form`), without parsing a
    // format string on each call: stamps are written on every agent call.
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_time(s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::storage(format!("bad timestamp {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strftime(t: DateTime<Utc>) -> String {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    #[test]
    fn fmt_time_is_the_strftime_form_at_the_edges() {
        for s in [
            "0000-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2026-11-29T02:04:34.5Z",
            "2026-11-29T02:04:34.999999999Z",
            "2016-12-31T23:59:60.250Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let t = parse_time(s).unwrap();
            assert_eq!(fmt_time(t), strftime(t), "{s}");
            assert_eq!(parse_time(&fmt_time(t)).unwrap().timestamp(), t.timestamp());
        }
        assert_eq!(
            fmt_time(parse_time("2026-11-29T02:04:34.5Z").unwrap()),
            "2026-11-29T02:04:34.500Z"
        );
    }

    proptest! {
        #[test]
        fn fmt_time_is_the_strftime_form(
            secs in -62_167_219_200i64..253_402_300_800i64,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            prop_assert_eq!(fmt_time(t), strftime(t));
        }
    }
}
