//! Power jobs: the action kinds, the sub-job lifecycle (INIT → RUNNING →
//! SUCCESS/FAIL, or INIT → FAIL) and a job's status aggregated from its
//! sub-jobs.

use chrono::{DateTime, Utc};
use ecs_api::JobStatus;

use super::reasons;

/// A power action (contract: Huawei `cloudservers/action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerKind {
    Start,
    Stop,
    Reboot,
}

impl PowerKind {
    pub const ALL: &'static [PowerKind] = &[PowerKind::Start, PowerKind::Stop, PowerKind::Reboot];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerKind::Start => "start",
            PowerKind::Stop => "stop",
            PowerKind::Reboot => "reboot",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => PowerKind::Start,
            "stop" => PowerKind::Stop,
            "reboot" => PowerKind::Reboot,
            _ => return None,
        })
    }
    /// Huawei-style job type names (not documented by Huawei for these operations).
    pub fn job_type(self) -> &'static str {
        match self {
            PowerKind::Start => "batchStartServers",
            PowerKind::Stop => "batchStopServers",
            PowerKind::Reboot => "batchRebootServers",
        }
    }
    pub fn sub_job_type(self) -> &'static str {
        match self {
            PowerKind::Start => "startServer",
            PowerKind::Stop => "stopServer",
            PowerKind::Reboot => "rebootServer",
        }
    }
    /// The Huawei error code of a failed sub-job of this kind.
    pub fn fail_code(self) -> &'static str {
        match self {
            PowerKind::Start => "Ecs.0226",
            PowerKind::Reboot => "Ecs.0227",
            PowerKind::Stop => "Ecs.0611",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubJob {
    pub sub_job_id: String,
    pub server_id: String,
    pub status: JobStatus,
    pub error_code: Option<String>,
    pub fail_reason: Option<String>,
    pub begin: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub job_id: String,
    pub kind: PowerKind,
    pub begin: DateTime<Utc>,
    pub subs: Vec<SubJob>,
}

/// A sub-job not yet SUCCESS or FAIL.
pub fn is_open(status: JobStatus) -> bool {
    !status.is_final()
}

/// The sub-job lifecycle: INIT → RUNNING (an agent took it), INIT or
/// RUNNING → FAIL, RUNNING → SUCCESS.
pub fn can_move(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    matches!(
        (from, to),
        (Init, Running) | (Init, Fail) | (Running, Success) | (Running, Fail)
    )
}

/// How a sub-job ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubJobEnd {
    pub status: JobStatus,
    pub error_code: Option<&'static str>,
    pub fail_reason: Option<String>,
}

impl SubJobEnd {
    pub fn success() -> Self {
        SubJobEnd {
            status: JobStatus::Success,
            error_code: None,
            fail_reason: None,
        }
    }
    /// FAIL with the kind's Huawei code.
    pub fn fail(kind: PowerKind, reason: &str) -> Self {
        SubJobEnd {
            status: JobStatus::Fail,
            error_code: Some(kind.fail_code()),
            fail_reason: Some(reason.to_owned()),
        }
    }
}

/// How a new sub-job starts: INIT, or FAIL at once with a reason (a start
/// that nothing can carry out).
pub fn created(kind: PowerKind, failed: Option<&str>) -> Option<SubJobEnd> {
    failed.map(|r| SubJobEnd::fail(kind, r))
}

/// A RUNNING sub-job that a new boot completes: starts and reboots begun on
/// another boot (a stop completes at its acknowledgement).
pub fn completes_on_boot(kind: PowerKind, boot_at_start: Option<&str>, boot: &str) -> bool {
    matches!(kind, PowerKind::Start | PowerKind::Reboot) && boot_at_start != Some(boot)
}

/// A job's state as Huawei's `ShowJob` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    pub status: JobStatus,
    /// The last sub-job's end, once none is open.
    pub end: Option<DateTime<Utc>>,
    /// The first failed sub-job's code, when the job failed.
    pub error_code: Option<String>,
    /// "N of M servers failed; first: ...", when the job failed.
    pub fail_reason: Option<String>,
}

/// A job from its sub-jobs: INIT while all are INIT, RUNNING while any is
/// open, then SUCCESS, or FAIL if any failed.
pub fn summarize(subs: &[SubJob]) -> JobSummary {
    let open = subs.iter().any(|s| is_open(s.status));
    let failed: Vec<&SubJob> = subs
        .iter()
        .filter(|s| s.status == JobStatus::Fail)
        .collect();
    let status = if open {
        if subs.iter().all(|s| s.status == JobStatus::Init) {
            JobStatus::Init
        } else {
            JobStatus::Running
        }
    } else if failed.is_empty() {
        JobStatus::Success
    } else {
        JobStatus::Fail
    };
    let end = if open {
        None
    } else {
        subs.iter().filter_map(|s| s.end).max()
    };
    let (error_code, fail_reason) = match failed.first() {
        Some(first) if status == JobStatus::Fail => (
            first.error_code.clone(),
            Some(reasons::job_failed(
                failed.len(),
                subs.len(),
                &first.server_id,
                first.fail_reason.as_deref().unwrap_or(reasons::FAILED),
            )),
        ),
        _ => (None, None),
    };
    JobSummary {
        status,
        end,
        error_code,
        fail_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn sub(server: &str, status: JobStatus, end: Option<i64>) -> SubJob {
        SubJob {
            sub_job_id: format!("sub-{server}"),
            server_id: server.into(),
            status,
            error_code: (status == Fail).then(|| "Ecs.0227".into()),
            fail_reason: (status == Fail).then(|| format!("{server} broke")),
            begin: t(0),
            end: end.map(t),
        }
    }

    #[test]
    fn kinds_round_trip_and_fail_with_their_own_code() {
        for k in PowerKind::ALL {
            assert_eq!(PowerKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(PowerKind::parse("Start"), None);
        assert_eq!(PowerKind::Start.fail_code(), "Ecs.0226");
        assert_eq!(PowerKind::Reboot.fail_code(), "Ecs.0227");
        assert_eq!(PowerKind::Stop.fail_code(), "Ecs.0611");
    }

    #[test]
    fn sub_jobs_move_forward_only() {
        assert!(can_move(Init, Running));
        assert!(can_move(Init, Fail));
        assert!(can_move(Running, Success));
        assert!(can_move(Running, Fail));
        assert!(!can_move(Init, Success), "success needs an agent");
        for from in [Success, Fail] {
            for to in JobStatus::ALL {
                assert!(!can_move(from, *to), "{from} is final");
            }
        }
        assert!(!can_move(Running, Init));
        assert!(is_open(Init) && is_open(Running) && !is_open(Success) && !is_open(Fail));
    }

    #[test]
    fn a_sub_job_is_created_init_or_failed_with_its_reason() {
        assert_eq!(created(PowerKind::Start, None), None);
        let f = created(PowerKind::Start, Some(reasons::NO_POWER_DRIVER)).unwrap();
        assert_eq!(f.status, Fail);
        assert_eq!(f.error_code, Some("Ecs.0226"));
        assert_eq!(f.fail_reason.as_deref(), Some(reasons::NO_POWER_DRIVER));
    }

    #[test]
    fn a_new_boot_completes_running_starts_and_reboots_not_stops() {
        assert!(completes_on_boot(PowerKind::Reboot, Some("b1"), "b2"));
        assert!(completes_on_boot(PowerKind::Start, Some("b1"), "b2"));
        assert!(completes_on_boot(PowerKind::Reboot, None, "b2"));
        assert!(!completes_on_boot(PowerKind::Reboot, Some("b2"), "b2"));
        assert!(!completes_on_boot(PowerKind::Stop, Some("b1"), "b2"));
    }

    #[test]
    fn a_job_is_init_until_one_sub_job_moves() {
        let s = summarize(&[sub("a", Init, None), sub("b", Init, None)]);
        assert_eq!(s.status, Init);
        assert_eq!((s.end, s.error_code, s.fail_reason), (None, None, None));
    }

    #[test]
    fn a_job_runs_while_any_sub_job_is_open_and_has_no_end_or_failure_yet() {
        let s = summarize(&[sub("a", Success, Some(5)), sub("b", Init, None)]);
        assert_eq!(s.status, Running);
        let s = summarize(&[sub("a", Fail, Some(5)), sub("b", Running, None)]);
        assert_eq!(s.status, Running);
        assert_eq!((s.end, s.error_code, s.fail_reason), (None, None, None));
    }

    #[test]
    fn a_finished_job_ends_at_its_last_sub_job() {
        let s = summarize(&[sub("a", Success, Some(9)), sub("b", Success, Some(4))]);
        assert_eq!(s.status, Success);
        assert_eq!(s.end, Some(t(9)));
        assert_eq!((s.error_code, s.fail_reason), (None, None));
    }

    #[test]
    fn a_failed_job_names_the_first_failure_and_counts_them() {
        let mut first = sub("b", Fail, Some(3));
        first.error_code = Some("Ecs.0226".into());
        let s = summarize(&[
            sub("a", Success, Some(2)),
            first,
            sub("c", Fail, Some(7)),
            sub("d", Success, Some(1)),
        ]);
        assert_eq!(s.status, Fail);
        assert_eq!(s.end, Some(t(7)));
        assert_eq!(s.error_code.as_deref(), Some("Ecs.0226"));
        assert_eq!(
            s.fail_reason.as_deref(),
            Some("2 of 4 servers failed; first: b: b broke")
        );
    }

    #[test]
    fn a_failure_without_a_reason_says_failed() {
        let mut f = sub("a", Fail, Some(1));
        f.fail_reason = None;
        let s = summarize(&[f]);
        assert_eq!(
            s.fail_reason.as_deref(),
            Some("1 of 1 servers failed; first: a: failed")
        );
    }
}
