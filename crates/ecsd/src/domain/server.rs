//! What happens to a server's status and task state: heartbeats, power
//! actions taken, acknowledged and timed out, and which statuses allow a
//! reset or a power action.

use ecs_api::ServerStatus;

use super::job::{PowerKind, SubJobEnd};
use super::reasons;

/// Huawei's `OS-EXT-STS:task_state` values that ecsd sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Rebooting,
    RebootingHard,
    PoweringOff,
    PoweringOn,
}

impl TaskState {
    pub const ALL: &'static [TaskState] = &[
        TaskState::Rebooting,
        TaskState::RebootingHard,
        TaskState::PoweringOff,
        TaskState::PoweringOn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Rebooting => "rebooting",
            TaskState::RebootingHard => "rebooting_hard",
            TaskState::PoweringOff => "powering-off",
            TaskState::PoweringOn => "powering-on",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Self::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

/// A server's status and task state: what power transitions change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerState {
    pub status: ServerStatus,
    pub task_state: Option<TaskState>,
}

impl PowerState {
    /// No task, this status.
    pub fn idle(status: ServerStatus) -> Self {
        PowerState {
            status,
            task_state: None,
        }
    }
}

/// The status a server had before an action in progress: a reboot that ends
/// (failed, timed out) leaves it ACTIVE; other statuses stay.
pub fn settled(status: ServerStatus) -> ServerStatus {
    match status {
        ServerStatus::Reboot | ServerStatus::HardReboot => ServerStatus::Active,
        s => s,
    }
}

/// Statuses in which a reset is accepted (contract §2.6).
pub fn allows_reset(status: ServerStatus) -> bool {
    matches!(
        status,
        ServerStatus::Active
            | ServerStatus::Shutoff
            | ServerStatus::Reboot
            | ServerStatus::HardReboot
    )
}

/// Whether a server in `status` can take this power action.
pub fn allows_power(kind: PowerKind, status: ServerStatus) -> bool {
    match kind {
        PowerKind::Start => status == ServerStatus::Shutoff,
        PowerKind::Stop | PowerKind::Reboot => status == ServerStatus::Active,
    }
}

/// A heartbeat: a running agent means a running server. A stopped server has
/// started; a rebooting one is back once its boot id changed. Returns the new
/// state when it changes (then RUNNING start/reboot sub-jobs begun on another
/// boot succeed, see [`super::job::completes_on_boot`]).
pub fn heartbeat(status: ServerStatus, old_boot: Option<&str>, boot: &str) -> Option<PowerState> {
    let new_boot = old_boot != Some(boot);
    let back = match status {
        ServerStatus::Shutoff => true,
        ServerStatus::Reboot | ServerStatus::HardReboot => new_boot,
        _ => false,
    };
    back.then(|| PowerState::idle(ServerStatus::Active))
}

/// A heartbeat that changes nothing but the time: the same boot as stored,
/// no power-state change ([`heartbeat`]), and the rest of what it reports
/// (agent version, address, power driver) as stored (`same_details`). The
/// store may commit such a heartbeat without an fsync: losing it to a power
/// cut loses only a last-seen time, which the next heartbeat brings back.
pub fn heartbeat_refreshes_only(
    status: ServerStatus,
    old_boot: Option<&str>,
    boot: &str,
    same_details: bool,
) -> bool {
    same_details && old_boot == Some(boot) && heartbeat(status, old_boot, boot).is_none()
}

/// An agent took a power action: a reboot shows REBOOT or HARD_REBOOT, every
/// action its task state.
pub fn power_taken(status: ServerStatus, kind: PowerKind, hard: bool) -> PowerState {
    let (status, task) = match (kind, hard) {
        (PowerKind::Reboot, false) => (ServerStatus::Reboot, TaskState::Rebooting),
        (PowerKind::Reboot, true) => (ServerStatus::HardReboot, TaskState::RebootingHard),
        (PowerKind::Stop, _) => (status, TaskState::PoweringOff),
        (PowerKind::Start, _) => (status, TaskState::PoweringOn),
    };
    PowerState {
        status,
        task_state: Some(task),
    }
}

/// What an agent's acknowledgement of a RUNNING sub-job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerAckEffect {
    /// The sub-job ends so (`None`: it stays RUNNING until the next boot).
    pub sub_job: Option<SubJobEnd>,
    /// The server's new state (`None`: unchanged).
    pub server: Option<PowerState>,
}

/// The agent's word on a power action: a refusal fails the sub-job and
/// settles the server; an accepted stop succeeds now (the agent acknowledges
/// just before it powers off); start and reboot succeed on the next boot.
pub fn power_acked(
    status: ServerStatus,
    kind: PowerKind,
    ok: bool,
    reason: Option<&str>,
) -> PowerAckEffect {
    if !ok {
        return PowerAckEffect {
            sub_job: Some(SubJobEnd::fail(
                kind,
                reason.unwrap_or(reasons::AGENT_REFUSED),
            )),
            server: Some(PowerState::idle(settled(status))),
        };
    }
    match kind {
        PowerKind::Stop => PowerAckEffect {
            sub_job: Some(SubJobEnd::success()),
            server: Some(PowerState::idle(ServerStatus::Shutoff)),
        },
        PowerKind::Start | PowerKind::Reboot => PowerAckEffect {
            sub_job: None,
            server: None,
        },
    }
}

/// An open sub-job timed out: it fails with its action's code, and its
/// server, stuck mid-action, returns to a plain state.
pub fn expired(status: ServerStatus, kind: PowerKind) -> (SubJobEnd, PowerState) {
    (
        SubJobEnd::fail(kind, reasons::TIMED_OUT),
        PowerState::idle(settled(status)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerStatus::*;
    use ecs_api::JobStatus;

    #[test]
    fn task_states_round_trip_through_their_wire_names() {
        for t in TaskState::ALL {
            assert_eq!(TaskState::parse(t.as_str()), Some(*t));
        }
        assert_eq!(TaskState::parse("REBOOTING"), None);
        assert_eq!(TaskState::PoweringOff.as_str(), "powering-off");
        assert_eq!(TaskState::RebootingHard.as_str(), "rebooting_hard");
    }

    #[test]
    fn a_heartbeat_brings_a_stopped_server_back_whatever_its_boot() {
        let back = Some(PowerState::idle(Active));
        assert_eq!(heartbeat(Shutoff, Some("b1"), "b1"), back);
        assert_eq!(heartbeat(Shutoff, Some("b1"), "b2"), back);
        assert_eq!(heartbeat(Shutoff, None, "b1"), back);
    }

    #[test]
    fn only_a_heartbeat_that_changes_nothing_but_the_time_is_a_refresh() {
        assert!(heartbeat_refreshes_only(Active, Some("b1"), "b1", true));
        assert!(heartbeat_refreshes_only(Reboot, Some("b1"), "b1", true));
        // A new boot, a first heartbeat, other details, a stopped server
        // coming back: each changes the server.
        assert!(!heartbeat_refreshes_only(Active, Some("b1"), "b2", true));
        assert!(!heartbeat_refreshes_only(Active, None, "b1", true));
        assert!(!heartbeat_refreshes_only(Active, Some("b1"), "b1", false));
        assert!(!heartbeat_refreshes_only(Shutoff, Some("b1"), "b1", true));
    }

    #[test]
    fn a_heartbeat_ends_a_reboot_only_on_a_new_boot() {
        for s in [Reboot, HardReboot] {
            assert_eq!(heartbeat(s, Some("b1"), "b1"), None, "{s}");
            assert_eq!(
                heartbeat(s, Some("b1"), "b2"),
                Some(PowerState::idle(Active))
            );
            assert_eq!(heartbeat(s, None, "b2"), Some(PowerState::idle(Active)));
        }
    }

    #[test]
    fn a_heartbeat_leaves_other_statuses_alone() {
        for s in ServerStatus::ALL
            .iter()
            .copied()
            .filter(|s| !matches!(s, Shutoff | Reboot | HardReboot))
        {
            assert_eq!(heartbeat(s, Some("b1"), "b2"), None, "{s}");
            assert_eq!(heartbeat(s, None, "b2"), None, "{s}");
        }
    }

    #[test]
    fn taking_an_action_sets_status_for_reboots_and_a_task_state_for_all() {
        let st = |status, task| PowerState {
            status,
            task_state: Some(task),
        };
        assert_eq!(
            power_taken(Active, PowerKind::Reboot, false),
            st(Reboot, TaskState::Rebooting)
        );
        assert_eq!(
            power_taken(Active, PowerKind::Reboot, true),
            st(HardReboot, TaskState::RebootingHard)
        );
        assert_eq!(
            power_taken(Active, PowerKind::Stop, false),
            st(Active, TaskState::PoweringOff)
        );
        assert_eq!(
            power_taken(Shutoff, PowerKind::Start, false),
            st(Shutoff, TaskState::PoweringOn)
        );
    }

    #[test]
    fn a_refused_action_fails_with_its_code_and_settles_the_server() {
        let e = power_acked(Reboot, PowerKind::Reboot, false, Some("not allowed here"));
        assert_eq!(e.server, Some(PowerState::idle(Active)));
        let sub = e.sub_job.unwrap();
        assert_eq!(sub.status, JobStatus::Fail);
        assert_eq!(sub.error_code, Some("Ecs.0227"));
        assert_eq!(sub.fail_reason.as_deref(), Some("not allowed here"));

        let e = power_acked(HardReboot, PowerKind::Reboot, false, None);
        assert_eq!(e.server, Some(PowerState::idle(Active)));
        assert_eq!(
            e.sub_job.unwrap().fail_reason.as_deref(),
            Some(reasons::AGENT_REFUSED)
        );

        let e = power_acked(Shutoff, PowerKind::Start, false, None);
        assert_eq!(e.server, Some(PowerState::idle(Shutoff)));
        assert_eq!(e.sub_job.unwrap().error_code, Some("Ecs.0226"));

        let e = power_acked(Active, PowerKind::Stop, false, None);
        assert_eq!(e.server, Some(PowerState::idle(Active)));
        assert_eq!(e.sub_job.unwrap().error_code, Some("Ecs.0611"));
    }

    #[test]
    fn an_accepted_stop_succeeds_at_once_and_the_server_is_shutoff() {
        let e = power_acked(Active, PowerKind::Stop, true, None);
        assert_eq!(e.sub_job, Some(SubJobEnd::success()));
        assert_eq!(e.server, Some(PowerState::idle(Shutoff)));
    }

    #[test]
    fn an_accepted_start_or_reboot_waits_for_the_next_boot() {
        for kind in [PowerKind::Start, PowerKind::Reboot] {
            let e = power_acked(Reboot, kind, true, None);
            assert_eq!(e.sub_job, None);
            assert_eq!(e.server, None);
        }
    }

    #[test]
    fn expiry_fails_with_the_code_of_the_action_and_ends_a_reboot() {
        let (sub, st) = expired(Reboot, PowerKind::Reboot);
        assert_eq!(
            (sub.status, sub.error_code, sub.fail_reason.as_deref()),
            (JobStatus::Fail, Some("Ecs.0227"), Some(reasons::TIMED_OUT))
        );
        assert_eq!(st, PowerState::idle(Active));
        let (sub, st) = expired(HardReboot, PowerKind::Reboot);
        assert_eq!(sub.error_code, Some("Ecs.0227"));
        assert_eq!(st, PowerState::idle(Active));
        let (sub, st) = expired(Shutoff, PowerKind::Start);
        assert_eq!(sub.error_code, Some("Ecs.0226"));
        assert_eq!(st, PowerState::idle(Shutoff));
        let (sub, st) = expired(Active, PowerKind::Stop);
        assert_eq!(sub.error_code, Some("Ecs.0611"));
        assert_eq!(st, PowerState::idle(Active));
    }

    #[test]
    fn resets_are_allowed_while_active_off_or_rebooting_only() {
        let allowed: Vec<_> = ServerStatus::ALL
            .iter()
            .copied()
            .filter(|s| allows_reset(*s))
            .collect();
        let mut expected = vec![Active, Shutoff, Reboot, HardReboot];
        expected.sort();
        let mut allowed = allowed;
        allowed.sort();
        assert_eq!(allowed, expected);
    }

    #[test]
    fn start_needs_shutoff_and_stop_or_reboot_need_active() {
        for s in ServerStatus::ALL.iter().copied() {
            assert_eq!(allows_power(PowerKind::Start, s), s == Shutoff, "{s}");
            assert_eq!(allows_power(PowerKind::Stop, s), s == Active, "{s}");
            assert_eq!(allows_power(PowerKind::Reboot, s), s == Active, "{s}");
        }
    }
}
