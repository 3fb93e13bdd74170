//! IAM (Huawei's `/v3` identity API, the part ecsd serves): tokens by
//! password (`POST/GET/DELETE /v3/auth/tokens`) and temporary AK/SK
//! (`POST /v3.0/OS-CREDENTIAL/securitytokens`). Field names are those of the
//! official `huaweicloudsdkiam` models (`KeystoneCreateUserTokenByPasswordRequestBody`,
//! `TokenResult`, `CreateTemporaryAccessKeyByTokenRequestBody`, `Credential`).

use serde::{Deserialize, Serialize};

use crate::Password;
use utoipa::ToSchema;

/// `POST /v3/auth/tokens` body (`KeystoneCreateUserTokenByPasswordRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    pub auth: PwdAuth,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PwdAuth {
    pub identity: PwdIdentity,
    /// The project the token is for (ecsd issues project-scoped tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<AuthScope>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PwdIdentity {
    /// Must contain `password`.
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PwdPassword>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PwdPassword {
    pub user: PwdPasswordUser,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PwdPasswordUser {
    /// The user's domain (account).
    pub domain: NameRef,
    pub name: String,
    #[schema(value_type = String, format = Password)]
    pub password: Password,
}

/// `{"name": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NameRef {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AuthScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<AuthScopeProject>,
}

/// A project by id, or by name within the user's domain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AuthScopeProject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `{"id", "name"}` (a domain or a role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdName {
    pub id: String,
    pub name: String,
}

/// The answer of `POST` (201) and `GET` (200) `/v3/auth/tokens`; the token
/// itself is in the `X-Subject-Token` response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub token: TokenResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResult {
    /// UTC, `2006-01-02T15:04:05.000000Z`.
    pub expires_at: String,
    pub issued_at: String,
    /// `["password"]`.
    pub methods: Vec<String>,
    pub project: TokenProject,
    pub user: TokenUser,
    pub roles: Vec<IdName>,
    /// Always empty: ecsd is the only service.
    #[schema(value_type = Vec<Object>)]
    pub catalog: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenProject {
    pub id: String,
    pub name: String,
    pub domain: IdName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenUser {
    pub id: String,
    pub name: String,
    pub domain: IdName,
    /// Empty: ecsd passwords do not expire.
    pub password_expires_at: String,
}

/// `POST /v3.0/OS-CREDENTIAL/securitytokens` body
/// (`CreateTemporaryAccessKeyByTokenRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecurityTokenRequest {
    pub auth: TokenAuth,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenAuth {
    pub identity: TokenAuthIdentity,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenAuthIdentity {
    /// Must contain `token`.
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<IdentityToken>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct IdentityToken {
    /// Ignored: the token is the request's `X-Auth-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Password)]
    pub id: Option<Password>,
    /// 900 to 86400; default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
}

/// The answer of `POST /v3.0/OS-CREDENTIAL/securitytokens` (201).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecurityTokenResponse {
    pub credential: TemporaryCredential,
}

/// A temporary AK/SK: usable only with `X-Security-Token: <securitytoken>`
/// (signed), until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemporaryCredential {
    pub access: String,
    #[schema(value_type = String, format = Password)]
    pub secret: Password,
    #[schema(value_type = String, format = Password)]
    pub securitytoken: Password,
    pub expires_at: String,
}

/// Huawei's time format of IAM answers (microseconds, `Z`).
pub const IAM_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";
