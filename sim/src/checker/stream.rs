//! `stream_complete` (with `workload.stream`): the live event stream misses nothing and
//! repeats nothing, across engine crashes, partitions and reconnects. What the client's
//! stream of each execution delivered, reconnecting from the last event it saw, is exactly
//! the stored history: the same events, in order, from the first to the terminal one.

use super::Violation;
use crate::runner::Outcome;
use crate::scenario::Scenario;

const NAME: &str = "stream_complete";

pub(super) fn check(scenario: &Scenario, outcome: &Outcome, out: &mut Vec<Violation>) {
    if !scenario.workload.stream {
        return;
    }
    for (execution, events) in &outcome.executions {
        if !outcome.acknowledged.contains(&execution.id) {
            continue;
        }
        let stored: Vec<(u64, String)> = events
            .iter()
            .map(|e| (e.seq, e.event.kind().to_string()))
            .collect();
        let Some(streamed) = outcome.streamed.get(&execution.id) else {
            out.push(
                Violation::new(NAME, "the client's stream delivered nothing")
                    .at(&execution.id, None),
            );
            continue;
        };
        if *streamed != stored {
            let first_difference = streamed
                .iter()
                .zip(&stored)
                .position(|(a, b)| a != b)
                .unwrap_or(streamed.len().min(stored.len()));
            out.push(
                Violation::new(
                    NAME,
                    format!(
                        "the stream delivered {} events, the history holds {}; they differ \
                         from position {first_difference}: streamed {:?}, stored {:?}",
                        streamed.len(),
                        stored.len(),
                        streamed.get(first_difference),
                        stored.get(first_difference)
                    ),
                )
                .at(&execution.id, None),
            );
        }
    }
}
