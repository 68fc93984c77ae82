//! `proctor-sim`: runs one simulated run in this (fresh) process.
//!
//! - `proctor-sim repro SCENARIO --seed N [--trace] [--plant BUG] [--html OUT.html]`: the
//!   outcome for a human (and the trace, and the run's timeline as one HTML page:
//!   `proctor_sim::timeline`); `cargo xtask repro` calls it.
//! - `proctor-sim run SCENARIO --seed N [--plant BUG]`: the outcome as one JSON line (a
//!   [`Summary`]); `cargo xtask chaos` and `cargo xtask mutants` call it, one process per run.
//! - `proctor-sim bugs`: the names of the deliberate engine bugs (`proctor::planted::Bug`), one
//!   a line; `cargo xtask mutants` sweeps them.
//! - `proctor-sim coverage`: the `fault × state` pairs a full sweep must hit
//!   (`proctor_sim::summary::REQUIRED_COVERAGE`); `cargo xtask chaos` checks them.
//! - `proctor-sim shrink SCENARIO --seed N [--plant BUG] [--out DIR] [--json]`: shrinks a
//!   failing run (`proctor_sim::shrink`), writes the minimal scenario under DIR (default
//!   target/shrunk), checks the written file still fails the same way, and prints its replay
//!   command; `cargo xtask shrink` calls it. Its candidate runs are sequential in this process.
//! - `proctor-sim speed SCENARIO [--runs N] [--first-seed S]`: runs seeds S..S+N one after
//!   another in this process, on this thread, and prints one JSON line: runs/s, simulated
//!   seconds per wall second, failures and memory (RSS before, after, its peak, and its growth
//!   per run over the second half of the runs: a long sweep must not grow), the hash
//!   of the runs' trace hashes (the same seeds give the same one), and the floor: runs/s of
//!   the same hosts idle for the runs' mean simulated time (`proctor_sim::floor`). Wall time
//!   comes from the production clock (`SystemClock`), the one real-time source.
//!
//! `--plant BUG` plants that bug in the engine for the run (and adds `--plant BUG` to the
//! replay command it prints). It needs a binary built with the test-only `planted-bugs`
//! feature, which `cargo xtask mutants` and `cargo xtask repro --plant` build; any other
//! refuses it.
//!
//! SCENARIO is a name under scenarios/ or a path to a scenario file. Exit status: 0 when
//! every invariant holds, 1 when one is violated, 2 for bad usage or a bad scenario file.

// The allocator the `proctor` binary runs with: the simulated engine allocates as it would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proctor::planted::Bug;
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
        /// Plant this deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
        /// Also write the run's timeline to this file: one self-contained HTML page (hosts,
        /// agent calls, faults, step states, the violated invariants at their instants).
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Runs one run and prints its summary as JSON.
    Run {
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// Plant this deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
    },
    /// Lists the deliberate engine bugs `--plant` takes, one a line.
    Bugs,
    /// Lists the `fault × state` pairs a full sweep must cover, one a line.
    Coverage,
    /// Shrinks a failing run to a minimal scenario that fails the same way, writes it and
    /// prints the command that replays it.
    Shrink {
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// Plant this deliberate engine bug (needs the `planted-bugs` feature).
        #[arg(long, value_name = "BUG")]
        plant: Option<String>,
        /// Where to write the shrunk scenario file.
        #[arg(long, default_value = "target/shrunk")]
        out: PathBuf,
        /// Print the result as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Runs many seeds one after another in this process and prints their speed and memory
    /// as one JSON line.
    Speed {
        scenario: String,
        /// How many seeds to run.
        #[arg(long, default_value_t = 200)]
        runs: u64,
        /// The first seed; the runs take the seeds that follow it.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
    },
}

fn path_of(name: &str) -> PathBuf {
    if name.ends_with(".yaml") {
        PathBuf::from(name)
    } else {
        PathBuf::from("scenarios").join(format!("{name}.yaml"))
    }
}

fn load(name: &str) -> Result<Scenario, ExitCode> {
    Scenario::load(&path_of(name)).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `proctor-sim shrink`: shrink, write, check that the written file still fails the same way.
fn shrink(name: &str, seed: u64, bug: Option<Bug>, out: &Path, json: bool) -> ExitCode {
    let scenario = match load(name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let shrunk = match proctor_sim::shrink::shrink(&scenario, seed) {
        Ok(shrunk) => shrunk,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let plant = bug
        .map(|b| format!(" --plant {}", b.name()))
        .unwrap_or_default();
    let written = match proctor_sim::shrink::write(&shrunk, &path_of(name), out, &plant) {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "error: writing the shrunk scenario under {}: {e}",
                out.display()
            );
            return ExitCode::from(2);
        }
    };
    let reloaded = match Scenario::load(&written) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: the shrunk scenario does not load: {e}");
            return ExitCode::from(2);
        }
    };
    let still_fails = proctor_sim::run(&reloaded, seed)
        .violations
        .iter()
        .any(|v| v.invariant == shrunk.invariant);
    let repro = format!(
        "cargo xtask repro {} --seed {seed}{plant}",
        written.display()
    );
    if json {
        let mut report = shrunk.report(&written);
        report["scenario"] = scenario.name.clone().into();
        report["still_fails"] = still_fails.into();
        report["repro"] = repro.clone().into();
        println!("{report}");
    } else {
        println!(
            "shrunk {} seed {seed}: {}",
            scenario.name,
            shrunk.describe()
        );
        println!("wrote {}", written.display());
        println!("replay: {repro}");
    }
    if still_fails {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: the written scenario no longer fails `{}` (the file does not replay the \
             shrunk run)",
            shrunk.invariant
        );
        ExitCode::from(1)
    }
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`); 0 where there is none (not Linux).
fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// `count` per second over `wall_s` seconds; 0 when no time was measured.
fn per_s(count: f64, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        count / wall_s
    } else {
        0.0
    }
}

/// `proctor-sim speed`: `runs` seeds of the scenario, in order, through [`proctor_sim::run`].
fn speed(name: &str, runs: u64, first_seed: u64) -> ExitCode {
    use proctor::clock::{Clock, SystemClock};
    let scenario = match load(name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rss_start_kb = proc_status_kb("VmRSS");
    let started_ms = SystemClock.now_ms();
    let (mut failures, mut simulated_ms) = (0u64, 0u64);
    // Each run's trace hash, in seed order: hashed together, the sweep's fingerprint (the same
    // seeds must give the same one in any process).
    let mut hashes = proctor_sim::trace::Trace::default();
    // VmRSS after each run of the second half (the first runs warm up allocators and caches).
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let warm_up = runs / 2;
    for i in 0..runs {
        let outcome = proctor_sim::run(&scenario, first_seed.wrapping_add(i));
        simulated_ms += outcome.elapsed_ms;
        hashes.lines.push(format!("{:016x}", outcome.trace.hash()));
        if !outcome.passed() {
            failures += 1;
        }
        if i + 1 >= warm_up.max(1) {
            xs.push((i + 1) as f64);
            // RSS is to show live memory: mimalloc keeps freed pages cached, which moved the
            // slope by ±10 KB per run from one sweep to the next.
            // SAFETY: mi_collect only frees what the allocator holds unused.
            unsafe { libmimalloc_sys::mi_collect(true) };
            ys.push(proc_status_kb("VmRSS") as f64 * 1024.0);
        }
    }
    let wall_s = SystemClock.now_ms().saturating_sub(started_ms) as f64 / 1000.0;
    let simulated_s = simulated_ms as f64 / 1000.0;
    let per_wall_s = |x: f64| per_s(x, wall_s);
    // The limit: the same hosts, idle, for the runs' mean simulated time (a tenth as many
    // runs: the floor varies far less than the runs do).
    let hosts = proctor_sim::floor::host_names(&scenario);
    let floor_ms = simulated_ms / runs.max(1);
    let floor_runs = (runs / 10).max(5);
    let floor_started_ms = SystemClock.now_ms();
    for i in 0..floor_runs {
        proctor_sim::floor::idle_run(&hosts, floor_ms, first_seed.wrapping_add(i));
    }
    let floor_wall_s = SystemClock.now_ms().saturating_sub(floor_started_ms) as f64 / 1000.0;
    let floor_runs_per_s = per_s(floor_runs as f64, floor_wall_s);
    let report = serde_json::json!({
        "scenario": scenario.name,
        "runs": runs,
        "first_seed": first_seed,
        "failures": failures,
        "wall_s": wall_s,
        "runs_per_s": per_wall_s(runs as f64),
        "simulated_s": simulated_s,
        "sim_s_per_wall_s": per_wall_s(simulated_s),
        "floor_hosts": hosts.len() + 1,
        "floor_simulated_ms": floor_ms,
        "floor_runs_per_s": floor_runs_per_s,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "rss_start_kb": rss_start_kb,
        "rss_end_kb": proc_status_kb("VmRSS"),
        "peak_rss_kb": proc_status_kb("VmHWM"),
        "rss_growth_bytes_per_run": slope(&xs, &ys).round(),
        "traces_hash": format!("{:016x}", hashes.hash()),
    });
    println!("{report}");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The bug `--plant` names, planted for the rest of this process (none without `--plant`).
fn plant(name: Option<&str>) -> Result<Option<Bug>, ExitCode> {
    let Some(name) = name else {
        return Ok(None);
    };
    let usage = |problem: String| {
        eprintln!("error: --plant {name}: {problem}");
        ExitCode::from(2)
    };
    if !cfg!(feature = "planted-bugs") {
        return Err(usage(
            "this proctor-sim was built without the test-only `planted-bugs` feature \
             (`cargo xtask repro SCENARIO --seed N --plant BUG` builds one that has it)"
                .to_string(),
        ));
    }
    let Some(bug) = Bug::from_name(name) else {
        let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
        return Err(usage(format!(
            "no such planted bug; bugs: {}",
            names.join(", ")
        )));
    };
    #[cfg(feature = "planted-bugs")]
    proctor::planted::plant(Some(bug));
    Ok(Some(bug))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, seed, trace, json, planted, html) = match cli.command {
        Command::Repro {
            scenario,
            seed,
            trace,
            plant,
            html,
        } => (scenario, seed, trace, false, plant, html),
        Command::Run {
            scenario,
            seed,
            plant,
        } => (scenario, seed, false, true, plant, None),
        Command::Bugs => {
            for bug in Bug::ALL {
                println!("{}", bug.name());
            }
            return ExitCode::SUCCESS;
        }
        Command::Coverage => {
            for pair in proctor_sim::summary::REQUIRED_COVERAGE {
                println!("{pair}");
            }
            return ExitCode::SUCCESS;
        }
        Command::Speed {
            scenario,
            runs,
            first_seed,
        } => return speed(&scenario, runs, first_seed),
        Command::Shrink {
            scenario,
            seed,
            plant: planted,
            out,
            json,
        } => {
            return match plant(planted.as_deref()) {
                Ok(bug) => shrink(&scenario, seed, bug, &out, json),
                Err(code) => code,
            };
        }
    };
    let bug = match plant(planted.as_deref()) {
        Ok(bug) => bug,
        Err(code) => return code,
    };
    let scenario = match load(&name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let outcome = proctor_sim::run(&scenario, seed);
    let mut summary = Summary::of(&outcome);
    if name.ends_with(".yaml") {
        // A file outside scenarios/ (a shrunk one): replayed by its path, not its name.
        summary.repro = format!("cargo xtask repro {name} --seed {seed}");
    }
    if let Some(bug) = bug {
        summary.repro = format!("{} --plant {}", summary.repro, bug.name());
    }
    if let Some(path) = &html {
        let page = proctor_sim::timeline::Timeline::of(&outcome, &summary.repro).html();
        if let Err(e) = std::fs::write(path, page) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("timeline: {}", path.display());
    }
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
        if let Some(bug) = bug {
            println!("planted bug: {}", bug.name());
        }
        if summary.passed {
            println!("all invariants hold");
        } else {
            for v in &summary.violations {
                println!("{v}");
            }
            println!("replay: {}", summary.repro);
            if html.is_none() {
                println!("see it: {} --html target/timeline.html", summary.repro);
            }
        }
    }
    if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
