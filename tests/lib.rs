//! Shared fixtures for the integration tests: an engine wired to real parts (SQLite on a
//! temporary file, real HTTP example agents on loopback TCP), a ManualClock so timers and
//! backoffs take no real time, a capture of the event bus, and helpers to read the persisted
//! rows back with plain SQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proctor::agent::example::{self, Behaviour, RunningAgent};
use proctor::agent::{AgentClient, AgentEndpoint, AgentRegistry, AgentRequest, ClientLimits};
use proctor::clock::{Clock, ManualClock};
use proctor::core::{Command, Execution, Input, Lane, RecoveryAction, StepState};
use proctor::definition::{self, Format, ProcessDef};
use proctor::event::{DomainEvent, EventRecord, SystemEvent};
use proctor::network::TokioNetwork;
use proctor::rng::{new_id, Rng};
use proctor::store::{SqliteStore, Storage};
use proctor::{Engine, EngineConfig, ExecutionHandle, Ports, Recovery, RecoveryConfig};
use serde_json::Value;
use tempfile::TempDir;

/// Where every test's ManualClock starts.
pub const T0: u64 = 1_700_000_000_000;
/// The engine's RNG seed.
pub const SEED: u64 = 42;
/// No single execution in these tests should take anywhere near this long.
pub const RUN_LIMIT: Duration = Duration::from_secs(20);

/// Parses and validates a definition, panicking with the diagnostics if it is invalid.
pub fn process(yaml: &str) -> Arc<ProcessDef> {
    let def = definition::parse("test.yaml", yaml, Format::Yaml)
        .unwrap_or_else(|d| panic!("test definition does not parse:\n{d}"));
    definition::validate("test.yaml", &def, None)
        .unwrap_or_else(|d| panic!("test definition is invalid:\n{d}"));
    Arc::new(def)
}

/// An engine over real SQLite and real HTTP example agents, driven by a ManualClock.
pub struct TestEngine {
    pub engine: Engine,
    pub process: Arc<ProcessDef>,
    pub clock: Arc<ManualClock>,
    /// Every event the bus delivered, in delivery order.
    pub captured: Arc<Mutex<Vec<EventRecord>>>,
    /// Every engine-level event (recovery) the bus delivered, in delivery order.
    pub system: Arc<Mutex<Vec<SystemEvent>>>,
    pub db_path: PathBuf,
    registry: AgentRegistry,
    // Shared with the engines [`TestEngine::restart`] builds: the agents and the database
    // outlive an engine's "crash".
    agents: Arc<BTreeMap<String, RunningAgent>>,
    dir: Arc<TempDir>,
    config: EngineConfig,
}

/// Starts one example agent per `(name, behaviour)` on `127.0.0.1:0`; returns the registry of
/// their addresses and the running agents by name.
async fn start_agents(
    agents: &[(&str, Behaviour)],
) -> (AgentRegistry, BTreeMap<String, RunningAgent>) {
    let mut registry = AgentRegistry::new();
    let mut running = BTreeMap::new();
    for (name, behaviour) in agents {
        let agent = example::start(&TokioNetwork, "127.0.0.1:0", name, behaviour.clone())
            .await
            .unwrap_or_else(|e| panic!("starting example agent {name}: {e}"));
        registry.insert(*name, AgentEndpoint::Address(agent.address()));
        running.insert(name.to_string(), agent);
    }
    (registry, running)
}

impl TestEngine {
    /// Starts one example agent per `(name, behaviour)` on `127.0.0.1:0`, opens a SQLite file in
    /// a fresh temporary directory, and builds the engine for `yaml`.
    pub async fn start(yaml: &str, agents: &[(&str, Behaviour)]) -> TestEngine {
        TestEngine::start_with_config(yaml, agents, EngineConfig::default()).await
    }

    /// [`TestEngine::start`] with an engine configuration (checkpoint retention, say). Engines
    /// that [`TestEngine::restart`] builds from this one get the same configuration.
    pub async fn start_with_config(
        yaml: &str,
        agents: &[(&str, Behaviour)],
        config: EngineConfig,
    ) -> TestEngine {
        let process = process(yaml);
        let (registry, running) = start_agents(agents).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        TestEngine::build(
            process,
            &registry,
            Arc::new(running),
            Arc::new(dir),
            T0,
            config,
        )
    }

    /// Builds the engine for an already-loaded definition and resolved registry; `agents` are
    /// the running agents to keep alive (and whose ledgers [`TestEngine::requests`] reads).
    pub async fn with_registry(
        process: Arc<ProcessDef>,
        registry: &AgentRegistry,
        agents: BTreeMap<String, RunningAgent>,
    ) -> TestEngine {
        let dir = tempfile::tempdir().expect("temporary directory");
        TestEngine::build(
            process,
            registry,
            Arc::new(agents),
            Arc::new(dir),
            T0,
            EngineConfig::default(),
        )
    }

    /// A fresh engine, as after a restart: a new ManualClock at `now_ms`, a new bus capture, a
    /// new connection to the same SQLite file, the same (still running) agents. Nothing is
    /// recovered until the test calls [`Engine::recover`]. The old engine is left alone: a
    /// "crashed" engine's live tasks are simply never sent anything again.
    pub fn restart(&self, now_ms: u64) -> TestEngine {
        TestEngine::build(
            self.process.clone(),
            &self.registry,
            self.agents.clone(),
            self.dir.clone(),
            now_ms,
            self.config.clone(),
        )
    }

    /// Like [`TestEngine::restart`], but the new engine talks to freshly started agents (one
    /// per `(name, behaviour)`, with empty ledgers) instead of this engine's: as if the agents
    /// had been fixed or replaced while the engine was down. This engine's agents keep running
    /// (and keep their ledgers).
    pub async fn restart_with_agents(
        &self,
        now_ms: u64,
        agents: &[(&str, Behaviour)],
    ) -> TestEngine {
        let (registry, running) = start_agents(agents).await;
        TestEngine::build(
            self.process.clone(),
            &registry,
            Arc::new(running),
            self.dir.clone(),
            now_ms,
            self.config.clone(),
        )
    }

    fn build(
        process: Arc<ProcessDef>,
        registry: &AgentRegistry,
        agents: Arc<BTreeMap<String, RunningAgent>>,
        dir: Arc<TempDir>,
        now_ms: u64,
        config: EngineConfig,
    ) -> TestEngine {
        let db_path = dir.path().join("proctor.db");
        let store = SqliteStore::open(&db_path).expect("open SQLite store");
        let clock = Arc::new(ManualClock::new(now_ms));
        let engine = Engine::new(
            Ports {
                clock: clock.clone(),
                net: Arc::new(TokioNetwork),
                store: Arc::new(store),
                rng: proctor::rng::seeded(SEED),
            },
            registry,
            config.clone(),
        )
        .expect("build engine");
        let captured = engine.bus().capture();
        let system = engine.bus().capture_system();
        TestEngine {
            engine,
            process,
            clock,
            captured,
            system,
            db_path,
            registry: registry.clone(),
            agents,
            dir,
            config,
        }
    }

    /// A writer that leaves the database as an engine that died would have: see
    /// [`DeadEngine`]. It has its own connection to this engine's database file.
    pub fn dead_engine(&self) -> DeadEngine {
        let agents = self
            .registry
            .iter()
            .filter_map(|(name, endpoint)| match endpoint {
                AgentEndpoint::Address(addr) => Some((name.clone(), addr.clone())),
                AgentEndpoint::Example(_) => None,
            })
            .collect();
        DeadEngine {
            store: SqliteStore::open(&self.db_path).expect("open SQLite store"),
            rng: proctor::rng::seeded(SEED + 1),
            client: AgentClient::new(Arc::new(TokioNetwork), ClientLimits::default()),
            agents,
        }
    }

    /// Runs [`Engine::recover`] (within the time limit).
    pub async fn recover(&self, config: RecoveryConfig) -> Recovery {
        tokio::time::timeout(RUN_LIMIT, self.engine.recover(config))
            .await
            .expect("recovery finished within the limit")
            .expect("recovery ran")
    }

    /// Engine-level events the bus delivered, in delivery order.
    pub fn system_events(&self) -> Vec<SystemEvent> {
        self.system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Effects agent `name` applied, per `(execution id, step id)` (mapped through the
    /// idempotency keys of the requests it received).
    pub fn effects(&self, name: &str) -> BTreeMap<(String, String), u32> {
        let ledger = self.agent(name).ledger();
        per_step(&ledger.requests, &ledger.effects)
    }

    /// Attempts agent `name` saw, per `(execution id, step id)`.
    pub fn attempts(&self, name: &str) -> BTreeMap<(String, String), u32> {
        let ledger = self.agent(name).ledger();
        per_step(&ledger.requests, &ledger.attempts)
    }

    /// Every row of every table, as text, in a stable order: two dumps are equal exactly when
    /// nothing in the database changed.
    pub fn dump(&self) -> Vec<String> {
        dump(&self.sql())
    }

    /// Runs the process to its end with `input` and returns the final state.
    pub async fn run(&self, input: Value) -> Execution {
        tokio::time::timeout(RUN_LIMIT, self.engine.run(self.process.clone(), input))
            .await
            .expect("execution finished within the limit")
            .expect("engine ran the execution")
    }

    /// The ManualClock's current time.
    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The execution's events as stored, by seq.
    pub async fn events_of(&self, id: &str) -> Vec<EventRecord> {
        self.engine.store().events(id).await.expect("read events")
    }

    /// The execution's events as the bus delivered them.
    pub fn bus_events_of(&self, id: &str) -> Vec<EventRecord> {
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.execution_id == id)
            .cloned()
            .collect()
    }

    /// The running example agent called `name`.
    pub fn agent(&self, name: &str) -> &RunningAgent {
        self.agents
            .get(name)
            .unwrap_or_else(|| panic!("no agent {name} in this test"))
    }

    /// Every request agent `name` received, in arrival order.
    pub fn requests(&self, name: &str) -> Vec<AgentRequest> {
        self.agent(name).ledger().requests.clone()
    }

    /// Step ids of the requests agent `name` received, in arrival order.
    pub fn requested_steps(&self, name: &str) -> Vec<String> {
        self.requests(name).into_iter().map(|r| r.step_id).collect()
    }

    /// Step ids of the requests agent `name` received for execution `id`, in arrival order.
    pub fn requested_steps_of(&self, name: &str, id: &str) -> Vec<String> {
        self.requests(name)
            .into_iter()
            .filter(|r| r.execution_id == id)
            .map(|r| r.step_id)
            .collect()
    }

    /// The `checkpoints` rows of execution `id`, by seq.
    pub fn checkpoint_rows(&self, id: &str) -> Vec<CheckpointRow> {
        checkpoint_rows(&self.sql(), id)
    }

    /// A fresh raw connection to the engine's database file.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db_path).expect("open database file")
    }

    /// The `executions` row.
    pub fn execution_row(&self, id: &str) -> ExecutionRow {
        execution_row(&self.sql(), id)
    }

    /// The `steps` row of `step`.
    pub fn step_row(&self, id: &str, step: &str) -> StepRow {
        step_row(&self.sql(), id, step)
    }

    /// The `events` rows, by seq.
    pub fn event_rows(&self, id: &str) -> Vec<EventRow> {
        event_rows(&self.sql(), id)
    }
}

/// Leaves the database as an engine that died would have. It drives executions with the pure
/// core and commits every transition through the Storage port exactly as the driver does, but
/// performs no command unless told to: what a crash loses is the commands of the last
/// transitions (calls never sent, answers never recorded, wake-ups never delivered).
pub struct DeadEngine {
    pub store: SqliteStore,
    rng: Rng,
    client: AgentClient,
    /// Agent name to `host:port`.
    agents: BTreeMap<String, String>,
}

impl DeadEngine {
    /// Persists a new pending execution created at `created_at_ms`, as [`Engine::create`] does.
    pub async fn create(
        &mut self,
        process: &Arc<ProcessDef>,
        input: Value,
        created_at_ms: u64,
    ) -> Execution {
        let id = new_id(created_at_ms, &mut *self.rng);
        let execution = Execution::new(id, process.clone(), input, created_at_ms);
        let all: Vec<usize> = (0..execution.steps.len()).collect();
        self.store
            .commit(&execution, &all, &[], &[])
            .await
            .expect("commit new execution");
        execution
    }

    /// Applies `input` at `now_ms` and commits the transition, as the driver does. Returns the
    /// commands, which are NOT performed.
    pub async fn apply(
        &mut self,
        execution: &mut Execution,
        input: Input,
        now_ms: u64,
    ) -> Vec<Command> {
        let transition = execution.apply(input, now_ms, &mut *self.rng);
        if transition.changed {
            let dirty: Vec<usize> = transition.dirty_steps.iter().copied().collect();
            self.store
                .commit(
                    execution,
                    &dirty,
                    &transition.events,
                    &transition.checkpoints,
                )
                .await
                .expect("commit transition");
        }
        transition.commands
    }

    /// Performs one `CallAgent` command against the real agent, as the dead engine did before
    /// it died: the agent receives the request (and applies its effect). Returns the answer as
    /// the input the driver would have fed back; apply it to record it, or drop it (the crash
    /// lost it).
    pub async fn call(&self, execution: &Execution, command: &Command) -> Input {
        let Command::CallAgent(call) = command else {
            panic!("not an agent call: {command:?}")
        };
        let addr = self
            .agents
            .get(&call.agent)
            .unwrap_or_else(|| panic!("no agent {} in this test", call.agent));
        let request = AgentRequest {
            execution_id: execution.id.clone(),
            step_id: call.step_id.clone(),
            attempt: call.attempt,
            idempotency_key: call.idempotency_key.clone(),
            input: call.input.clone(),
        };
        let result =
            tokio::time::timeout(RUN_LIMIT, self.client.call(addr, &request, call.timeout_ms))
                .await
                .expect("agent answered within the limit");
        Input::AgentReturned {
            lane: Lane::Main,
            step: call.step,
            attempt: call.attempt,
            result,
        }
    }
}

/// The one `CallAgent` command for `step` among `commands`.
pub fn call_of<'a>(commands: &'a [Command], step: &str) -> &'a Command {
    let calls: Vec<&Command> = commands
        .iter()
        .filter(|c| matches!(c, Command::CallAgent(call) if call.step_id == step))
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "expected one call of {step} in {commands:?}"
    );
    calls[0]
}

/// Waits for every handle (each within the time limit); final states by execution id.
pub async fn wait_all(handles: Vec<ExecutionHandle>) -> BTreeMap<String, Execution> {
    let mut finished = BTreeMap::new();
    for handle in handles {
        let id = handle.id.clone();
        let execution = tokio::time::timeout(RUN_LIMIT, handle.wait())
            .await
            .unwrap_or_else(|_| panic!("execution {id} finished within the limit"))
            .unwrap_or_else(|e| panic!("engine drove execution {id}: {e}"));
        assert!(
            finished.insert(id.clone(), execution).is_none(),
            "two handles for {id}"
        );
    }
    finished
}

/// Polls `condition` every few milliseconds until it holds; panics after [`RUN_LIMIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Real time long enough for anything the engine would still do (an agent call to the
/// loopback agents, with the delays these tests use) to have happened.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// The action of the execution's `ExecutionRecovered` events, in order.
pub fn recovered_actions(events: &[EventRecord]) -> Vec<RecoveryAction> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::ExecutionRecovered { action } => Some(*action),
            _ => None,
        })
        .collect()
}

fn per_step(
    requests: &[AgentRequest],
    by_key: &BTreeMap<String, u32>,
) -> BTreeMap<(String, String), u32> {
    by_key
        .iter()
        .map(|(key, n)| {
            let request = requests
                .iter()
                .find(|r| &r.idempotency_key == key)
                .unwrap_or_else(|| panic!("no request with key {key}"));
            ((request.execution_id.clone(), request.step_id.clone()), *n)
        })
        .collect()
}

/// Every row of every table (and the schema), as text, in a stable order.
pub fn dump(conn: &rusqlite::Connection) -> Vec<String> {
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .expect("prepare schema query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query schema")
        .collect::<Result<_, _>>()
        .expect("read schema");
    let mut out = Vec::new();
    for (table, sql) in tables {
        out.push(format!("table {table}: {sql}"));
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{table}\""))
            .expect("prepare table dump");
        let columns = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let values = (0..columns)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(format!("{table}: {}", values.join(" | ")))
            })
            .expect("query table dump")
            .collect::<Result<_, _>>()
            .expect("read table dump");
        rows.sort();
        out.extend(rows);
    }
    out
}

/// A step's state in `execution`, by id.
pub fn step<'a>(execution: &'a Execution, id: &str) -> &'a StepState {
    let i = execution
        .process
        .position(id)
        .unwrap_or_else(|| panic!("no step {id}"));
    &execution.steps[i]
}

/// The `kind` of each event.
pub fn kinds(events: &[EventRecord]) -> Vec<&str> {
    events.iter().map(|e| e.event.kind()).collect()
}

/// Each event as `Kind` or `Kind:step`.
pub fn labels(events: &[EventRecord]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.event.step() {
            Some(step) => format!("{}:{step}", e.event.kind()),
            None => e.event.kind().to_string(),
        })
        .collect()
}

/// Asserts the exact event sequence; each expected entry is `Kind` or `Kind:step`.
pub fn assert_event_sequence(events: &[EventRecord], expected: &[&str]) {
    assert_eq!(
        labels(events),
        expected,
        "event sequence differs; events: {events:#?}"
    );
}

/// The seq of the first event labelled `label` (`Kind` or `Kind:step`).
pub fn seq_of(events: &[EventRecord], label: &str) -> u64 {
    let labels = labels(events);
    labels
        .iter()
        .position(|l| l == label)
        .map(|i| events[i].seq)
        .unwrap_or_else(|| panic!("no {label} event in {labels:?}"))
}

/// The first event labelled `label`.
pub fn event<'a>(events: &'a [EventRecord], label: &str) -> &'a DomainEvent {
    let seq = seq_of(events, label);
    &events
        .iter()
        .find(|e| e.seq == seq)
        .expect("seq found")
        .event
}

/// An `executions` row as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionRow {
    pub process_name: String,
    pub process_version: i64,
    pub input: Value,
    pub status: String,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub next_seq: i64,
}

/// A `steps` row as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRow {
    pub position: i64,
    pub kind: String,
    pub status: String,
    pub attempt: i64,
    pub retry_count: i64,
    pub output: Option<Value>,
    pub last_error: Option<Value>,
    pub skip_reason: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub wake_at_ms: Option<i64>,
}

/// An `events` row as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub step_id: Option<String>,
    pub payload: Value,
}

/// A `checkpoints` row as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointRow {
    pub seq: i64,
    pub step_id: String,
    pub at_ms: i64,
    /// Stored only by older builds; derived from the step states since.
    pub completed: Option<Value>,
    /// Every step's state (an array), or `{"base": seq, "changed": {"position": state}}`.
    pub steps: Value,
}

/// Each row's whole step states: a diff row applied to the states of the row it names.
pub fn whole_checkpoint_steps(rows: &[CheckpointRow]) -> Vec<Value> {
    let mut whole: Vec<(i64, Value)> = Vec::new();
    for row in rows {
        let steps = match &row.steps {
            Value::Array(_) => row.steps.clone(),
            diff => {
                let base = diff["base"].as_i64().expect("a diff names its base");
                let mut steps = whole
                    .iter()
                    .find(|(seq, _)| *seq == base)
                    .map(|(_, steps)| steps.clone())
                    .expect("the base is stored");
                for (position, state) in diff["changed"].as_object().expect("changed states") {
                    let position: usize = position.parse().expect("a position");
                    steps[position] = state.clone();
                }
                steps
            }
        };
        whole.push((row.seq, steps));
    }
    whole.into_iter().map(|(_, steps)| steps).collect()
}

pub fn checkpoint_rows(conn: &rusqlite::Connection, id: &str) -> Vec<CheckpointRow> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, step_id, at_ms, completed, steps FROM checkpoints
             WHERE execution_id = ?1 ORDER BY seq",
        )
        .expect("prepare checkpoints query");
    stmt.query_map([id], |r| {
        Ok(CheckpointRow {
            seq: r.get(0)?,
            step_id: r.get(1)?,
            at_ms: r.get(2)?,
            completed: json_column(Some(r.get::<_, String>(3)?).filter(|c| !c.is_empty())),
            steps: json_column(Some(r.get(4)?)).expect("steps"),
        })
    })
    .expect("query checkpoints")
    .collect::<Result<_, _>>()
    .expect("read checkpoints rows")
}

fn json_column(text: Option<String>) -> Option<Value> {
    text.map(|t| serde_json::from_str(&t).expect("JSON column holds JSON"))
}

pub fn execution_row(conn: &rusqlite::Connection, id: &str) -> ExecutionRow {
    conn.query_row(
        "SELECT e.process_name, e.process_version, i.input, e.status, e.output, e.error,
                e.created_at_ms, e.updated_at_ms, e.next_seq
         FROM executions e JOIN execution_inputs i ON i.execution_id = e.id
         WHERE e.id = ?1",
        [id],
        |r| {
            Ok(ExecutionRow {
                process_name: r.get(0)?,
                process_version: r.get(1)?,
                input: json_column(r.get(2)?).expect("input is not null"),
                status: r.get(3)?,
                output: json_column(r.get(4)?),
                error: r.get(5)?,
                created_at_ms: r.get(6)?,
                updated_at_ms: r.get(7)?,
                next_seq: r.get(8)?,
            })
        },
    )
    .unwrap_or_else(|e| panic!("executions row {id}: {e}"))
}

pub fn step_row(conn: &rusqlite::Connection, id: &str, step: &str) -> StepRow {
    conn.query_row(
        "SELECT position, kind, status, attempt, retry_count, output, last_error, skip_reason,
                started_at_ms, finished_at_ms, wake_at_ms
         FROM steps WHERE execution_id = ?1 AND step_id = ?2",
        [id, step],
        |r| {
            Ok(StepRow {
                position: r.get(0)?,
                kind: r.get(1)?,
                status: r.get(2)?,
                attempt: r.get(3)?,
                retry_count: r.get(4)?,
                output: json_column(r.get(5)?),
                last_error: json_column(r.get(6)?),
                skip_reason: r.get(7)?,
                started_at_ms: r.get(8)?,
                finished_at_ms: r.get(9)?,
                wake_at_ms: r.get(10)?,
            })
        },
    )
    .unwrap_or_else(|e| panic!("steps row {id}/{step}: {e}"))
}

pub fn event_rows(conn: &rusqlite::Connection, id: &str) -> Vec<EventRow> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, at_ms, kind, step_id, payload FROM events
             WHERE execution_id = ?1 ORDER BY seq",
        )
        .expect("prepare events query");
    stmt.query_map([id], |r| {
        Ok(EventRow {
            seq: r.get(0)?,
            at_ms: r.get(1)?,
            kind: r.get(2)?,
            step_id: r.get(3)?,
            payload: json_column(Some(r.get(4)?)).expect("payload"),
        })
    })
    .expect("query events")
    .collect::<Result<_, _>>()
    .expect("read events rows")
}

/// Step statuses by step id, from the `steps` table.
pub fn step_statuses(conn: &rusqlite::Connection, id: &str) -> BTreeMap<String, String> {
    let mut stmt = conn
        .prepare("SELECT step_id, status FROM steps WHERE execution_id = ?1")
        .expect("prepare steps query");
    stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query steps")
        .collect::<Result<_, _>>()
        .expect("read steps rows")
}

/// An agent that echoes its input.
pub fn echo() -> Behaviour {
    Behaviour::default()
}

/// An agent that answers every attempt of `steps` with `status` and error type `error_type`.
pub fn failing(steps: &[&str], status: u16, error_type: &str) -> Behaviour {
    Behaviour {
        fail_steps: steps.iter().map(|s| s.to_string()).collect(),
        fail_status: Some(status),
        error_type: Some(error_type.to_string()),
        ..Behaviour::default()
    }
}

/// An agent that fails the first `n` attempts of every key with a 503.
pub fn flaky(n: u32) -> Behaviour {
    Behaviour {
        fail_first: n,
        ..Behaviour::default()
    }
}

/// An echo agent that answers after `ms` of real time.
pub fn slow(ms: u64) -> Behaviour {
    Behaviour {
        delay_ms: ms,
        ..Behaviour::default()
    }
}

/// An agent with fixed outputs for some steps (echo for the others).
pub fn with_outputs(outputs: &[(&str, Value)]) -> Behaviour {
    Behaviour {
        outputs: outputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..Behaviour::default()
    }
}

/// Path of a file under `engine/examples`.
pub fn example_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/examples")
        .join(name)
}

/// Two agent steps in a chain, `b` passing on `a`'s text (shared by the pause and recovery
/// suites).
pub const PAIR: &str = "
name: pair
steps:
  - id: a
    type: agent_task
    agent: worker
    input: { text: '{{input.text}}' }
  - id: b
    type: agent_task
    agent: worker
    depends_on: [a]
    input: { prev: '{{steps.a.output.echo.text}}' }
";
