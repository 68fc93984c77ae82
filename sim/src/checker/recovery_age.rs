//! `age_limit_respected`: recovery fails an execution as too old (an `ExecutionRecovered` with
//! `mark_failed`) only when, by the engine's clock at that moment, it was older than the age
//! limit the simulated engine recovers with (`RecoveryConfig::default()`, computed here from
//! its hours, not through the engine's own conversion). Proves a restart never throws young
//! work away as abandoned.

use proctor::core::RecoveryAction;
use proctor::event::DomainEvent;
use proctor::recovery::RecoveryConfig;

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "age_limit_respected";

pub(super) fn check(_: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    let limit_hours = RecoveryConfig::default().max_age_hours;
    let limit_ms = limit_hours.saturating_mul(60 * 60 * 1_000);
    for (execution, events) in &outcome.executions {
        for e in events {
            let DomainEvent::ExecutionRecovered {
                action: RecoveryAction::MarkFailed,
            } = e.event
            else {
                continue;
            };
            let age_ms = e.at_ms.saturating_sub(execution.created_at_ms);
            if age_ms <= limit_ms {
                out.push(
                    Violation::new(
                        NAME,
                        format!(
                            "failed by recovery as older than the age limit ({limit_hours} h) \
                             at event {}, when it was {age_ms}ms old",
                            e.seq
                        ),
                    )
                    .at(&execution.id, None),
                );
            }
        }
    }
}
