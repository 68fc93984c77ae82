//! Invariant 7, `timers_not_early`: a timer step completes no earlier (simulated time) than
//! the deadline it recorded when it started — also when it was re-armed after a crash.
//!
//! `timers_not_late`: a timer step completes within [`TIMER_SLACK_MS`] of becoming due, that is
//! of the later of its recorded deadline and the last time the engine re-armed it (the
//! execution's last `ExecutionRecovered` before it fired: every boot's recovery and every
//! reload after a failed storage write records one, and re-arms the timer at its stored
//! deadline). A due wake-up costs the engine no simulated time (the sleep ends, the input is
//! applied and committed), and a storage failure on the way ends in such a re-arming, so the
//! slack only absorbs scheduling; it is the reference's 1 s bound on resuming after a restart.
//! Proves a restart resumes a timer where it was, not from the start. Not checked in runs with
//! a `clock_jump_ms` fault: a jump of the engine's wall clock makes the wake-ups armed before
//! it fire late by the jump, by design (they never fire early).

use proctor::definition::StepKind;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

/// How long after it became due a timer may fire (engine clock ms).
pub const TIMER_SLACK_MS: u64 = 1_000;

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const EARLY: &str = "timers_not_early";
    const LATE: &str = "timers_not_late";
    let clock_jumps = scenario.faults.iter().any(|f| f.clock_jump_ms.is_some());
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
            let fired = events.iter().position(
                |e| matches!(&e.event, DomainEvent::StepCompleted { step, .. } if *step == def.id),
            );
            let (Some(deadline), Some(fired)) = (deadline, fired) else {
                continue;
            };
            let fired_at = events[fired].at_ms;
            if fired_at < deadline {
                out.push(
                    Violation::new(
                        EARLY,
                        format!(
                            "fired at {fired_at}, {}ms before its deadline",
                            deadline - fired_at
                        ),
                    )
                    .at(&execution.id, Some(&def.id)),
                );
            }
            if clock_jumps {
                continue;
            }
            let rearmed = events[..fired].iter().rev().find_map(|e| match e.event {
                DomainEvent::ExecutionRecovered { .. } => Some(e.at_ms),
                _ => None,
            });
            let due = rearmed.map_or(deadline, |r| r.max(deadline));
            let late = fired_at.saturating_sub(due);
            if late > TIMER_SLACK_MS {
                let rearmed = rearmed.map_or_else(
                    || "never re-armed".to_string(),
                    |r| format!("last re-armed at {r}"),
                );
                out.push(
                    Violation::new(
                        LATE,
                        format!(
                            "fired at {fired_at}, {late}ms after it was due at {due} (deadline \
                             {deadline}, {rearmed}; bound {TIMER_SLACK_MS}ms)"
                        ),
                    )
                    .at(&execution.id, Some(&def.id)),
                );
            }
        }
    }
}
