//! Invariant 4, `history_well_formed`: each execution's events are numbered 1..n without gaps,
//! timestamps never go back, the history opens with the execution starting (or being forked)
//! and holds exactly one terminal event, last, matching the stored status; it started as the
//! definition version it is stored with (an execution stays pinned to its version). Proves events are
//! committed with the transitions they describe, across crashes.

use proctor::core::ExecutionStatus;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "history_well_formed";
    for (execution, events) in &outcome.executions {
        let id = execution.id.as_str();
        let mut fail = |detail: String| out.push(Violation::new(NAME, detail).at(id, None));
        for (i, e) in events.iter().enumerate() {
            if e.seq != i as u64 + 1 {
                fail(format!("event {} has seq {}", i + 1, e.seq));
                break;
            }
        }
        if events.windows(2).any(|w| w[1].at_ms < w[0].at_ms) {
            fail("timestamps go backwards".into());
        }
        for e in events {
            if let DomainEvent::ExecutionStarted { version, .. } = &e.event {
                if *version != execution.process.version {
                    fail(format!(
                        "started as version {version}, stored as version {}",
                        execution.process.version
                    ));
                }
            }
        }
        // An audit event leads the change it records; the history opens with that change.
        let opening = events
            .iter()
            .find(|e| !matches!(e.event, DomainEvent::Audit { .. }));
        match opening.map(|e| &e.event) {
            Some(DomainEvent::ExecutionStarted { .. } | DomainEvent::ExecutionForked { .. }) => {}
            Some(DomainEvent::ExecutionCancelled { .. }) => {}
            Some(DomainEvent::ExecutionRecovered { .. }) => {}
            None if execution.status == ExecutionStatus::Pending => {}
            other => fail(format!(
                "history opens with {}",
                other.map_or("nothing", |e| e.kind())
            )),
        }
        let terminal: Vec<(usize, ExecutionStatus)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.event {
                DomainEvent::ExecutionCompleted { .. } => Some((i, ExecutionStatus::Completed)),
                DomainEvent::ExecutionFailed { .. } => Some((i, ExecutionStatus::Failed)),
                DomainEvent::ExecutionCancelled { .. } => Some((i, ExecutionStatus::Cancelled)),
                _ => None,
            })
            .collect();
        match terminal.as_slice() {
            [] if !execution.status.is_terminal() => {}
            [(i, status)] if *i + 1 == events.len() && *status == execution.status => {}
            _ => fail(format!(
                "terminal events {terminal:?} of {} events, stored status {}",
                events.len(),
                execution.status
            )),
        }
    }
}
