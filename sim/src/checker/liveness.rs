//! Invariant 1, `no_lost_execution`: every execution the client saw acknowledged exists in
//! durable storage and, after the liveness phase, is terminal. Proves that crashes and partitions lose no acknowledged work and
//! that the system converges once faults stop.

use proctor::core::Execution;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "no_lost_execution";
    if let Some(error) = &outcome.sim_error {
        out.push(Violation::new(NAME, error.clone()));
    }
    if outcome.acknowledged.len() != scenario.workload.executions {
        out.push(Violation::new(
            NAME,
            format!(
                "{} of {} executions were acknowledged",
                outcome.acknowledged.len(),
                scenario.workload.executions
            ),
        ));
    }
    for id in &outcome.acknowledged {
        match outcome.executions.iter().find(|(e, _)| &e.id == id) {
            // A retention purge may delete it (`retention_respected` checks that it was right to).
            None if outcome.purge_candidates.iter().any(|p| &p.id == id) => {}
            None => out.push(Violation::new(NAME, "acknowledged but not in storage").at(id, None)),
            Some((e, _)) if !e.status.is_terminal() => {
                out.push(
                    Violation::new(
                        NAME,
                        format!("stuck {} (steps {})", e.status, unfinished_steps(e)),
                    )
                    .at(id, None),
                );
            }
            Some(_) => {}
        }
    }
}

/// The steps of `e` that have not ended, as `id=status, ...`: where a stuck execution waits.
pub(crate) fn unfinished_steps(e: &Execution) -> String {
    let steps: Vec<String> = e
        .process
        .steps
        .iter()
        .zip(&e.steps)
        .filter(|(_, s)| !s.status.is_terminal())
        .map(|(d, s)| format!("{}={}", d.id, s.status))
        .collect();
    steps.join(", ")
}
