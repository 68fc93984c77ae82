//! The driver under storage failures: a commit that fails (nothing written) or fails
//! ambiguously (written, reported failed) must not lose, double or corrupt anything. The
//! driver forgets its in-memory state, reloads what storage holds and recovers from there;
//! these tests put the simulator's storage fault layer under a real engine and real agents.

use std::sync::{Arc, Mutex};

use proctor::agent::example::{self, Behaviour, RunningAgent};
use proctor::agent::{AgentEndpoint, AgentRegistry};
use proctor::clock::ManualClock;
use proctor::core::{Execution, ExecutionStatus, StepStatus};
use proctor::driver::Error;
use proctor::event::{DomainEvent, EventRecord};
use proctor::network::TokioNetwork;
use proctor::store::{self, SqliteStore};
use proctor::{Engine, EngineConfig, Ports};
use proctor_sim::scenario::StorageFault;
use proctor_sim::storage::{Faults, FaultyStore};
use proctor_tests::{process, step, PAIR, RUN_LIMIT, SEED, T0};
use serde_json::json;

struct Rig {
    engine: Engine,
    faults: Arc<Mutex<Faults>>,
    agent: RunningAgent,
}

async fn rig() -> Rig {
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "worker", Behaviour::default())
        .await
        .expect("agent starts");
    let mut registry = AgentRegistry::new();
    registry.insert("worker", AgentEndpoint::Address(agent.address()));
    let faults = Arc::new(Mutex::new(Faults::new(SEED)));
    let store = FaultyStore::new(
        SqliteStore::open_in_memory().expect("SQLite"),
        faults.clone(),
    );
    let engine = Engine::new(
        Ports {
            clock: Arc::new(ManualClock::new(T0)),
            net: Arc::new(TokioNetwork),
            store: Arc::new(store),
            rng: proctor::rng::seeded(SEED),
        },
        &registry,
        EngineConfig::default(),
    )
    .expect("engine");
    Rig {
        engine,
        faults,
        agent,
    }
}

impl Rig {
    /// The next `n` storage writes fail with `kind`.
    fn spoil(&self, kind: StorageFault, n: u32) {
        self.faults.lock().expect("faults").spoil.push((kind, n));
    }

    fn injected(&self) -> usize {
        self.faults.lock().expect("faults").injected.len()
    }

    async fn run_to_end(&self, id: &str) -> (Execution, Vec<EventRecord>) {
        let handle = self.engine.start(id).await.expect("start");
        let done = tokio::time::timeout(RUN_LIMIT, handle.wait())
            .await
            .expect("finished within the limit")
            .expect("driven to the end");
        let events = self.engine.store().events(id).await.expect("events");
        (done, events)
    }
}

fn completions(events: &[EventRecord], step_id: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.event, DomainEvent::StepCompleted { step, .. } if step == step_id))
        .count()
}

fn assert_gap_free(events: &[EventRecord]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "event seqs are 1..n without gaps or repeats"
    );
}

/// Writes: 1 create, 2 start (a dispatched), 3 a completed (b dispatched), 4 b completed.
/// Writes `write..write + failures` fail with `kind`.
async fn run_with_fault_at_write(kind: StorageFault, write: u64, failures: u64) {
    let rig = rig().await;
    rig.engine
        .create_with_id("pair-1", process(PAIR), json!({"text": "hi"}))
        .await
        .expect("created");
    {
        let mut faults = rig.faults.lock().expect("faults");
        for n in write..write + failures {
            faults.spoil_writes.insert(n, kind);
        }
    }
    let (done, events) = rig.run_to_end("pair-1").await;
    assert_eq!(
        rig.injected() as u64,
        failures,
        "every planned fault was injected"
    );
    assert_eq!(
        done.status,
        ExecutionStatus::Completed,
        "{kind:?} at write {write}"
    );
    let stored = rig
        .engine
        .load("pair-1")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(stored.status, ExecutionStatus::Completed);
    for id in ["a", "b"] {
        assert_eq!(step(&stored, id).status, StepStatus::Completed);
        assert_eq!(completions(&events, id), 1, "step {id} completed once");
    }
    assert_gap_free(&events);
    // However often a step was re-sent, it reached the agent under one key and its effect
    // was applied once.
    let ledger = rig.agent.ledger();
    assert_eq!(
        ledger.effects.keys().cloned().collect::<Vec<_>>(),
        vec!["pair-1:a".to_string(), "pair-1:b".to_string()]
    );
    assert!(ledger.effects.values().all(|n| *n == 1));
}

#[tokio::test]
async fn an_io_error_on_start_is_retried_from_storage() {
    run_with_fault_at_write(StorageFault::IoError, 2, 1).await;
}

#[tokio::test]
async fn an_ambiguous_start_is_not_applied_twice() {
    run_with_fault_at_write(StorageFault::Ambiguous, 2, 1).await;
}

#[tokio::test]
async fn an_io_error_on_a_step_result_redispatches_under_the_same_key() {
    run_with_fault_at_write(StorageFault::IoError, 3, 1).await;
}

#[tokio::test]
async fn an_ambiguous_step_result_is_kept_once() {
    run_with_fault_at_write(StorageFault::Ambiguous, 3, 1).await;
}

#[tokio::test]
async fn storage_down_for_several_writes_is_ridden_out() {
    run_with_fault_at_write(StorageFault::IoError, 3, 5).await;
}

#[tokio::test]
async fn a_caller_chosen_id_makes_create_retryable() {
    let rig = rig().await;
    rig.spoil(StorageFault::Ambiguous, 1);
    let first = rig
        .engine
        .create_with_id("order-7", process(PAIR), json!({"text": "x"}))
        .await;
    assert!(first.is_err(), "the ambiguous create reports a failure");
    // The client cannot know it landed; it creates again with the same id and learns so.
    let again = rig
        .engine
        .create_with_id("order-7", process(PAIR), json!({"text": "x"}))
        .await;
    assert!(
        matches!(again, Err(Error::Store(store::Error::Duplicate(ref id))) if id == "order-7"),
        "{again:?}"
    );
    let (done, _) = rig.run_to_end("order-7").await;
    assert_eq!(done.status, ExecutionStatus::Completed);

    for bad in ["", "has space", "slash/no", &"x".repeat(129)] {
        let refused = rig
            .engine
            .create_with_id(bad, process(PAIR), json!({}))
            .await;
        assert!(
            matches!(refused, Err(Error::BadId(_))),
            "{bad:?}: {refused:?}"
        );
    }
}
