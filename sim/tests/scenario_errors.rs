//! A bad scenario file is refused by `Scenario::load` with an error that names the file and
//! the field at fault, so that a typo in one of scenarios/*.yaml reads as a message, not as a
//! run that silently tests something else.
//!
//! Each test writes a small scenario (and the process it names) into a fresh temporary
//! directory, breaks one field, and checks the message.

use std::path::{Path, PathBuf};

use proctor_sim::Scenario;

/// A two-step process over agents `a` and `b`; `second` is its second step.
const PROCESS: &str = "\
name: tiny
steps:
  - { id: first, type: agent_task, agent: a, timeout: 1s }
  - { id: second, type: agent_task, agent: b, depends_on: [first], timeout: 1s }
";

/// A valid scenario; tests replace or add one field.
const GOOD: &str = "\
name: tiny
process: tiny-process.yaml
agents:
  a: { delay_ms: 5 }
  b: { delay_ms: 5 }
workload: { executions: 2, spacing_ms: 10 }
faults:
  - { at_ms: 10, crash: engine, restart_after_ms: 50 }
  - { at_ms: 20, partition: [engine, a], for_ms: 100 }
expect: { status: { completed: 2 } }
seeds: 2
";

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("tiny-process.yaml"), PROCESS).expect("write process");
        Dir { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write scenario");
        path
    }
}

/// Loads `text` as `bad.yaml` and returns the error message, which must name the file.
fn error_of(text: &str) -> String {
    let dir = Dir::new();
    let path = dir.write("bad.yaml", text);
    let message = match Scenario::load(&path) {
        Ok(_) => panic!("this scenario should be refused:\n{text}"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(&path.display().to_string()),
        "the error does not name the file {}: {message}",
        path.display()
    );
    message
}

/// `GOOD` with the line starting with `prefix` replaced by `line`.
fn with_line(prefix: &str, line: &str) -> String {
    let mut replaced = false;
    let text: Vec<&str> = GOOD
        .lines()
        .map(|l| {
            if l.starts_with(prefix) && !replaced {
                replaced = true;
                line
            } else {
                l
            }
        })
        .collect();
    assert!(replaced, "GOOD has no line starting with {prefix:?}");
    text.join("\n") + "\n"
}

/// `GOOD` with its fault list replaced by `faults` (YAML flow mappings, one per fault).
fn with_faults(faults: &[&str]) -> String {
    let list: String = faults.iter().map(|f| format!("  - {f}\n")).collect();
    let start = GOOD.find("faults:\n").expect("faults") + "faults:\n".len();
    let end = GOOD.find("expect:").expect("expect");
    format!("{}{list}{}", &GOOD[..start], &GOOD[end..])
}

fn assert_mentions(message: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(message.contains(w), "expected {w:?} in: {message}");
    }
}

#[test]
fn the_good_file_loads() {
    let dir = Dir::new();
    let path = dir.write("good.yaml", GOOD);
    let scenario = Scenario::load(Path::new(&path)).expect("GOOD is valid");
    assert_eq!(scenario.name, "tiny");
    assert_eq!(scenario.faults.len(), 2);
    assert_eq!(scenario.seeds, 2);
}

#[test]
fn a_missing_file_is_named() {
    let dir = Dir::new();
    let path = dir.dir.path().join("absent.yaml");
    let message = Scenario::load(&path).expect_err("no such file").to_string();
    assert_mentions(&message, &[&path.display().to_string(), "cannot read"]);
}

#[test]
fn an_unknown_field_is_named_by_serde() {
    let message = error_of(&format!("{GOOD}retries: 3\n"));
    assert_mentions(&message, &["unknown field `retries`"]);
}

#[test]
fn an_unknown_field_inside_a_fault_is_named() {
    let message = error_of(&with_faults(&[
        "{ at_ms: 10, crash: engine, restart_after: 50 }",
    ]));
    assert_mentions(&message, &["unknown field `restart_after`"]);
}

#[test]
fn a_partition_to_an_unknown_host_names_the_fault_and_field() {
    let message = error_of(&with_faults(&[
        "{ at_ms: 10, crash: engine, restart_after_ms: 50 }",
        "{ at_ms: 20, partition: [engine, nobody], for_ms: 100 }",
    ]));
    assert_mentions(&message, &["faults[1].partition", "nobody"]);
}

#[test]
fn a_partition_of_a_host_with_itself_is_refused() {
    let message = error_of(&with_faults(&[
        "{ at_ms: 20, partition: [a, a], for_ms: 100 }",
    ]));
    assert_mentions(&message, &["faults[0].partition"]);
}

#[test]
fn a_fault_with_two_actions_is_refused() {
    let message = error_of(&with_faults(&[
        "{ at_ms: 10, crash: engine, partition: [engine, a] }",
    ]));
    assert_mentions(&message, &["faults[0].action"]);
}

#[test]
fn a_fault_with_no_trigger_is_refused() {
    let message = error_of(&with_faults(&["{ crash: engine }"]));
    assert_mentions(&message, &["faults[0].at_ms"]);
}

#[test]
fn a_point_fault_that_does_not_crash_the_engine_is_refused() {
    let message = error_of(&with_faults(&[
        "{ point: after_commit, crash: a, restart_after_ms: 50 }",
    ]));
    assert_mentions(&message, &["faults[0].point", "crash: engine"]);
}

#[test]
fn an_unknown_point_is_named() {
    let message = error_of(&with_faults(&["{ point: mid_commit, crash: engine }"]));
    assert_mentions(&message, &["mid_commit"]);
}

#[test]
fn a_step_filter_on_a_commit_point_is_refused() {
    let message = error_of(&with_faults(&[
        "{ point: before_commit, step: first, crash: engine }",
    ]));
    assert_mentions(&message, &["faults[0].step"]);
}

#[test]
fn a_step_the_process_lacks_is_named() {
    let message = error_of(&with_faults(&[
        "{ point: step_running, step: third, crash: engine }",
    ]));
    assert_mentions(&message, &["faults[0].step", "third"]);
}

#[test]
fn nth_zero_is_refused() {
    let message = error_of(&with_faults(&[
        "{ point: step_running, nth: 0, crash: engine }",
    ]));
    assert_mentions(&message, &["faults[0].nth"]);
}

#[test]
fn latency_without_latency_ms_is_refused() {
    let message = error_of(&with_faults(&["{ at_ms: 5, latency: [engine, b] }"]));
    assert_mentions(&message, &["faults[0].latency_ms"]);
}

#[test]
fn a_storage_fault_at_a_point_is_refused() {
    let message = error_of(&with_faults(&[
        "{ point: after_commit, crash: engine }",
        "{ point: after_commit, storage: io_error }",
    ]));
    assert_mentions(&message, &["faults[1].storage", "needs `at_ms`"]);
}

#[test]
fn a_storage_fault_spoiling_no_commits_is_refused() {
    let message = error_of(&with_faults(&[
        "{ at_ms: 5, storage: ambiguous, commits: 0 }",
    ]));
    assert_mentions(&message, &["faults[0].commits"]);
}

#[test]
fn an_unknown_storage_fault_is_named() {
    let message = error_of(&with_faults(&["{ at_ms: 5, storage: disk_full }"]));
    assert_mentions(&message, &["disk_full"]);
}

#[test]
fn for_ms_on_a_crash_is_refused() {
    let message = error_of(&with_faults(&["{ at_ms: 5, crash: engine, for_ms: 100 }"]));
    assert_mentions(&message, &["faults[0].for_ms"]);
}

#[test]
fn restart_after_ms_without_a_crash_is_refused() {
    let message = error_of(&with_faults(&[
        "{ at_ms: 5, partition: [engine, b], restart_after_ms: 100 }",
    ]));
    assert_mentions(&message, &["faults[0].restart_after_ms"]);
}

#[test]
fn a_chaos_rate_out_of_range_is_named() {
    let message = error_of(&format!(
        "{GOOD}chaos: {{ window_ms: 1000, crash_rate: -1 }}\n"
    ));
    assert_mentions(&message, &["chaos.crash_rate"]);
}

#[test]
fn a_storage_chaos_rate_above_one_is_named() {
    let message = error_of(&format!(
        "{GOOD}chaos: {{ window_ms: 1000, ambiguous_commit_rate: 1.5 }}\n"
    ));
    assert_mentions(&message, &["chaos.ambiguous_commit_rate"]);
}

#[test]
fn a_chaos_window_of_zero_is_refused() {
    let message = error_of(&format!("{GOOD}chaos: {{ window_ms: 0, crash_rate: 1 }}\n"));
    assert_mentions(&message, &["chaos.window_ms"]);
}

#[test]
fn an_unknown_chaos_field_is_named() {
    let message = error_of(&format!(
        "{GOOD}chaos: {{ window_ms: 1000, crash_rte: 1 }}\n"
    ));
    assert_mentions(&message, &["unknown field `crash_rte`"]);
}

#[test]
fn an_agent_fail_rate_out_of_range_is_named() {
    let message = error_of(&with_line("  a:", "  a: { delay_ms: 5, fail_rate: 1.5 }"));
    assert_mentions(&message, &["agents.a.fail_rate"]);
}

#[test]
fn an_agent_latency_range_upside_down_is_named() {
    let message = error_of(&with_line("  b:", "  b: { latency_ms: [50, 10] }"));
    assert_mentions(&message, &["agents.b.latency_ms"]);
}

#[test]
fn an_agent_with_both_delays_is_refused() {
    let message = error_of(&with_line(
        "  b:",
        "  b: { delay_ms: 5, latency_ms: [1, 10] }",
    ));
    assert_mentions(&message, &["agents.b", "delay_ms", "latency_ms"]);
}

#[test]
fn an_unknown_agent_behaviour_is_named() {
    let message = error_of(&with_line("  a:", "  a: { delay: 5 }"));
    assert_mentions(&message, &["unknown field `delay`"]);
}

#[test]
fn zero_executions_are_refused() {
    let message = error_of(&with_line(
        "workload:",
        "workload: { executions: 0, spacing_ms: 10 }",
    ));
    assert_mentions(&message, &["workload.executions"]);
}

#[test]
fn too_many_executions_are_refused() {
    let message = error_of(&with_line(
        "workload:",
        "workload: { executions: 1000000, spacing_ms: 10 }",
    ));
    assert_mentions(&message, &["workload.executions"]);
}

#[test]
fn webhook_deliveries_without_signals_are_refused() {
    let message = error_of(&with_line(
        "workload:",
        "workload: { executions: 2, spacing_ms: 10, webhook: true }",
    ));
    assert_mentions(&message, &["workload.webhook", "no"]);
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    let message = error_of(&with_line("seeds:", "seeds: many"));
    assert_mentions(&message, &["seeds", "invalid type"]);
}

#[test]
fn an_unknown_expectation_is_named() {
    let message = error_of(&with_line(
        "expect:",
        "expect: { status: { completed: 2 }, within_ms: 10 }",
    ));
    assert_mentions(&message, &["unknown field `within_ms`"]);
}

#[test]
fn a_process_without_a_scenario_agent_names_the_process_file() {
    let dir = Dir::new();
    let path = dir.write("bad.yaml", &with_line("  b:", "  c: { delay_ms: 5 }"));
    // As above, the process loader reports it, naming the process file and the step.
    let message = Scenario::load(&path)
        .expect_err("agent b is missing")
        .to_string();
    assert_mentions(&message, &["tiny-process.yaml", "second"]);
}

#[test]
fn a_missing_process_file_is_named() {
    // Names the scenario file, its `process` field and the process file.
    let dir = Dir::new();
    let path = dir.write("bad.yaml", &with_line("process:", "process: nowhere.yaml"));
    let message = Scenario::load(&path)
        .expect_err("no process file")
        .to_string();
    assert_mentions(
        &message,
        &[
            &path.display().to_string(),
            "process:",
            "nowhere.yaml",
            "cannot read",
        ],
    );
}

#[test]
fn nth_on_a_timed_fault_is_refused() {
    let message = error_of(&with_faults(&["{ at_ms: 5, nth: 2, crash: engine }"]));
    assert_mentions(&message, &["faults[0].nth", "only with `point`"]);
}

#[test]
fn an_expectation_for_an_unknown_step_is_named() {
    let message = error_of(&with_line(
        "expect:",
        "expect: { steps: { third: { completed: 2 } } }",
    ));
    assert_mentions(&message, &["expect.steps", "no step 'third'"]);
    let message = error_of(&with_line(
        "expect:",
        "expect: { steps: { first: { undone: 2 } } }",
    ));
    assert_mentions(&message, &["expect", "undone"]);
}

#[test]
fn a_crash_point_on_a_compensation_needs_a_compensating_action() {
    let message = error_of(&with_line(
        "  - { at_ms: 10,",
        "  - { point: step_running, step: 'first#compensate', crash: engine, restart_after_ms: 50 }",
    ));
    assert_mentions(&message, &["faults[0].step", "no step 'first#compensate'"]);
}

#[test]
fn schedule_and_clock_problems_are_named() {
    let message = error_of(&with_line(
        "workload:",
        "workload: { executions: 0, schedules: [{ name: s, schedule: { cron: '* * * * *', timezone: Mars/Base } }] }",
    ));
    assert_mentions(
        &message,
        &["workload.schedules[0].schedule.timezone", "Mars/Base"],
    );
    let message = error_of(&with_line("workload:", "workload: { executions: 0 }"));
    assert_mentions(&message, &["workload.executions: must be between 1"]);
    let message = error_of(&with_line(
        "seeds:",
        "seeds: 2\nclock: { start: '1999-01-01T00:00:00Z' }",
    ));
    assert_mentions(&message, &["clock.start", "1999"]);
    let message = error_of(&with_line(
        "  - { at_ms: 10,",
        "  - { point: after_commit, clock_jump_ms: 1000 }",
    ));
    assert_mentions(
        &message,
        &["faults[0].clock_jump_ms: a clock jump needs `at_ms`"],
    );
    for jump in ["0", "-86400001"] {
        let message = error_of(&with_line(
            "  - { at_ms: 10,",
            &format!("  - {{ at_ms: 10, clock_jump_ms: {jump} }}"),
        ));
        assert_mentions(
            &message,
            &["faults[0].clock_jump_ms: must be between -86400000"],
        );
    }
    let message = error_of(&with_line(
        "  - { at_ms: 10,",
        "  - { at_ms: 10, disk: read_error, for_ms: 5 }",
    ));
    assert_mentions(&message, &["faults[0].for_ms: only with `disk: full`"]);
    let message = error_of(&with_line(
        "  - { at_ms: 10,",
        "  - { at_ms: 10, loss: [engine, client], loss_rate: 1.5 }",
    ));
    assert_mentions(
        &message,
        &["faults[0].loss_rate: must be above 0 and at most 1"],
    );
    let message = error_of(&with_line(
        "  - { at_ms: 10,",
        "  - { at_ms: 10, duplicate: engine, duplicate_rate: 0.5 }",
    ));
    assert_mentions(&message, &["faults[0].duplicate: 'engine' is not an agent"]);
    let message = error_of(&with_line(
        "  - { at_ms: 10,",
        "  - { at_ms: 10, point: after_commit, crash: engine }",
    ));
    assert_mentions(
        &message,
        &["faults[0].at_ms: give exactly one of `at_ms` or `point`"],
    );
    let message = error_of(&with_line(
        "expect:",
        "expect: { finish_within_ms: 100 }\nclock: { start: '2026-01-01T00:00:00Z' }",
    ));
    assert_mentions(&message, &["expect: finish_within_ms and resume_within_ms"]);
}
