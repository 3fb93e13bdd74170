//! Server tags (Huawei's shapes): add or delete tags of one server, read them.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use ecs_api::{ServerTag, ServerTagsAction, ServerTagsResponse, TagAction};

use crate::authorize::{self, authorize};
use crate::authz::{Action, tags};
use crate::batch::{CallContext, parse_body};
use crate::domain::Error;
use crate::error::{ApiError, current_request_id};
use crate::state::{AppState, Caller, Source};
use crate::store::authz::TagChange;

/// Huawei `BatchCreateServerTags` / `BatchDeleteServerTags`. Create sets a
/// key's value (an existing key takes the new value); delete removes the
/// tags with these keys (and these values, when given).
#[utoipa::path(post, path = "/v1/{project_id}/cloudservers/{server_id}/tags/action",
    operation_id = "BatchServerTagsAction", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("server_id" = String, Path, description = "The server's id.")),
    request_body(content = ServerTagsAction, content_type = "application/json"),
    responses(
        (status = 204, description = "Done."),
        (status = 400, description = "Invalid body (Ecs.0005, Common.0002): unknown field, bad key or value, more than 10 tags.", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:cloudServers:batchSetServerTags is not allowed (on this server, with its current tags).", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such server in this project (Ecs.0114).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn tags_action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (_, server_id) = super::path(p)?;
    let permit = authorize(&state, &caller, &source.0, Action::SetServerTags, false).await?;
    let req: ServerTagsAction = parse_body(super::content_type(&headers), &body)?;
    let list: Vec<(String, Option<String>)> =
        req.tags.into_iter().map(|t| (t.key, t.value)).collect();
    tags::validate(&list).map_err(|e| Error::invalid(e.field, e.message))?;
    let current = state
        .authz_store
        .server_tags(&caller.project_id, &server_id)
        .await?
        .ok_or_else(|| ApiError::server_not_found(&server_id))?;
    if !permit.allows_tags(&current) {
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
    let (change, name) = match req.action {
        TagAction::Create => (TagChange::Create(list), "create-server-tags"),
        TagAction::Delete => (TagChange::Delete(list), "delete-server-tags"),
    };
    state
        .authz_store
        .change_server_tags(&caller.project_id, &server_id, change)
        .await?
        .ok_or_else(|| ApiError::server_not_found(&server_id))?;
    let request_id = current_request_id();
    let ctx = CallContext {
        caller: &caller,
        request_id: &request_id,
        source: &source.0,
    };
    state
        .store
        .record_audit(ctx.audit(name, vec![server_id], false, "accepted".into()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Huawei `ShowServerTags`.
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/{server_id}/tags",
    operation_id = "ShowServerTags", tag = "servers",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("server_id" = String, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "The server's tags.", body = ServerTagsResponse),
        (status = 400, description = "Malformed path (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:cloudServers:showServerTags is not allowed (on this server, with its tags).", body = ecs_api::GatewayErrorBody),
        (status = 404, description = "No such server in this project (Ecs.0114).", body = ecs_api::EcsErrorBody),
    ))]
pub async fn show_tags(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ServerTagsResponse>, ApiError> {
    let (_, server_id) = super::path(p)?;
    let permit = authorize(&state, &caller, &source.0, Action::ShowServerTags, false).await?;
    let current = state
        .authz_store
        .server_tags(&caller.project_id, &server_id)
        .await?
        .ok_or_else(|| ApiError::server_not_found(&server_id))?;
    if !permit.allows_tags(&current) {
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
    Ok(Json(ServerTagsResponse {
        tags: current
            .iter()
            .map(|t| {
                let (key, value) = tags::split(t);
                ServerTag {
                    key: key.to_owned(),
                    value: value.to_owned(),
                }
            })
            .collect(),
    }))
}
