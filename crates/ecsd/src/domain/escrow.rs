//! Escrow and rotation rules (issue 15) in plain Rust: which escrowed
//! versions a server keeps, when a rotation policy is due, which servers a
//! selector picks, when a retrieved password rotates. The store reads rows,
//! asks these functions, and writes the answer.

use chrono::{DateTime, Duration, FixedOffset, NaiveTime, Timelike, Utc};
use ecs_policy::OsType;
use serde::{Deserialize, Serialize};

use crate::authz::glob;

/// How many escrowed versions a server keeps by default.
pub const DEFAULT_KEEP: usize = 10;

/// The versions of one server to delete after a new one was added:
/// everything beyond the newest `keep`, except the newest version the agent
/// APPLIED, which is what the server's password is now and is never
/// deleted (a server offline through `keep` rotations still has its current
/// password escrowed). `versions` are (version, applied) in any order.
pub fn versions_to_prune(versions: &[(i64, bool)], keep: usize) -> Vec<i64> {
    let mut sorted = versions.to_vec();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.0));
    let newest_applied = sorted.iter().find(|(_, applied)| *applied).map(|v| v.0);
    sorted
        .into_iter()
        .skip(keep.max(1))
        .map(|(v, _)| v)
        .filter(|v| Some(*v) != newest_applied)
        .collect()
}

/// When a rotation policy runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Every this many minutes (tests, or short-lived fleets) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_minutes: Option<u32>,
    /// ... or every this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_days: Option<u32>,
    /// The maintenance window's start, `HH:MM`, in `utc_offset`; a due
    /// rotation waits for the window. None: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    /// The window's length in minutes (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u32>,
    /// The window's time zone as a fixed offset from UTC, `+HH:MM` or
    /// `-HH:MM` (default `+00:00`) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
    /// ... or as an IANA name (`Europe/Berlin`), daylight saving included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Where a window's local time is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Seconds since local midnight at `now`.
    fn seconds_from_midnight(self, now: DateTime<Utc>) -> i64 {
        i64::from(match self {
            Zone::Fixed(o) => now.with_timezone(&o).num_seconds_from_midnight(),
            Zone::Named(tz) => now.with_timezone(&tz).num_seconds_from_midnight(),
        })
    }
}

/// Why a policy's fields are refused; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyInvalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> PolicyInvalid {
    PolicyInvalid {
        field,
        message: message.into(),
    }
}

/// A validated schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub every: Duration,
    pub window: Option<(NaiveTime, Duration, Zone)>,
}

impl Schedule {
    pub fn period(&self) -> Result<Period, PolicyInvalid> {
        let every = match (self.every_minutes, self.every_days) {
            (Some(m), None) if m >= 1 => Duration::minutes(m.into()),
            (None, Some(d)) if (1..=3650).contains(&d) => Duration::days(d.into()),
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    "schedule",
                    "exactly one of every_minutes and every_days is required",
                ));
            }
            _ => return Err(invalid("schedule", "the period must be at least 1")),
        };
        let window = match &self.window_start {
            None => None,
            Some(start) => {
                let t = NaiveTime::parse_from_str(start, "%H:%M")
                    .map_err(|_| invalid("schedule.window_start", "must be HH:MM"))?;
                let len = self.window_minutes.unwrap_or(60);
                if !(1..=1440).contains(&len) {
                    return Err(invalid(
                        "schedule.window_minutes",
                        "must be between 1 and 1440",
                    ));
                }
                let zone = match (&self.utc_offset, &self.time_zone) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "schedule.time_zone",
                            "give utc_offset or time_zone, not both",
                        ));
                    }
                    (_, Some(name)) => Zone::Named(name.parse().map_err(|_| {
                        invalid("schedule.time_zone", "must be an IANA time zone name")
                    })?),
                    (offset, None) => Zone::Fixed(
                        parse_offset(offset.as_deref().unwrap_or("+00:00")).ok_or_else(|| {
                            invalid("schedule.utc_offset", "must be +HH:MM or -HH:MM")
                        })?,
                    ),
                };
                Some((t, Duration::minutes(len.into()), zone))
            }
        };
        Ok(Period { every, window })
    }
}

fn parse_offset(s: &str) -> Option<FixedOffset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 || rest.len() != 5 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

impl Period {
    /// Is a policy that last ran at `last` (never: `None`) due at `now`?
    /// Due once the period has passed since the last run (a first run at
    /// once), and, with a window, only inside it — where the period counts
    /// from the window, not from the moment of the run: a run late in
    /// yesterday's window does not push today's past its end.
    pub fn due(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        let gap = match self.window {
            Some((_, len, _)) if self.every > len => self.every - len,
            _ => self.every,
        };
        if last.is_some_and(|l| now < l + gap) {
            return false;
        }
        match self.window {
            None => true,
            Some((start, len, zone)) => in_window(now, start, len, zone),
        }
    }
}

/// Is `now` inside the daily window starting at `start` (local to `zone`)
/// and lasting `len` (it may cross midnight)?
pub fn in_window(now: DateTime<Utc>, start: NaiveTime, len: Duration, zone: Zone) -> bool {
    let since_midnight = zone.seconds_from_midnight(now);
    let start_s = i64::from(start.num_seconds_from_midnight());
    let day = 86_400;
    let into = (since_midnight - start_s).rem_euclid(day);
    into < len.num_seconds()
}

/// Which servers a policy rotates: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Tags (`key=value`) the server must all carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A name pattern (`*` any run, `?` one character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Linux` or `Windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
}

impl Selector {
    pub fn validate(&self) -> Result<(), PolicyInvalid> {
        if let Some(os) = &self.os
            && OsType::parse(os).is_none()
        {
            return Err(invalid("selector.os", "must be Linux or Windows"));
        }
        if self.tags.iter().any(|t| t.is_empty()) {
            return Err(invalid("selector.tags", "a tag must not be empty"));
        }
        Ok(())
    }

    /// Does the server (its name, OS, tags) match?
    pub fn matches(&self, name: &str, os: OsType, tags: &[String]) -> bool {
        self.tags.iter().all(|t| tags.contains(t))
            && self.name.as_deref().is_none_or(|p| glob(p, name, false))
            && self
                .os
                .as_deref()
                .is_none_or(|o| OsType::parse(o) == Some(os))
    }
}

/// How a rotation is applied (contract §2.7 and §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ApplyMode {
    /// At the server's next start or restart.
    #[default]
    NextRestart,
    /// At once, by the running agent.
    Now,
    /// At once, then the server restarts (a reboot job).
    NowRestart,
}

/// A rotation policy as stored (JSON), validated before it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationSpec {
    pub schedule: Schedule,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub apply: ApplyMode,
    /// Rotate a server this many minutes after its password was retrieved
    /// (Windows LAPS' post-authentication action); None: not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_after_retrieval_minutes: Option<u32>,
    /// The generated passwords' length (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
}

impl RotationSpec {
    pub fn validate(&self) -> Result<Period, PolicyInvalid> {
        let period = self.schedule.period()?;
        self.selector.validate()?;
        if let Some(len) = self.length
            && !(ecs_policy::MIN_LEN..=ecs_policy::MAX_LEN).contains(&len)
        {
            return Err(invalid("length", "must be between 8 and 26"));
        }
        Ok(period)
    }
}

/// A server's password against its policies (the drift report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    Ok,
    /// No escrowed version at all.
    NeverEscrowed,
    /// The newest version ended without being applied (FAILED, SUPERSEDED).
    NotApplied,
    /// The newest version is older than the shortest period of a policy
    /// that selects the server.
    Overdue,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Ok => "ok",
            Drift::NeverEscrowed => "never_escrowed",
            Drift::NotApplied => "not_applied",
            Drift::Overdue => "overdue",
        }
    }
}

/// The drift of a server whose newest version was made at `created` with
/// this reset state (`None`: no version), under the shortest `period` of
/// the policies selecting it (`None`: no policy), at `now`.
pub fn drift(
    newest: Option<(DateTime<Utc>, Option<ecs_api::ResetState>)>,
    period: Option<Duration>,
    now: DateTime<Utc>,
) -> Drift {
    use ecs_api::ResetState;
    match newest {
        None => Drift::NeverEscrowed,
        Some((created, _)) if period.is_some_and(|p| created + p < now) => Drift::Overdue,
        Some((_, Some(st))) if st.is_final() && st != ResetState::Applied => Drift::NotApplied,
        Some(_) => Drift::Ok,
    }
}

/// How long after a policy's run its servers left behind are caught up:
/// long enough for the run itself (claimed first, stored a moment later)
/// to have stored its versions, so that a second scheduler (a replica
/// taking over housekeeping) never rotates them twice.
pub const CATCH_UP_SETTLE: Duration = Duration::seconds(10);

/// Are servers without a version since the run at `last` caught up at
/// `now`?
pub fn catch_up_due(last: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now >= last + CATCH_UP_SETTLE
}

/// Is a server whose password was retrieved at `retrieved` (after its
/// newest escrowed version) due for rotation at `now`, with this grace?
pub fn retrieval_due(retrieved: DateTime<Utc>, grace_minutes: u32, now: DateTime<Utc>) -> bool {
    now >= retrieved + Duration::minutes(grace_minutes.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn retention_keeps_the_newest_and_the_applied_one() {
        let v: Vec<(i64, bool)> = (1..=12).map(|n| (n, false)).collect();
        assert_eq!(versions_to_prune(&v, 10), vec![2, 1]);
        // Version 1 is what the server runs: it stays.
        let mut v = v;
        v[0].1 = true;
        assert_eq!(versions_to_prune(&v, 10), vec![2]);
        // A newer applied version makes the old one prunable.
        v[11].1 = true;
        assert_eq!(versions_to_prune(&v, 10), vec![2, 1]);
        assert!(versions_to_prune(&[(1, false)], 10).is_empty());
        // keep 0 still keeps the newest.
        assert_eq!(versions_to_prune(&[(1, false), (2, false)], 0), vec![1]);
    }

    fn every(minutes: u32) -> Schedule {
        Schedule {
            every_minutes: Some(minutes),
            every_days: None,
            window_start: None,
            window_minutes: None,
            utc_offset: None,
            time_zone: None,
        }
    }

    #[test]
    fn a_policy_is_due_once_per_period() {
        let p = every(1).period().unwrap();
        let t = at("2026-01-01T00:00:00Z");
        assert!(p.due(None, t));
        assert!(!p.due(Some(t), t + Duration::seconds(59)));
        assert!(p.due(Some(t), t + Duration::seconds(60)));
    }

    #[test]
    fn a_window_in_a_time_zone_holds_a_due_rotation() {
        let s = Schedule {
            every_minutes: None,
            every_days: Some(1),
            window_start: Some("02:00".into()),
            window_minutes: Some(60),
            utc_offset: Some("+02:00".into()),
            time_zone: None,
        };
        let p = s.period().unwrap();
        // 02:30 at +02:00 is 00:30 UTC.
        assert!(p.due(None, at("2026-01-01T00:30:00Z")));
        assert!(!p.due(None, at("2026-01-01T02:30:00Z")));
        assert!(!p.due(None, at("2026-01-01T01:00:00Z")));
        // Ran yesterday at 00:10 UTC: due again today inside the window.
        assert!(p.due(Some(at("2026-01-01T00:10:00Z")), at("2026-01-02T00:15:00Z")));
        // Ran late in yesterday's window (00:59 UTC): due early in today's.
        assert!(p.due(Some(at("2026-01-01T00:59:00Z")), at("2026-01-02T00:05:00Z")));
        // But never twice in one window.
        assert!(!p.due(Some(at("2026-01-02T00:05:00Z")), at("2026-01-02T00:50:00Z")));
        // A window across midnight.
        let w = (
            NaiveTime::from_hms_opt(23, 30, 0).unwrap(),
            Duration::minutes(60),
            Zone::Fixed(FixedOffset::east_opt(0).unwrap()),
        );
        assert!(in_window(at("2026-01-01T00:15:00Z"), w.0, w.1, w.2));
        assert!(!in_window(at("2026-01-01T00:31:00Z"), w.0, w.1, w.2));
    }

    #[test]
    fn a_named_time_zone_follows_daylight_saving_time() {
        let s = Schedule {
            every_minutes: None,
            every_days: Some(1),
            window_start: Some("02:00".into()),
            window_minutes: Some(60),
            utc_offset: None,
            time_zone: Some("Europe/Berlin".into()),
        };
        let p = s.period().unwrap();
        // Winter: 02:30 in Berlin is 01:30 UTC; summer: 00:30 UTC.
        assert!(p.due(None, at("2026-01-15T01:30:00Z")));
        assert!(!p.due(None, at("2026-01-15T00:30:00Z")));
        assert!(p.due(None, at("2026-07-15T00:30:00Z")));
        assert!(!p.due(None, at("2026-07-15T01:30:00Z")));
        let bad = Schedule {
            time_zone: Some("Mars/Olympus".into()),
            ..s.clone()
        };
        assert_eq!(bad.period().unwrap_err().field, "schedule.time_zone");
        let both = Schedule {
            utc_offset: Some("+01:00".into()),
            ..s
        };
        assert_eq!(both.period().unwrap_err().field, "schedule.time_zone");
    }

    #[test]
    fn schedules_are_validated_with_field_names() {
        let mut s = every(1);
        s.every_days = Some(1);
        assert_eq!(s.period().unwrap_err().field, "schedule");
        assert_eq!(every(0).period().unwrap_err().field, "schedule");
        let mut s = every(5);
        s.window_start = Some("25:00".into());
        assert_eq!(s.period().unwrap_err().field, "schedule.window_start");
        s.window_start = Some("01:00".into());
        s.utc_offset = Some("CET".into());
        assert_eq!(s.period().unwrap_err().field, "schedule.utc_offset");
    }

    #[test]
    fn selectors_match_tags_names_and_os() {
        let sel = Selector {
            tags: vec!["env=prod".into()],
            name: Some("web-*".into()),
            os: Some("Linux".into()),
        };
        let prod = vec!["env=prod".to_string(), "team=a".to_string()];
        assert!(sel.matches("web-1", OsType::Linux, &prod));
        assert!(!sel.matches("db-1", OsType::Linux, &prod));
        assert!(!sel.matches("web-1", OsType::Windows, &prod));
        assert!(!sel.matches("web-1", OsType::Linux, &["env=dev".to_string()]));
        assert!(Selector::default().matches("x", OsType::Windows, &[]));
        assert!(
            Selector {
                os: Some("BeOS".into()),
                ..Selector::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn drift_names_what_needs_attention() {
        use ecs_api::ResetState::*;
        let t = at("2026-01-01T00:00:00Z");
        let day = Some(Duration::days(1));
        assert_eq!(drift(None, day, t), Drift::NeverEscrowed);
        assert_eq!(drift(None, None, t), Drift::NeverEscrowed);
        let fresh = Some((t, Some(Applied)));
        assert_eq!(drift(fresh, day, t + Duration::hours(23)), Drift::Ok);
        assert_eq!(drift(fresh, day, t + Duration::hours(25)), Drift::Overdue);
        // Without a policy nothing is overdue.
        assert_eq!(drift(fresh, None, t + Duration::days(400)), Drift::Ok);
        assert_eq!(drift(Some((t, Some(Failed))), day, t), Drift::NotApplied);
        assert_eq!(
            drift(Some((t, Some(Superseded))), day, t),
            Drift::NotApplied
        );
        // Still on its way: not (yet) a problem.
        assert_eq!(drift(Some((t, Some(Pending))), day, t), Drift::Ok);
        assert_eq!(drift(Some((t, None)), day, t), Drift::Ok);
        assert_eq!(Drift::NotApplied.as_str(), "not_applied");
    }

    #[test]
    fn servers_left_behind_are_caught_up_once_the_run_settled() {
        let t = at("2026-01-01T00:00:00Z");
        assert!(!catch_up_due(t, t));
        assert!(!catch_up_due(t, t + Duration::seconds(9)));
        assert!(catch_up_due(t, t + Duration::seconds(10)));
    }

    #[test]
    fn retrieval_rotates_after_the_grace() {
        let t = at("2026-01-01T00:00:00Z");
        assert!(!retrieval_due(t, 10, t + Duration::minutes(9)));
        assert!(retrieval_due(t, 10, t + Duration::minutes(10)));
    }
}
