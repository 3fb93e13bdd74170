//! `ecs-agent`: the password reset plug-in (contract §4). It never depends on
//! `ecsd`; the wire types come from `ecs-agent-proto`.

//!
//! Platforms: the shadow editor and the fleet simulator (which drives agents
//! against simulated `/etc/shadow` files) are Unix only; on Windows the
//! password is set with `NetUserSetInfo` (`windows.rs`). Everything else is
//! portable; where Windows has no implementation yet (the kernel boot id,
//! power actions) the `cfg(windows)` code returns an error saying so
//! (docs/agent.md, "Windows").

pub mod agent;
pub mod client;
pub mod files;
#[cfg(unix)]
pub mod shadow;
#[cfg(unix)]
pub mod simulate;
#[cfg(windows)]
mod windows;
