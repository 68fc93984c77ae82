//! A chaos run written out as a script is the same run: `shrink::materialize` turns the seed's
//! chaos plan into scripted faults, and the file `shrink::write` makes of it loads and replays
//! the same trace. Shrinking depends on this (it edits the written-out schedule, never the
//! seed). One test in this binary, so no other run overlaps (see in_process_replay.rs).

use std::path::Path;

use proctor_sim::shrink::{self, Shrunk};
use proctor_sim::Scenario;

#[test]
fn a_materialized_chaos_run_replays_the_same_trace_from_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().expect("temp dir");
    for name in ["chaos-disk", "chaos-swarm-diamond"] {
        let file = root.join(format!("scenarios/{name}.yaml"));
        let scenario = Scenario::load(&file).expect("scenario loads");
        // The first seed whose plan has timed faults (swarm may pick only per-write rates).
        let seed = (0..16)
            .find(|&seed| shrink::materialize(&scenario, seed).faults.len() > scenario.faults.len())
            .expect("some seed draws chaos faults");
        let original = proctor_sim::run(&scenario, seed);
        let explicit = shrink::materialize(&scenario, seed);
        let replayed = proctor_sim::run(&explicit, seed);
        assert_eq!(
            replayed.trace.lines, original.trace.lines,
            "{name}: the materialized run differs"
        );
        let shrunk = Shrunk {
            faults_before: explicit.faults.len(),
            faults_after: explicit.faults.len(),
            executions_before: explicit.workload.executions,
            executions_after: explicit.workload.executions,
            steps_before: explicit.process.steps.len(),
            steps_after: explicit.process.steps.len(),
            scenario: explicit,
            seed,
            invariant: "none".to_string(),
            runs: 0,
        };
        let written = shrink::write(&shrunk, &file, out.path(), "").expect("writes");
        let loaded = Scenario::load(&written).expect("the written file loads");
        assert_eq!(loaded.faults, shrunk.scenario.faults);
        let from_file = proctor_sim::run(&loaded, seed);
        assert_eq!(
            from_file.trace.lines, original.trace.lines,
            "{name}: the written file's run differs"
        );
    }
}
