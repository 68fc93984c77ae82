//! `proctor-sim speed`: one JSON line with the sweep's counts, speed and memory, and a
//! fingerprint of its traces that a second process reproduces. Timings are only checked to be
//! numbers: how fast a run goes depends on the machine.

use std::process::Command;

use serde_json::Value;

fn speed(runs: u64, first_seed: u64) -> Value {
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/sequential-crash-mid-step.yaml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_proctor-sim"))
        .args(["speed", scenario, "--runs", &runs.to_string()])
        .args(["--first-seed", &first_seed.to_string()])
        .output()
        .expect("proctor-sim runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).expect("JSON")
}

#[test]
fn speed_reports_the_sweep_and_replays_its_traces() {
    let report = speed(3, 5);
    assert_eq!(report["scenario"], "sequential-crash-mid-step");
    assert_eq!(report["runs"], 3);
    assert_eq!(report["first_seed"], 5);
    assert_eq!(report["failures"], 0);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert_eq!(report["profile"], profile);
    // Three runs of this scenario simulate seconds each.
    assert!(report["simulated_s"].as_f64().expect("simulated_s") > 3.0);
    for field in [
        "wall_s",
        "runs_per_s",
        "sim_s_per_wall_s",
        "rss_growth_bytes_per_run",
    ] {
        assert!(report[field].is_number(), "{field}: {report}");
    }
    for field in ["rss_start_kb", "rss_end_kb", "peak_rss_kb"] {
        let kb = report[field].as_u64().expect(field);
        if cfg!(target_os = "linux") {
            assert!(kb > 0, "{field}: {report}");
        }
    }
    assert!(report["peak_rss_kb"].as_u64() >= report["rss_end_kb"].as_u64());
    // The same seeds in another process: the same traces.
    let again = speed(3, 5);
    assert_eq!(report["traces_hash"], again["traces_hash"]);
    assert_ne!(report["traces_hash"], speed(3, 6)["traces_hash"]);
}
