//! `tenant_isolation` (with `workload.tenants`): every execution is stored under the tenant
//! that submitted it, and each tenant's own listing shows exactly its executions, none of
//! another tenant's; and its history holds the client's audited start (unless recovery
//! started it first). Proves
//! tenant scoping and the audit history hold across crashes and retried submissions.

use proctor::event::DomainEvent;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "tenant_isolation";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    let tenants = &scenario.workload.tenants;
    if tenants.is_empty() {
        return;
    }
    // Who submitted each execution: the tenant whose token started it.
    let submitter: std::collections::BTreeMap<&str, &String> = outcome
        .starts
        .iter()
        .filter_map(|s| Some((s.id.as_str(), s.tenant.as_ref()?)))
        .collect();
    let owner = |id: &str| -> Option<&String> { submitter.get(id).copied() };
    for (execution, events) in &outcome.executions {
        let Some(want) = owner(&execution.id) else {
            continue;
        };
        // The client starts each execution through the audited API; a start retried after a
        // crash finds it started (a no-op, not audited) or is the one that lands. So one
        // audited start, unless recovery started the created execution first (then none, and
        // its start follows the recovery).
        let starts = events
            .iter()
            .filter(|e| {
                matches!(&e.event, DomainEvent::Audit { actor, action, .. }
                    if action == "start" && actor.as_deref() == Some("client"))
            })
            .count();
        let opened_by_recovery = events
            .iter()
            .find(|e| !matches!(e.event, DomainEvent::Audit { .. }))
            .is_some_and(|e| matches!(e.event, DomainEvent::ExecutionRecovered { .. }));
        let expected = usize::from(!opened_by_recovery);
        if starts != expected {
            out.push(
                Violation::new(
                    NAME,
                    format!("{starts} audited starts by the client, expected {expected}"),
                )
                .at(&execution.id, None),
            );
        }
        if &execution.tenant != want {
            out.push(
                Violation::new(
                    NAME,
                    format!("stored as tenant {}, submitted by {want}", execution.tenant),
                )
                .at(&execution.id, None),
            );
        }
    }
    for tenant in tenants {
        let mut want: Vec<&str> = outcome
            .acknowledged
            .iter()
            .filter(|id| owner(id) == Some(tenant))
            .map(String::as_str)
            .collect();
        want.sort_unstable();
        let listed: Vec<&str> = outcome
            .tenant_lists
            .get(tenant)
            .map(|l| l.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if listed != want {
            out.push(Violation::new(
                NAME,
                format!("tenant {tenant} lists {listed:?}, but submitted {want:?}"),
            ));
        }
    }
}
