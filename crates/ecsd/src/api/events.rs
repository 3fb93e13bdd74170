//! Server-Sent Events (ours): a reset's per-server outcome and a power
//! job, pushed as they change, for the web console's Watch page and any
//! other client (`curl -N`). Each event's `data` is exactly the JSON the
//! matching GET answers; `event: end` closes a finished one. Built on the
//! same wake-up as `?wait=` ([`crate::state::Changes`], and a look every
//! second for other replicas' changes). The credential that opened a
//! stream is looked at again every [`RECHECK_SECS`] and before each event
//! ([`Credential`]): once signed out, expired, revoked or disabled, the
//! stream ends with `event: error` and `APIGW.0301`. Limits: `max_event_streams` open
//! at once per replica (beyond: 429 `APIGW.0308`), each at most `seconds`
//! (default and most [`MAX_STREAM_SECS`]; 0: the current state only); a comment every
//! [`KEEPALIVE_SECS`] keeps proxies from closing an idle stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ecs_api::{ResetOutcome, ShowJobResponse};
use serde::Serialize;

use crate::authorize::authorize;
use crate::authz::Action;
use crate::error::ApiError;
use crate::identity::{TokenState, token_state};
use crate::secrets::bearer_hash;
use crate::state::{AppState, Caller, Source};

/// The longest (and default) life of one stream; clients reconnect.
pub const MAX_STREAM_SECS: u64 = 600;
/// A comment line this often on an otherwise quiet stream.
pub const KEEPALIVE_SECS: u64 = 15;
/// The stream's credential is looked at again at least this often.
pub const RECHECK_SECS: u64 = 2;

/// The credential a stream was opened with, checked again while it runs
/// (from the shared store, so a sign-out or revocation on any replica ends
/// it): a console session or `X-Auth-Token` by its hash (unrevoked,
/// unexpired, a session also within its absolute life, its user enabled),
/// an AK by its key (a permanent key still there and enabled; a temporary
/// one unexpired and its user enabled). Not looked at again: the role and
/// policies (decided at open).
enum Credential {
    Session(String),
    Token(String),
    Key(String),
}

impl Credential {
    /// Which credential `verify` (crate::auth) took, in the same order.
    fn of(caller: &Caller, headers: &HeaderMap) -> Self {
        if let Some(t) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
            return Credential::Token(bearer_hash(t.trim()));
        }
        if !headers.contains_key(header::AUTHORIZATION)
            && let Some(secret) = crate::console::session::cookie_secret(headers)
        {
            return Credential::Session(bearer_hash(secret));
        }
        Credential::Key(caller.access_key.clone())
    }

    /// Whether the credential still authenticates now.
    async fn still_good(&self, state: &AppState) -> Result<bool, ApiError> {
        let store = |e| ApiError::store("checking a stream's credential", e);
        let now = chrono::Utc::now();
        let user_enabled = |id: String| async move {
            Ok::<_, ApiError>(
                state
                    .identity
                    .user(&id)
                    .await
                    .map_err(store)?
                    .is_some_and(|u| u.enabled),
            )
        };
        match self {
            Credential::Session(hash) | Credential::Token(hash) => {
                let Some(t) = state.identity.token_by_hash(hash).await.map_err(store)? else {
                    return Ok(false);
                };
                let absolute = crate::console::session::Lifetime::of(&state.config);
                let alive = token_state(&t, now) == TokenState::Valid
                    && (matches!(self, Credential::Token(_))
                        || now < absolute.absolute_end(t.issued));
                Ok(alive && user_enabled(t.user_id).await?)
            }
            Credential::Key(ak) => {
                if state.store.access_key(ak).await.map_err(store)?.is_some() {
                    return Ok(state
                        .lifecycle
                        .key_gate(ak)
                        .await
                        .map_err(store)?
                        .is_none_or(|g| g.enabled));
                }
                match state
                    .identity
                    .temporary_credential(ak)
                    .await
                    .map_err(store)?
                {
                    Some(c) if now < c.expires => user_enabled(c.user_id).await,
                    _ => Ok(false),
                }
            }
        }
    }
}

/// One event of a stream, as its `text/event-stream` fields (documented
/// only: the stream itself is text).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ServerSentEvent {
    /// `outcome` (resets) or `job` (jobs) at once and at each change;
    /// `end` once final; `error` with the error code if a later read failed
    /// (`APIGW.0301` once the credential that opened the stream no longer
    /// authenticates: signed out, expired, revoked or disabled).
    event: String,
    /// Counts up from 1 on each stream.
    id: String,
    /// The JSON of the matching GET (`{}` with `end`, the code with `error`).
    data: String,
}

/// The kind of a credential, for the log (never the hash or key).
fn cred_kind(c: &Credential) -> &'static str {
    match c {
        Credential::Session(_) => "console session",
        Credential::Token(_) => "token",
        Credential::Key(_) => "access key",
    }
}

/// One open stream, counted in `AppState::event_streams` until dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `seconds` parameter: the stream's life, 0 (the current state only)
/// to [`MAX_STREAM_SECS`].
fn seconds_param(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Duration, ApiError> {
    let Query(q) = query.map_err(|_| ApiError::invalid("Invalid query string."))?;
    match q.get("seconds") {
        None => Ok(Duration::from_secs(MAX_STREAM_SECS)),
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s <= MAX_STREAM_SECS => Ok(Duration::from_secs(s)),
            _ => Err(ApiError::invalid(format!(
                "Invalid query parameter seconds: it must be 0 to {MAX_STREAM_SECS}."
            ))),
        },
    }
}

/// One SSE event.
fn event(name: &str, id: u64, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("id: {id}\nevent: {name}\ndata: {json}\n\n"))
}

/// Answers with a stream of `read`'s values: the first at once, then each
/// that differs from the one before, ending after a `done` one (with
/// `event: end`), after `life`, or when the server stops. The first read
/// happens before answering, so an unknown id is the usual error body.
/// Ends early (`event: error`, `APIGW.0301`) once `cred` no longer
/// authenticates, looked at before each event and every [`RECHECK_SECS`].
async fn stream<T, F, Fut>(
    state: AppState,
    cred: Credential,
    life: Duration,
    name: &'static str,
    read: F,
    done: fn(&T) -> bool,
) -> Result<Response, ApiError>
where
    T: Serialize + PartialEq + Send + 'static,
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send,
{
    let max = state.config.max_event_streams;
    let slot = Slot::take(&state.event_streams, max).ok_or_else(|| {
        tracing::warn!(max, "event streams at their limit");
        ApiError::throttled()
    })?;
    let mut changes = state.changes.subscribe();
    let first = read().await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let _slot = slot;
        let deadline = tokio::time::Instant::now() + life;
        let mut n = 1;
        let mut last = first;
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
            || tx.send(event(name, n, &last)).await.is_err()
        {
            return;
        }
        let mut quiet = tokio::time::Instant::now();
        let mut checked = tokio::time::Instant::now();
        while !done(&last) {
            tokio::select! {
                _ = changes.changed() => {}
                // Another replica's changes: look again now and then.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = state.wakers.closed() => return,
                _ = tx.closed() => return,
            }
            let now = match read().await {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(event("error", n + 1, &e.code())).await;
                    return;
                }
            };
            if now != last || checked.elapsed() >= Duration::from_secs(RECHECK_SECS) {
                checked = tokio::time::Instant::now();
                let code = match cred.still_good(&state).await {
                    Ok(true) => None,
                    Ok(false) => Some("APIGW.0301"),
                    Err(e) => Some(e.code()),
                };
                if let Some(code) = code {
                    tracing::info!(
                        credential = cred_kind(&cred),
                        "an event stream's credential ended; stream closed"
                    );
                    let _ = tx.send(event("error", n + 1, &code)).await;
                    return;
                }
            }
            if now != last {
                n += 1;
                if tx.send(event(name, n, &now)).await.is_err() {
                    return;
                }
                last = now;
                quiet = tokio::time::Instant::now();
            } else if quiet.elapsed() >= Duration::from_secs(KEEPALIVE_SECS) {
                if tx
                    .send(Bytes::from_static(b": keepalive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet = tokio::time::Instant::now();
            }
        }
        let _ = tx.send(event("end", n + 1, &serde_json::json!({}))).await;
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `GET /v1/{project_id}/cloudservers/os-reset-passwords/{request_id}/events` (ours).
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}/events",
    operation_id = "StreamResetOutcome", tag = "resets",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("request_id" = String, Path, description = "The X-Request-Id of the reset call (32 hex), or `latest`."),
        ("seconds" = Option<u64>, Query, description = "The stream's life, 0 to 600 seconds (default 600; 0: the current state only); clients reconnect.")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: outcome` whose data is the ShowResetOutcome JSON, at once and at each change; `event: end` once every server is final. At most max_event_streams (256) open per replica.", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 400, description = "No such reset request in this project (Common.0011); a bad `seconds` (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action.", body = ecs_api::GatewayErrorBody),
        (status = 429, description = "max_event_streams streams are open on this replica (APIGW.0308).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn reset_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (_project, request_id) = super::path(p)?;
    authorize(&state, &caller, &source.0, Action::Get, true).await?;
    let life = seconds_param(query)?;
    let request_id = super::resets::resolve_request_id(&state, &caller, request_id).await?;
    let (st, project) = (state.clone(), caller.project_id.clone());
    let read = move || {
        let (st, project, request_id) = (st.clone(), project.clone(), request_id.clone());
        async move { super::resets::read_outcome(&st, &project, &request_id).await }
    };
    let cred = Credential::of(&caller, &headers);
    stream(state, cred, life, "outcome", read, |o: &ResetOutcome| {
        o.complete
    })
    .await
}

/// `GET /v1/{project_id}/jobs/{job_id}/events` (ours).
#[utoipa::path(get, path = "/v1/{project_id}/jobs/{job_id}/events",
    operation_id = "StreamJob", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("job_id" = String, Path, description = "A job id (UUID)."),
        ("seconds" = Option<u64>, Query, description = "The stream's life, 0 to 600 seconds (default 600; 0: the current state only); clients reconnect.")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: job` whose data is the ShowJob JSON, at once and at each change; `event: end` once the job is SUCCESS or FAIL. At most max_event_streams (256) open per replica.", content_type = "text/event-stream", body = ServerSentEvent),
        (status = 400, description = "Invalid or unknown job id (Common.0011); a bad `seconds` (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action.", body = ecs_api::GatewayErrorBody),
        (status = 429, description = "max_event_streams streams are open on this replica (APIGW.0308).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn job_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &caller, &source.0, Action::GetJob, true).await?;
    let invalid = || ApiError::ecs(StatusCode::BAD_REQUEST, "Common.0011", "Invalid job ID.");
    let (_, job_id) = p.map(|Path(t)| t).map_err(|_| invalid())?;
    if uuid::Uuid::parse_str(&job_id).is_err() {
        return Err(invalid());
    }
    let life = seconds_param(query)?;
    let (st, project) = (state.clone(), caller.project_id.clone());
    let read = move || {
        let (st, project, job_id) = (st.clone(), project.clone(), job_id.clone());
        async move {
            let job = st
                .store
                .job(&project, &job_id)
                .await
                .map_err(|e| ApiError::store("reading a job", e))?
                .ok_or_else(|| {
                    ApiError::ecs(StatusCode::BAD_REQUEST, "Common.0011", "Invalid job ID.")
                })?;
            Ok(crate::power::show_job(&job))
        }
    };
    let cred = Credential::of(&caller, &headers);
    stream(state, cred, life, "job", read, |j: &ShowJobResponse| {
        matches!(
            j.status,
            ecs_api::JobStatus::Success | ecs_api::JobStatus::Fail
        )
    })
    .await
}
