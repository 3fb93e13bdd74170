//! Ours (issue 15): escrow recipients, retrieval of escrowed passwords
//! (encrypted blobs only; every retrieval, refused or not, audited),
//! rotation policies and the password drift report. Thin: the rules are in
//! `crate::escrow` and `crate::domain::escrow`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use ecs_api::{
    CreateRecipientRequest, EscrowRecipient, EscrowedPasswords, EscrowedVersion,
    PasswordStatusList, RecipientList, ResetState, RotationPolicy, RotationPolicyList,
    RotationPolicySpec,
};

use crate::authorize::{self, authorize};
use crate::authz::Action;
use crate::batch::{CallContext, parse_body};
use crate::domain::Error;
use crate::error::{ApiError, current_request_id};
use crate::state::{AppState, Caller, Source};
use crate::store::fmt_time;

fn ctx<'a>(caller: &'a Caller, request_id: &'a str, source: &'a Source) -> CallContext<'a> {
    CallContext {
        caller,
        request_id,
        source: &source.0,
    }
}

/// Registers an age X25519 recipient for the project's escrowed passwords.
#[utoipa::path(post, path = "/v1/{project_id}/escrow/recipients",
    operation_id = "CreateEscrowRecipient", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    request_body(content = CreateRecipientRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered; later generated passwords are encrypted to it too.", body = EscrowRecipient),
        (status = 400, description = "Invalid body or not an age X25519 recipient (Ecs.0005, Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 409, description = "The project has this recipient already (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:createRecipient.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn create_recipient(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<EscrowRecipient>), ApiError> {
    authorize(&state, &caller, &source.0, Action::CreateRecipient, true).await?;
    let req: CreateRecipientRequest = parse_body(super::content_type(&headers), &body)?;
    let request_id = current_request_id();
    let r = crate::escrow::add_recipient(
        &state,
        &ctx(&caller, &request_id, &source),
        &req.name,
        &req.recipient,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(recipient_view(r))))
}

fn recipient_view(r: crate::store::escrow::Recipient) -> EscrowRecipient {
    EscrowRecipient {
        id: r.id,
        name: r.name,
        recipient: r.recipient,
        created: fmt_time(r.created),
    }
}

/// The project's escrow recipients.
#[utoipa::path(get, path = "/v1/{project_id}/escrow/recipients",
    operation_id = "ListEscrowRecipients", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    responses(
        (status = 200, description = "Oldest first.", body = RecipientList),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:listRecipients.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list_recipients(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
) -> Result<Json<RecipientList>, ApiError> {
    authorize(&state, &caller, &source.0, Action::ListRecipients, true).await?;
    let recipients = state
        .escrow
        .recipients(&caller.project_id)
        .await?
        .into_iter()
        .map(recipient_view)
        .collect();
    Ok(Json(RecipientList { recipients }))
}

/// Removes a recipient: later passwords are not encrypted to it; versions
/// already escrowed stay as they are.
#[utoipa::path(delete, path = "/v1/{project_id}/escrow/recipients/{recipient_id}",
    operation_id = "DeleteEscrowRecipient", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("recipient_id" = String, Path, description = "The recipient's id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such recipient in this project (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:deleteRecipient.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn delete_recipient(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, id) = super::path(p)?;
    authorize(&state, &caller, &source.0, Action::DeleteRecipient, true).await?;
    let request_id = current_request_id();
    crate::escrow::remove_recipient(&state, &ctx(&caller, &request_id, &source), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A server's escrowed passwords: encrypted age files only, with the
/// request that set each version, when, and whether its agent applied it.
/// Needs `ecs:cloudServers:getPassword` (system role admin only); every
/// retrieval and every refused one is audited with the caller, the server
/// and the versions.
#[utoipa::path(get, path = "/v1/{project_id}/cloudservers/{server_id}/escrowed-passwords",
    operation_id = "ListEscrowedPasswords", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("server_id" = String, Path, description = "The server's id."),
        ("version" = Option<i64>, Query, description = "Only this version.")),
    responses(
        (status = 200, description = "Newest first (none if nothing was escrowed).", body = EscrowedPasswords),
        (status = 400, description = "A bad `version` (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 404, description = "No such server in this project (Ecs.0114), or no such version (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:cloudServers:getPassword (on this server, with its tags); audited.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn escrowed_passwords(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<EscrowedPasswords>, ApiError> {
    let (_, server_id) = super::path(p)?;
    let permit = authorize::permits(&state, &caller)
        .await?
        .permit(Action::GetPassword);
    let denied = |state: AppState, caller: Caller, source: String, server_id: String| async move {
        authorize::audit_denial(
            &state,
            &caller,
            &source,
            Action::GetPassword,
            vec![server_id.clone()],
        )
        .await;
        ApiError::forbidden(format!(
            "the policies do not allow {} on server {}",
            Action::GetPassword.as_str(),
            crate::domain::error::display_id(&server_id)
        ))
    };
    if !permit.possible() {
        return Err(denied(state.clone(), caller.clone(), source.0.clone(), server_id).await);
    }
    let version = match query
        .map_err(|_| ApiError::invalid("Invalid query string."))?
        .get("version")
    {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
            ApiError::invalid("Invalid query: version must be a positive integer.")
        })?),
    };
    let server = state
        .store
        .server(&caller.project_id, &server_id)
        .await?
        .ok_or_else(|| ApiError::server_not_found(&server_id))?;
    if !permit.allows(&server) {
        return Err(denied(state.clone(), caller.clone(), source.0.clone(), server_id).await);
    }
    let request_id = current_request_id();
    let versions = crate::escrow::retrieve(
        &state,
        &ctx(&caller, &request_id, &source),
        &server_id,
        version,
    )
    .await?;
    Ok(Json(EscrowedPasswords {
        server_id,
        versions: versions
            .into_iter()
            .map(|v| EscrowedVersion {
                version: v.version,
                request_id: v.request_id,
                created: fmt_time(v.created),
                applied: v.state == Some(ResetState::Applied),
                state: v.state,
                age: String::from_utf8_lossy(&v.blob).into_owned(),
            })
            .collect(),
    }))
}

/// Creates a rotation policy.
#[utoipa::path(post, path = "/v1/{project_id}/escrow/rotation-policies",
    operation_id = "CreateRotationPolicy", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    request_body(content = RotationPolicySpec, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the scheduler runs it when due.", body = RotationPolicy),
        (status = 400, description = "Invalid body (Ecs.0005, Common.0002), or the project has no escrow recipient.", body = ecs_api::EcsErrorBody),
        (status = 409, description = "A policy of this name exists (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:createRotationPolicy.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn create_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<RotationPolicy>), ApiError> {
    authorize(
        &state,
        &caller,
        &source.0,
        Action::CreateRotationPolicy,
        true,
    )
    .await?;
    let req: RotationPolicySpec = parse_body(super::content_type(&headers), &body)?;
    let request_id = current_request_id();
    let p = crate::escrow::add_policy(&state, &ctx(&caller, &request_id, &source), req).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

/// The project's rotation policies.
#[utoipa::path(get, path = "/v1/{project_id}/escrow/rotation-policies",
    operation_id = "ListRotationPolicies", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    responses(
        (status = 200, description = "Oldest first.", body = RotationPolicyList),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:listRotationPolicies.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn list_policies(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
) -> Result<Json<RotationPolicyList>, ApiError> {
    authorize(
        &state,
        &caller,
        &source.0,
        Action::ListRotationPolicies,
        true,
    )
    .await?;
    let policies = state
        .escrow
        .rotation_policies(Some(&caller.project_id))
        .await?
        .into_iter()
        .map(crate::escrow::policy_view)
        .collect::<Result<_, Error>>()?;
    Ok(Json(RotationPolicyList { policies }))
}

/// Deletes a rotation policy (by id or name).
#[utoipa::path(delete, path = "/v1/{project_id}/escrow/rotation-policies/{policy}",
    operation_id = "DeleteRotationPolicy", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match)."), ("policy" = String, Path, description = "The policy's id or name.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such policy in this project (Ecs.0005).", body = ecs_api::EcsErrorBody),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:deleteRotationPolicy.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn delete_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (_, id) = super::path(p)?;
    authorize(
        &state,
        &caller,
        &source.0,
        Action::DeleteRotationPolicy,
        true,
    )
    .await?;
    let request_id = current_request_id();
    crate::escrow::remove_policy(&state, &ctx(&caller, &request_id, &source), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The drift report: each server's newest escrowed version and whether it
/// is current (`ok`), never escrowed, never applied, or older than the
/// period of a policy that selects it.
#[utoipa::path(get, path = "/v1/{project_id}/escrow/password-status",
    operation_id = "ShowPasswordStatus", tag = "escrow",
    params(("project_id" = String, Path, description = "The project (X-Project-Id must match).")),
    responses(
        (status = 200, description = "Every server of the project.", body = PasswordStatusList),
        (status = 403, description = "Not authorized (APIGW.0302): ecs:escrow:getPasswordStatus.", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn password_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(source): Extension<Source>,
) -> Result<Json<PasswordStatusList>, ApiError> {
    authorize(&state, &caller, &source.0, Action::GetPasswordStatus, true).await?;
    Ok(Json(
        crate::escrow::password_status(&state, &caller.project_id).await?,
    ))
}
