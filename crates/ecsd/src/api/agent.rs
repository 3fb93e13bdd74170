//! The agent API (contract §4) and the enrollment-token extension of the
//! public API. An agent authenticates with its bearer credential and sees only
//! its own server's work.

use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use ecs_agent_proto as proto;
use serde::Deserialize;

use crate::auth::read_body;
use crate::authorize::authorize;
use crate::authz::Action;
use crate::enroll;
use crate::error::ApiError;
use crate::secrets::bearer_hash;
use crate::state::{AppState, Caller};
use crate::store::{Heartbeat, NextWork};

/// Largest agent request body.
const AGENT_BODY_LIMIT: usize = 16 * 1024;

/// The fields of `POST /v1/{project_id}/enroll-tokens`.
const ENROLL_TOKEN_FIELDS: [&str; 2] = ["uses", "ttl_secs"];

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    crate::batch::from_json(body).map_err(|e| {
        ApiError::invalid(match e {
            crate::batch::JsonError::Trailing => crate::batch::TRAILING_MESSAGE,
            _ => "Invalid request body for the agent API.",
        })
    })
}

async fn body(headers: &HeaderMap, b: axum::body::Body) -> Result<Bytes, ApiError> {
    read_body(headers, b, AGENT_BODY_LIMIT).await
}

/// The server whose agent sent the request: the agent API's authentication
/// (heartbeat, work, acknowledgements), an extractor that each of those
/// handlers takes first, before the body or the query. The bearer credential
/// names the server. In order: a source over its failed-authentication budget
/// is refused (429); a credential over `agent_rate_limit_per_sec` is refused
/// (429, `Retry-After`); an unknown credential is 401 and charged to its
/// source; a known one exempts its connection from the per-source connection
/// cap.
///
/// An extractor rather than a middleware layer: the future of a layer is
/// held for the whole request, and an idle long poll (`GET /agent/v1/work`)
/// is a request that lasts; every layer on it costs each of 10,000 idle
/// agents its own boxed future and service clones (docs/benchmarks.md, the
/// idle fleet's memory).
pub struct AgentServer(pub AgentOf);

/// What an agent call knows of its server: the id (the handlers need no
/// more, and an idle long poll holds little).
pub struct AgentOf {
    pub id: String,
}

impl axum::extract::FromRequestParts<AppState> for AgentServer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Response> {
        let source = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cred = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|c| bearer_hash(c.trim()));
        let server = agent(state, &source, cred).await?;
        if let Some(slot) = parts
            .extensions
            .get::<std::sync::Arc<crate::conn_limits::ConnSlot>>()
        {
            slot.exempt();
        }
        Ok(AgentServer(server))
    }
}

/// `hash`: the SHA-256 of the bearer credential presented, if any.
async fn agent(state: &AppState, source: &str, hash: Option<String>) -> Result<AgentOf, Response> {
    let source_key = format!("ip:{source}");
    let now = std::time::Instant::now();
    if !state.auth_failures.allows(&source_key, now) {
        tracing::warn!(%source, "failed agent authentications throttled");
        return Err(ApiError::throttled().into_response());
    }
    let hash =
        hash.ok_or_else(|| ApiError::unauthenticated("agent credential missing").into_response())?;
    // Charged to the credential as presented: an unknown one costs its
    // source a failure below as well.
    if let Err(not_until) = state.agent_limiter.check_key(&hash) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        tracing::warn!(%source, "agent over agent_rate_limit_per_sec");
        let mut resp = ApiError::throttled().into_response();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from(secs.max(1)),
        );
        return Err(resp);
    }
    match state
        .store
        .agent_server_id(&hash)
        .await
        .map_err(|e| ApiError::store("looking up an agent", e).into_response())?
    {
        Some(id) => Ok(AgentOf { id }),
        None => {
            state.auth_failures.fail(&source_key, now);
            crate::metrics::auth_failure("agent");
            tracing::warn!(%source, "agent call with an unknown credential");
            Err(ApiError::unauthenticated("agent credential not recognised").into_response())
        }
    }
}

/// `POST /v1/{project_id}/enroll-tokens`: a token for onboarding servers.
/// Ours: a token with which new servers' agents enroll (`ecs-agent enroll`).
#[utoipa::path(post, path = "/v1/{project_id}/enroll-tokens",
    operation_id = "CreateEnrollToken", tag = "agents",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    request_body(content = Option<ecs_api::EnrollTokenRequest>, content_type = "application/json",
        description = "Optional: an empty body means the defaults (1 use, 3600 s), as does `{}`. An object with any field other than `uses` and `ttl_secs` is refused (Ecs.0005)."),
    responses(
        (status = 201, description = "The token (shown once) and the join token with the CA pin.", body = ecs_api::EnrollTokenResponse),
        (status = 400, description = "Invalid body (Ecs.0005): malformed JSON, bytes after the JSON value, an unknown field, a wrong type.", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action .", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn create_enroll_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<crate::state::Source>,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &caller, &source.0, Action::CreateEnrollToken, true).await?;
    // An empty body means the defaults; a JSON object must name only the
    // documented fields (an object of unknown fields is a mistake, not a
    // request for the defaults).
    let req: proto::EnrollTokenRequest = if body.is_empty() {
        Default::default()
    } else {
        let fields: serde_json::Map<String, serde_json::Value> = parse(&body)?;
        if let Some(unknown) = fields
            .keys()
            .find(|k| !ENROLL_TOKEN_FIELDS.contains(&k.as_str()))
        {
            let name: String = unknown.chars().take(64).collect();
            return Err(ApiError::invalid(format!(
                "Invalid request body: unknown field {name:?} (known: uses, ttl_secs)."
            )));
        }
        serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|_| ApiError::invalid("Invalid request body for the agent API."))?
    };
    let issued = enroll::requested_enroll_token(&state, &caller.project_id, req).await;
    // The audit record (lifecycle, #10): never the token.
    let request_id = crate::error::current_request_id();
    let ctx = crate::batch::CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    match &issued {
        Ok(_) => {
            let entry = ctx.audit("create-enroll-token", vec![], false, "accepted".into());
            if let Err(e) = state.store.record_audit(entry).await {
                tracing::error!(error = %e.chain(), "writing the audit record failed");
            }
        }
        Err(e) => {
            crate::batch::audit_rejection(&state, &ctx, "create-enroll-token", vec![], false, e)
                .await
        }
    }
    Ok((StatusCode::CREATED, Json(issued?)).into_response())
}

/// `POST /agent/v1/rekey-challenge`: a random challenge sealed to the
/// server's current agent key; only that key's holder can answer it.
pub async fn rekey_challenge(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<proto::RekeyChallenge>, ApiError> {
    let req: proto::RekeyChallengeRequest = parse(&body(&headers, raw).await?)?;
    Ok(Json(enroll::rekey_challenge(&state, &req.server_id).await?))
}

/// `POST /agent/v1/enroll`.
pub async fn enroll(
    State(state): State<AppState>,
    Extension(source): Extension<crate::state::Source>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<proto::EnrollResponse>, ApiError> {
    let req: proto::EnrollRequest = parse(&body(&headers, raw).await?)?;
    let enrolled = enroll::enroll(&state, req).await?;
    // The audit record (lifecycle, #10): a server joined or re-keyed.
    let entry = crate::store::AuditEntry {
        at: Utc::now(),
        request_id: crate::error::current_request_id(),
        project_id: enrolled.project_id.clone(),
        actor: "agent".into(),
        action: "enroll-agent".into(),
        servers: vec![enrolled.server_id.clone()],
        dry_run: false,
        outcome: "accepted".into(),
        source: source.0,
        user_id: None,
        user_name: None,
        error_code: None,
        http_status: None,
    };
    if let Err(e) = state.store.record_audit(entry).await {
        tracing::error!(error = %e.chain(), "writing the audit record failed");
    }
    Ok(Json(enrolled))
}

/// `POST /agent/v1/heartbeat`.
pub async fn heartbeat(
    State(state): State<AppState>,
    AgentServer(server): AgentServer,
    Extension(source): Extension<crate::state::Source>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<proto::HeartbeatResponse>, ApiError> {
    let req: proto::HeartbeatRequest = parse(&body(&headers, raw).await?)?;
    if req.boot_id.len() > 64 || req.agent_version.len() > 64 {
        return Err(ApiError::invalid(
            "boot_id and agent_version are at most 64 characters.",
        ));
    }
    state
        .store
        .heartbeat(
            &server.id,
            Heartbeat {
                agent_version: req.agent_version,
                boot_id: req.boot_id,
                uptime_secs: req.uptime_secs,
                address: source
                    .0
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .map(|a| a.ip().to_string()),
                power_driver: req.power_driver,
            },
            Utc::now(),
        )
        .await
        .map_err(|e| ApiError::store("recording a heartbeat", e))?;
    // A new boot id completes reboot and start jobs.
    state.changes.bump();
    // The start-up check rides on the heartbeat: what `GET /work` (no
    // `have`, no wait) would answer, one call fewer per restarting agent.
    let work = if req.start_up {
        let q = WorkQuery {
            have: None,
            wait: None,
            power_only: false,
        };
        Some(next_work(&state, &server.id, &q).await?.unwrap_or_default())
    } else {
        None
    };
    Ok(Json(proto::HeartbeatResponse {
        reconnect_spread_secs: reconnect_spread(
            state.wakers.waiting(),
            state.config.agent_reconnect_per_sec,
        ),
        work,
    }))
}

/// Seconds over which agents spread their reconnect so that `agents` of
/// them arrive at about `per_sec` a second (1 to 600).
pub fn reconnect_spread(agents: usize, per_sec: u32) -> u32 {
    if per_sec == 0 {
        return 1;
    }
    let secs = agents.div_ceil(per_sec as usize);
    secs.clamp(1, 600) as u32
}

#[derive(Deserialize)]
pub struct WorkQuery {
    have: Option<String>,
    wait: Option<u64>,
    #[serde(default)]
    power_only: bool,
}

/// `GET /agent/v1/work`: long poll for the newest open reset.
pub async fn work(
    State(state): State<AppState>,
    agent: AgentServer,
    query: Result<Query<WorkQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let AgentServer(AgentOf { id: server_id }) = agent;
    let Query(q) = query.map_err(|_| ApiError::invalid("Invalid query parameters."))?;
    Ok(match wait_for_work(&state, &server_id, &q).await? {
        Some(poll) => Json(poll).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The long poll: work for this server as soon as there is some, else
/// `None` after `q.wait` seconds (at most `agent_poll_secs`) or at once
/// when ecsd shuts down.
async fn wait_for_work(
    state: &AppState,
    server_id: &str,
    q: &WorkQuery,
) -> Result<Option<proto::Poll>, ApiError> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.config.agent_poll_secs));
    let deadline = tokio::time::Instant::now() + wait;
    let subscription = state.wakers.subscribe(server_id);
    let notify = subscription.notify();
    let _polling = crate::metrics::Polling::start();
    let result = loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Subscribe before looking, so work stored in between still wakes us.
        notified.as_mut().enable();
        match next_work(state, server_id, q).await {
            Err(e) => break Err(e),
            Ok(Some(poll)) => break Ok(Some(poll)),
            Ok(None) => {}
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, notified) => {
                if r.is_err() {
                    break Ok(None);
                }
            }
            _ = state.wakers.closed() => break Ok(None),
        }
    };
    drop(subscription);
    result
}

/// A power action, else (unless `power_only`) a reset newer than `have`.
async fn next_work(
    state: &AppState,
    server_id: &str,
    q: &WorkQuery,
) -> Result<Option<proto::Poll>, ApiError> {
    let now = Utc::now();
    let keys = state
        .work_keys()
        .await
        .map_err(|e| ApiError::internal("loading the work-signing key", e))?;
    let w = match state
        .store
        .take_next(server_id, now, q.power_only)
        .await
        .map_err(|e| ApiError::store("reading agent work", e))?
    {
        None => return Ok(None),
        Some(NextWork::Power(p)) => {
            return Ok(Some(proto::Poll {
                reset: None,
                power: Some(proto::Power {
                    envelope: Some(keys.sign_power(server_id, &p)),
                    keys: keys.chain().to_vec(),
                    job_id: p.sub_job_id,
                    action: p.kind.as_str().to_owned(),
                    hard: p.hard,
                }),
            }));
        }
        Some(NextWork::Reset(w)) => w,
    };
    if q.have.as_deref() == Some(w.request_id.as_str()) {
        return Ok(None);
    }
    crate::metrics::targets("delivered", 1);
    state.changes.bump();
    Ok(Some(proto::Poll {
        reset: Some(proto::Work {
            server_id: server_id.to_owned(),
            envelope: Some(keys.sign_reset(server_id, &w)),
            keys: keys.chain().to_vec(),
            sealed: ecs_seal::Sealed::from_bytes(w.sealed)
                .map(|s| s.to_base64())
                .unwrap_or_default(),
            request_id: w.request_id,
            apply_now: w.apply_now,
        }),
        power: None,
    }))
}

/// `POST /agent/v1/power-ack`.
pub async fn power_ack(
    State(state): State<AppState>,
    AgentServer(server): AgentServer,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<proto::AckResponse>, ApiError> {
    let req: proto::PowerAck = parse(&body(&headers, raw).await?)?;
    let reason = req
        .reason
        .as_deref()
        .map(|r| r.chars().take(500).collect::<String>());
    let recorded = state
        .store
        .power_ack(
            &server.id,
            &req.job_id,
            req.ok,
            reason.as_deref(),
            Utc::now(),
        )
        .await
        .map_err(|e| ApiError::store("recording a power outcome", e))?;
    if recorded {
        crate::metrics::sub_jobs(if req.ok { "success" } else { "fail" }, 1);
        state.changes.bump();
    }
    tracing::info!(server_id = %server.id, sub_job = %req.job_id, ok = req.ok, recorded, "power action acknowledged");
    Ok(Json(proto::AckResponse {
        recorded,
        work: None,
    }))
}

/// `POST /agent/v1/ack`.
pub async fn ack(
    State(state): State<AppState>,
    AgentServer(server): AgentServer,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<proto::AckResponse>, ApiError> {
    let req: proto::AckRequest = parse(&body(&headers, raw).await?)?;
    let reason = req
        .reason
        .as_deref()
        .map(|r| r.chars().take(500).collect::<String>());
    let applied = req.outcome == proto::Outcome::Applied;
    let recorded = state
        .store
        .ack(
            &server.id,
            &req.request_id,
            applied,
            reason.as_deref(),
            Utc::now(),
        )
        .await
        .map_err(|e| ApiError::store("recording an outcome", e))?;
    if recorded {
        state.changes.bump();
        crate::metrics::targets(if applied { "applied" } else { "failed" }, 1);
        if applied {
            // Metrics only: a failed lookup costs the histogram one sample.
            if let Ok(Some(at)) = state.store.reset_accepted_at(&req.request_id).await {
                let secs = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
                crate::metrics::METRICS.reset_apply_seconds.observe(secs);
            }
        }
    }
    tracing::info!(server_id = %server.id, request_id = %req.request_id, outcome = ?req.outcome, recorded, "reset outcome");
    // The long poll that follows the acknowledgement, in the same call.
    let work = match req.then_poll {
        Some(then) => {
            let q = WorkQuery {
                have: then.have,
                wait: Some(then.wait_secs),
                power_only: false,
            };
            Some(
                wait_for_work(&state, &server.id, &q)
                    .await?
                    .unwrap_or_default(),
            )
        }
        None => None,
    };
    Ok(Json(proto::AckResponse { recorded, work }))
}

#[cfg(test)]
mod tests {
    use super::reconnect_spread;

    #[test]
    fn the_reconnect_spread_grows_with_the_agents_served_within_its_bounds() {
        assert_eq!(reconnect_spread(0, 200), 1);
        assert_eq!(reconnect_spread(150, 200), 1);
        assert_eq!(reconnect_spread(201, 200), 2);
        assert_eq!(reconnect_spread(10_000, 200), 50);
        assert_eq!(reconnect_spread(10_000_000, 200), 600);
        // 0 turns spreading off.
        assert_eq!(reconnect_spread(10_000, 0), 1);
    }
}
