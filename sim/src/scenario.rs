//! Scenario files: a process, its agents, a workload, a fault schedule and expectations.
//!
//! ```yaml
//! name: diamond-under-crash
//! process: processes/diamond.yaml       # relative to the scenario file
//! agents:
//!   fetcher: { delay_ms: 20, fail_first: 1 }
//!   analyst: { delay_ms: 10 }
//! workload: { executions: 10, input: { text: hello }, spacing_ms: 5 }
//! faults:
//!   - { at_ms: 150, crash: engine, restart_after_ms: 300 }
//!   - { at_ms: 50, partition: [engine, analyst], for_ms: 400 }
//! liveness_ms: 60000                    # after the last fault, every execution must end
//! expect: { status: { completed: 10 } }
//! seeds: 8                              # seeds `cargo test` runs
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proctor::agent::example::Behaviour;
use proctor::definition::{self, ProcessDef};
use serde::Deserialize;
use serde_json::Value;

/// The engine's host name; agents are hosts named after themselves.
pub const ENGINE_HOST: &str = "engine";
/// The port every agent host serves on.
pub const AGENT_PORT: u16 = 9000;
/// Upper bound on executions in one scenario.
pub const MAX_EXECUTIONS: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("{0}")]
    Definition(#[from] definition::Diagnostics),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    process: PathBuf,
    agents: BTreeMap<String, Behaviour>,
    workload: Workload,
    #[serde(default)]
    faults: Vec<Fault>,
    #[serde(default = "default_liveness_ms")]
    liveness_ms: u64,
    #[serde(default)]
    expect: Expect,
    #[serde(default = "default_seeds")]
    seeds: u64,
}

fn default_liveness_ms() -> u64 {
    60_000
}

fn default_seeds() -> u64 {
    8
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub executions: usize,
    #[serde(default)]
    pub input: Value,
    /// Simulated time between two submissions.
    #[serde(default)]
    pub spacing_ms: u64,
}

/// One scripted fault. Times are simulated milliseconds from the start of the run.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at_ms: u64,
    /// Crash this host; it restarts `restart_after_ms` later (never, if absent).
    #[serde(default)]
    pub crash: Option<String>,
    #[serde(default)]
    pub restart_after_ms: Option<u64>,
    /// Cut the link between two hosts for `for_ms` (until the end of the fault window if
    /// absent); bytes on open connections are dropped, new connections refused.
    #[serde(default)]
    pub partition: Option<(String, String)>,
    #[serde(default)]
    pub for_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Executions per final status, e.g. `{ completed: 10 }`.
    #[serde(default)]
    pub status: BTreeMap<String, usize>,
}

/// A loaded, checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub file: PathBuf,
    pub process: Arc<ProcessDef>,
    pub agents: BTreeMap<String, Behaviour>,
    pub workload: Workload,
    pub faults: Vec<Fault>,
    pub liveness_ms: u64,
    pub expect: Expect,
    pub seeds: u64,
}

impl Scenario {
    /// Loads a scenario file and the process it names. Errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Scenario, Error> {
        let file_name = path.display().to_string();
        let invalid = |problem: String| Error::Invalid {
            file: file_name.clone(),
            problem,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
        let file: File = serde_norway::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let process_path = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(&file.process);
        let agent_names: Vec<String> = file.agents.keys().cloned().collect();
        let process = definition::load(&process_path, Some(&agent_names))?;
        if file.workload.executions == 0 || file.workload.executions > MAX_EXECUTIONS {
            return Err(invalid(format!(
                "workload.executions must be between 1 and {MAX_EXECUTIONS}"
            )));
        }
        let hosts: Vec<&str> = std::iter::once(ENGINE_HOST)
            .chain(agent_names.iter().map(String::as_str))
            .collect();
        for (i, fault) in file.faults.iter().enumerate() {
            let at = format!("faults[{i}]");
            match (&fault.crash, &fault.partition) {
                (Some(host), None) => {
                    if !hosts.contains(&host.as_str()) {
                        return Err(invalid(format!(
                            "{at}.crash: unknown host '{host}' (hosts: {})",
                            hosts.join(", ")
                        )));
                    }
                }
                (None, Some((a, b))) => {
                    for h in [a, b] {
                        if !hosts.contains(&h.as_str()) {
                            return Err(invalid(format!(
                                "{at}.partition: unknown host '{h}' (hosts: {})",
                                hosts.join(", ")
                            )));
                        }
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "{at}: give exactly one of `crash` or `partition`"
                    )))
                }
            }
        }
        Ok(Scenario {
            name: file.name,
            file: path.to_path_buf(),
            process: Arc::new(process),
            agents: file.agents,
            workload: file.workload,
            faults: file.faults,
            liveness_ms: file.liveness_ms,
            expect: file.expect,
            seeds: file.seeds,
        })
    }

    /// When the last scripted fault ends; the liveness phase starts then.
    pub fn fault_window_ms(&self) -> u64 {
        self.faults
            .iter()
            .map(|f| f.at_ms + f.restart_after_ms.unwrap_or(0).max(f.for_ms.unwrap_or(0)))
            .max()
            .unwrap_or(0)
    }
}
