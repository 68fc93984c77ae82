//! Every `scenarios/*.yaml` as its own test case (libtest-mimic): each runs the file's seeds
//! through the simulator and fails on the first violated invariant, printing the repro command.
//! The first seed runs twice and must give the same trace hash (invariant 8, determinism).
//!
//! Each run happens in a fresh child process (this binary, re-executed with
//! `PROCTOR_SIM_RUN=file:seed`). tokio numbers tasks from one process-wide counter, and those
//! ids order how a crashed host's sockets are dropped (so the order turmoil draws latencies
//! in). `proctor_sim::run` realigns the counter before each run, which makes sequential runs in
//! one process replay exactly; but libtest runs trials on parallel threads that would share the
//! counter, so each run gets a process of its own.
//!
//! `SEED=N cargo test --test scenarios` runs only seed N of every scenario.
//!
//! The `timeline::*` trials (tests/timeline.rs) draw a run's timeline page and load it in
//! headless Chromium.
//!
//! The `harness::*` trials test the checkers themselves, with the scenario files in
//! tests/harness/ (never ordinary trials: those come from scenarios/*.yaml only). Each plants a
//! deliberate engine bug (`proctor::planted`, compiled in only because this crate's
//! dev-dependency enables the engine's test-only `planted-bugs` feature) and asserts that the
//! invariant meant to catch it fails, with a repro command: the parent asks the child for a bug
//! with `PROCTOR_PLANT=<name>` (`proctor::planted::Bug::name`), which the child plants before
//! its run. `harness::unplanted_runs_pass_and_agree` is the control: the same files and seeds
//! pass, and agree with themselves, with nothing planted.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

mod timeline;
use proctor::planted::{self, Bug};
use proctor_sim::{Scenario, Summary};

const CHILD_ENV: &str = "PROCTOR_SIM_RUN";
/// In the child: the planted bug to run with (a [`Bug::name`]); absent for a normal run.
const PLANT_ENV: &str = "PROCTOR_PLANT";
/// In the child: `off` runs the scenario with SQLite's `synchronous=OFF` (the disk negative
/// control); absent for the scenario's own setting.
const SYNC_ENV: &str = "PROCTOR_SIM_SYNCHRONOUS";
/// In the child: shrink instead of run (`out_dir`), printing a JSON report.
const SHRINK_ENV: &str = "PROCTOR_SIM_SHRINK";

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn seeds(scenario: &Scenario) -> Result<Vec<u64>, Failed> {
    match std::env::var("SEED") {
        Ok(seed) => Ok(vec![seed
            .parse()
            .map_err(|_| format!("SEED={seed} is not a number"))?]),
        Err(_) => Ok((0..scenario.seeds).collect()),
    }
}

/// In the child: one run, reported on stdout as one JSON [`Summary`].
fn child(spec: &str) -> ! {
    let (file, seed) = spec.rsplit_once(':').expect("file:seed");
    if let Ok(name) = std::env::var(PLANT_ENV) {
        let Some(bug) = Bug::from_name(&name) else {
            eprintln!("{PLANT_ENV}={name}: no such planted bug");
            std::process::exit(2)
        };
        planted::plant(Some(bug));
    }
    let mut scenario = Scenario::load(Path::new(file)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let seed: u64 = seed.parse().expect("seed");
    if std::env::var(SYNC_ENV).as_deref() == Ok("off") {
        scenario.disk.synchronous = proctor_sim::scenario::SyncMode::Off;
    }
    if let Ok(out_dir) = std::env::var(SHRINK_ENV) {
        let shrunk = proctor_sim::shrink::shrink(&scenario, seed).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        let written = proctor_sim::shrink::write(&shrunk, Path::new(file), Path::new(&out_dir), "")
            .expect("the shrunk scenario is written");
        let report = shrunk.report(&written);
        println!("{report}");
        std::process::exit(0)
    }
    let outcome = proctor_sim::run(&scenario, seed);
    let summary = Summary::of(&outcome);
    if let Ok(page) = std::env::var(timeline::TIMELINE_ENV) {
        let html = proctor_sim::timeline::Timeline::of(&outcome, &summary.repro).html();
        std::fs::write(&page, html).unwrap_or_else(|e| panic!("writing {page}: {e}"));
    }
    println!(
        "{}",
        serde_json::to_string(&summary).expect("a summary serialises")
    );
    std::process::exit(0)
}

/// One run of `path` with `seed` in a fresh child process, with `plant` planted (and nothing
/// planted otherwise, whatever this process's environment says).
fn run_in_child(path: &Path, seed: u64, plant: Option<Bug>) -> Result<Summary, Failed> {
    let line = in_child(path, seed, plant, &[])?;
    serde_json::from_str(&line)
        .map_err(|e| format!("seed {seed}: unreadable summary ({e}): {line}").into())
}

/// The last line a child printed for `path` and `seed`, with `plant` planted and `env` set.
fn in_child(
    path: &Path,
    seed: u64,
    plant: Option<Bug>,
    env: &[(&str, &str)],
) -> Result<String, Failed> {
    let mut command = Command::new(std::env::current_exe()?);
    command.env(CHILD_ENV, format!("{}:{seed}", path.display()));
    match plant {
        Some(bug) => command.env(PLANT_ENV, bug.name()),
        None => command.env_remove(PLANT_ENV),
    };
    command
        .env_remove(SYNC_ENV)
        .env_remove(SHRINK_ENV)
        .env_remove(timeline::TIMELINE_ENV);
    command.envs(env.iter().copied());
    let out = command.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "seed {seed}: simulation process failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}

/// A scenario file from tests/harness/.
fn harness_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("harness")
        .join(name)
}

/// The first seed's summary must match `snapshots/<scenario>.snap`: a behaviour change shows
/// as a reviewable diff (`cargo insta review`, or `INSTA_UPDATE=always` to accept).
fn check_snapshot(name: &str, summary: &Summary) -> Result<(), Failed> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let matched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name, summary));
    }));
    matched.map_err(|_| format!("snapshot snapshots/{name}.snap does not match (see above)").into())
}

/// Invariant 8, `deterministic`: two runs of one seed, each in its own process, gave the same
/// trace hash. The scenario trials and `harness::planted_nondeterminism_*` both judge with it.
fn check_deterministic(first: &Summary, again: &Summary) -> Result<(), String> {
    if again.trace_hash == first.trace_hash {
        return Ok(());
    }
    Err(format!(
        "invariant `deterministic` violated: seed {} gave trace hashes {} and {}\nreplay: {}",
        first.seed, first.trace_hash, again.trace_hash, first.repro
    ))
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let scenario = Scenario::load(path).map_err(|e| e.to_string())?;
    for (i, seed) in seeds(&scenario)?.into_iter().enumerate() {
        let summary = run_in_child(path, seed, None)?;
        if !summary.violations.is_empty() {
            return Err(format!(
                "seed {seed}:\n  {}\nreplay: {}",
                summary.violations.join("\n  "),
                summary.repro
            )
            .into());
        }
        if i == 0 {
            let again = run_in_child(path, seed, None)?;
            check_deterministic(&summary, &again)?;
            if seed == 0 {
                check_snapshot(&scenario.name, &summary)?;
            }
        }
    }
    Ok(())
}

/// Tests of the harness and its checkers: planted engine bugs must be caught.
mod harness {
    use super::*;

    pub fn trials() -> Vec<Trial> {
        vec![
            Trial::test(
                "harness::planted_no_redispatch_fails_no_lost_execution",
                || {
                    expect_caught(
                        "recovery-mid-step.yaml",
                        Bug::NoRedispatchOnRecovery,
                        "no_lost_execution",
                        "stuck running",
                    )
                },
            ),
            Trial::test(
                "harness::planted_complete_twice_fails_effect_at_most_once",
                || {
                    expect_caught(
                        "recovery-mid-step.yaml",
                        Bug::CompleteTwice,
                        "effect_at_most_once",
                        "StepCompleted recorded 2 times",
                    )
                },
            ),
            Trial::test(
                "harness::planted_fresh_key_fails_effect_at_most_once",
                || {
                    expect_caught(
                        "recovery-mid-step.yaml",
                        Bug::FreshKeyOnRecovery,
                        "effect_at_most_once",
                        "applied the step's effect under 2 keys",
                    )
                },
            ),
            Trial::test(
                "harness::planted_compensation_order_fails_compensation_in_reverse_order",
                || {
                    expect_caught(
                        "saga-order.yaml",
                        Bug::CompensateInCompletionOrder,
                        "compensation_in_reverse_order",
                        "compensation order [\"flight\", \"hotel\", \"car\"]",
                    )
                },
            ),
            Trial::test(
                "harness::planted_retry_with_fresh_key_fails_mail_delivered",
                || {
                    expect_caught(
                        "email-retried.yaml",
                        Bug::RetryWithFreshKey,
                        "mail_delivered",
                        "the mail server never took its message",
                    )
                },
            ),
            Trial::test(
                "harness::planted_key_not_stored_fails_idempotent_starts",
                || {
                    expect_caught(
                        "idempotent-start.yaml",
                        Bug::KeyNotStored,
                        "idempotent_starts",
                        "no start was answered with it",
                    )
                },
            ),
            Trial::test(
                "harness::planted_stream_resumes_late_fails_stream_complete",
                || {
                    expect_caught(
                        "stream-resume.yaml",
                        Bug::StreamResumesLate,
                        "stream_complete",
                        "they differ from position",
                    )
                },
            ),
            Trial::test(
                "harness::planted_retry_with_fresh_key_fails_effect_at_most_once",
                || {
                    expect_caught(
                        "retry-after-lost-reply.yaml",
                        Bug::RetryWithFreshKey,
                        "effect_at_most_once",
                        "applied the step's effect under 2 keys",
                    )
                },
            ),
            Trial::test(
                "harness::planted_join_ignores_pending_fails_dependencies_respected",
                || {
                    expect_caught(
                        "join-waits-for-all.yaml",
                        Bug::JoinIgnoresPending,
                        "dependencies_respected",
                        "before dependency",
                    )
                },
            ),
            Trial::test(
                "harness::planted_timer_recomputed_on_restart_fails_timers_not_late",
                || {
                    expect_caught(
                        "timer-restart.yaml",
                        Bug::TimerRecomputedOnRestart,
                        "timers_not_late",
                        "after it was due",
                    )
                },
            ),
            Trial::test(
                "harness::planted_recovery_fails_fresh_executions_fails_age_limit_respected",
                || {
                    expect_caught(
                        "recovery-young.yaml",
                        Bug::RecoveryFailsFreshExecutions,
                        "age_limit_respected",
                        "failed by recovery as older than the age limit",
                    )
                },
            ),
            Trial::test(
                "harness::planted_compensation_retried_past_policy_fails_retries_within_policy",
                || {
                    expect_caught(
                        "compensation-budget.yaml",
                        Bug::CompensationRetriedPastPolicy,
                        "retries_within_policy",
                        "compensation attempt 21 started",
                    )
                },
            ),
            Trial::test(
                "harness::planted_signal_delivered_twice_fails_effect_at_most_once",
                || {
                    expect_caught(
                        "signal-resent.yaml",
                        Bug::SignalDeliveredTwice,
                        "effect_at_most_once",
                        "received twice",
                    )
                },
            ),
            Trial::test(
                "harness::planted_fsync_skipped_fails_no_lost_execution",
                || {
                    expect_caught(
                        DISK_POWER_CUTS,
                        Bug::FsyncSkipped,
                        "no_lost_execution",
                        "acknowledged but not in storage",
                    )
                },
            ),
            Trial::test(
                "harness::planted_pause_lost_on_restart_fails_pause_respected",
                || {
                    expect_caught(
                        PAUSE_UNDER_CRASHES,
                        Bug::PauseLostOnRestart,
                        "pause_respected",
                        "while paused since event",
                    )
                },
            ),
            Trial::test(
                "harness::synchronous_off_loses_acknowledged_state",
                synchronous_off_loses_acknowledged_state,
            ),
            Trial::test(
                "harness::shrunk_planted_failure_is_smaller_and_still_fails",
                shrunk_planted_failure,
            ),
            Trial::test(
                "harness::planted_nondeterminism_fails_deterministic",
                planted_nondeterminism,
            ),
            Trial::test("harness::unplanted_runs_pass_and_agree", unplanted),
        ]
    }

    const FILES: &[&str] = &[
        "compensation-budget.yaml",
        "email-retried.yaml",
        "idempotent-start.yaml",
        "join-waits-for-all.yaml",
        "recovery-mid-step.yaml",
        "recovery-young.yaml",
        "retry-after-lost-reply.yaml",
        "saga-order.yaml",
        "signal-resent.yaml",
        "stream-resume.yaml",
        "ten-diamonds.yaml",
        "timer-restart.yaml",
    ];

    /// Scenarios of the suite itself (paths relative to tests/harness/) that harness trials
    /// also use: the disk's power cuts, and pauses across restarts.
    const DISK_POWER_CUTS: &str = "../../scenarios/disk-power-cuts.yaml";
    const PAUSE_UNDER_CRASHES: &str = "../../scenarios/pause-resume-under-crashes.yaml";

    /// The negative control of the disk model: `disk-power-cuts.yaml`, seed for seed, passes
    /// with its production setting (`synchronous=FULL`) and loses acknowledged executions with
    /// `synchronous=OFF`, so the fault model really drops what an unsynced database would.
    fn synchronous_off_loses_acknowledged_state() -> Result<(), Failed> {
        let (path, scenario) = load(DISK_POWER_CUTS)?;
        let wanted = "invariant `no_lost_execution` violated";
        for seed in 0..scenario.seeds {
            let full = run_in_child(&path, seed, None)?;
            if !full.passed {
                return Err(format!(
                    "seed {seed} with synchronous=full:\n  {}",
                    full.violations.join("\n  ")
                )
                .into());
            }
            let line = in_child(&path, seed, None, &[(SYNC_ENV, "off")])?;
            let off: Summary = serde_json::from_str(&line)?;
            let lost = off
                .violations
                .iter()
                .any(|v| v.starts_with(wanted) && v.contains("acknowledged but not in storage"));
            if off.passed || !lost {
                return Err(format!(
                    "seed {seed} with synchronous=off: expected {wanted} (acknowledged but not \
                     in storage), got:\n  {}",
                    off.violations.join("\n  ")
                )
                .into());
            }
        }
        Ok(())
    }

    /// Shrinking planted bugs' failing runs: a chaos run's shrunk schedule has fewer faults
    /// than its chaos plan written out, and a scripted run's shrunk process fewer steps; each
    /// shrunk scenario, run from its file in a fresh process, still fails the same invariant
    /// with the bug planted, and passes without it.
    fn shrunk_planted_failure() -> Result<(), Failed> {
        // (scenario, a seed whose run the bug fails, what must get smaller)
        let cases = [
            ("chaos-swarm-diamond", 6, "faults"),
            ("agent-progress-under-crashes", 0, "steps"),
        ];
        for (name, seed, smaller) in cases {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.yaml"));
            shrink_and_replay(&path, Bug::FreshKeyOnRecovery, seed, smaller)
                .map_err(|e| format!("{name}: {}", e.message().unwrap_or("failed")))?;
        }
        Ok(())
    }

    fn shrink_and_replay(path: &Path, bug: Bug, seed: u64, smaller: &str) -> Result<(), Failed> {
        let out = tempfile::tempdir()?;
        let out_dir = out.path().display().to_string();
        let line = in_child(path, seed, Some(bug), &[(SHRINK_ENV, out_dir.as_str())])?;
        let report: serde_json::Value = serde_json::from_str(&line)?;
        let count = |key: &str| report[key].as_u64().unwrap_or(0);
        if count(&format!("{smaller}_after")) >= count(&format!("{smaller}_before")) {
            return Err(format!("no fewer {smaller}: {report}").into());
        }
        let invariant = report["invariant"].as_str().unwrap_or_default();
        let file = PathBuf::from(report["file"].as_str().unwrap_or_default());
        let shrunk = Scenario::load(&file).map_err(|e| e.to_string())?;
        if shrunk.faults.len() as u64 != count("faults_after")
            || shrunk.process.steps.len() as u64 != count("steps_after")
            || shrunk.chaos.as_ref().is_some_and(|c| c.swarm)
        {
            return Err(format!("the written file is not the shrunk scenario: {report}").into());
        }
        let planted = run_in_child(&file, seed, Some(bug))?;
        let wanted = format!("invariant `{invariant}` violated");
        if !planted.violations.iter().any(|v| v.starts_with(&wanted)) {
            return Err(format!(
                "the shrunk scenario no longer fails `{invariant}`:\n  {}",
                planted.violations.join("\n  ")
            )
            .into());
        }
        let clean = run_in_child(&file, seed, None)?;
        if !clean.passed {
            return Err(format!(
                "the shrunk scenario fails without the bug:\n  {}",
                clean.violations.join("\n  ")
            )
            .into());
        }
        Ok(())
    }

    fn file(name: &str) -> PathBuf {
        harness_file(name)
    }

    /// A file from tests/harness/. Its trials run the file's seeds, `0..seeds`, whatever `SEED`
    /// says: they test the checkers, not the engine.
    fn load(name: &str) -> Result<(PathBuf, Scenario), Failed> {
        let path = file(name);
        let scenario = Scenario::load(&path).map_err(|e| e.to_string())?;
        Ok((path, scenario))
    }

    fn expect_repro(scenario: &Scenario, seed: u64, repro: &str) -> Result<(), Failed> {
        let want = format!("cargo xtask repro {} --seed {seed}", scenario.name);
        if repro.contains(&want) {
            Ok(())
        } else {
            Err(format!("seed {seed}: expected the repro command `{want}`, got `{repro}`").into())
        }
    }

    /// Every seed of `name`, run with `bug` planted, violates `invariant` with `detail` in the
    /// message, and its summary names the command that replays it.
    fn expect_caught(name: &str, bug: Bug, invariant: &str, detail: &str) -> Result<(), Failed> {
        let (path, scenario) = load(name)?;
        let wanted = format!("invariant `{invariant}` violated");
        for seed in 0..scenario.seeds {
            let summary = run_in_child(&path, seed, Some(bug))?;
            let caught = summary
                .violations
                .iter()
                .any(|v| v.starts_with(&wanted) && v.contains(detail));
            if summary.passed || !caught {
                return Err(format!(
                    "{name} seed {seed} with {} planted: expected `{invariant}` ({detail}) to \
                     fail; passed: {}, violations:\n  {}\nthe run alone: {PLANT_ENV}={} \
                     {CHILD_ENV}={}:{seed} {}",
                    bug.name(),
                    summary.passed,
                    summary.violations.join("\n  "),
                    bug.name(),
                    path.display(),
                    std::env::current_exe()?.display()
                )
                .into());
            }
            expect_repro(&scenario, seed, &summary.repro)?;
        }
        Ok(())
    }

    /// With the dispatch order drawn from std's per-process random hasher, two processes
    /// running one seed disagree, and the very check the scenario trials use says so. Ten
    /// diamonds make ten two-way orders, so two processes agree by chance about once in a
    /// thousand pairs; three pairs are tried. The planted order is a legal one, so every other
    /// invariant still holds: only the determinism check can catch this bug.
    fn planted_nondeterminism() -> Result<(), Failed> {
        let (path, scenario) = load("ten-diamonds.yaml")?;
        let seed = 0;
        let mut agreed = Vec::new();
        for _ in 0..3 {
            let first = run_in_child(&path, seed, Some(Bug::UnorderedDispatch))?;
            let again = run_in_child(&path, seed, Some(Bug::UnorderedDispatch))?;
            for summary in [&first, &again] {
                if !summary.violations.is_empty() {
                    return Err(format!(
                        "the planted order should break only determinism, got:\n  {}",
                        summary.violations.join("\n  ")
                    )
                    .into());
                }
            }
            match check_deterministic(&first, &again) {
                Err(message) => {
                    if !message.starts_with("invariant `deterministic` violated") {
                        return Err(format!("unexpected determinism message: {message}").into());
                    }
                    return expect_repro(&scenario, seed, &message);
                }
                Ok(()) => agreed.push(first.trace_hash),
            }
        }
        Err(format!(
            "three pairs of processes agreed despite the planted order (hashes {agreed:?})"
        )
        .into())
    }

    /// The control: with nothing planted, every harness file passes every seed, and its first
    /// seed gives the same trace hash in two processes.
    fn unplanted() -> Result<(), Failed> {
        for name in FILES {
            let (path, scenario) = load(name)?;
            for seed in 0..scenario.seeds {
                let summary = run_in_child(&path, seed, None)?;
                if !summary.passed || !summary.violations.is_empty() {
                    return Err(format!(
                        "{name} seed {seed} failed with nothing planted:\n  {}",
                        summary.violations.join("\n  ")
                    )
                    .into());
                }
                if seed == 0 {
                    let again = run_in_child(&path, seed, None)?;
                    check_deterministic(&summary, &again)?;
                }
            }
        }
        Ok(())
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = scenario_files()
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Trial::test(name, move || run_file(&path))
        })
        .collect();
    trials.extend(harness::trials());
    trials.extend(timeline::trials());
    libtest_mimic::run(&args, trials).exit();
}
