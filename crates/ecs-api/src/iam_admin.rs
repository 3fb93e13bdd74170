//! IAM administration (issue #10, "ecsctl: users/groups/policies/keys"):
//! users, groups, custom policies (roles), grants and permanent access
//! keys of the caller's domain, in the shapes of the official
//! `huaweicloudsdkiam` models where cheap (`CreateUserOption`,
//! `KeystoneCreateGroupOption`, `CreateRoleOption`, `CreateCredentialOption`,
//! `Credentials`), trimmed to the fields ecsd keeps.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Password;

/// `POST /v3.0/OS-USER/users` body (`CreateUserRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub user: CreateUserOption,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserOption {
    /// 1 to 64 letters, digits or `-_.@`.
    pub name: String,
    /// 8 to 128 characters; never logged or answered.
    #[schema(value_type = String, format = Password)]
    pub password: Password,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// ecsd: a system role (`admin`, `operator`, `readonly`) for the user in
    /// the caller's project. Without it the user has no role and its groups
    /// decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Accepted and ignored: the caller's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
}

/// An IAM user (`CreateUserResult`, `KeystoneListUsersResult`), never its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IamUser {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub enabled: bool,
    /// `2024-01-02T03:04:05.000000Z`.
    pub create_time: String,
}

/// The answer of creating, showing or updating a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    pub user: IamUser,
}

/// `GET /v3/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListUsersResponse {
    pub users: Vec<IamUser>,
}

/// `PUT /v3.0/OS-USER/users/{user_id}` body (`UpdateUserRequestBody`): ecsd
/// changes only `enabled`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub user: UpdateUserOption,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserOption {
    pub enabled: bool,
}

/// `POST /v3/groups` body (`KeystoneCreateGroupRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub group: CreateGroupOption,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupOption {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Accepted and ignored: the caller's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
}

/// A user group (`KeystoneGroupResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IamGroup {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub description: String,
    pub create_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupResponse {
    pub group: IamGroup,
}

/// `GET /v3/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListGroupsResponse {
    pub groups: Vec<IamGroup>,
}

/// `POST /v3.0/OS-ROLE/roles` body (`CreateRoleRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleRequest {
    pub role: CreateRoleOption,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleOption {
    /// The policy's name, unique in the domain.
    pub display_name: String,
    /// `AX` (account level) or `XA` (project level); both accepted, kept as given.
    #[serde(rename = "type")]
    pub role_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A Huawei IAM policy document (`{"Version": "1.1", "Statement": [...]}`).
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
}

/// A custom policy or a system role (`RoleResult`, trimmed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IamRole {
    /// The id to grant: a custom policy's id, or the system role's name.
    pub id: String,
    /// `custom` for a custom policy, `system` for admin/operator/readonly.
    pub name: String,
    pub display_name: String,
    /// `AX`/`XA` (custom) or `system`.
    #[serde(rename = "type")]
    pub role_type: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoleResponse {
    pub role: IamRole,
}

/// `GET /v3.0/OS-ROLE/roles`: the system roles, then the domain's custom policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListRolesResponse {
    pub roles: Vec<IamRole>,
    pub total_number: u32,
}

/// `POST /v3.0/OS-CREDENTIAL/credentials` body (`CreatePermanentAccessKeyRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredentialRequest {
    pub credential: CreateCredentialOption,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredentialOption {
    /// The IAM user (of the caller's domain) the key acts as.
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A permanent access key as listed (`Credentials`): never the SK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IamCredential {
    pub access: String,
    /// The user the key acts as; empty for a project key without a user.
    pub user_id: String,
    /// `active` or `inactive`.
    pub status: String,
    pub create_time: String,
    pub description: String,
}

/// The answer of creating a key: the SK, shown once (`CreateCredentialResult`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedCredential {
    pub access: String,
    #[schema(value_type = String, format = Password)]
    pub secret: Password,
    pub user_id: String,
    pub status: String,
    pub create_time: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateCredentialResponse {
    pub credential: CreatedCredential,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CredentialResponse {
    pub credential: IamCredential,
}

/// `GET /v3.0/OS-CREDENTIAL/credentials`: the keys of the caller's project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListCredentialsResponse {
    pub credentials: Vec<IamCredential>,
}

/// `PUT /v3.0/OS-CREDENTIAL/credentials/{access_key}` body (`UpdatePermanentAccessKeyRequestBody`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredentialRequest {
    pub credential: UpdateCredentialOption,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredentialOption {
    /// `active` or `inactive`.
    pub status: String,
}
