//! Password resets: validation, sealing and storage (contract §2, §3).
//!
//! HTTP-agnostic: the handlers in `api::resets` and the benchmark call these
//! functions. The plaintext password lives only in a `SecretString`, is sealed
//! per server with HPKE, and is zeroized when dropped.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use bytes::Bytes;
use chrono::Utc;
use ecs_policy::{OsType, Strictness, Violation};
use ecs_seal::PublicKey;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroize;

use crate::error::{ApiError, InternalError, display_id};
use crate::state::{AppState, Caller};
use crate::store::{AuditEntry, NewReset, Server};
use ecs_api::{BatchResetResponse, IdEntry, Readiness};

/// Most servers in one batch.
pub const MAX_BATCH: usize = 1000;
/// Longest server id we accept (ours are 36-character UUIDs).
pub const MAX_ID_LEN: usize = 64;
/// States in which a reset is accepted (contract §2.6).
pub const RESETTABLE_STATES: &[&str] = &["ACTIVE", "SHUTOFF", "REBOOT", "HARD_REBOOT"];

/// A password field: deserialized straight into a secret.
pub struct Password(pub SecretString);

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Password(SecretString::from(s)))
    }
}

/// `{"id": "..."}` in a server list.
#[derive(Deserialize)]
pub(crate) struct ServerRef {
    id: String,
}

#[derive(Deserialize)]
struct BatchResetBody {
    new_password: Option<Password>,
    dry_run: Option<bool>,
    servers: Option<Vec<ServerRef>>,
    /// Our extension (contract §3.4): `"now"` asks running agents to apply at once.
    apply: Option<String>,
}

#[derive(Deserialize)]
struct SingleResetBody {
    #[serde(rename = "reset-password")]
    reset_password: Option<SingleResetInner>,
}

#[derive(Deserialize)]
struct SingleResetInner {
    new_password: Option<Password>,
    is_check_password: Option<bool>,
}

/// Overwrites the request body in memory once parsed (best effort: only when
/// this is the last reference to the buffer).
fn wipe(body: Bytes) {
    if let Ok(mut b) = body.try_into_mut() {
        b.as_mut().zeroize();
    }
}

/// Checks the content type and parses a JSON body; errors as [`parse_body`].
pub fn parse_json(content_type: Option<&str>, body: &Bytes) -> Result<serde_json::Value, ApiError> {
    parse_body(content_type, body)
}

/// Checks the content type and parses a JSON body into `T`. Error messages
/// name the offending field's path, never its value.
fn parse_body<T: for<'de> Deserialize<'de>>(
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::ecs(
            StatusCode::BAD_REQUEST,
            "Common.0002",
            "The request body is empty.",
        ));
    }
    let is_json = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::invalid(
            "Invalid request: Content-Type must be application/json.",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => ApiError::invalid(format!(
                "Invalid request body: the value of {path} is missing or has the wrong type."
            )),
            serde_json::error::Category::Data => ApiError::invalid(
                "Invalid request body: the body must be a JSON object of the documented shape.",
            ),
            _ => ApiError::invalid(format!(
                "Invalid request body: malformed JSON at line {} column {}.",
                inner.line(),
                inner.column()
            )),
        }
    })
}

/// The validated form of a batch reset request.
struct BatchRequest {
    password: Option<SecretString>,
    dry_run: bool,
    apply_now: bool,
    ids: Vec<String>,
}

/// The server list of a batch (reset or power action): 1..=1000 entries,
/// ids non-empty, at most [`MAX_ID_LEN`], no id twice. `path` names the list
/// in messages (`servers`, `reboot.servers`).
pub(crate) fn validate_ids(
    servers: Option<Vec<ServerRef>>,
    path: &str,
) -> Result<Vec<String>, ApiError> {
    let servers = servers
        .ok_or_else(|| ApiError::invalid(format!("Invalid request body: {path} is required.")))?;
    if servers.is_empty() {
        return Err(ApiError::invalid(format!(
            "Invalid request body: {path} must list at least one server."
        )));
    }
    if servers.len() > MAX_BATCH {
        return Err(ApiError::ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0118",
            format!(
                "The number of servers ({}) exceeds the limit of {MAX_BATCH} in one request.",
                servers.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(servers.len());
    let mut ids = Vec::with_capacity(servers.len());
    for (i, s) in servers.into_iter().enumerate() {
        if s.id.is_empty() {
            return Err(ApiError::invalid(format!(
                "Invalid request body: {path}[{i}].id is empty."
            )));
        }
        if s.id.len() > MAX_ID_LEN {
            return Err(ApiError::invalid(format!(
                "Invalid request body: {path}[{i}].id is longer than {MAX_ID_LEN} characters."
            )));
        }
        if !seen.insert(s.id.clone()) {
            return Err(ApiError::invalid(format!(
                "Invalid request body: server {} is listed more than once.",
                display_id(&s.id)
            )));
        }
        ids.push(s.id);
    }
    Ok(ids)
}

fn validate_batch_shape(body: BatchResetBody) -> Result<BatchRequest, ApiError> {
    let ids = validate_ids(body.servers, "servers")?;
    let dry_run = body.dry_run.unwrap_or(false);
    let password = body.new_password.map(|p| p.0);
    if password.is_none() && !dry_run {
        return Err(ApiError::invalid(
            "Invalid request body: new_password is required unless dry_run is true.",
        ));
    }
    let apply_now = match body.apply.as_deref() {
        None => false,
        Some("now") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid request body: apply must be \"now\" when present.",
            ));
        }
    };
    Ok(BatchRequest {
        password,
        dry_run,
        apply_now,
        ids,
    })
}

fn password_error(v: &Violation) -> ApiError {
    ApiError::ecs(StatusCode::BAD_REQUEST, "Ecs.0011", v.to_string())
}

/// Why one server cannot take a reset, if it cannot.
fn server_problem(
    id: &str,
    server: Option<&Server>,
    caller: &Caller,
    violations: &HashMap<OsType, Violation>,
) -> Option<InternalError> {
    let entry = |code: &'static str, msg: String| InternalError {
        id: id.to_owned(),
        error_code: code,
        error_message: msg,
    };
    let Some(s) = server.filter(|s| s.project_id == caller.project_id) else {
        return Some(entry(
            "Ecs.0114",
            format!("Instance[{}] could not be found.", display_id(id)),
        ));
    };
    if s.agent_public_key.is_none() {
        return Some(entry(
            "Ecs.0100",
            "The password reset plug-in is not installed on this server.".into(),
        ));
    }
    if !RESETTABLE_STATES.contains(&s.status.as_str()) {
        return Some(entry(
            "Ecs.0100",
            format!(
                "The server status {} does not allow resetting the password.",
                s.status
            ),
        ));
    }
    violations
        .get(&s.os_type)
        .map(|v| entry("Ecs.0011", v.to_string()))
}

/// A rejected batch: the code of the first failing server, a message that
/// counts and names the failing servers (the SDKs show only code and
/// message), and one `internalError` entry per failing server.
pub(crate) fn batch_failure(
    failures: Vec<InternalError>,
    total: usize,
    code: &'static str,
) -> ApiError {
    let named: Vec<String> = failures
        .iter()
        .take(10)
        .map(|f| format!("{} ({})", display_id(&f.id), f.error_code))
        .collect();
    let more = failures.len().saturating_sub(10);
    let mut message = format!(
        "{} of {} servers failed validation; nothing was done: {}",
        failures.len(),
        total,
        named.join(", ")
    );
    if more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    message.push('.');
    ApiError::Ecs {
        status: StatusCode::BAD_REQUEST,
        code,
        message,
        internal: Some(failures),
    }
}

/// Seals `password` for every (server id, key), spreading the work over the
/// available cores.
pub fn seal_all(
    targets: &[(String, PublicKey)],
    request_id: &str,
    password: &SecretString,
) -> Result<Vec<Vec<u8>>, ecs_seal::SealError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(targets.len().div_ceil(64).max(1));
    let seal_chunk = |chunk: &[(String, PublicKey)]| {
        chunk
            .iter()
            .map(|(id, key)| ecs_seal::seal(key, id, request_id, password).map(|s| s.into_bytes()))
            .collect::<Result<Vec<_>, _>>()
    };
    if threads <= 1 {
        return seal_chunk(targets);
    }
    let size = targets.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .chunks(size)
            .map(|chunk| scope.spawn(move || seal_chunk(chunk)))
            .collect();
        let mut out = Vec::with_capacity(targets.len());
        for h in handles {
            out.extend(h.join().expect("sealing thread panicked")?);
        }
        Ok(out)
    })
}

/// Common context of a mutating call, for the audit record.
pub struct CallContext<'a> {
    pub caller: &'a Caller,
    pub request_id: &'a str,
    pub source: &'a str,
}

impl CallContext<'_> {
    pub(crate) fn audit(
        &self,
        action: &str,
        servers: Vec<String>,
        dry_run: bool,
        outcome: String,
    ) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            request_id: self.request_id.to_owned(),
            project_id: self.caller.project_id.clone(),
            actor: self.caller.access_key.clone(),
            action: action.to_owned(),
            servers,
            dry_run,
            outcome,
            source: self.source.to_owned(),
        }
    }
}

/// `PUT /v1/{project_id}/cloudservers/os-reset-passwords`.
pub async fn batch_reset(
    state: &AppState,
    ctx: &CallContext<'_>,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<BatchResetResponse, ApiError> {
    let parsed = parse_body::<BatchResetBody>(content_type, &body);
    wipe(body);
    let result = async {
        let req = validate_batch_shape(parsed?)?;
        let outcome = plan_and_store(state, ctx, &req).await;
        Ok::<_, ApiError>((req, outcome))
    }
    .await;
    match result {
        Ok((req, Ok(resp))) => Ok(resp).inspect(|_| {
            tracing::info!(
                request_id = ctx.request_id,
                servers = req.ids.len(),
                dry_run = req.dry_run,
                "batch password reset accepted"
            )
        }),
        Ok((req, Err(e))) => {
            audit_rejection(state, ctx, "batch-reset-password", req.ids, req.dry_run, &e).await;
            Err(e)
        }
        Err(e) => {
            audit_rejection(state, ctx, "batch-reset-password", vec![], false, &e).await;
            Err(e)
        }
    }
}

pub(crate) async fn audit_rejection(
    state: &AppState,
    ctx: &CallContext<'_>,
    action: &str,
    servers: Vec<String>,
    dry_run: bool,
    err: &ApiError,
) {
    let entry = ctx.audit(action, servers, dry_run, format!("rejected {}", err.code()));
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e, "writing the audit record failed");
    }
}

async fn plan_and_store(
    state: &AppState,
    ctx: &CallContext<'_>,
    req: &BatchRequest,
) -> Result<BatchResetResponse, ApiError> {
    // Password rules, once per OS.
    let mut violations = HashMap::new();
    if let Some(pw) = &req.password {
        use secrecy::ExposeSecret;
        for os in [OsType::Linux, OsType::Windows] {
            if let Err(v) = ecs_policy::check(pw.expose_secret(), os, Strictness::Full) {
                violations.insert(os, v);
            }
        }
    }
    if let (Some(l), Some(_)) = (
        violations.get(&OsType::Linux),
        violations.get(&OsType::Windows),
    ) {
        // Broken for every server whatever its OS: no per-server list.
        return Err(password_error(l));
    }
    let found = state
        .store
        .servers_by_ids(&req.ids)
        .await
        .map_err(|e| ApiError::internal("looking up servers", e))?;
    let by_id: HashMap<&str, &Server> = found.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut failures = Vec::new();
    let mut mine = 0usize;
    let mut password_failures = 0usize;
    for id in &req.ids {
        let server = by_id.get(id.as_str()).copied();
        if server.is_some_and(|s| s.project_id == ctx.caller.project_id) {
            mine += 1;
        }
        if let Some(f) = server_problem(id, server, ctx.caller, &violations) {
            password_failures += usize::from(f.error_code == "Ecs.0011");
            failures.push(f);
        }
    }
    if password_failures > 0 && password_failures == mine {
        // The password is wrong for every server that exists here.
        let v = violations.values().next().expect("a violation was counted");
        return Err(password_error(v));
    }
    if !failures.is_empty() {
        let code = failures[0].error_code;
        return Err(batch_failure(failures, req.ids.len(), code));
    }
    let response = req
        .ids
        .iter()
        .map(|id| IdEntry { id: id.clone() })
        .collect();
    if req.dry_run {
        let readiness = req
            .ids
            .iter()
            .map(|id| {
                let s = by_id[id.as_str()];
                Readiness {
                    id: id.clone(),
                    plugin_installed: s.agent_public_key.is_some(),
                    status: s
                        .status
                        .as_str()
                        .parse()
                        .unwrap_or(ecs_api::ServerStatus::Error),
                    agent_version: s.agent_version.clone(),
                    agent_last_seen: s.agent_last_seen.map(crate::store::fmt_time),
                }
            })
            .collect();
        let entry = ctx.audit(
            "batch-reset-password",
            req.ids.clone(),
            true,
            "accepted".into(),
        );
        state
            .store
            .record_audit(entry)
            .await
            .map_err(|e| ApiError::internal("writing the audit record", e))?;
        return Ok(BatchResetResponse {
            response,
            readiness: Some(readiness),
        });
    }
    let password = req
        .password
        .as_ref()
        .expect("checked: present unless dry run");
    store_reset(
        state,
        ctx,
        "batch-reset-password",
        &req.ids,
        &by_id,
        password,
        req.apply_now,
    )
    .await?;
    Ok(BatchResetResponse {
        response,
        readiness: None,
    })
}

/// Seals the password for every target and stores the reset in one
/// transaction, then wakes the targets' agents.
async fn store_reset(
    state: &AppState,
    ctx: &CallContext<'_>,
    action: &str,
    ids: &[String],
    by_id: &HashMap<&str, &Server>,
    password: &SecretString,
    apply_now: bool,
) -> Result<(), ApiError> {
    let mut targets = Vec::with_capacity(ids.len());
    for id in ids {
        let key_bytes = by_id[id.as_str()]
            .agent_public_key
            .as_deref()
            .expect("checked: plug-in installed");
        let key = PublicKey::from_bytes(key_bytes)
            .map_err(|e| ApiError::internal("a stored agent key is invalid", e))?;
        targets.push((id.clone(), key));
    }
    let request_id = ctx.request_id.to_owned();
    let password = password.clone();
    let (targets, sealed) = tokio::task::spawn_blocking(move || {
        let sealed = seal_all(&targets, &request_id, &password);
        (targets, sealed)
    })
    .await
    .map_err(|e| ApiError::internal("sealing task", e))?;
    let sealed = sealed.map_err(|e| ApiError::internal("sealing", e))?;
    let reset = NewReset {
        request_id: ctx.request_id.to_owned(),
        project_id: ctx.caller.project_id.clone(),
        apply_now,
        created: Utc::now(),
        targets: targets.into_iter().map(|(id, _)| id).zip(sealed).collect(),
        audit: ctx.audit(action, ids.to_vec(), false, "accepted".into()),
    };
    state
        .store
        .create_reset(reset)
        .await
        .map_err(|e| ApiError::internal("storing the reset", e))?;
    state.wakers.wake(ids.iter().map(String::as_str));
    Ok(())
}

/// `PUT /v1/{project_id}/cloudservers/{server_id}/os-reset-password`.
pub async fn single_reset(
    state: &AppState,
    ctx: &CallContext<'_>,
    server_id: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<(), ApiError> {
    let parsed = parse_body::<SingleResetBody>(content_type, &body);
    wipe(body);
    let result = single_reset_inner(state, ctx, server_id, parsed).await;
    if let Err(e) = &result {
        audit_rejection(
            state,
            ctx,
            "reset-password",
            vec![server_id.to_owned()],
            false,
            e,
        )
        .await;
    }
    result
}

async fn single_reset_inner(
    state: &AppState,
    ctx: &CallContext<'_>,
    server_id: &str,
    parsed: Result<SingleResetBody, ApiError>,
) -> Result<(), ApiError> {
    let inner = parsed?
        .reset_password
        .ok_or_else(|| ApiError::invalid("Invalid request body: reset-password is required."))?;
    let password = inner
        .new_password
        .ok_or_else(|| {
            ApiError::invalid("Invalid request body: reset-password.new_password is required.")
        })?
        .0;
    let server = state
        .store
        .server(&ctx.caller.project_id, server_id)
        .await
        .map_err(|e| ApiError::internal("looking up a server", e))?
        .ok_or_else(|| ApiError::server_not_found(server_id))?;
    let strictness = if inner.is_check_password == Some(true) {
        Strictness::Full
    } else {
        Strictness::Basic
    };
    let mut violations = HashMap::new();
    {
        use secrecy::ExposeSecret;
        if let Err(v) = ecs_policy::check(password.expose_secret(), server.os_type, strictness) {
            violations.insert(server.os_type, v);
        }
    }
    if let Some(p) = server_problem(server_id, Some(&server), ctx.caller, &violations) {
        let status = if p.error_code == "Ecs.0114" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        return Err(ApiError::ecs(status, p.error_code, p.error_message));
    }
    let by_id = HashMap::from([(server.id.as_str(), &server)]);
    store_reset(
        state,
        ctx,
        "reset-password",
        std::slice::from_ref(&server.id),
        &by_id,
        &password,
        false,
    )
    .await?;
    tracing::info!(
        request_id = ctx.request_id,
        "single password reset accepted"
    );
    Ok(())
}
