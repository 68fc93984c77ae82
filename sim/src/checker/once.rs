//! Invariant 2, `effect_at_most_once`: a step is recorded completed at most once per
//! execution, a signal (by its sender's id) is received at most once, an agent applies each idempotency key's effect at most once, and no step's
//! effect is applied under two keys. Proves that
//! re-dispatching a step after a crash (same key) never doubles its effect, and that a late
//! result never completes a step twice.

use std::collections::{BTreeMap, BTreeSet};

use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "effect_at_most_once";
    for (execution, events) in &outcome.executions {
        let mut completed: BTreeMap<&str, usize> = BTreeMap::new();
        let mut signals: BTreeSet<&str> = BTreeSet::new();
        for e in events {
            match &e.event {
                DomainEvent::StepCompleted { step, .. } => {
                    *completed.entry(step).or_insert(0) += 1;
                }
                DomainEvent::SignalReceived { signal_id, .. } if !signals.insert(signal_id) => {
                    out.push(
                        Violation::new(NAME, format!("signal {signal_id} received twice"))
                            .at(&execution.id, None),
                    );
                }
                _ => {}
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
        // The agent applies a key's effect once, however often it is sent; what the engine
        // must guarantee is that one step never reaches an agent under two keys (a fresh key
        // on a retry or after a crash would apply the step's effect twice).
        let mut keys_per_step: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
        for request in &ledger.requests {
            if ledger.effects.get(&request.idempotency_key).copied() > Some(0) {
                keys_per_step
                    .entry((&request.execution_id, &request.step_id))
                    .or_default()
                    .insert(&request.idempotency_key);
            }
        }
        for ((execution, step), keys) in keys_per_step {
            if keys.len() > 1 {
                let keys: Vec<&str> = keys.into_iter().collect();
                out.push(
                    Violation::new(
                        NAME,
                        format!(
                            "agent {agent} applied the step's effect under {} keys: {}",
                            keys.len(),
                            keys.join(", ")
                        ),
                    )
                    .at(execution, Some(step)),
                );
            }
        }
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
