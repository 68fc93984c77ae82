//! Invariant 2, `effect_at_most_once`: a step is recorded completed at most once per
//! execution, and an agent applies each idempotency key's effect at most once. Proves that
//! re-dispatching a step after a crash (same key) never doubles its effect, and that a late
//! result never completes a step twice.

use std::collections::BTreeMap;

use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "effect_at_most_once";
    for (execution, events) in &outcome.executions {
        let mut completed: BTreeMap<&str, usize> = BTreeMap::new();
        for e in events {
            if let DomainEvent::StepCompleted { step, .. } = &e.event {
                *completed.entry(step).or_insert(0) += 1;
            }
        }
        for (step, n) in completed {
            if n > 1 {
                out.push(
                    Violation::new(NAME, format!("StepCompleted recorded {n} times"))
                        .at(&execution.id, Some(step)),
                );
            }
        }
    }
    for (agent, ledger) in &outcome.ledgers {
        for (key, n) in &ledger.effects {
            if *n > 1 {
                out.push(Violation::new(
                    NAME,
                    format!("agent {agent} applied key {key} {n} times"),
                ));
            }
        }
    }
}
