//! Password reset endpoints (Huawei-compatible, plus the outcome extension).

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use ecs_api::{
    BatchResetResponse, ResetOutcome, ResetPwdFlag, ResetPwdFlagResponse, ResetSummary,
    TargetOutcome,
};

use crate::authorize::{self, authorize};
use crate::authz::Action;
use crate::error::{ApiError, current_request_id};
use crate::reset::{self, CallContext};
use crate::state::{AppState, Caller, Source};
use crate::store::fmt_time;

use super::{content_type, path};

/// Huawei `BatchResetServersPassword`: stores one sealed password per server
/// (all or nothing); agents apply it at the next boot, or at once with
/// `"apply": "now"`.
#[utoipa::path(put, path = "/v1/{project_id}/cloudservers/os-reset-passwords",
    operation_id = "BatchResetServersPassword", tag = "resets",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    request_body(content = ecs_api::BatchResetRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted for every server (or, with dry_run, checked).", body = BatchResetResponse),
        (status = 400, description = "Nothing was done: an invalid body (Ecs.0005, Common.0002), too many servers (Ecs.0118), a password rule (Ecs.0011), or servers that cannot take it — unknown or another project's (Ecs.0114), no plug-in or a state that forbids it (Ecs.0100); internalError lists each failing server.", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action at all (gateway body), or not on some servers of the batch (nothing done; the batch body with internalError naming each such server).", body = ecs_api::ErrorBody),
    ))]
pub async fn batch_reset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BatchResetResponse>, ApiError> {
    let permit = authorize(&state, &caller, &source.0, Action::ResetServerPwd, false).await?;
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    Ok(Json(
        reset::batch_reset(&state, &ctx, &permit, content_type(&headers), body).await?,
    ))
}

/// Huawei `ResetServerPassword`: one server; answered 204.
#[utoipa::path(put, path = "/v1/{project_id}/cloudservers/{server_id}/os-reset-password",
    operation_id = "ResetServerPassword", tag = "resets",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("server_id" = String, Path, description = "The server's id.")),
    request_body(content = ecs_api::SingleResetRequest, content_type = "application/json"),
    responses(
        (status = 204, description = "Accepted."),
        (status = 400, description = "Invalid body, password rules, or server state (Ecs.0005, Ecs.0100, ...).", body = ecs_api::EcsErrorBody),
        (status = 404, description = "No such server in this project (Ecs.0114).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action (on this server, with its tags).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn single_reset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (_project, server_id) = path(p)?;
    let permit = authorize(&state, &caller, &source.0, Action::ResetServerPwd, false).await?;
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    reset::single_reset(
        &state,
        &ctx,
        &permit,
        &server_id,
        content_type(&headers),
        body,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Huawei `ShowResetPasswordFlag`: "True" when a plug-in is enrolled and has reported.
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/{server_id}/os-resetpwd-flag",
    operation_id = "ShowResetPasswordFlag", tag = "resets",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("server_id" = String, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "The flag.", body = ResetPwdFlagResponse),
        (status = 400, description = "Malformed path (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 404, description = "No such server in this project (Ecs.0114).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action (on this server, with its tags).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn resetpwd_flag(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ResetPwdFlagResponse>, ApiError> {
    let (_project, server_id) = path(p)?;
    let permit = authorize(&state, &caller, &source.0, Action::Get, false).await?;
    let server = state
        .store
        .server(&caller.project_id, &server_id)
        .await
        .map_err(|e| ApiError::store("looking up a server", e))?
        .ok_or_else(|| ApiError::server_not_found(&server_id))?;
    if !permit.allows(&server) {
        authorize::audit_denial(
            &state,
            &caller,
            &source.0,
            permit.action,
            vec![server_id.clone()],
        )
        .await;
        return Err(permit.refuse(&server_id).into());
    }
    let ready = server.agent_public_key.is_some() && server.agent_last_seen.is_some();
    Ok(Json(ResetPwdFlagResponse {
        resetpwd_flag: if ready {
            ResetPwdFlag::True
        } else {
            ResetPwdFlag::False
        },
    }))
}

/// `GET /v1/{project_id}/cloudservers/os-reset-passwords/{request_id}` (ours).
/// `latest` names the project's newest reset request (the official SDKs do
/// not expose the `X-Request-Id` of a successful call).
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/os-reset-passwords/{request_id}",
    operation_id = "ShowResetOutcome", tag = "resets",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("request_id" = String, Path, description = "The X-Request-Id of the reset call (32 hex), or `latest`."),
        ("wait" = Option<u64>, Query, description = "Seconds (0 to 50) to wait for a change: the answer comes at once when the request is complete, 0.1 s after a server's state changes (so that changes arriving together are answered together), else after this long.")),
    responses(
        (status = 200, description = "Each server's state in that request.", body = ResetOutcome),
        (status = 400, description = "No such reset request in this project (Common.0011); a bad `wait` (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): the caller's policies do not allow the action.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn reset_outcome(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ResetOutcome>, ApiError> {
    let (_project, request_id) = path(p)?;
    authorize(&state, &caller, &source.0, Action::Get, true).await?;
    let wait = super::wait::wait_param(query)?;
    let request_id = resolve_request_id(&state, &caller, request_id).await?;
    let read = || read_outcome(&state, &caller.project_id, &request_id);
    Ok(Json(
        super::wait::until_changed(&state, wait, read, |o: &ResetOutcome| o.complete).await?,
    ))
}

fn no_such_reset() -> ApiError {
    ApiError::ecs(
        StatusCode::BAD_REQUEST,
        "Common.0011",
        "Invalid reset request ID: no such reset request in this project.",
    )
}

/// A reset request id from a path: `latest` (the project's newest) or 32
/// hex digits, lower-cased; 400 `Common.0011` otherwise.
pub(super) async fn resolve_request_id(
    state: &AppState,
    caller: &Caller,
    request_id: String,
) -> Result<String, ApiError> {
    let request_id = if request_id == "latest" {
        state
            .store
            .latest_reset_id(&caller.project_id)
            .await
            .map_err(|e| ApiError::store("reading the latest reset", e))?
            .ok_or_else(no_such_reset)?
    } else {
        request_id
    };
    if request_id.len() != 32 || !request_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(no_such_reset());
    }
    Ok(request_id.to_ascii_lowercase())
}

/// The outcome body of a reset request in a project.
pub(super) async fn read_outcome(
    state: &AppState,
    project_id: &str,
    request_id: &str,
) -> Result<ResetOutcome, ApiError> {
    let outcome = state
        .store
        .reset_outcome(project_id, request_id)
        .await
        .map_err(|e| ApiError::store("reading a reset outcome", e))?
        .ok_or_else(no_such_reset)?;
    Ok(outcome_body(outcome))
}

/// The answer for a stored reset's targets.
fn outcome_body(outcome: crate::store::ResetOutcome) -> ResetOutcome {
    let servers = outcome
        .targets
        .iter()
        .map(|t| TargetOutcome {
            id: t.server_id.clone(),
            state: t.state,
            reason: t.reason.clone(),
            updated: fmt_time(t.updated),
        })
        .collect();
    ResetOutcome {
        request_id: outcome.request_id,
        created: fmt_time(outcome.created),
        apply_now: outcome.apply_now,
        complete: outcome.targets.iter().all(|t| t.state.is_final()),
        summary: ResetSummary::count(outcome.targets.iter().map(|t| &t.state)),
        servers,
    }
}
