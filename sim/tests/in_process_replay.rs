//! Sequential runs of one seed in one process replay exactly. The only process state that
//! leaked into a run was tokio's task-id counter (it orders how a crashed host's sockets
//! drop); `run` realigns it. This binary holds a single test so no other run overlaps.

use std::path::Path;

use proctor_sim::Scenario;

#[test]
fn repeated_runs_in_one_process_give_one_trace() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/fifty-concurrent-under-crashes.yaml");
    let scenario = Scenario::load(&file).expect("scenario loads");
    for seed in [0, 1] {
        let first = proctor_sim::run(&scenario, seed);
        assert!(first.passed(), "{:?}", first.violations);
        for _ in 0..2 {
            let again = proctor_sim::run(&scenario, seed);
            if again.trace.lines != first.trace.lines {
                let at = first
                    .trace
                    .lines
                    .iter()
                    .zip(&again.trace.lines)
                    .position(|(a, b)| a != b)
                    .unwrap_or(first.trace.lines.len().min(again.trace.lines.len()));
                panic!(
                    "seed {seed}: the repeat diverged at trace line {at}: {:?} vs {:?}",
                    first.trace.lines.get(at),
                    again.trace.lines.get(at)
                );
            }
        }
    }
}
