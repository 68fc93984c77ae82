//! `progress_monotonic` (with `workload.monitor`): the progress the client sees for an
//! execution (`Execution::progress`, the share of its steps decided) never goes back, across
//! crashes and recovery, and ends at 100% for a completed execution. Proves monitoring reads
//! durable state, not a view a restart can rewind.

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "progress_monotonic";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    if !scenario.workload.monitor {
        return;
    }
    for (execution, _) in &outcome.executions {
        let seen = outcome
            .progress
            .get(&execution.id)
            .cloned()
            .unwrap_or_default();
        let last = execution.progress().percent;
        if let Some(w) = seen.windows(2).find(|w| w[1] < w[0]) {
            out.push(
                Violation::new(
                    NAME,
                    format!("progress went back from {}% to {}%", w[0], w[1]),
                )
                .at(&execution.id, None),
            );
        }
        if seen.last().is_some_and(|&p| p > last) {
            out.push(
                Violation::new(NAME, format!("saw {seen:?}, but it ended at {last}%"))
                    .at(&execution.id, None),
            );
        }
        if execution.status == proctor::core::ExecutionStatus::Completed && last != 100 {
            out.push(Violation::new(NAME, format!("completed at {last}%")).at(&execution.id, None));
        }
    }
}
