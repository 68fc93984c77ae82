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
//! `--shard K/M` runs the K-th of M deterministic slices of the sweep (run i of the full
//! (scenario, seed) list belongs to shard i mod M + 1), so M machines or CI jobs can split one
//! sweep; `--json FILE` writes every run's result, and `cargo xtask chaos-merge FILE...`
//! combines the shards' files into the table, the failures and the coverage check of the whole.
//!
//! Fault coverage: each run's summary lists the `fault × engine state` pairs its faults met.
//! A full sweep (every scenario, all shards) must hit each pair `proctor-sim coverage` lists
//! (`proctor_sim::summary::REQUIRED_COVERAGE`) at least once, or it fails.
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
use serde::{Deserialize, Serialize};

use crate::tidy::workspace_root;

const USAGE: &str =
    "usage: cargo xtask chaos [--scenario NAME] [--seeds N] [--start S] [--jobs J] \
                     [--shard K/M] [--json FILE]";
const MERGE_USAGE: &str = "usage: cargo xtask chaos-merge FILE...";

/// Version of the `--json` file format.
const SWEEP_FILE_VERSION: u32 = 1;

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
    let required = required_coverage(&sim, &root)?;

    let seeds: Vec<u64> = (args.start..=args.last_seed()).collect();
    let runs = shard_of(&all_runs(&names, &seeds), args.shard);
    eprintln!(
        "chaos: {} scenario(s) x {} seed(s) ({}..={}){}: {} run(s), {} job(s)",
        names.len(),
        seeds.len(),
        args.start,
        args.last_seed(),
        args.shard
            .map(|(k, m)| format!(", shard {k}/{m}"))
            .unwrap_or_default(),
        runs.len(),
        args.jobs
    );
    let began = Instant::now();
    let report = sweep(&sim, &root, &names, &runs, args.jobs);
    let wall = began.elapsed();

    if let Some(path) = &args.json {
        let file = SweepFile {
            version: SWEEP_FILE_VERSION,
            scenarios: names.clone(),
            full: args.scenario.is_none(),
            start: args.start,
            seeds: args.seeds,
            shard: args.shard,
            wall_ms: wall.as_millis() as u64,
            required_coverage: required.clone(),
            runs: report.records.clone(),
        };
        let text = serde_json::to_string(&file)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("chaos: wrote {}", path.display());
    }
    // Coverage is judged over a whole sweep: every scenario, every shard.
    let whole = args.scenario.is_none() && args.shard.is_none();
    conclude(&report, wall, args.jobs, &required, whole)
}

/// Prints the table, the failures and the coverage, and fails on a failed run or (for a whole
/// sweep) a required coverage pair never hit.
fn conclude(
    report: &Report,
    wall: Duration,
    jobs: usize,
    required: &[String],
    whole: bool,
) -> Result<()> {
    print!("{}", report.table(wall, jobs));
    print!("{}", report.failure_list());
    let (coverage, missing) = report.coverage_table(required);
    print!("{coverage}");
    let failed = report.failures.len();
    if failed > 0 {
        bail!("chaos: {failed} of {} run(s) failed", report.total_runs());
    }
    if whole && !missing.is_empty() {
        bail!(
            "chaos: {} required coverage pair(s) never hit: {}",
            missing.len(),
            missing.join(", ")
        );
    }
    if !whole {
        println!("coverage not judged: a partial sweep (one scenario, or one shard)");
    }
    Ok(())
}

/// `cargo xtask chaos-merge FILE...`: the `--json` files of one sweep's shards, combined.
pub fn merge(files: &[String]) -> Result<()> {
    if files.is_empty() {
        bail!("no files; {MERGE_USAGE}");
    }
    let mut sweeps = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
        let sweep: SweepFile =
            serde_json::from_str(&text).with_context(|| format!("{f}: not a chaos --json file"))?;
        if sweep.version != SWEEP_FILE_VERSION {
            bail!(
                "{f}: format version {}, expected {SWEEP_FILE_VERSION}",
                sweep.version
            );
        }
        sweeps.push(sweep);
    }
    let merged = merge_sweeps(sweeps)?;
    conclude(
        &merged.report,
        Duration::from_millis(merged.wall_ms),
        merged.shards,
        &merged.required,
        merged.whole,
    )
}

/// What `chaos --json` writes: the sweep's parameters and every run's result.
#[derive(Debug, Serialize, Deserialize)]
struct SweepFile {
    version: u32,
    /// Every scenario of the sweep (all shards'), sorted.
    scenarios: Vec<String>,
    /// No `--scenario` filter: the sweep covers the whole suite.
    full: bool,
    start: u64,
    seeds: u64,
    shard: Option<(u64, u64)>,
    wall_ms: u64,
    required_coverage: Vec<String>,
    runs: Vec<Record>,
}

struct Merged {
    report: Report,
    /// The longest shard's wall time (shards run side by side).
    wall_ms: u64,
    shards: usize,
    required: Vec<String>,
    /// Every shard of a full sweep is here.
    whole: bool,
}

/// Checks that the files are shards of one sweep, none twice, and folds their runs together.
fn merge_sweeps(sweeps: Vec<SweepFile>) -> Result<Merged> {
    let first = &sweeps[0];
    let same = |s: &SweepFile| {
        s.scenarios == first.scenarios
            && s.start == first.start
            && s.seeds == first.seeds
            && s.full == first.full
            && s.shard.map(|(_, m)| m) == first.shard.map(|(_, m)| m)
    };
    if let Some(other) = sweeps.iter().find(|s| !same(s)) {
        bail!(
            "the files are not shards of one sweep (scenarios, seeds or shard count differ: \
             {:?} vs {:?})",
            (first.start, first.seeds, first.shard),
            (other.start, other.seeds, other.shard)
        );
    }
    let mut shards_seen = std::collections::BTreeSet::new();
    for s in &sweeps {
        if !shards_seen.insert(s.shard.map(|(k, _)| k)) {
            bail!("shard {:?} given twice", s.shard);
        }
    }
    let complete = match first.shard {
        None => true,
        Some((_, m)) => shards_seen.len() as u64 == m,
    };
    let mut report = Report::new(&first.scenarios);
    let (required, full) = (first.required_coverage.clone(), first.full);
    let wall_ms = sweeps.iter().map(|s| s.wall_ms).max().unwrap_or(0);
    let shards = sweeps.len();
    for sweep in sweeps {
        for record in sweep.runs {
            let index = report.index_of(&record.scenario);
            if index == usize::MAX {
                bail!("a run of unknown scenario {}", record.scenario);
            }
            let result = match (record.summary, record.error) {
                (Some(summary), None) => Ok(summary),
                (_, error) => Err(error.unwrap_or_else(|| "no result recorded".to_string())),
            };
            report.add(
                index,
                record.seed,
                Duration::from_millis(record.busy_ms),
                result,
            );
        }
    }
    Ok(Merged {
        report,
        wall_ms,
        shards,
        required,
        whole: full && complete,
    })
}

/// The required coverage pairs, as the simulator lists them.
fn required_coverage(sim: &Path, root: &Path) -> Result<Vec<String>> {
    let output = Command::new(sim)
        .arg("coverage")
        .current_dir(root)
        .output()
        .with_context(|| format!("running {} coverage", sim.display()))?;
    if !output.status.success() {
        bail!("{} coverage failed ({})", sim.display(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Every (scenario index, seed) of a sweep, scenario by scenario.
fn all_runs(names: &[String], seeds: &[u64]) -> Vec<(usize, u64)> {
    (0..names.len())
        .flat_map(|s| seeds.iter().map(move |&seed| (s, seed)))
        .collect()
}

/// Shard `k` of `m` (from 1): the runs whose index in the full list is k - 1 modulo m. Striding
/// (not slicing) spreads every scenario, and so the slow ones, over all shards.
fn shard_of(runs: &[(usize, u64)], shard: Option<(u64, u64)>) -> Vec<(usize, u64)> {
    match shard {
        None => runs.to_vec(),
        Some((k, m)) => runs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 % m == k - 1)
            .map(|(_, r)| *r)
            .collect(),
    }
}

#[derive(Debug, PartialEq)]
struct Args {
    scenario: Option<String>,
    seeds: u64,
    start: u64,
    jobs: usize,
    /// `(k, m)`: the k-th (from 1) of m shards.
    shard: Option<(u64, u64)>,
    json: Option<PathBuf>,
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
        shard: None,
        json: None,
    };
    let known = [
        "--scenario",
        "--seeds",
        "--start",
        "--jobs",
        "--shard",
        "--json",
    ];
    for (flag, value) in flags(args, &known, USAGE)? {
        match flag {
            "--scenario" => parsed.scenario = Some(value),
            "--seeds" => parsed.seeds = number(flag, &value, USAGE)?,
            "--start" => parsed.start = number(flag, &value, USAGE)?,
            "--shard" => {
                let (k, m) = value
                    .split_once('/')
                    .with_context(|| format!("`--shard` takes K/M, not `{value}`; {USAGE}"))?;
                let (k, m): (u64, u64) = (number(flag, k, USAGE)?, number(flag, m, USAGE)?);
                if m == 0 || k == 0 || k > m {
                    bail!("`--shard {value}`: K must be between 1 and M; {USAGE}");
                }
                parsed.shard = Some((k, m));
            }
            "--json" => parsed.json = Some(PathBuf::from(value)),
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
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Summary {
    pub(crate) passed: bool,
    faults: BTreeMap<String, usize>,
    invariants_checked: usize,
    pub(crate) trace_hash: String,
    pub(crate) violations: Vec<String>,
    #[serde(default)]
    coverage: Vec<String>,
}

/// One run's result as `--json` keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    scenario: String,
    seed: u64,
    busy_ms: u64,
    summary: Option<Summary>,
    /// A harness error: the run did not say how it went.
    error: Option<String>,
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

/// Runs every (scenario, seed) of `runs` on `jobs` worker threads and folds the results into a
/// report as they arrive.
fn sweep(sim: &Path, root: &Path, names: &[String], runs: &[(usize, u64)], jobs: usize) -> Report {
    let mut per_scenario = vec![0usize; names.len()];
    for &(s, _) in runs {
        per_scenario[s] += 1;
    }
    let mut report = Report::new(names);
    let work = |&(scenario, seed): &(usize, u64)| {
        let began = Instant::now();
        let result = run_one(sim, root, &names[scenario], seed, None);
        (began.elapsed(), result)
    };
    let progress = progress_bar(runs.len() as u64);
    in_parallel(runs, jobs, work, |i, (took, result)| {
        let (scenario, seed) = runs[i];
        report.add(scenario, seed, took, result);
        progress.inc(1);
        progress.set_message(format!("{} failed", report.failures.len()));
        let stats = &report.scenarios[scenario].1;
        if stats.runs == per_scenario[scenario] {
            let line = format!(
                "chaos: {}: {} seed(s), {} failed ({} failure(s) so far)",
                names[scenario],
                stats.runs,
                stats.failures,
                report.failures.len()
            );
            // A hidden bar (stderr is a file or a pipe, as in CI) prints nothing.
            if progress.is_hidden() {
                eprintln!("{line}");
            } else {
                progress.println(line);
            }
        }
    });
    progress.finish_and_clear();
    report
}

/// A bar on stderr for a sweep of `runs`: done and left, runs/s, time left, failures so far
/// (the message). Drawn only on a terminal.
pub(crate) fn progress_bar(runs: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(runs);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} runs, {rate}, {eta} left, {msg}",
    )
    .expect("the template is valid")
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.1} runs/s", state.per_sec());
        },
    )
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message("0 failed");
    bar
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
    /// Runs that hit each `fault × state` pair.
    coverage: BTreeMap<String, usize>,
    /// Every run, as added (for `--json`).
    records: Vec<Record>,
}

impl Report {
    fn new(names: &[String]) -> Report {
        Report {
            scenarios: names
                .iter()
                .map(|n| (n.clone(), ScenarioStats::default()))
                .collect(),
            failures: Vec::new(),
            coverage: BTreeMap::new(),
            records: Vec::new(),
        }
    }

    fn add(&mut self, scenario: usize, seed: u64, took: Duration, result: Result<Summary, String>) {
        self.records.push(Record {
            scenario: self.scenarios[scenario].0.clone(),
            seed,
            busy_ms: took.as_millis() as u64,
            summary: result.as_ref().ok().cloned(),
            error: result.as_ref().err().cloned(),
        });
        if let Ok(summary) = &result {
            for pair in &summary.coverage {
                *self.coverage.entry(pair.clone()).or_insert(0) += 1;
            }
        }
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

    /// The required coverage pairs with the runs that hit each (`MISSING` for none), then how
    /// many other pairs were hit; and the required pairs never hit.
    fn coverage_table(&self, required: &[String]) -> (String, Vec<String>) {
        let mut out =
            String::from("\nfault coverage (runs that hit each required fault x state pair):\n");
        let mut missing = Vec::new();
        let width = required
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0);
        for pair in required {
            let runs = self.coverage.get(pair).copied().unwrap_or(0);
            let pad = width - pair.chars().count();
            if runs == 0 {
                missing.push(pair.clone());
                out += &format!("  {pair}{} MISSING\n", " ".repeat(pad));
            } else {
                out += &format!("  {pair}{} {runs}\n", " ".repeat(pad));
            }
        }
        let others = self
            .coverage
            .keys()
            .filter(|p| !required.contains(p))
            .count();
        out += &format!("  and {others} other pair(s) hit\n");
        (out, missing)
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
                jobs: 8,
                shard: None,
                json: None,
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
            &["--shard", "0/3"],
            &["--shard", "4/3"],
            &["--shard", "1/0"],
            &["--shard", "2"],
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
    fn the_progress_bar_counts_runs_and_failures() {
        // Its template parses (a bad one panics here, not an hour into a sweep).
        let bar = progress_bar(3);
        bar.inc(2);
        bar.set_message("1 failed");
        assert_eq!((bar.position(), bar.length()), (2, Some(3)));
        assert_eq!(bar.message(), "1 failed");
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

    #[test]
    fn shards_split_a_sweep_exactly_once_and_spread_each_scenario() {
        let names = strings(&["a", "b", "c"]);
        let runs = all_runs(&names, &[0, 1, 2, 3, 4]);
        let parsed = parse_args(&strings(&["--shard", "2/4", "--json", "x.json"]), 2).unwrap();
        assert_eq!(parsed.shard, Some((2, 4)));
        assert_eq!(parsed.json, Some(PathBuf::from("x.json")));
        let mut seen: Vec<(usize, u64)> = (1..=4)
            .flat_map(|k| shard_of(&runs, Some((k, 4))))
            .collect();
        seen.sort();
        assert_eq!(seen, runs, "every run in exactly one shard");
        for k in 1..=4 {
            let shard = shard_of(&runs, Some((k, 4)));
            let scenarios: std::collections::BTreeSet<usize> =
                shard.iter().map(|(s, _)| *s).collect();
            assert!(scenarios.len() > 1, "shard {k} holds one scenario only");
            assert_eq!(shard_of(&runs, Some((k, 4))), shard, "deterministic");
        }
    }

    const COVERED: &str = r#"{"scenario":"s","seed":5,"passed":true,"faults":{"engine_crash":1},"invariants_checked":8,"trace_hash":"00cc","violations":[],"coverage":["engine_crash × paused"]}"#;

    fn shard_file(k: u64, runs: &[(usize, u64, &str)]) -> SweepFile {
        let names = strings(&["alpha", "beta"]);
        let mut report = Report::new(&names);
        for &(s, seed, json) in runs {
            let code = if json.contains(r#""passed":true"#) {
                0
            } else {
                1
            };
            report.add(
                s,
                seed,
                Duration::from_millis(10),
                interpret(Some(code), json, ""),
            );
        }
        SweepFile {
            version: SWEEP_FILE_VERSION,
            scenarios: names,
            full: true,
            start: 0,
            seeds: 2,
            shard: Some((k, 2)),
            wall_ms: 100 * k,
            required_coverage: strings(&["engine_crash × paused", "power_cut × in_write"]),
            runs: report.records,
        }
    }

    #[test]
    fn merged_shards_give_the_whole_sweeps_report_through_json() {
        let one = shard_file(1, &[(0, 0, PASSED), (1, 0, COVERED)]);
        let two = shard_file(2, &[(0, 1, VIOLATED), (1, 1, PASSED)]);
        // Through the file format, as two machines would hand them over.
        let reread = |f: &SweepFile| -> SweepFile {
            serde_json::from_str(&serde_json::to_string(f).unwrap()).unwrap()
        };
        let merged = merge_sweeps(vec![reread(&one), reread(&two)]).unwrap();
        assert!(merged.whole);
        assert_eq!((merged.wall_ms, merged.shards), (200, 2));
        assert_eq!(merged.report.total_runs(), 4);
        assert_eq!(merged.report.failures.len(), 1);
        assert_eq!(merged.report.failures[0].scenario, "alpha");
        let (table, missing) = merged.report.coverage_table(&merged.required);
        assert_eq!(missing, ["power_cut × in_write"]);
        assert!(table.contains("engine_crash × paused 1"), "{table}");
        assert!(table.contains("power_cut × in_write  MISSING"), "{table}");

        // One shard alone is not the whole sweep; a shard twice, or another sweep's, is refused.
        assert!(!merge_sweeps(vec![reread(&one)]).unwrap().whole);
        assert!(merge_sweeps(vec![reread(&one), reread(&one)]).is_err());
        let mut other = reread(&two);
        other.seeds = 3;
        assert!(merge_sweeps(vec![reread(&one), other]).is_err());
    }
}
