//! Invariant 7, `timers_not_early`, and `timers_not_late`: a timer step fires when it is due,
//! measured in simulated (monotonic) time, not on the engine's wall clock, which clock jumps
//! move.
//!
//! A timer is *armed* when it starts (`StepStarted`, which records its wall-clock deadline) and
//! re-armed at every later `ExecutionRecovered` before it fires (every boot's recovery and
//! every reload after a failed storage write records one, and re-arms it at its stored
//! deadline). At its last arming the engine's clock read `armed_at` (reconstructed from the
//! simulated time and the clock's offsets, since event stamps never go back); what was left of
//! the wait then, `deadline - armed_at`, but never more than the timer's duration (the engine
//! caps a re-armed wait so that a clock stepped back cannot stretch it), must pass in simulated
//! time before it fires (`timers_not_early`), and it must fire within [`TIMER_SLACK_MS`] after
//! that (`timers_not_late`). So a jump of the wall clock, forward or back, during a wait changes
//! nothing (the engine measures a running wait on a monotonic timer), and a restart resumes a
//! timer where it was, not from the start.
//! A due wake-up costs the engine no simulated time; the slack absorbs scheduling, and is the
//! reference's 1 s bound on resuming after a restart.

use proctor::definition::StepKind;
use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

/// How long after it became due a timer may fire (simulated ms).
pub const TIMER_SLACK_MS: u64 = 1_000;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const EARLY: &str = "timers_not_early";
    const LATE: &str = "timers_not_late";
    for (execution, events) in &outcome.executions {
        let sim_ms = |seq: u64| {
            outcome
                .event_sim_ms
                .get(&(execution.id.clone(), seq))
                .copied()
        };
        for def in &execution.process.steps {
            if !matches!(def.kind, StepKind::Timer(_)) {
                continue;
            }
            let started = events.iter().position(
                |e| matches!(&e.event, DomainEvent::StepStarted { step, .. } if *step == def.id),
            );
            let fired = events.iter().position(
                |e| matches!(&e.event, DomainEvent::StepCompleted { step, .. } if *step == def.id),
            );
            let (Some(started), Some(fired)) = (started, fired) else {
                continue;
            };
            let DomainEvent::StepStarted {
                wake_at_ms: Some(deadline),
                ..
            } = events[started].event
            else {
                continue;
            };
            let armed = events[started..fired]
                .iter()
                .rev()
                .find(|e| matches!(e.event, DomainEvent::ExecutionRecovered { .. }))
                .unwrap_or(&events[started]);
            // Events published by a life that then died unseen have no simulated time; the
            // durable history alone cannot place them.
            let (Some(armed_sim), Some(fired_sim)) = (sim_ms(armed.seq), sim_ms(events[fired].seq))
            else {
                continue;
            };
            let duration_ms = match &def.kind {
                StepKind::Timer(timer) => timer.duration.as_ref().map(|d| d.as_millis()),
                _ => None,
            };
            let armed_at = outcome.engine_clock_at(armed_sim);
            let left_ms = deadline
                .saturating_sub(armed_at)
                .min(duration_ms.unwrap_or(u64::MAX));
            let due_sim = armed_sim + left_ms;
            let what = if armed.seq == events[started].seq {
                "started".to_string()
            } else {
                format!("re-armed (event #{})", armed.seq)
            };
            if fired_sim < due_sim {
                out.push(
                    Violation::new(
                        EARLY,
                        format!(
                            "fired {}ms early: {what} at simulated {armed_sim}ms with {left_ms}ms \
                             left to its deadline {deadline}, fired at simulated {fired_sim}ms",
                            due_sim - fired_sim
                        ),
                    )
                    .at(&execution.id, Some(&def.id)),
                );
            } else if fired_sim - due_sim > TIMER_SLACK_MS {
                out.push(
                    Violation::new(
                        LATE,
                        format!(
                            "fired {}ms after it was due: {what} at simulated {armed_sim}ms with \
                             {left_ms}ms left to its deadline {deadline}, fired at simulated \
                             {fired_sim}ms (bound {TIMER_SLACK_MS}ms)",
                            fired_sim - due_sim
                        ),
                    )
                    .at(&execution.id, Some(&def.id)),
                );
            }
        }
    }
}
