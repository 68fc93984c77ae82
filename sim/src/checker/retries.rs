//! `retries_within_policy`: no call is attempted more often than its retry policy allows. A
//! step's attempts (`StepStarted`) stay within its `retry.max_attempts` (other kinds of step
//! have one attempt), a `foreach` item's (`ItemStarted`) within its loop's, and a compensating
//! action's (`CompensationStepStarted`) within its `compensate.retry.max_attempts`. A call
//! re-dispatched after a restart keeps its attempt number, so crashes add none. Proves retries,
//! and a saga's undoing, stop where the policy says (a failed undo ends the compensation).

use proctor::definition::StepKind;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "retries_within_policy";

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    for (execution, events) in &outcome.executions {
        let kind = |step: &str| {
            execution
                .process
                .steps
                .iter()
                .find(|s| s.id == step)
                .map(|s| &s.kind)
        };
        for e in events {
            let (step, attempt, what, allowed) = match &e.event {
                DomainEvent::StepStarted { step, attempt, .. } => {
                    let allowed = kind(step)
                        .and_then(StepKind::call_retry)
                        .map_or(1, |retry| retry.max_attempts);
                    (step, *attempt, "attempt", allowed)
                }
                DomainEvent::ItemStarted { step, attempt, .. } => {
                    let Some(StepKind::Foreach(each)) = kind(step) else {
                        continue;
                    };
                    (step, *attempt, "item attempt", each.retry.max_attempts)
                }
                DomainEvent::CompensationStepStarted { step, attempt } => {
                    let Some(StepKind::AgentTask(task)) = kind(step) else {
                        continue;
                    };
                    let Some(undo) = &task.compensate else {
                        continue;
                    };
                    (
                        step,
                        *attempt,
                        "compensation attempt",
                        undo.retry.max_attempts,
                    )
                }
                _ => continue,
            };
            if attempt > allowed {
                out.push(
                    Violation::new(
                        NAME,
                        format!(
                            "{what} {attempt} started at event {}, but its retry policy allows \
                             {allowed}",
                            e.seq
                        ),
                    )
                    .at(&execution.id, Some(step)),
                );
            }
        }
    }
}
