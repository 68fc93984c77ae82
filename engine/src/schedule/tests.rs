//! Tests of the schedule planner: spec errors, the DST behaviour pinned to concrete UTC
//! instants, missed and overlap policies, bounded enumeration, and properties of the search.

use chrono::DateTime;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

use super::*;

/// Milliseconds of an RFC 3339 instant.
fn at(rfc3339: &str) -> u64 {
    let parsed = DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("bad instant {rfc3339}: {e}"));
    u64::try_from(parsed.timestamp_millis()).unwrap()
}

fn spec(cron: &str, timezone: &str) -> ScheduleSpec {
    ScheduleSpec {
        cron: cron.to_string(),
        timezone: timezone.to_string(),
        overlap: Overlap::default(),
        missed: Missed::default(),
    }
}

fn compiled(cron: &str, timezone: &str) -> CompiledSchedule {
    spec(cron, timezone)
        .check()
        .unwrap_or_else(|e| panic!("{cron} in {timezone}: {e}"))
}

fn with_policies(cron: &str, overlap: Overlap, missed: Missed) -> CompiledSchedule {
    ScheduleSpec {
        overlap,
        missed,
        ..spec(cron, "UTC")
    }
    .check()
    .unwrap()
}

fn check_error(spec: ScheduleSpec) -> String {
    spec.check().unwrap_err().to_string()
}

/// Every fire in `(from, to]` as `local = utc`, checking that each string says `at_ms`.
fn fires(schedule: &CompiledSchedule, from: &str, to: &str) -> Vec<String> {
    let to_ms = at(to);
    let mut out = Vec::new();
    let mut after_ms = at(from);
    while let Some(fire) = schedule.next_after(after_ms) {
        if fire.at_ms > to_ms {
            break;
        }
        assert_eq!(at(&fire.local), fire.at_ms, "{fire:?}");
        assert_eq!(at(&fire.utc), fire.at_ms, "{fire:?}");
        out.push(format!("{} = {}", fire.local, fire.utc));
        after_ms = fire.at_ms;
    }
    out
}

fn utcs(fires: &[Fire]) -> Vec<&str> {
    fires.iter().map(|f| f.utc.as_str()).collect()
}

fn skips(plan: &Plan) -> Vec<(&str, SkipCause)> {
    plan.skipped
        .iter()
        .map(|(f, cause)| (f.utc.as_str(), *cause))
        .collect()
}

// --- The spec -------------------------------------------------------------------------------

#[test]
fn parses_the_schedule_file_form() {
    let yaml = r#"
cron: "0 30 2 * * *"
timezone: Europe/Berlin
overlap: buffer_one
missed: { policy: catch_up, window: "6h" }
"#;
    let spec: ScheduleSpec = serde_norway::from_str(yaml).unwrap();
    assert_eq!(
        spec,
        ScheduleSpec {
            cron: "0 30 2 * * *".to_string(),
            timezone: "Europe/Berlin".to_string(),
            overlap: Overlap::BufferOne,
            missed: Missed::CatchUp {
                window: DurationMs(6 * 3_600_000)
            },
        }
    );
    let text = serde_norway::to_string(&spec).unwrap();
    assert_eq!(serde_norway::from_str::<ScheduleSpec>(&text).unwrap(), spec);
    let schedule = spec.check().unwrap();
    assert_eq!(schedule.timezone(), "Europe/Berlin");
    assert_eq!(schedule.overlap(), Overlap::BufferOne);

    let run_once: ScheduleSpec =
        serde_norway::from_str("cron: '@hourly'\nmissed: { policy: run_once }").unwrap();
    assert_eq!(run_once.missed, Missed::RunOnce);
    assert_eq!(run_once.timezone, "UTC");
    assert_eq!(run_once.overlap, Overlap::Skip);

    let defaults: ScheduleSpec = serde_norway::from_str("cron: '*/5 * * * *'").unwrap();
    assert_eq!(defaults.missed, Missed::Skip);

    // A window may also be bare milliseconds.
    let millis: ScheduleSpec =
        serde_norway::from_str("cron: '* * * * *'\nmissed: { policy: catch_up, window: 90000 }")
            .unwrap();
    assert_eq!(
        millis.missed,
        Missed::CatchUp {
            window: DurationMs(90_000)
        }
    );
}

#[test]
fn unknown_fields_are_refused() {
    for (yaml, needle) in [
        ("cron: '* * * * *'\nzone: UTC", "zone"),
        (
            "cron: '* * * * *'\nmissed: { policy: skip, window: 6h }",
            "only policy catch_up takes a window",
        ),
        (
            "cron: '* * * * *'\nmissed: { policy: catch_up, window: 6h, limit: 3 }",
            "limit",
        ),
        ("cron: '* * * * *'\noverlap: queue", "queue"),
        (
            "cron: '* * * * *'\nmissed: { policy: catch_up }",
            "needs a window",
        ),
        ("cron: '* * * * *'\nmissed: { policy: later }", "later"),
    ] {
        let err = serde_norway::from_str::<ScheduleSpec>(yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{yaml:?} gave {err}");
    }
}

#[test]
fn state_and_plan_round_trip_through_json() {
    let schedule = with_policies("0 * * * *", Overlap::BufferOne, Missed::Skip);
    let mut state = ScheduleState::new_at(at("2026-05-01T00:30:00Z"));
    state.run_started();
    let plan = schedule.due(&mut state, at("2026-05-01T01:00:00Z"));
    assert!(state.buffered.is_some());
    let text = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<ScheduleState>(&text).unwrap(), state);
    let text = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&text).unwrap(), plan);
}

#[test]
fn errors_name_the_field() {
    let err = check_error(spec("61 * * * *", "UTC"));
    assert_eq!(
        err,
        "cron: \"61 * * * *\" is not a cron expression (5 fields, or 6 with seconds first): \
         Component error: Number out of bounds"
    );
    // croner's optional year field is refused, as are too few fields.
    for cron in ["0 0 0 1 1 * 2030", "* * * *", ""] {
        let err = check_error(spec(cron, "UTC"));
        assert!(err.starts_with("cron: "), "{err}");
    }
    assert_eq!(
        check_error(spec("0 0 31 2 *", "UTC")),
        "cron: \"0 0 31 2 *\" never fires: no date matches it (croner searched to the year 5000)"
    );
    assert_eq!(
        check_error(spec(&"1,".repeat(600), "UTC")),
        "cron: expression is 1200 bytes, over the limit of 1024"
    );

    assert_eq!(
        check_error(spec("* * * * *", "Europe/Bonn")),
        "timezone: \"Europe/Bonn\" is not an IANA time zone name such as \"Europe/Berlin\" or \
         \"UTC\""
    );
    // IANA names are case-sensitive, and an offset is not a zone.
    for timezone in ["europe/berlin", "+02:00", ""] {
        assert!(check_error(spec("* * * * *", timezone)).starts_with("timezone: "));
    }

    let catch_up = |window_ms| ScheduleSpec {
        missed: Missed::CatchUp {
            window: DurationMs(window_ms),
        },
        ..spec("* * * * *", "UTC")
    };
    assert_eq!(
        check_error(catch_up(0)),
        "missed.window: a catch_up window must be longer than zero"
    );
    assert_eq!(
        check_error(catch_up(MAX_CATCH_UP_WINDOW_MS + 1)),
        "missed.window: 7days 1ms is over the limit of 7days: a longer outage cannot be caught up"
    );
    assert!(catch_up(MAX_CATCH_UP_WINDOW_MS).check().is_ok());
}

#[test]
fn five_fields_fire_at_second_zero_and_six_fields_start_with_seconds() {
    let five = compiled("30 2 * * *", "UTC");
    assert_eq!(
        five.next_after(at("2026-05-01T00:00:00Z")).unwrap().utc,
        "2026-05-01T02:30:00Z"
    );
    let six = compiled("15 30 2 * * *", "UTC");
    assert_eq!(
        six.next_after(at("2026-05-01T00:00:00Z")).unwrap().utc,
        "2026-05-01T02:30:15Z"
    );
    // Strictly after, including within the fire's own second.
    let after = at("2026-05-01T02:30:15Z");
    assert_eq!(six.next_after(after).unwrap().utc, "2026-05-02T02:30:15Z");
    assert_eq!(
        six.next_after(after - 1).unwrap().utc,
        "2026-05-01T02:30:15Z"
    );
    assert_eq!(
        six.next_after(after + 999).unwrap().utc,
        "2026-05-02T02:30:15Z"
    );
    // In UTC the local form carries +00:00, the UTC form Z.
    assert_eq!(
        five.next_after(0).unwrap(),
        Fire {
            at_ms: 9_000_000,
            local: "1970-01-01T02:30:00+00:00".to_string(),
            utc: "1970-01-01T02:30:00Z".to_string(),
        }
    );
}

// --- Daylight saving time -------------------------------------------------------------------

#[test]
fn berlin_daily_at_0230_across_both_2026_transitions() {
    let schedule = compiled("0 30 2 * * *", "Europe/Berlin");
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST. 02:30 does not exist: one fire at 03:00.
    assert_eq!(
        fires(
            &schedule,
            "2026-03-27T00:00:00+01:00",
            "2026-04-01T00:00:00+02:00"
        ),
        [
            "2026-03-27T02:30:00+01:00 = 2026-03-27T01:30:00Z",
            "2026-03-28T02:30:00+01:00 = 2026-03-28T01:30:00Z",
            "2026-03-29T03:00:00+02:00 = 2026-03-29T01:00:00Z",
            "2026-03-30T02:30:00+02:00 = 2026-03-30T00:30:00Z",
            "2026-03-31T02:30:00+02:00 = 2026-03-31T00:30:00Z",
        ]
    );
    // 2026-10-25: 03:00 CEST goes back to 02:00 CET. 02:30 happens twice: one fire, the
    // first (00:30Z); 01:30Z (02:30+01:00) does not fire.
    assert_eq!(
        fires(
            &schedule,
            "2026-10-23T00:00:00+02:00",
            "2026-10-28T00:00:00+01:00"
        ),
        [
            "2026-10-23T02:30:00+02:00 = 2026-10-23T00:30:00Z",
            "2026-10-24T02:30:00+02:00 = 2026-10-24T00:30:00Z",
            "2026-10-25T02:30:00+02:00 = 2026-10-25T00:30:00Z",
            "2026-10-26T02:30:00+01:00 = 2026-10-26T01:30:00Z",
            "2026-10-27T02:30:00+01:00 = 2026-10-27T01:30:00Z",
        ]
    );
    // Searching from inside the repeated hour, after the one fire, finds the next day's.
    assert_eq!(
        schedule.next_after(at("2026-10-25T01:00:00Z")).unwrap().utc,
        "2026-10-26T01:30:00Z"
    );
}

#[test]
fn new_york_daily_across_both_2026_transitions() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
    let at_0230 = compiled("0 30 2 * * *", "America/New_York");
    assert_eq!(
        fires(
            &at_0230,
            "2026-03-07T00:00:00-05:00",
            "2026-03-10T00:00:00-04:00"
        ),
        [
            "2026-03-07T02:30:00-05:00 = 2026-03-07T07:30:00Z",
            "2026-03-08T03:00:00-04:00 = 2026-03-08T07:00:00Z",
            "2026-03-09T02:30:00-04:00 = 2026-03-09T06:30:00Z",
        ]
    );
    // 2026-11-01: 02:00 EDT goes back to 01:00 EST, so 01:00-01:59 repeats; 02:30 does not.
    assert_eq!(
        fires(
            &at_0230,
            "2026-10-31T00:00:00-04:00",
            "2026-11-03T00:00:00-05:00"
        ),
        [
            "2026-10-31T02:30:00-04:00 = 2026-10-31T06:30:00Z",
            "2026-11-01T02:30:00-05:00 = 2026-11-01T07:30:00Z",
            "2026-11-02T02:30:00-05:00 = 2026-11-02T07:30:00Z",
        ]
    );
    // 01:30 happens twice: one fire, the first (05:30Z, not 06:30Z).
    let at_0130 = compiled("0 30 1 * * *", "America/New_York");
    assert_eq!(
        fires(
            &at_0130,
            "2026-10-31T00:00:00-04:00",
            "2026-11-03T00:00:00-05:00"
        ),
        [
            "2026-10-31T01:30:00-04:00 = 2026-10-31T05:30:00Z",
            "2026-11-01T01:30:00-04:00 = 2026-11-01T05:30:00Z",
            "2026-11-02T01:30:00-05:00 = 2026-11-02T06:30:00Z",
        ]
    );
}

#[test]
fn every_30_minutes_fires_at_each_real_instant_of_a_repeated_hour() {
    let berlin = compiled("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&berlin, "2026-10-24T23:15:00Z", "2026-10-25T02:45:00Z"),
        [
            "2026-10-25T01:30:00+02:00 = 2026-10-24T23:30:00Z",
            "2026-10-25T02:00:00+02:00 = 2026-10-25T00:00:00Z",
            "2026-10-25T02:30:00+02:00 = 2026-10-25T00:30:00Z",
            "2026-10-25T02:00:00+01:00 = 2026-10-25T01:00:00Z",
            "2026-10-25T02:30:00+01:00 = 2026-10-25T01:30:00Z",
            "2026-10-25T03:00:00+01:00 = 2026-10-25T02:00:00Z",
            "2026-10-25T03:30:00+01:00 = 2026-10-25T02:30:00Z",
        ]
    );
    let new_york = compiled("*/30 * * * *", "America/New_York");
    assert_eq!(
        fires(&new_york, "2026-11-01T04:45:00Z", "2026-11-01T07:45:00Z"),
        [
            "2026-11-01T01:00:00-04:00 = 2026-11-01T05:00:00Z",
            "2026-11-01T01:30:00-04:00 = 2026-11-01T05:30:00Z",
            "2026-11-01T01:00:00-05:00 = 2026-11-01T06:00:00Z",
            "2026-11-01T01:30:00-05:00 = 2026-11-01T06:30:00Z",
            "2026-11-01T02:00:00-05:00 = 2026-11-01T07:00:00Z",
            "2026-11-01T02:30:00-05:00 = 2026-11-01T07:30:00Z",
        ]
    );
}

#[test]
fn interval_schedules_skip_the_times_inside_a_gap() {
    // Every 30 minutes: 02:00 and 02:30 do not exist, nothing fires for them.
    let berlin = compiled("*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&berlin, "2026-03-29T00:15:00Z", "2026-03-29T01:45:00Z"),
        [
            "2026-03-29T01:30:00+01:00 = 2026-03-29T00:30:00Z",
            "2026-03-29T03:00:00+02:00 = 2026-03-29T01:00:00Z",
            "2026-03-29T03:30:00+02:00 = 2026-03-29T01:30:00Z",
        ]
    );
    let new_york = compiled("*/30 * * * *", "America/New_York");
    assert_eq!(
        fires(&new_york, "2026-03-08T05:45:00Z", "2026-03-08T07:45:00Z"),
        [
            "2026-03-08T01:00:00-05:00 = 2026-03-08T06:00:00Z",
            "2026-03-08T01:30:00-05:00 = 2026-03-08T06:30:00Z",
            "2026-03-08T03:00:00-04:00 = 2026-03-08T07:00:00Z",
            "2026-03-08T03:30:00-04:00 = 2026-03-08T07:30:00Z",
        ]
    );
    // Hourly: no 02:00 on the spring day, two on the autumn day.
    let hourly = compiled("0 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&hourly, "2026-03-28T23:30:00Z", "2026-03-29T02:00:00Z"),
        [
            "2026-03-29T01:00:00+01:00 = 2026-03-29T00:00:00Z",
            "2026-03-29T03:00:00+02:00 = 2026-03-29T01:00:00Z",
            "2026-03-29T04:00:00+02:00 = 2026-03-29T02:00:00Z",
        ]
    );
    assert_eq!(
        fires(&hourly, "2026-10-24T23:30:00Z", "2026-10-25T02:00:00Z"),
        [
            "2026-10-25T02:00:00+02:00 = 2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00+01:00 = 2026-10-25T01:00:00Z",
            "2026-10-25T03:00:00+01:00 = 2026-10-25T02:00:00Z",
        ]
    );
    // croner counts a list as an interval: a daily "02:15 and 02:45" does not run at all on
    // the day 02:xx is skipped (Vixie cron would run both at 03:00).
    let list = compiled("15,45 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&list, "2026-03-28T00:00:00Z", "2026-03-30T12:00:00Z"),
        [
            "2026-03-28T02:15:00+01:00 = 2026-03-28T01:15:00Z",
            "2026-03-28T02:45:00+01:00 = 2026-03-28T01:45:00Z",
            "2026-03-30T02:15:00+02:00 = 2026-03-30T00:15:00Z",
            "2026-03-30T02:45:00+02:00 = 2026-03-30T00:45:00Z",
        ]
    );
}

#[test]
fn due_sees_each_dst_fire_once() {
    // The planner walks backwards; across the repeated hour it must list the same fires the
    // forward search gives, each once.
    let schedule = ScheduleSpec {
        overlap: Overlap::AllowAll,
        missed: Missed::CatchUp {
            window: DurationMs(MAX_CATCH_UP_WINDOW_MS),
        },
        ..spec("*/30 * * * *", "Europe/Berlin")
    }
    .check()
    .unwrap();
    let mut state = ScheduleState::new_at(at("2026-10-24T23:15:00Z"));
    let plan = schedule.due(&mut state, at("2026-10-25T02:45:00Z"));
    assert_eq!(
        utcs(&plan.start),
        [
            "2026-10-24T23:30:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T02:30:00Z",
        ]
    );
    assert_eq!(state.last_fire_ms, Some(at("2026-10-25T02:30:00Z")));
    assert_eq!(plan.next_wake_ms, Some(at("2026-10-25T03:00:00Z")));
}

// --- Missed fires ---------------------------------------------------------------------------

const HOURLY: &str = "0 * * * *";

/// An hourly schedule whose last fire was at midnight, planned after ten hours of downtime.
fn after_downtime(missed: Missed, overlap: Overlap, now: &str) -> (Plan, ScheduleState) {
    let schedule = with_policies(HOURLY, overlap, missed);
    let mut state = ScheduleState::new_at(at("2026-05-01T00:00:00Z"));
    let plan = schedule.due(&mut state, at(now));
    assert_eq!(state.last_fire_ms, Some(at("2026-05-01T10:00:00Z")));
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T11:00:00Z")));
    assert_eq!(plan.skipped_bulk, None);
    (plan, state)
}

fn missed_hours(hours: std::ops::RangeInclusive<u32>) -> Vec<(String, SkipCause)> {
    hours
        .map(|h| (format!("2026-05-01T{h:02}:00:00Z"), SkipCause::Missed))
        .collect()
}

fn owned(skips: Vec<(&str, SkipCause)>) -> Vec<(String, SkipCause)> {
    skips.into_iter().map(|(s, c)| (s.to_string(), c)).collect()
}

#[test]
fn skip_starts_only_a_fire_within_the_grace() {
    // 30 s after the 10:00 fire: it is on time, the nine before it were missed.
    let (plan, state) = after_downtime(Missed::Skip, Overlap::Skip, "2026-05-01T10:00:30Z");
    assert_eq!(utcs(&plan.start), ["2026-05-01T10:00:00Z"]);
    assert_eq!(owned(skips(&plan)), missed_hours(1..=9));
    assert_eq!(state.running, 1);

    // Five minutes after it, past MISSED_GRACE_MS: all ten were missed.
    let (plan, state) = after_downtime(Missed::Skip, Overlap::Skip, "2026-05-01T10:05:00Z");
    assert!(plan.start.is_empty());
    assert_eq!(owned(skips(&plan)), missed_hours(1..=10));
    assert_eq!(state.running, 0);

    // The edge of the grace is on time.
    let (plan, _) = after_downtime(Missed::Skip, Overlap::Skip, "2026-05-01T10:01:00Z");
    assert_eq!(utcs(&plan.start), ["2026-05-01T10:00:00Z"]);
    let (plan, _) = after_downtime(Missed::Skip, Overlap::Skip, "2026-05-01T10:01:00.001Z");
    assert!(plan.start.is_empty());
}

#[test]
fn run_once_starts_the_newest_fire_however_late() {
    let (plan, state) = after_downtime(Missed::RunOnce, Overlap::Skip, "2026-05-01T10:05:00Z");
    assert_eq!(utcs(&plan.start), ["2026-05-01T10:00:00Z"]);
    assert_eq!(owned(skips(&plan)), missed_hours(1..=9));
    assert_eq!(state.running, 1);
}

#[test]
fn catch_up_starts_the_fires_in_its_window_in_order() {
    let three_hours = Missed::CatchUp {
        window: DurationMs(3 * 3_600_000),
    };
    // The window reaches back to 07:00:30, so 08:00, 09:00 and 10:00 start.
    let (plan, state) = after_downtime(three_hours, Overlap::AllowAll, "2026-05-01T10:00:30Z");
    assert_eq!(
        utcs(&plan.start),
        [
            "2026-05-01T08:00:00Z",
            "2026-05-01T09:00:00Z",
            "2026-05-01T10:00:00Z"
        ]
    );
    assert_eq!(owned(skips(&plan)), missed_hours(1..=7));
    assert_eq!(state.running, 3);

    // The overlap policy still applies to the catch-up runs: with `skip` only the oldest
    // starts, the others overlap it.
    let (plan, state) = after_downtime(three_hours, Overlap::Skip, "2026-05-01T10:00:30Z");
    assert_eq!(utcs(&plan.start), ["2026-05-01T08:00:00Z"]);
    let mut expected = missed_hours(1..=7);
    expected.push(("2026-05-01T09:00:00Z".to_string(), SkipCause::Overlap));
    expected.push(("2026-05-01T10:00:00Z".to_string(), SkipCause::Overlap));
    assert_eq!(owned(skips(&plan)), expected);
    assert_eq!(state.running, 1);

    // A window shorter than the grace still starts an on-time fire.
    let one_second = Missed::CatchUp {
        window: DurationMs(1_000),
    };
    let (plan, _) = after_downtime(one_second, Overlap::Skip, "2026-05-01T10:00:30Z");
    assert_eq!(utcs(&plan.start), ["2026-05-01T10:00:00Z"]);
}

#[test]
fn catch_up_starts_at_most_max_catch_up_runs() {
    let schedule = with_policies(
        "* * * * *",
        Overlap::AllowAll,
        Missed::CatchUp {
            window: DurationMs(6 * 3_600_000),
        },
    );
    // 180 minutes due, all inside the window: the newest 100 start, the 80 before are missed.
    let mut state = ScheduleState::new_at(at("2026-05-01T00:00:00Z"));
    let plan = schedule.due(&mut state, at("2026-05-01T03:00:00Z"));
    assert_eq!(plan.start.len(), MAX_CATCH_UP_RUNS);
    assert_eq!(plan.start[0].utc, "2026-05-01T01:21:00Z");
    assert_eq!(plan.start[99].utc, "2026-05-01T03:00:00Z");
    assert_eq!(plan.skipped.len(), 80);
    assert_eq!(plan.skipped[0].0.utc, "2026-05-01T00:01:00Z");
    assert_eq!(plan.skipped[79].0.utc, "2026-05-01T01:20:00Z");
    assert!(plan.skipped.iter().all(|(_, c)| *c == SkipCause::Missed));
    assert_eq!(state.running, 100);
}

#[test]
fn a_new_schedule_has_nothing_due() {
    let schedule = compiled(HOURLY, "UTC");
    let mut state = ScheduleState::default();
    let plan = schedule.due(&mut state, at("2026-05-01T10:30:00Z"));
    assert_eq!(
        plan,
        Plan {
            next_wake_ms: Some(at("2026-05-01T11:00:00Z")),
            ..Plan::default()
        }
    );
    assert_eq!(state, ScheduleState::new_at(at("2026-05-01T10:30:00Z")));

    // Nothing due yet, or a clock that went backwards: nothing changes.
    let before = state.clone();
    let plan = schedule.due(&mut state, at("2026-05-01T10:59:59.999Z"));
    assert!(plan.start.is_empty() && plan.skipped.is_empty());
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T11:00:00Z")));
    let plan = schedule.due(&mut state, at("2026-05-01T09:00:00Z"));
    assert!(plan.start.is_empty() && plan.skipped.is_empty());
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T11:00:00Z")));
    assert_eq!(state, before);

    // On the fire exactly: it is due, and the next wake is the one after.
    let plan = schedule.due(&mut state, at("2026-05-01T11:00:00Z"));
    assert_eq!(utcs(&plan.start), ["2026-05-01T11:00:00Z"]);
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T12:00:00Z")));
    // Called again at the same instant: the fire is not due twice.
    let plan = schedule.due(&mut state, at("2026-05-01T11:00:00Z"));
    assert!(plan.start.is_empty() && plan.skipped.is_empty());
}

// --- Overlap --------------------------------------------------------------------------------

/// Plans an hourly schedule at each of the given hours of 2026-05-01, returning each plan.
fn hourly_plans(overlap: Overlap, state: &mut ScheduleState, hours: &[u32]) -> Vec<Plan> {
    let schedule = with_policies(HOURLY, overlap, Missed::Skip);
    hours
        .iter()
        .map(|h| schedule.due(state, at(&format!("2026-05-01T{h:02}:00:05Z"))))
        .collect()
}

#[test]
fn overlap_skip_skips_fires_while_a_run_is_in_progress() {
    let schedule = with_policies(HOURLY, Overlap::Skip, Missed::Skip);
    let mut state = ScheduleState::new_at(at("2026-05-01T00:30:00Z"));
    let plans = hourly_plans(Overlap::Skip, &mut state, &[1, 2, 3]);
    assert_eq!(utcs(&plans[0].start), ["2026-05-01T01:00:00Z"]);
    assert_eq!(
        skips(&plans[1]),
        [("2026-05-01T02:00:00Z", SkipCause::Overlap)]
    );
    assert_eq!(
        skips(&plans[2]),
        [("2026-05-01T03:00:00Z", SkipCause::Overlap)]
    );
    assert_eq!(state.running, 1);

    let plan = schedule.run_finished(&mut state, at("2026-05-01T03:10:00Z"));
    assert!(plan.start.is_empty());
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T04:00:00Z")));
    assert_eq!(state.running, 0);
    let plans = hourly_plans(Overlap::Skip, &mut state, &[4]);
    assert_eq!(utcs(&plans[0].start), ["2026-05-01T04:00:00Z"]);
}

#[test]
fn overlap_buffer_one_keeps_the_first_fire_and_starts_it_on_finish() {
    let schedule = with_policies(HOURLY, Overlap::BufferOne, Missed::Skip);
    let mut state = ScheduleState::new_at(at("2026-05-01T00:30:00Z"));
    let plans = hourly_plans(Overlap::BufferOne, &mut state, &[1, 2, 3]);
    // 01:00 starts; 02:00 comes while it runs and is buffered; 03:00 finds the buffer full.
    assert_eq!(utcs(&plans[0].start), ["2026-05-01T01:00:00Z"]);
    assert!(plans[1].start.is_empty() && plans[1].skipped.is_empty());
    assert_eq!(
        plans[1].buffered.as_ref().unwrap().utc,
        "2026-05-01T02:00:00Z"
    );
    assert_eq!(
        skips(&plans[2]),
        [("2026-05-01T03:00:00Z", SkipCause::Overlap)]
    );
    assert_eq!(plans[2].buffered, None);
    assert_eq!(state.running, 1);
    assert_eq!(
        state.buffered.as_ref().unwrap().at_ms,
        at("2026-05-01T02:00:00Z")
    );

    // The first run finishes at 03:20: the buffered 02:00 fire starts now, as itself.
    let plan = schedule.run_finished(&mut state, at("2026-05-01T03:20:00Z"));
    assert_eq!(
        plan.start,
        [Fire {
            at_ms: at("2026-05-01T02:00:00Z"),
            local: "2026-05-01T02:00:00+00:00".to_string(),
            utc: "2026-05-01T02:00:00Z".to_string(),
        }]
    );
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T04:00:00Z")));
    assert_eq!(state.running, 1);
    assert_eq!(state.buffered, None);

    // It finishes too: nothing left to start.
    let plan = schedule.run_finished(&mut state, at("2026-05-01T03:40:00Z"));
    assert!(plan.start.is_empty());
    assert_eq!(state.running, 0);
    // A duplicate finish report changes nothing.
    let plan = schedule.run_finished(&mut state, at("2026-05-01T03:41:00Z"));
    assert!(plan.start.is_empty());
    assert_eq!(state.running, 0);
}

#[test]
fn overlap_buffer_one_with_two_runs_waits_for_both() {
    // A manual run plus a scheduled one: the buffered fire waits until neither runs.
    let schedule = with_policies(HOURLY, Overlap::BufferOne, Missed::Skip);
    let mut state = ScheduleState::new_at(at("2026-05-01T00:30:00Z"));
    state.run_started();
    state.run_started();
    let plans = hourly_plans(Overlap::BufferOne, &mut state, &[1]);
    assert!(plans[0].buffered.is_some());
    assert!(schedule
        .run_finished(&mut state, at("2026-05-01T01:10:00Z"))
        .start
        .is_empty());
    let plan = schedule.run_finished(&mut state, at("2026-05-01T01:20:00Z"));
    assert_eq!(utcs(&plan.start), ["2026-05-01T01:00:00Z"]);
    assert_eq!(state.running, 1);
}

#[test]
fn a_buffered_fire_with_no_run_counted_starts_at_the_next_plan() {
    // The engine reset `running` (say, it found the runs dead after a crash): the buffered
    // fire starts first, before the fires now due.
    let schedule = with_policies(HOURLY, Overlap::BufferOne, Missed::Skip);
    let mut state = ScheduleState::new_at(at("2026-05-01T00:30:00Z"));
    hourly_plans(Overlap::BufferOne, &mut state, &[1, 2]);
    state.running = 0;
    let plan = schedule.due(&mut state, at("2026-05-01T03:00:05Z"));
    // 03:00 then comes while 02:00 runs, into the now empty buffer.
    assert_eq!(utcs(&plan.start), ["2026-05-01T02:00:00Z"]);
    assert!(plan.skipped.is_empty());
    assert_eq!(plan.buffered.unwrap().utc, "2026-05-01T03:00:00Z");
    assert_eq!(state.running, 1);
}

#[test]
fn overlap_allow_all_starts_every_fire() {
    let mut state = ScheduleState::new_at(at("2026-05-01T00:30:00Z"));
    let plans = hourly_plans(Overlap::AllowAll, &mut state, &[1, 2, 3]);
    for (plan, hour) in plans.iter().zip(1..) {
        assert_eq!(utcs(&plan.start), [format!("2026-05-01T{hour:02}:00:00Z")]);
        assert!(plan.skipped.is_empty() && plan.buffered.is_none());
    }
    assert_eq!(state.running, 3);
}

// --- Bounded work ---------------------------------------------------------------------------

#[test]
fn a_year_of_missed_minutes_is_summarized_not_listed() {
    let schedule = compiled("* * * * *", "Europe/Berlin");
    let mut state = ScheduleState::new_at(at("2025-05-01T00:00:00Z"));
    let plan = schedule.due(&mut state, at("2026-05-01T00:00:10Z"));
    // 525,600 minutes are due. The newest is on time and starts; the 199 before it are listed;
    // the rest are one bulk skip whose count stops at MAX_COUNTED_BULK_FIRES.
    assert_eq!(utcs(&plan.start), ["2026-05-01T00:00:00Z"]);
    assert_eq!(plan.skipped.len(), MAX_LISTED_FIRES - 1);
    assert_eq!(plan.skipped[0].0.utc, "2026-04-30T20:41:00Z");
    assert_eq!(plan.skipped[198].0.utc, "2026-04-30T23:59:00Z");
    assert_eq!(
        plan.skipped_bulk,
        Some(SkippedBulk {
            first_at_ms: at("2025-05-01T00:01:00Z"),
            last_at_ms: at("2026-04-30T20:40:00Z"),
            count: MAX_COUNTED_BULK_FIRES,
            count_capped: true,
        })
    );
    assert_eq!(state.last_fire_ms, Some(at("2026-05-01T00:00:00Z")));
    assert_eq!(plan.next_wake_ms, Some(at("2026-05-01T00:01:00Z")));
}

#[test]
fn a_bulk_skip_below_the_cap_is_counted_exactly() {
    let schedule = compiled("* * * * *", "UTC");
    let mut state = ScheduleState::new_at(at("2026-05-01T00:00:00Z"));
    let plan = schedule.due(&mut state, at("2026-05-01T10:00:00Z"));
    // 600 minutes due: 200 listed, 400 in bulk.
    assert_eq!(plan.start.len() + plan.skipped.len(), MAX_LISTED_FIRES);
    assert_eq!(
        plan.skipped_bulk,
        Some(SkippedBulk {
            first_at_ms: at("2026-05-01T00:01:00Z"),
            last_at_ms: at("2026-05-01T06:40:00Z"),
            count: 400,
            count_capped: false,
        })
    );
}

// --- Properties -----------------------------------------------------------------------------

/// Zones with ordinary, half-hour (Lord Howe), 45-minute (Chatham), negative (Dublin), midnight
/// (Santiago) and no transitions, each with its 2026 transitions (to the hour or so: the tests
/// search from up to six hours around them).
const ZONES: &[(&str, &[&str])] = &[
    ("UTC", &[]),
    ("Asia/Kolkata", &[]),
    (
        "Europe/Berlin",
        &["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"],
    ),
    (
        "Europe/Dublin",
        &["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"],
    ),
    (
        "America/New_York",
        &["2026-03-08T07:00:00Z", "2026-11-01T06:00:00Z"],
    ),
    (
        "America/St_Johns",
        &["2026-03-08T05:30:00Z", "2026-11-01T04:30:00Z"],
    ),
    (
        "America/Santiago",
        &["2026-04-05T03:00:00Z", "2026-09-06T04:00:00Z"],
    ),
    (
        "Australia/Lord_Howe",
        &["2026-04-04T15:00:00Z", "2026-10-03T15:30:00Z"],
    ),
    (
        "Pacific/Chatham",
        &["2026-04-04T14:00:00Z", "2026-09-26T14:00:00Z"],
    ),
];

/// Cron expressions mixing fixed-time and interval fields. Day fields are mostly `*`, so that
/// short spans hold fires; the others exercise `L`, `W` and `#`.
fn cron_strategy() -> impl Strategy<Value = String> {
    fn mostly_any(rare: Vec<&'static str>) -> impl Strategy<Value = &'static str> {
        prop_oneof![3 => Just("*"), 1 => prop::sample::select(rare)]
    }
    let seconds = proptest::option::of(prop::sample::select(vec!["0", "30", "*/20", "5,50"]));
    let minutes = prop::sample::select(vec!["0", "30", "*/30", "15,45", "*/7", "59", "*"]);
    let hours = prop::sample::select(vec!["2", "1", "0", "*/3", "*", "1-3", "23"]);
    let days = mostly_any(vec!["1", "L", "15W", "29", "25-31"]);
    let months = mostly_any(vec!["3", "10,11", "*/2", "4,9"]);
    let weekdays = mostly_any(vec!["0", "1-5", "0#L", "SUN#1"]);
    (seconds, minutes, hours, days, months, weekdays).prop_map(|(s, mi, h, d, mo, w)| {
        let five = format!("{mi} {h} {d} {mo} {w}");
        match s {
            Some(s) => format!("{s} {five}"),
            None => five,
        }
    })
}

/// A zone and an instant: anywhere in 2020-2035, or within six hours of one of the zone's
/// transitions, where the interesting cases are.
fn zone_and_instant() -> impl Strategy<Value = (&'static str, u64)> {
    let year_2020_ms = at("2020-01-01T00:00:00Z");
    let year_2036_ms = at("2036-01-01T00:00:00Z");
    prop::sample::select(ZONES).prop_flat_map(move |(zone, transitions)| {
        let anywhere = (year_2020_ms..year_2036_ms).boxed();
        let instant = if transitions.is_empty() {
            anywhere
        } else {
            let near = (
                prop::sample::select(transitions),
                -6 * 3_600_000i64..6 * 3_600_000,
            )
                .prop_map(|(t, offset)| at(t).checked_add_signed(offset).unwrap());
            prop_oneof![1 => anywhere, 3 => near].boxed()
        };
        (Just(zone), instant)
    })
}

fn proptest_config() -> ProptestConfig {
    // A fixed seed: the same cases on every run, like the simulator's pinned seeds.
    ProptestConfig {
        cases: 512,
        rng_seed: RngSeed::Fixed(0x5C4E_D01E),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    /// `next_after` is strictly after its argument, fires strictly increase, and the backward
    /// search the planner uses finds exactly the fires the forward search does.
    #[test]
    fn next_after_is_strictly_after_and_agrees_with_the_backward_search(
        cron in cron_strategy(),
        (timezone, start_ms) in zone_and_instant(),
    ) {
        let schedule = match spec(&cron, timezone).check() {
            Ok(schedule) => schedule,
            Err(Error::NeverFires { .. }) => return Ok(()),
            Err(e) => panic!("{e}"),
        };
        let mut after_ms = start_ms;
        for step in 0..12 {
            let Some(fire) = schedule.next_after(after_ms) else { break };
            prop_assert!(fire.at_ms > after_ms, "{cron} in {timezone}: {fire:?} after {after_ms}");
            prop_assert_eq!(at(&fire.local), fire.at_ms);
            prop_assert_eq!(at(&fire.utc), fire.at_ms);
            prop_assert_eq!(schedule.latest_ms_at_or_before(fire.at_ms), Some(fire.at_ms));
            let before = schedule.latest_ms_at_or_before(fire.at_ms - 1);
            if step == 0 {
                prop_assert!(
                    before.is_none_or(|b| b <= after_ms),
                    "{cron} in {timezone}: {before:?}"
                );
            } else {
                prop_assert_eq!(before, Some(after_ms), "{} in {}", cron, timezone);
            }
            after_ms = fire.at_ms;
        }
    }

    /// `due` lists exactly the fires in `(last, now]` that the forward search finds, the newest
    /// MAX_LISTED_FIRES one by one and the rest as a bulk skip counted up to its cap.
    #[test]
    fn due_lists_the_fires_the_forward_search_finds(
        cron in cron_strategy(),
        (timezone, last_ms) in zone_and_instant(),
        span_ms in 0u64..3 * 24 * 3_600_000,
    ) {
        let spec = ScheduleSpec {
            overlap: Overlap::AllowAll,
            missed: Missed::CatchUp { window: DurationMs(MAX_CATCH_UP_WINDOW_MS) },
            ..spec(&cron, timezone)
        };
        let schedule = match spec.check() {
            Ok(schedule) => schedule,
            Err(Error::NeverFires { .. }) => return Ok(()),
            Err(e) => panic!("{e}"),
        };
        let now_ms = last_ms + span_ms;
        let mut forward = Vec::new();
        let mut after_ms = last_ms;
        while let Some(at_ms) = schedule.next_ms_after(after_ms).filter(|&t| t <= now_ms) {
            forward.push(at_ms);
            after_ms = at_ms;
        }

        let mut state = ScheduleState::new_at(last_ms);
        let plan = schedule.due(&mut state, now_ms);
        let mut listed: Vec<u64> = plan.skipped.iter().map(|(f, _)| f.at_ms).collect();
        listed.extend(plan.start.iter().map(|f| f.at_ms));
        let listed_from = forward.len().saturating_sub(MAX_LISTED_FIRES);
        prop_assert_eq!(&listed[..], &forward[listed_from..], "{} in {}", cron, timezone);
        let starts: Vec<u64> = plan.start.iter().map(|f| f.at_ms).collect();
        let starts_from = forward.len().saturating_sub(MAX_CATCH_UP_RUNS);
        prop_assert_eq!(&starts[..], &forward[starts_from..]);
        prop_assert_eq!(state.running as usize, starts.len());
        let expected_bulk = (listed_from > 0).then(|| SkippedBulk {
            first_at_ms: forward[0],
            last_at_ms: forward[listed_from - 1],
            count: (listed_from as u64).min(MAX_COUNTED_BULK_FIRES),
            count_capped: listed_from as u64 > MAX_COUNTED_BULK_FIRES,
        });
        prop_assert_eq!(plan.skipped_bulk, expected_bulk);
        prop_assert_eq!(state.last_fire_ms, Some(forward.last().copied().unwrap_or(last_ms)));
        if let Some(wake_ms) = plan.next_wake_ms {
            prop_assert!(wake_ms > now_ms);
        }
    }
}
