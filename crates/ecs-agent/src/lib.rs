//! `ecs-agent`: the password reset plug-in (contract §4). It never depends on
//! `ecsd`; the wire types come from `ecs-agent-proto`.

pub mod agent;
pub mod client;
pub mod files;
#[cfg(not(windows))]
pub mod shadow;
pub mod simulate;
#[cfg(windows)]
mod windows;
