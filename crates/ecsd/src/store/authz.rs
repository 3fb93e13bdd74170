//! Storage of authorization: IAM user groups, their members (opaque user
//! ids), custom policies, and the system roles or custom policies attached
//! to a group in a project; plus server tags. A separate trait from
//! [`super::Store`], implemented by the same store object.

use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::authz::SystemRole;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    pub description: String,
    pub created: DateTime<Utc>,
}

/// A custom policy as stored: its document is JSON text that parsed with
/// [`crate::authz::Policy::parse`] when it was created. Policies are never
/// changed after creation (so a compiled copy can be kept by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    pub description: String,
    pub document: String,
    pub created: DateTime<Utc>,
}

/// What can be attached to a group in a project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    System(SystemRoleName),
    /// A custom policy, by id.
    Policy(String),
}

/// A system role's name, ordered for cache keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemRoleName(pub u8);

impl Grant {
    pub fn system(r: SystemRole) -> Grant {
        Grant::System(SystemRoleName(r as u8))
    }
    pub fn role(&self) -> Option<SystemRole> {
        match self {
            Grant::System(n) => SystemRole::ALL.get(n.0 as usize).copied(),
            Grant::Policy(_) => None,
        }
    }
    /// The stored form: `system:<name>` or `policy:<id>`.
    pub fn encode(&self) -> String {
        match self {
            Grant::System(_) => format!("system:{}", self.role().expect("a role").as_str()),
            Grant::Policy(id) => format!("policy:{id}"),
        }
    }
    pub fn decode(s: &str) -> Option<Grant> {
        if let Some(r) = s.strip_prefix("system:") {
            SystemRole::parse(r).map(Grant::system)
        } else {
            s.strip_prefix("policy:")
                .map(|id| Grant::Policy(id.to_owned()))
        }
    }
}

/// A change of a server's tags (Huawei's `tags/action`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    Create(Vec<(String, Option<String>)>),
    Delete(Vec<(String, Option<String>)>),
}

#[async_trait::async_trait]
pub trait AuthzStore: Send + Sync + 'static {
    /// Refuses (Conflict) a name taken in the domain.
    async fn create_group(
        &self,
        domain_id: &str,
        name: &str,
        description: &str,
    ) -> StoreResult<Group>;
    async fn group(&self, id: &str) -> StoreResult<Option<Group>>;
    async fn group_by_name(&self, domain_id: &str, name: &str) -> StoreResult<Option<Group>>;
    async fn groups(&self, domain_id: &str) -> StoreResult<Vec<Group>>;
    /// Deletes the group with its members and attachments.
    async fn delete_group(&self, id: &str) -> StoreResult<bool>;
    /// Adds a member (idempotent); NotFound if the group does not exist.
    async fn add_group_member(&self, group_id: &str, user_id: &str) -> StoreResult<()>;
    async fn remove_group_member(&self, group_id: &str, user_id: &str) -> StoreResult<bool>;
    async fn group_members(&self, group_id: &str) -> StoreResult<Vec<String>>;

    /// Refuses (Conflict) a name taken in the domain.
    async fn create_policy(
        &self,
        domain_id: &str,
        name: &str,
        description: &str,
        document: &str,
    ) -> StoreResult<StoredPolicy>;
    async fn policy(&self, id: &str) -> StoreResult<Option<StoredPolicy>>;
    async fn policies(&self, domain_id: &str) -> StoreResult<Vec<StoredPolicy>>;
    async fn policies_by_ids(&self, ids: &[String]) -> StoreResult<Vec<StoredPolicy>>;
    /// Deletes the policy and every attachment of it.
    async fn delete_policy(&self, id: &str) -> StoreResult<bool>;

    /// Attaches (idempotent); NotFound if the group, the project or the
    /// custom policy does not exist.
    async fn attach(&self, group_id: &str, project_id: &str, grant: &Grant) -> StoreResult<()>;
    async fn detach(&self, group_id: &str, project_id: &str, grant: &Grant) -> StoreResult<bool>;
    /// A group's attachments: (project id, grant).
    async fn attachments(&self, group_id: &str) -> StoreResult<Vec<(String, Grant)>>;

    /// What applies to a caller in a project, sorted: the grants attached in
    /// `project_id` to the groups of `user_id`, or, without a user id, of
    /// the user the access key is bound to. `None` when there is no user
    /// (a project access key keeps its role).
    async fn caller_grants(
        &self,
        project_id: &str,
        access_key: &str,
        user_id: Option<&str>,
    ) -> StoreResult<Option<Vec<Grant>>>;
    /// The authorization data's version (any change of groups, members,
    /// policies, grants or key bindings, by any process, makes it larger)
    /// and the user the access key is bound to, in one cheap read.
    async fn authz_version(&self, access_key: &str) -> StoreResult<(i64, Option<String>)>;
    /// Binds an access key to a user id (until IAM users issue their own
    /// credentials, this makes an access key act as that user).
    async fn bind_access_key_user(&self, ak: &str, user_id: &str) -> StoreResult<()>;

    /// The server's tags (`key=value`), `None` if it is not in the project.
    async fn server_tags(
        &self,
        project_id: &str,
        server_id: &str,
    ) -> StoreResult<Option<Vec<String>>>;
    /// Applies a change in one transaction; returns the new tags, `None` if
    /// the server is not in the project. Refuses (Invalid) more than
    /// [`crate::authz::tags::MAX_TAGS`].
    async fn change_server_tags(
        &self,
        project_id: &str,
        server_id: &str,
        change: TagChange,
    ) -> StoreResult<Option<Vec<String>>>;
}
