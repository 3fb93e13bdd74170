//! Storage of identities (issue #10, identity part): domains, IAM users,
//! their role in each project, tokens (`POST /v3/auth/tokens`) and temporary
//! AK/SK (`POST /v3.0/OS-CREDENTIAL/securitytokens`).
//!
//! Secrets are never stored as they are: passwords as argon2id PHC strings,
//! tokens and security tokens as SHA-256 hashes (256 random bits each), the
//! temporary SK sealed under the master key. The rules (who may log in,
//! whether a token is still good) live in [`crate::identity`], not here.

use chrono::{DateTime, Utc};

use super::{Role, StoreResult};

/// A domain (a Huawei account): it holds projects and users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub id: String,
    pub name: String,
    pub created: DateTime<Utc>,
}

/// The name of the domain every project without another one belongs to
/// (projects that existed before domains, and `project-create` without `--domain`).
pub const DEFAULT_DOMAIN: &str = "default";

/// An IAM user of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    pub enabled: bool,
    pub created: DateTime<Utc>,
}

/// A user's role in a project, as assigned by an operator. The authz part
/// of issue #10 replaces these with policies and groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRole {
    Admin,
    Operator,
    ReadOnly,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Operator => "operator",
            UserRole::ReadOnly => "readonly",
        }
    }
    pub fn parse(s: &str) -> Option<UserRole> {
        match s {
            "admin" => Some(UserRole::Admin),
            "operator" => Some(UserRole::Operator),
            "readonly" => Some(UserRole::ReadOnly),
            _ => None,
        }
    }
    /// What the caller may do on the public API. Today the public API has
    /// no admin-only operation, so an operator may do what an admin may.
    pub fn caller_role(self) -> Role {
        match self {
            UserRole::Admin | UserRole::Operator => Role::Admin,
            UserRole::ReadOnly => Role::ReadOnly,
        }
    }
}

/// A stored token: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// A short public id (logs, audit, `Caller::access_key`); not the token.
    pub id: String,
    pub token_hash: String,
    pub user_id: String,
    pub project_id: String,
    pub issued: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub revoked: bool,
}

/// A temporary AK/SK bound to a security token and to the token's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryCredential {
    pub ak: String,
    /// The SK sealed under the master key with the AK as associated data.
    pub sk_sealed: Vec<u8>,
    pub security_token_hash: String,
    pub user_id: String,
    pub project_id: String,
    pub expires: DateTime<Utc>,
}

#[async_trait::async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// The domain with this name, created if absent.
    async fn ensure_domain(&self, name: &str) -> StoreResult<Domain>;
    async fn domain_by_name(&self, name: &str) -> StoreResult<Option<Domain>>;
    async fn domain(&self, id: &str) -> StoreResult<Option<Domain>>;
    /// The domain a project belongs to.
    async fn project_domain(&self, project_id: &str) -> StoreResult<Option<Domain>>;
    /// Moves a project into a domain.
    async fn set_project_domain(&self, project_id: &str, domain_id: &str) -> StoreResult<()>;
    /// The projects of a domain, by name.
    async fn domain_projects(&self, domain_id: &str) -> StoreResult<Vec<super::Project>>;
    /// The project with this name in this domain.
    async fn project_in_domain(
        &self,
        domain_id: &str,
        name: &str,
    ) -> StoreResult<Option<super::Project>>;

    /// Creates a user; `Conflict` if the domain has a user of that name.
    async fn create_user(&self, user: User) -> StoreResult<()>;
    async fn user(&self, id: &str) -> StoreResult<Option<User>>;
    async fn user_by_name(&self, domain_id: &str, name: &str) -> StoreResult<Option<User>>;
    /// The users of a domain, by name.
    async fn list_users(&self, domain_id: &str) -> StoreResult<Vec<User>>;
    /// Returns false if there is no such user.
    async fn set_user_enabled(&self, id: &str, enabled: bool) -> StoreResult<bool>;
    /// Deletes the user with its role assignments, tokens and temporary
    /// credentials; returns false if there is no such user.
    async fn delete_user(&self, id: &str) -> StoreResult<bool>;

    /// Sets (replaces) the user's role in a project.
    async fn assign_role(&self, user_id: &str, project_id: &str, role: UserRole)
    -> StoreResult<()>;
    /// The user's role in a project, if any.
    async fn user_role(&self, user_id: &str, project_id: &str) -> StoreResult<Option<UserRole>>;

    async fn create_token(&self, token: StoredToken) -> StoreResult<()>;
    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<StoredToken>>;
    /// Marks the token revoked; returns false if it is unknown.
    async fn revoke_token(&self, token_hash: &str) -> StoreResult<bool>;
    /// Moves an unrevoked token's expiry to `expires` (a console session's
    /// idle expiry slides on use); returns false if it is unknown or revoked.
    async fn extend_token(&self, token_hash: &str, expires: DateTime<Utc>) -> StoreResult<bool>;

    async fn create_temporary_credential(&self, cred: TemporaryCredential) -> StoreResult<()>;
    async fn temporary_credential(&self, ak: &str) -> StoreResult<Option<TemporaryCredential>>;
}
