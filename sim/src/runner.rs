//! One run = (scenario, seed).
//!
//! Hosts: `engine` runs the real driver over the sim ports and the storage fault layer,
//! recovers on every boot, then serves the HTTP API ([`proctor::api`]) over simulated TCP;
//! one host per agent runs the example agent; `client` ([`crate::client`]) submits the
//! workload through that API and waits for every execution to finish or the liveness bound
//! to pass.
//! The engine's SQLite database lives on a simulated disk ([`crate::disk`], reached through
//! [`crate::vfs`]) that outlives the engine host: a crash loses the engine's memory, its
//! connection and every write the disk had not synced (the scenario's `disk` says which of
//! those survive), and the next life opens the file again, as SQLite would after a power cut.
//! The run's outcome is read after one last power cut, so it is what the disk made durable.
//! Agents' ledgers live outside their hosts.
//!
//! Faults come from the scenario's script and from its chaos rates (drawn from the seed
//! before the run). The runner applies timed faults between simulation steps, crashes the
//! engine when the storage layer reports a named point, and stops every fault when the fault
//! window closes; the liveness phase follows.
//!
//! Every random choice derives from the seed: turmoil's (latencies, scheduling), the
//! engine's RNG (`seed` mixed with the boot number), the agents', the chaos plan's and the
//! storage layer's, each its own stream.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

use proctor::agent::example::{self, Ledger};
use proctor::agent::{AgentEndpoint, AgentRegistry};
use proctor::api::auth::{Auth, TokenEntry};
use proctor::api::Api;
use proctor::core::Execution;
use proctor::event::EventRecord;
use proctor::network::Network as _;
use proctor::store::{self, Committer, FireOutcome, SqliteOptions, SqliteStore, Storage};
use proctor::{Engine, EngineConfig, Ports, RecoveryConfig};

use crate::chaos;
use crate::checker::{self, Violation};
use crate::disk::Disk;
use crate::ports::{Duplicates, DuplicatingNetwork, SimClock, SimNetwork};
use crate::scenario::{
    DiskFault, DiskSpec, Fault, Point, Scenario, StorageFault, AGENT_PORT, API_PORT, ENGINE_HOST,
};
use crate::storage::{Faults, FaultyStore, PointCrash};
use crate::trace::Trace;

/// The simulated wall clock starts here (2023-11-14T22:13:20Z), never at the real time.
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// One simulation step.
pub const TICK_MS: u64 = 1;
/// Message latency on a healthy link.
pub const MIN_LATENCY_MS: u64 = 1;
pub const MAX_LATENCY_MS: u64 = 5;
/// How long the engine host waits before retrying a failed start-up step or submission.
const RETRY_MS: u64 = 50;
/// Connections a simulated socket may queue.
const TCP_CAPACITY: usize = 4_096;
/// Stuck executions a liveness failure lists.
const MAX_STUCK_LISTED: usize = 10;
/// How far past the scripted window a fault at a named point may stretch the run.
const MAX_LATE_WINDOW_MS: u64 = 600_000;

/// What a run produced; the checkers judge it.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub trace: Trace,
    /// Executions the client saw acknowledged, in submission order.
    pub acknowledged: Vec<String>,
    /// Every answered start, in order (a retried start appears once, when answered).
    pub starts: Vec<StartAck>,
    /// The durable store's executions by idempotency key, across all tenants.
    pub keyed: BTreeMap<String, Vec<String>>,
    /// Executions of the scenario's process in the store that carry no idempotency key and
    /// that no answered start, schedule or parent accounts for.
    pub unclaimed: Vec<String>,
    /// Their final durable state and history, then the scheduled runs'.
    pub executions: Vec<(Execution, Vec<EventRecord>)>,
    /// Each schedule's decided fires: `name local (utc) outcome`, in time order.
    pub schedule_fires: Vec<String>,
    /// With `workload.tenants`: each tenant's own listing of its executions, sorted.
    pub tenant_lists: BTreeMap<String, Vec<String>>,
    /// With `workload.purge`: what its dry run listed (all it may have deleted), and its cutoff.
    pub purge_candidates: Vec<store::PurgedExecution>,
    pub purge_cutoff_ms: u64,
    /// With `workload.monitor`: the progress percentages the client saw, per execution.
    pub progress: BTreeMap<String, Vec<u8>>,
    /// With `workload.stream`: what each execution's live stream delivered, `(seq, kind)`.
    pub streamed: BTreeMap<String, Vec<(u64, String)>>,
    pub ledgers: BTreeMap<String, Ledger>,
    pub engine_boots: u32,
    /// Faults injected, by kind (`engine_crash`, `partition`, `io_error`, ...).
    pub faults: BTreeMap<String, usize>,
    /// The fault kinds this seed's chaos enabled (swarm testing).
    pub chaos_kinds: Vec<String>,
    /// Storage writes the engine attempted.
    pub storage_writes: u64,
    /// Fault coverage: `fault × state` for each engine state a fault met.
    pub coverage: BTreeSet<String>,
    /// When each published event happened in simulated time (monotonic, unlike the engine's
    /// wall clock, which clock jumps move), by (execution id, seq).
    pub event_sim_ms: BTreeMap<(String, u64), u64>,
    /// The engine's wall clock minus simulated time, from each simulated ms on (`clock.start`,
    /// then every clock jump): what the engine's clock read at any simulated moment.
    pub clock_offsets: Vec<(u64, i64)>,
    /// Scripted faults at named points that never fired: the run did not test what the
    /// scenario says it tests.
    pub unfired: Vec<String>,
    /// When the last fault ended: the liveness phase began then.
    pub window_end_ms: u64,
    /// When the engine host came back after each crash.
    pub engine_restarts_ms: Vec<u64>,
    /// Every fault as it began, ended or struck, in simulated time: what the timeline draws.
    pub fault_log: Vec<FaultEntry>,
    /// What the simulated mail server took, in order (empty without `smtp`).
    pub mail: Vec<crate::smtp::Mail>,
    pub elapsed_ms: u64,
    /// A host's error, or the liveness bound passing with executions still active.
    pub sim_error: Option<String>,
    pub violations: Vec<Violation>,
}

/// One fault in the run's log: the start or end of a fault that lasts (a crash until its
/// restart, a cut link until it heals, a full disk), or one that strikes once.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FaultEntry {
    /// Simulated ms since the run began.
    pub at_ms: u64,
    /// What lasts or strikes: `crash`, `partition`, `hold`, `latency`, `loss`, `disk_full`,
    /// `duplicate`, `clock_jump`, a disk fault's or a storage fault's name.
    pub kind: String,
    pub phase: FaultPhase,
    /// The hosts it touches (both ends of a link).
    pub hosts: Vec<String>,
    /// As the trace says it.
    pub label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultPhase {
    Begins,
    Ends,
    Strikes,
}

impl Action {
    /// How the fault log records this action: `None` for bookkeeping that is no fault.
    fn fault_entry(&self, at_ms: u64) -> Option<FaultEntry> {
        let engine = || vec![ENGINE_HOST.to_string()];
        let (kind, phase, hosts) = match self {
            Action::Crash { host, .. } => {
                ("crash".to_string(), FaultPhase::Begins, vec![host.clone()])
            }
            Action::Restart(host) => ("crash".to_string(), FaultPhase::Ends, vec![host.clone()]),
            Action::Cut(link, a, b) => (
                link_kind(link).to_string(),
                FaultPhase::Begins,
                vec![a.clone(), b.clone()],
            ),
            Action::Heal(link, a, b) => (
                link_kind(link).to_string(),
                FaultPhase::Ends,
                vec![a.clone(), b.clone()],
            ),
            Action::Storage(kind, _) => (kind.name().to_string(), FaultPhase::Strikes, engine()),
            Action::ClockJump(_) => ("clock_jump".to_string(), FaultPhase::Strikes, engine()),
            Action::Disk(kind, _) => (kind.name().to_string(), FaultPhase::Strikes, engine()),
            Action::DiskFull(full) => (
                "disk_full".to_string(),
                if *full {
                    FaultPhase::Begins
                } else {
                    FaultPhase::Ends
                },
                engine(),
            ),
            Action::ArmCut(..) => return None,
            Action::Duplicate(host, rate) => (
                "duplicate".to_string(),
                if *rate > 0.0 {
                    FaultPhase::Begins
                } else {
                    FaultPhase::Ends
                },
                vec![ENGINE_HOST.to_string(), host.clone()],
            ),
        };
        Some(FaultEntry {
            at_ms,
            kind,
            phase,
            hosts,
            label: String::new(),
        })
    }
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// What the engine's wall clock read at simulated time `sim_ms`.
    pub fn engine_clock_at(&self, sim_ms: u64) -> u64 {
        let offset = self
            .clock_offsets
            .iter()
            .rev()
            .find(|(from, _)| *from <= sim_ms)
            .map_or(0, |(_, offset)| *offset);
        (EPOCH_MS + sim_ms).saturating_add_signed(offset)
    }

    /// The command that replays this run.
    pub fn repro(&self) -> String {
        format!("cargo xtask repro {} --seed {}", self.scenario, self.seed)
    }

    /// Final statuses with counts, e.g. `completed: 10`.
    pub fn status_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (e, _) in &self.executions {
            *counts.entry(e.status.to_string()).or_insert(0) += 1;
        }
        counts
    }
}

/// One start the API answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartAck {
    pub key: String,
    pub id: String,
    /// The answer said this request created it (`false`: the key had, earlier).
    pub created: bool,
    pub tenant: Option<String>,
    /// Simulated ms since the run began: the first try, and the answer (after any retries).
    pub sent_ms: u64,
    pub answered_ms: u64,
}

/// State that outlives host crashes.
pub(crate) struct Shared {
    /// The engine's disk, and the database connection of the engine's current life (`None`
    /// while it is down or still opening it).
    disk: Disk,
    disk_spec: DiskSpec,
    store: Mutex<Option<SqliteStore>>,
    /// The engine host is up but has not finished recovering: its scan is running, or an
    /// execution it recovers has not yet committed its `ExecutionRecovered` (recovery hands
    /// each one to its own task).
    recovering: std::sync::atomic::AtomicBool,
    awaiting_recovery: Mutex<BTreeSet<String>>,
    /// The executions whose `ExecutionRecovered` this life has published.
    recovered_in_life: Mutex<BTreeSet<String>>,
    event_sim_ms: Mutex<BTreeMap<(String, u64), u64>>,
    /// Duplicated requests on the engine's connections (outlives crashes: it is the network's).
    duplicates: Arc<Mutex<Duplicates>>,
    faults: Arc<Mutex<Faults>>,
    acknowledged: Mutex<Vec<String>>,
    starts: Mutex<Vec<StartAck>>,
    /// A client task's fatal error (a refused request), for the client host to fail with.
    client_error: Mutex<Option<String>>,
    trace: Mutex<Vec<String>>,
    boots: AtomicU32,
    /// Starts the client has had answered.
    pub(crate) submitted: AtomicUsize,
    /// When the last fault ends (grows when a fault at a named point fires late).
    pub(crate) window_end_ms: AtomicU64,
    /// The engine's wall clock minus simulated time (`clock.start`, then clock jumps).
    clock_offset_ms: Arc<std::sync::atomic::AtomicI64>,
    /// `workload.purge`: what its dry run listed just before it (the purge's candidates,
    /// recorded before anything is deleted, so a crash mid-purge loses no record), the cutoff,
    /// and whether it has run.
    purge_candidates: Mutex<Vec<store::PurgedExecution>>,
    purge_cutoff_ms: AtomicU64,
    purge_done: std::sync::atomic::AtomicBool,
    /// `workload.monitor`: each execution's progress percentages as the client saw them.
    progress: Mutex<BTreeMap<String, Vec<u8>>>,
    /// `workload.stream`: per execution, the events the client's stream delivered
    /// (`seq`, kind), across reconnects.
    streamed: Mutex<BTreeMap<String, Vec<(u64, String)>>>,
    /// The executions whose stream delivered their terminal event.
    streams_ended: Mutex<BTreeSet<String>>,
}

impl Shared {
    /// The states the engine is in now, for fault coverage: read from its live database with
    /// the disk's faults suspended, so that observing changes nothing in the run.
    fn engine_states(&self, engine_up: bool) -> BTreeSet<&'static str> {
        let mut states = BTreeSet::new();
        if !engine_up {
            states.insert("engine_down");
            return states;
        }
        if self.recovering.load(Ordering::SeqCst)
            || !self
                .awaiting_recovery
                .lock()
                .expect("recovery lock")
                .is_empty()
        {
            states.insert("recovering");
        }
        let Some(store) = self.live_store() else {
            return states;
        };
        let suspended = self.disk.lock().suspend_faults();
        // Fails only if a power cut has fenced the connection: then there is nothing to read.
        if let Ok(active) = now(store.list_active()) {
            if active.is_empty() {
                states.insert("idle");
            }
            for id in active.iter().take(MAX_OBSERVED_EXECUTIONS) {
                if let Ok(Some(execution)) = now(store.load(id)) {
                    states.extend(execution_states(&execution));
                }
            }
        }
        self.disk.lock().resume_faults(suspended);
        states
    }

    fn live_store(&self) -> Option<SqliteStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The engine is up and its store shows nothing active (an unreadable store is not idle).
    pub(crate) async fn store_is_idle(&self) -> bool {
        match self.live_store() {
            Some(store) => store.list_active().await.is_ok_and(|a| a.is_empty()),
            None => false,
        }
    }

    /// The power goes out on the engine host: its connection is gone and the disk keeps only
    /// what it must (or may) keep. Before the host's tasks are dropped, so the dead
    /// connection finds itself fenced off as it closes.
    fn cut_power(&self) {
        self.disk.lock().crash();
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn trace(&self, line: String) {
        self.trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    pub(crate) fn acknowledge(&self, ack: StartAck) {
        self.acknowledged
            .lock()
            .expect("ack lock")
            .push(ack.id.clone());
        self.starts.lock().expect("starts lock").push(ack);
        self.submitted.fetch_add(1, Ordering::SeqCst);
    }

    /// The execution submission `n` started, once answered.
    pub(crate) fn acknowledged_id(&self, n: usize) -> Option<String> {
        self.acknowledged.lock().expect("ack lock").get(n).cloned()
    }

    pub(crate) fn acknowledged_ids(&self) -> Vec<String> {
        self.acknowledged.lock().expect("ack lock").clone()
    }

    pub(crate) fn record_progress(&self, id: &str, percent: u8) {
        let mut progress = self.progress.lock().expect("progress lock");
        progress.entry(id.to_string()).or_default().push(percent);
    }

    pub(crate) fn record_streamed(&self, id: &str, record: &EventRecord) {
        self.streamed
            .lock()
            .expect("stream lock")
            .entry(id.to_string())
            .or_default()
            .push((record.seq, record.event.kind().to_string()));
        if record.event.is_terminal() {
            self.streams_ended
                .lock()
                .expect("stream lock")
                .insert(id.to_string());
        }
    }

    /// Every one of `ids` has had its stream deliver its terminal event.
    pub(crate) fn streams_ended(&self, ids: &[String]) -> bool {
        let ended = self.streams_ended.lock().expect("stream lock");
        ids.iter().all(|id| ended.contains(id))
    }

    pub(crate) fn client_error(&self, error: String) {
        let mut slot = self.client_error.lock().expect("client error lock");
        slot.get_or_insert(error);
    }

    pub(crate) fn take_client_error(&self) -> Option<String> {
        self.client_error.lock().expect("client error lock").take()
    }
}

#[derive(Clone, Debug)]
enum Link {
    Partition,
    Hold,
    Latency(u64),
    /// Per-ms chance of a momentary break (turmoil's link fail rate).
    Loss(f64),
}

#[derive(Clone, Debug)]
enum Action {
    Crash {
        host: String,
        restart_after_ms: Option<u64>,
        why: String,
    },
    Restart(String),
    Cut(Link, String, String),
    Heal(Link, String, String),
    Storage(StorageFault, u32),
    ClockJump(i64),
    Disk(DiskFault, u32),
    DiskFull(bool),
    /// Arm a power cut at the engine's nth disk write from now (the scenario fault's index).
    ArmCut(usize, u64),
    /// Duplicate the engine's connections to this host with this chance (0 ends it).
    Duplicate(String, f64),
}

/// Timed actions, by (time, order of scheduling).
#[derive(Default)]
struct Schedule {
    actions: BTreeMap<(u64, u64), Action>,
    next: u64,
}

impl Schedule {
    fn at(&mut self, at_ms: u64, action: Action) {
        self.actions.insert((at_ms, self.next), action);
        self.next += 1;
    }

    fn due(&mut self, now_ms: u64) -> Option<Action> {
        let entry = self.actions.first_entry()?;
        (entry.key().0 <= now_ms).then(|| entry.remove())
    }
}

/// The simulation every run builds (and `floor` measures): seeded, from a fixed epoch, in
/// ticks of [`TICK_MS`], failing past `duration_ms` of simulated time.
pub(crate) fn builder(seed: u64, duration_ms: u64) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .tick_duration(Duration::from_millis(TICK_MS))
        .simulation_duration(Duration::from_millis(duration_ms))
        .min_message_latency(Duration::from_millis(MIN_LATENCY_MS))
        .max_message_latency(Duration::from_millis(MAX_LATENCY_MS))
        // Held links and many executions queue connections: turmoil's default backlog (64)
        // panics the simulation when full, where a real kernel would refuse.
        .tcp_capacity(TCP_CAPACITY);
    builder
}

/// Runs `scenario` with `seed` and checks every invariant.
pub fn run(scenario: &Scenario, seed: u64) -> Outcome {
    align_task_ids();
    let agent_names: Vec<String> = scenario.agents.keys().cloned().collect();
    let plan = scenario
        .chaos
        .as_ref()
        .map(|c| chaos::plan(c, &agent_names, seed))
        .unwrap_or_default();
    // Chaos outages may outlast the chaos window: the liveness phase starts when they end.
    let window_ms = plan
        .faults
        .iter()
        .filter_map(Fault::ends_at_ms)
        .fold(scenario.fault_window_ms(), u64::max);
    // The client ends the run when the liveness bound passes; this is only a backstop.
    let mut sim = builder(
        seed,
        window_ms + 2 * scenario.liveness_ms + MAX_LATE_WINDOW_MS,
    )
    .build();

    let mut faults = Faults::new(seed);
    faults.io_error_rate = plan.io_error_rate;
    faults.ambiguous_rate = plan.ambiguous_rate;
    crate::vfs::seed_prng(seed);
    let disk = Disk::new(seed, scenario.disk.unsynced_at_crash);
    disk.lock().error_rate = plan.disk_error_rate;
    let shared = Arc::new(Shared {
        disk,
        disk_spec: scenario.disk,
        store: Mutex::new(None),
        recovering: std::sync::atomic::AtomicBool::new(false),
        awaiting_recovery: Mutex::new(BTreeSet::new()),
        recovered_in_life: Mutex::new(BTreeSet::new()),
        event_sim_ms: Mutex::new(BTreeMap::new()),
        duplicates: Arc::new(Mutex::new(Duplicates::new(seed))),
        faults: Arc::new(Mutex::new(faults)),
        acknowledged: Mutex::new(Vec::new()),
        starts: Mutex::new(Vec::new()),
        client_error: Mutex::new(None),
        trace: Mutex::new(Vec::new()),
        boots: AtomicU32::new(0),
        submitted: AtomicUsize::new(0),
        window_end_ms: AtomicU64::new(window_ms),
        clock_offset_ms: Arc::new(std::sync::atomic::AtomicI64::new(
            i64::try_from(scenario.clock_start_ms - EPOCH_MS).expect("clock.start is checked"),
        )),
        purge_candidates: Mutex::new(Vec::new()),
        purge_cutoff_ms: AtomicU64::new(0),
        purge_done: std::sync::atomic::AtomicBool::new(false),
        progress: Mutex::new(BTreeMap::new()),
        streamed: Mutex::new(BTreeMap::new()),
        streams_ended: Mutex::new(BTreeSet::new()),
    });

    let mailbox: crate::smtp::Mailbox = Arc::default();
    if let Some(host) = &scenario.smtp_host {
        let mailbox = mailbox.clone();
        sim.host(host.as_str(), move || crate::smtp::serve(mailbox.clone()));
    }
    let mut ledgers = BTreeMap::new();
    let mut registry = AgentRegistry::new();
    for (index, (name, behaviour)) in scenario.agents.iter().enumerate() {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        ledgers.insert(name.clone(), ledger.clone());
        registry.insert(
            name.clone(),
            AgentEndpoint::Address(format!("{name}:{AGENT_PORT}")),
        );
        let host = name.clone();
        let (name, behaviour) = (name.clone(), behaviour.clone());
        let lives = Arc::new(AtomicU64::new(0));
        sim.host(host.as_str(), move || {
            let (name, behaviour, ledger) = (name.clone(), behaviour.clone(), ledger.clone());
            // Each life of each agent draws from its own stream.
            let life = lives.fetch_add(1, Ordering::SeqCst);
            let agent_seed = seed ^ ((index as u64 + 1) << 48) ^ (life << 24);
            async move {
                let addr = format!("0.0.0.0:{AGENT_PORT}");
                // Agents read simulated time with no offset: the engine's clock jumps are its own.
                let clock: Arc<dyn proctor::clock::Clock> = Arc::new(SimClock::default());
                let _agent = example::start_timed(
                    &SimNetwork,
                    &addr,
                    &name,
                    behaviour,
                    ledger,
                    agent_seed,
                    Some(clock),
                )
                .await?;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }

    {
        let (shared, scenario, registry) = (shared.clone(), scenario.clone(), registry.clone());
        sim.host(ENGINE_HOST, move || {
            boot(shared.clone(), scenario.clone(), registry.clone(), seed)
        });
    }

    {
        let (shared, scenario) = (shared.clone(), scenario.clone());
        sim.client("client", crate::client::run(shared, scenario));
    }

    let mut schedule = Schedule::default();
    let mut step_crashes = Vec::new();
    let mut unfired = BTreeMap::new();
    let all_faults: Vec<&Fault> = scenario.faults.iter().chain(&plan.faults).collect();
    for (i, fault) in all_faults.iter().enumerate() {
        if let Some(point) = fault.point {
            let crash = PointCrash {
                fault: i,
                point,
                step: fault.step.clone(),
                nth: fault.nth,
                seen: 0,
            };
            unfired.insert(i, describe_point(&crash));
            if point == Point::DiskWrite {
                let at = fault.at_ms.unwrap_or(0);
                schedule.at(at, Action::ArmCut(i, u64::from(fault.nth)));
            } else if point == Point::StepRunning {
                step_crashes.push(crash);
            } else {
                shared
                    .faults
                    .lock()
                    .expect("faults lock")
                    .crashes
                    .push(crash);
            }
            continue;
        }
        let at = fault
            .at_ms
            .expect("checked at load: a fault has at_ms or point");
        let link = |l: &Option<(String, String)>| l.clone().expect("checked at load");
        let until = fault.for_ms.map_or(window_ms, |d| at + d);
        if let Some(host) = &fault.crash {
            schedule.at(
                at,
                Action::Crash {
                    host: host.clone(),
                    restart_after_ms: fault.restart_after_ms,
                    why: format!("at {at}ms"),
                },
            );
        } else if fault.partition.is_some() {
            let (a, b) = link(&fault.partition);
            schedule.at(at, Action::Cut(Link::Partition, a.clone(), b.clone()));
            schedule.at(until, Action::Heal(Link::Partition, a, b));
        } else if fault.hold.is_some() {
            let (a, b) = link(&fault.hold);
            schedule.at(at, Action::Cut(Link::Hold, a.clone(), b.clone()));
            schedule.at(until, Action::Heal(Link::Hold, a, b));
        } else if fault.latency.is_some() {
            let (a, b) = link(&fault.latency);
            let ms = fault.latency_ms.expect("checked at load");
            schedule.at(at, Action::Cut(Link::Latency(ms), a.clone(), b.clone()));
            schedule.at(until, Action::Heal(Link::Latency(ms), a, b));
        } else if fault.loss.is_some() {
            let (a, b) = link(&fault.loss);
            let rate = fault.loss_rate.expect("checked at load");
            schedule.at(at, Action::Cut(Link::Loss(rate), a.clone(), b.clone()));
            schedule.at(until, Action::Heal(Link::Loss(rate), a, b));
        } else if let Some(host) = &fault.duplicate {
            let rate = fault.duplicate_rate.expect("checked at load");
            schedule.at(at, Action::Duplicate(host.clone(), rate));
            schedule.at(until, Action::Duplicate(host.clone(), 0.0));
        } else if let Some(kind) = fault.storage {
            schedule.at(at, Action::Storage(kind, fault.commits.unwrap_or(1)));
        } else if let Some(jump_ms) = fault.clock_jump_ms {
            schedule.at(at, Action::ClockJump(jump_ms));
        } else if let Some(kind) = fault.disk {
            if kind == DiskFault::Full {
                schedule.at(at, Action::DiskFull(true));
                schedule.at(until, Action::DiskFull(false));
            } else {
                schedule.at(at, Action::Disk(kind, fault.ops.unwrap_or(1)));
            }
        }
    }

    let mut clock_offsets = vec![(0, shared.clock_offset_ms.load(Ordering::SeqCst))];
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    let mut coverage: BTreeSet<String> = BTreeSet::new();
    let mut cover = |fault: &str, states: BTreeSet<&'static str>| {
        for state in states {
            coverage.insert(format!("{fault} × {state}"));
        }
    };
    let mut count = |kind: &str| *injected.entry(kind.to_string()).or_insert(0) += 1;
    let storage_chaos =
        plan.io_error_rate > 0.0 || plan.ambiguous_rate > 0.0 || plan.disk_error_rate > 0.0;
    let mut storage_chaos_on = storage_chaos;
    let mut engine_restarts_ms = Vec::new();
    let mut fault_log: Vec<FaultEntry> = Vec::new();
    let sim_error = loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        if storage_chaos_on && now_ms >= window_ms {
            // The liveness phase: faults stop.
            let mut faults = shared.faults.lock().expect("faults lock");
            faults.io_error_rate = 0.0;
            faults.ambiguous_rate = 0.0;
            shared.disk.lock().error_rate = 0.0;
            storage_chaos_on = false;
        }
        // Crashes at named points that fired: in a storage write, or (checked here, and only
        // while the engine is up, since it must kill a live engine) at a running step.
        let mut fired: Vec<usize> = shared
            .faults
            .lock()
            .expect("faults lock")
            .dying
            .into_iter()
            .collect();
        let cut = shared.disk.lock().cut.take();
        if let Some(fault) = cut {
            count("power_cut");
            fired.push(fault);
        }
        if !step_crashes.is_empty() && sim.is_host_running(ENGINE_HOST) {
            let running = step_running_fired(&mut step_crashes, &ledgers);
            fired.extend(running.into_iter().map(|crash| crash.fault));
        }
        for i in fired {
            schedule.at(
                now_ms,
                Action::Crash {
                    host: ENGINE_HOST.to_string(),
                    restart_after_ms: all_faults[i].restart_after_ms,
                    why: unfired.remove(&i).unwrap_or_default(),
                },
            );
        }
        while let Some(action) = schedule.due(now_ms) {
            let entry = action.fault_entry(now_ms);
            let line = match action {
                Action::Crash {
                    host,
                    restart_after_ms,
                    why,
                } => {
                    if host == ENGINE_HOST {
                        // The dying host is gone; the next one writes again.
                        shared.faults.lock().expect("faults lock").dying = None;
                    }
                    if sim.is_host_running(host.as_str()) {
                        if host == ENGINE_HOST {
                            // A power cut in a write has already fenced the connection: its
                            // state cannot be read, only the crash's.
                            if why.starts_with("at point disk_write") {
                                let mut states = shared.engine_states(true);
                                states.insert("in_write");
                                cover("power_cut", states);
                            } else {
                                cover("engine_crash", shared.engine_states(true));
                            }
                            shared.cut_power();
                        }
                        sim.crash(host.as_str());
                        count(if host == ENGINE_HOST {
                            "engine_crash"
                        } else {
                            "agent_crash"
                        });
                        if let Some(after) = restart_after_ms {
                            schedule.at(now_ms + after, Action::Restart(host.clone()));
                            shared
                                .window_end_ms
                                .fetch_max(now_ms + after, Ordering::SeqCst);
                        }
                        format!("crash {host} ({why})")
                    } else {
                        format!("crash {host} skipped: already down")
                    }
                }
                Action::Restart(host) => {
                    if sim.is_host_running(host.as_str()) {
                        format!("restart {host} skipped: already up")
                    } else {
                        sim.bounce(host.as_str());
                        if host == ENGINE_HOST {
                            engine_restarts_ms.push(now_ms);
                        }
                        format!("restart {host}")
                    }
                }
                Action::Cut(link, a, b) => {
                    let (a_, b_) = (a.as_str(), b.as_str());
                    if a == ENGINE_HOST || b == ENGINE_HOST {
                        let up = sim.is_host_running(ENGINE_HOST);
                        cover(link_name(&link, true), shared.engine_states(up));
                    }
                    match link {
                        Link::Partition => {
                            sim.partition(a_, b_);
                            count("partition");
                        }
                        Link::Hold => {
                            sim.hold(a_, b_);
                            count("hold");
                        }
                        Link::Latency(ms) => {
                            sim.set_link_max_message_latency(a_, b_, Duration::from_millis(ms));
                            count("latency");
                        }
                        Link::Loss(rate) => {
                            sim.set_link_fail_rate(a_, b_, rate);
                            count("loss");
                        }
                    }
                    format!("{} {a} {b}", link_name(&link, true))
                }
                Action::Heal(link, a, b) => {
                    let (a_, b_) = (a.as_str(), b.as_str());
                    match link {
                        Link::Partition => sim.repair(a_, b_),
                        Link::Hold => sim.release(a_, b_),
                        Link::Latency(_) => sim.set_link_max_message_latency(
                            a_,
                            b_,
                            Duration::from_millis(MAX_LATENCY_MS),
                        ),
                        Link::Loss(_) => sim.set_link_fail_rate(a_, b_, 0.0),
                    }
                    format!("{} {a} {b}", link_name(&link, false))
                }
                Action::ClockJump(jump_ms) => {
                    cover(
                        "clock_jump",
                        shared.engine_states(sim.is_host_running(ENGINE_HOST)),
                    );
                    let offset = shared.clock_offset_ms.fetch_add(jump_ms, Ordering::SeqCst);
                    clock_offsets.push((now_ms, offset + jump_ms));
                    count("clock_jump");
                    if jump_ms > 0 {
                        format!("clock jumps {jump_ms}ms forward")
                    } else {
                        format!("clock jumps {}ms back", jump_ms.unsigned_abs())
                    }
                }
                Action::Disk(kind, ops) => {
                    cover(
                        kind.name(),
                        shared.engine_states(sim.is_host_running(ENGINE_HOST)),
                    );
                    shared.disk.lock().arm(kind.op(), ops);
                    format!("disk {} x{ops}", kind.name())
                }
                Action::Duplicate(host, rate) => {
                    shared
                        .duplicates
                        .lock()
                        .expect("duplicates lock")
                        .set(&host, rate);
                    if rate > 0.0 {
                        cover(
                            "duplicate",
                            shared.engine_states(sim.is_host_running(ENGINE_HOST)),
                        );
                        count("duplicate");
                        format!("duplicate requests to {host} ({:.0}%)", rate * 100.0)
                    } else {
                        format!("no more duplicate requests to {host}")
                    }
                }
                Action::ArmCut(fault, nth) => {
                    shared.disk.lock().arm_cut(fault, nth);
                    format!("power cut armed at disk write #{nth} from now")
                }
                Action::DiskFull(full) => {
                    if full {
                        let up = sim.is_host_running(ENGINE_HOST);
                        cover(DiskFault::Full.name(), shared.engine_states(up));
                    }
                    shared.disk.lock().full = full;
                    if full {
                        count(DiskFault::Full.name());
                    }
                    format!("disk {}", if full { "full" } else { "has space again" })
                }
                Action::Storage(kind, commits) => {
                    cover(
                        kind.name(),
                        shared.engine_states(sim.is_host_running(ENGINE_HOST)),
                    );
                    let mut faults = shared.faults.lock().expect("faults lock");
                    faults.spoil.push((kind, commits));
                    format!("storage {} x{commits}", kind.name())
                }
            };
            // A crash of a host already down, or a restart of one already up, changed nothing.
            let skipped =
                line.ends_with("skipped: already down") || line.ends_with("skipped: already up");
            if let Some(mut entry) = entry.filter(|_| !skipped) {
                entry.label = line.clone();
                fault_log.push(entry);
            }
            shared.trace(format!("{now_ms:>8} FAULT {line}"));
        }
        match sim.step() {
            Ok(true) => break None,
            Ok(false) => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    let elapsed_ms = sim.elapsed().as_millis() as u64;
    // The outcome is what survives one last power cut, with every disk fault cleared.
    shared.cut_power();
    drop(sim);
    let disk_stats;
    let (store, sim_error) = {
        let mut disk = shared.disk.lock();
        disk.full = false;
        disk.error_rate = 0.0;
        let stats = disk.stats.clone();
        drop(disk);
        disk_stats = stats;
        match open_store(&shared) {
            Ok(store) => (store, sim_error),
            Err(e) => (
                SqliteStore::open_in_memory().expect("in-memory SQLite"),
                Some(format!(
                    "the database does not open after the final power cut: {e}"
                )),
            ),
        }
    };

    let (storage_writes, storage_faults) = {
        let faults = shared.faults.lock().expect("faults lock");
        (faults.writes, faults.injected.clone())
    };
    for (at_ms, kind) in storage_faults {
        count(kind.name());
        fault_log.push(FaultEntry {
            at_ms,
            kind: kind.name().to_string(),
            phase: FaultPhase::Strikes,
            hosts: vec![ENGINE_HOST.to_string()],
            label: format!("storage {} on a write", kind.name()),
        });
    }
    // Stable: entries of one instant keep the order they happened in.
    fault_log.sort_by_key(|entry| entry.at_ms);
    // What the power cuts did to unsynced writes, and the disk operations that failed with EIO
    // (scripted or chaos), counted per write or operation.
    let duplicated = shared
        .duplicates
        .lock()
        .expect("duplicates lock")
        .duplicated;
    for (kind, n) in [
        ("duplicated_connection", duplicated),
        ("unsynced_write_lost", disk_stats.lost),
        ("torn_write", disk_stats.torn),
        (DiskFault::ReadError.name(), disk_stats.read_errors),
        (DiskFault::WriteError.name(), disk_stats.write_errors),
        (DiskFault::SyncError.name(), disk_stats.sync_errors),
    ] {
        if n > 0 {
            injected.insert(kind.to_string(), n as usize);
        }
    }
    let acknowledged = shared.acknowledged.lock().expect("ack lock").clone();
    let starts = shared.starts.lock().expect("starts lock").clone();
    let mut reads = FinalReads {
        store: &store,
        loaded: BTreeMap::new(),
    };
    let (keyed, unkeyed) = keyed_executions(&mut reads, scenario);
    let mut schedule_fires = Vec::new();
    let mut scheduled = Vec::new();
    for s in &scenario.workload.schedules {
        let fires = now(store.fires(&s.name, false)).expect("store readable");
        // A run of missed fires (a long clock jump) reads as one line.
        for group in fires
            .chunk_by(|a, b| a.outcome == FireOutcome::Missed && b.outcome == FireOutcome::Missed)
        {
            let (first, last) = (&group[0], &group[group.len() - 1]);
            schedule_fires.push(if group.len() == 1 {
                format!(
                    "{} {} ({}) {}",
                    s.name,
                    first.fire.local,
                    first.fire.utc,
                    first.outcome.as_str()
                )
            } else {
                format!(
                    "{} {} .. {} ({} .. {}) missed x{}",
                    s.name,
                    first.fire.local,
                    last.fire.local,
                    first.fire.utc,
                    last.fire.utc,
                    group.len()
                )
            });
            scheduled.extend(group.iter().filter_map(|f| f.execution_id.clone()));
        }
    }
    // Sub-process children, checked like the rest.
    let mut children = Vec::new();
    for id in &acknowledged {
        if let Some(parent) = reads.load(id) {
            for (step, def) in parent.process.steps.iter().enumerate() {
                if matches!(def.kind, proctor::definition::StepKind::Subprocess(_)) {
                    children.push(parent.child_id(step));
                }
            }
        }
    }
    let unclaimed: Vec<String> = unkeyed
        .into_iter()
        .filter(|id| {
            !acknowledged.contains(id) && !scheduled.contains(id) && !children.contains(id)
        })
        .collect();
    let mut executions = Vec::new();
    for id in acknowledged.iter().chain(&scheduled).chain(&children) {
        if let Some(execution) = reads.load(id).cloned() {
            let events = now(store.events(id)).expect("store readable");
            executions.push((execution, events));
        }
    }
    // What each tenant's own listing shows (for `tenant_isolation`).
    let mut tenant_lists = BTreeMap::new();
    for tenant in &scenario.workload.tenants {
        let query = store::ExecutionQuery {
            tenant: tenant.clone(),
            limit: store::MAX_LIST_PAGE,
            ..Default::default()
        };
        let mut ids: Vec<String> = now(store.list_executions(&query))
            .expect("store readable")
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.sort();
        tenant_lists.insert(tenant.clone(), ids);
    }
    let ledgers = ledgers
        .into_iter()
        .map(|(name, l)| {
            let copy = l.lock().unwrap_or_else(|p| p.into_inner()).clone();
            (name, copy)
        })
        .collect();
    let mut outcome = Outcome {
        scenario: scenario.name.clone(),
        seed,
        trace: Trace {
            lines: shared.trace.lock().expect("trace lock").clone(),
        },
        acknowledged,
        starts,
        keyed,
        unclaimed,
        executions,
        schedule_fires,
        tenant_lists,
        purge_candidates: shared.purge_candidates.lock().expect("purge lock").clone(),
        purge_cutoff_ms: shared.purge_cutoff_ms.load(Ordering::SeqCst),
        progress: shared.progress.lock().expect("progress lock").clone(),
        streamed: shared.streamed.lock().expect("stream lock").clone(),
        ledgers,
        engine_boots: shared.boots.load(Ordering::SeqCst),
        faults: injected,
        chaos_kinds: plan.kinds.iter().map(|k| k.to_string()).collect(),
        storage_writes,
        // A chaos fault at a point may rightly never fire (the run ended first); a scripted
        // one must.
        unfired: unfired
            .into_iter()
            .filter(|(i, _)| *i < scenario.faults.len())
            .map(|(_, why)| why)
            .collect(),
        window_end_ms: shared.window_end_ms.load(Ordering::SeqCst),
        engine_restarts_ms,
        fault_log,
        mail: mailbox.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        coverage,
        clock_offsets,
        event_sim_ms: std::mem::take(&mut *shared.event_sim_ms.lock().expect("event time lock")),
        elapsed_ms,
        sim_error,
        violations: Vec::new(),
    };
    outcome.violations = checker::check_all(scenario, &outcome);
    outcome
}

/// Task ids are a multiple of this plus one when a run starts.
const TASK_ID_ALIGN: u64 = 64;

/// Makes tokio's next task id `TASK_ID_ALIGN * n + 1`, as in a fresh process.
///
/// tokio numbers tasks from one process-wide counter, and a current-thread runtime files its
/// tasks in 4 lists by `id & 3` (`OwnedTasks::new(1)`, `ShardedList`). A crash drops the host's
/// runtime, which cancels its tasks list by list (`close_and_shutdown_all`), so the ids decide
/// the order in which a crashed host's sockets drop; each drop sends a FIN or RST, and each
/// send draws a latency from turmoil's one RNG. Without this, a second run of a seed in the
/// same process starts at another id and can draw latencies in another order. The counter is
/// shared by every thread: runs must not overlap in one process.
fn align_task_ids() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a throwaway runtime");
    loop {
        let id: u64 = rt
            .spawn(async {})
            .id()
            .to_string()
            .parse()
            .expect("a task id is a number");
        if id.is_multiple_of(TASK_ID_ALIGN) {
            break;
        }
    }
}

/// A link fault's kind, the same at its start and its end.
fn link_kind(link: &Link) -> &'static str {
    match link {
        Link::Partition => "partition",
        Link::Hold => "hold",
        Link::Latency(_) => "latency",
        Link::Loss(_) => "loss",
    }
}

fn link_name(link: &Link, cut: bool) -> &'static str {
    match (link, cut) {
        (Link::Partition, true) => "partition",
        (Link::Partition, false) => "repair",
        (Link::Hold, true) => "hold",
        (Link::Hold, false) => "release",
        (Link::Latency(_), true) => "slow",
        (Link::Latency(_), false) => "unslow",
        (Link::Loss(_), true) => "loss",
        (Link::Loss(_), false) => "lossless",
    }
}

fn describe_point(crash: &PointCrash) -> String {
    let step = crash
        .step
        .as_deref()
        .map(|s| format!(" of step '{s}'"))
        .unwrap_or_default();
    format!("at point {} #{}{step}", crash.point.name(), crash.nth)
}

/// The `step_running` crashes whose agent call has now been applied: an agent recorded the
/// nth matching request and its reply is on the wire (latency is at least a tick).
fn step_running_fired(
    crashes: &mut Vec<PointCrash>,
    ledgers: &BTreeMap<String, Arc<Mutex<Ledger>>>,
) -> Vec<PointCrash> {
    let mut fired = Vec::new();
    crashes.retain_mut(|crash| {
        let seen: usize = ledgers
            .values()
            .map(|l| {
                let l = l.lock().unwrap_or_else(|p| p.into_inner());
                l.requests
                    .iter()
                    .filter(|r| crash.step.as_deref().is_none_or(|s| s == r.step_id))
                    .count()
            })
            .sum();
        crash.seen = seen.min(u32::MAX as usize) as u32;
        if crash.seen >= crash.nth {
            fired.push(crash.clone());
            false
        } else {
            true
        }
    });
    fired
}

/// The store's executions that carry an idempotency key, by key: every tenant's listing
/// (the workload's tenants, or the default one), paged to the end.
/// Also returns the executions of the scenario's process that have no key.
fn keyed_executions(
    reads: &mut FinalReads<'_>,
    scenario: &Scenario,
) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let store = reads.store;
    let mut tenants = scenario.workload.tenants.clone();
    if tenants.is_empty() {
        tenants.push(proctor::core::DEFAULT_TENANT.to_string());
    }
    let mut keyed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unkeyed = Vec::new();
    for tenant in tenants {
        let mut query = store::ExecutionQuery {
            tenant,
            limit: store::MAX_LIST_PAGE,
            ..Default::default()
        };
        loop {
            let page = now(store.list_executions(&query)).expect("store readable");
            for summary in &page {
                match reads
                    .load(&summary.id)
                    .and_then(|e| e.idempotency_key.clone())
                {
                    Some(key) => keyed.entry(key).or_default().push(summary.id.clone()),
                    None if summary.definition == scenario.process.name => {
                        unkeyed.push(summary.id.clone())
                    }
                    None => {}
                }
            }
            match page.last() {
                Some(last) if page.len() == store::MAX_LIST_PAGE => {
                    query.after = Some((last.created_at_ms, last.id.clone()));
                }
                _ => break,
            }
        }
    }
    (keyed, unkeyed)
}

/// The durable store after the run, each execution read from it once (the outcome's
/// listings, children and histories all ask for the same ones).
struct FinalReads<'a> {
    store: &'a SqliteStore,
    loaded: BTreeMap<String, Option<Execution>>,
}

impl FinalReads<'_> {
    fn load(&mut self, id: &str) -> Option<&Execution> {
        if !self.loaded.contains_key(id) {
            let execution = now(self.store.load(id)).expect("store readable");
            self.loaded.insert(id.to_string(), execution);
        }
        self.loaded[id].as_ref()
    }
}

/// Most active executions one coverage observation inspects.
const MAX_OBSERVED_EXECUTIONS: usize = 64;

/// The coverage states of one active execution.
fn execution_states(execution: &Execution) -> Vec<&'static str> {
    use proctor::core::{ExecutionStatus, StepStatus};
    use proctor::definition::StepKind;
    let mut states = Vec::new();
    match execution.status {
        ExecutionStatus::Paused => states.push("paused"),
        // Created, its start not yet committed (a start is a create, then a start).
        ExecutionStatus::Pending => states.push("created"),
        _ => {}
    }
    if execution.compensation.is_some() {
        states.push("compensating");
    }
    let mut busy = false;
    for (step, def) in execution.steps.iter().zip(&execution.process.steps) {
        match step.status {
            StepStatus::Retrying => states.push("retry_backoff"),
            StepStatus::Running => states.push(match def.kind {
                StepKind::Timer(_) | StepKind::WaitSignal(_) => "timer_pending",
                _ => "step_running",
            }),
            _ => continue,
        }
        busy = true;
    }
    if !busy && execution.status == ExecutionStatus::Running && execution.compensation.is_none() {
        states.push("between_steps");
    }
    states
}

/// The engine's database file on its disk.
const DATABASE_FILE: &str = "proctor.db";

/// Opens the engine's database on the simulated disk, as the engine host does at boot.
fn open_store(shared: &Shared) -> Result<SqliteStore, store::Error> {
    SqliteStore::open_with(
        &shared.disk.path(DATABASE_FILE),
        &SqliteOptions {
            vfs: Some(crate::vfs::VFS_NAME.to_string()),
            synchronous: shared.disk_spec.synchronous.store_setting(),
            exclusive: true,
            // One thread: group commits run as a task of the engine host's runtime.
            committer: Committer::Task,
            // SQLite's own: a run's database is small, and must still checkpoint (see the
            // constants' note).
            cache_kib: proctor::store::SQLITE_DEFAULT_CACHE_KIB,
            wal_autocheckpoint_pages: proctor::store::SQLITE_DEFAULT_WAL_AUTOCHECKPOINT_PAGES,
        },
    )
}

/// The liveness failure: which executions are stuck, and in what state.
pub(crate) async fn stuck(
    shared: &Shared,
    submitted: usize,
    total: usize,
    after_ms: u64,
) -> String {
    let Some(store) = shared.live_store() else {
        return format!(
            "liveness: {submitted} of {total} submitted, the engine still down {after_ms}ms after the fault window"
        );
    };
    let active = store.list_active().await.unwrap_or_default();
    let mut details = Vec::new();
    for id in active.iter().take(MAX_STUCK_LISTED) {
        let state = match store.load(id).await {
            Ok(Some(e)) => format!("{} (steps {})", e.status, checker::unfinished_steps(&e)),
            _ => "unreadable".to_string(),
        };
        details.push(format!("{id}: {state}"));
    }
    format!(
        "liveness: {submitted} of {total} submitted, {} still active {after_ms}ms after the fault window: {}",
        active.len(),
        details.join("; ")
    )
}

/// One life of the engine host: recover, register the workload's schedules, then serve the
/// API until crashed. A storage error on the way is waited out and
/// retried, as a supervisor would restart a failed start-up.
async fn boot(
    shared: Arc<Shared>,
    scenario: Scenario,
    registry: AgentRegistry,
    seed: u64,
) -> turmoil::Result {
    let boot = shared.boots.fetch_add(1, Ordering::SeqCst) + 1;
    // Opening runs SQLite's crash recovery (the WAL's replay); a disk fault fails it, and a
    // supervisor would try again.
    let sqlite = loop {
        match open_store(&shared) {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!("opening the database failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    };
    *shared.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(sqlite.clone());
    let store = FaultyStore::new(sqlite, shared.faults.clone());
    let engine = Engine::new(
        Ports {
            clock: Arc::new(SimClock::new(shared.clock_offset_ms.clone())),
            net: Arc::new(DuplicatingNetwork {
                duplicates: shared.duplicates.clone(),
            }),
            store: Arc::new(store),
            rng: proctor::rng::seeded(seed ^ (u64::from(boot) << 32)),
        },
        &registry,
        EngineConfig {
            secrets: proctor::secrets::Secrets::new(scenario.secrets.clone()),
            smtp: scenario
                .smtp_host
                .as_ref()
                .map(|host| proctor::email::SmtpConfig {
                    server: format!("{host}:{}", crate::smtp::SMTP_PORT),
                    from: "proctor@sim.invalid".to_string(),
                }),
            ..EngineConfig::default()
        },
    )?;
    shared.recovering.store(true, Ordering::SeqCst);
    shared
        .recovered_in_life
        .lock()
        .expect("recovery lock")
        .clear();
    let trace = shared.clone();
    engine.bus().subscribe(move |e| {
        trace
            .event_sim_ms
            .lock()
            .expect("event time lock")
            .insert((e.execution_id.clone(), e.seq), sim_elapsed_ms());
        if matches!(
            e.event,
            proctor::event::DomainEvent::ExecutionRecovered { .. }
        ) {
            let id = &e.execution_id;
            trace
                .awaiting_recovery
                .lock()
                .expect("recovery lock")
                .remove(id);
            trace
                .recovered_in_life
                .lock()
                .expect("recovery lock")
                .insert(id.clone());
        }
        trace.trace(format!(
            "{:>8} {} #{} {} {}",
            e.at_ms.saturating_sub(EPOCH_MS),
            short(&e.execution_id),
            e.seq,
            e.event.kind(),
            e.event.step().unwrap_or("-")
        ));
    });
    let recovery = loop {
        match engine.recover(RecoveryConfig::default()).await {
            Ok(recovery) => break recovery,
            Err(e) => {
                tracing::warn!("recovery failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    };
    {
        let recovered = shared.recovered_in_life.lock().expect("recovery lock");
        let mut awaiting = shared.awaiting_recovery.lock().expect("recovery lock");
        awaiting.clear();
        awaiting.extend(
            recovery
                .report
                .actions
                .iter()
                .filter(|(id, action)| {
                    matches!(
                        action,
                        proctor::core::RecoveryAction::Resume
                            | proctor::core::RecoveryAction::RetryStep
                    ) && !recovered.contains(id)
                })
                .map(|(id, _)| id.clone()),
        );
    }
    shared.recovering.store(false, Ordering::SeqCst);
    for s in &scenario.workload.schedules {
        // Registering again keeps the planner's state: what fired stays fired.
        let (spec, input) = (s.schedule.clone(), s.input.clone());
        while let Err(e) = engine
            .register_schedule(
                &s.name,
                spec.clone(),
                scenario.process.clone(),
                input.clone(),
            )
            .await
        {
            tracing::warn!(schedule = %s.name, "registering failed, retrying: {e}");
            tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
        }
    }
    if !scenario.workload.schedules.is_empty() {
        let _scheduler = engine.run_schedules();
    }
    if let Some(purge) = scenario.workload.purge.clone() {
        tokio::spawn(run_purge(engine.clone(), shared.clone(), purge));
    }
    let auth = if scenario.workload.tenants.is_empty() {
        Auth::Open
    } else {
        Auth::Tokens(
            scenario
                .workload
                .tenants
                .iter()
                .map(|tenant| TokenEntry {
                    name: "client".to_string(),
                    token: crate::client::token_for(tenant),
                    tenant: tenant.clone(),
                })
                .collect(),
        )
    };
    let api = Api::new(engine.clone(), auth).with_webhooks(crate::client::webhooks(&scenario));
    let listener = SimNetwork
        .bind(&format!("0.0.0.0:{API_PORT}"))
        .await
        .map_err(|e| format!("the API cannot listen: {e}"))?;
    // Never stops by itself: the host dies by crash or at the end of the run.
    api.serve(listener, 0, std::future::pending()).await;
    Ok(())
}

/// Simulated time since the run began (not the engine's clock, which `clock.start` and clock
/// jumps move).
pub(crate) fn sim_elapsed_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// Sleeps until the run is `at_ms` old (at once if it is already).
pub(crate) async fn sleep_until_sim_ms(at_ms: u64) {
    let elapsed_ms = sim_elapsed_ms();
    if at_ms > elapsed_ms {
        tokio::time::sleep(Duration::from_millis(at_ms - elapsed_ms)).await;
    }
}

/// The workload's retention purge, once: a dry run records the candidates (with the cutoff),
/// then the purge deletes them. Run again after a crash, it finds what is left to delete.
async fn run_purge(engine: Engine, shared: Arc<Shared>, purge: crate::scenario::WorkloadPurge) {
    sleep_until_sim_ms(purge.at_ms).await;
    while !shared.purge_done.load(Ordering::SeqCst) {
        let cutoff_ms = engine.clock().now_ms().saturating_sub(purge.older_than_ms);
        match engine.purge(purge.older_than_ms, true).await {
            Ok(listed) => {
                shared
                    .purge_cutoff_ms
                    .fetch_max(cutoff_ms, Ordering::SeqCst);
                let mut candidates = shared.purge_candidates.lock().expect("purge lock");
                for p in listed {
                    if !candidates.iter().any(|c| c.id == p.id) {
                        candidates.push(p);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("purge dry run failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                continue;
            }
        }
        match engine.purge(purge.older_than_ms, false).await {
            Ok(_) => shared.purge_done.store(true, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!("purge failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    }
}

/// The client's sequence number at the end of an id: short, and unique within a run.
pub(crate) fn short(id: &str) -> &str {
    id.rsplit('-').next().unwrap_or(id)
}

/// Polls a future that never waits (the SQLite store's methods do their work synchronously)
/// to completion, outside any runtime.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a store read waited: SqliteStore reads must complete at once"),
    }
}
