//! `tenant_isolation` (with `workload.tenants`): every execution is stored under the tenant
//! that submitted it, and each tenant's own listing shows exactly its executions, none of
//! another tenant's. Proves tenant scoping holds across crashes and retried submissions.

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "tenant_isolation";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    let tenants = &scenario.workload.tenants;
    if tenants.is_empty() {
        return;
    }
    let owner = |id: &str| -> Option<&String> {
        let n: usize = id.get(id.len().saturating_sub(4)..)?.parse().ok()?;
        tenants.get(n % tenants.len())
    };
    for (execution, _) in &outcome.executions {
        let Some(want) = owner(&execution.id) else {
            continue;
        };
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
