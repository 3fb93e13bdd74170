//! The two error bodies of the contract (§2.3).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// ECS-level error: `{"error": {"code", "message"}[, "internalError": [...]]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EcsErrorBody {
    pub error: EcsError,
    /// Per-server failures of a rejected batch.
    #[serde(
        rename = "internalError",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub internal_error: Option<Vec<InternalError>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EcsError {
    /// E.g. `Ecs.0005`, `Ecs.0114`, `Common.0011`.
    pub code: String,
    pub message: String,
}

/// One failing server inside a rejected batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InternalError {
    pub id: String,
    pub error_code: String,
    pub error_message: String,
}

/// Gateway-level error: `{"error_code", "error_msg", "request_id"}`
/// (authentication, authorization, throttling, size, unknown route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewayErrorBody {
    /// E.g. `APIGW.0301`.
    pub error_code: String,
    pub error_msg: String,
    /// Equals the response's `X-Request-Id`.
    pub request_id: String,
}

/// Either error body, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorBody {
    Ecs(EcsErrorBody),
    Gateway(GatewayErrorBody),
}

impl ErrorBody {
    pub fn code(&self) -> &str {
        match self {
            ErrorBody::Ecs(b) => &b.error.code,
            ErrorBody::Gateway(b) => &b.error_code,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            ErrorBody::Ecs(b) => &b.error.message,
            ErrorBody::Gateway(b) => &b.error_msg,
        }
    }
    /// The per-server failures of a rejected batch (empty otherwise).
    pub fn internal(&self) -> &[InternalError] {
        match self {
            ErrorBody::Ecs(b) => b.internal_error.as_deref().unwrap_or_default(),
            ErrorBody::Gateway(_) => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_tells_the_two_bodies_apart() {
        let ecs: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":"Ecs.0114","message":"m"},"internalError":[{"id":"a","error_code":"Ecs.0114","error_message":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(ecs.code(), "Ecs.0114");
        assert_eq!(ecs.internal().len(), 1);
        let gw: ErrorBody = serde_json::from_str(
            r#"{"error_code":"APIGW.0301","error_msg":"no","request_id":"r"}"#,
        )
        .unwrap();
        assert_eq!((gw.code(), gw.message()), ("APIGW.0301", "no"));
        assert!(gw.internal().is_empty());
        assert!(serde_json::from_str::<ErrorBody>(r#"{"code":"x"}"#).is_err());
    }
}
