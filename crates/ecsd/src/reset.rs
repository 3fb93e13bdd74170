//! Password resets: validation, sealing and storage (contract §2, §3).
//!
//! HTTP-agnostic: the handlers in `api::resets` and the benchmark call these
//! functions. The plaintext password lives only in a `SecretString`, is sealed
//! per server with HPKE, and is zeroized when dropped.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::Utc;
use ecs_api::{BatchResetResponse, IdEntry, Readiness};
use ecs_policy::{OsType, Strictness, Violation};
use ecs_seal::PublicKey;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use crate::authorize::Permit;
pub use crate::batch::{CallContext, MAX_BATCH, MAX_ID_LEN, parse_json};
use crate::batch::{ServerRef, audit_rejection, enrolled, parse_body, reject, validate_ids, wipe};
use crate::domain::{Error, Problem, ServerFailure, server as server_rules};
use crate::state::{AppState, Caller};
use crate::store::{NewReset, Server};

/// A password field: deserialized straight into a secret.
pub struct Password(pub SecretString);

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Password(SecretString::from(s)))
    }
}

#[derive(Deserialize)]
struct BatchResetBody {
    new_password: Option<Password>,
    /// `null` is refused (not taken as `false`).
    #[serde(default, deserialize_with = "crate::batch::present")]
    dry_run: Option<bool>,
    servers: Option<Vec<ServerRef>>,
    /// Our extension (contract §3.4): `"now"` asks running agents to apply at once.
    #[serde(default, deserialize_with = "crate::batch::present")]
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

/// The validated form of a batch reset request.
struct BatchRequest {
    password: Option<SecretString>,
    dry_run: bool,
    apply_now: bool,
    ids: Vec<String>,
}

fn validate_batch_shape(body: BatchResetBody) -> Result<BatchRequest, Error> {
    let ids = validate_ids(body.servers, "servers")?;
    let dry_run = body.dry_run.unwrap_or(false);
    let password = body.new_password.map(|p| p.0);
    if password.is_none() && !dry_run {
        return Err(Error::invalid(
            "new_password",
            "Invalid request body: new_password is required unless dry_run is true.",
        ));
    }
    let apply_now = match body.apply.as_deref() {
        None => false,
        Some("now") => true,
        Some(_) => {
            return Err(Error::invalid(
                "apply",
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

/// The parsers of the reset bodies for the fuzz targets (`fuzz/`, feature
/// `fuzzing`): parse plus the shape rules, as a comparable summary.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz {
    use secrecy::ExposeSecret;

    use super::*;

    /// `PUT .../os-reset-passwords`: the body's parse and shape rules.
    pub fn batch_reset(content_type: Option<&str>, body: &Bytes) -> Result<String, Error> {
        let req = validate_batch_shape(parse_body::<BatchResetBody>(content_type, body)?)?;
        Ok(format!(
            "password={:?} dry_run={} apply_now={} ids={:?}",
            req.password.as_ref().map(|p| p.expose_secret().to_owned()),
            req.dry_run,
            req.apply_now,
            req.ids
        ))
    }

    /// `PUT .../os-reset-password`: the body's parse and required fields.
    pub fn single_reset(content_type: Option<&str>, body: &Bytes) -> Result<String, Error> {
        let body = parse_body::<SingleResetBody>(content_type, body)?;
        Ok(match body.reset_password {
            None => "no reset-password".to_owned(),
            Some(inner) => format!(
                "password={:?} is_check_password={:?}",
                inner.new_password.map(|p| p.0.expose_secret().to_owned()),
                inner.is_check_password
            ),
        })
    }
}

/// Why one server cannot take a reset, if it cannot.
fn server_problem(
    server: Option<&Server>,
    caller: &Caller,
    violations: &HashMap<OsType, Violation>,
) -> Option<Problem> {
    let s = match enrolled(server, caller, Problem::NoResetPlugin) {
        Ok(s) => s,
        Err(p) => return Some(p),
    };
    if !server_rules::allows_reset(s.status) {
        return Some(Problem::ResetNotAllowed(s.status));
    }
    violations
        .get(&s.os_type)
        .map(|v| Problem::Password(v.clone()))
}

/// Seals `password` for every (server id, key), spreading the work over the
/// available cores.
pub fn seal_all(
    targets: &[(String, PublicKey)],
    request_id: &str,
    password: &SecretString,
) -> Result<Vec<Vec<u8>>, ecs_seal::SealError> {
    // Asked once: on Linux `available_parallelism` reads the cgroup files
    // (about 15 system calls) every time.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let threads = cores.min(targets.len().div_ceil(64).max(1));
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
        // The calling thread seals the first chunk itself: one thread fewer
        // to start (and to wake) per batch.
        let mut chunks = targets.chunks(size);
        let first = chunks.next().unwrap_or_default();
        let handles: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || seal_chunk(chunk)))
            .collect();
        let mut out = Vec::with_capacity(targets.len());
        out.extend(seal_chunk(first)?);
        for h in handles {
            out.extend(h.join().expect("sealing thread panicked")?);
        }
        Ok(out)
    })
}

/// `PUT /v1/{project_id}/cloudservers/os-reset-passwords`.
pub async fn batch_reset(
    state: &AppState,
    ctx: &CallContext<'_>,
    permit: &Permit,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<BatchResetResponse, Error> {
    let parsed = parse_body::<BatchResetBody>(content_type, &body);
    wipe(body);
    let result = async {
        let req = validate_batch_shape(parsed?)?;
        let outcome = plan_and_store(state, ctx, permit, &req).await;
        Ok::<_, Error>((req, outcome))
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

async fn plan_and_store(
    state: &AppState,
    ctx: &CallContext<'_>,
    permit: &Permit,
    req: &BatchRequest,
) -> Result<BatchResetResponse, Error> {
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
        return Err(Error::Password(l.clone()));
    }
    let found = state.store.servers_by_ids(&req.ids).await?;
    let by_id: HashMap<&str, &Server> = found.iter().map(|s| (s.id.as_str(), s)).collect();
    // Servers of this project the caller may not touch refuse the batch first.
    let refused = permit.refused(&req.ids, |id| {
        by_id
            .get(id)
            .copied()
            .filter(|s| s.project_id == ctx.caller.project_id)
    });
    if !refused.is_empty() {
        return Err(reject(refused, req.ids.len()));
    }
    let mut failures = Vec::new();
    let mut mine = 0usize;
    let mut password_failures = 0usize;
    for id in &req.ids {
        let server = by_id.get(id.as_str()).copied();
        if server.is_some_and(|s| s.project_id == ctx.caller.project_id) {
            mine += 1;
        }
        if let Some(problem) = server_problem(server, ctx.caller, &violations) {
            password_failures += usize::from(matches!(problem, Problem::Password(_)));
            failures.push(ServerFailure::new(id.clone(), problem));
        }
    }
    if password_failures > 0 && password_failures == mine {
        // The password is wrong for every server that exists here.
        let v = violations.values().next().expect("a violation was counted");
        return Err(Error::Password(v.clone()));
    }
    if !failures.is_empty() {
        return Err(reject(failures, req.ids.len()));
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
                    status: s.status,
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
        state.store.record_audit(entry).await?;
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

/// Up to this many targets are sealed on the request's own task.
const INLINE_SEALS: usize = 2;

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
) -> Result<(), Error> {
    let mut targets = Vec::with_capacity(ids.len());
    for id in ids {
        let key_bytes = by_id[id.as_str()]
            .agent_public_key
            .as_deref()
            .expect("checked: plug-in installed");
        let key = PublicKey::from_bytes(key_bytes)
            .map_err(|e| Error::internal("a stored agent key is invalid", e))?;
        targets.push((id.clone(), key));
    }
    let request_id = ctx.request_id.to_owned();
    let password = password.clone();
    let seal = move || {
        let started = std::time::Instant::now();
        let sealed = seal_all(&targets, &request_id, &password);
        crate::metrics::METRICS
            .seal_seconds
            .observe(started.elapsed().as_secs_f64());
        (targets, sealed)
    };
    // One or two seals (about 0.1 ms each) run here: handing them to a
    // blocking thread costs a wake-up of that thread and of this task,
    // which after idleness can take longer than the sealing itself.
    let (targets, sealed) = if ids.len() <= INLINE_SEALS {
        seal()
    } else {
        tokio::task::spawn_blocking(seal)
            .await
            .map_err(|e| Error::internal("sealing task", e))?
    };
    let sealed = sealed.map_err(|e| Error::internal("sealing", e))?;
    let reset = NewReset {
        request_id: ctx.request_id.to_owned(),
        project_id: ctx.caller.project_id.clone(),
        apply_now,
        created: Utc::now(),
        targets: targets.into_iter().map(|(id, _)| id).zip(sealed).collect(),
        audit: ctx.audit(action, ids.to_vec(), false, "accepted".into()),
    };
    state.store.create_reset(reset).await?;
    crate::metrics::METRICS.resets.inc();
    crate::metrics::targets("accepted", ids.len() as u64);
    state.wakers.wake(ids.iter().map(String::as_str));
    state.changes.bump();
    Ok(())
}

/// `PUT /v1/{project_id}/cloudservers/{server_id}/os-reset-password`.
pub async fn single_reset(
    state: &AppState,
    ctx: &CallContext<'_>,
    permit: &Permit,
    server_id: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<(), Error> {
    let parsed = parse_body::<SingleResetBody>(content_type, &body);
    wipe(body);
    let result = single_reset_inner(state, ctx, permit, server_id, parsed).await;
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
    permit: &Permit,
    server_id: &str,
    parsed: Result<SingleResetBody, Error>,
) -> Result<(), Error> {
    let inner = parsed?.reset_password.ok_or_else(|| {
        Error::invalid(
            "reset-password",
            "Invalid request body: reset-password is required.",
        )
    })?;
    let password = inner
        .new_password
        .ok_or_else(|| {
            Error::invalid(
                "reset-password.new_password",
                "Invalid request body: reset-password.new_password is required.",
            )
        })?
        .0;
    let server = state
        .store
        .server(&ctx.caller.project_id, server_id)
        .await?
        .ok_or_else(|| Error::server_not_found(server_id))?;
    if !permit.allows(&server) {
        return Err(permit.refuse(server_id));
    }
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
    if let Some(problem) = server_problem(Some(&server), ctx.caller, &violations) {
        return Err(Error::Refused(ServerFailure::new(server_id, problem)));
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
