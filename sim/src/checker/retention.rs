//! `retention_respected` (with `workload.purge`): the purge deleted only finished executions
//! last changed before its cutoff, and every acknowledged execution it deleted was one of
//! those; `expect.purged` counts the deleted ones. Proves a retention policy never removes
//! work in progress or recent history, across crashes during the purge.

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "retention_respected";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    if scenario.workload.purge.is_none() {
        return;
    }
    for p in &outcome.purge_candidates {
        let finished = p
            .status
            .parse()
            .is_ok_and(proctor::core::ExecutionStatus::is_terminal);
        if !finished || p.updated_at_ms >= outcome.purge_cutoff_ms {
            out.push(
                Violation::new(
                    NAME,
                    format!(
                        "purge listed it as {} last changed at {} ms (cutoff {} ms)",
                        p.status, p.updated_at_ms, outcome.purge_cutoff_ms
                    ),
                )
                .at(&p.id, None),
            );
        }
    }
    let deleted = outcome
        .acknowledged
        .iter()
        .filter(|id| !outcome.executions.iter().any(|(e, _)| &e.id == *id))
        .count();
    let survivors_due = outcome
        .executions
        .iter()
        .filter(|(e, _)| outcome.purge_candidates.iter().any(|p| p.id == e.id))
        .count();
    if survivors_due > 0 {
        out.push(Violation::new(
            NAME,
            format!("{survivors_due} executions the purge listed were not deleted"),
        ));
    }
    if let Some(want) = scenario.expect.purged {
        if deleted != want {
            out.push(Violation::new(
                NAME,
                format!("the purge deleted {deleted} executions, expected {want}"),
            ));
        }
    }
}
