//! `cargo xtask mutants`: proves that the simulator's invariants bite. For every deliberate
//! engine bug (`proctor::planted::Bug`, listed by `proctor-sim bugs`) it sweeps seeds 0, 1,
//! 2, ... over every `scenarios/*.yaml` with that bug planted, and stops at the first seed at
//! which some run fails: the bug is caught there, by the invariants that run names.
//!
//! It builds `proctor-sim` in release mode with the test-only `planted-bugs` feature (see
//! `chaos::build_sim`), and makes every run its own `proctor-sim run SCENARIO --seed N --plant
//! BUG` process, `--jobs` at a time, as `cargo xtask chaos` does. A seed is swept whole before
//! the next starts, so where a bug is caught does not depend on `--jobs`. When every run of a
//! seed passes, the seed runs once more, in fresh processes, and any run whose trace hash
//! differs from its first is caught by `deterministic` (a planted order that is legal but
//! depends on the process breaks nothing else).
//!
//! It prints one row per bug: caught or not, the seeds it took, the runs made, the invariants
//! that fired, and the first failing run with the command that replays it
//! (`cargo xtask repro SCENARIO --seed N --plant BUG`). Fails if a bug is not caught within
//! `--seeds` seeds, or is caught only by runs that crashed without naming an invariant.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::chaos::{self, Summary};
use crate::tidy::workspace_root;

const USAGE: &str = "usage: cargo xtask mutants [--seeds N] [--jobs J] [--bug NAME]";

/// The simulator's cargo feature that compiles `--plant` in.
const FEATURE: &str = "planted-bugs";

/// Two runs of one seed, in two processes, disagreed (`tests/scenarios.rs` names it so too).
const DETERMINISTIC: &str = "deterministic";

/// A run that ended without a summary (it crashed, or its exit code contradicted it).
const HARNESS_ERROR: &str = "harness error";

pub fn mutants(args: &[String]) -> Result<()> {
    let default_jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args = parse_args(args, default_jobs)?;
    let root = workspace_root();
    let scenarios = chaos::scenarios(&root, None)?;
    let sim = chaos::build_sim(&root, Some(FEATURE))?;
    let all = bug_names(&sim, &root)?;
    let bugs = select(&all, args.bug.as_deref())?;
    eprintln!(
        "mutants: {} planted bug(s) x {} scenario(s), up to {} seed(s) each, {} job(s)",
        bugs.len(),
        scenarios.len(),
        args.seeds,
        args.jobs
    );
    let began = Instant::now();
    let mut hunts = Vec::new();
    for bug in bugs {
        let hunt = hunt(&sim, &root, &scenarios, bug, args.seeds, args.jobs);
        eprintln!("mutants: {}", hunt.progress());
        hunts.push(hunt);
    }
    print!("{}", table(&hunts));
    let missed: Vec<&str> = hunts
        .iter()
        .filter(|h| !h.caught())
        .map(|h| h.bug.as_str())
        .collect();
    println!(
        "{} of {} planted bug(s) caught within {} seed(s); {} run(s) in {:.1} s",
        hunts.len() - missed.len(),
        hunts.len(),
        args.seeds,
        hunts.iter().map(|h| h.runs).sum::<usize>(),
        began.elapsed().as_secs_f64()
    );
    if !missed.is_empty() {
        bail!(
            "mutants: not caught by any invariant: {}; add or sharpen a scenario under scenarios/",
            missed.join(", ")
        );
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Args {
    seeds: u64,
    jobs: usize,
    bug: Option<String>,
}

fn parse_args(args: &[String], default_jobs: usize) -> Result<Args> {
    let mut parsed = Args {
        seeds: 1000,
        jobs: default_jobs,
        bug: None,
    };
    for (flag, value) in chaos::flags(args, &["--seeds", "--jobs", "--bug"], USAGE)? {
        match flag {
            "--seeds" => parsed.seeds = chaos::number(flag, &value, USAGE)?,
            "--jobs" => parsed.jobs = chaos::number(flag, &value, USAGE)?,
            _ => parsed.bug = Some(value),
        }
    }
    if parsed.seeds == 0 || parsed.jobs == 0 {
        bail!("`--seeds` and `--jobs` must be at least 1; {USAGE}");
    }
    Ok(parsed)
}

/// The planted bugs the simulator knows, by name (`proctor-sim bugs`).
fn bug_names(sim: &Path, root: &Path) -> Result<Vec<String>> {
    let output = Command::new(sim)
        .arg("bugs")
        .current_dir(root)
        .output()
        .with_context(|| format!("running {} bugs", sim.display()))?;
    let names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if !output.status.success() || names.is_empty() {
        bail!(
            "{} bugs listed no planted bugs ({}): {}",
            sim.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(names)
}

/// Every bug, or the one asked for (checked, so that a typo is one error).
fn select<'a>(all: &'a [String], only: Option<&str>) -> Result<Vec<&'a str>> {
    match only {
        None => Ok(all.iter().map(String::as_str).collect()),
        Some(name) => match all.iter().find(|b| *b == name) {
            Some(bug) => Ok(vec![bug.as_str()]),
            None => bail!("no planted bug `{name}`; bugs: {}", all.join(", ")),
        },
    }
}

/// One bug's sweep.
#[derive(Debug, PartialEq)]
struct Hunt {
    bug: String,
    /// Seeds swept, the one that caught it included.
    seeds: u64,
    /// Runs made, determinism replays included.
    runs: usize,
    wall: Duration,
    catch: Option<Catch>,
}

/// The first seed at which some run of a bug failed.
#[derive(Debug, PartialEq)]
struct Catch {
    seed: u64,
    /// What fired at that seed, over every scenario: invariant names, [`DETERMINISTIC`], or
    /// [`HARNESS_ERROR`].
    invariants: BTreeSet<String>,
    /// The first scenario, in sweep order (sorted by name), whose run fired a named
    /// invariant, or failed at all if none did.
    scenario: String,
}

impl Hunt {
    /// Caught by a named invariant (a run that crashed names none).
    fn caught(&self) -> bool {
        self.catch
            .as_ref()
            .is_some_and(|c| c.invariants.iter().any(|i| i != HARNESS_ERROR))
    }

    fn repro(&self) -> Option<String> {
        let c = self.catch.as_ref()?;
        Some(format!(
            "cargo xtask repro {} --seed {} --plant {}",
            c.scenario, c.seed, self.bug
        ))
    }

    fn progress(&self) -> String {
        let wall = self.wall.as_secs_f64();
        match &self.catch {
            Some(c) => format!(
                "{}: caught at seed {} by {} ({} run(s), {wall:.1} s)",
                self.bug,
                c.seed,
                c.invariants.iter().cloned().collect::<Vec<_>>().join(", "),
                self.runs
            ),
            None => format!(
                "{}: NOT caught in {} seed(s) ({} run(s), {wall:.1} s)",
                self.bug, self.seeds, self.runs
            ),
        }
    }
}

/// Sweeps seeds 0, 1, ... of every scenario with `bug` planted until a seed fails.
fn hunt(sim: &Path, root: &Path, names: &[String], bug: &str, seeds: u64, jobs: usize) -> Hunt {
    let began = Instant::now();
    let mut hunt = Hunt {
        bug: bug.to_string(),
        seeds: 0,
        runs: 0,
        wall: Duration::ZERO,
        catch: None,
    };
    let run_all = |seed: u64| {
        let mut results: Vec<Option<Result<Summary, String>>> =
            names.iter().map(|_| None).collect();
        let work = |name: &String| chaos::run_one(sim, root, name, seed, Some(bug));
        chaos::in_parallel(names, jobs, work, |i, result| results[i] = Some(result));
        results
            .into_iter()
            .map(|r| r.expect("every run reports"))
            .collect::<Vec<_>>()
    };
    for seed in 0..seeds {
        hunt.seeds += 1;
        let first = run_all(seed);
        hunt.runs += names.len();
        hunt.catch = failures(names, seed, &first);
        if hunt.catch.is_some() {
            break;
        }
        let again = run_all(seed);
        hunt.runs += names.len();
        hunt.catch = disagreements(names, seed, &first, &again);
        if hunt.catch.is_some() {
            break;
        }
    }
    hunt.wall = began.elapsed();
    hunt
}

/// The invariant a violation names (`invariant `NAME` violated ...`).
fn invariant_of(violation: &str) -> Option<&str> {
    let rest = violation.strip_prefix("invariant `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// What a failing run fired: the invariants its violations name ([`HARNESS_ERROR`] if it
/// ended without a summary, or names none); `None` if it passed.
fn fired(result: &Result<Summary, String>) -> Option<Vec<String>> {
    let summary = match result {
        Ok(summary) if summary.passed => return None,
        Ok(summary) => summary,
        Err(_) => return Some(vec![HARNESS_ERROR.to_string()]),
    };
    let named: Vec<String> = summary
        .violations
        .iter()
        .filter_map(|v| invariant_of(v).map(String::from))
        .collect();
    if named.is_empty() {
        Some(vec![HARNESS_ERROR.to_string()])
    } else {
        Some(named)
    }
}

/// Adds what `scenario` fired at `seed` to `catch`, which names the first scenario that fired
/// a named invariant (the first that failed at all while none has).
fn record(catch: &mut Option<Catch>, seed: u64, scenario: &str, fired: Vec<String>) {
    let named = |i: &String| i != HARNESS_ERROR;
    let catch = catch.get_or_insert_with(|| Catch {
        seed,
        invariants: BTreeSet::new(),
        scenario: scenario.to_string(),
    });
    if fired.iter().any(named) && !catch.invariants.iter().any(named) {
        catch.scenario = scenario.to_string();
    }
    catch.invariants.extend(fired);
}

/// What failed among one seed's runs (`results[i]` is `names[i]`'s), if anything did.
fn failures(names: &[String], seed: u64, results: &[Result<Summary, String>]) -> Option<Catch> {
    let mut catch = None;
    for (name, result) in names.iter().zip(results) {
        if let Some(fired) = fired(result) {
            record(&mut catch, seed, name, fired);
        }
    }
    catch
}

/// The runs of one seed whose replay (`again`, after `first` all passed) disagreed with the
/// first run ([`DETERMINISTIC`]) or failed.
fn disagreements(
    names: &[String],
    seed: u64,
    first: &[Result<Summary, String>],
    again: &[Result<Summary, String>],
) -> Option<Catch> {
    let mut catch = None;
    for ((name, a), b) in names.iter().zip(first).zip(again) {
        let fired = match (a, b) {
            (Ok(a), Ok(b)) if a.trace_hash != b.trace_hash => vec![DETERMINISTIC.to_string()],
            _ => match fired(b) {
                Some(fired) => fired,
                None => continue,
            },
        };
        record(&mut catch, seed, name, fired);
    }
    catch
}

/// One row per bug, then what each column means.
fn table(hunts: &[Hunt]) -> String {
    let header = [
        "planted bug",
        "caught",
        "seeds to catch",
        "runs",
        "invariants",
        "first failing run",
    ]
    .map(String::from);
    let rows: Vec<[String; 6]> = hunts
        .iter()
        .map(|h| {
            let caught = match (&h.catch, h.caught()) {
                (_, true) => "yes",
                (Some(_), false) => "no (crashed)",
                (None, false) => "no",
            };
            let (seeds, invariants) = match &h.catch {
                Some(c) => (
                    (c.seed + 1).to_string(),
                    c.invariants.iter().cloned().collect::<Vec<_>>().join(", "),
                ),
                None => (format!("> {}", h.seeds), "-".to_string()),
            };
            [
                h.bug.clone(),
                caught.to_string(),
                seeds,
                h.runs.to_string(),
                invariants,
                h.repro().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let widths = chaos::column_widths(&header, &rows);
    let left = [0, 1, 4, 5];
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    let mut out = chaos::format_row(&header, &widths, &left);
    out += &chaos::format_row(&rule, &widths, &left);
    for row in &rows {
        out += &chaos::format_row(row, &widths, &left);
    }
    out += "seeds to catch: seeds swept up to and including the first with a failing run (each \
            seed: every scenario, replayed once more when all pass); first failing run: its \
            replay\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::interpret;
    use crate::chaos::tests::{PASSED, VIOLATED};

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    /// A run whose summary says `passed` with `hash`, violating `violations`.
    fn run(hash: &str, violations: &[&str]) -> Result<Summary, String> {
        let json = serde_json::json!({
            "passed": violations.is_empty(),
            "faults": {},
            "invariants_checked": 19,
            "trace_hash": hash,
            "violations": violations,
        });
        let code = if violations.is_empty() { 0 } else { 1 };
        interpret(Some(code), &json.to_string(), "")
    }

    #[test]
    fn arguments_have_defaults_and_take_both_forms() {
        assert_eq!(
            parse_args(&[], 8).unwrap(),
            Args {
                seeds: 1000,
                jobs: 8,
                bug: None
            }
        );
        let args = parse_args(
            &strings(&["--seeds=5", "--jobs", "3", "--bug", "complete_twice"]),
            8,
        )
        .unwrap();
        assert_eq!(
            args,
            Args {
                seeds: 5,
                jobs: 3,
                bug: Some("complete_twice".to_string())
            }
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--seeds"][..],
            &["--seeds", "many"],
            &["--seeds", "0"],
            &["--jobs=0"],
            &["--bug"],
            &["--scenario", "diamond"],
            &["complete_twice"],
        ] {
            assert!(
                parse_args(&strings(bad), 8).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_bug_is_chosen_by_its_exact_name() {
        let all = strings(&["complete_twice", "key_not_stored"]);
        assert_eq!(
            select(&all, None).unwrap(),
            ["complete_twice", "key_not_stored"]
        );
        assert_eq!(
            select(&all, Some("key_not_stored")).unwrap(),
            ["key_not_stored"]
        );
        let typo = select(&all, Some("complete")).unwrap_err().to_string();
        assert!(
            typo.contains("no planted bug `complete`")
                && typo.contains("complete_twice, key_not_stored"),
            "{typo}"
        );
    }

    #[test]
    fn violations_name_their_invariant() {
        assert_eq!(
            invariant_of("invariant `timers_not_late` violated in execution e at step 'wait': x"),
            Some("timers_not_late")
        );
        assert_eq!(invariant_of("once: step a ran twice"), None);
    }

    #[test]
    fn a_seed_fails_on_any_failing_run_and_names_the_first_scenario() {
        let names = strings(&["alpha", "beta", "gamma"]);
        let all_pass = [run("a", &[]), run("b", &[]), run("c", &[])];
        assert_eq!(failures(&names, 4, &all_pass), None);

        let results = [
            run("a", &[]),
            run(
                "b",
                &[
                    "invariant `effect_at_most_once` violated in execution e: x",
                    "invariant `expected_outcome` violated: y",
                ],
            ),
            Err("no summary (exit 101)".to_string()),
        ];
        let catch = failures(&names, 4, &results).unwrap();
        assert_eq!(catch.seed, 4);
        assert_eq!(catch.scenario, "beta");
        assert_eq!(
            catch.invariants.into_iter().collect::<Vec<_>>(),
            ["effect_at_most_once", "expected_outcome", HARNESS_ERROR]
        );
        // A run that names its invariant is the one to replay, even after one that crashed.
        let crashed_first = [Err("no summary (exit 101)".to_string()), results[1].clone()];
        let catch = failures(&names[..2], 4, &crashed_first).unwrap();
        assert_eq!(catch.scenario, "beta");
        // The chaos tests' summaries: a violation that names no invariant is a harness error.
        let unnamed = [interpret(Some(1), VIOLATED, "")];
        let catch = failures(&names[..1], 0, &unnamed).unwrap();
        assert_eq!(
            catch.invariants.into_iter().collect::<Vec<_>>(),
            [HARNESS_ERROR]
        );
        assert_eq!(
            failures(&names[..1], 0, &[interpret(Some(0), PASSED, "")]),
            None
        );
    }

    #[test]
    fn a_replay_that_disagrees_is_caught_by_determinism() {
        let names = strings(&["alpha", "beta"]);
        let first = [run("a", &[]), run("b", &[])];
        assert_eq!(
            disagreements(&names, 2, &first, &[run("a", &[]), run("b", &[])]),
            None
        );
        let catch = disagreements(&names, 2, &first, &[run("a", &[]), run("other", &[])]).unwrap();
        assert_eq!((catch.seed, catch.scenario.as_str()), (2, "beta"));
        assert_eq!(
            catch.invariants.into_iter().collect::<Vec<_>>(),
            [DETERMINISTIC]
        );
        let crashed = [Err("no summary (exit 101)".to_string()), run("b", &[])];
        let catch = disagreements(&names, 2, &first, &crashed).unwrap();
        assert_eq!(catch.scenario, "alpha");
        assert_eq!(
            catch.invariants.into_iter().collect::<Vec<_>>(),
            [HARNESS_ERROR]
        );
    }

    fn catch(seed: u64, invariants: &[&str], scenario: &str) -> Option<Catch> {
        Some(Catch {
            seed,
            invariants: invariants.iter().map(|i| i.to_string()).collect(),
            scenario: scenario.to_string(),
        })
    }

    #[test]
    fn the_table_has_a_row_per_bug_with_its_replay() {
        let hunt = |bug: &str, seeds, runs, catch| Hunt {
            bug: bug.to_string(),
            seeds,
            runs,
            wall: Duration::from_secs(1),
            catch,
        };
        let hunts = [
            hunt(
                "complete_twice",
                1,
                62,
                catch(
                    0,
                    &["effect_at_most_once", "state_matches_history"],
                    "diamond",
                ),
            ),
            hunt(
                "unordered_dispatch",
                3,
                310,
                catch(2, &[DETERMINISTIC], "ten"),
            ),
            hunt("panics", 1, 62, catch(0, &[HARNESS_ERROR], "diamond")),
            hunt("sleeper", 5, 620, None),
        ];
        assert!(hunts[0].caught() && hunts[1].caught());
        assert!(!hunts[2].caught() && !hunts[3].caught());
        let table = table(&hunts);
        let cells = |bug: &str| -> Vec<String> {
            let line = table.lines().find(|l| l.starts_with(bug)).unwrap();
            line.split(" | ").map(|c| c.trim().to_string()).collect()
        };
        assert_eq!(
            cells("complete_twice"),
            [
                "complete_twice",
                "yes",
                "1",
                "62",
                "effect_at_most_once, state_matches_history",
                "cargo xtask repro diamond --seed 0 --plant complete_twice"
            ]
        );
        assert_eq!(cells("unordered_dispatch")[1..4], ["yes", "3", "310"]);
        assert_eq!(cells("unordered_dispatch")[4], DETERMINISTIC);
        assert_eq!(cells("panics")[1], "no (crashed)");
        assert_eq!(cells("sleeper")[1..], ["no", "> 5", "620", "-", "-"]);
        assert!(table.lines().next().unwrap().starts_with("planted bug"));
        assert!(hunts[3].progress().contains("NOT caught in 5 seed(s)"));
        assert!(hunts[0]
            .progress()
            .contains("caught at seed 0 by effect_at_most_once, state_matches_history"));
    }
}
