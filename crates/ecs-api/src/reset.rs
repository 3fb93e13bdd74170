//! Password resets: Huawei's batch and single reset, the reset flag, and our
//! per-server outcome (contract §2, §3).

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::status::ResetState;

/// A password on the wire. It lives in a [`SecretString`] (zeroized on drop,
/// redacted in `Debug`); serializing it is the only way it leaves.
#[derive(Clone)]
pub struct Password(pub SecretString);

impl Password {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl From<SecretString> for Password {
    fn from(s: SecretString) -> Self {
        Password(s)
    }
}

impl Serialize for Password {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_secret())
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Password(SecretString::from(s)))
    }
}

/// `{"id": "..."}` in a server list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerRef {
    pub id: String,
}

impl ServerRef {
    pub fn new(id: impl Into<String>) -> Self {
        ServerRef { id: id.into() }
    }
}

/// `PUT /v1/{project_id}/cloudservers/os-reset-passwords` (Huawei
/// `BatchResetServersPassword`, plus our `apply`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResetRequest {
    /// The new password (contract §2.4 rules per OS). Required, except that
    /// a dry run without one checks readiness only (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Password)]
    pub new_password: Option<Password>,
    /// Ours (issue 15), instead of `new_password`: a different random
    /// password per server, escrowed to the project's recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generate>,
    /// Check everything and report readiness; change nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// 1 to 1000 servers, no id twice.
    #[schema(min_items = 1, max_items = 1000)]
    pub servers: Vec<ServerRef>,
    /// Ours (contract §3.4): `"now"` asks running agents to apply at once
    /// instead of at the next boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
}

/// The answer to an accepted batch reset: the servers, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchResetResponse {
    pub response: Vec<IdEntry>,
    /// Ours (contract §3.3), on dry runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Vec<Readiness>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdEntry {
    pub id: String,
}

/// A dry run's view of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub id: String,
    pub plugin_installed: bool,
    pub status: crate::ServerStatus,
    pub agent_version: Option<String>,
    pub agent_last_seen: Option<String>,
}

/// `PUT /v1/{project_id}/cloudservers/{server_id}/os-reset-password`
/// (Huawei `ResetServerPassword`); answered 204.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SingleResetRequest {
    #[serde(rename = "reset-password")]
    pub reset_password: ResetPasswordOption,
}

/// Ours (issue 15): `ecsd` generates a different random password for each
/// server that satisfies its OS's rules (contract §2.4), seals it to the
/// agent as any reset, and encrypts it to the project's escrow recipients
/// (age, X25519); the last versions per server are kept for retrieval
/// (`GET .../escrowed-passwords`). Refused (Ecs.0005, field `generate`)
/// when the project has no recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    /// 8 to 26 characters (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 8, maximum = 26)]
    pub length: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResetPasswordOption {
    /// The new password; required unless `generate` is given (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Password)]
    pub new_password: Option<Password>,
    /// Ours (issue 15), instead of `new_password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generate>,
    /// Accepted and ignored (Huawei: check the password's strength; we always do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_check_password: Option<bool>,
}

/// "True" or "False", as Huawei writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ResetPwdFlag {
    True,
    False,
}

/// `GET .../os-resetpwd-flag`: whether a reset can be applied (a plug-in is
/// enrolled and has reported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResetPwdFlagResponse {
    pub resetpwd_flag: ResetPwdFlag,
}

/// Ours: `GET .../os-reset-passwords/{request_id|latest}`, what each
/// server of a reset request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResetOutcome {
    pub request_id: String,
    pub created: String,
    pub apply_now: bool,
    /// Every server's state is final.
    pub complete: bool,
    pub summary: ResetSummary,
    pub servers: Vec<TargetOutcome>,
}

/// How many servers are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResetSummary {
    #[serde(rename = "PENDING")]
    pub pending: u32,
    #[serde(rename = "DELIVERED")]
    pub delivered: u32,
    #[serde(rename = "APPLIED")]
    pub applied: u32,
    #[serde(rename = "FAILED")]
    pub failed: u32,
    #[serde(rename = "SUPERSEDED")]
    pub superseded: u32,
}

impl ResetSummary {
    /// Counts the states.
    pub fn count<'a>(states: impl IntoIterator<Item = &'a ResetState>) -> Self {
        let mut s = ResetSummary::default();
        for st in states {
            *s.slot(*st) += 1;
        }
        s
    }
    fn slot(&mut self, st: ResetState) -> &mut u32 {
        match st {
            ResetState::Pending => &mut self.pending,
            ResetState::Delivered => &mut self.delivered,
            ResetState::Applied => &mut self.applied,
            ResetState::Failed => &mut self.failed,
            ResetState::Superseded => &mut self.superseded,
        }
    }
    pub fn get(&self, st: ResetState) -> u32 {
        let mut copy = self.clone();
        *copy.slot(st)
    }
    /// As a map from state to count (for tables).
    pub fn as_map(&self) -> BTreeMap<ResetState, u32> {
        ResetState::ALL.iter().map(|s| (*s, self.get(*s))).collect()
    }
}

/// One server of a reset request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TargetOutcome {
    pub id: String,
    pub state: ResetState,
    /// Why it FAILED or was SUPERSEDED.
    pub reason: Option<String>,
    pub updated: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_redacted_in_debug_and_sent_only_by_serializing() {
        let req = BatchResetRequest {
            generate: None,
            new_password: Some(Password(SecretString::from("Sup3r-secret!"))),
            dry_run: None,
            servers: vec![ServerRef::new("a")],
            apply: None,
        };
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("Sup3r"), "{dbg}");
        let wire = serde_json::to_string(&req).unwrap();
        assert_eq!(
            wire,
            r#"{"new_password":"Sup3r-secret!","servers":[{"id":"a"}]}"#
        );
        let back: BatchResetRequest = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.new_password.unwrap().expose(), "Sup3r-secret!");
    }

    #[test]
    fn the_summary_counts_each_state() {
        let s =
            ResetSummary::count(&[ResetState::Applied, ResetState::Applied, ResetState::Failed]);
        assert_eq!((s.applied, s.failed, s.pending), (2, 1, 0));
        assert_eq!(s.get(ResetState::Applied), 2);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"PENDING":0,"DELIVERED":0,"APPLIED":2,"FAILED":1,"SUPERSEDED":0})
        );
    }

    #[test]
    fn the_flag_is_written_as_huawei_does() {
        let f = ResetPwdFlagResponse {
            resetpwd_flag: ResetPwdFlag::True,
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"resetpwd_flag":"True"}"#
        );
    }
}
