//! Schedules: when a process starts on its own, from a cron expression in an IANA time zone,
//! and what happens to fires that were missed (the engine was down) or that would overlap a
//! run still in progress.
//!
//! Sans-IO like `core/`: plain data and pure functions. Time is always an argument (`now_ms`,
//! `after_ms`: milliseconds since the Unix epoch, UTC); nothing here reads a clock, sleeps or
//! touches storage. chrono is built without its `clock` feature, so `Utc::now` does not even
//! exist in this build. The same spec, state and `now_ms` always give the same [`Plan`].
//!
//! # The spec
//!
//! A [`ScheduleSpec`] is what a schedule file holds:
//!
//! ```yaml
//! cron: "0 30 2 * * *"          # 5 or 6 fields, see below
//! timezone: Europe/Berlin       # IANA name; default UTC
//! overlap: skip                 # skip | buffer_one | allow_all; default skip
//! missed: { policy: run_once }  # skip | run_once | catch_up (with window: "6h"); default skip
//! ```
//!
//! [`ScheduleSpec::check`] turns it into a [`CompiledSchedule`] or an [`Error`] that names the
//! field at fault.
//!
//! Cron expressions are parsed by croner. Two forms are accepted:
//! - five fields, `minute hour day-of-month month day-of-week`: minute precision, fires at
//!   second 0;
//! - six fields, `second minute hour day-of-month month day-of-week`.
//!
//! croner's seven-field form (a trailing year) is refused. Day of week is POSIX (0 and 7 are
//! Sunday); day-of-month and day-of-week combine with OR unless day-of-week starts with `+`.
//! croner's extensions are accepted: `L`, `W`, `#`, `+` and the `@hourly`-style nicknames. A
//! pattern that matches no date at all (`0 0 31 2 *`) is refused by `check`, so the planner
//! never runs croner's search to its year-5000 limit on every call.
//!
//! # Daylight saving time
//!
//! Fires are instants; the pattern is matched against the wall clock of the schedule's zone.
//! What happens on the days the clock jumps is croner's documented behaviour (it follows the
//! Open Cron Pattern Specification and Vixie cron), which sorts patterns in two kinds:
//!
//! - *Fixed-time* patterns have exactly one value in each of the second, minute and hour fields
//!   (`0 30 2 * * *`, `30 2 * * 1-5`).
//!   - A local time that does not exist (02:30 in Europe/Berlin on 2026-03-29, when 02:00 jumps
//!     to 03:00) fires once, at the first instant after the gap: 03:00+02:00 = 01:00Z.
//!   - A local time that happens twice (02:30 in Europe/Berlin on 2026-10-25) fires once, at
//!     its first occurrence: 02:30+02:00 = 00:30Z, not 02:30+01:00 = 01:30Z.
//! - Every other pattern (a `*`, a step, a list or a range in the second, minute or hour field:
//!   `*/30 * * * *`, `0 * * * *`, and also `15,45 2 * * *`) is an *interval* pattern.
//!   - Times inside a gap do not fire at all; the schedule resumes at its next match after the
//!     gap. An hourly schedule has no 02:00 on 2026-03-29 in Berlin.
//!   - In a repeated hour it fires at every real instant whose wall clock matches, so twice:
//!     `*/30 * * * *` in Berlin on 2026-10-25 fires at 02:00+02:00, 02:30+02:00, 02:00+01:00 and
//!     02:30+01:00 (00:00Z, 00:30Z, 01:00Z, 01:30Z), half an hour apart in real time.
//!
//! The classification is croner's: a list such as `15,45 2 * * *` counts as an interval, so it
//! does not fire on the day its hour is skipped (Vixie cron would run both at 03:00). The tests
//! pin all of this with concrete instants for Europe/Berlin and America/New_York.
//!
//! # Planning
//!
//! [`ScheduleState`] is what the engine stores per schedule. [`CompiledSchedule::due`] takes it
//! and `now_ms` and returns a [`Plan`]: fires to start now, fires skipped (with a
//! [`SkipCause`]), and when to call again. It updates the state itself, including the runs it
//! starts, so the engine persists the new state together with the plan before it starts
//! anything (persist, then act). [`CompiledSchedule::run_finished`] releases a buffered fire
//! when a run ends. The rules for missed and overlapping fires are on [`Missed`], [`Overlap`]
//! and `due`.

mod plan;
#[cfg(test)]
mod tests;

pub use plan::{Plan, ScheduleState, SkipCause, SkippedBulk};

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::definition::DurationMs;

/// How late the newest due fire may be and still count as on time. The engine's wake-ups are
/// never exact (a busy host, a slow commit), and a schedule should not treat a fire it is
/// seconds late for as missed. Anything older was missed: the engine was down or stalled.
pub const MISSED_GRACE_MS: u64 = 60_000;

/// Most fires one `catch_up` plan starts; older fires in the window are skipped as missed.
/// Catching up exists to make good a short outage, not to flood the agents with a backlog.
pub const MAX_CATCH_UP_RUNS: usize = 100;

/// Longest `catch_up` window (7 days): enough to ride out a long weekend's outage, short
/// enough that nobody replays months of history by accident.
pub const MAX_CATCH_UP_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// Most due fires one plan handles one by one, newest first. Older due fires (a minutely
/// schedule after a year of downtime has half a million) are all missed and reported as one
/// [`SkippedBulk`], so a plan's size and the work to make it stay bounded. It must exceed
/// [`MAX_CATCH_UP_RUNS`], so that every fire a catch-up could start is listed.
pub const MAX_LISTED_FIRES: usize = 200;

/// Most fires counted in a [`SkippedBulk`]: counting walks the fires one by one (a few
/// microseconds each), so it stops here and says so. 10,000 is almost a week of a minutely
/// schedule.
pub const MAX_COUNTED_BULK_FIRES: u64 = 10_000;

/// Longest cron expression accepted. The longest sensible one (every value of a field listed)
/// is a few hundred bytes; the limit keeps error messages, which quote it, small.
pub const MAX_CRON_BYTES: usize = 1_024;

const _: () = assert!(MAX_LISTED_FIRES > MAX_CATCH_UP_RUNS);

/// A schedule as written in a schedule file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ScheduleSpec {
    /// Five fields (minute precision) or six (seconds first); see the module doc.
    pub cron: String,
    /// IANA time zone name the cron expression is read in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub missed: Missed,
}

fn default_timezone() -> String {
    "UTC".to_string()
}

/// What to do with a fire that comes while a run of this schedule is still in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip it (cause [`SkipCause::Overlap`]): no fire starts while a run is counted.
    #[default]
    Skip,
    /// Keep the first such fire and start it when the running run finishes; skip any further
    /// ones while one is kept. Runs never overlap, and the latest change of state is not lost.
    BufferOne,
    /// Start it anyway: runs may overlap without limit.
    AllowAll,
}

/// What to do with fires that are due but were not started on time, because the engine was
/// down or more than one fire fell due between two calls. Only the newest due fire can be on
/// time (at most [`MISSED_GRACE_MS`] old); every policy starts an on-time fire.
///
/// Written `{ policy: skip }`, `{ policy: run_once }` or `{ policy: catch_up, window: 6h }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MissedFields", into = "MissedFields")]
pub enum Missed {
    /// Skip every missed fire (cause [`SkipCause::Missed`]); only an on-time fire starts.
    #[default]
    Skip,
    /// Start the newest due fire, however late, and skip the older ones.
    RunOnce,
    /// Start every due fire from the last `window` (and an on-time one), oldest first, at
    /// most the newest [`MAX_CATCH_UP_RUNS`]; skip the rest. Note that the overlap policy still
    /// applies to them: only `allow_all` starts more than one at once.
    CatchUp { window: DurationMs },
}

/// How [`Missed`] is written. serde's internally tagged enums ignore unknown fields of unit
/// variants (`{ policy: skip, window: 6h }` would pass silently), so the policy and its fields
/// are read flat and checked here.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct MissedFields {
    policy: MissedPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window: Option<DurationMs>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MissedPolicy {
    Skip,
    RunOnce,
    CatchUp,
}

impl TryFrom<MissedFields> for Missed {
    type Error = String;

    fn try_from(fields: MissedFields) -> Result<Missed, String> {
        match (fields.policy, fields.window) {
            (MissedPolicy::Skip, None) => Ok(Missed::Skip),
            (MissedPolicy::RunOnce, None) => Ok(Missed::RunOnce),
            (MissedPolicy::CatchUp, Some(window)) => Ok(Missed::CatchUp { window }),
            (MissedPolicy::CatchUp, None) => {
                Err("window: policy catch_up needs a window, such as \"6h\"".to_string())
            }
            (MissedPolicy::Skip | MissedPolicy::RunOnce, Some(_)) => {
                Err("window: only policy catch_up takes a window".to_string())
            }
        }
    }
}

impl From<Missed> for MissedFields {
    fn from(missed: Missed) -> MissedFields {
        let (policy, window) = match missed {
            Missed::Skip => (MissedPolicy::Skip, None),
            Missed::RunOnce => (MissedPolicy::RunOnce, None),
            Missed::CatchUp { window } => (MissedPolicy::CatchUp, Some(window)),
        };
        MissedFields { policy, window }
    }
}

/// A spec that cannot be used; each message starts with the field at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error(
        "cron: {cron:?} is not a cron expression (5 fields, or 6 with seconds first): {message}"
    )]
    Cron { cron: String, message: String },
    #[error("cron: {cron:?} never fires: no date matches it (croner searched to the year 5000)")]
    NeverFires { cron: String },
    #[error("cron: expression is {len} bytes, over the limit of {MAX_CRON_BYTES}")]
    CronTooLong { len: usize },
    #[error(
        "timezone: {name:?} is not an IANA time zone name such as \"Europe/Berlin\" or \"UTC\""
    )]
    Timezone { name: String },
    #[error("missed.window: a catch_up window must be longer than zero")]
    ZeroWindow,
    #[error(
        "missed.window: {window} is over the limit of {limit}: a longer outage cannot be caught up",
        limit = DurationMs(MAX_CATCH_UP_WINDOW_MS)
    )]
    WindowTooLong { window: DurationMs },
}

impl ScheduleSpec {
    /// Checks every field and compiles the cron expression for its zone.
    pub fn check(&self) -> Result<CompiledSchedule, Error> {
        if self.cron.len() > MAX_CRON_BYTES {
            return Err(Error::CronTooLong {
                len: self.cron.len(),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&self.cron)
            .map_err(|e| Error::Cron {
                cron: self.cron.clone(),
                // croner's messages end with a dot; ours do not.
                message: e.to_string().trim_end_matches('.').to_string(),
            })?;
        let zone: Tz = self.timezone.parse().map_err(|_| Error::Timezone {
            name: self.timezone.clone(),
        })?;
        match self.missed {
            Missed::CatchUp { window } if window.as_millis() == 0 => {
                return Err(Error::ZeroWindow);
            }
            Missed::CatchUp { window } if window.as_millis() > MAX_CATCH_UP_WINDOW_MS => {
                return Err(Error::WindowTooLong { window });
            }
            _ => {}
        }
        // A pattern without a year field repeats every 400 years at most, so one that has no
        // match from 1970 to croner's year-5000 limit has none ever.
        let epoch = DateTime::<Utc>::UNIX_EPOCH.with_timezone(&zone);
        match cron.find_next_occurrence(&epoch, true) {
            Ok(_) => {}
            Err(CronError::TimeSearchLimitExceeded) => {
                return Err(Error::NeverFires {
                    cron: self.cron.clone(),
                });
            }
            Err(e) => {
                return Err(Error::Cron {
                    cron: self.cron.clone(),
                    message: e.to_string().trim_end_matches('.').to_string(),
                });
            }
        }
        Ok(CompiledSchedule {
            cron,
            zone,
            overlap: self.overlap,
            missed: self.missed,
        })
    }
}

/// One fire of a schedule: an instant, with its wall clock time in the schedule's zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Fire {
    /// Milliseconds since the Unix epoch; always a whole second.
    pub at_ms: u64,
    /// RFC 3339 with the zone's offset at that instant, e.g. `2026-03-29T03:00:00+02:00`.
    pub local: String,
    /// RFC 3339 in UTC, e.g. `2026-03-29T01:00:00Z`.
    pub utc: String,
}

/// A checked [`ScheduleSpec`]: the parsed pattern, the zone and the policies.
#[derive(Clone, Debug)]
pub struct CompiledSchedule {
    cron: Cron,
    zone: Tz,
    overlap: Overlap,
    missed: Missed,
}

impl CompiledSchedule {
    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    pub fn missed(&self) -> Missed {
        self.missed
    }

    /// The IANA name of the schedule's zone.
    pub fn timezone(&self) -> &'static str {
        self.zone.name()
    }

    /// The first fire strictly after `after_ms`, or `None` past croner's year-5000 limit.
    pub fn next_after(&self, after_ms: u64) -> Option<Fire> {
        self.next_ms_after(after_ms).map(|at_ms| self.fire(at_ms))
    }

    /// [`Self::next_after`] without rendering the fire.
    fn next_ms_after(&self, after_ms: u64) -> Option<u64> {
        // Fires fall on whole seconds, so the first one after `after_ms` is the first one after
        // its whole second; croner's exclusive search steps off that second.
        let start = self.zoned(after_ms - after_ms % 1_000)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        let at_ms = u64::try_from(next.timestamp_millis()).ok()?;
        debug_assert!(at_ms > after_ms, "croner went backwards from {after_ms}");
        Some(at_ms)
    }

    /// The last fire at or before `at_ms`, or `None` if there is none after the epoch.
    ///
    /// The planner walks due fires backwards from `now_ms` with this, so that it meets the
    /// newest first and can stop after [`MAX_LISTED_FIRES`]; it must agree exactly with
    /// `next_ms_after`, DST folds included (a property test checks that).
    fn latest_ms_at_or_before(&self, at_ms: u64) -> Option<u64> {
        let start = self.zoned(at_ms - at_ms % 1_000)?;
        let previous = self.cron.find_previous_occurrence(&start, true).ok()?;
        let fire_ms = u64::try_from(previous.timestamp_millis()).ok()?;
        debug_assert!(fire_ms <= at_ms, "croner went forwards from {at_ms}");
        Some(fire_ms)
    }

    fn zoned(&self, at_ms: u64) -> Option<DateTime<Tz>> {
        let utc = DateTime::from_timestamp_millis(i64::try_from(at_ms).ok()?)?;
        Some(utc.with_timezone(&self.zone))
    }

    /// Renders a fire found by `next_ms_after` or `latest_ms_at_or_before`.
    fn fire(&self, at_ms: u64) -> Fire {
        assert_eq!(at_ms % 1_000, 0, "fire at {at_ms} is not on a whole second");
        let local = self
            .zoned(at_ms)
            .expect("a fire croner found is a valid instant");
        Fire {
            at_ms,
            local: local.to_rfc3339_opts(SecondsFormat::Secs, false),
            utc: local
                .with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }
}
