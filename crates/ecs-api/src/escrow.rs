//! Ours (issue 15): escrow recipients, escrowed password versions,
//! rotation policies and the password drift report.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::status::ResetState;

/// `POST /v1/{project_id}/escrow/recipients`: registers an age X25519
/// recipient (a public key; its identity never leaves the operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRecipientRequest {
    /// A label: who holds the identity (1 to 64 characters).
    pub name: String,
    /// `age1...` (an age X25519 recipient).
    pub recipient: String,
}

/// One escrow recipient of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EscrowRecipient {
    pub id: String,
    pub name: String,
    pub recipient: String,
    pub created: String,
}

/// `GET /v1/{project_id}/escrow/recipients`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecipientList {
    pub recipients: Vec<EscrowRecipient>,
}

/// One escrowed version of a server's password: only the encrypted age
/// file; `ecsd` cannot open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EscrowedVersion {
    /// 1, 2, ... per server; the newest is the highest.
    pub version: i64,
    /// The reset (or rotation) request that set it.
    pub request_id: String,
    pub created: String,
    /// That request's state on this server; absent when the request is no
    /// longer kept and its final state was not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ResetState>,
    /// The agent reported APPLIED for this version.
    pub applied: bool,
    /// The password, an ASCII-armored age file encrypted to the recipients
    /// registered when it was made (`age -d -i IDENTITY` opens it).
    pub age: String,
}

/// `GET /v1/{project_id}/cloudservers/{server_id}/escrowed-passwords`,
/// newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EscrowedPasswords {
    pub server_id: String,
    pub versions: Vec<EscrowedVersion>,
}

/// When a rotation policy runs: exactly one of `every_minutes` and
/// `every_days`; optionally a daily maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationSchedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_minutes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_days: Option<u32>,
    /// `HH:MM`, local to `utc_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    /// Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u32>,
    /// `+HH:MM` or `-HH:MM` (default `+00:00`); or `time_zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
    /// An IANA time zone name (`Europe/Berlin`; daylight saving time
    /// followed); or `utc_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Which servers a policy rotates: all conditions given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationSelector {
    /// `key=value` tags the server must all carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A name pattern (`*`, `?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Linux` or `Windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
}

/// `POST /v1/{project_id}/escrow/rotation-policies`, and a policy as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicySpec {
    /// Unique in the project.
    pub name: String,
    pub schedule: RotationSchedule,
    #[serde(default)]
    pub selector: RotationSelector,
    /// `next_restart` (default), `now` or `now_restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    /// Rotate a server this many minutes after its password was retrieved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_after_retrieval_minutes: Option<u32>,
    /// Generated password length (8 to 26, default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
}

/// A stored rotation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RotationPolicy {
    pub id: String,
    /// What was created.
    pub spec: RotationPolicySpec,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
}

/// `GET /v1/{project_id}/escrow/rotation-policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RotationPolicyList {
    pub policies: Vec<RotationPolicy>,
}

/// One server in the drift report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PasswordStatus {
    pub server_id: String,
    pub name: String,
    /// The newest escrowed version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ResetState>,
    /// `ok`, `never_escrowed`, `not_applied` or `overdue` (older than the
    /// period of a policy that selects the server).
    pub status: String,
}

/// `GET /v1/{project_id}/escrow/password-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PasswordStatusList {
    pub servers: Vec<PasswordStatus>,
}
