//! Every `scenarios/*.yaml` as its own test case (libtest-mimic): each runs the file's seeds
//! through the simulator and fails on the first violated invariant, printing the repro command.
//! The first seed runs twice and must give the same trace hash (invariant 8, determinism).
//!
//! Each run happens in a fresh child process (this binary, re-executed with
//! `PROCTOR_SIM_RUN=file:seed`). Found by the fifty-concurrent scenario: two runs of one seed in
//! one process can differ, because state that outlives a run inside the process (most likely
//! tokio's process-global task ids, which order how a crashed host's tasks and sockets are
//! dropped) changes the order turmoil draws message latencies in. A fresh process per run
//! makes a seed replay exactly, here and in `cargo xtask repro`.
//!
//! `SEED=N cargo test --test scenarios` runs only seed N of every scenario.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};
use proctor_sim::Scenario;

const CHILD_ENV: &str = "PROCTOR_SIM_RUN";

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn seeds(scenario: &Scenario) -> Result<Vec<u64>, Failed> {
    match std::env::var("SEED") {
        Ok(seed) => Ok(vec![seed
            .parse()
            .map_err(|_| format!("SEED={seed} is not a number"))?]),
        Err(_) => Ok((0..scenario.seeds).collect()),
    }
}

/// In the child: one run, reported on stdout as `hash <hex>` and `violation <text>` lines.
fn child(spec: &str) -> ! {
    let (file, seed) = spec.rsplit_once(':').expect("file:seed");
    let scenario = Scenario::load(Path::new(file)).unwrap_or_else(|e| {
        println!("violation scenario: {e}");
        std::process::exit(0)
    });
    let outcome = proctor_sim::run(&scenario, seed.parse().expect("seed"));
    println!("hash {:016x}", outcome.trace.hash());
    for v in &outcome.violations {
        println!("violation {}", v.to_string().replace('\n', " "));
    }
    println!("repro {}", outcome.repro());
    std::process::exit(0)
}

struct Report {
    hash: String,
    violations: Vec<String>,
    repro: String,
}

fn run_in_child(path: &Path, seed: u64) -> Result<Report, Failed> {
    let out = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, format!("{}:{seed}", path.display()))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "seed {seed}: simulation process failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut report = Report {
        hash: String::new(),
        violations: Vec::new(),
        repro: String::new(),
    };
    for line in stdout.lines() {
        if let Some(h) = line.strip_prefix("hash ") {
            report.hash = h.to_string();
        } else if let Some(v) = line.strip_prefix("violation ") {
            report.violations.push(v.to_string());
        } else if let Some(r) = line.strip_prefix("repro ") {
            report.repro = r.to_string();
        }
    }
    Ok(report)
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let scenario = Scenario::load(path).map_err(|e| e.to_string())?;
    for (i, seed) in seeds(&scenario)?.into_iter().enumerate() {
        let report = run_in_child(path, seed)?;
        if !report.violations.is_empty() {
            return Err(format!(
                "seed {seed}:\n  {}\nreplay: {}",
                report.violations.join("\n  "),
                report.repro
            )
            .into());
        }
        if i == 0 {
            let again = run_in_child(path, seed)?;
            if again.hash != report.hash {
                return Err(format!(
                    "invariant `deterministic` violated: seed {seed} gave trace hashes {} and {}\nreplay: {}",
                    report.hash, again.hash, report.repro
                )
                .into());
            }
        }
    }
    Ok(())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    let args = Arguments::from_args();
    let trials = scenario_files()
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Trial::test(name, move || run_file(&path))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
