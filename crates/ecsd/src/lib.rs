//! `ecsd`: the Huawei Cloud ECS-compatible API server for fleet-wide password
//! resets. See `ARCHITECTURE.md` at the repository root for the code map.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod authorize;
pub mod authz;
pub mod authz_admin;
pub mod batch;
pub mod config;
pub mod conn_limits;
pub mod console;
pub mod deadline;
pub mod dev;
pub mod domain;
pub mod enroll;
pub mod error;
pub mod escrow;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod power;
pub mod raw_errors;
pub mod reset;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod work;

pub use domain::Error;
