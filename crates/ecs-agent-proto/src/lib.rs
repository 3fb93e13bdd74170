//! The agent protocol (ours, contract §4): JSON bodies under `/agent/v1`.
//!
//! Every call but `enroll` carries `Authorization: Bearer <agent credential>`.
//! This crate holds only types, so that the agent never depends on the server.

use serde::{Deserialize, Serialize};

/// Path prefix of the agent API.
pub const PREFIX: &str = "/agent/v1";

/// `POST /agent/v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// One-time enrollment token from `ecsd admin enroll-token create`.
    pub token: String,
    /// A stable id of the machine (`/etc/machine-id`); re-enrolling the same
    /// machine keeps its server id.
    pub machine_id: String,
    pub hostname: String,
    /// `Linux` or `Windows`.
    pub os_type: String,
    /// The agent's X25519 public key, base64.
    pub public_key: String,
    pub agent_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub server_id: String,
    pub project_id: String,
    /// The agent's bearer credential; shown once.
    pub credential: String,
}

/// `POST /agent/v1/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub agent_version: String,
    /// The kernel boot id; a new one means the server restarted.
    pub boot_id: String,
    pub uptime_secs: u64,
    /// Something beside the agent can power this server on (the simulator's
    /// virtual BMC); without it, `os-start` of a stopped server fails at once.
    #[serde(default)]
    pub power_driver: bool,
}

/// `GET /agent/v1/work?have=<request_id>&wait=<secs>[&power_only=true]`: 200
/// with this body, or 204 when nothing (newer than `have`) arrived within
/// `wait` seconds. A power action comes before a reset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Poll {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Work>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Power>,
}

/// A power action to carry out (from `POST /v1/{project_id}/cloudservers/action`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Power {
    /// The sub-job id; acknowledge with it.
    pub job_id: String,
    /// `start`, `stop` or `reboot`.
    pub action: String,
    /// HARD (immediate) rather than SOFT (orderly).
    pub hard: bool,
}

/// `POST /agent/v1/power-ack`: `ok` = the action is being carried out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PowerAck {
    pub job_id: String,
    pub ok: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A sealed password reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    pub server_id: String,
    pub request_id: String,
    /// HPKE-sealed password (encapsulated key || ciphertext), base64.
    pub sealed: String,
    /// Apply at once instead of at the next boot (contract §3.4).
    pub apply_now: bool,
}

/// Outcome of applying a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Applied,
    Failed,
}

/// `POST /agent/v1/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckRequest {
    pub request_id: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckResponse {
    /// False when the reset was no longer open (superseded or already final).
    pub recorded: bool,
}

/// `POST /v1/{project_id}/enroll-tokens` (public API extension).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnrollTokenRequest {
    /// How many enrollments the token allows (default 1, at most 100000).
    pub uses: Option<u32>,
    /// Lifetime in seconds (default 3600, at most 30 days).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollTokenResponse {
    pub token: String,
    pub project_id: String,
    pub uses: u32,
    pub expires: String,
}
