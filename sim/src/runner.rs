//! One run = (scenario, seed).
//!
//! Hosts: `engine` runs the real driver over the sim ports, recovers on every boot, and
//! submits the workload (the client half lives in the engine host until the engine has a
//! network API: issue 6); one host per agent runs the example agent; `client` watches the
//! durable store until every execution is terminal or the liveness bound passes. The SQLite
//! store is an in-memory database held outside every host: a crash loses the engine's memory
//! and tasks, never a committed transaction. Agents' ledgers also live outside their hosts.
//!
//! Every random choice derives from the seed: turmoil's (latencies, scheduling), and the
//! engine's RNG (`seed` mixed with the boot number).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

use proctor::agent::example::{self, Ledger};
use proctor::agent::{AgentEndpoint, AgentRegistry};
use proctor::core::Execution;
use proctor::event::EventRecord;
use proctor::store::{SqliteStore, Storage};
use proctor::{Engine, EngineConfig, Ports, RecoveryConfig};

use crate::checker::{self, Violation};
use crate::ports::{SimClock, SimNetwork};
use crate::scenario::{Scenario, AGENT_PORT, ENGINE_HOST};
use crate::trace::Trace;

/// The simulated wall clock starts here (2023-11-14T22:13:20Z), never at the real time.
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// One simulation step.
pub const TICK_MS: u64 = 1;
/// How often the client looks at the store.
const CLIENT_POLL_MS: u64 = 20;

/// What a run produced; the checkers judge it.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub trace: Trace,
    /// Executions the client saw acknowledged, in submission order.
    pub acknowledged: Vec<String>,
    /// Their final durable state and history.
    pub executions: Vec<(Execution, Vec<EventRecord>)>,
    pub ledgers: BTreeMap<String, Ledger>,
    pub engine_boots: u32,
    pub faults_injected: usize,
    pub elapsed_ms: u64,
    /// A host's error, or the liveness bound passing with executions still active.
    pub sim_error: Option<String>,
    pub violations: Vec<Violation>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
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

/// State that outlives host crashes.
struct Shared {
    store: SqliteStore,
    acknowledged: Mutex<Vec<String>>,
    trace: Mutex<Vec<String>>,
    boots: AtomicU32,
    submitted: AtomicUsize,
}

enum Action {
    Crash(String),
    Restart(String),
    Partition(String, String),
    Repair(String, String),
}

/// Runs `scenario` with `seed` and checks every invariant.
pub fn run(scenario: &Scenario, seed: u64) -> Outcome {
    let window_ms = scenario.fault_window_ms();
    let deadline_ms = window_ms + scenario.liveness_ms;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .tick_duration(Duration::from_millis(TICK_MS))
        .simulation_duration(Duration::from_millis(deadline_ms + 10_000))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .build();

    let shared = Arc::new(Shared {
        store: SqliteStore::open_in_memory().expect("in-memory SQLite"),
        acknowledged: Mutex::new(Vec::new()),
        trace: Mutex::new(Vec::new()),
        boots: AtomicU32::new(0),
        submitted: AtomicUsize::new(0),
    });

    let mut ledgers = BTreeMap::new();
    let mut registry = AgentRegistry::new();
    for (name, behaviour) in &scenario.agents {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        ledgers.insert(name.clone(), ledger.clone());
        registry.insert(
            name.clone(),
            AgentEndpoint::Address(format!("{name}:{AGENT_PORT}")),
        );
        let host = name.clone();
        let (name, behaviour) = (name.clone(), behaviour.clone());
        sim.host(host.as_str(), move || {
            let (name, behaviour, ledger) = (name.clone(), behaviour.clone(), ledger.clone());
            async move {
                let addr = format!("0.0.0.0:{AGENT_PORT}");
                let _agent =
                    example::start_with_ledger(&SimNetwork, &addr, &name, behaviour, ledger)
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
        let (shared, total) = (shared.clone(), scenario.workload.executions);
        sim.client("client", async move {
            loop {
                let submitted = shared.submitted.load(Ordering::SeqCst);
                if submitted == total && shared.store.list_active().await?.is_empty() {
                    return Ok(());
                }
                let elapsed = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
                if elapsed > deadline_ms {
                    return Err(format!(
                        "liveness: {} of {total} submitted, {} still active {}ms after the fault window",
                        submitted,
                        shared.store.list_active().await?.len(),
                        elapsed.saturating_sub(window_ms)
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(CLIENT_POLL_MS)).await;
            }
        });
    }

    let mut schedule: Vec<(u64, usize, Action)> = Vec::new();
    for (i, fault) in scenario.faults.iter().enumerate() {
        if let Some(host) = &fault.crash {
            schedule.push((fault.at_ms, i, Action::Crash(host.clone())));
            if let Some(after) = fault.restart_after_ms {
                schedule.push((fault.at_ms + after, i, Action::Restart(host.clone())));
            }
        }
        if let Some((a, b)) = &fault.partition {
            schedule.push((fault.at_ms, i, Action::Partition(a.clone(), b.clone())));
            let until = fault.for_ms.map_or(window_ms, |d| fault.at_ms + d);
            schedule.push((until, i, Action::Repair(a.clone(), b.clone())));
        }
    }
    schedule.sort_by_key(|(at, i, _)| (*at, *i));
    let mut schedule = schedule.into_iter().peekable();

    let mut faults_injected = 0;
    let sim_error = loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        while let Some((_, _, action)) = schedule.next_if(|(at, _, _)| *at <= now_ms) {
            let line = match &action {
                Action::Crash(h) => {
                    sim.crash(h.as_str());
                    faults_injected += 1;
                    format!("crash {h}")
                }
                Action::Restart(h) => {
                    sim.bounce(h.as_str());
                    format!("restart {h}")
                }
                Action::Partition(a, b) => {
                    sim.partition(a.as_str(), b.as_str());
                    faults_injected += 1;
                    format!("partition {a} {b}")
                }
                Action::Repair(a, b) => {
                    sim.repair(a.as_str(), b.as_str());
                    format!("repair {a} {b}")
                }
            };
            shared
                .trace
                .lock()
                .expect("trace lock")
                .push(format!("{now_ms:>8} FAULT {line}"));
        }
        match sim.step() {
            Ok(true) => break None,
            Ok(false) => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    let elapsed_ms = sim.elapsed().as_millis() as u64;
    drop(sim);

    let acknowledged = shared.acknowledged.lock().expect("ack lock").clone();
    let mut executions = Vec::new();
    for id in &acknowledged {
        let execution = now(shared.store.load(id)).expect("store readable");
        let events = now(shared.store.events(id)).expect("store readable");
        if let Some(execution) = execution {
            executions.push((execution, events));
        }
    }
    let ledgers = ledgers
        .into_iter()
        .map(|(name, l)| {
            let l = l.lock().unwrap_or_else(|p| p.into_inner());
            let copy = Ledger {
                requests: l.requests.clone(),
                attempts: l.attempts.clone(),
                effects: l.effects.clone(),
            };
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
        executions,
        ledgers,
        engine_boots: shared.boots.load(Ordering::SeqCst),
        faults_injected,
        elapsed_ms,
        sim_error,
        violations: Vec::new(),
    };
    outcome.violations = checker::check_all(scenario, &outcome);
    outcome
}

/// One life of the engine host: recover, submit what the client has not yet had
/// acknowledged, then serve until crashed.
async fn boot(
    shared: Arc<Shared>,
    scenario: Scenario,
    registry: AgentRegistry,
    seed: u64,
) -> turmoil::Result {
    let boot = shared.boots.fetch_add(1, Ordering::SeqCst) + 1;
    let engine = Engine::new(
        Ports {
            clock: Arc::new(SimClock),
            net: Arc::new(SimNetwork),
            store: Arc::new(shared.store.clone()),
            rng: proctor::rng::seeded(seed ^ (u64::from(boot) << 32)),
        },
        &registry,
        EngineConfig::default(),
    )?;
    let trace = shared.clone();
    engine.bus().subscribe(move |e| {
        let line = format!(
            "{:>8} {} #{} {} {}",
            e.at_ms.saturating_sub(EPOCH_MS),
            short(&e.execution_id),
            e.seq,
            e.event.kind(),
            e.event.step().unwrap_or("-")
        );
        trace.trace.lock().expect("trace lock").push(line);
    });
    engine.recover(RecoveryConfig::default()).await?;
    while shared.submitted.load(Ordering::SeqCst) < scenario.workload.executions {
        let handle = engine
            .submit(scenario.process.clone(), scenario.workload.input.clone())
            .await?;
        shared
            .acknowledged
            .lock()
            .expect("ack lock")
            .push(handle.id.clone());
        shared.submitted.fetch_add(1, Ordering::SeqCst);
        if scenario.workload.spacing_ms > 0 {
            tokio::time::sleep(Duration::from_millis(scenario.workload.spacing_ms)).await;
        }
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// The random tail of a UUIDv7: short, and still unique within a run.
fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
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
