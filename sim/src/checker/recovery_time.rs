//! `recovered_in_time`: the scenario's time bounds on recovery, in simulated time (the
//! reference's "recovery within 5 s" and "checkpoint recovery within 1 s"). Checked only when
//! the scenario sets them:
//! - `expect.finish_within_ms`: every execution is terminal that long after the last fault;
//! - `expect.resume_within_ms`: after each engine restart, every execution that was
//!   unfinished records an event (its recovery, at least) within the bound.

use super::Violation;
use crate::runner::{Outcome, EPOCH_MS};
use crate::scenario::Scenario;

const NAME: &str = "recovered_in_time";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    let sim_ms = |at_ms: u64| at_ms.saturating_sub(EPOCH_MS);
    if let Some(bound) = scenario.expect.finish_within_ms {
        let deadline = outcome.window_end_ms + bound;
        for (execution, events) in &outcome.executions {
            let ended = events
                .last()
                .filter(|_| execution.status.is_terminal())
                .map(|e| sim_ms(e.at_ms));
            match ended {
                Some(at) if at <= deadline => {}
                Some(at) => out.push(
                    Violation::new(
                        NAME,
                        format!(
                            "finished at {at}ms, {}ms after the faults ended at {}ms (bound {bound}ms)",
                            at - outcome.window_end_ms,
                            outcome.window_end_ms
                        ),
                    )
                    .at(&execution.id, None),
                ),
                None => out.push(
                    Violation::new(NAME, format!("never finished (bound {bound}ms)"))
                        .at(&execution.id, None),
                ),
            }
        }
    }
    if let Some(bound) = scenario.expect.resume_within_ms {
        for &restart in &outcome.engine_restarts_ms {
            for (execution, events) in &outcome.executions {
                let started_before = events.first().is_some_and(|e| sim_ms(e.at_ms) < restart);
                let ended_before = execution.status.is_terminal()
                    && events.last().is_some_and(|e| sim_ms(e.at_ms) < restart);
                if !started_before || ended_before {
                    continue;
                }
                let next = events
                    .iter()
                    .map(|e| sim_ms(e.at_ms))
                    .find(|at| *at >= restart);
                match next {
                    Some(at) if at - restart <= bound => {}
                    Some(at) => out.push(
                        Violation::new(
                            NAME,
                            format!(
                                "first progress {}ms after the restart at {restart}ms (bound {bound}ms)",
                                at - restart
                            ),
                        )
                        .at(&execution.id, None),
                    ),
                    None => out.push(
                        Violation::new(
                            NAME,
                            format!("no progress after the restart at {restart}ms"),
                        )
                        .at(&execution.id, None),
                    ),
                }
            }
        }
    }
}
