//! Audit traces: `GET /v3/{project_id}/traces`, in the shape of Huawei Cloud
//! Trace Service (CTS) `ListTraces`, with ecsd's extensions named as such.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// CTS `trace_rating`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TraceRating {
    /// The call succeeded.
    Normal,
    /// The call was refused or denied (a 4xx answer).
    Warning,
    /// The call failed inside ecsd (a 5xx answer).
    Incident,
}

/// Who made the call (CTS `UserInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TraceUser {
    /// The IAM user's id; `null` for a project access key (no user).
    pub id: Option<String>,
    /// The IAM user's name, or for a project access key the AK.
    pub name: String,
    /// The IAM user's name; `null` for a project access key.
    pub user_name: Option<String>,
    /// The credential used: the AK (permanent or temporary), or a token's id
    /// (never the token).
    pub access_key_id: String,
}

/// One trace (CTS `Traces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Trace {
    /// The trace's id (the paging marker).
    pub trace_id: String,
    /// The action: `batch-reset-password`, `reset-password`, `start-servers`,
    /// `stop-servers`, `reboot-servers`, ..., or for a denied call the
    /// operation that was asked for.
    pub trace_name: String,
    pub trace_rating: TraceRating,
    /// Always `ApiCall`.
    pub trace_type: String,
    /// Always `ECS`.
    pub service_type: String,
    /// Always `ecs` (servers).
    pub resource_type: String,
    /// The server ids, comma-separated (`null` when none).
    pub resource_id: Option<String>,
    /// The caller's IP address.
    pub source_ip: String,
    /// When the call was made, ms since the epoch.
    pub time: i64,
    /// When the trace was recorded, ms since the epoch.
    pub record_time: i64,
    /// The call's `X-Request-Id`.
    pub request_id: String,
    /// The HTTP status answered, when recorded.
    pub code: Option<String>,
    /// The outcome: `accepted`, `rejected <code>`, `denied: <reason>`.
    pub message: String,
    /// Never recorded (it could hold a password): always `null`.
    pub request: Option<String>,
    /// Never recorded: always `null`.
    pub response: Option<String>,
    pub user: TraceUser,
    /// ecsd: the project.
    pub project_id: String,
    /// ecsd: the server ids as a list.
    pub resource_ids: Vec<String>,
    /// ecsd: a dry run (nothing changed).
    pub dry_run: bool,
    /// ecsd: the error code of a refused or failed call.
    pub error_code: Option<String>,
}

/// CTS `meta_data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TraceMetaData {
    /// Traces in this page.
    pub count: u32,
    /// Pass as `next` for the following page; `null` on the last page.
    pub marker: Option<String>,
}

/// `GET /v3/{project_id}/traces`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListTracesResponse {
    pub traces: Vec<Trace>,
    pub meta_data: TraceMetaData,
}
