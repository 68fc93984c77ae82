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
use proctor::core::StepStatus;
use proctor::definition::{self, ProcessDef, StepKind};
use proctor::schedule::ScheduleSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::disk::Unsynced;
use crate::runner::EPOCH_MS;

/// The engine's host name; agents are hosts named after themselves.
pub const ENGINE_HOST: &str = "engine";
/// The port every agent host serves on.
pub const AGENT_PORT: u16 = 9000;
/// The host that drives the workload through the API.
pub const CLIENT_HOST: &str = "client";
/// Where the engine host serves its HTTP API.
pub const API_PORT: u16 = 8080;
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
    #[serde(default)]
    chaos: Option<Chaos>,
    #[serde(default = "default_liveness_ms")]
    liveness_ms: u64,
    #[serde(default)]
    expect: Expect,
    #[serde(default = "default_seeds")]
    seeds: u64,
    #[serde(default)]
    clock: Option<ClockSpec>,
    #[serde(default)]
    disk: DiskSpec,
    /// Values for the process's `${secrets.NAME}` references (`http` steps' headers).
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// A simulated mail server for `email` steps.
    #[serde(default)]
    smtp: Option<SmtpSpec>,
}

/// The simulated mail server (`sim/src/smtp.rs`): a host of this name, port 25, which faults
/// can crash, partition and hold like an agent's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSpec {
    pub host: String,
}

/// The engine's disk: how SQLite syncs (production: `full`) and what a power cut does to
/// writes that were never synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    #[serde(default)]
    pub synchronous: SyncMode,
    #[serde(default)]
    pub unsynced_at_crash: Unsynced,
}

/// SQLite's `synchronous` setting for the engine's database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// The production setting.
    #[default]
    Full,
    Normal,
    /// Never sync: the negative control, which must lose acknowledged state.
    Off,
}

impl SyncMode {
    pub fn store_setting(self) -> proctor::store::Synchronous {
        match self {
            SyncMode::Full => proctor::store::Synchronous::Full,
            SyncMode::Normal => proctor::store::Synchronous::Normal,
            SyncMode::Off => proctor::store::Synchronous::Off,
        }
    }
}

/// Where the engine's wall clock starts (it still advances with simulated time, and jumps
/// with `clock_jump_ms` faults).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockSpec {
    /// RFC 3339, not before the simulator's epoch (2023-11-14T22:13:20Z).
    start: String,
}

/// Largest forward clock jump one fault may make.
pub const MAX_CLOCK_JUMP_MS: i64 = 400 * 24 * 3_600_000;
/// Largest backward clock jump one fault may make.
pub const MAX_CLOCK_JUMP_BACK_MS: i64 = 24 * 3_600_000;

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
    /// Signals the client sends to every execution, each once the run is `at_ms` old and the
    /// execution acknowledged (so a late execution gets it before it reaches its step).
    #[serde(default)]
    pub signals: Vec<WorkloadSignal>,
    /// The client sends the signals through signed inbound webhooks (`POST
    /// /api/webhooks/<signal>[-<tenant>]/{id}`, the signal id as the delivery id) instead of
    /// the signal route; the engine host serves one webhook per signal name and tenant.
    #[serde(default)]
    pub webhook: bool,
    /// Schedules the engine registers at every boot and runs (their runs are checked like
    /// the submitted executions). With schedules, `executions` may be 0.
    #[serde(default)]
    pub schedules: Vec<WorkloadSchedule>,
    /// Definition changes during the workload. With any, the process is registered (as
    /// version 1) and every submission creates from the registry's current version.
    #[serde(default)]
    pub versions: Vec<VersionChange>,
    /// Further definitions the engine registers at every boot (the children that
    /// `subprocess` steps start), relative to the scenario file.
    #[serde(default)]
    pub definitions: Vec<PathBuf>,
    /// `definitions`, loaded.
    #[serde(skip)]
    pub loaded_definitions: Vec<Arc<ProcessDef>>,
    /// Submit as these tenants, in turn (submission n as `tenants[n % len]`), through the
    /// tenant-scoped API; the process is registered in each tenant's registry.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// A retention purge the engine host runs once, `at_ms` into the run.
    #[serde(default)]
    pub purge: Option<WorkloadPurge>,
    /// The client samples every acknowledged execution's progress (`Execution::progress`) as
    /// it polls, for `progress_monotonic`.
    #[serde(default)]
    pub monitor: bool,
    /// The client follows every execution's live event stream (SSE) to its end, reconnecting
    /// after each failure from the last event it saw, for `stream_complete`.
    #[serde(default)]
    pub stream: bool,
    /// The client pauses some executions through the API, then resumes them.
    #[serde(default)]
    pub pause: Option<WorkloadPause>,
    /// The client cancels some executions through the API.
    #[serde(default)]
    pub cancel: Option<WorkloadCancel>,
}

/// Once the run is `at_ms` old, pause every `every`th execution (0, every, 2 × every, ...)
/// as soon as it is acknowledged, asked until answered (one that has already ended answers
/// 409 and is left alone); `resume_after_ms` later, resume them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPause {
    pub at_ms: u64,
    #[serde(default = "default_every")]
    pub every: usize,
    /// How long after `at_ms` the client resumes them.
    pub resume_after_ms: u64,
}

/// Once the run is `at_ms` old, cancel every `every`th execution (0, every, 2 × every, ...)
/// as soon as it is acknowledged, asked until answered.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCancel {
    pub at_ms: u64,
    #[serde(default = "default_every")]
    pub every: usize,
}

fn default_every() -> usize {
    1
}

/// A retention purge of finished executions last changed more than `older_than_ms` ago.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPurge {
    pub at_ms: u64,
    pub older_than_ms: u64,
}

/// Once `after` executions are acknowledged: register `process` (a new version), or make
/// version `current` current again (a rollback).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionChange {
    pub after: usize,
    #[serde(default)]
    pub process: Option<PathBuf>,
    #[serde(default)]
    pub current: Option<u32>,
    /// `process`, loaded.
    #[serde(skip)]
    pub loaded: Option<Arc<ProcessDef>>,
}

/// One schedule of the workload: the scenario's process, started at each fire.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSchedule {
    pub name: String,
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub input: Value,
}

/// One signal of the workload.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSignal {
    pub name: String,
    #[serde(default)]
    pub at_ms: u64,
    #[serde(default)]
    pub payload: Value,
}

/// One scripted fault: a trigger (`at_ms`, or a named `point`) and one action.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Simulated ms from the start of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Or: the engine crashes at a named point in its work (see [`Point`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<Point>,
    /// With `point: step_running` or `timer_waiting`: only this step counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// With `point`: the occurrence that triggers it (1 = the first).
    #[serde(default = "default_nth", skip_serializing_if = "is_default_nth")]
    pub nth: u32,
    /// Crash this host; it restarts `restart_after_ms` later (never, if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after_ms: Option<u64>,
    /// Cut the link between two hosts: bytes on open connections are dropped, new
    /// connections refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<(String, String)>,
    /// Hold the link: messages queue and are delivered, late, on release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<(String, String)>,
    /// Slow the link: messages take up to `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Bursts of loss on the link: every simulated ms, with chance `loss_rate`, the link
    /// breaks for a moment and drops what is in flight on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_rate: Option<f64>,
    /// Duplicated requests: each of the engine's new connections to this host (an agent)
    /// is, with chance `duplicate_rate`, also sent down a second connection nobody reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_rate: Option<f64>,
    /// How long a partition, hold or latency change lasts (until the end of the fault window
    /// if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// The engine's next `commits` storage writes fail this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commits: Option<u32>,
    /// Step the engine's wall clock this far at once, forward (positive) or back (negative),
    /// while simulated time goes on as before: an operator's or NTP's correction, downtime as
    /// the scheduler sees it, DST transitions within a short run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_jump_ms: Option<i64>,
    /// A fault of the engine's disk, below SQLite: `full` (for `for_ms`, or to the end of the
    /// fault window), or the next `ops` reads, writes or syncs fail with EIO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<u32>,
}

/// A fault of the simulated disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFault {
    /// Writes that grow a file fail (ENOSPC).
    Full,
    ReadError,
    WriteError,
    SyncError,
}

impl DiskFault {
    /// The operation an EIO fault fails (`full` fails writes).
    pub fn op(self) -> crate::disk::Op {
        match self {
            DiskFault::ReadError => crate::disk::Op::Read,
            DiskFault::Full | DiskFault::WriteError => crate::disk::Op::Write,
            DiskFault::SyncError => crate::disk::Op::Sync,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DiskFault::Full => "disk_full",
            DiskFault::ReadError => "read_error",
            DiskFault::WriteError => "write_error",
            DiskFault::SyncError => "sync_error",
        }
    }
}

/// Most disk operations one `ops` fault may fail.
pub const MAX_FAULTY_OPS: u32 = 1_000;

fn default_nth() -> u32 {
    1
}

fn is_default_nth(nth: &u32) -> bool {
    *nth == default_nth()
}

impl Fault {
    /// When a timed fault is over (its host back, its link healed); `None` for a fault at a
    /// named point, whose time is known only once it fires.
    pub fn ends_at_ms(&self) -> Option<u64> {
        let lasts = self
            .restart_after_ms
            .unwrap_or(0)
            .max(self.for_ms.unwrap_or(0));
        self.at_ms.map(|at| at + lasts)
    }
}

impl Default for Fault {
    fn default() -> Fault {
        Fault {
            at_ms: None,
            point: None,
            step: None,
            nth: default_nth(),
            crash: None,
            restart_after_ms: None,
            partition: None,
            hold: None,
            latency: None,
            latency_ms: None,
            loss: None,
            loss_rate: None,
            duplicate: None,
            duplicate_rate: None,
            for_ms: None,
            storage: None,
            commits: None,
            clock_jump_ms: None,
            disk: None,
            ops: None,
        }
    }
}

/// Named points at which the engine host dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    /// Before the nth storage write (commit or create) reaches the disk.
    BeforeCommit,
    /// After the nth storage write is durable, before the engine sees the reply (so before it
    /// acts on it: no agent call, no ack to a caller).
    AfterCommit,
    /// After the nth execution create is durable, before the engine sees the reply (so before
    /// the API answers the client's start: the client must ask again).
    AfterCreate,
    /// When an agent has applied the nth matching step call and its reply is on the wire.
    StepRunning,
    /// Right after the nth matching timer step started durably (its wake-up not yet armed).
    TimerWaiting,
    /// A power cut during the nth disk write (counted from `at_ms`, if given): the engine's
    /// SQLite dies in the middle of whatever it was writing.
    DiskWrite,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::BeforeCommit => "before_commit",
            Point::AfterCommit => "after_commit",
            Point::AfterCreate => "after_create",
            Point::StepRunning => "step_running",
            Point::TimerWaiting => "timer_waiting",
            Point::DiskWrite => "disk_write",
        }
    }
}

/// How a storage write fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageFault {
    /// Nothing is written; the engine gets an I/O error.
    IoError,
    /// The write is durable, but the engine gets an error (it cannot tell which happened).
    Ambiguous,
}

impl StorageFault {
    pub fn name(self) -> &'static str {
        match self {
            StorageFault::IoError => "io_error",
            StorageFault::Ambiguous => "ambiguous_commit",
        }
    }
}

/// Random faults (chaos): rates per simulated second for timed faults, per storage write for
/// storage faults. With `swarm` (the default), each seed enables a random non-empty subset of
/// the kinds that have a rate, so a sweep also explores runs dominated by one kind.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Chaos {
    /// Random faults start within this window; the liveness phase follows it.
    pub window_ms: u64,
    #[serde(default)]
    pub crash_rate: f64,
    #[serde(default)]
    pub agent_crash_rate: f64,
    #[serde(default)]
    pub partition_rate: f64,
    #[serde(default)]
    pub hold_rate: f64,
    #[serde(default)]
    pub latency_rate: f64,
    #[serde(default)]
    pub storage_error_rate: f64,
    #[serde(default)]
    pub ambiguous_commit_rate: f64,
    /// Per disk operation (read, write, sync): the chance it fails with EIO.
    #[serde(default)]
    pub disk_error_rate: f64,
    /// Per second: the chance the disk fills up for a while.
    #[serde(default)]
    pub disk_full_rate: f64,
    /// Loss bursts on a random link per second (50 ms to 2 s, each ms losing with a chance of
    /// 5 to 50 %).
    #[serde(default)]
    pub loss_rate: f64,
    /// Spells of duplicated requests to a random agent per second (50 ms to 2 s, each
    /// connection duplicated with a chance of 20 to 100 %).
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Per second: the chance of a power cut in one of the engine's next disk writes.
    #[serde(default)]
    pub power_cut_rate: f64,
    #[serde(default = "default_true")]
    pub swarm: bool,
}

fn default_true() -> bool {
    true
}

/// Longest a chaos window may be.
pub const MAX_CHAOS_WINDOW_MS: u64 = 600_000;
/// Most storage writes one storage fault may spoil.
pub const MAX_FAULTY_COMMITS: u32 = 1_000;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Executions per final status, e.g. `{ completed: 10 }`.
    #[serde(default)]
    pub status: BTreeMap<String, usize>,
    /// Final step statuses, counted over all executions, for the steps named:
    /// `{ hotel: { compensated: 10 } }`. Statuses not listed are not checked.
    #[serde(default)]
    pub steps: BTreeMap<String, BTreeMap<StepStatus, usize>>,
    /// Executions a `workload.purge` deleted.
    #[serde(default)]
    pub purged: Option<usize>,
    /// Executions per definition version they ran, e.g. `{ 1: 6, 2: 3 }`.
    #[serde(default)]
    pub versions: BTreeMap<u32, usize>,
    /// Every execution ends within this many simulated ms after the fault window closes
    /// (a tighter bound than `liveness_ms`, which only bounds the run).
    #[serde(default)]
    pub finish_within_ms: Option<u64>,
    /// After each engine restart, every execution that was unfinished records progress (its
    /// recovery) within this many simulated ms.
    #[serde(default)]
    pub resume_within_ms: Option<u64>,
    /// At least this many starts were answered with the execution an earlier request under
    /// the same idempotency key created (`created: false`): the client really retried.
    #[serde(default)]
    pub min_replayed_starts: Option<usize>,
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
    pub chaos: Option<Chaos>,
    pub liveness_ms: u64,
    pub expect: Expect,
    pub seeds: u64,
    /// The engine's wall clock at simulated time 0 (ms since the Unix epoch).
    pub clock_start_ms: u64,
    pub disk: DiskSpec,
    /// What the engine's `${secrets.NAME}` references resolve to.
    pub secrets: BTreeMap<String, String>,
    /// The simulated mail server's host name, if the scenario has one.
    pub smtp_host: Option<String>,
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
        let process = definition::load(&process_path, Some(&agent_names))
            .map_err(|d| invalid(format!("process: {d}")))?;
        let mut file = file;
        let path_dir = path.parent().unwrap_or(Path::new("."));
        for (i, change) in file.workload.versions.iter_mut().enumerate() {
            match (&change.process, change.current) {
                (Some(path), None) => {
                    let path = path_dir.join(path);
                    let def = definition::load(&path, Some(&agent_names))
                        .map_err(|d| invalid(format!("workload.versions[{i}].process: {d}")))?;
                    if def.name != process.name {
                        return Err(invalid(format!(
                            "workload.versions[{i}].process: names '{}', not '{}'",
                            def.name, process.name
                        )));
                    }
                    change.loaded = Some(Arc::new(def));
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(invalid(format!(
                        "workload.versions[{i}]: give exactly one of `process` or `current`"
                    )))
                }
            }
        }
        for (i, path) in file.workload.definitions.iter().enumerate() {
            let def = definition::load(&path_dir.join(path), Some(&agent_names))
                .map_err(|d| invalid(format!("workload.definitions[{i}]: {d}")))?;
            file.workload.loaded_definitions.push(Arc::new(def));
        }
        for (i, tenant) in file.workload.tenants.iter().enumerate() {
            if !proctor::name::is_plain(tenant, proctor::tenant::MAX_TENANT_BYTES) {
                return Err(invalid(format!(
                    "workload.tenants[{i}]: letters, digits, '_' and '-' only"
                )));
            }
        }
        if file.workload.webhook && file.workload.signals.is_empty() {
            return Err(invalid(
                "workload.webhook: delivers the workload's signals, and there are none".into(),
            ));
        }
        if !file.workload.tenants.is_empty() && !file.workload.versions.is_empty() {
            return Err(invalid(
                "workload.tenants: not together with workload.versions".into(),
            ));
        }
        let at_least = usize::from(file.workload.schedules.is_empty());
        for (i, s) in file.workload.schedules.iter().enumerate() {
            let max = proctor::scheduler::MAX_SCHEDULE_NAME_BYTES;
            if !proctor::name::is_plain(&s.name, max) {
                return Err(invalid(format!(
                    "workload.schedules[{i}].name: 1 to {max} letters, digits, '_' and '-'"
                )));
            }
            if let Err(e) = s.schedule.check() {
                return Err(invalid(format!("workload.schedules[{i}].schedule.{e}")));
            }
        }
        let clock_start_ms = match &file.clock {
            None => EPOCH_MS,
            Some(c) => humantime::parse_rfc3339_weak(&c.start)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .filter(|&ms| ms >= EPOCH_MS)
                .ok_or_else(|| {
                    invalid(format!(
                        "clock.start: {:?} is not an RFC 3339 time at or after 2023-11-14T22:13:20Z",
                        c.start
                    ))
                })?,
        };
        let moves_clock =
            file.clock.is_some() || file.faults.iter().any(|f| f.clock_jump_ms.is_some());
        if moves_clock
            && (file.expect.finish_within_ms.is_some() || file.expect.resume_within_ms.is_some())
        {
            return Err(invalid(
                "expect: finish_within_ms and resume_within_ms measure simulated time; \
                 they cannot be combined with `clock` or `clock_jump_ms`"
                    .into(),
            ));
        }
        if file.workload.executions < at_least || file.workload.executions > MAX_EXECUTIONS {
            return Err(invalid(format!(
                "workload.executions: must be between {at_least} and {MAX_EXECUTIONS}"
            )));
        }
        if let Some(smtp) = &file.smtp {
            let taken = smtp.host == ENGINE_HOST
                || smtp.host == CLIENT_HOST
                || agent_names.contains(&smtp.host);
            let valid = !smtp.host.is_empty()
                && smtp
                    .host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if taken || !valid {
                return Err(invalid(format!(
                    "smtp.host: '{}' must be a host name (letters, digits, '-') that no other \
                     host has",
                    smtp.host
                )));
            }
        }
        let hosts: Vec<&str> = [ENGINE_HOST, CLIENT_HOST]
            .into_iter()
            .chain(agent_names.iter().map(String::as_str))
            .chain(file.smtp.as_ref().map(|s| s.host.as_str()))
            .collect();
        // A step's compensating action is called as `<step>#compensate`, and a `foreach`
        // item as `<step>#<index>`; a crash point may name them.
        let step_ids: Vec<String> = process
            .steps
            .iter()
            .chain(
                file.workload
                    .loaded_definitions
                    .iter()
                    .flat_map(|d| d.steps.iter()),
            )
            .flat_map(|s| {
                let undo = matches!(&s.kind, StepKind::AgentTask(t) if t.compensate.is_some())
                    .then(|| format!("{}#compensate", s.id));
                std::iter::once(s.id.clone()).chain(undo)
            })
            .collect();
        for (i, fault) in file.faults.iter().enumerate() {
            check_fault(fault, &hosts, &step_ids, &process)
                .map_err(|problem| invalid(format!("faults[{i}].{problem}")))?;
        }
        for step in file.expect.steps.keys() {
            if process.position(step).is_none() {
                return Err(invalid(format!(
                    "expect.steps: the process has no step '{step}'"
                )));
            }
        }
        if let Some(chaos) = &file.chaos {
            check_chaos(chaos).map_err(|problem| invalid(format!("chaos.{problem}")))?;
        }
        for (name, behaviour) in &file.agents {
            behaviour
                .check()
                .map_err(|problem| invalid(format!("agents.{name}.{problem}")))?;
        }
        Ok(Scenario {
            name: file.name,
            file: path.to_path_buf(),
            process: Arc::new(process),
            agents: file.agents,
            workload: file.workload,
            faults: file.faults,
            chaos: file.chaos,
            liveness_ms: file.liveness_ms,
            expect: file.expect,
            seeds: file.seeds,
            clock_start_ms,
            disk: file.disk,
            secrets: file.secrets,
            smtp_host: file.smtp.map(|s| s.host),
        })
    }

    /// When the last timed fault (scripted or chaos) ends, or the workload's purge runs; the
    /// liveness phase starts then, or later if a fault at a named point fires after it.
    pub fn fault_window_ms(&self) -> u64 {
        let scripted = self
            .faults
            .iter()
            .filter_map(Fault::ends_at_ms)
            .max()
            .unwrap_or(0);
        let chaos = self.chaos.as_ref().map_or(0, |c| c.window_ms);
        // A purge counts as part of the window, so the run lasts until it has happened.
        let purge = self.workload.purge.as_ref().map_or(0, |p| p.at_ms + 1);
        scripted.max(chaos).max(purge)
    }
}

/// One fault's problem, as `field: problem` (the caller prefixes `faults[i].`).
fn check_fault(
    fault: &Fault,
    hosts: &[&str],
    steps: &[String],
    process: &ProcessDef,
) -> Result<(), String> {
    let known = |field: &str, h: &String| {
        if hosts.contains(&h.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "{field}: unknown host '{h}' (hosts: {})",
                hosts.join(", ")
            ))
        }
    };
    let actions = [
        fault.crash.is_some(),
        fault.partition.is_some(),
        fault.hold.is_some(),
        fault.latency.is_some(),
        fault.loss.is_some(),
        fault.duplicate.is_some(),
        fault.storage.is_some(),
        fault.clock_jump_ms.is_some(),
        fault.disk.is_some(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err(
            "action: give exactly one of `crash`, `partition`, `hold`, `latency`, `loss`, \
             `duplicate`, `storage`, `clock_jump_ms`, `disk`"
                .into(),
        );
    }
    if let Some(disk) = fault.disk {
        if fault.at_ms.is_none() {
            return Err("disk: a disk fault needs `at_ms`".into());
        }
        if disk == DiskFault::Full && fault.ops.is_some() {
            return Err("ops: not with `disk: full` (it lasts `for_ms`)".into());
        }
        if fault.ops.is_some_and(|n| n == 0 || n > MAX_FAULTY_OPS) {
            return Err(format!("ops: must be between 1 and {MAX_FAULTY_OPS}"));
        }
        if disk != DiskFault::Full && fault.for_ms.is_some() {
            return Err("for_ms: only with `disk: full` (an EIO fault counts `ops`)".into());
        }
    } else if fault.ops.is_some() {
        return Err("ops: only with `disk`".into());
    }
    if let Some(jump) = fault.clock_jump_ms {
        if fault.at_ms.is_none() {
            return Err("clock_jump_ms: a clock jump needs `at_ms`".into());
        }
        if jump == 0 || !(-MAX_CLOCK_JUMP_BACK_MS..=MAX_CLOCK_JUMP_MS).contains(&jump) {
            return Err(format!(
                "clock_jump_ms: must be between -{MAX_CLOCK_JUMP_BACK_MS} (back) and \
                 {MAX_CLOCK_JUMP_MS} (forward), and not 0"
            ));
        }
    }
    if fault.storage.is_some() && fault.at_ms.is_none() {
        return Err("storage: a storage fault needs `at_ms`".into());
    }
    match (fault.at_ms, fault.point) {
        (Some(_), None) | (None, Some(_)) | (Some(_), Some(Point::DiskWrite)) => {}
        _ => {
            return Err(
                "at_ms: give exactly one of `at_ms` or `point` (both only with \
                 `point: disk_write`, which counts writes from `at_ms`)"
                    .into(),
            )
        }
    }
    if fault.point.is_none() && fault.nth != default_nth() {
        return Err("nth: only with `point` (a timed fault happens once, at `at_ms`)".into());
    }
    if let Some(point) = fault.point {
        if fault.crash.as_deref() != Some(ENGINE_HOST) {
            return Err(format!(
                "point: a fault at point `{}` crashes the engine: write `crash: engine`",
                point.name()
            ));
        }
        if fault.nth == 0 {
            return Err("nth: counts from 1".into());
        }
    }
    if let Some(step) = &fault.step {
        if !matches!(fault.point, Some(Point::StepRunning | Point::TimerWaiting)) {
            return Err("step: only with `point: step_running` or `point: timer_waiting`".into());
        }
        let loop_item = step.split_once('#').is_some_and(|(id, index)| {
            index.parse::<u32>().is_ok()
                && process
                    .steps
                    .iter()
                    .any(|s| s.id == id && matches!(s.kind, StepKind::Foreach(_)))
        });
        if !steps.contains(step) && !loop_item {
            return Err(format!("step: the process has no step '{step}'"));
        }
    }
    if let Some(host) = &fault.crash {
        known("crash", host)?;
    }
    for (field, link) in [
        ("partition", &fault.partition),
        ("hold", &fault.hold),
        ("latency", &fault.latency),
        ("loss", &fault.loss),
    ] {
        if let Some((a, b)) = link {
            known(field, a)?;
            known(field, b)?;
            if a == b {
                return Err(format!("{field}: a link joins two different hosts"));
            }
        }
    }
    if fault.latency.is_some() != fault.latency_ms.is_some() {
        return Err("latency_ms: `latency: [a, b]` and `latency_ms` go together".into());
    }
    for (field, action, given, rate) in [
        (
            "loss_rate",
            "`loss: [a, b]`",
            fault.loss.is_some(),
            fault.loss_rate,
        ),
        (
            "duplicate_rate",
            "`duplicate: HOST`",
            fault.duplicate.is_some(),
            fault.duplicate_rate,
        ),
    ] {
        if given != rate.is_some() {
            return Err(format!("{field}: {action} and `{field}` go together"));
        }
        if let Some(p) = rate.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(format!("{field}: must be above 0 and at most 1, got {p}"));
        }
    }
    if let Some(host) = &fault.duplicate {
        if host == ENGINE_HOST || host == CLIENT_HOST || !hosts.contains(&host.as_str()) {
            return Err(format!(
                "duplicate: '{host}' is not an agent (the engine's requests to agents are \
                 duplicated)"
            ));
        }
    }
    if fault.storage.is_some() {
        if let Some(n) = fault.commits {
            if n == 0 || n > MAX_FAULTY_COMMITS {
                return Err(format!(
                    "commits: must be between 1 and {MAX_FAULTY_COMMITS}"
                ));
            }
        }
    } else if fault.commits.is_some() {
        return Err("commits: only with `storage`".into());
    }
    if fault.restart_after_ms.is_some() && fault.crash.is_none() {
        return Err("restart_after_ms: only with `crash`".into());
    }
    if fault.for_ms.is_some()
        && fault.partition.is_none()
        && fault.hold.is_none()
        && fault.latency.is_none()
        && fault.loss.is_none()
        && fault.duplicate.is_none()
        && fault.disk != Some(DiskFault::Full)
    {
        return Err(
            "for_ms: only with `partition`, `hold`, `latency`, `loss`, `duplicate` or \
             `disk: full`"
                .into(),
        );
    }
    Ok(())
}

fn check_chaos(chaos: &Chaos) -> Result<(), String> {
    if chaos.window_ms == 0 || chaos.window_ms > MAX_CHAOS_WINDOW_MS {
        return Err(format!(
            "window_ms: must be between 1 and {MAX_CHAOS_WINDOW_MS}"
        ));
    }
    for (field, rate, max) in [
        ("crash_rate", chaos.crash_rate, 100.0),
        ("agent_crash_rate", chaos.agent_crash_rate, 100.0),
        ("partition_rate", chaos.partition_rate, 100.0),
        ("hold_rate", chaos.hold_rate, 100.0),
        ("latency_rate", chaos.latency_rate, 100.0),
        ("loss_rate", chaos.loss_rate, 100.0),
        ("duplicate_rate", chaos.duplicate_rate, 100.0),
        ("storage_error_rate", chaos.storage_error_rate, 1.0),
        ("ambiguous_commit_rate", chaos.ambiguous_commit_rate, 1.0),
        ("disk_error_rate", chaos.disk_error_rate, 1.0),
        ("disk_full_rate", chaos.disk_full_rate, 100.0),
        ("power_cut_rate", chaos.power_cut_rate, 100.0),
    ] {
        if !rate.is_finite() || !(0.0..=max).contains(&rate) {
            return Err(format!("{field}: must be between 0 and {max}, got {rate}"));
        }
    }
    Ok(())
}
