//! `pause_respected`: a paused execution starts nothing. Between an `ExecutionPaused` event
//! and the next `ExecutionResumed` (or the end of its history) no step starts: a call already
//! in flight may complete, and recovery may re-send it under its key, but no step, retry
//! attempt or next step begins until the execution is resumed — across engine restarts.

use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "pause_respected";
    for (execution, events) in &outcome.executions {
        let mut paused_at = None;
        for record in events {
            match &record.event {
                DomainEvent::ExecutionPaused => paused_at = Some(record.seq),
                DomainEvent::ExecutionResumed => paused_at = None,
                DomainEvent::StepStarted { step, .. } => {
                    if let Some(paused) = paused_at {
                        out.push(
                            Violation::new(
                                NAME,
                                format!(
                                    "started (event #{}) while paused since event #{paused}",
                                    record.seq
                                ),
                            )
                            .at(&execution.id, Some(step)),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}
