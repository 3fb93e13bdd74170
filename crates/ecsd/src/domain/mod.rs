//! The domain core: the rules of servers, power jobs and resets in plain
//! Rust, without storage or HTTP. The store reads rows, asks these functions
//! what happens, and writes the answer in the same transaction; the API maps
//! [`Error`] to its two error bodies in one place (`crate::error`).

pub mod error;
pub mod escrow;
pub mod job;
pub mod reasons;
pub mod reset;
pub mod server;

pub use error::{Entity, Error, Problem, ServerFailure};
pub use job::{Job, JobSummary, PowerKind, SubJob, SubJobEnd};
pub use server::{PowerState, TaskState};
