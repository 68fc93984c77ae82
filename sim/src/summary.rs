//! A run's outcome in brief, as one serialisable value: what `proctor-sim run --json` prints,
//! what `cargo xtask chaos` aggregates, and what the scenario tests snapshot (every field is a
//! function of the seed, never of the wall clock, and maps are ordered).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checker;
use crate::runner::Outcome;

/// `fault × state` pairs that a sweep over every scenario must hit at least once (`cargo xtask
/// chaos` fails otherwise): a crash of the engine in each state a crash can find it in, a power
/// cut inside a write, and each kind of storage fault while a step runs. Not listed:
/// `between_steps`, which the engine never leaves durable (the transition that finishes a step
/// starts its successors), and faults met while the engine is down.
pub const REQUIRED_COVERAGE: &[&str] = &[
    "engine_crash × step_running",
    "engine_crash × retry_backoff",
    "engine_crash × timer_pending",
    "engine_crash × paused",
    "engine_crash × compensating",
    "engine_crash × recovering",
    "engine_crash × created",
    "engine_crash × idle",
    "power_cut × in_write",
    "power_cut × recovering",
    "partition × step_running",
    "io_error × step_running",
    "ambiguous_commit × step_running",
    "disk_full × step_running",
    "sync_error × step_running",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub passed: bool,
    pub simulated_ms: u64,
    pub engine_boots: u32,
    pub acknowledged: usize,
    /// Starts answered with the execution their idempotency key had already created.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replayed_starts: usize,
    /// Final statuses of the acknowledged executions, counted.
    pub statuses: BTreeMap<String, usize>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Fault kinds the seed's chaos enabled (empty without chaos).
    pub chaos_kinds: Vec<String>,
    pub storage_writes: u64,
    /// Requests each agent received (attempts included).
    pub agent_requests: BTreeMap<String, usize>,
    pub events: usize,
    /// Invariants checked (each over every execution of the run).
    pub invariants_checked: usize,
    pub trace_lines: usize,
    /// FNV-1a of the trace, hex.
    pub trace_hash: String,
    pub violations: Vec<String>,
    pub repro: String,
    /// Fault coverage: `fault × engine state` for each state a fault met (see
    /// `runner::engine_states`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<String>,
    /// Schedule scenarios: each fire, `name local (utc) outcome`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule_fires: Vec<String>,
}

impl Summary {
    pub fn of(outcome: &Outcome) -> Summary {
        Summary {
            scenario: outcome.scenario.clone(),
            seed: outcome.seed,
            passed: outcome.passed(),
            simulated_ms: outcome.elapsed_ms,
            engine_boots: outcome.engine_boots,
            acknowledged: outcome.acknowledged.len(),
            replayed_starts: outcome.starts.iter().filter(|s| !s.created).count(),
            statuses: outcome.status_counts(),
            faults: outcome.faults.clone(),
            chaos_kinds: outcome.chaos_kinds.clone(),
            storage_writes: outcome.storage_writes,
            agent_requests: outcome
                .ledgers
                .iter()
                .map(|(name, l)| (name.clone(), l.requests.len()))
                .collect(),
            events: outcome.executions.iter().map(|(_, e)| e.len()).sum(),
            invariants_checked: checker::NAMES.len(),
            trace_lines: outcome.trace.lines.len(),
            trace_hash: format!("{:016x}", outcome.trace.hash()),
            violations: outcome.violations.iter().map(|v| v.to_string()).collect(),
            repro: outcome.repro(),
            coverage: outcome.coverage.iter().cloned().collect(),
            schedule_fires: outcome.schedule_fires.clone(),
        }
    }

    /// One line for a human.
    pub fn line(&self) -> String {
        format!(
            "scenario {} seed {}: {} simulated ms, {} engine boots, faults {:?}, statuses {:?}, trace hash {}",
            self.scenario,
            self.seed,
            self.simulated_ms,
            self.engine_boots,
            self.faults,
            self.statuses,
            self.trace_hash
        )
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
