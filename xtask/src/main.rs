//! Repository chores, the one entry point for them: `cargo xtask <task>`.
//!
//! - `ci`: what CI runs — formatting check, clippy with warnings denied, the whole test suite
//!   with `CI=true` (insta then never writes snapshots).
//! - `tidy`: the repository rules alone (they also run inside `cargo test`, see `tidy.rs`).
//!
//! - `bench [--quick]`: the performance table (`bench.rs`): durable steps/s against the raw
//!   SQLite commit rate, executions in flight with group commit, CPU per step, recovery of
//!   10,000 executions and its memory, simulator speed and memory over a long sweep, each with
//!   its ratio and target. `--quick` is a smoke run of the harness.
//!
//! - `repro SCENARIO --seed N [--trace] [--plant BUG] [--html OUT.html]`: replays one simulated
//!   run and prints its outcome (and trace), in a fresh process so the seed replays exactly;
//!   with `--plant`, with that deliberate engine bug planted (the simulator is then built with
//!   its test-only `planted-bugs` feature); with `--html`, also writes the run's timeline (one
//!   self-contained page: `proctor_sim::timeline`).
//!
//! - `chaos [--scenario NAME] [--seeds N] [--start S] [--jobs J] [--shard K/M] [--json FILE]`:
//!   runs every scenario (or one) for seeds S..S+N-1 (default 0..100), each run its own release
//!   `proctor-sim` process, J at a time (default: the available parallelism); prints a table per
//!   scenario (runs/s, faults injected by kind, invariant checks, failures), each failure with
//!   its `repro` command, and the fault coverage (runs per required `fault × state` pair).
//!   Fails if any run failed or, over every scenario and shard, a required pair was never hit.
//!   `--shard K/M` runs the K-th of M deterministic slices; `--json` writes every run's result.
//! - `chaos-merge FILE...`: the `--json` files of one sweep's shards, combined into the same
//!   table, failures and coverage check (which it judges once all M shards are there).
//!
//! - `shrink SCENARIO --seed N [--plant BUG] [--out DIR]`: reduces a failing run to a minimal
//!   one that fails the same invariant (the chaos plan written out, then delta debugging over
//!   faults, storage rates, outage lengths and executions), writes it as a scenario file
//!   (default under target/shrunk/) and prints its `repro` command. The search runs inside
//!   one optimised `proctor-sim shrink` process (its runs are sequential, so each replays
//!   exactly).
//!
//! - `mutants [--seeds N] [--jobs J] [--bug NAME]`: proves the invariants bite (`mutants.rs`):
//!   for each deliberate engine bug (or the one named), sweeps seeds 0.. (at most N, default
//!   1,000) over every scenario with the bug planted until a run fails, J runs at a time, and
//!   prints per bug whether it was caught, after how many seeds and runs, by which invariants,
//!   and the failing run's `repro --plant` command. Fails if a bug is not caught.
//!
//! - `load [--clients N] [--seconds S]`: the load test of `proctor serve`
//!   (`engine/benches/load.rs`, optimised): starts the server on loopback with a temporary
//!   database and the example agent, drives it with N concurrent clients (default 16, at most
//!   256) for S seconds (default 10, at most 120), each looping start-then-get, and prints
//!   requests, errors, requests/s and latency percentiles per kind, and the executions by
//!   status. Fails if a request failed or the server did not exit 0 on SIGTERM.
//!
mod bench;
mod chaos;
mod mutants;
mod tidy;

use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => {
            let problems = tidy::check(&tidy::workspace_root())?;
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(())
            } else {
                for p in &problems {
                    eprintln!("{p}");
                }
                bail!("tidy: {} problem(s)", problems.len())
            }
        }
        Some("bench") => bench::bench(&args[1..]),
        Some("repro") => proctor_sim("repro", &args[1..], Profile::Debug),
        Some("chaos") => chaos::chaos(&args[1..]),
        Some("chaos-merge") => chaos::merge(&args[1..]),
        Some("shrink") => proctor_sim("shrink", &args[1..], Profile::Release),
        Some("mutants") => mutants::mutants(&args[1..]),
        Some("load") => load(&args[1..]),
        Some(other) => bail!("unknown task `{other}`; {TASKS}"),
        None => bail!("usage: cargo xtask <task>; {TASKS}"),
    }
}

const TASKS: &str = "tasks: ci, tidy, bench, repro, chaos, chaos-merge, shrink, mutants, load";

/// The load test of `proctor serve`: the `load` bench (engine/benches/load.rs), built in the
/// bench profile, with its arguments.
fn load(args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args([
            "bench",
            "--package",
            "proctor-engine",
            "--bench",
            "load",
            "--",
        ])
        .args(args)
        .current_dir(tidy::workspace_root())
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("load test failed ({status})");
    }
    Ok(())
}

/// Whether `repro`'s arguments plant a bug (`--plant BUG` or `--plant=BUG`): the simulator
/// then needs its test-only `planted-bugs` feature.
fn plants(args: &[String]) -> bool {
    args.iter()
        .any(|a| a == "--plant" || a.starts_with("--plant="))
}

/// How `proctor_sim` builds the simulator: one replay builds fastest unoptimised; a shrink's
/// hundreds of runs want it optimised.
#[derive(Clone, Copy, PartialEq)]
enum Profile {
    Debug,
    Release,
}

/// `proctor-sim SUBCOMMAND ARGS...` through `cargo run` (with the test-only `planted-bugs`
/// feature when the arguments plant a bug); fails when it does.
fn proctor_sim(subcommand: &str, args: &[String], profile: Profile) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(["run", "--quiet", "--package", "proctor-sim"]);
    if profile == Profile::Release {
        command.arg("--release");
    }
    if plants(args) {
        command.args(["--features", "planted-bugs"]);
    }
    let status = command
        .args(["--bin", "proctor-sim", "--", subcommand])
        .args(args)
        .current_dir(tidy::workspace_root())
        .status()
        .context("running proctor-sim")?;
    if !status.success() {
        bail!("{subcommand}: proctor-sim did not succeed ({status})");
    }
    Ok(())
}

fn ci() -> Result<()> {
    let root = tidy::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let steps: &[(&str, &[&str])] = &[
        ("format", &["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("tests", &["test", "--workspace", "--locked"]),
    ];
    for (name, args) in steps {
        println!("==> xtask ci: {name}: cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(*args)
            .current_dir(&root)
            .env("CI", "true")
            .status()
            .with_context(|| format!("running cargo {}", args.join(" ")))?;
        if !status.success() {
            bail!("xtask ci: {name} failed ({status})");
        }
    }
    println!("==> xtask ci: all checks passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repro_builds_the_planted_simulator_only_when_asked_to_plant() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(plants(&args(&[
            "diamond",
            "--seed",
            "3",
            "--plant",
            "complete_twice"
        ])));
        assert!(plants(&args(&[
            "diamond",
            "--plant=complete_twice",
            "--seed",
            "3"
        ])));
        assert!(!plants(&args(&["diamond", "--seed", "3", "--trace"])));
        assert!(!plants(&args(&["--planted-diamond.yaml", "--seed", "3"])));
    }
}
