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
use crate::store::escrow::NewVersion;
use crate::store::{NewReset, Server};

/// A password field: deserialized straight into a secret.
pub struct Password(pub SecretString);

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Password(SecretString::from(s)))
    }
}

/// Our extension (issue 15): `"generate": {"length": 20}` instead of a
/// password: a different random password per server, escrowed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    #[serde(default, deserialize_with = "crate::batch::present")]
    length: Option<usize>,
}

#[derive(Deserialize)]
struct BatchResetBody {
    new_password: Option<Password>,
    #[serde(default, deserialize_with = "crate::batch::present")]
    generate: Option<GenerateBody>,
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
    #[serde(default, deserialize_with = "crate::batch::present")]
    generate: Option<GenerateBody>,
    is_check_password: Option<bool>,
}

/// The password of a reset: given by the caller (one for every server), or
/// generated per server and escrowed (issue 15).
pub enum NewPassword {
    Given(SecretString),
    Generate { length: usize },
}

/// `new_password` or `generate`, never both; `generate.length` within the
/// rules of contract §2.4 (default 20).
fn choose_password(
    given: Option<Password>,
    generate: Option<GenerateBody>,
    prefix: &str,
) -> Result<Option<NewPassword>, Error> {
    match (given, generate) {
        (Some(_), Some(_)) => Err(Error::invalid(
            format!("{prefix}generate"),
            format!(
                "Invalid request body: {prefix}new_password and {prefix}generate cannot both be given."
            ),
        )),
        (Some(p), None) => Ok(Some(NewPassword::Given(p.0))),
        (None, Some(g)) => {
            let length = g.length.unwrap_or(ecs_escrow::DEFAULT_LENGTH);
            if !(ecs_policy::MIN_LEN..=ecs_policy::MAX_LEN).contains(&length) {
                return Err(Error::invalid(
                    format!("{prefix}generate.length"),
                    format!(
                        "Invalid request body: {prefix}generate.length must be between {} and {}.",
                        ecs_policy::MIN_LEN,
                        ecs_policy::MAX_LEN
                    ),
                ));
            }
            Ok(Some(NewPassword::Generate { length }))
        }
        (None, None) => Ok(None),
    }
}

/// The validated form of a batch reset request.
struct BatchRequest {
    password: Option<NewPassword>,
    dry_run: bool,
    apply_now: bool,
    ids: Vec<String>,
}

fn validate_batch_shape(body: BatchResetBody) -> Result<BatchRequest, Error> {
    let ids = validate_ids(body.servers, "servers")?;
    let dry_run = body.dry_run.unwrap_or(false);
    let password = choose_password(body.new_password, body.generate, "")?;
    if password.is_none() && !dry_run {
        return Err(Error::invalid(
            "new_password",
            "Invalid request body: new_password (or generate) is required unless dry_run is true.",
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
            req.password.as_ref().map(|p| match p {
                NewPassword::Given(p) => p.expose_secret().to_owned(),
                NewPassword::Generate { length } => format!("generate {length}"),
            }),
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
    if let Some(NewPassword::Generate { .. }) = &req.password {
        recipients_of(state, ctx).await?;
    }
    if let Some(NewPassword::Given(pw)) = &req.password {
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
        ResetPlan {
            action: "batch-reset-password",
            ids: &req.ids,
            apply_now: req.apply_now,
        },
        &by_id,
        password,
    )
    .await?;
    Ok(BatchResetResponse {
        response,
        readiness: None,
    })
}

/// Up to this many targets are sealed on the request's own task.
const INLINE_SEALS: usize = 2;

/// The project's escrow recipients; a project without any refuses a
/// generated password (nobody could ever read it).
async fn recipients_of(state: &AppState, ctx: &CallContext<'_>) -> Result<Vec<String>, Error> {
    let recipients: Vec<String> = state
        .escrow
        .recipients(&ctx.caller.project_id)
        .await?
        .into_iter()
        .map(|r| r.recipient)
        .collect();
    if recipients.is_empty() {
        return Err(Error::invalid(
            "generate",
            "Invalid request body: generate needs an escrow recipient in this project \
             (register one with `ecsctl escrow init`); nothing was reset.",
        ));
    }
    Ok(recipients)
}

/// Per target: the password sealed to its agent and, when generated, the
/// same password encrypted to the escrow recipients.
type Sealed = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Generates a password per target (its OS's rules), seals it to the
/// agent and encrypts it to the recipients; each password is zeroized when
/// its `SecretString` drops at the end of its iteration.
fn seal_generated(
    targets: &[(String, PublicKey, OsType)],
    request_id: &str,
    length: usize,
    recipients: &[String],
) -> Result<Sealed, Error> {
    // Large batches on every core, as `seal_all`.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = cores.min(targets.len().div_ceil(64).max(1));
    if threads > 1 {
        let size = targets.len().div_ceil(threads);
        return std::thread::scope(|scope| {
            let handles: Vec<_> = targets
                .chunks(size)
                .map(|chunk| {
                    scope.spawn(move || seal_generated_here(chunk, request_id, length, recipients))
                })
                .collect();
            let mut out = Vec::with_capacity(targets.len());
            for h in handles {
                out.extend(h.join().expect("sealing thread panicked")?);
            }
            Ok(out)
        });
    }
    seal_generated_here(targets, request_id, length, recipients)
}

/// [`seal_generated`] on the calling thread.
fn seal_generated_here(
    targets: &[(String, PublicKey, OsType)],
    request_id: &str,
    length: usize,
    recipients: &[String],
) -> Result<Sealed, Error> {
    targets
        .iter()
        .map(|(id, key, os)| {
            let password = ecs_escrow::generate(*os, length)
                .map_err(|e| Error::internal("generating a password", e))?;
            let sealed = ecs_seal::seal(key, id, request_id, &password)
                .map_err(|e| Error::internal("sealing", e))?
                .into_bytes();
            let escrowed = ecs_escrow::encrypt(recipients, &password)
                .map_err(|e| Error::internal("escrow encryption", e))?;
            Ok((sealed, Some(escrowed)))
        })
        .collect()
}

/// What a reset is for: stored under this request id by this caller.
pub struct ResetPlan<'a> {
    pub action: &'a str,
    pub ids: &'a [String],
    pub apply_now: bool,
}

/// Seals the password for every target and stores the reset in one
/// transaction, then wakes the targets' agents. A generated password is
/// escrowed first: a crash between the two leaves a version that never
/// applied, never a server whose password nobody can read.
async fn store_reset(
    state: &AppState,
    ctx: &CallContext<'_>,
    plan: ResetPlan<'_>,
    by_id: &HashMap<&str, &Server>,
    password: &NewPassword,
) -> Result<(), Error> {
    let ResetPlan {
        action,
        ids,
        apply_now,
    } = plan;
    let mut targets = Vec::with_capacity(ids.len());
    for id in ids {
        let server = by_id[id.as_str()];
        let key_bytes = server
            .agent_public_key
            .as_deref()
            .expect("checked: plug-in installed");
        let key = PublicKey::from_bytes(key_bytes)
            .map_err(|e| Error::internal("a stored agent key is invalid", e))?;
        targets.push((id.clone(), key, server.os_type));
    }
    let request_id = ctx.request_id.to_owned();
    let generated = match password {
        NewPassword::Given(_) => None,
        NewPassword::Generate { length } => Some((*length, recipients_of(state, ctx).await?)),
    };
    let given = match password {
        NewPassword::Given(p) => Some(p.clone()),
        NewPassword::Generate { .. } => None,
    };
    let seal = move || {
        let started = std::time::Instant::now();
        let sealed: Result<Sealed, Error> = match (&given, &generated) {
            (Some(password), _) => {
                let pairs: Vec<(String, PublicKey)> = targets
                    .iter()
                    .map(|(id, key, _)| (id.clone(), key.clone()))
                    .collect();
                seal_all(&pairs, &request_id, password)
                    .map(|v| v.into_iter().map(|s| (s, None)).collect())
                    .map_err(|e| Error::internal("sealing", e))
            }
            (None, Some((length, recipients))) => {
                seal_generated(&targets, &request_id, *length, recipients)
            }
            (None, None) => unreachable!("a password is given or generated"),
        };
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
    let sealed = sealed?;
    let now = state.clock.now();
    let escrowed: Vec<NewVersion> = targets
        .iter()
        .zip(&sealed)
        .filter_map(|((id, _, _), (_, blob))| {
            blob.as_ref().map(|blob| NewVersion {
                server_id: id.clone(),
                project_id: ctx.caller.project_id.clone(),
                request_id: ctx.request_id.to_owned(),
                created: now,
                blob: blob.clone(),
            })
        })
        .collect();
    let escrow = !escrowed.is_empty();
    if escrow {
        state
            .escrow
            .add_versions(escrowed, state.config.escrow_keep_versions as usize)
            .await?;
    }
    let reset = NewReset {
        request_id: ctx.request_id.to_owned(),
        project_id: ctx.caller.project_id.clone(),
        apply_now,
        created: Utc::now(),
        targets: targets
            .into_iter()
            .map(|(id, _, _)| id)
            .zip(sealed.into_iter().map(|(s, _)| s))
            .collect(),
        audit: ctx.audit(action, ids.to_vec(), false, "accepted".into()),
    };
    if let Err(e) = state.store.create_reset(reset).await {
        if escrow && let Err(d) = state.escrow.discard_versions(ctx.request_id).await {
            tracing::warn!(error = %d.chain(), "discarding the escrowed versions of a failed reset");
        }
        return Err(e);
    }
    crate::metrics::METRICS.resets.inc();
    crate::metrics::targets("accepted", ids.len() as u64);
    state.wakers.wake(ids.iter().map(String::as_str));
    state.changes.bump();
    Ok(())
}

/// A rotation (issue 15): generated, escrowed passwords for `servers`
/// (checked by the scheduler: enrolled, in a state that takes a reset),
/// stored as one reset request under `ctx.request_id`.
pub async fn rotate(
    state: &AppState,
    ctx: &CallContext<'_>,
    ids: &[String],
    servers: &[&Server],
    length: usize,
    apply_now: bool,
) -> Result<(), Error> {
    let by_id: HashMap<&str, &Server> = servers.iter().map(|s| (s.id.as_str(), *s)).collect();
    store_reset(
        state,
        ctx,
        ResetPlan {
            action: "rotate-password",
            ids,
            apply_now,
        },
        &by_id,
        &NewPassword::Generate { length },
    )
    .await
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
    let password = choose_password(inner.new_password, inner.generate, "reset-password.")?
        .ok_or_else(|| {
            Error::invalid(
                "reset-password.new_password",
                "Invalid request body: reset-password.new_password (or generate) is required.",
            )
        })?;
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
    if let NewPassword::Given(password) = &password {
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
        ResetPlan {
            action: "reset-password",
            ids: std::slice::from_ref(&server.id),
            apply_now: false,
        },
        &by_id,
        &password,
    )
    .await?;
    tracing::info!(
        request_id = ctx.request_id,
        "single password reset accepted"
    );
    Ok(())
}
