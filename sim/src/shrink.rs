//! Shrinking a failing run to a smaller one that fails the same way.
//!
//! A chaos run is a scripted run whose script came from the seed ([`crate::chaos`]), so the
//! first move is to write that script out ([`materialize`]): the chaos plan's faults become
//! scripted faults, in the same order, and the chaos block keeps only its window and the
//! per-write rates the seed enabled, with swarm off, so it draws nothing more. The
//! materialized scenario replays the same run (same trace hash) under the same seed.
//!
//! Then delta debugging over that explicit schedule, never re-seeding: drop chunks of faults
//! (halving the chunk down to single faults), zero the per-write rates, halve outage and link
//! fault durations, run fewer executions, and drop steps from the process (leaves first:
//! steps nothing depends on, that no fault or expectation names). A candidate is kept when the same seed still
//! violates the same invariant as the original run; anything else (passing, or failing
//! another way) is rejected. Each candidate is one simulated run in this process (runs are
//! sequential, so they replay exactly); [`MAX_RUNS`] bounds the search.

use std::path::{Component, Path, PathBuf};

use crate::chaos;
use crate::runner::run;
use crate::scenario::{Chaos, Scenario};

/// Most candidate runs one shrink tries.
pub const MAX_RUNS: usize = 500;

/// A shrink's result.
#[derive(Debug)]
pub struct Shrunk {
    /// The minimal failing scenario found (run it with the same seed).
    pub scenario: Scenario,
    pub seed: u64,
    /// The invariant that the original run and the shrunk one violate.
    pub invariant: String,
    /// Faults in the materialized original schedule, and in the shrunk one.
    pub faults_before: usize,
    pub faults_after: usize,
    pub executions_before: usize,
    pub executions_after: usize,
    pub steps_before: usize,
    pub steps_after: usize,
    /// Candidate runs tried.
    pub runs: usize,
}

impl Shrunk {
    /// `fails `inv` with a of b faults, ... (n candidate runs)`.
    pub fn describe(&self) -> String {
        format!(
            "fails `{}` with {} of {} faults, {} of {} executions and {} of {} steps ({} \
             candidate runs)",
            self.invariant,
            self.faults_after,
            self.faults_before,
            self.executions_after,
            self.executions_before,
            self.steps_after,
            self.steps_before,
            self.runs
        )
    }

    /// The result as JSON, with the file it was written to.
    pub fn report(&self, file: &Path) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "invariant": self.invariant,
            "faults_before": self.faults_before,
            "faults_after": self.faults_after,
            "executions_before": self.executions_before,
            "executions_after": self.executions_after,
            "steps_before": self.steps_before,
            "steps_after": self.steps_after,
            "runs": self.runs,
            "file": file.display().to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{scenario} passes with seed {seed}: nothing to shrink")]
    Passes { scenario: String, seed: u64 },
    #[error(
        "{scenario} seed {seed} fails `{invariant}`, but its written-out schedule does not: \
         the materialized run differs from the chaos run (a simulator bug)"
    )]
    NotReplayed {
        scenario: String,
        seed: u64,
        invariant: String,
    },
}

/// The scenario with its chaos plan for `seed` written out as scripted faults.
pub fn materialize(scenario: &Scenario, seed: u64) -> Scenario {
    let mut explicit = scenario.clone();
    let Some(chaos) = &scenario.chaos else {
        return explicit;
    };
    let agents: Vec<String> = scenario.agents.keys().cloned().collect();
    let plan = chaos::plan(chaos, &agents, seed);
    explicit.faults.extend(plan.faults);
    explicit.chaos = Some(Chaos {
        window_ms: chaos.window_ms,
        storage_error_rate: plan.io_error_rate,
        ambiguous_commit_rate: plan.ambiguous_rate,
        disk_error_rate: plan.disk_error_rate,
        swarm: false,
        ..Chaos::default()
    });
    explicit
}

/// The first invariant `scenario` violates with `seed`, if any.
fn first_violation(scenario: &Scenario, seed: u64) -> Option<&'static str> {
    run(scenario, seed).violations.first().map(|v| v.invariant)
}

struct Search<'a> {
    seed: u64,
    invariant: &'a str,
    runs: usize,
}

impl Search<'_> {
    /// Whether `candidate` still fails the same way (false once the budget is spent).
    fn fails(&mut self, candidate: &Scenario) -> bool {
        if self.runs >= MAX_RUNS {
            return false;
        }
        self.runs += 1;
        run(candidate, self.seed)
            .violations
            .iter()
            .any(|v| v.invariant == self.invariant)
    }
}

/// Shrinks a failing run of `scenario` with `seed`.
pub fn shrink(scenario: &Scenario, seed: u64) -> Result<Shrunk, Error> {
    let Some(invariant) = first_violation(scenario, seed) else {
        return Err(Error::Passes {
            scenario: scenario.name.clone(),
            seed,
        });
    };
    let mut best = materialize(scenario, seed);
    let mut search = Search {
        seed,
        invariant,
        runs: 0,
    };
    if !search.fails(&best) {
        return Err(Error::NotReplayed {
            scenario: scenario.name.clone(),
            seed,
            invariant: invariant.to_string(),
        });
    }
    let faults_before = best.faults.len();
    let executions_before = best.workload.executions;
    let steps_before = best.process.steps.len();

    drop_faults(&mut best, &mut search);
    zero_rates(&mut best, &mut search);
    shorten(&mut best, &mut search);
    fewer_executions(&mut best, &mut search);
    fewer_steps(&mut best, &mut search);
    // Shorter outages, fewer executions and steps can make more faults unnecessary.
    drop_faults(&mut best, &mut search);

    Ok(Shrunk {
        faults_after: best.faults.len(),
        executions_after: best.workload.executions,
        steps_after: best.process.steps.len(),
        steps_before,
        scenario: best,
        seed,
        invariant: invariant.to_string(),
        faults_before,
        executions_before,
        runs: search.runs,
    })
}

/// Delta debugging over the fault list: remove chunks, halving the chunk size down to one.
fn drop_faults(best: &mut Scenario, search: &mut Search<'_>) {
    let mut chunk = best.faults.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < best.faults.len() {
            let mut candidate = best.clone();
            let end = (i + chunk).min(candidate.faults.len());
            candidate.faults.drain(i..end);
            if search.fails(&candidate) {
                *best = candidate;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
}

fn zero_rates(best: &mut Scenario, search: &mut Search<'_>) {
    let rates: [fn(&mut Chaos) -> &mut f64; 3] = [
        |c| &mut c.storage_error_rate,
        |c| &mut c.ambiguous_commit_rate,
        |c| &mut c.disk_error_rate,
    ];
    for rate in rates {
        let mut candidate = best.clone();
        let Some(chaos) = candidate.chaos.as_mut() else {
            return;
        };
        if *rate(chaos) == 0.0 {
            continue;
        }
        *rate(chaos) = 0.0;
        if search.fails(&candidate) {
            *best = candidate;
        }
    }
}

/// Halves each fault's outage (`restart_after_ms`) and duration (`for_ms`) while it still
/// fails.
fn shorten(best: &mut Scenario, search: &mut Search<'_>) {
    for i in 0..best.faults.len() {
        for field in [0, 1] {
            loop {
                let mut candidate = best.clone();
                let fault = &mut candidate.faults[i];
                let slot = if field == 0 {
                    &mut fault.restart_after_ms
                } else {
                    &mut fault.for_ms
                };
                match slot {
                    Some(ms) if *ms > 1 => *ms /= 2,
                    _ => break,
                }
                if search.fails(&candidate) {
                    *best = candidate;
                } else {
                    break;
                }
            }
        }
    }
}

/// Fewer executions (halving, then one less), where the expectations can follow: a single
/// expected status counting every execution scales down with them.
fn fewer_executions(best: &mut Scenario, search: &mut Search<'_>) {
    let scalable = best.expect.steps.is_empty()
        && best.expect.versions.is_empty()
        && best.workload.tenants.is_empty()
        && best.expect.status.len() <= 1
        && best
            .expect
            .status
            .values()
            .all(|&n| n == best.workload.executions);
    if !scalable {
        return;
    }
    'shrinking: loop {
        let n = best.workload.executions;
        // Halving first, then one less; the first that still fails is kept.
        let mut sizes = vec![n / 2, n - 1];
        sizes.dedup();
        for m in sizes.into_iter().filter(|&m| m > 0) {
            let mut candidate = best.clone();
            candidate.workload.executions = m;
            for count in candidate.expect.status.values_mut() {
                *count = m;
            }
            if search.fails(&candidate) {
                *best = candidate;
                continue 'shrinking;
            }
        }
        break;
    }
}

/// Drops steps from the process, last first, while it still fails: a leaf (no step depends on
/// it) that no fault or expectation names, as long as the process stays valid. Not with
/// definition changes or further definitions in the workload, which bring processes of their
/// own.
fn fewer_steps(best: &mut Scenario, search: &mut Search<'_>) {
    if !best.workload.versions.is_empty() || !best.workload.definitions.is_empty() {
        return;
    }
    let agents: Vec<String> = best.agents.keys().cloned().collect();
    let mut i = best.process.steps.len();
    while i > 0 && best.process.steps.len() > 1 {
        i -= 1;
        let id = best.process.steps[i].id.as_str();
        let lane = format!("{id}#");
        let named = best
            .process
            .steps
            .iter()
            .any(|s| s.depends_on.iter().any(|d| d == id))
            || best.expect.steps.contains_key(id)
            || best.faults.iter().any(|f| {
                f.step
                    .as_deref()
                    .is_some_and(|s| s == id || s.starts_with(&lane))
            });
        if named {
            continue;
        }
        let mut process = (*best.process).clone();
        process.steps.remove(i);
        if proctor::definition::validate("shrink", &process, Some(&agents)).is_err() {
            continue;
        }
        let mut candidate = best.clone();
        candidate.process = std::sync::Arc::new(process);
        if search.fails(&candidate) {
            *best = candidate;
        }
    }
}

/// The shrunk scenario as a file under `dir`: the original file with its faults, chaos,
/// workload size, expected statuses and seeds replaced, and its paths made relative to `dir`.
/// `replay_args` follow `--seed N` in the replay command of its header (`--plant BUG`).
/// Returns the file's path.
pub fn write(
    shrunk: &Shrunk,
    original: &Path,
    dir: &Path,
    replay_args: &str,
) -> std::io::Result<PathBuf> {
    use serde_norway::Value;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let text = std::fs::read_to_string(original)?;
    let mut file: Value = serde_norway::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    std::fs::create_dir_all(dir)?;
    let from = original.parent().unwrap_or(Path::new(".")).canonicalize()?;
    let to = dir.canonicalize()?;
    let s = &shrunk.scenario;
    let map = file
        .as_mapping_mut()
        .ok_or_else(|| invalid("a scenario file is a mapping".into()))?;
    let rebase = |v: &mut Value| {
        if let Some(p) = v.as_str() {
            *v = Value::from(relative(&from.join(p), &to).display().to_string());
        }
    };
    // The written name, and, with steps dropped, the shrunk process beside it.
    let name = format!("{}-shrunk-seed-{}", s.name, shrunk.seed);
    if shrunk.steps_after < shrunk.steps_before {
        let process_file = format!("{name}.process.yaml");
        let text = serde_norway::to_string(&*s.process).map_err(|e| invalid(e.to_string()))?;
        std::fs::write(dir.join(&process_file), text)?;
        map.insert("process".into(), process_file.into());
    } else if let Some(process) = map.get_mut("process") {
        rebase(process);
    }
    if let Some(workload) = map.get_mut("workload").and_then(Value::as_mapping_mut) {
        workload.insert("executions".into(), (s.workload.executions as u64).into());
        if let Some(defs) = workload
            .get_mut("definitions")
            .and_then(Value::as_sequence_mut)
        {
            defs.iter_mut().for_each(rebase);
        }
        if let Some(versions) = workload
            .get_mut("versions")
            .and_then(Value::as_sequence_mut)
        {
            for v in versions.iter_mut().filter_map(Value::as_mapping_mut) {
                if let Some(p) = v.get_mut("process") {
                    rebase(p);
                }
            }
        }
    }
    fn to_value<T: serde::Serialize>(v: &T) -> std::io::Result<serde_norway::Value> {
        serde_norway::to_value(v)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
    map.insert("faults".into(), to_value(&s.faults)?);
    match &s.chaos {
        Some(chaos) => map.insert("chaos".into(), to_value(chaos)?),
        None => map.remove("chaos"),
    };
    if let Some(expect) = map.get_mut("expect").and_then(Value::as_mapping_mut) {
        if !s.expect.status.is_empty() {
            expect.insert("status".into(), to_value(&s.expect.status)?);
        }
    }
    // A name of its own, so it can sit beside the original as a regression scenario.
    map.insert("name".into(), name.clone().into());
    map.insert("seeds".into(), (shrunk.seed + 1).into());
    let header = format!(
        "# Shrunk by `cargo xtask shrink` from {} with seed {}:\n# {}.\n# Replay: cargo xtask \
         repro {{path}} --seed {}{replay_args}\n",
        original.display(),
        shrunk.seed,
        shrunk.describe(),
        shrunk.seed,
    );
    let path = dir.join(format!("{name}.yaml"));
    let body = serde_norway::to_string(&file).map_err(|e| invalid(e.to_string()))?;
    let header = header.replace("{path}", &path.display().to_string());
    std::fs::write(&path, format!("{header}{body}"))?;
    Ok(path)
}

/// `target` as a path relative to the directory `base` (both absolute).
fn relative(target: &Path, base: &Path) -> PathBuf {
    let target: Vec<Component> = target.components().collect();
    let base: Vec<Component> = base.components().collect();
    let common = target.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..base.len() {
        path.push("..");
    }
    for c in &target[common..] {
        path.push(c);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative(
                Path::new("/r/scenarios/p/x.yaml"),
                Path::new("/r/target/shrunk")
            ),
            PathBuf::from("../../scenarios/p/x.yaml")
        );
        assert_eq!(
            relative(Path::new("/r/a.yaml"), Path::new("/r")),
            PathBuf::from("a.yaml")
        );
    }
}
