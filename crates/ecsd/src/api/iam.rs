//! Huawei IAM's token and temporary-credential operations, served by ecsd
//! so the official IAM SDK works with only the endpoint changed. The logic
//! is in `crate::identity`; these handlers parse and answer.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ecs_api::iam::{CreateTokenRequest, SecurityTokenRequest};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::identity;
use crate::state::{AppState, Source};

/// Parses a JSON body; the error names the field, never a value (a
/// password may be in it).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::ecs(
            StatusCode::BAD_REQUEST,
            "Common.0002",
            "The request body is empty.",
        ));
    }
    crate::batch::from_json(body).map_err(|e| {
        ApiError::invalid(match e {
            crate::batch::JsonError::Field(path) | crate::batch::JsonError::Syntax { path, .. }
                if path != "." =>
            {
                format!("Invalid request body at {path}.")
            }
            crate::batch::JsonError::Trailing => crate::batch::TRAILING_MESSAGE.to_owned(),
            _ => "Invalid request body: not the expected JSON object.".to_owned(),
        })
    })
}

/// `POST /v3/auth/tokens`: a project-scoped token for a user's password.
/// Huawei IAM `KeystoneCreateUserTokenByPassword`; the token is in the
/// `X-Subject-Token` header.
#[utoipa::path(post, path = "/v3/auth/tokens", operation_id = "KeystoneCreateUserTokenByPassword",
    tag = "iam", security(()),
    params(("nocatalog" = Option<String>, Query, description = "Accepted and ignored: the catalog is always empty.")),
    request_body(content = ecs_api::iam::CreateTokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The token is in the X-Subject-Token header.", body = ecs_api::iam::TokenResponse,
            headers(("X-Subject-Token" = String, description = "The token, for X-Auth-Token."))),
        (status = 400, description = "Malformed body, no password method or no project scope (Ecs.0005); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 401, description = "Wrong domain, user name or password, disabled user, or a project the user has no role in (APIGW.0301); which one is not said.", body = ecs_api::GatewayErrorBody),
        (status = 413, description = "The body is larger than allowed (APIGW.0201).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = crate::auth::read_body(&headers, body, state.config.max_body_bytes).await?;
    let req: CreateTokenRequest = parse(&body)?;
    let (token, answer) = identity::login(&state, req, &source.0).await?;
    let mut resp = (StatusCode::CREATED, Json(answer)).into_response();
    let mut value = HeaderValue::from_str(token.expose_secret())
        .map_err(|e| ApiError::internal("token header", e))?;
    value.set_sensitive(true);
    resp.headers_mut().insert("x-subject-token", value);
    Ok(resp)
}

/// `GET /v3/auth/tokens`: validates `X-Subject-Token` (Huawei IAM
/// `KeystoneValidateToken`). The caller's `X-Auth-Token` must be the same
/// user's, or an admin's of the subject token's project.
#[utoipa::path(get, path = "/v3/auth/tokens", operation_id = "KeystoneValidateToken",
    tag = "iam", security(()),
    params(
        ("X-Auth-Token" = String, Header, description = "The caller's token."),
        ("X-Subject-Token" = String, Header, description = "The token to validate."),
    ),
    responses(
        (status = 200, description = "The token is valid.", body = ecs_api::iam::TokenResponse,
            headers(("X-Subject-Token" = String, description = "The validated token."))),
        (status = 401, description = "Either token is missing, unknown, revoked or expired, or its user is disabled (APIGW.0301).", body = ecs_api::GatewayErrorBody),
        (status = 403, description = "The caller may not see another user's token (APIGW.0302).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn validate_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, answer) = identity::subject_token(&state, &headers).await?;
    let mut resp = (StatusCode::OK, Json(answer)).into_response();
    if let Some(v) = headers.get("x-subject-token") {
        let mut v = v.clone();
        v.set_sensitive(true);
        resp.headers_mut().insert("x-subject-token", v);
    }
    Ok(resp)
}

/// `DELETE /v3/auth/tokens`: revokes `X-Subject-Token` (Huawei IAM
/// `KeystoneRevokeToken`); same permission as validating it.
#[utoipa::path(delete, path = "/v3/auth/tokens", operation_id = "KeystoneRevokeToken",
    tag = "iam", security(()),
    params(
        ("X-Auth-Token" = String, Header, description = "The caller's token."),
        ("X-Subject-Token" = String, Header, description = "The token to revoke (may be the same)."),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, description = "Either token is missing, unknown, revoked or expired, or its user is disabled (APIGW.0301).", body = ecs_api::GatewayErrorBody),
        (status = 403, description = "The caller may not revoke another user's token (APIGW.0302).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (subject, _) = identity::subject_token(&state, &headers).await?;
    identity::audit(
        &state,
        &subject.token.project_id,
        &subject.token.id,
        &subject.token.user_id,
        "revoke-token",
        &source.0,
    )
    .await?;
    state
        .identity
        .revoke_token(&subject.token.token_hash)
        .await
        .map_err(|e| ApiError::store("revoking a token", e))?;
    tracing::info!(token = %subject.token.id, user = %subject.user.id, "token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v3.0/OS-CREDENTIAL/securitytokens`: a temporary AK/SK and
/// security token for the caller's token (Huawei IAM
/// `CreateTemporaryAccessKeyByToken`). Sign with the AK/SK and send the
/// security token as a signed `X-Security-Token`.
#[utoipa::path(post, path = "/v3.0/OS-CREDENTIAL/securitytokens",
    operation_id = "CreateTemporaryAccessKeyByToken", tag = "iam", security(()),
    params(("X-Auth-Token" = String, Header, description = "The caller's token.")),
    request_body(content = ecs_api::iam::SecurityTokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The temporary credentials (shown once).", body = ecs_api::iam::SecurityTokenResponse),
        (status = 400, description = "Malformed body, no token method, or duration_seconds outside 900..86400 (Ecs.0005); empty body (Common.0002).", body = ecs_api::EcsErrorBody),
        (status = 401, description = "X-Auth-Token missing, unknown, revoked or expired, or its user disabled (APIGW.0301).", body = ecs_api::GatewayErrorBody),
        (status = 413, description = "The body is larger than allowed (APIGW.0201).", body = ecs_api::GatewayErrorBody),
    ))]
pub async fn create_security_token(
    State(state): State<AppState>,
    Extension(source): Extension<Source>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = crate::auth::read_body(&headers, body, state.config.max_body_bytes).await?;
    // The token first: an anonymous caller learns nothing about the body rules.
    identity::check_token(&state, "x-auth-token", headers.get("x-auth-token")).await?;
    let req: SecurityTokenRequest = parse(&body)?;
    let answer = identity::issue_security_token(&state, &headers, req, &source.0).await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
