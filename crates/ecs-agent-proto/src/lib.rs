//! The agent protocol (ours, contract §4): JSON bodies under `/agent/v1`.
//!
//! Every call but `enroll` carries `Authorization: Bearer <agent credential>`.
//! This crate holds only types, so that the agent never depends on the server.

use serde::{Deserialize, Serialize};

/// Path prefix of the agent API.
pub const PREFIX: &str = "/agent/v1";

/// `POST /agent/v1/enroll`.
///
/// Three ways in (contract §6, identity): a project enrollment token (a new
/// server, always), a re-key token made for one server, or proof of the old
/// agent key (`rekey`, answering a challenge sealed to that key).
#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Enrollment token (`ecsd admin enroll-token-create`) or re-key token
    /// (`ecsd admin rekey-token-create`); empty with `rekey`.
    #[serde(default)]
    pub token: String,
    /// A stable id of the machine (`/etc/machine-id`).
    pub machine_id: String,
    pub hostname: String,
    /// `Linux` or `Windows`.
    pub os_type: String,
    /// The agent's X25519 public key, base64.
    pub public_key: String,
    pub agent_version: String,
    /// Proof of possession of the old agent key, to re-key an enrolled server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey: Option<RekeyProof>,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("machine_id", &self.machine_id)
            .field("hostname", &self.hostname)
            .field("os_type", &self.os_type)
            .field("public_key", &self.public_key)
            .field("agent_version", &self.agent_version)
            .field("rekey", &self.rekey.as_ref().map(|r| &r.server_id))
            .finish()
    }
}

/// The answer to a re-key challenge: the challenge's plaintext, which only
/// the holder of the server's current agent key can open.
#[derive(Clone, Serialize, Deserialize)]
pub struct RekeyProof {
    pub server_id: String,
    pub challenge_id: String,
    /// Base64 of the opened challenge.
    pub response: String,
}

/// `POST /agent/v1/rekey-challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RekeyChallengeRequest {
    pub server_id: String,
}

/// A random challenge sealed (HPKE, as a password is) to the server's current
/// agent key, bound to the server id and `challenge_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RekeyChallenge {
    pub challenge_id: String,
    pub sealed: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub server_id: String,
    pub project_id: String,
    /// The agent's bearer credential; shown once.
    pub credential: String,
    /// The work-signing keys, oldest first: the agent trusts the last one.
    #[serde(default)]
    pub work_keys: Vec<KeyEndorsement>,
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("server_id", &self.server_id)
            .field("project_id", &self.project_id)
            .field("credential", &"<redacted>")
            .field("work_keys", &self.work_keys)
            .finish()
    }
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
    /// The agent's start-up check (a new boot id, no outcome left to
    /// report): the answer carries in `work` what `GET /work` (no `have`,
    /// no wait) would return, saving the restarting agent a call. An ecsd
    /// before this field ignores it and answers without `work`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_up: bool,
}

/// The answer to a heartbeat (200; an ecsd before this field answered 204
/// with no body, which an agent reads as the defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Over how many seconds the agent spreads its reconnect after losing
    /// the control plane (it waits a random time within it): ecsd sizes it
    /// to the number of agents it serves, so a fleet's reconnect after a
    /// restart arrives at a rate it can take.
    #[serde(default)]
    pub reconnect_spread_secs: u32,
    /// Only when the request asked for `start_up`: the work a poll would
    /// return, `{}` for none. Absent: the agent polls (`GET /work`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Poll>,
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
    /// ecsd's signature over this item (contract §6); an agent refuses work without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<SignedEnvelope>,
    /// The work-signing keys, oldest first, each endorsed by the one before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEndorsement>,
}

/// What kind of work an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkKind {
    Reset,
    Start,
    Stop,
    Reboot,
}

/// When a work item takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// At the next start of the server (resets, by default).
    Boot,
    /// At once (power actions, `"apply": "now"` resets).
    Now,
}

/// The signed statement about one work item (contract §6). Serialized to
/// JSON, it is the `payload` of a [`SignedEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub server_id: String,
    /// The reset's request id or the power action's sub-job id.
    pub id: String,
    /// Per server, grows with every work item stored for it.
    pub seq: u64,
    pub kind: WorkKind,
    pub apply: ApplyMode,
    /// HARD power action.
    pub hard: bool,
    /// SHA-256 (hex) of the sealed password bytes; resets only.
    #[serde(default)]
    pub sealed_sha256: Option<String>,
    /// RFC 3339 time the envelope was signed.
    pub issued_at: String,
}

/// An [`Envelope`] as signed by ecsd's work-signing key: Ed25519 over
/// `"ecs-work-envelope-v1\0" || payload bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnvelope {
    /// Base64 of the envelope's JSON bytes (the exact bytes signed).
    pub payload: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
    /// Base64 public key of the signer.
    pub key: String,
}

/// One work-signing key; `signature` is the previous key's Ed25519
/// signature over `"ecs-work-key-rotation-v1\0" || public key bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEndorsement {
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
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
    /// ecsd's signature over this item (contract §6); an agent refuses work without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<SignedEnvelope>,
    /// The work-signing keys, oldest first, each endorsed by the one before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEndorsement>,
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
    /// Once the outcome is recorded, wait for work as the long poll
    /// `GET /agent/v1/work` would and answer it in [`AckResponse::work`]:
    /// the acknowledgement and the poll that follows it in one call. An
    /// ecsd that does not know the field records the outcome and answers
    /// without `work`; the agent then polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then_poll: Option<PollAfter>,
}

/// The long poll an acknowledgement carries: the query of `GET /agent/v1/work`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollAfter {
    /// A reset the agent already holds (not answered again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub have: Option<String>,
    /// How long to wait for work (ecsd caps it at its `agent_poll_secs`).
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckResponse {
    /// False when the reset was no longer open (superseded or already final).
    pub recorded: bool,
    /// Only when the request carried `then_poll`: what the poll found,
    /// `{}` when nothing arrived within the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Poll>,
}

/// `POST /v1/{project_id}/enroll-tokens` (public API extension).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokenRequest {
    /// How many enrollments the token allows (default 1, at most 100000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub uses: Option<u32>,
    /// Lifetime in seconds (default 3600, at most 30 days).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2592000))]
    pub ttl_secs: Option<u64>,
}

#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokenResponse {
    pub token: String,
    pub project_id: String,
    pub uses: u32,
    pub expires: String,
    /// `sha256:<hex>` of the control plane CA's public key (SubjectPublicKeyInfo),
    /// as kubeadm's `--discovery-token-ca-cert-hash`; absent on plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_hash: Option<String>,
    /// What to hand to a new server: the token and the CA pin in one string
    /// (`<token>.<hex>`), for `ecs-agent enroll --token-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// Set for a re-key token: the one server it may re-key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
}

impl std::fmt::Debug for EnrollTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollTokenResponse")
            .field("token", &"<redacted>")
            .field("project_id", &self.project_id)
            .field("uses", &self.uses)
            .field("expires", &self.expires)
            .field("ca_cert_hash", &self.ca_cert_hash)
            .field("server_id", &self.server_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_tokens_or_credentials() {
        let req = EnrollRequest {
            token: "ecset_secret-token".into(),
            machine_id: "m".into(),
            hostname: "h".into(),
            os_type: "Linux".into(),
            public_key: "pk".into(),
            agent_version: "1".into(),
            rekey: None,
        };
        let resp = EnrollResponse {
            server_id: "s".into(),
            project_id: "p".into(),
            credential: "ecsac_secret-credential".into(),
            work_keys: vec![],
        };
        let tok = EnrollTokenResponse {
            token: "ecset_secret-token".into(),
            project_id: "p".into(),
            uses: 1,
            expires: "t".into(),
            ca_cert_hash: None,
            join_token: Some("ecset_secret-token.abc".into()),
            server_id: None,
        };
        for printed in [format!("{req:?}"), format!("{resp:?}"), format!("{tok:?}")] {
            assert!(!printed.contains("secret"), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }
}
