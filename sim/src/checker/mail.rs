//! `mail_delivered`: every `email` step recorded completed has its message in the simulated
//! mail server's spool (found by the step's idempotency key, which the engine puts in
//! `X-Proctor-Idempotency-Key`), and every message there belongs to an `email` step of an
//! execution in the store. Proves a completed email step really handed its message over, across
//! crashes and partitions, and that a message re-sent after a lost answer carries the same key,
//! so a reader can drop the copy (SMTP itself cannot promise one delivery).

use std::collections::BTreeSet;

use proctor::core::StepStatus;
use proctor::definition::StepKind;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    const NAME: &str = "mail_delivered";
    if scenario.smtp_host.is_none() {
        return;
    }
    let taken: BTreeSet<&str> = outcome
        .mail
        .iter()
        .filter_map(|m| m.key.as_deref())
        .collect();
    let mut keys = BTreeSet::new();
    for (execution, _) in &outcome.executions {
        for (def, state) in execution.process.steps.iter().zip(&execution.steps) {
            if !matches!(def.kind, StepKind::Email(_)) {
                continue;
            }
            let key = format!("{}:{}", execution.id, def.id);
            if state.status == StepStatus::Completed && !taken.contains(key.as_str()) {
                out.push(
                    Violation::new(
                        NAME,
                        "recorded completed, but the mail server never took its message",
                    )
                    .at(&execution.id, Some(&def.id)),
                );
            }
            keys.insert(key);
        }
    }
    for mail in &outcome.mail {
        match &mail.key {
            None => out.push(Violation::new(
                NAME,
                format!(
                    "a message to {} carries no idempotency key",
                    mail.to.join(", ")
                ),
            )),
            Some(key) if !keys.contains(key) => out.push(Violation::new(
                NAME,
                format!("a message keyed {key} belongs to no email step"),
            )),
            Some(_) => {}
        }
    }
}
