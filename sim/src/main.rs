//! `proctor-sim`: replays one simulated run. `cargo xtask repro SCENARIO --seed N [--trace]`
//! calls it; SCENARIO is a name under scenarios/ or a path to a scenario file.

use std::path::PathBuf;
use std::process::ExitCode;

use proctor_sim::Scenario;

fn usage() -> ExitCode {
    eprintln!("usage: proctor-sim repro SCENARIO --seed N [--trace]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("repro") || args.len() < 2 {
        return usage();
    }
    let name = &args[1];
    let mut seed = None;
    let mut trace = false;
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seed" => seed = rest.next().and_then(|s| s.parse::<u64>().ok()),
            "--trace" => trace = true,
            _ => return usage(),
        }
    }
    let Some(seed) = seed else {
        return usage();
    };
    let path = if name.ends_with(".yaml") {
        PathBuf::from(name)
    } else {
        PathBuf::from("scenarios").join(format!("{name}.yaml"))
    };
    let scenario = match Scenario::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = proctor_sim::run(&scenario, seed);
    if trace {
        for line in &outcome.trace.lines {
            println!("{line}");
        }
    }
    println!(
        "scenario {} seed {seed}: {} simulated ms, {} engine boots, {} faults, statuses {:?}, trace hash {:016x}",
        outcome.scenario,
        outcome.elapsed_ms,
        outcome.engine_boots,
        outcome.faults_injected,
        outcome.status_counts(),
        outcome.trace.hash()
    );
    if outcome.passed() {
        println!("all invariants hold");
        ExitCode::SUCCESS
    } else {
        for v in &outcome.violations {
            println!("{v}");
        }
        ExitCode::from(1)
    }
}
