//! `progress_relayed`: an agent's streamed progress reaches the right execution's history, in
//! order, only while its call is current. Each `AgentProgress` event names the execution,
//! step and attempt the agent was working on (the example agent echoes them in `data`); for
//! one step and attempt, the agent's report numbers (`data.n`) increase (they start over only
//! after a recovery, whose re-dispatched call reports afresh); and none is recorded after the
//! attempt ended (completed, failed, retried or cancelled) or before it started.

use std::collections::{BTreeMap, BTreeSet};

use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "progress_relayed";

pub(super) fn check(_scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    for (execution, events) in &outcome.executions {
        let id = execution.id.as_str();
        let mut started: BTreeSet<(String, u32)> = BTreeSet::new();
        let mut ended: BTreeSet<(String, u32)> = BTreeSet::new();
        let mut last_n: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for record in events {
            match &record.event {
                DomainEvent::StepStarted { step, attempt, .. }
                | DomainEvent::CompensationStepStarted { step, attempt } => {
                    let wire = match &record.event {
                        DomainEvent::CompensationStepStarted { .. } => format!("{step}#compensate"),
                        _ => step.clone(),
                    };
                    started.insert((wire, *attempt));
                }
                DomainEvent::ItemStarted {
                    step,
                    index,
                    attempt,
                } => {
                    started.insert((format!("{step}#{index}"), *attempt));
                }
                DomainEvent::StepCompleted { step, attempt, .. }
                | DomainEvent::StepFailed { step, attempt, .. }
                | DomainEvent::StepCancelled { step, attempt } => {
                    ended.insert((step.clone(), *attempt));
                }
                DomainEvent::StepRetrying {
                    step, next_attempt, ..
                } => {
                    ended.insert((step.clone(), next_attempt.saturating_sub(1)));
                }
                DomainEvent::ExecutionRecovered { .. } => last_n.clear(),
                DomainEvent::AgentProgress {
                    step,
                    attempt,
                    kind,
                    data,
                } => {
                    let here = || Violation::new(NAME, String::new()).at(id, Some(step));
                    let key = (step.clone(), *attempt);
                    let said = |field: &str| data.get(field).cloned();
                    if said("execution_id").is_some_and(|v| v != id)
                        || said("step").is_some_and(|v| v != step.as_str())
                        || said("attempt").is_some_and(|v| v != *attempt)
                    {
                        out.push(Violation {
                            detail: format!(
                                "#{} {kind} (attempt {attempt}) carries another call's report: {data}",
                                record.seq
                            ),
                            ..here()
                        });
                    }
                    if !started.contains(&key) {
                        out.push(Violation {
                            detail: format!(
                                "#{} {kind} recorded before attempt {attempt} started",
                                record.seq
                            ),
                            ..here()
                        });
                    }
                    if ended.contains(&key) {
                        out.push(Violation {
                            detail: format!(
                                "#{} {kind} recorded after attempt {attempt} ended",
                                record.seq
                            ),
                            ..here()
                        });
                    }
                    if let Some(n) = data.get("n").and_then(|n| n.as_u64()) {
                        let last = last_n.insert(key, n).unwrap_or(0);
                        if n <= last {
                            out.push(Violation {
                                detail: format!(
                                    "#{} {kind} is report {n} after report {last}: out of order",
                                    record.seq
                                ),
                                ..here()
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
