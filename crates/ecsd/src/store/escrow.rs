//! The escrow part of storage (issue 15): a project's escrow recipients
//! (age public keys), the escrowed versions of each server's generated
//! password (age files only `ecsctl` or `age` with a recipient's identity
//! open: the store never holds a plaintext), retrievals awaiting a
//! rotation, and rotation policies. Its own trait beside
//! [`Store`](super::Store), implemented in `sqlite_escrow.rs` and
//! `postgres_escrow.rs`; checks in `escrow_conformance.rs`.

use chrono::{DateTime, Utc};
use ecs_api::ResetState;

use super::StoreResult;

/// An escrow recipient of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// `age1...`
    pub recipient: String,
    pub created: DateTime<Utc>,
}

/// A version to escrow: one server's new password, encrypted.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub server_id: String,
    pub project_id: String,
    pub request_id: String,
    pub created: DateTime<Utc>,
    /// The age file (ASCII armor).
    pub blob: Vec<u8>,
}

/// An escrowed version as stored, with its reset's state on that server
/// (`None` once the reset was pruned before its final state was copied, or
/// when it was never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowVersion {
    pub server_id: String,
    pub version: i64,
    pub request_id: String,
    pub created: DateTime<Utc>,
    pub blob: Vec<u8>,
    pub state: Option<ResetState>,
}

/// A rotation policy as stored; `spec` is the JSON of
/// [`crate::domain::escrow::RotationSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicy {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub spec: String,
    pub created: DateTime<Utc>,
    pub last_run: Option<DateTime<Utc>>,
}

/// A retrieval not yet followed by a new version: (project, server, first
/// retrieval time).
pub type PendingRetrieval = (String, String, DateTime<Utc>);

#[async_trait::async_trait]
pub trait EscrowStore: Send + Sync + 'static {
    /// Registers a recipient; false if the project has it already.
    async fn add_recipient(&self, r: Recipient) -> StoreResult<bool>;
    /// A project's recipients, oldest first.
    async fn recipients(&self, project_id: &str) -> StoreResult<Vec<Recipient>>;
    /// Removes one; false if there is no such recipient. Versions already
    /// encrypted to it stay as they are.
    async fn remove_recipient(&self, project_id: &str, id: &str) -> StoreResult<bool>;

    /// Stores new versions (numbered per server, one above its newest) in
    /// one transaction, copies the final reset states of the servers' older
    /// versions, deletes what [`crate::domain::escrow::versions_to_prune`]
    /// says beyond `keep`, and clears the servers' pending retrievals.
    async fn add_versions(&self, versions: Vec<NewVersion>, keep: usize) -> StoreResult<()>;
    /// Deletes the versions of a request that was not stored after all.
    async fn discard_versions(&self, request_id: &str) -> StoreResult<()>;
    /// A server's versions, newest first.
    async fn versions(&self, server_id: &str) -> StoreResult<Vec<EscrowVersion>>;
    /// The newest version of every server of a project that has one,
    /// without blobs (drift report).
    async fn newest_versions(&self, project_id: &str) -> StoreResult<Vec<EscrowVersion>>;

    /// Records a retrieval (the first since the newest version counts).
    async fn record_retrieval(
        &self,
        project_id: &str,
        server_id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Retrievals not yet followed by a new version.
    async fn pending_retrievals(&self) -> StoreResult<Vec<PendingRetrieval>>;

    /// Creates a policy; false if the project has one of that name.
    async fn add_rotation_policy(&self, p: RotationPolicy) -> StoreResult<bool>;
    /// Policies of one project (or all), oldest first.
    async fn rotation_policies(&self, project_id: Option<&str>)
    -> StoreResult<Vec<RotationPolicy>>;
    /// Deletes one by id or name; false if there is none.
    async fn delete_rotation_policy(&self, project_id: &str, id_or_name: &str)
    -> StoreResult<bool>;
    /// Marks a run at `now` if the policy's last run is still `seen`
    /// (compare and set): true for exactly one of several callers.
    async fn claim_rotation(
        &self,
        policy_id: &str,
        seen: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}
