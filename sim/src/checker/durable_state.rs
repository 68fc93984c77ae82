//! Invariant 6, `state_matches_history`: each step's stored status is the one its last event
//! implies (no event: pending). Proves the state rows and the history are written in one
//! transaction and that recovery resumes from state consistent with what was acknowledged.

use proctor::core::StepStatus;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "state_matches_history";
    for (execution, events) in &outcome.executions {
        for (def, state) in execution.process.steps.iter().zip(&execution.steps) {
            let implied = events
                .iter()
                .rev()
                .find_map(|e| match &e.event {
                    DomainEvent::StepStarted { step, .. } if *step == def.id => {
                        Some(StepStatus::Running)
                    }
                    DomainEvent::StepCompleted { step, .. } if *step == def.id => {
                        Some(StepStatus::Completed)
                    }
                    DomainEvent::StepFailed { step, .. } if *step == def.id => {
                        Some(StepStatus::Failed)
                    }
                    DomainEvent::StepRetrying { step, .. } if *step == def.id => {
                        Some(StepStatus::Retrying)
                    }
                    DomainEvent::StepSkipped { step, .. } if *step == def.id => {
                        Some(StepStatus::Skipped)
                    }
                    DomainEvent::StepCancelled { step, .. } if *step == def.id => {
                        Some(StepStatus::Cancelled)
                    }
                    DomainEvent::StepCompensated { step, .. } if *step == def.id => {
                        Some(StepStatus::Compensated)
                    }
                    _ => None,
                })
                .unwrap_or(StepStatus::Pending);
            if implied != state.status {
                out.push(
                    Violation::new(
                        NAME,
                        format!("stored {} but its history says {implied}", state.status),
                    )
                    .at(&execution.id, Some(&def.id)),
                );
            }
        }
    }
}
