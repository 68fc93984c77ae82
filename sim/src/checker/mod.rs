//! The invariants (DESIGN §4), checked after every run, one module each. A violation names
//! the invariant, the execution and step where it broke, and what was seen.
//!
//! Invariant 8 (determinism) compares two runs, so it lives with the scenario tests.

mod compensation;
mod dependencies;
mod durable_state;
mod expected;
mod history;
mod idempotency;
mod liveness;
mod mail;
mod once;
mod pause;
mod progress;
mod recovery_age;
mod recovery_time;
mod relay;
mod retention;
mod retries;
mod stream;
mod tenants;
mod timers;

use std::fmt;

pub(crate) use liveness::unfinished_steps;

use crate::runner::Outcome;
use crate::scenario::Scenario;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub execution: Option<String>,
    pub step: Option<String>,
    pub detail: String,
}

impl Violation {
    fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            execution: None,
            step: None,
            detail: detail.into(),
        }
    }

    fn at(mut self, execution: &str, step: Option<&str>) -> Violation {
        self.execution = Some(execution.to_string());
        self.step = step.map(str::to_string);
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant `{}` violated", self.invariant)?;
        if let Some(e) = &self.execution {
            write!(f, " in execution {e}")?;
        }
        if let Some(s) = &self.step {
            write!(f, " at step '{s}'")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The invariants every run is checked against, by name.
pub const NAMES: &[&str] = &[
    "no_lost_execution",
    "effect_at_most_once",
    "dependencies_respected",
    "history_well_formed",
    "compensation_in_reverse_order",
    "state_matches_history",
    "timers_not_early",
    "recovered_in_time",
    "scripted_faults_fired",
    "expected_outcome",
    "tenant_isolation",
    "retention_respected",
    "progress_monotonic",
    "idempotent_starts",
    "progress_relayed",
    "stream_complete",
    "timers_not_late",
    "age_limit_respected",
    "retries_within_policy",
    "pause_respected",
    "mail_delivered",
];

/// Runs every checker.
pub fn check_all(scenario: &Scenario, outcome: &Outcome) -> Vec<Violation> {
    let mut out = Vec::new();
    liveness::check(scenario, outcome, &mut out);
    once::check(scenario, outcome, &mut out);
    dependencies::check(scenario, outcome, &mut out);
    history::check(scenario, outcome, &mut out);
    compensation::check(scenario, outcome, &mut out);
    durable_state::check(scenario, outcome, &mut out);
    timers::check(scenario, outcome, &mut out);
    recovery_time::check(scenario, outcome, &mut out);
    expected::check(scenario, outcome, &mut out);
    tenants::check(scenario, outcome, &mut out);
    retention::check(scenario, outcome, &mut out);
    progress::check(scenario, outcome, &mut out);
    idempotency::check(scenario, outcome, &mut out);
    relay::check(scenario, outcome, &mut out);
    stream::check(scenario, outcome, &mut out);
    recovery_age::check(scenario, outcome, &mut out);
    retries::check(scenario, outcome, &mut out);
    pause::check(scenario, outcome, &mut out);
    mail::check(scenario, outcome, &mut out);
    for fault in &outcome.unfired {
        // Not an engine invariant: the run proves less than the scenario claims.
        out.push(Violation::new(
            "scripted_faults_fired",
            format!("the crash {fault} never fired: lower `nth` or lengthen the workload"),
        ));
    }
    out
}
