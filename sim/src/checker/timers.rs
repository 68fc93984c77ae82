//! Invariant 7, `timers_not_early`: a timer step completes no earlier (simulated time) than
//! the deadline it recorded when it started — also when it was re-armed after a crash.

use proctor::definition::StepKind;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "timers_not_early";
    for (execution, events) in &outcome.executions {
        for def in &execution.process.steps {
            if !matches!(def.kind, StepKind::Timer(_)) {
                continue;
            }
            let deadline = events.iter().find_map(|e| match &e.event {
                DomainEvent::StepStarted {
                    step, wake_at_ms, ..
                } if *step == def.id => *wake_at_ms,
                _ => None,
            });
            let fired = events.iter().find_map(|e| match &e.event {
                DomainEvent::StepCompleted { step, .. } if *step == def.id => Some(e.at_ms),
                _ => None,
            });
            if let (Some(deadline), Some(fired)) = (deadline, fired) {
                if fired < deadline {
                    out.push(
                        Violation::new(
                            NAME,
                            format!(
                                "fired at {fired}, {}ms before its deadline",
                                deadline - fired
                            ),
                        )
                        .at(&execution.id, Some(&def.id)),
                    );
                }
            }
        }
    }
}
