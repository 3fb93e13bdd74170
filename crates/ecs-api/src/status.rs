//! The status values of the contract, as enums with their wire names.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A status string outside the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseStatusError {
    pub kind: &'static str,
    pub value: String,
}

impl std::fmt::Display for ParseStatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a {}: {:?}", self.kind, self.value)
    }
}

impl std::error::Error for ParseStatusError {}

/// One enum with its wire names, `as_str`, `FromStr` and `ALL`. Serde and the schema take
/// the names from `rename_all` (utoipa ignores a per-variant `serde(rename)` passed through a
/// `literal` fragment); a test checks that they equal `$wire`.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $kind:literal { $($(#[$vm:meta])* $variant:ident = $wire:tt),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseStatusError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(ParseStatusError { kind: $kind, value: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// Huawei's server status (`ServerDetail.status`). ecsd sets ACTIVE,
    /// SHUTOFF, REBOOT and HARD_REBOOT; the others are Huawei's and accepted
    /// as filters.
    ServerStatus, "server status" {
        Active = "ACTIVE",
        Build = "BUILD",
        Deleted = "DELETED",
        Error = "ERROR",
        HardReboot = "HARD_REBOOT",
        Migrating = "MIGRATING",
        Reboot = "REBOOT",
        Resize = "RESIZE",
        RevertResize = "REVERT_RESIZE",
        Shutoff = "SHUTOFF",
        VerifyResize = "VERIFY_RESIZE",
    }
);

wire_enum!(
    /// Huawei's `host_status`: UP while the agent reports, UNKNOWN when silent.
    HostStatus, "host status" {
        Up = "UP",
        Unknown = "UNKNOWN",
        Down = "DOWN",
        Maintenance = "MAINTENANCE",
    }
);

wire_enum!(
    /// The state of one server in one reset request (contract §3.2).
    ResetState, "reset state" {
        /// Stored, not yet fetched by the agent.
        Pending = "PENDING",
        /// Fetched by the agent, not yet applied.
        Delivered = "DELIVERED",
        /// The agent wrote the new password.
        Applied = "APPLIED",
        /// The agent could not apply it (see `reason`).
        Failed = "FAILED",
        /// A newer request for the same server replaced it before it was applied.
        Superseded = "SUPERSEDED",
    }
);

impl ResetState {
    /// No further change will happen.
    pub fn is_final(self) -> bool {
        !matches!(self, ResetState::Pending | ResetState::Delivered)
    }
}

wire_enum!(
    /// Huawei's job and sub-job status (`ShowJob`).
    JobStatus, "job status" {
        Success = "SUCCESS",
        Running = "RUNNING",
        Fail = "FAIL",
        Init = "INIT",
    }
);

impl JobStatus {
    /// SUCCESS or FAIL.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_its_wire_name() {
        for s in ServerStatus::ALL {
            assert_eq!(s.as_str().parse::<ServerStatus>(), Ok(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in ResetState::ALL {
            assert_eq!(s.as_str().parse::<ResetState>(), Ok(*s));
            let back: ResetState = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(back, *s);
        }
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(*s));
        }
        for s in HostStatus::ALL {
            assert_eq!(s.as_str().parse::<HostStatus>(), Ok(*s));
        }
    }

    /// The OpenAPI schema lists exactly the wire names.
    #[test]
    fn the_schemas_list_the_wire_names() {
        fn names<T: utoipa::PartialSchema>() -> serde_json::Value {
            serde_json::to_value(T::schema()).unwrap()["enum"].clone()
        }
        let wire = |all: Vec<&str>| serde_json::json!(all);
        assert_eq!(
            names::<ServerStatus>(),
            wire(ServerStatus::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            names::<ResetState>(),
            wire(ResetState::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            names::<JobStatus>(),
            wire(JobStatus::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            names::<HostStatus>(),
            wire(HostStatus::ALL.iter().map(|s| s.as_str()).collect())
        );
    }

    #[test]
    fn values_outside_the_contract_are_refused() {
        assert!("active".parse::<ServerStatus>().is_err());
        assert!("APPLIED ".parse::<ResetState>().is_err());
        assert!(serde_json::from_str::<JobStatus>("\"DONE\"").is_err());
        let e = "X".parse::<HostStatus>().unwrap_err();
        assert_eq!(e.to_string(), "not a host status: \"X\"");
    }

    #[test]
    fn only_applied_failed_and_superseded_are_final() {
        let finals: Vec<_> = ResetState::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                &ResetState::Applied,
                &ResetState::Failed,
                &ResetState::Superseded
            ]
        );
        assert!(JobStatus::Fail.is_final() && JobStatus::Success.is_final());
        assert!(!JobStatus::Init.is_final() && !JobStatus::Running.is_final());
    }
}
