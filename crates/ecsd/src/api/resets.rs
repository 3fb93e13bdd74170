//! Password reset endpoints (Huawei-compatible, plus the outcome extension).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde_json::json;

use crate::error::{ApiError, current_request_id};
use crate::reset::{self, CallContext};
use crate::state::{AppState, Caller, Source};
use crate::store::{ResetState, fmt_time};

pub(super) fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|_| ApiError::invalid("Invalid request: a path parameter is malformed."))
}

pub async fn batch_reset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<reset::BatchResetResponse>, ApiError> {
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    Ok(Json(
        reset::batch_reset(&state, &ctx, content_type(&headers), body).await?,
    ))
}

pub async fn single_reset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (_project, server_id) = path(p)?;
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    reset::single_reset(&state, &ctx, &server_id, content_type(&headers), body).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn resetpwd_flag(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_project, server_id) = path(p)?;
    let server = state
        .store
        .server(&caller.project_id, &server_id)
        .await
        .map_err(|e| ApiError::internal("looking up a server", e))?
        .ok_or_else(|| ApiError::server_not_found(&server_id))?;
    let ready = server.agent_public_key.is_some() && server.agent_last_seen.is_some();
    Ok(Json(
        json!({"resetpwd_flag": if ready { "True" } else { "False" }}),
    ))
}

/// `GET /v1/{project_id}/cloudservers/os-reset-passwords/{request_id}` (ours).
/// `latest` names the project's newest reset request (the official SDKs do
/// not expose the `X-Request-Id` of a successful call).
pub async fn reset_outcome(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_project, request_id) = path(p)?;
    let invalid = || {
        ApiError::ecs(
            StatusCode::BAD_REQUEST,
            "Common.0011",
            "Invalid reset request ID: no such reset request in this project.",
        )
    };
    let request_id = if request_id == "latest" {
        state
            .store
            .latest_reset_id(&caller.project_id)
            .await
            .map_err(|e| ApiError::internal("reading the latest reset", e))?
            .ok_or_else(invalid)?
    } else {
        request_id
    };
    if request_id.len() != 32 || !request_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let outcome = state
        .store
        .reset_outcome(&caller.project_id, &request_id.to_ascii_lowercase())
        .await
        .map_err(|e| ApiError::internal("reading a reset outcome", e))?
        .ok_or_else(invalid)?;
    let mut summary = serde_json::Map::new();
    for s in [
        ResetState::Pending,
        ResetState::Delivered,
        ResetState::Applied,
        ResetState::Failed,
        ResetState::Superseded,
    ] {
        let n = outcome.targets.iter().filter(|t| t.state == s).count();
        summary.insert(s.as_str().to_owned(), json!(n));
    }
    let servers: Vec<_> = outcome
        .targets
        .iter()
        .map(|t| {
            json!({
                "id": t.server_id,
                "state": t.state.as_str(),
                "reason": t.reason,
                "updated": fmt_time(t.updated),
            })
        })
        .collect();
    Ok(Json(json!({
        "request_id": outcome.request_id,
        "created": fmt_time(outcome.created),
        "apply_now": outcome.apply_now,
        "complete": outcome.targets.iter().all(|t| t.state.is_final()),
        "summary": summary,
        "servers": servers,
    })))
}
