//! The public API's contract as Rust types: every request and response body
//! of `/v1` (Huawei's shapes and ecsd's extensions), the two error bodies,
//! and — re-exported as [`agent`] — the agent protocol. No I/O and no logic
//! beyond naming values: `ecsd` serializes these, `ecsctl`, the tests and the
//! benchmarks deserialize them, and `utoipa` derives the OpenAPI document
//! (`openapi/ecsd.json`) from them.
//!
//! Statuses are enums, so a value outside the contract cannot be written or
//! read without an error.

pub mod audit;
pub mod error;
pub mod escrow;
pub mod iam;
pub mod iam_admin;
pub mod job;
pub mod reset;
pub mod server;
mod status;
pub mod tags;

pub use audit::{ListTracesResponse, Trace, TraceMetaData, TraceRating, TraceUser};
pub use ecs_agent_proto as agent;
pub use ecs_agent_proto::{EnrollTokenRequest, EnrollTokenResponse};
pub use error::{EcsError, EcsErrorBody, ErrorBody, GatewayErrorBody, InternalError};
pub use escrow::{
    CreateRecipientRequest, EscrowRecipient, EscrowedPasswords, EscrowedVersion, PasswordStatus,
    PasswordStatusList, RecipientList, RotationPolicy, RotationPolicyList, RotationPolicySpec,
    RotationSchedule, RotationSelector,
};
pub use job::{
    ActionKind, JobEntities, JobResult, ServerAction, ShowJobResponse, SubJob, SubJobEntities,
};
pub use reset::{
    BatchResetRequest, BatchResetResponse, Generate, IdEntry, Password, Readiness, ResetOutcome,
    ResetPasswordOption, ResetPwdFlag, ResetPwdFlagResponse, ResetSummary, ServerRef,
    SingleResetRequest, TargetOutcome,
};
pub use server::{
    AgentInfo, CapacityReservationSpecification, EcsdServerExtension, EnclaveOptions, LastReset,
    ListServersResponse, ListedServer, ServerAddress, ServerDetail, ServerFault, ServerFlavor,
    ServerImage, ServerSecurityGroup, ServerSystemTag, ShowServerResponse, VolumeAttached,
};
pub use status::{HostStatus, JobStatus, ParseStatusError, ResetState, ServerStatus};
pub use tags::{ServerTag, ServerTagsAction, ServerTagsResponse, TagAction, TagInput};

/// `GET /health`: the process serves requests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}
