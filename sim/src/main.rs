//! `proctor-sim`: runs one simulated run in this (fresh) process.
//!
//! - `proctor-sim repro SCENARIO --seed N [--trace]`: the outcome for a human (and the
//!   trace); `cargo xtask repro` calls it.
//! - `proctor-sim run SCENARIO --seed N`: the outcome as one JSON line (a [`Summary`]);
//!   `cargo xtask chaos` calls it, one process per run.
//!
//! SCENARIO is a name under scenarios/ or a path to a scenario file. Exit status: 0 when
//! every invariant holds, 1 when one is violated, 2 for bad usage or a bad scenario file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proctor_sim::{Scenario, Summary};

#[derive(Parser)]
#[command(
    name = "proctor-sim",
    about = "Replays simulated runs of the Proctor engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays one run and prints its outcome.
    Repro {
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// Also print the trace, one line per event.
        #[arg(long)]
        trace: bool,
    },
    /// Runs one run and prints its summary as JSON.
    Run {
        scenario: String,
        #[arg(long)]
        seed: u64,
    },
}

fn load(name: &str) -> Result<Scenario, ExitCode> {
    let path = if name.ends_with(".yaml") {
        PathBuf::from(name)
    } else {
        PathBuf::from("scenarios").join(format!("{name}.yaml"))
    };
    Scenario::load(&path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, seed, trace, json) = match cli.command {
        Command::Repro {
            scenario,
            seed,
            trace,
        } => (scenario, seed, trace, false),
        Command::Run { scenario, seed } => (scenario, seed, false, true),
    };
    let scenario = match load(&name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let outcome = proctor_sim::run(&scenario, seed);
    let summary = Summary::of(&outcome);
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("a summary serialises")
        );
    } else {
        if trace {
            for line in &outcome.trace.lines {
                println!("{line}");
            }
        }
        println!("{}", summary.line());
        if summary.passed {
            println!("all invariants hold");
        } else {
            for v in &summary.violations {
                println!("{v}");
            }
            println!("replay: {}", summary.repro);
        }
    }
    if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
