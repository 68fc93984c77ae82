//! Invariant 3, `dependencies_respected`: no step started before every dependency finished
//! (completed, skipped or failed, in an earlier event), and a completed gateway took exactly
//! one route: its targets on other routes were skipped, never started. Proves the scheduler's
//! join and routing rules hold under reordering, retries and recovery.

use std::collections::BTreeMap;

use proctor::definition::StepKind;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "dependencies_respected";
    let process = &scenario.process;
    for (execution, events) in &outcome.executions {
        // The seq at which each step finished (first terminal event).
        let mut finished: BTreeMap<&str, u64> = BTreeMap::new();
        let mut started: Vec<(&str, u64)> = Vec::new();
        for e in events {
            match &e.event {
                DomainEvent::StepCompleted { step, .. }
                | DomainEvent::StepSkipped { step, .. }
                | DomainEvent::StepFailed { step, .. } => {
                    finished.entry(step).or_insert(e.seq);
                }
                DomainEvent::StepStarted {
                    step, attempt: 1, ..
                } => started.push((step, e.seq)),
                _ => {}
            }
        }
        for (step, seq) in started {
            let Some(def) = process.steps.iter().find(|s| s.id == step) else {
                continue;
            };
            for dep in &def.depends_on {
                if finished.get(dep.as_str()).is_none_or(|&f| f > seq) {
                    out.push(
                        Violation::new(
                            NAME,
                            format!("started at event {seq} before dependency '{dep}' finished"),
                        )
                        .at(&execution.id, Some(step)),
                    );
                }
            }
        }
        for (def, state) in process.steps.iter().zip(&execution.steps) {
            let StepKind::Gateway(gateway) = &def.kind else {
                continue;
            };
            let Some(route) = state.output.as_ref().and_then(|o| o.get("route")) else {
                continue;
            };
            let taken: Vec<&str> = route
                .as_array()
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let targets = gateway
                .routes
                .iter()
                .flat_map(|r| &r.to)
                .chain(&gateway.default);
            for target in targets.filter(|t| !taken.contains(&t.as_str())) {
                let ran = events.iter().any(
                    |e| matches!(&e.event, DomainEvent::StepStarted { step, .. } if step == target),
                );
                if ran {
                    out.push(
                        Violation::new(
                            NAME,
                            format!("gateway took {taken:?} but '{target}' ran too"),
                        )
                        .at(&execution.id, Some(&def.id)),
                    );
                }
            }
        }
    }
}
