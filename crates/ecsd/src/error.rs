//! The two error shapes of the contract (§2.3) and the request id that every
//! response carries (§2.9).
//!
//! `ApiError` is what handlers return. It renders either the ECS body
//! `{"error": {"code", "message"}[, "internalError": [...]]}` or the gateway
//! body `{"error_code", "error_msg", "request_id"}`. The request id comes from
//! a task-local set by the request-id middleware, so the gateway body and the
//! `X-Request-Id` header always agree.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::{Entity, Error, Problem, ServerFailure};

tokio::task_local! {
    /// The id of the request being served (32 lowercase hex).
    pub static REQUEST_ID: String;
}

/// The current request id, or a fresh one outside a request scope.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_request_id())
}

/// A new request id: 32 lowercase hex characters.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One failing server inside a rejected batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InternalError {
    pub id: String,
    pub error_code: &'static str,
    pub error_message: String,
}

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// ECS-level error (`{"error": {"code", "message"}}`).
    #[error("{code}: {message}")]
    Ecs {
        status: StatusCode,
        code: &'static str,
        message: String,
        internal: Option<Vec<InternalError>>,
    },
    /// Gateway-level error (`{"error_code", "error_msg", "request_id"}`).
    #[error("{code}: {message}")]
    Gateway {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

impl ApiError {
    pub fn ecs(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Ecs {
            status,
            code,
            message: message.into(),
            internal: None,
        }
    }
    /// 400 `Ecs.0005`: malformed or invalid body.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::ecs(StatusCode::BAD_REQUEST, "Ecs.0005", message)
    }
    /// 404 `Ecs.0114`: the server does not exist (or is another project's).
    pub fn server_not_found(id: &str) -> Self {
        Self::ecs(
            StatusCode::NOT_FOUND,
            "Ecs.0114",
            format!("Instance[{}] could not be found.", display_id(id)),
        )
    }
    /// 500 `Common.0001`: an internal failure; details go to the log only.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::ecs(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Common.0001",
            "System exception. Retry later or contact the administrator.",
        )
    }
    /// A failed store call: 503 `APIGW.0503` when the storage is full or
    /// unavailable, else the 500 of [`ApiError::internal`].
    pub fn store(context: &str, e: Error) -> Self {
        match e {
            Error::Unavailable(_) => Self::storage_unavailable(format!("{context}: {}", e.chain())),
            e => Self::internal(context, e.chain()),
        }
    }
    fn gateway(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Gateway {
            status,
            code,
            message: message.into(),
        }
    }
    /// 401 `APIGW.0301`.
    pub fn unauthenticated(detail: impl std::fmt::Display) -> Self {
        Self::gateway(
            StatusCode::UNAUTHORIZED,
            "APIGW.0301",
            format!("Incorrect IAM authentication information: {detail}"),
        )
    }
    /// 403 `APIGW.0302`.
    pub fn forbidden(detail: impl std::fmt::Display) -> Self {
        Self::gateway(
            StatusCode::FORBIDDEN,
            "APIGW.0302",
            format!("The IAM user is not authorized to access the API: {detail}"),
        )
    }
    /// 429 `APIGW.0308`.
    pub fn throttled() -> Self {
        Self::gateway(
            StatusCode::TOO_MANY_REQUESTS,
            "APIGW.0308",
            "The throttling threshold has been reached: policy user over ratelimit",
        )
    }
    /// 429 `APIGW.0308`: the connection is over `max_connections_per_source`.
    pub fn too_many_connections() -> Self {
        Self::gateway(
            StatusCode::TOO_MANY_REQUESTS,
            "APIGW.0308",
            "The throttling threshold has been reached: too many connections from this address",
        )
    }
    /// 413 `APIGW.0201`.
    pub fn body_too_large(limit: usize) -> Self {
        Self::gateway(
            StatusCode::PAYLOAD_TOO_LARGE,
            "APIGW.0201",
            format!("Request entity too large: the body exceeds {limit} bytes"),
        )
    }
    /// 408 `APIGW.0408` (ours): the request body did not arrive within
    /// `request_timeout_secs`; the connection is closed after the answer.
    pub fn request_timeout(secs: u64) -> Self {
        Self::gateway(
            StatusCode::REQUEST_TIMEOUT,
            "APIGW.0408",
            format!("Request timeout: the request was not received within {secs} seconds"),
        )
    }
    /// 503 `APIGW.0503` (ours): the storage is full or unavailable (disk
    /// full, I/O error, read-only); nothing was stored, retry later. The
    /// cause goes to the log.
    pub fn storage_unavailable(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "storage full or unavailable");
        Self::gateway(
            StatusCode::SERVICE_UNAVAILABLE,
            "APIGW.0503",
            "Service unavailable: storage full or unavailable; nothing was stored, retry later",
        )
    }
    /// 404 `APIGW.0101`.
    pub fn no_such_api() -> Self {
        Self::gateway(
            StatusCode::NOT_FOUND,
            "APIGW.0101",
            "The API does not exist or has not been published in the environment",
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Ecs { status, .. } | ApiError::Gateway { status, .. } => *status,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Ecs { code, .. } | ApiError::Gateway { code, .. } => code,
        }
    }
}

/// Ids from the network are echoed in messages only in a bounded, printable form.
pub use crate::domain::error::display_id;

/// The one mapping from the domain's errors to the API's: status, code,
/// message and the per-server `internalError` list of a rejected batch.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.code();
        match e {
            Error::Invalid { message, .. } => ApiError::invalid(message),
            Error::EmptyBody | Error::TooManyServers { .. } | Error::Password(_) => {
                ApiError::ecs(StatusCode::BAD_REQUEST, code, e.to_string())
            }
            Error::NotFound {
                entity: Entity::Server,
                id,
            } => ApiError::server_not_found(&id),
            Error::NotFound {
                entity: Entity::Marker,
                ..
            } => ApiError::invalid("Invalid query parameter marker: no such server."),
            Error::NotFound {
                entity:
                    Entity::Project
                    | Entity::Group
                    | Entity::Policy
                    | Entity::Recipient
                    | Entity::EscrowVersion
                    | Entity::RotationPolicy,
                ..
            } => ApiError::ecs(StatusCode::NOT_FOUND, code, e.to_string()),
            Error::Refused(ServerFailure {
                id,
                problem: Problem::Forbidden(action),
            }) => ApiError::forbidden(format!(
                "the policies do not allow {action} on server {}",
                display_id(&id)
            )),
            Error::Refused(f) => {
                let status = match f.problem {
                    Problem::NotFound => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::ecs(status, code, f.problem.message(&f.id))
            }
            Error::Rejected { .. } => rejected(e),
            Error::Busy { ids } => {
                let total = ids.len();
                let failures = ids
                    .into_iter()
                    .map(|id| ServerFailure::new(id, Problem::Busy))
                    .collect();
                rejected(Error::Rejected { failures, total })
            }
            Error::Conflict(m) => ApiError::ecs(StatusCode::CONFLICT, code, m),
            Error::BadToken | Error::BadProof | Error::NotEnrolled => ApiError::unauthenticated(e),
            Error::DuplicateMachine { .. } => ApiError::forbidden(e),
            Error::Storage(_) | Error::Internal { .. } => {
                ApiError::internal("internal error", e.chain())
            }
            Error::Unavailable(_) => ApiError::storage_unavailable(e.chain()),
        }
    }
}

fn rejected(e: Error) -> ApiError {
    let code = e.code();
    let message = e.to_string();
    let Error::Rejected { failures, .. } = e else {
        unreachable!("called with Rejected")
    };
    let internal = failures
        .into_iter()
        .map(|f| InternalError {
            error_code: f.problem.code(),
            error_message: f.problem.message(&f.id),
            id: f.id,
        })
        .collect();
    // Servers the caller may not touch are named like any failing server,
    // under the gateway's 403 (the batch is refused before other checks).
    let status = if code == "APIGW.0302" {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::Ecs {
        status,
        code,
        message,
        internal: Some(internal),
    }
}

#[derive(Serialize)]
struct EcsBody<'a> {
    error: EcsInner<'a>,
    #[serde(rename = "internalError", skip_serializing_if = "Option::is_none")]
    internal: Option<&'a [InternalError]>,
}

#[derive(Serialize)]
struct EcsInner<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct GatewayBody<'a> {
    error_code: &'a str,
    error_msg: &'a str,
    request_id: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Ecs {
                code,
                message,
                internal,
                ..
            } => serde_json::to_vec(&EcsBody {
                error: EcsInner { code, message },
                internal: internal.as_deref(),
            }),
            ApiError::Gateway { code, message, .. } => serde_json::to_vec(&GatewayBody {
                error_code: code,
                error_msg: message,
                request_id: &current_request_id(),
            }),
        }
        .expect("error bodies serialize");
        let mut resp = (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        resp.extensions_mut().insert(ErrorCode(self.code()));
        resp
    }
}

/// Attached to error responses so the access log can name the code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ServerFailure;

    fn parts(e: Error) -> (StatusCode, &'static str, String, Option<Vec<InternalError>>) {
        match ApiError::from(e) {
            ApiError::Ecs {
                status,
                code,
                message,
                internal,
            } => (status, code, message, internal),
            g => panic!("not an ECS error: {g:?}"),
        }
    }

    #[test]
    fn a_rejected_batch_lists_every_server_under_the_first_code() {
        let (status, code, message, internal) = parts(Error::Rejected {
            failures: vec![
                ServerFailure::new("a", Problem::NoAgent),
                ServerFailure::new("b", Problem::NotFound),
            ],
            total: 3,
        });
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "Ecs.0100"));
        assert_eq!(
            message,
            "2 of 3 servers failed validation; nothing was done: a (Ecs.0100), b (Ecs.0114)."
        );
        let internal = internal.unwrap();
        assert_eq!(internal[1].id, "b");
        assert_eq!(internal[1].error_code, "Ecs.0114");
        assert_eq!(internal[1].error_message, "Instance[b] could not be found.");
    }

    #[test]
    fn busy_servers_are_a_rejected_batch_of_ecs_0603() {
        let (status, code, _, internal) = parts(Error::Busy {
            ids: vec!["a".into(), "b".into()],
        });
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "Ecs.0603"));
        let internal = internal.unwrap();
        assert_eq!(internal.len(), 2);
        assert!(internal.iter().all(|i| i.error_code == "Ecs.0603"));
    }

    #[test]
    fn a_refused_server_is_404_only_when_not_found() {
        let (status, code, message, _) =
            parts(Error::Refused(ServerFailure::new("x", Problem::NotFound)));
        assert_eq!(
            (status, code, message.as_str()),
            (
                StatusCode::NOT_FOUND,
                "Ecs.0114",
                "Instance[x] could not be found."
            )
        );
        let (status, code, _, _) = parts(Error::Refused(ServerFailure::new(
            "x",
            Problem::Password(ecs_policy::Violation::Weak),
        )));
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, "Ecs.0011"));
        let (status, code, _, _) = parts(Error::server_not_found("x"));
        assert_eq!((status, code), (StatusCode::NOT_FOUND, "Ecs.0114"));
    }

    #[test]
    fn input_errors_keep_their_codes_and_messages() {
        let (status, code, message, _) = parts(Error::invalid("servers", "Bad servers."));
        assert_eq!(
            (status, code, message.as_str()),
            (StatusCode::BAD_REQUEST, "Ecs.0005", "Bad servers.")
        );
        let (_, code, message, _) = parts(Error::EmptyBody);
        assert_eq!(
            (code, message.as_str()),
            ("Common.0002", "The request body is empty.")
        );
        let (_, code, _, _) = parts(Error::TooManyServers {
            count: 1001,
            limit: 1000,
        });
        assert_eq!(code, "Ecs.0118");
        let (_, code, message, _) = parts(Error::NotFound {
            entity: Entity::Marker,
            id: "m".into(),
        });
        assert_eq!(
            (code, message.as_str()),
            (
                "Ecs.0005",
                "Invalid query parameter marker: no such server."
            )
        );
    }

    #[test]
    fn storage_failures_are_500_without_details() {
        let (status, code, message, _) =
            parts(Error::storage(std::io::Error::other("secret path")));
        assert_eq!(
            (status, code),
            (StatusCode::INTERNAL_SERVER_ERROR, "Common.0001")
        );
        assert!(!message.contains("secret path"));
    }

    #[test]
    fn an_unavailable_storage_is_a_gateway_503_without_details() {
        let e = ApiError::from(Error::unavailable(std::io::Error::other("/var/lib/ecsd")));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "APIGW.0503")
        );
        let ApiError::Gateway { message, .. } = e else {
            panic!("not a gateway error")
        };
        assert!(message.contains("storage full or unavailable"), "{message}");
        assert!(!message.contains("/var/lib"), "{message}");
    }

    #[test]
    fn enrollment_refusals_are_gateway_errors() {
        let e = ApiError::from(Error::BadToken);
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNAUTHORIZED, "APIGW.0301")
        );
        let e = ApiError::from(Error::DuplicateMachine {
            server_id: "s".into(),
        });
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::FORBIDDEN, "APIGW.0302")
        );
        let e = ApiError::from(Error::NotEnrolled);
        assert_eq!(e.code(), "APIGW.0301");
    }
}
