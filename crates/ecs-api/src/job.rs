//! Batch start/stop/reboot (`POST /v1/{project_id}/cloudservers/action`) and
//! jobs (`GET /v1/{project_id}/jobs/{job_id}`), Huawei's shapes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::reset::ServerRef;
use crate::status::JobStatus;

/// SOFT or HARD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActionKind {
    Soft,
    Hard,
}

/// The body of `cloudservers/action`: exactly one of the three actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ServerAction {
    /// `BatchStartServers`.
    #[serde(rename = "os-start")]
    Start {
        #[schema(min_items = 1, max_items = 1000)]
        servers: Vec<ServerRef>,
    },
    /// `BatchStopServers` (type defaults to SOFT).
    #[serde(rename = "os-stop")]
    Stop {
        #[schema(min_items = 1, max_items = 1000)]
        servers: Vec<ServerRef>,
        /// Optional, but not `null` (ecsd refuses a null type, Ecs.0005).
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        kind: Option<ActionKind>,
    },
    /// `BatchRebootServers` (type required).
    #[serde(rename = "reboot")]
    Reboot {
        #[schema(min_items = 1, max_items = 1000)]
        servers: Vec<ServerRef>,
        #[serde(rename = "type")]
        kind: ActionKind,
    },
}

/// `{"job_id": ...}`: the answer to an accepted action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobResult {
    pub job_id: String,
}

/// Huawei `ShowJob`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShowJobResponse {
    /// INIT until a sub-job starts, RUNNING while one is open, then SUCCESS
    /// (all succeeded) or FAIL (any failed).
    pub status: JobStatus,
    pub job_id: String,
    /// `batchStartServers`, `batchStopServers` or `batchRebootServers`.
    pub job_type: String,
    pub begin_time: String,
    /// "" while open.
    pub end_time: String,
    /// The first failed sub-job's code; null unless FAIL.
    pub error_code: Option<String>,
    /// How many failed and the first reason; null unless FAIL.
    pub fail_reason: Option<String>,
    pub entities: JobEntities,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobEntities {
    pub sub_jobs_total: u32,
    pub sub_jobs: Vec<SubJob>,
}

/// One server's part of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubJob {
    pub status: JobStatus,
    pub job_id: String,
    /// `startServer`, `stopServer` or `rebootServer`.
    pub job_type: String,
    pub begin_time: String,
    /// "" while open.
    pub end_time: String,
    pub error_code: Option<String>,
    pub fail_reason: Option<String>,
    pub entities: SubJobEntities,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubJobEntities {
    pub server_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_have_huaweis_shapes() {
        let a = ServerAction::Reboot {
            servers: vec![ServerRef { id: "a".into() }],
            kind: ActionKind::Hard,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"reboot":{"servers":[{"id":"a"}],"type":"HARD"}}"#
        );
        let s: ServerAction =
            serde_json::from_str(r#"{"os-stop":{"servers":[{"id":"b"}]}}"#).unwrap();
        assert_eq!(
            s,
            ServerAction::Stop {
                servers: vec![ServerRef { id: "b".into() }],
                kind: None
            }
        );
        assert!(serde_json::from_str::<ServerAction>(r#"{"reboot":{"servers":[]}}"#).is_err());
    }
}
