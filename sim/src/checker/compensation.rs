//! Invariant 5, `compensation_in_reverse_order`: an execution compensates at most once; the
//! order it announces is exactly its completed steps that have a compensating action, latest
//! completion first; compensating actions start one at a time, in that order, each only after
//! the one before it was compensated; each step is compensated at most once, and only after
//! it completed (the agents' side, one effect per compensation key, is `effect_at_most_once`'s). Proves sagas unwind
//! in the right order across crashes, retries and storage faults.

use std::collections::BTreeMap;

use proctor::definition::StepKind;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "compensation_in_reverse_order";

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    for (execution, events) in &outcome.executions {
        let id = execution.id.as_str();
        let compensable = |step: &str| {
            execution.process.steps.iter().any(|s| {
                s.id == step && matches!(&s.kind, StepKind::AgentTask(t) if t.compensate.is_some())
            })
        };
        // Completion order as the history records it.
        let mut completed: Vec<&str> = Vec::new();
        let mut order: Option<&[String]> = None;
        let mut compensated: BTreeMap<&str, usize> = BTreeMap::new();
        for e in events {
            match &e.event {
                DomainEvent::StepCompleted { step, .. } => completed.push(step),
                DomainEvent::CompensationStarted { steps, .. } => {
                    if order.is_some() {
                        out.push(Violation::new(NAME, "compensation started twice").at(id, None));
                        break;
                    }
                    let expected: Vec<&str> = completed
                        .iter()
                        .rev()
                        .copied()
                        .filter(|s| compensable(s))
                        .collect();
                    if steps
                        .iter()
                        .map(String::as_str)
                        .ne(expected.iter().copied())
                    {
                        out.push(
                            Violation::new(
                                NAME,
                                format!(
                                    "compensation order {steps:?}, but the steps completed \
                                     (with a compensating action) in the order {:?}",
                                    expected.iter().rev().collect::<Vec<_>>()
                                ),
                            )
                            .at(id, None),
                        );
                    }
                    order = Some(steps);
                }
                DomainEvent::CompensationStepStarted { step, .. } => {
                    let Some(order) = order else {
                        out.push(
                            Violation::new(NAME, "compensating action before CompensationStarted")
                                .at(id, Some(step)),
                        );
                        continue;
                    };
                    // Everything before it in the order must be compensated already.
                    let before = order.iter().take_while(|s| *s != step);
                    let waiting: Vec<&String> = before
                        .filter(|s| !compensated.contains_key(s.as_str()))
                        .collect();
                    if !order.contains(step) || !waiting.is_empty() {
                        out.push(
                            Violation::new(
                                NAME,
                                format!(
                                    "compensating action started out of order (order {order:?}, \
                                     not yet compensated before it: {waiting:?})"
                                ),
                            )
                            .at(id, Some(step)),
                        );
                    }
                }
                DomainEvent::StepCompensated { step, .. } => {
                    let n = compensated.entry(step).or_insert(0);
                    *n += 1;
                    if *n == 2 {
                        out.push(Violation::new(NAME, "step compensated twice").at(id, Some(step)));
                    }
                    if !completed.contains(&step.as_str()) {
                        out.push(
                            Violation::new(NAME, "compensated a step that never completed")
                                .at(id, Some(step)),
                        );
                    }
                }
                DomainEvent::CompensationCompleted { steps } => {
                    let missing: Vec<&String> = steps
                        .iter()
                        .filter(|s| !compensated.contains_key(s.as_str()))
                        .collect();
                    if !missing.is_empty() {
                        out.push(
                            Violation::new(
                                NAME,
                                format!("CompensationCompleted while {missing:?} were not"),
                            )
                            .at(id, None),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}
