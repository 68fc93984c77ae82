//! `expected_outcome`: the run ended as the scenario says it must (`expect.status`, final
//! execution statuses counted, children included; `expect.steps`, final statuses of named
//! steps counted over the executions of the scenario's process; `expect.min_replayed_starts`,
//! starts answered with an execution their key had already created). Not one of DESIGN §4's invariants: the scenario's own claim, such as "every
//! booking was compensated".

use std::collections::BTreeMap;

use proctor::core::StepStatus;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "expected_outcome";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    let expect = &scenario.expect;
    if !expect.status.is_empty() && outcome.status_counts() != expect.status {
        out.push(Violation::new(
            NAME,
            format!(
                "final statuses {:?}, expected {:?}",
                outcome.status_counts(),
                expect.status
            ),
        ));
    }
    if let Some(min) = expect.min_replayed_starts {
        let replayed = outcome.starts.iter().filter(|s| !s.created).count();
        if replayed < min {
            out.push(Violation::new(
                NAME,
                format!("{replayed} starts were answered as replays, expected at least {min}"),
            ));
        }
    }
    if !expect.versions.is_empty() {
        let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
        for (execution, _) in &outcome.executions {
            *seen.entry(execution.process.version).or_insert(0) += 1;
        }
        if seen != expect.versions {
            out.push(Violation::new(
                NAME,
                format!(
                    "executions per definition version {seen:?}, expected {:?}",
                    expect.versions
                ),
            ));
        }
    }
    for (step, wanted) in &expect.steps {
        // Over the executions of the scenario's process (not its sub-processes' children).
        let mut seen: BTreeMap<StepStatus, usize> = BTreeMap::new();
        for (execution, _) in &outcome.executions {
            if execution.process.name != scenario.process.name {
                continue;
            }
            if let Some(index) = execution.process.position(step) {
                *seen.entry(execution.steps[index].status).or_insert(0) += 1;
            }
        }
        for (status, n) in wanted {
            let got = seen.get(status).copied().unwrap_or(0);
            if got != *n {
                let mut v = Violation::new(
                    NAME,
                    format!(
                        "{got} executions ended with it {status}, expected {n} (all: {seen:?})"
                    ),
                );
                v.step = Some(step.clone());
                out.push(v);
            }
        }
    }
}
