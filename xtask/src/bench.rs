//! `cargo xtask bench [--quick]`: the performance table (issue #8), every row measured in this
//! one run on this machine.
//!
//! Rows 1 to 4 (durable steps/s against the raw SQLite commit rate, executions in flight,
//! CPU per step, recovery and memory) come from the engine's `perf` bench
//! (engine/benches/perf.rs), built in the bench profile. Row 5 (simulator speed, and memory
//! over a long sweep) comes from `proctor-sim speed` on the standard scenario, built in release
//! and in the test profile, beside its limit: turmoil alone, the same hosts idle for the same
//! simulated time. The table ends with each target and whether this run met it.
//! `--quick` runs every row on a small workload: a smoke test of the harness, not a measure.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::tidy::workspace_root;

/// The scenario row 5 runs: five executions of a three-step chain, two engine crashes (one
/// at a timed instant, one while a step runs) and a partition from an agent.
pub const STANDARD_SCENARIO: &str = "sequential-crash-mid-step";

/// The target for the standard scenario in release, on one core.
const TARGET_RUNS_PER_S: f64 = 200.0;

/// A row as the engine's bench writes it, and as this table prints it.
#[derive(Debug, Deserialize, Serialize)]
struct Row {
    row: String,
    value: f64,
    unit: String,
    ratio: Option<f64>,
    against: String,
    target: Option<String>,
    met: Option<bool>,
    /// The best value the target's measure could take in this run (a ceiling or floor
    /// measured beside it): a missed target with a limit under it is out of reach here.
    #[serde(default)]
    limit: Option<f64>,
    /// Whether `limit` is under the target.
    #[serde(default)]
    out_of_reach: Option<bool>,
}

/// What `proctor-sim speed` prints (one JSON line).
#[derive(Debug, Deserialize)]
struct Speed {
    runs: u64,
    failures: u64,
    runs_per_s: f64,
    sim_s_per_wall_s: f64,
    floor_hosts: u64,
    floor_simulated_ms: u64,
    floor_runs_per_s: f64,
    peak_rss_kb: u64,
    rss_growth_bytes_per_run: f64,
}

pub fn bench(args: &[String]) -> Result<()> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => bail!("usage: cargo xtask bench [--quick]"),
    };
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out).context("creating target/bench")?;
    let engine_json = out.join("engine.json");

    let mut perf = Command::new(&cargo);
    perf.args([
        "bench",
        "--package",
        "proctor-engine",
        "--bench",
        "perf",
        "--",
    ])
    .arg("--json")
    .arg(&engine_json);
    if quick {
        perf.arg("--quick");
    }
    run(&mut perf, "the engine's perf bench")?;
    let mut rows: Vec<Row> = serde_json::from_str(
        &std::fs::read_to_string(&engine_json).context("reading the engine's results")?,
    )
    .context("parsing the engine's results")?;

    let (release_runs, test_runs) = if quick { (20, 5) } else { (500, 100) };
    for (profile, runs) in [("release", release_runs), ("test", test_runs)] {
        run(
            Command::new(&cargo).args([
                "build",
                "--profile",
                profile,
                "--package",
                "proctor-sim",
                "--bin",
                "proctor-sim",
            ]),
            "building proctor-sim",
        )?;
        let dir = if profile == "release" {
            "release"
        } else {
            "debug"
        };
        let binary = root.join("target").join(dir).join("proctor-sim");
        let speed = sim_speed(&binary, runs)?;
        rows.extend(speed_rows(profile, &speed));
    }

    println!();
    println!("{}", table(&rows));
    let missed = rows.iter().filter(|r| r.met == Some(false)).count();
    let targets = rows.iter().filter(|r| r.met.is_some()).count();
    println!("targets met: {} of {targets}", targets - missed);
    let out_of_reach = rows
        .iter()
        .filter(|r| r.met == Some(false) && r.out_of_reach == Some(true))
        .count();
    if out_of_reach > 0 {
        println!(
            "missed and out of reach here: {out_of_reach} (the limit measured beside each, \
             what an engine that cost nothing would reach, is under its target)"
        );
    }
    std::fs::write(
        out.join("table.json"),
        serde_json::to_string_pretty(&rows).expect("rows serialize"),
    )
    .context("writing target/bench/table.json")?;
    println!("written: target/bench/table.json");
    Ok(())
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn sim_speed(binary: &Path, runs: u64) -> Result<Speed> {
    let output = Command::new(binary)
        .args(["speed", STANDARD_SCENARIO, "--runs", &runs.to_string()])
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "proctor-sim speed failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("proctor-sim speed printed no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

fn speed_rows(profile: &str, speed: &Speed) -> Vec<Row> {
    let row = |name: String, value: f64, unit: &str| Row {
        row: name,
        value,
        unit: unit.to_string(),
        ratio: None,
        against: String::new(),
        target: None,
        met: None,
        limit: None,
        out_of_reach: None,
    };
    // turmoil alone: what the same hosts cost idle for the same simulated time, the most
    // runs/s any engine could reach (turmoil polls every host at every tick).
    let floor = row(
        format!(
            "5. turmoil alone: {} hosts idle {} simulated ms, {profile}",
            speed.floor_hosts, speed.floor_simulated_ms
        ),
        speed.floor_runs_per_s,
        "runs/s",
    );
    let mut runs_per_s = row(
        format!("5. simulated runs/s, {STANDARD_SCENARIO}, {profile}, one core"),
        speed.runs_per_s,
        "runs/s",
    );
    if speed.floor_runs_per_s > 0.0 {
        runs_per_s.ratio = Some(speed.runs_per_s / speed.floor_runs_per_s);
        runs_per_s.against = "turmoil alone".into();
    }
    if profile == "release" {
        runs_per_s.target = Some(format!(">= {TARGET_RUNS_PER_S} runs/s"));
        runs_per_s.met = Some(speed.runs_per_s >= TARGET_RUNS_PER_S && speed.failures == 0);
        runs_per_s.limit = Some(speed.floor_runs_per_s);
        runs_per_s.out_of_reach = Some(speed.floor_runs_per_s < TARGET_RUNS_PER_S);
    }
    let mut rows = vec![
        floor,
        runs_per_s,
        row(
            format!("5. simulated s per wall s, {profile}"),
            speed.sim_s_per_wall_s,
            "x",
        ),
    ];
    if profile == "release" {
        rows.push(row(
            format!("5. peak RSS over {} seeds", speed.runs),
            speed.peak_rss_kb as f64 / 1024.0,
            "MiB",
        ));
        // A leak of even one allocation per run shows as a steady slope; allocator noise does
        // not reach a kilobyte a run over a thousand runs.
        let mut growth = row(
            format!("5. RSS growth per seed over {} seeds", speed.runs),
            speed.rss_growth_bytes_per_run,
            "bytes",
        );
        growth.target = Some("< 1 KiB per seed".into());
        growth.met = Some(speed.rss_growth_bytes_per_run < 1024.0);
        rows.push(growth);
    }
    rows
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<60} {:>12} {:<10} {:<32} {}\n",
        "row", "value", "unit", "ratio", "target"
    );
    for r in rows {
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}x {}", r.against))
            .unwrap_or_default();
        let target = match (&r.target, r.met, r.limit, r.out_of_reach) {
            (Some(t), Some(true), ..) => format!("{t}: met"),
            (Some(t), Some(false), Some(limit), Some(true)) => {
                format!("{t}: MISSED, out of reach (limit {limit:.2})")
            }
            (Some(t), Some(false), Some(limit), _) => format!("{t}: MISSED (limit {limit:.2})"),
            (Some(t), Some(false), None, _) => format!("{t}: MISSED"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<60} {:>12.1} {:<10} {:<32} {}\n",
            r.row, r.value, r.unit, ratio, target
        ));
    }
    out
}
