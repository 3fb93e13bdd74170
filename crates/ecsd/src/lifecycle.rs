//! Lifecycle (issue #10): the checks authentication makes before any
//! expensive work (throttles, disabled keys, locked keys) and after (counting
//! failures, recording denied calls); access key, agent, server and token
//! administration; master-key rotation; audit retention.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use axum::http::{HeaderMap, Method, header};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::error::{ApiError, display_id};
use crate::secrets::MasterKey;
use crate::state::{AppState, UserRef};
use crate::store::lifecycle::{KeyGate, LockPolicy};

/// Huawei's gateway tail for a locked AK (huawei-ecs-api.md §5).
pub const LOCKED_TAIL: &str = "AK access failed to reach the limit,forbidden";

/// What authentication knows about a request before verifying it.
pub struct Attempt<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// `ip:port` of the peer, as recorded in the audit trail.
    pub source: &'a str,
    /// The peer's IP address (the throttle's key).
    pub ip: String,
    /// The AK named by the `Authorization` header, if it parses.
    pub ak: Option<String>,
    /// The key's state, when the AK is a stored access key.
    pub gate: Option<KeyGate>,
}

impl<'a> Attempt<'a> {
    pub fn new(method: &'a Method, path: &'a str, source: &'a str, headers: &HeaderMap) -> Self {
        let ip = source
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| source.to_owned());
        let ak = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ecs_sign::Authorization::parse(v).ok())
            .map(|a| a.access_key);
        Attempt {
            method,
            path,
            source,
            ip,
            ak,
            gate: None,
        }
    }

    fn url_project(&self) -> &str {
        self.path.split('/').nth(2).unwrap_or_default()
    }

    async fn deny(
        &self,
        state: &AppState,
        e: ApiError,
        reason: &str,
        user: Option<&UserRef>,
    ) -> ApiError {
        crate::audit::record_denied(
            state,
            crate::audit::Denied {
                project_id: self.url_project(),
                actor: self.ak.as_deref().unwrap_or("anonymous"),
                user,
                method: self.method,
                path: self.path,
                source: self.source,
                error_code: e.code(),
                http_status: e.status().as_u16(),
                reason,
            },
        )
        .await;
        e
    }
}

/// Before the store lookup, the SK's decryption and the HMAC: a source or
/// key over its failure budget answers 429 `APIGW.0308` (not recorded); a
/// disabled key answers as an unknown one and a locked key with Huawei's
/// lock message, both 401 `APIGW.0301` (recorded).
pub async fn before_verify(state: &AppState, a: &mut Attempt<'_>) -> Result<(), ApiError> {
    let now = Instant::now();
    let throttle = &state.auth_failures;
    if !throttle.allows(&format!("ip:{}", a.ip), now)
        || a.ak
            .as_ref()
            .is_some_and(|ak| !throttle.allows(&format!("ak:{ak}"), now))
    {
        tracing::warn!(source = %a.ip, access_key = a.ak.as_deref(), "failed authentications throttled");
        return Err(ApiError::throttled());
    }
    let Some(ak) = a.ak.clone() else {
        return Ok(());
    };
    a.gate = state
        .lifecycle
        .key_gate(&ak)
        .await
        .map_err(|e| ApiError::store("looking up an access key's state", e))?;
    match a.gate {
        Some(g) if !g.enabled => {
            let reason = "the access key is disabled";
            tracing::warn!(access_key = %ak, reason, "authentication failed");
            let e = ApiError::unauthenticated(format!(
                "Get secretKey failed,ak:{},err:ak not exist",
                display_id(&ak)
            ));
            Err(a.deny(state, e, reason, None).await)
        }
        Some(g) if g.locked(Utc::now()) => {
            let reason = "the access key is locked after repeated failed authentications";
            tracing::warn!(access_key = %ak, reason, "authentication failed");
            Err(a
                .deny(state, ApiError::unauthenticated(LOCKED_TAIL), reason, None)
                .await)
        }
        _ => Ok(()),
    }
}

/// A failed authentication: charged to the source and the AK, counted
/// towards the key's lock (stored, so every replica counts together), and
/// recorded.
pub async fn verify_failed(state: &AppState, a: &Attempt<'_>, e: ApiError) -> ApiError {
    let now = Instant::now();
    crate::metrics::auth_failure("public");
    state.auth_failures.fail(&format!("ip:{}", a.ip), now);
    if let Some(ak) = &a.ak {
        state.auth_failures.fail(&format!("ak:{ak}"), now);
        if a.gate.is_some() {
            match state
                .lifecycle
                .record_auth_failure(ak, Utc::now(), LockPolicy::default())
                .await
            {
                Ok(Some(until)) => {
                    tracing::warn!(access_key = %ak, until = %crate::store::fmt_time(until), "access key locked");
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(error = %err.chain(), "counting a failed authentication")
                }
            }
        }
    }
    if e.status().is_server_error() {
        return e;
    }
    a.deny(state, e, "authentication failed", None).await
}

/// A successful authentication starts the key's failure count again.
pub async fn verify_succeeded(state: &AppState, a: &Attempt<'_>) {
    if let (Some(ak), Some(g)) = (&a.ak, a.gate)
        && g.failures > 0
        && let Err(e) = state.lifecycle.reset_auth_failures(ak).await
    {
        tracing::error!(error = %e.chain(), "resetting a key's failure count");
    }
}

/// A call refused for the caller's role or policy (403), recorded.
pub async fn forbidden(
    state: &AppState,
    a: &Attempt<'_>,
    user: Option<&UserRef>,
    e: ApiError,
    reason: &str,
) -> ApiError {
    a.deny(state, e, reason, user).await
}

/// Deletes audit records older than `retention_days`, a small batch at a time
/// (a pause between batches leaves the writer to the API); returns how many.
pub async fn prune_audit(
    state: &AppState,
    now: DateTime<Utc>,
    retention_days: u32,
    batch: u32,
) -> anyhow::Result<usize> {
    let before = cutoff(now, retention_days);
    in_batches(batch, || state.lifecycle.prune_audit(before, batch)).await
}

/// Deletes finished reset requests (every target final) created more than
/// `retention_days` before `now`, with their targets, a batch at a time;
/// returns how many requests.
pub async fn prune_resets(
    state: &AppState,
    now: DateTime<Utc>,
    retention_days: u32,
    batch: u32,
) -> anyhow::Result<usize> {
    let before = cutoff(now, retention_days);
    in_batches(batch, || state.lifecycle.prune_resets(before, batch)).await
}

/// Deletes finished power jobs (every sub-job SUCCESS or FAIL) begun more
/// than `retention_days` before `now`, with their sub-jobs, a batch at a
/// time; returns how many jobs.
pub async fn prune_jobs(
    state: &AppState,
    now: DateTime<Utc>,
    retention_days: u32,
    batch: u32,
) -> anyhow::Result<usize> {
    let before = cutoff(now, retention_days);
    in_batches(batch, || state.lifecycle.prune_jobs(before, batch)).await
}

fn cutoff(now: DateTime<Utc>, retention_days: u32) -> DateTime<Utc> {
    now - chrono::Duration::days(i64::from(retention_days))
}

/// Calls `prune` until it deletes fewer than `batch`, pausing between calls.
async fn in_batches<F, Fut>(batch: u32, mut prune: F) -> anyhow::Result<usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::store::StoreResult<usize>>,
{
    let mut total = 0;
    loop {
        let n = prune().await?;
        total += n;
        if n < batch as usize {
            return Ok(total);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long each kind of record is kept, in days, and the batch size.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub audit_days: u32,
    pub reset_days: u32,
    pub job_days: u32,
    pub batch: u32,
}

impl Retention {
    /// The configured retention, in batches of 500.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Retention {
            audit_days: c.audit_retention_days,
            reset_days: c.reset_retention_days,
            job_days: c.job_retention_days,
            batch: 500,
        }
    }
}

/// What one retention round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub audit: usize,
    pub resets: usize,
    pub jobs: usize,
    /// Free pages given back to the file system.
    pub pages: usize,
}

/// One retention round: prunes the audit trail, finished resets and
/// finished jobs as of `now`, gives the freed pages back to the file system,
/// then checkpoints and truncates the WAL. Each
/// part is tried even if an earlier one failed; the first error is returned.
pub async fn retention_round(
    state: &AppState,
    now: DateTime<Utc>,
    r: Retention,
) -> anyhow::Result<Pruned> {
    let audit = prune_audit(state, now, r.audit_days, r.batch).await;
    let resets = prune_resets(state, now, r.reset_days, r.batch).await;
    let jobs = prune_jobs(state, now, r.job_days, r.batch).await;
    let pages = reclaim_pages(state).await;
    let checkpoint = state.lifecycle.checkpoint().await;
    let pruned = Pruned {
        audit: audit?,
        resets: resets?,
        jobs: jobs?,
        pages: pages?,
    };
    checkpoint?;
    Ok(pruned)
}

/// Free pages given back to the file system per transaction (4 MiB at
/// 4 KiB pages), with the same pauses as pruning.
pub const RECLAIM_PAGES: u32 = 1024;

/// Gives the pages that pruning freed back to the file system, a batch at a
/// time (the database file shrinks at the checkpoint that follows).
pub async fn reclaim_pages(state: &AppState) -> anyhow::Result<usize> {
    in_batches(RECLAIM_PAGES, || {
        state.lifecycle.reclaim_pages(RECLAIM_PAGES)
    })
    .await
}

/// One retention round, logged (the housekeeping task runs one at start
/// and then every hour, on one replica).
pub async fn retention_once(state: &AppState) {
    let r = Retention::from_config(&state.config);
    match retention_round(state, Utc::now(), r).await {
        Ok(p) if p == Pruned::default() => {}
        Ok(p) => tracing::info!(
            audit = p.audit,
            resets = p.resets,
            jobs = p.jobs,
            pages = p.pages,
            "records past retention deleted"
        ),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "the retention round failed"),
    }
}

/// Re-encrypts every stored secret under `new`, in one transaction, and
/// checks each opens under the new key. Returns how many secrets.
pub async fn rotate_master_key(state: &AppState, new: &SecretString) -> anyhow::Result<usize> {
    let new = std::sync::Arc::new(MasterKey::from_base64(new).context("the new master key")?);
    let old = state.master.clone();
    let n = state
        .lifecycle
        .reseal_all(Box::new(move |owner: &str, blob: &[u8]| {
            let secret = old
                .decrypt(owner, blob)
                .map_err(|_| "does not decrypt under the current master key".to_owned())?;
            let sealed = new.encrypt(owner, &secret);
            match new.decrypt(owner, &sealed) {
                Ok(back) if back.as_slice() == secret.as_slice() => Ok(sealed),
                _ => Err("does not decrypt under the new master key".to_owned()),
            }
        }))
        .await?;
    Ok(n)
}

/// `ecsd admin rotate-master-key`: the new key from `new_key_file`, or
/// (dev) generated and written to `<data_dir>/master.key`, replacing the
/// old one only after the database has committed.
pub async fn rotate_master_key_cli(
    state: &AppState,
    new_key_file: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let data_key = state.config.data_dir.join("master.key");
    match new_key_file {
        Some(path) => {
            let key = SecretString::from(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .trim()
                    .to_owned(),
            );
            let n = rotate_master_key(state, &key).await?;
            Ok(serde_json::json!({
                "resealed": n,
                "master_key": path.display().to_string(),
                "note": "set master_key (or ECSD_MASTER_KEY) of every replica to the new key and restart them; the old key no longer opens anything"
            }))
        }
        None => {
            anyhow::ensure!(
                data_key.exists(),
                "give --new-key-file (a generated key is only written for a dev data directory, which has master.key)"
            );
            let key = MasterKey::generate_base64();
            // Written first (not yet in use), renamed over the old after the commit.
            let pending = state.config.data_dir.join("master.key.new");
            crate::dev::write_private(&pending, key.expose_secret().as_bytes())?;
            let n = match rotate_master_key(state, &key).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::remove_file(&pending);
                    return Err(e);
                }
            };
            std::fs::rename(&pending, &data_key)
                .with_context(|| format!("replacing {}", data_key.display()))?;
            Ok(serde_json::json!({
                "resealed": n,
                "master_key": data_key.display().to_string(),
                "note": "restart ecsd to use the new key"
            }))
        }
    }
}

/// Records what `ecsd admin` changed (actor `ecsd-admin`, source `local`).
async fn admin_audit(state: &AppState, project_id: &str, action: &str, resources: Vec<String>) {
    let entry = crate::store::AuditEntry {
        at: Utc::now(),
        request_id: crate::error::new_request_id(),
        project_id: project_id.to_owned(),
        actor: "ecsd-admin".into(),
        action: action.to_owned(),
        servers: resources,
        dry_run: false,
        outcome: "accepted".into(),
        source: "local".into(),
        user_id: None,
        user_name: None,
        error_code: None,
        http_status: None,
    };
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e.chain(), "writing the audit record failed");
    }
}

/// `ecsd admin access-key list`: never the SK.
pub async fn list_access_keys(
    state: &AppState,
    project: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let now = Utc::now();
    let keys = state.lifecycle.list_access_keys(project).await?;
    Ok(serde_json::Value::Array(
        keys.into_iter()
            .map(|k| {
                serde_json::json!({
                    "ak": k.ak,
                    "project_id": k.project_id,
                    "role": k.role.as_str(),
                    "status": if k.enabled { "active" } else { "inactive" },
                    "created": crate::store::fmt_time(k.created),
                    "locked_until": k.locked_until.filter(|t| *t > now).map(crate::store::fmt_time),
                    "failures": k.failures,
                })
            })
            .collect(),
    ))
}

/// What `ecsd admin access-key disable|enable|delete|unlock` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    Disable,
    Enable,
    Delete,
    Unlock,
}

/// Changes an access key; takes effect on the key's next request, on every
/// replica (the state is read from the store on each request).
pub async fn change_access_key(
    state: &AppState,
    ak: &str,
    change: KeyChange,
) -> anyhow::Result<serde_json::Value> {
    let key = state
        .store
        .access_key(ak)
        .await?
        .with_context(|| format!("no access key {}", display_id(ak)))?;
    let (done, action, status) = match change {
        KeyChange::Disable => (
            state.lifecycle.set_access_key_enabled(ak, false).await?,
            "disable-access-key",
            "inactive",
        ),
        KeyChange::Enable => (
            state.lifecycle.set_access_key_enabled(ak, true).await?,
            "enable-access-key",
            "active",
        ),
        KeyChange::Delete => (
            state.lifecycle.delete_access_key(ak).await?,
            "delete-access-key",
            "deleted",
        ),
        KeyChange::Unlock => (
            state.lifecycle.unlock_access_key(ak).await?,
            "unlock-access-key",
            "unlocked",
        ),
    };
    anyhow::ensure!(done, "no access key {}", display_id(ak));
    admin_audit(state, &key.project_id, action, vec![]).await;
    Ok(serde_json::json!({"ak": ak, "project_id": key.project_id, "status": status}))
}

/// `ecsd admin server deregister`: the server is removed (gone from every
/// listing; its agent's credential no longer works); its audit stays.
pub async fn deregister_server(state: &AppState, id: &str) -> anyhow::Result<serde_json::Value> {
    let project = state
        .lifecycle
        .deregister_server(id)
        .await?
        .with_context(|| format!("no server {}", display_id(id)))?;
    state.wakers.wake([id]);
    admin_audit(state, &project, "deregister-server", vec![id.to_owned()]).await;
    Ok(serde_json::json!({"id": id, "project_id": project, "status": "deregistered"}))
}

/// `ecsd admin agent revoke`: the agent's credential stops working; the
/// server stays, and its agent must enroll again.
pub async fn revoke_agent(state: &AppState, server_id: &str) -> anyhow::Result<serde_json::Value> {
    let project = state
        .store
        .servers_by_ids(&[server_id.to_owned()])
        .await?
        .into_iter()
        .next()
        .map(|s| s.project_id)
        .with_context(|| format!("no server {}", display_id(server_id)))?;
    anyhow::ensure!(
        state.lifecycle.revoke_agent(server_id).await?,
        "no server {}",
        display_id(server_id)
    );
    state.wakers.wake([server_id]);
    admin_audit(state, &project, "revoke-agent", vec![server_id.to_owned()]).await;
    Ok(serde_json::json!({"server_id": server_id, "project_id": project, "agent": "revoked"}))
}

/// `ecsd admin enroll-token list`: ids (hash prefixes), uses left, expiry.
pub async fn list_enroll_tokens(
    state: &AppState,
    project: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let tokens = state
        .lifecycle
        .list_enroll_tokens(project, Utc::now())
        .await?;
    Ok(serde_json::Value::Array(
        tokens
            .into_iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "project_id": t.project_id,
                    "uses_left": t.uses_left,
                    "expires": crate::store::fmt_time(t.expires),
                    "created": crate::store::fmt_time(t.created),
                    "kind": if t.server_id.is_some() { "rekey" } else { "enroll" },
                    "server_id": t.server_id,
                })
            })
            .collect(),
    ))
}

/// `ecsd admin enroll-token revoke ID`: by the id `list` shows (or a
/// longer prefix of the token's hash).
pub async fn revoke_enroll_token(state: &AppState, id: &str) -> anyhow::Result<serde_json::Value> {
    use crate::store::lifecycle::Revoked;
    anyhow::ensure!(id.len() >= 6, "give at least 6 characters of the token id");
    match state.lifecycle.revoke_enroll_token(id).await? {
        Revoked::One(id) => Ok(serde_json::json!({"id": id, "status": "revoked"})),
        Revoked::None => anyhow::bail!("no enrollment token {}", display_id(id)),
        Revoked::Ambiguous(n) => {
            anyhow::bail!(
                "{n} tokens start with {}; give more characters",
                display_id(id)
            )
        }
    }
}
