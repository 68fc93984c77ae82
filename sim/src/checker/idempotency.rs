//! `idempotent_starts`: an idempotency key never yields two executions. Every answer the
//! client got for one key names the same execution, the durable store holds exactly one
//! execution under each key the client used, an answer that said "created" was given at
//! most once per key, and no execution of the workload's process exists that no answer (nor
//! a schedule, nor a parent) accounts for. Proves that a start retried across engine crashes, lost replies and
//! ambiguous commits lands once. (An execution a retention purge deleted is gone with its key.)

use std::collections::BTreeMap;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "idempotent_starts";

pub(super) fn check(_scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    for id in &outcome.unclaimed {
        out.push(
            Violation::new(
                NAME,
                "exists in the store, but no start was answered with it \
                 (a second execution for a retried start?)",
            )
            .at(id, None),
        );
    }
    let mut answers: BTreeMap<&str, Vec<&crate::runner::StartAck>> = BTreeMap::new();
    for start in &outcome.starts {
        answers.entry(start.key.as_str()).or_default().push(start);
    }
    for (key, acks) in &answers {
        let first = &acks[0].id;
        // A retention purge deletes finished executions, keys and all.
        let purged = outcome.purge_candidates.iter().any(|p| &p.id == first);
        if let Some(other) = acks.iter().find(|a| &a.id != first) {
            out.push(
                Violation::new(
                    NAME,
                    format!("key {key} was answered with {first} and with {}", other.id),
                )
                .at(first, None),
            );
        }
        let created = acks.iter().filter(|a| a.created).count();
        if created > 1 {
            out.push(
                Violation::new(
                    NAME,
                    format!("key {key} was answered 'created' {created} times"),
                )
                .at(first, None),
            );
        }
        match outcome.keyed.get(*key).map(Vec::as_slice) {
            Some([only]) if only == first => {}
            Some([only]) => out.push(
                Violation::new(
                    NAME,
                    format!(
                        "key {key} holds {only} in the store, but the client was given {first}"
                    ),
                )
                .at(first, None),
            ),
            Some(many) if many.len() > 1 => out.push(
                Violation::new(
                    NAME,
                    format!(
                        "key {key} created {} executions: {}",
                        many.len(),
                        many.join(", ")
                    ),
                )
                .at(first, None),
            ),
            _ if purged => {}
            _ => out.push(
                Violation::new(NAME, format!("key {key} holds no execution in the store"))
                    .at(first, None),
            ),
        }
    }
}
