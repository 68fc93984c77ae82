//! `cargo xtask chaos`: sweeps seeds over the simulator's scenarios and tabulates the runs.
//!
//! Every run is its own `proctor-sim run SCENARIO --seed N` process, because a simulated run is
//! a function of (scenario, seed) only in a fresh process (see ARCHITECTURE.md). The sweep
//! builds the simulator once in release mode (sweeps are long), runs `--jobs` processes at a
//! time, collects each one's JSON summary and prints one row per scenario, a totals row, then
//! every failure with the command that replays it.
//!
//! Real time and threads are fine here: xtask is tooling, not engine or simulator logic.
//!
//! `cargo xtask mutants` (`mutants.rs`) shares the building, the runs, the worker pool and the
//! table layout from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::tidy::workspace_root;

const USAGE: &str = "usage: cargo xtask chaos [--scenario NAME] [--seeds N] [--start S] [--jobs J]";

/// Failures listed in full; beyond that only a count, so that a badly broken build does not
/// bury the table under thousands of violations.
const FAILURES_IN_FULL: usize = 20;

/// Lines of a crashed run's stderr worth keeping: a panic message and its location fit.
const STDERR_TAIL_LINES: usize = 20;

pub fn chaos(args: &[String]) -> Result<()> {
    let default_jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args = parse_args(args, default_jobs)?;
    let root = workspace_root();
    let names = scenarios(&root, args.scenario.as_deref())?;
    let sim = build_sim(&root, None)?;

    let seeds: Vec<u64> = (args.start..=args.last_seed()).collect();
    eprintln!(
        "chaos: {} scenario(s) x {} seed(s) ({}..={}), {} job(s)",
        names.len(),
        seeds.len(),
        args.start,
        args.last_seed(),
        args.jobs
    );
    let began = Instant::now();
    let report = sweep(&sim, &root, &names, &seeds, args.jobs);
    let wall = began.elapsed();

    print!("{}", report.table(wall, args.jobs));
    print!("{}", report.failure_list());
    let failed = report.failures.len();
    if failed > 0 {
        bail!("chaos: {failed} of {} run(s) failed", report.total_runs());
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Args {
    scenario: Option<String>,
    seeds: u64,
    start: u64,
    jobs: usize,
}

impl Args {
    fn last_seed(&self) -> u64 {
        // `parse_args` checked that this neither underflows nor overflows.
        self.start + (self.seeds - 1)
    }
}

fn parse_args(args: &[String], default_jobs: usize) -> Result<Args> {
    let mut parsed = Args {
        scenario: None,
        seeds: 100,
        start: 0,
        jobs: default_jobs,
    };
    let known = ["--scenario", "--seeds", "--start", "--jobs"];
    for (flag, value) in flags(args, &known, USAGE)? {
        match flag {
            "--scenario" => parsed.scenario = Some(value),
            "--seeds" => parsed.seeds = number(flag, &value, USAGE)?,
            "--start" => parsed.start = number(flag, &value, USAGE)?,
            _ => parsed.jobs = number(flag, &value, USAGE)?,
        }
    }
    if parsed.seeds == 0 || parsed.jobs == 0 {
        bail!("`--seeds` and `--jobs` must be at least 1; {USAGE}");
    }
    if parsed.start.checked_add(parsed.seeds - 1).is_none() {
        bail!("`--start` + `--seeds` runs past the last u64 seed");
    }
    Ok(parsed)
}

/// The `(flag, value)` pairs of `args`, each flag one of `known` and given as `--flag value` or
/// `--flag=value`; anything else is refused, with `usage`.
pub(crate) fn flags<'k>(
    args: &[String],
    known: &[&'k str],
    usage: &str,
) -> Result<Vec<(&'k str, String)>> {
    let mut pairs = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(&known) = known.iter().find(|k| **k == flag) else {
            bail!("unknown argument `{arg}`; {usage}");
        };
        let value = inline
            .or_else(|| rest.next().cloned())
            .with_context(|| format!("`{flag}` needs a value; {usage}"))?;
        pairs.push((known, value));
    }
    Ok(pairs)
}

pub(crate) fn number<T: std::str::FromStr>(flag: &str, value: &str, usage: &str) -> Result<T> {
    value
        .parse()
        .ok()
        .with_context(|| format!("`{flag}` takes a number, not `{value}`; {usage}"))
}

/// The scenarios to sweep: every `scenarios/*.yaml` by name, or the one asked for. A name is
/// checked here so that a typo is one error, not one harness error per seed.
pub(crate) fn scenarios(root: &Path, only: Option<&str>) -> Result<Vec<String>> {
    let dir = root.join("scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    match only {
        None if names.is_empty() => bail!("no scenarios under {}", dir.display()),
        None => Ok(names),
        Some(name) if names.iter().any(|n| n == name) => Ok(vec![name.to_string()]),
        // `proctor-sim` also takes a path; the runs start in the workspace root, so make it
        // absolute from where the user typed it.
        Some(path) if path.ends_with(".yaml") && Path::new(path).is_file() => {
            let absolute = std::path::absolute(path)?;
            Ok(vec![absolute.display().to_string()])
        }
        Some(name) => bail!(
            "no scenario `{name}` (scenarios/{name}.yaml); scenarios: {}",
            names.join(", ")
        ),
    }
}

/// Builds `proctor-sim` in release mode, with `feature` if given, and returns the binary's
/// path. A binary with a feature is copied to `proctor-sim-<feature>` beside the plain one, so
/// that a later (or concurrent) plain build, which replaces `proctor-sim`, leaves it alone.
pub(crate) fn build_sim(root: &Path, feature: Option<&str>) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--release",
        "--package",
        "proctor-sim",
        "--bin",
        "proctor-sim",
    ]);
    if let Some(feature) = feature {
        command.args(["--features", feature]);
    }
    let status = command
        .current_dir(root)
        .status()
        .context("running cargo build for proctor-sim")?;
    if !status.success() {
        bail!("building proctor-sim failed ({status})");
    }
    let built = sim_binary(root);
    let Some(feature) = feature else {
        return Ok(built);
    };
    let copy = built.with_file_name(format!(
        "proctor-sim-{feature}{}",
        std::env::consts::EXE_SUFFIX
    ));
    std::fs::copy(&built, &copy)
        .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// Where `build_sim` put the binary: the workspace's target directory, or CARGO_TARGET_DIR
/// (relative to the workspace root, where cargo ran, if it is relative).
fn sim_binary(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    root.join(target)
        .join("release")
        .join(format!("proctor-sim{}", std::env::consts::EXE_SUFFIX))
}

/// The fields of `proctor_sim::Summary` that the sweeps need (serde skips the others). A mirror
/// rather than a dependency, so that xtask builds without compiling the simulator; a renamed
/// field makes every run a loud harness error, not a silent zero.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Summary {
    pub(crate) passed: bool,
    faults: BTreeMap<String, usize>,
    invariants_checked: usize,
    pub(crate) trace_hash: String,
    pub(crate) violations: Vec<String>,
}

/// Runs `work` on every item, `jobs` at a time on worker threads (each taking the next item
/// from a shared index), and hands each result to `done` on this thread as it arrives, with
/// the item's index (so progress can be printed).
pub(crate) fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync,
    mut done: impl FnMut(usize, R),
) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..jobs.min(items.len()) {
            let (tx, next, work) = (tx.clone(), &next, &work);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    break;
                };
                if tx.send((i, work(item))).is_err() {
                    break;
                }
            });
        }
        // The workers hold the only senders left, so the loop ends when the last one does.
        drop(tx);
        for (i, result) in rx {
            done(i, result);
        }
    });
}

/// Runs every (scenario, seed) on `jobs` worker threads and folds the results into a report
/// as they arrive.
fn sweep(sim: &Path, root: &Path, names: &[String], seeds: &[u64], jobs: usize) -> Report {
    let runs: Vec<(usize, u64)> = (0..names.len())
        .flat_map(|s| seeds.iter().map(move |&seed| (s, seed)))
        .collect();
    let mut report = Report::new(names);
    let work = |&(scenario, seed): &(usize, u64)| {
        let began = Instant::now();
        let result = run_one(sim, root, &names[scenario], seed, None);
        (began.elapsed(), result)
    };
    in_parallel(&runs, jobs, work, |i, (took, result)| {
        let (scenario, seed) = runs[i];
        report.add(scenario, seed, took, result);
        let stats = &report.scenarios[scenario].1;
        if stats.runs == seeds.len() {
            eprintln!(
                "chaos: {}: {} seed(s), {} failed ({} failure(s) so far)",
                names[scenario],
                stats.runs,
                stats.failures,
                report.failures.len()
            );
        }
    });
    report
}

/// One run in its own process, with `plant` planted (a binary built with the `planted-bugs`
/// feature). `Err` is a harness error: the run did not say how it went.
pub(crate) fn run_one(
    sim: &Path,
    root: &Path,
    scenario: &str,
    seed: u64,
    plant: Option<&str>,
) -> Result<Summary, String> {
    let mut command = Command::new(sim);
    command.args(["run", scenario, "--seed", &seed.to_string()]);
    if let Some(bug) = plant {
        command.args(["--plant", bug]);
    }
    let output = command
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", sim.display()))?;
    interpret(
        output.status.code(),
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

/// Reads a run's exit code and output: a summary whose verdict agrees with the exit code
/// (0 passed, 1 an invariant violated), or a harness error carrying the end of stderr.
pub(crate) fn interpret(code: Option<i32>, stdout: &str, stderr: &str) -> Result<Summary, String> {
    let exit = code.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
    let harness_error = |what: &str| format!("{what} ({exit}){}", stderr_tail(stderr));
    if code == Some(2) {
        return Err(harness_error("bad usage or scenario"));
    }
    let last_line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let Some(summary) = last_line.and_then(|l| serde_json::from_str::<Summary>(l).ok()) else {
        return Err(harness_error("no summary"));
    };
    match (code, summary.passed) {
        (Some(0), true) | (Some(1), false) => Ok(summary),
        _ => Err(harness_error(&format!(
            "exit code disagrees with the summary (passed: {})",
            summary.passed
        ))),
    }
}

fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr:\n{}", tail.join("\n"))
    }
}

/// One scenario's runs, summed.
#[derive(Debug, Default)]
struct ScenarioStats {
    runs: usize,
    /// Wall time of its runs added up: the time one worker would have spent on them.
    busy: Duration,
    faults: BTreeMap<String, usize>,
    invariants_checked: usize,
    failures: usize,
}

impl ScenarioStats {
    /// Runs per second of one worker's time.
    fn runs_per_second(&self) -> f64 {
        rate(self.runs, self.busy)
    }
}

#[derive(Debug, PartialEq)]
struct Failure {
    scenario: String,
    seed: u64,
    /// The violations, or the harness error.
    problems: Vec<String>,
}

#[derive(Debug)]
struct Report {
    /// In sweep order (sorted by name).
    scenarios: Vec<(String, ScenarioStats)>,
    failures: Vec<Failure>,
}

impl Report {
    fn new(names: &[String]) -> Report {
        Report {
            scenarios: names
                .iter()
                .map(|n| (n.clone(), ScenarioStats::default()))
                .collect(),
            failures: Vec::new(),
        }
    }

    fn add(&mut self, scenario: usize, seed: u64, took: Duration, result: Result<Summary, String>) {
        let (name, stats) = &mut self.scenarios[scenario];
        stats.runs += 1;
        stats.busy += took;
        let problems = match result {
            Ok(summary) => {
                for (kind, count) in summary.faults {
                    *stats.faults.entry(kind).or_insert(0) += count;
                }
                stats.invariants_checked += summary.invariants_checked;
                match (summary.passed, summary.violations.is_empty()) {
                    (true, _) => None,
                    (false, false) => Some(summary.violations),
                    (false, true) => Some(vec!["failed without naming a violation".to_string()]),
                }
            }
            Err(harness) => Some(vec![format!("harness error: {harness}")]),
        };
        if let Some(problems) = problems {
            stats.failures += 1;
            let failure = Failure {
                scenario: name.clone(),
                seed,
                problems,
            };
            // Runs finish in any order; keep the list in sweep order so output is stable.
            let at = self
                .failures
                .partition_point(|f| (self.index_of(&f.scenario), f.seed) < (scenario, seed));
            self.failures.insert(at, failure);
        }
    }

    fn index_of(&self, scenario: &str) -> usize {
        self.scenarios
            .iter()
            .position(|(n, _)| n == scenario)
            .unwrap_or(usize::MAX)
    }

    fn total_runs(&self) -> usize {
        self.scenarios.iter().map(|(_, s)| s.runs).sum()
    }

    /// The table, one row per scenario and a totals row. A scenario's runs/s is per worker
    /// (its runs over their summed wall time), comparable across scenarios whatever `--jobs`
    /// was; the totals row's is the sweep's real throughput (all runs over the sweep's wall
    /// time, with every worker busy).
    fn table(&self, wall: Duration, jobs: usize) -> String {
        let header = [
            "scenario",
            "seeds",
            "runs/s",
            "faults injected",
            "invariant checks",
            "failures",
        ];
        let mut rows: Vec<[String; 6]> = Vec::new();
        let mut all_faults = BTreeMap::new();
        for (name, s) in &self.scenarios {
            for (kind, count) in &s.faults {
                *all_faults.entry(kind.clone()).or_insert(0) += count;
            }
            rows.push([
                name.clone(),
                s.runs.to_string(),
                format!("{:.1}", s.runs_per_second()),
                format_faults(&s.faults),
                s.invariants_checked.to_string(),
                s.failures.to_string(),
            ]);
        }
        let sum = |f: fn(&ScenarioStats) -> usize| -> usize {
            self.scenarios.iter().map(|(_, s)| f(s)).sum()
        };
        rows.push([
            "total".to_string(),
            self.total_runs().to_string(),
            format!("{:.1}", rate(self.total_runs(), wall)),
            format_faults(&all_faults),
            sum(|s| s.invariants_checked).to_string(),
            sum(|s| s.failures).to_string(),
        ]);

        let header = header.map(String::from);
        let widths = column_widths(&header, &rows);
        // Name columns are left-aligned, number columns right-aligned.
        let left = [0, 3];
        let rule = widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>();
        let mut out = format_row(&header, &widths, &left);
        out += &format_row(&rule, &widths, &left);
        let (total, scenarios) = rows.split_last().expect("the totals row is there");
        for row in scenarios {
            out += &format_row(row, &widths, &left);
        }
        out += &format_row(&rule, &widths, &left);
        out += &format_row(total, &widths, &left);
        out += &format!(
            "runs/s: per scenario, of one worker (runs / their summed wall time); total, of the \
             sweep ({} runs / {:.2} s wall clock, {jobs} job(s))\n",
            self.total_runs(),
            wall.as_secs_f64()
        );
        out
    }

    /// Every failure's problems and repro command, the first `FAILURES_IN_FULL` of them.
    fn failure_list(&self) -> String {
        if self.failures.is_empty() {
            return String::new();
        }
        let mut out = format!("\n{} failure(s):\n", self.failures.len());
        for f in self.failures.iter().take(FAILURES_IN_FULL) {
            out += &format!("\n{} seed {}:\n", f.scenario, f.seed);
            for problem in &f.problems {
                for line in problem.lines() {
                    out += &format!("    {line}\n");
                }
            }
            out += &format!(
                "  repro: cargo xtask repro {} --seed {}\n",
                f.scenario, f.seed
            );
        }
        if let Some(rest) = self.failures.len().checked_sub(FAILURES_IN_FULL) {
            if rest > 0 {
                out += &format!("\n... and {rest} more failure(s)\n");
            }
        }
        out
    }
}

fn rate(runs: usize, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 {
        runs as f64 / secs
    } else {
        0.0
    }
}

/// The width of each column: its widest cell, header included.
pub(crate) fn column_widths<R: AsRef<[String]>>(header: &[String], rows: &[R]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.len());
        }
    }
    widths
}

/// One table row, cells separated by ` | `: the columns in `left` left-aligned, the others
/// right-aligned.
pub(crate) fn format_row(cells: &[String], widths: &[usize], left: &[usize]) -> String {
    let mut line = String::new();
    for (i, (cell, &w)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            line += " | ";
        }
        if left.contains(&i) {
            line += &format!("{cell:<w$}");
        } else {
            line += &format!("{cell:>w$}");
        }
    }
    line.trim_end().to_string() + "\n"
}

/// Faults by kind, most frequent first (ties by name): `engine_crash=120 partition=40`.
fn format_faults(faults: &BTreeMap<String, usize>) -> String {
    let mut by_count: Vec<(&String, &usize)> = faults.iter().filter(|(_, &c)| c > 0).collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if by_count.is_empty() {
        return "-".to_string();
    }
    by_count
        .iter()
        .map(|(kind, count)| format!("{kind}={count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn arguments_have_defaults_and_take_both_forms() {
        assert_eq!(
            parse_args(&[], 8).unwrap(),
            Args {
                scenario: None,
                seeds: 100,
                start: 0,
                jobs: 8
            }
        );
        let args = parse_args(
            &strings(&[
                "--scenario",
                "gateway-partition",
                "--seeds=20",
                "--start",
                "100",
            ]),
            8,
        )
        .unwrap();
        assert_eq!(args.scenario.as_deref(), Some("gateway-partition"));
        assert_eq!((args.seeds, args.start, args.last_seed()), (20, 100, 119));
        assert_eq!(parse_args(&strings(&["--jobs", "3"]), 8).unwrap().jobs, 3);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--seeds"][..],
            &["--seeds", "many"],
            &["--seeds", "0"],
            &["--jobs=0"],
            &["--start", "18446744073709551615", "--seeds", "2"],
            &["--verbose"],
            &["diamond"],
        ] {
            assert!(
                parse_args(&strings(bad), 8).is_err(),
                "{bad:?} was accepted"
            );
        }
        // The very last seed on its own is fine.
        let last = parse_args(
            &strings(&["--start", "18446744073709551615", "--seeds", "1"]),
            8,
        );
        assert_eq!(last.unwrap().last_seed(), u64::MAX);
    }

    #[test]
    fn faults_are_listed_most_frequent_first() {
        let faults: BTreeMap<String, usize> = [
            ("io_error", 7),
            ("partition", 40),
            ("engine_crash", 120),
            ("ambiguous", 7),
            ("latency", 0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            format_faults(&faults),
            "engine_crash=120 partition=40 ambiguous=7 io_error=7"
        );
        assert_eq!(format_faults(&BTreeMap::new()), "-");
    }

    pub(crate) const PASSED: &str = r#"{"scenario":"s","seed":3,"passed":true,"faults":{"engine_crash":1,"partition":1},"invariants_checked":8,"trace_hash":"00aa","violations":[],"repro":"x"}"#;
    pub(crate) const VIOLATED: &str = r#"{"scenario":"s","seed":4,"passed":false,"faults":{"engine_crash":2},"invariants_checked":8,"trace_hash":"00bb","violations":["once: step a ran twice"],"repro":"x"}"#;

    #[test]
    fn exit_codes_and_summaries_are_checked_against_each_other() {
        assert!(interpret(Some(0), PASSED, "").unwrap().passed);
        assert!(
            !interpret(Some(1), &format!("noise\n{VIOLATED}\n"), "")
                .unwrap()
                .passed
        );
        let bad_scenario =
            interpret(Some(2), "", "error: scenarios/x.yaml: cannot read").unwrap_err();
        assert!(bad_scenario.contains("cannot read"), "{bad_scenario}");
        let panicked =
            interpret(Some(101), "", "thread 'main' panicked at sim/src/runner.rs").unwrap_err();
        assert!(panicked.contains("no summary (exit 101)") && panicked.contains("panicked"));
        assert!(interpret(Some(0), VIOLATED, "").is_err());
        assert!(interpret(Some(1), PASSED, "").is_err());
        assert!(interpret(None, PASSED, "").is_err());
    }

    #[test]
    fn runs_are_summed_per_scenario_and_failures_kept_in_sweep_order() {
        let names = strings(&["alpha", "beta"]);
        let mut report = Report::new(&names);
        let second = Duration::from_secs(1);
        report.add(1, 9, second, Err("no summary (exit 101)".to_string()));
        report.add(0, 4, second, interpret(Some(1), VIOLATED, ""));
        report.add(0, 3, second, interpret(Some(0), PASSED, ""));
        report.add(1, 2, second, interpret(Some(0), PASSED, ""));

        let alpha = &report.scenarios[0].1;
        assert_eq!(
            (alpha.runs, alpha.invariants_checked, alpha.failures),
            (2, 16, 1)
        );
        assert_eq!(format_faults(&alpha.faults), "engine_crash=3 partition=1");
        assert_eq!(alpha.runs_per_second(), 1.0);
        let beta = &report.scenarios[1].1;
        assert_eq!(
            (beta.runs, beta.invariants_checked, beta.failures),
            (2, 8, 1)
        );

        let order: Vec<(&str, u64)> = report
            .failures
            .iter()
            .map(|f| (f.scenario.as_str(), f.seed))
            .collect();
        assert_eq!(order, [("alpha", 4), ("beta", 9)]);
        assert_eq!(report.failures[0].problems, ["once: step a ran twice"]);

        let table = report.table(Duration::from_secs(2), 2);
        let total = table.lines().find(|l| l.starts_with("total")).unwrap();
        let cells: Vec<&str> = total.split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            ["total", "4", "2.0", "engine_crash=4 partition=2", "24", "2"]
        );
        let list = report.failure_list();
        assert!(
            list.contains("repro: cargo xtask repro alpha --seed 4"),
            "{list}"
        );
        assert!(
            list.contains("harness error: no summary (exit 101)"),
            "{list}"
        );
    }

    #[test]
    fn only_the_first_failures_are_listed_in_full() {
        let names = strings(&["alpha"]);
        let mut report = Report::new(&names);
        for seed in 0..25 {
            report.add(0, seed, Duration::ZERO, interpret(Some(1), VIOLATED, ""));
        }
        let list = report.failure_list();
        assert_eq!(list.matches("repro: ").count(), FAILURES_IN_FULL);
        assert!(list.contains("... and 5 more failure(s)"), "{list}");
    }
}
