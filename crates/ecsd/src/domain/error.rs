//! The one error type of ecsd's library: what the domain, the store and the
//! services report. `crate::error` maps it to the API's error bodies in one
//! place (`impl From<Error> for ApiError`); the Huawei codes are the
//! domain's (they are in the contract), the HTTP statuses are not.

use ecs_api::ServerStatus;
use ecs_policy::Violation;

use super::job::PowerKind;

/// Any error, kept with its chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a lookup did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Server,
    /// The `marker` of a server list page.
    Marker,
    Project,
    /// An IAM user group.
    Group,
    /// A custom IAM policy.
    Policy,
    /// An escrow recipient (issue 15).
    Recipient,
    /// An escrowed password version.
    EscrowVersion,
    /// A rotation policy.
    RotationPolicy,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Server => "server",
            Entity::Marker => "marker",
            Entity::Project => "project",
            Entity::Group => "group",
            Entity::Policy => "policy",
            Entity::Recipient => "escrow recipient",
            Entity::EscrowVersion => "escrowed password version",
            Entity::RotationPolicy => "rotation policy",
        }
    }
}

/// Why one server of a request cannot take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Unknown, or another project's.
    NotFound,
    /// No agent key: a reset cannot be sealed.
    NoResetPlugin,
    /// No agent: nothing can carry out a power action.
    NoAgent,
    ResetNotAllowed(ServerStatus),
    PowerNotAllowed(ServerStatus, PowerKind),
    Password(Violation),
    /// Another power action is open on the server.
    Busy,
    /// The caller's policies do not allow this action (named) on the server.
    Forbidden(&'static str),
}

impl Problem {
    pub fn code(&self) -> &'static str {
        match self {
            Problem::NotFound => "Ecs.0114",
            Problem::NoResetPlugin
            | Problem::NoAgent
            | Problem::ResetNotAllowed(_)
            | Problem::PowerNotAllowed(..) => "Ecs.0100",
            Problem::Password(_) => "Ecs.0011",
            Problem::Busy => "Ecs.0603",
            Problem::Forbidden(_) => "APIGW.0302",
        }
    }

    /// The message for server `id` (echoed in a bounded, printable form).
    pub fn message(&self, id: &str) -> String {
        match self {
            Problem::NotFound => format!("Instance[{}] could not be found.", display_id(id)),
            Problem::NoResetPlugin => {
                "The password reset plug-in is not installed on this server.".into()
            }
            Problem::NoAgent => "The agent (plug-in) is not installed on this server.".into(),
            Problem::ResetNotAllowed(s) => {
                format!("The server status {s} does not allow resetting the password.")
            }
            Problem::PowerNotAllowed(s, kind) => {
                format!("The server status {s} does not allow {}.", kind.as_str())
            }
            Problem::Password(v) => v.to_string(),
            Problem::Busy => {
                "Another operation is in progress on this server; retry when it ends.".into()
            }
            Problem::Forbidden(action) => format!(
                "The IAM user is not authorized to access the API: the policies do not allow {action} on server {}.",
                display_id(id)
            ),
        }
    }
}

/// One server that failed a request's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFailure {
    pub id: String,
    pub problem: Problem,
}

impl ServerFailure {
    pub fn new(id: impl Into<String>, problem: Problem) -> Self {
        ServerFailure {
            id: id.into(),
            problem,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message is the full client-facing text; `field` is the path of
    /// the offending field (`servers[3].id`), or "" for the whole body.
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("The request body is empty.")]
    EmptyBody,
    #[error("The number of servers ({count}) exceeds the limit of {limit} in one request.")]
    TooManyServers { count: usize, limit: usize },
    /// The password breaks a rule for every server it was meant for.
    #[error(transparent)]
    Password(Violation),
    #[error("{} not found: {}", entity.as_str(), display_id(id))]
    NotFound { entity: Entity, id: String },
    /// A one-server request refused for this server.
    #[error("{}", .0.problem.message(&.0.id))]
    Refused(ServerFailure),
    /// A batch refused as a whole: every failing server, in request order.
    #[error("{}", rejected_message(failures, *total))]
    Rejected {
        failures: Vec<ServerFailure>,
        total: usize,
    },
    /// These servers have an open power action.
    #[error("another operation is in progress on: {}", ids.join(", "))]
    Busy { ids: Vec<String> },
    /// A unique name is taken.
    #[error("{0}")]
    Conflict(String),
    #[error("the enrollment token is invalid, expired or used up")]
    BadToken,
    #[error(
        "this machine id is already enrolled; re-enroll with the old agent key or a re-key token"
    )]
    DuplicateMachine { server_id: String },
    #[error("the re-key proof is wrong or expired")]
    BadProof,
    /// A re-key challenge for a server without an agent key (or none at all).
    #[error("no enrolled server can answer this challenge")]
    NotEnrolled,
    /// The storage backend failed.
    #[error("storage backend")]
    Storage(#[source] BoxError),
    /// The storage cannot take the write now: the disk is full, an I/O
    /// error, a read-only file or file system. Nothing was stored; the same
    /// request can succeed once the operator frees space (no restart).
    #[error("storage full or unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else that should not happen.
    #[error("{context}")]
    Internal {
        context: &'static str,
        #[source]
        source: BoxError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn storage(e: impl Into<BoxError>) -> Self {
        Error::Storage(e.into())
    }
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Error::Unavailable(e.into())
    }
    pub fn internal(context: &'static str, e: impl Into<BoxError>) -> Self {
        Error::Internal {
            context,
            source: e.into(),
        }
    }
    pub fn server_not_found(id: &str) -> Self {
        Error::NotFound {
            entity: Entity::Server,
            id: id.to_owned(),
        }
    }

    /// The Huawei (or gateway) error code the contract gives this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "Ecs.0005",
            Error::EmptyBody => "Common.0002",
            Error::TooManyServers { .. } => "Ecs.0118",
            Error::Password(_) => "Ecs.0011",
            Error::NotFound {
                entity: Entity::Server,
                ..
            } => "Ecs.0114",
            Error::NotFound { .. } => "Ecs.0005",
            Error::Refused(f) => f.problem.code(),
            Error::Rejected { failures, .. } => {
                failures.first().map_or("Ecs.0005", |f| f.problem.code())
            }
            Error::Busy { .. } => "Ecs.0603",
            Error::Conflict(_) => "Ecs.0005",
            Error::BadToken | Error::BadProof | Error::NotEnrolled => "APIGW.0301",
            Error::DuplicateMachine { .. } => "APIGW.0302",
            Error::Storage(_) | Error::Internal { .. } => "Common.0001",
            Error::Unavailable(_) => "APIGW.0503",
        }
    }

    /// The error and its sources, for logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

/// A rejected batch's message: it counts and names the failing servers (the
/// SDKs show only code and message).
fn rejected_message(failures: &[ServerFailure], total: usize) -> String {
    let named: Vec<String> = failures
        .iter()
        .take(10)
        .map(|f| format!("{} ({})", display_id(&f.id), f.problem.code()))
        .collect();
    let more = failures.len().saturating_sub(10);
    let mut message = format!(
        "{} of {} servers failed validation; nothing was done: {}",
        failures.len(),
        total,
        named.join(", ")
    );
    if more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    message.push('.');
    message
}

/// Ids from the network are echoed in messages only in a bounded, printable form.
pub fn display_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if id.chars().count() > 64 {
        format!("{clean}...")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_batch_takes_the_first_failures_code_and_names_ten() {
        let mut failures = vec![ServerFailure::new("gone", Problem::NotFound)];
        failures.extend((0..11).map(|i| ServerFailure::new(format!("s{i}"), Problem::NoAgent)));
        let e = Error::Rejected {
            failures,
            total: 20,
        };
        assert_eq!(e.code(), "Ecs.0114");
        let m = e.to_string();
        assert!(
            m.starts_with("12 of 20 servers failed validation; nothing was done: gone (Ecs.0114), s0 (Ecs.0100)"),
            "{m}"
        );
        assert!(m.ends_with("s8 (Ecs.0100) and 2 more."), "{m}");
    }

    #[test]
    fn problems_have_their_codes_and_messages() {
        let p = Problem::PowerNotAllowed(ServerStatus::Shutoff, PowerKind::Reboot);
        assert_eq!(
            (p.code(), p.message("x").as_str()),
            (
                "Ecs.0100",
                "The server status SHUTOFF does not allow reboot."
            )
        );
        let p = Problem::ResetNotAllowed(ServerStatus::Error);
        assert_eq!(
            p.message("x"),
            "The server status ERROR does not allow resetting the password."
        );
        assert_eq!(
            Problem::NotFound.message("a\nb"),
            "Instance[a?b] could not be found."
        );
        assert_eq!(Problem::Busy.code(), "Ecs.0603");
        assert_eq!(Problem::Password(Violation::Weak).code(), "Ecs.0011");
    }

    #[test]
    fn a_storage_error_keeps_its_source() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::storage(io);
        assert_eq!(e.code(), "Common.0001");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "disk on fire"
        );
        assert_eq!(e.chain(), "storage backend: disk on fire");
    }

    #[test]
    fn an_unavailable_storage_is_apigw_0503_and_keeps_its_source() {
        let e = Error::unavailable(std::io::Error::other("No space left on device"));
        assert_eq!(e.code(), "APIGW.0503");
        assert_eq!(
            e.chain(),
            "storage full or unavailable: No space left on device"
        );
    }

    #[test]
    fn long_or_unprintable_ids_are_bounded() {
        assert_eq!(display_id("ok-id"), "ok-id");
        assert_eq!(
            display_id(&"x".repeat(70)),
            format!("{}...", "x".repeat(64))
        );
    }
}
