//! The driver: the thin async shell around the pure core.
//!
//! Each live execution has one task that owns its [`Execution`] and a bounded inbox of
//! [`Input`]s. For each input it asks the core for a [`Transition`], commits it through the
//! Storage port, publishes the events on the bus, and only then performs the commands (agent
//! calls, wake-ups), whose results come back as inputs. Persist-then-act means an effect is
//! never requested for a state that was not durable first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::agent::{AgentClient, AgentEndpoint, AgentRegistry, AgentRequest, ClientLimits};
use crate::bus::EventBus;
use crate::clock::Clock;
use crate::core::{
    fork, Checkpoint, Command, ErrorKind, Execution, ExecutionStatus, ForkError, Input, Lane,
    RecoveryAction, StepError, Transition, DEFAULT_TENANT,
};
use crate::definition::{Diagnostic, Diagnostics, ProcessDef, StepKind};
use crate::event::SystemEvent;
use crate::network::Network;
use crate::recovery::{RecoveryConfig, RecoveryError, RecoveryReport};
use crate::rng::{new_id, Rng};
use crate::store::{self, ControlAction, ControlRequest, SignalRequest, Storage};

/// Control requests applied per poll; the rest wait for the next one.
pub const MAX_CONTROL_REQUESTS_PER_POLL: usize = 256;

/// Storage failures in a row an execution's task rides out (reloading its state each time)
/// before it gives up; the execution then waits in storage for the next recovery.
const MAX_STORAGE_FAILURES: u32 = 32;
/// First wait after a storage failure; it doubles per failure in a row, up to the maximum.
const STORAGE_BACKOFF_MS: u64 = 10;
const MAX_STORAGE_BACKOFF_MS: u64 = 2_000;

/// Inputs queued per execution beyond one per step (cancel requests and the like).
pub const INBOX_SLACK: usize = 16;
/// Tries to hand a control input over while the execution flips between driven and stored;
/// only a burst of concurrent claims exhausts them.
const MAX_DELIVERY_ATTEMPTS: usize = 3;
/// Executions recovery claims and then loads in one read.
const RECOVERY_LOAD_BATCH: usize = 256;

/// An execution's inbox bound: one result or wake-up per step, plus control inputs.
const INBOX_CAPACITY: usize = crate::definition::MAX_STEPS_PER_PROCESS + INBOX_SLACK;

/// One input for an execution's task; `ack` fires once its transition is committed (or the
/// task has ended), so a control call returns only after it took effect.
///
/// Inboxes carry it boxed: a channel allocates its first block of slots when it is made, and
/// with ten thousand executions live, slots the size of an `Envelope` cost kilobytes each.
struct Envelope {
    input: Input,
    ack: Option<oneshot::Sender<bool>>,
    /// An agent call's result holds the call's place in the in-flight count until the
    /// transition that records it is committed (or the input is dropped).
    hold: Option<CallInFlight>,
}

/// Hands a result or wake-up to its execution's task (nobody to tell if the task is gone).
async fn post(tx: &mpsc::Sender<Box<Envelope>>, input: Input) {
    let envelope = Envelope {
        input,
        ack: None,
        hold: None,
    };
    let _ = tx.send(Box::new(envelope)).await;
}

/// Hands a call's result to its execution's task, holding the call's place in the in-flight
/// count until the transition that records it is committed.
async fn post_result(
    tx: &mpsc::Sender<Box<Envelope>>,
    (step, lane, attempt): (usize, Lane, u32),
    result: Result<Value, StepError>,
    counted: CallInFlight,
) {
    let envelope = Envelope {
        input: Input::AgentReturned {
            step,
            lane,
            attempt,
            result,
        },
        ack: None,
        hold: Some(counted),
    };
    let _ = tx.send(Box::new(envelope)).await;
}

/// How a new execution is created, beyond its id, process and input.
struct Creation<'a> {
    tenant: &'a str,
    /// Pause once this step completes.
    breakpoint: Option<String>,
    idempotency_key: Option<String>,
}

impl Default for Creation<'_> {
    fn default() -> Self {
        Creation {
            tenant: DEFAULT_TENANT,
            breakpoint: None,
            idempotency_key: None,
        }
    }
}

/// What became of an input sent to a live execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// No task drives the execution here.
    NotLive,
    /// Its task applied it and committed the transition (`changed: false`: it was a no-op).
    Applied { changed: bool },
}

/// A claimed execution's inbox: registered as live before its state is loaded, so that a
/// second claimant is refused and the first always loads the latest committed state.
struct Inbox {
    tx: mpsc::Sender<Box<Envelope>>,
    rx: mpsc::Receiver<Box<Envelope>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("no execution with id {0}")]
    UnknownExecution(String),
    #[error("execution id '{0}' is not 1 to 128 characters of A-Z a-z 0-9 - _ . :")]
    BadId(String),
    #[error("agent '{0}' has no address: start example agents before building the engine")]
    UnresolvedAgent(String),
    #[error("execution {0} is already being driven by this engine")]
    AlreadyLive(String),
    #[error("execution {0} is running: pause or cancel it before resetting it")]
    Running(String),
    #[error("execution {0} is already being reset")]
    AlreadyResetting(String),
    #[error("execution {id} has no checkpoint{}", at_seq(*.seq))]
    NoCheckpoint { id: String, seq: Option<u64> },
    #[error("execution {id} is {status}, not paused")]
    NotPaused { id: String, status: ExecutionStatus },
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error("execution task for {id} ended abnormally: {problem}")]
    Task { id: String, problem: String },
    #[error("bad signal: {0}")]
    BadSignal(String),
    #[error("bad schedule: {0}")]
    BadSchedule(String),
    #[error("tenant {0:?} is not 1 to 64 letters, digits, '_' or '-'")]
    BadTenant(String),
    #[error("idempotency key {0:?} is not 1 to 255 printable ASCII characters")]
    BadIdempotencyKey(String),
    #[error(
        "idempotency key {key:?} was used for execution {id} with another definition or input"
    )]
    KeyReused { key: String, id: String },
    #[error("no registered definition {name}{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownDefinition { name: String, version: Option<u32> },
}

/// Most executions one purge deletes (run it again for more): bounds one transaction.
pub const MAX_PURGE_BATCH: usize = 1_000;

/// The core's input for a signal request.
pub(crate) fn signal_input(signal: SignalRequest) -> Input {
    let SignalRequest { id, name, payload } = signal;
    Input::Signal { id, name, payload }
}

/// How often a sub-process step looks at its child (and retries creating or starting it).
pub const CHILD_POLL_MS: u64 = 50;

/// Largest signal payload, as JSON: signals are kept in the execution's row.
pub const MAX_SIGNAL_PAYLOAD_BYTES: usize = 64 * 1024;

/// Longest idempotency key a client may send.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

fn check_idempotency_key(key: &str) -> Result<(), Error> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::BadIdempotencyKey(key.to_string()))
    }
}

/// Longest execution id a caller may choose.
pub const MAX_EXECUTION_ID_BYTES: usize = 128;

fn check_execution_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_EXECUTION_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadId(id.to_string()))
    }
}

fn at_seq(seq: Option<u64>) -> String {
    seq.map(|s| format!(" at seq {s}")).unwrap_or_default()
}

/// The ports the engine talks to the world through.
pub struct Ports {
    pub clock: Arc<dyn Clock>,
    pub net: Arc<dyn Network>,
    pub store: Arc<dyn Storage>,
    pub rng: Rng,
}

#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub client: ClientLimits,
    /// Values for `${secrets.NAME}` in `http` steps' headers, filled in only as a request is
    /// sent (never stored).
    pub secrets: crate::secrets::Secrets,
    /// Where `email` steps send (none: they fail, saying so).
    pub smtp: Option<crate::email::SmtpConfig>,
    /// Keep only this many newest checkpoints per execution (all when `None`).
    pub keep_checkpoints: Option<usize>,
}

/// How to reset an execution: from which checkpoint, with what changed.
#[derive(Clone, Debug, Default)]
pub struct Reset {
    /// The checkpoint's `seq`; the latest when `None`.
    pub checkpoint_seq: Option<u64>,
    /// A new input; the original when `None`.
    pub input: Option<Value>,
    /// New outputs for steps that had completed at the checkpoint.
    pub outputs: BTreeMap<String, Value>,
}

/// One time an execution was taken up again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resumption {
    /// Resumed after a pause (or a breakpoint).
    Resumed { at_ms: u64 },
    /// Picked up by recovery after a restart.
    Recovered { at_ms: u64, action: RecoveryAction },
    /// Reset into a new execution from one of its checkpoints.
    Reset {
        at_ms: u64,
        into: String,
        checkpoint_seq: u64,
    },
}

impl Resumption {
    pub fn at_ms(&self) -> u64 {
        match self {
            Resumption::Resumed { at_ms }
            | Resumption::Recovered { at_ms, .. }
            | Resumption::Reset { at_ms, .. } => *at_ms,
        }
    }
}

struct Inner {
    clock: Arc<dyn Clock>,
    store: Arc<dyn Storage>,
    rng: Mutex<Rng>,
    /// Agent name to `host:port`.
    agents: BTreeMap<String, String>,
    client: AgentClient,
    http: crate::http_call::HttpCaller,
    email: crate::email::EmailSender,
    bus: EventBus,
    /// Inboxes of executions with a live task.
    live: Mutex<BTreeMap<String, mpsc::Sender<Box<Envelope>>>>,
    /// Executions a reset is being made from; a second concurrent reset is refused.
    resetting: Mutex<std::collections::BTreeSet<String>>,
    last_recovery: Mutex<Option<RecoveryReport>>,
    keep_checkpoints: Option<usize>,
    /// Set by [`Engine::drain`]: no new agent call starts.
    draining: std::sync::atomic::AtomicBool,
    /// Agent calls in flight, each until its result is committed; [`Engine::drain`] waits for
    /// zero.
    calls_in_flight: watch::Sender<usize>,
}

/// What [`Engine::drain`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    /// Agent calls in flight when draining began.
    pub in_flight_at_start: usize,
    /// Still in flight when the grace period ended: recovery re-dispatches them at the next
    /// start, under the same idempotency keys.
    pub abandoned: usize,
}

/// Counts one agent call in flight for as long as it lives (an aborted call's task drops it).
struct CallInFlight(watch::Sender<usize>);

impl CallInFlight {
    fn new(calls: &watch::Sender<usize>) -> CallInFlight {
        calls.send_modify(|n| *n += 1);
        CallInFlight(calls.clone())
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The result of [`Engine::recover`]: the report, and a handle per execution it restarted.
pub struct Recovery {
    pub report: RecoveryReport,
    pub handles: Vec<ExecutionHandle>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A started execution; [`ExecutionHandle::wait`] returns its final state.
pub struct ExecutionHandle {
    pub id: String,
    task: tokio::task::JoinHandle<Result<Execution, Error>>,
    status: watch::Receiver<ExecutionStatus>,
}

impl ExecutionHandle {
    /// Waits until the execution is paused (a breakpoint, say) or terminal; returns which.
    pub async fn stopped(&mut self) -> ExecutionStatus {
        let stopped = |s: &ExecutionStatus| *s == ExecutionStatus::Paused || s.is_terminal();
        let waited = self.status.wait_for(stopped).await.map(|s| *s);
        // An error means the task is gone: whatever it last reported is final.
        waited.unwrap_or_else(|_| *self.status.borrow())
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn wait(self) -> Result<Execution, Error> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Task {
                id: self.id,
                problem: e.to_string(),
            }),
        }
    }
}

impl Engine {
    /// Builds an engine. Every agent in `agents` must have an address (see
    /// [`crate::agent::example::start_all`] for example agents).
    pub fn new(
        ports: Ports,
        agents: &AgentRegistry,
        config: EngineConfig,
    ) -> Result<Engine, Error> {
        let mut addresses = BTreeMap::new();
        for (name, endpoint) in agents.iter() {
            match endpoint {
                AgentEndpoint::Address(addr) => {
                    addresses.insert(name.clone(), addr.clone());
                }
                AgentEndpoint::Example(_) => return Err(Error::UnresolvedAgent(name.clone())),
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                clock: ports.clock.clone(),
                store: ports.store,
                rng: Mutex::new(ports.rng),
                agents: addresses,
                client: AgentClient::new(ports.net.clone(), config.client),
                email: crate::email::EmailSender::new(
                    ports.net.clone(),
                    ports.clock.clone(),
                    config.smtp,
                    config.client.connect_timeout_ms,
                ),
                http: crate::http_call::HttpCaller::new(ports.net, config.client, config.secrets),
                bus: EventBus::new(),
                live: Mutex::new(BTreeMap::new()),
                last_recovery: Mutex::new(None),
                resetting: Mutex::new(std::collections::BTreeSet::new()),
                keep_checkpoints: config.keep_checkpoints,
                draining: std::sync::atomic::AtomicBool::new(false),
                calls_in_flight: watch::channel(0).0,
            }),
        })
    }

    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.inner.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Persists a new pending execution and returns its id. Nothing runs until [`Engine::start`].
    pub async fn create(&self, process: Arc<ProcessDef>, input: Value) -> Result<String, Error> {
        let id = self.new_execution_id(self.inner.clock.now_ms());
        self.create_stored(id.clone(), process, input, Creation::default())
            .await?;
        Ok(id)
    }

    /// Creates and starts an execution that pauses once `breakpoint` completes (an
    /// `execute_until`): [`ExecutionHandle::stopped`] returns then, with its checkpoint stored.
    pub async fn submit_until(
        &self,
        process: Arc<ProcessDef>,
        input: Value,
        breakpoint: &str,
    ) -> Result<ExecutionHandle, Error> {
        if process.position(breakpoint).is_none() {
            return Err(Error::Invalid(Diagnostics {
                file: format!("process '{}'", process.name),
                items: vec![Diagnostic {
                    step: Some(breakpoint.to_string()),
                    problem: "breakpoint names no step of this process".into(),
                }],
            }));
        }
        let creation = Creation {
            breakpoint: Some(breakpoint.to_string()),
            ..Creation::default()
        };
        self.submit_new(process, input, creation).await
    }

    /// Creates and starts an execution with one commit: its row is written together with its
    /// start (the first steps dispatched), so nothing is read back and nothing written twice.
    async fn submit_new(
        &self,
        process: Arc<ProcessDef>,
        input: Value,
        creation: Creation<'_>,
    ) -> Result<ExecutionHandle, Error> {
        let id = self.new_execution_id(self.inner.clock.now_ms());
        let mut execution = self.new_execution(id.clone(), process, input, creation)?;
        let inbox = self.claim(&id)?;
        let transition = self.inner.transition(&mut execution, Input::Start);
        match self.inner.persist(&execution, transition, true).await {
            Ok(commands) => Ok(self.spawn_claimed(execution, First::Perform(commands), inbox)),
            Err(e) => {
                self.inner.release(&id);
                Err(e)
            }
        }
    }

    /// Persists a new pending execution under an id the caller chose, so that a caller who
    /// cannot tell whether its create landed (a timeout, an ambiguous storage error) can simply
    /// create again: the second attempt fails with [`store::Error::Duplicate`] if the first
    /// landed, and nothing is ever created twice.
    pub async fn create_with_id(
        &self,
        id: &str,
        process: Arc<ProcessDef>,
        input: Value,
    ) -> Result<(), Error> {
        self.create_with_id_in(DEFAULT_TENANT, id, process, input)
            .await
    }

    /// [`Engine::create_with_id`] for `tenant`.
    pub(crate) async fn create_with_id_in(
        &self,
        tenant: &str,
        id: &str,
        process: Arc<ProcessDef>,
        input: Value,
    ) -> Result<(), Error> {
        check_execution_id(id)?;
        let creation = Creation {
            tenant,
            ..Creation::default()
        };
        self.create_stored(id.to_string(), process, input, creation)
            .await
    }

    /// Retention: deletes terminal executions (with their history) last changed more than
    /// `older_than_ms` ago, at most [`MAX_PURGE_BATCH`] per call, oldest first; `dry_run`
    /// only lists them. Never touches an execution that is pending, running or paused.
    pub async fn purge(
        &self,
        older_than_ms: u64,
        dry_run: bool,
    ) -> Result<Vec<store::PurgedExecution>, Error> {
        let cutoff_ms = self.inner.clock.now_ms().saturating_sub(older_than_ms);
        Ok(self
            .inner
            .store
            .purge_terminal(cutoff_ms, MAX_PURGE_BATCH, dry_run)
            .await?)
    }

    /// Registers a definition (after validating it against this engine's agents): a new
    /// version that becomes current, or the current one if nothing changed. Executions already
    /// created keep the version they were created with: each carries its own copy.
    pub async fn register_definition(&self, process: ProcessDef) -> Result<u32, Error> {
        self.register_definition_in(DEFAULT_TENANT, process).await
    }

    pub(crate) async fn register_definition_in(
        &self,
        tenant: &str,
        process: ProcessDef,
    ) -> Result<u32, Error> {
        let agents: Vec<String> = self.inner.agents.keys().cloned().collect();
        crate::definition::validate("registry", &process, Some(&agents)).map_err(Error::Invalid)?;
        let now = self.inner.clock.now_ms();
        Ok(self
            .inner
            .store
            .register_definition(tenant, &process, now)
            .await?)
    }

    /// Makes an earlier (or later) registered version current for new executions.
    pub async fn set_current_definition(&self, name: &str, version: u32) -> Result<(), Error> {
        Ok(self
            .inner
            .store
            .set_current_definition(DEFAULT_TENANT, name, version)
            .await?)
    }

    /// A sub-process step's child, from creation to its end: created from the registry (or
    /// found, when this is a re-issue after a restart), started (unless something drives it
    /// already), then watched until terminal. Storage trouble is waited out; a definition that
    /// is not registered fails the step.
    async fn run_child(
        &self,
        tenant: &str,
        child_id: &str,
        process: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<Value, StepError> {
        let child_error = |message: String| StepError::new(ErrorKind::Child, message);
        loop {
            match self
                .create_registered_in(tenant, child_id, process, version, input.clone())
                .await
            {
                Ok(_) | Err(Error::Store(store::Error::Duplicate(_))) => break,
                Err(e @ (Error::UnknownDefinition { .. } | Error::BadId(_))) => {
                    return Err(child_error(e.to_string()))
                }
                Err(e) => {
                    tracing::warn!(child = %child_id, "creating the child failed, retrying: {e}");
                    self.sleep_ms(CHILD_POLL_MS).await;
                }
            }
        }
        loop {
            match self.start(child_id).await {
                Ok(_) | Err(Error::AlreadyLive(_)) => break,
                Err(e) => {
                    tracing::warn!(child = %child_id, "starting the child failed, retrying: {e}");
                    self.sleep_ms(CHILD_POLL_MS).await;
                }
            }
        }
        loop {
            if let Ok(Some(child)) = self.inner.store.load(child_id).await {
                match child.status {
                    ExecutionStatus::Completed => return Ok(child.output.unwrap_or(Value::Null)),
                    ExecutionStatus::Failed => {
                        let why = child.error.unwrap_or_else(|| "failed".into());
                        return Err(child_error(format!("child {child_id} failed: {why}")));
                    }
                    ExecutionStatus::Cancelled => {
                        return Err(child_error(format!("child {child_id} was cancelled")))
                    }
                    _ => {}
                }
            }
            self.sleep_ms(CHILD_POLL_MS).await;
        }
    }

    async fn sleep_ms(&self, ms: u64) {
        let clock = &self.inner.clock;
        clock.sleep_until_ms(clock.now_ms() + ms).await;
    }

    /// Creates execution `id` from registered definition `name` (`version`, or the current
    /// one); returns the version it is pinned to. Like [`Engine::create_with_id`], an
    /// existing `id` is [`store::Error::Duplicate`].
    pub async fn create_registered(
        &self,
        id: &str,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<u32, Error> {
        self.create_registered_in(DEFAULT_TENANT, id, name, version, input)
            .await
    }

    pub(crate) async fn create_registered_in(
        &self,
        tenant: &str,
        id: &str,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<u32, Error> {
        let process = self.registered(tenant, name, version).await?;
        let pinned = process.version;
        self.create_with_id_in(tenant, id, process, input).await?;
        Ok(pinned)
    }

    async fn create_stored(
        &self,
        id: String,
        process: Arc<ProcessDef>,
        input: Value,
        creation: Creation<'_>,
    ) -> Result<(), Error> {
        let execution = self.new_execution(id, process, input, creation)?;
        self.inner.store.create(&execution).await?;
        Ok(())
    }

    /// A new pending execution, in memory, whose agents are all known.
    fn new_execution(
        &self,
        id: String,
        process: Arc<ProcessDef>,
        input: Value,
        creation: Creation<'_>,
    ) -> Result<Execution, Error> {
        self.check_agents(&process)?;
        let now = self.inner.clock.now_ms();
        let mut execution = Execution::new(id, process, input, now);
        execution.breakpoint = creation.breakpoint;
        execution.tenant = creation.tenant.to_string();
        execution.idempotency_key = creation.idempotency_key;
        Ok(execution)
    }

    /// Starts driving a stored pending execution (a no-op drive if it is not pending).
    pub async fn start(&self, id: &str) -> Result<ExecutionHandle, Error> {
        self.start_with(id, Input::Start).await
    }

    /// [`Engine::start`] with the start input given (an audited one).
    pub(crate) async fn start_with(
        &self,
        id: &str,
        start: Input,
    ) -> Result<ExecutionHandle, Error> {
        let inbox = self.claim(id)?;
        match self.load_existing(id).await {
            Ok(execution) => Ok(self.spawn_claimed(execution, First::Apply(start), inbox)),
            Err(e) => {
                self.inner.release(id);
                Err(e)
            }
        }
    }

    /// Creates and starts an execution.
    pub async fn submit(
        &self,
        process: Arc<ProcessDef>,
        input: Value,
    ) -> Result<ExecutionHandle, Error> {
        self.submit_new(process, input, Creation::default()).await
    }

    /// Submits and waits for the final state.
    pub async fn run(&self, process: Arc<ProcessDef>, input: Value) -> Result<Execution, Error> {
        self.submit(process, input).await?.wait().await
    }

    /// Cancels an execution (pending, running or paused): a live one through its inbox, a
    /// stored one directly. Calls in flight are abandoned; their late results are ignored.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<(), Error> {
        self.deliver(id, Input::Cancel { reason }).await
    }

    /// The execution's checkpoints, oldest first (one per completed step, until pruned).
    pub async fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>, Error> {
        Ok(self.inner.store.checkpoints(id).await?)
    }

    /// Deletes all but the newest `keep` checkpoints of `id`; returns how many were deleted.
    pub async fn prune_checkpoints(&self, id: &str, keep: usize) -> Result<usize, Error> {
        Ok(self.inner.store.prune_checkpoints(id, keep).await?)
    }

    /// Resets `id` to one of its checkpoints: a new execution (a fork) starts from that state,
    /// optionally with another input or other outputs, and runs forward. The original must not
    /// be running; a paused (or interrupted) original is cancelled, a finished one is left as
    /// it is. Two resets of one execution at the same time: the second is refused.
    pub async fn reset(&self, id: &str, reset: Reset) -> Result<ExecutionHandle, Error> {
        self.reset_audited(id, reset, None).await
    }

    /// [`Engine::reset`]; with `actor` (`Some(who)`), both the original's cancel and the
    /// fork's start are audited as `reset` (see [`crate::tenant`]).
    pub(crate) async fn reset_audited(
        &self,
        id: &str,
        reset: Reset,
        actor: Option<Option<String>>,
    ) -> Result<ExecutionHandle, Error> {
        let audited = |detail: String, input: Input| match &actor {
            None => input,
            Some(who) => Input::Audited {
                actor: who.clone(),
                action: "reset".into(),
                detail: Some(detail),
                input: Box::new(input),
            },
        };
        let _guard = ResetGuard::take(&self.inner, id)?;
        let original = self.load_existing(id).await?;
        if original.status == ExecutionStatus::Running {
            return Err(Error::Running(id.to_string()));
        }
        let checkpoints = self.inner.store.checkpoints(id).await?;
        let checkpoint = match reset.checkpoint_seq {
            None => checkpoints.last(),
            Some(seq) => checkpoints.iter().find(|c| c.seq == seq),
        }
        .ok_or_else(|| Error::NoCheckpoint {
            id: id.to_string(),
            seq: reset.checkpoint_seq,
        })?;
        let now = self.inner.clock.now_ms();
        let new_id = self.new_execution_id(now);
        let forked = fork(
            new_id.clone(),
            original.process.clone(),
            checkpoint,
            reset.input.unwrap_or_else(|| original.input.clone()),
            &reset.outputs,
            now,
        )?;
        self.inner.store.create(&forked).await?;
        if !original.status.is_terminal() {
            let reason = format!("reset into {new_id}");
            let cancel = Input::Cancel {
                reason: Some(reason.clone()),
            };
            self.deliver(id, audited(reason, cancel)).await?;
        }
        let start = audited(format!("reset from {id}"), Input::Start);
        self.start_with(&new_id, start).await
    }

    /// Each time `id` was taken up again — resumed, recovered, or reset into a new execution —
    /// in time order.
    pub async fn history(&self, id: &str) -> Result<Vec<Resumption>, Error> {
        history(&*self.inner.store, id).await
    }

    /// A new execution id (time-ordered, random), for a create that has no id of its own.
    pub(crate) fn fresh_execution_id(&self) -> String {
        self.new_execution_id(self.inner.clock.now_ms())
    }

    fn new_execution_id(&self, now_ms: u64) -> String {
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        new_id(now_ms, &mut **rng)
    }

    /// `tenant`'s registered definition `name` (`version`, or the current one).
    pub(crate) async fn registered(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<ProcessDef>, Error> {
        self.inner
            .store
            .definition(tenant, name, version)
            .await?
            .ok_or_else(|| Error::UnknownDefinition {
                name: name.to_string(),
                version,
            })
    }

    /// Creates an execution of `tenant`'s definition `name` under a client's idempotency
    /// `key`, unless the tenant already has one under that key: then returns that one, with
    /// `created: false`, when the request is the same (definition and input), and
    /// [`Error::KeyReused`] when it is not. A create whose outcome was lost (a crash, an
    /// ambiguous commit) can therefore be retried with the same key and never makes two.
    pub(crate) async fn create_idempotent_in(
        &self,
        tenant: &str,
        key: &str,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<(String, bool), Error> {
        check_idempotency_key(key)?;
        let process = self.registered(tenant, name, version).await?;
        let id = self.fresh_execution_id();
        let stored_key = if crate::planted::planted(crate::planted::Bug::KeyNotStored) {
            None
        } else {
            Some(key.to_string())
        };
        let created = Creation {
            tenant,
            idempotency_key: stored_key,
            ..Creation::default()
        };
        match self
            .create_stored(id.clone(), process, input.clone(), created)
            .await
        {
            Ok(()) => Ok((id, true)),
            Err(Error::Store(store::Error::DuplicateKey { id, .. })) => {
                let existing = self
                    .inner
                    .store
                    .load(&id)
                    .await?
                    .ok_or_else(|| Error::UnknownExecution(id.clone()))?;
                let same = existing.process.name == name
                    && version.is_none_or(|v| v == existing.process.version)
                    && existing.input == input;
                if same {
                    Ok((id, false))
                } else {
                    Err(Error::KeyReused {
                        key: key.to_string(),
                        id,
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Graceful shutdown: from now on no agent call starts, and this waits (at most
    /// `grace_ms` of Clock time) for the calls in flight to finish and their results to be
    /// committed. Whatever is left is recovered at the next start.
    pub async fn drain(&self, grace_ms: u64) -> DrainReport {
        use std::sync::atomic::Ordering;
        self.inner.draining.store(true, Ordering::SeqCst);
        let mut calls = self.inner.calls_in_flight.subscribe();
        let in_flight_at_start = *calls.borrow();
        let clock = self.inner.clock.clone();
        let deadline = clock.now_ms() + grace_ms;
        tokio::select! {
            biased;
            _ = calls.wait_for(|n| *n == 0) => {}
            _ = clock.sleep_until_ms(deadline) => {}
        }
        let abandoned = *calls.borrow();
        DrainReport {
            in_flight_at_start,
            abandoned,
        }
    }

    /// Checks a signal request: an id, a name, a payload within [`MAX_SIGNAL_PAYLOAD_BYTES`].
    pub(crate) fn check_signal(signal: &SignalRequest) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&signal.payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if bytes > MAX_SIGNAL_PAYLOAD_BYTES || signal.id.is_empty() || signal.name.is_empty() {
            return Err(Error::BadSignal(format!(
                "a signal needs an id and a name, and a payload of at most \
                 {MAX_SIGNAL_PAYLOAD_BYTES} bytes (got {bytes})"
            )));
        }
        Ok(())
    }

    /// Sends a signal to an execution (pending, running or paused): a `wait_signal` step for
    /// its name consumes it, now or once reached. The sender's id makes it idempotent: the
    /// same id again changes nothing. Payloads over [`MAX_SIGNAL_PAYLOAD_BYTES`] are refused.
    pub async fn signal(&self, id: &str, signal: SignalRequest) -> Result<(), Error> {
        Engine::check_signal(&signal)?;
        self.deliver(id, signal_input(signal)).await
    }

    /// Pauses a running execution: no new step starts; steps in flight finish and their
    /// results are kept. The pause is persisted, so it survives a restart.
    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.deliver(id, Input::Pause).await
    }

    /// Applies a control input: through the task driving `id` if there is one, else directly
    /// to the stored execution, claimed for the while, so that no recovery or resume loads it
    /// meanwhile and drives a stale copy. A claim lost to someone who starts driving it sends
    /// the input to them instead.
    pub(crate) async fn deliver(&self, id: &str, input: Input) -> Result<(), Error> {
        for _ in 0..MAX_DELIVERY_ATTEMPTS {
            if self.send_live(id, input.clone()).await != Delivery::NotLive {
                return Ok(());
            }
            match self.claim(id) {
                Ok(_inbox) => {
                    let applied = async {
                        let mut execution = self.load_existing(id).await?;
                        self.inner.apply(&mut execution, input).await
                    }
                    .await;
                    self.inner.release(id);
                    return applied.map(|_| ());
                }
                Err(Error::AlreadyLive(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::AlreadyLive(id.to_string()))
    }

    /// Resumes a paused execution. One this process is not driving (it was paused before a
    /// restart) is picked up first, as recovery would, then resumed.
    /// Refused (`NotPaused`) for an execution that is not paused, so of two concurrent
    /// resumes one wins and the other is told.
    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        self.resume_with(id, Input::Resume).await
    }

    /// [`Engine::resume`] with the resume input given (an audited one).
    pub(crate) async fn resume_with(&self, id: &str, resume: Input) -> Result<(), Error> {
        let status = self.load_existing(id).await?.status;
        if status != ExecutionStatus::Paused {
            return Err(Error::NotPaused {
                id: id.to_string(),
                status,
            });
        }
        let not_paused = |status| Error::NotPaused {
            id: id.to_string(),
            status,
        };
        match self.send_live(id, resume.clone()).await {
            Delivery::Applied { changed: true } => return Ok(()),
            // Another resume got there first.
            Delivery::Applied { changed: false } => {
                return Err(not_paused(self.load_existing(id).await?.status))
            }
            Delivery::NotLive => {}
        }
        match self.claim(id) {
            Ok(inbox) => {
                let execution = match self.load_existing(id).await {
                    Ok(execution) => execution,
                    Err(e) => {
                        self.inner.release(id);
                        return Err(e);
                    }
                };
                let action = execution.recovery_action(self.inner.clock.now_ms(), u64::MAX);
                if action == RecoveryAction::Skip {
                    self.inner.release(id);
                    return Ok(());
                }
                let _handle =
                    self.spawn_claimed(execution, First::Apply(Input::Recover { action }), inbox);
            }
            // Lost a race with another resume or a recovery: the winner drives it.
            Err(Error::AlreadyLive(_)) => {}
            Err(e) => return Err(e),
        }
        match self.send_live(id, resume.clone()).await {
            Delivery::Applied { changed: true } => Ok(()),
            _ => Err(not_paused(self.load_existing(id).await?.status)),
        }
    }

    /// Recovers every non-terminal execution in storage; run it at startup before accepting
    /// new work. Each execution gets an action (see [`Execution::recovery_action`]); one that
    /// cannot be loaded or updated is reported and the rest go on. Executions this process is
    /// already driving are skipped, so a second concurrent recovery never doubles one.
    ///
    /// Control requests made while no engine ran are applied around the scan, the last one per
    /// execution winning: pauses and cancels before it (so nothing moves first), resumes after
    /// it (so the resumed execution is among the returned handles).
    pub async fn recover(&self, config: RecoveryConfig) -> Result<Recovery, Error> {
        let bus = &self.inner.bus;
        let mut resumes = Vec::new();
        if !config.dry_run {
            let mut last: BTreeMap<String, ControlRequest> = BTreeMap::new();
            let requests = self
                .inner
                .store
                .take_control_requests(MAX_CONTROL_REQUESTS_PER_POLL)
                .await?;
            for request in requests {
                if request.action == ControlAction::Signal {
                    // Every signal counts, in order; only pause/resume/cancel collapse.
                    self.apply_control(request).await;
                } else {
                    last.insert(request.execution_id.clone(), request);
                }
            }
            for request in last.into_values() {
                if request.action == ControlAction::Resume {
                    resumes.push(request);
                } else {
                    self.apply_control(request).await;
                }
            }
        }
        let mut report = RecoveryReport {
            dry_run: config.dry_run,
            started_at_ms: self.inner.clock.now_ms(),
            ..RecoveryReport::default()
        };
        let active = self.inner.store.list_active().await?;
        bus.publish_system(SystemEvent::RecoveryStarted {
            at_ms: report.started_at_ms,
            active: active.len(),
            dry_run: config.dry_run,
        });
        let mut handles = Vec::new();
        for chunk in active.chunks(RECOVERY_LOAD_BATCH) {
            // Claim before loading: whoever claims first reads the latest committed state, and
            // an execution already driven here (or by a concurrent scan) is skipped.
            let (mut ids, mut inboxes) = (Vec::new(), Vec::new());
            for id in chunk {
                match self.claim(id) {
                    Ok(inbox) => {
                        ids.push(id.clone());
                        inboxes.push(inbox);
                    }
                    Err(_) => report.count(id, RecoveryAction::Skip),
                }
            }
            let loaded = self.inner.store.load_many(&ids).await;
            debug_assert_eq!(loaded.len(), ids.len(), "one answer per id");
            for ((id, inbox), loaded) in ids.into_iter().zip(inboxes).zip(loaded) {
                let mut execution = match loaded {
                    Ok(Some(execution)) => execution,
                    Ok(None) => {
                        self.inner.release(&id);
                        report.count(&id, RecoveryAction::Skip);
                        continue;
                    }
                    Err(e) => {
                        self.inner.release(&id);
                        self.recovery_failed(&mut report, &id, e.to_string());
                        continue;
                    }
                };
                let now_ms = self.inner.clock.now_ms();
                let mut max_age_ms = config.max_age_ms();
                if crate::planted::planted(crate::planted::Bug::RecoveryFailsFreshExecutions) {
                    // Planted bug (test-only, see `planted`): the limit's hours taken for milliseconds.
                    max_age_ms = config.max_age_hours;
                }
                let action = execution.recovery_action(now_ms, max_age_ms);
                report.count(&id, action);
                if config.dry_run {
                    self.inner.release(&id);
                    continue;
                }
                match action {
                    RecoveryAction::Skip => self.inner.release(&id),
                    RecoveryAction::MarkFailed => {
                        let input = Input::Recover { action };
                        let result = self.inner.apply(&mut execution, input).await;
                        self.inner.release(&id);
                        if let Err(e) = result {
                            self.recovery_failed(&mut report, &id, e.to_string());
                        }
                    }
                    RecoveryAction::Resume | RecoveryAction::RetryStep => {
                        handles.push(self.spawn_claimed(
                            execution,
                            First::Apply(Input::Recover { action }),
                            inbox,
                        ));
                    }
                }
            }
        }
        for request in resumes {
            self.apply_control(request).await;
        }
        report.finished_at_ms = self.inner.clock.now_ms();
        bus.publish_system(SystemEvent::RecoveryCompleted {
            at_ms: report.finished_at_ms,
            resumed: report.resumed,
            retried: report.retried,
            failed: report.failed,
            skipped: report.skipped,
            errors: report.errors.len(),
        });
        tracing::info!("{}", report.summary());
        *self
            .inner
            .last_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(Recovery { report, handles })
    }

    /// Applies the control requests waiting in storage (pause, resume, cancel asked for from
    /// outside the process). A request for an unknown or finished execution is logged and
    /// dropped. Returns how many were applied.
    pub async fn apply_control_requests(&self) -> Result<usize, Error> {
        let requests = self
            .inner
            .store
            .take_control_requests(MAX_CONTROL_REQUESTS_PER_POLL)
            .await?;
        let mut applied = 0;
        for request in requests {
            applied += usize::from(self.apply_control(request).await);
        }
        Ok(applied)
    }

    /// Applies one control request; false (and a warning) if it could not be.
    async fn apply_control(&self, request: ControlRequest) -> bool {
        let ControlRequest {
            execution_id: id,
            action,
            reason,
            signal,
            ..
        } = request;
        let result = match (action, signal) {
            (ControlAction::Pause, _) => self.pause(&id).await,
            (ControlAction::Resume, _) => self.resume(&id).await,
            (ControlAction::Cancel, _) => self.cancel(&id, reason).await,
            (ControlAction::Signal, Some(s)) => self.signal(&id, s).await,
            (ControlAction::Signal, None) => Err(Error::Store(store::Error::Corrupt {
                id: id.clone(),
                problem: "a signal request without its signal".into(),
            })),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(execution = %id, ?action, "control request dropped: {e}");
                false
            }
        }
    }

    /// Polls for control requests every `poll_ms` (Clock time) until the returned task is
    /// aborted. For engines that run as long-lived processes.
    pub fn poll_control_requests(&self, poll_ms: u64) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                let next = engine.inner.clock.now_ms().saturating_add(poll_ms);
                engine.inner.clock.sleep_until_ms(next).await;
                if let Err(e) = engine.apply_control_requests().await {
                    tracing::warn!("control requests: {e}");
                }
            }
        })
    }

    /// The report of the last [`Engine::recover`], for health checks.
    pub fn last_recovery_report(&self) -> Option<RecoveryReport> {
        self.inner
            .last_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn recovery_failed(&self, report: &mut RecoveryReport, id: &str, error: String) {
        tracing::warn!(execution = id, "recovery failed: {error}");
        self.inner
            .bus
            .publish_system(SystemEvent::ExecutionRecoveryFailed {
                at_ms: self.inner.clock.now_ms(),
                execution_id: id.to_string(),
                error: error.clone(),
            });
        report.errors.push(RecoveryError {
            execution_id: id.to_string(),
            error,
        });
    }

    /// Sends `input` to the live task driving `id` and waits until its transition is
    /// committed.
    async fn send_live(&self, id: &str, input: Input) -> Delivery {
        let inbox = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let Some(inbox) = inbox else {
            return Delivery::NotLive;
        };
        let (ack, acked) = oneshot::channel();
        let envelope = Envelope {
            input,
            ack: Some(ack),
            hold: None,
        };
        if inbox.send(Box::new(envelope)).await.is_err() {
            // The task ended between the lookup and the send.
            return Delivery::NotLive;
        }
        // An error means the task ended before applying it: nothing changed.
        Delivery::Applied {
            changed: acked.await.unwrap_or(false),
        }
    }

    async fn load_existing(&self, id: &str) -> Result<Execution, Error> {
        self.inner
            .store
            .load(id)
            .await?
            .ok_or_else(|| Error::UnknownExecution(id.to_string()))
    }

    /// The execution as last committed.
    pub async fn load(&self, id: &str) -> Result<Option<Execution>, Error> {
        Ok(self.inner.store.load(id).await?)
    }

    pub(crate) fn check_agents(&self, process: &ProcessDef) -> Result<(), Error> {
        let items: Vec<Diagnostic> = process
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::AgentTask(t) if !self.inner.agents.contains_key(&t.agent) => {
                    Some(Diagnostic {
                        step: Some(s.id.clone()),
                        problem: format!("unknown agent '{}'", t.agent),
                    })
                }
                _ => None,
            })
            .collect();
        if items.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(Diagnostics {
                file: format!("process '{}'", process.name),
                items,
            }))
        }
    }

    /// Registers `id` as driven by this engine. Refused if it already is: the check and the
    /// registration happen under one lock, so two callers racing (two recoveries, a resume and
    /// a recovery) never drive one execution twice.
    fn claim(&self, id: &str) -> Result<Inbox, Error> {
        let mut live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.contains_key(id) {
            return Err(Error::AlreadyLive(id.to_string()));
        }
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        live.insert(id.to_string(), tx.clone());
        Ok(Inbox { tx, rx })
    }

    /// Starts the task that drives a claimed execution, feeding it `first`.
    fn spawn_claimed(&self, execution: Execution, first: First, inbox: Inbox) -> ExecutionHandle {
        let id = execution.id.clone();
        let inner = self.inner.clone();
        let (status_tx, status) = watch::channel(execution.status);
        let task = tokio::spawn(async move {
            let id = execution.id.clone();
            let result = inner
                .clone()
                .drive(execution, first, inbox, status_tx)
                .await;
            inner.release(&id);
            result
        });
        ExecutionHandle { id, task, status }
    }
}

impl Inner {
    /// Ends this engine's claim on `id` (see [`Engine::claim`]).
    fn release(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Applies one input: core transition, commit, publish. Returns whether anything changed
    /// and the commands to perform.
    async fn apply(
        &self,
        execution: &mut Execution,
        input: Input,
    ) -> Result<(bool, Vec<Command>), Error> {
        let transition = self.transition(execution, input);
        if !transition.changed {
            return Ok((false, Vec::new()));
        }
        let commands = self.persist(execution, transition, false).await?;
        Ok((true, commands))
    }

    /// The core's transition for `input`, at the clock's now.
    fn transition(&self, execution: &mut Execution, input: Input) -> Transition {
        let now = self.clock.now_ms();
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        execution.apply(input, now, &mut **rng)
    }

    /// Commits `transition` (creating the execution's row if `new`), then publishes its
    /// events; returns its commands, which may be performed now.
    async fn persist(
        &self,
        execution: &Execution,
        transition: Transition,
        new: bool,
    ) -> Result<Vec<Command>, Error> {
        if new {
            self.store
                .create_started(execution, &transition.events, &transition.checkpoints)
                .await?;
        } else {
            let dirty: Vec<usize> = transition.dirty_steps.iter().copied().collect();
            self.store
                .commit(
                    execution,
                    &dirty,
                    &transition.events,
                    &transition.checkpoints,
                )
                .await?;
        }
        if let (Some(keep), false) = (self.keep_checkpoints, transition.checkpoints.is_empty()) {
            self.store.prune_checkpoints(&execution.id, keep).await?;
        }
        self.bus.publish(&transition.events);
        Ok(transition.commands)
    }

    async fn drive(
        self: Arc<Self>,
        mut execution: Execution,
        first: First,
        inbox: Inbox,
        status: watch::Sender<ExecutionStatus>,
    ) -> Result<Execution, Error> {
        let Inbox { tx, mut rx } = inbox;
        let mut in_flight: BTreeMap<(usize, Lane), AbortHandle> = BTreeMap::new();
        // Inputs to apply before the inbox: the first one, and after a storage failure the
        // recovery input and the input whose commit failed.
        let mut queue = VecDeque::new();
        match first {
            First::Apply(input) => queue.push_back(Envelope {
                input,
                ack: None,
                hold: None,
            }),
            First::Perform(commands) => {
                for command in commands {
                    self.perform(&execution, command, &tx, &mut in_flight);
                }
            }
        }
        let mut storage_failures: u32 = 0;
        let result = loop {
            let envelope = match queue.pop_front() {
                Some(envelope) => envelope,
                None if execution.status.is_terminal() => break Ok(()),
                None => match rx.recv().await {
                    Some(envelope) => *envelope,
                    None => break Ok(()),
                },
            };
            let retry = match &envelope.input {
                Input::Recover { .. } => None,
                input => Some(input.clone()),
            };
            let (changed, commands) = match self.apply(&mut execution, envelope.input).await {
                Ok(applied) => applied,
                Err(Error::Store(e)) if storage_failures < MAX_STORAGE_FAILURES => {
                    // The write may or may not have landed: memory is no longer the truth.
                    // Forget it and go on from what storage holds, as a restart would.
                    storage_failures += 1;
                    tracing::warn!(
                        execution = %execution.id,
                        failures = storage_failures,
                        "storage write failed, reloading: {e}"
                    );
                    for (_, handle) in std::mem::take(&mut in_flight) {
                        handle.abort();
                    }
                    // The reload can fail too (the device that failed the write may fail a read
                    // next): it counts as another failure and is tried again after a longer
                    // wait, rather than leaving the execution undriven until a restart.
                    let reloaded = loop {
                        let backoff_ms = STORAGE_BACKOFF_MS
                            .saturating_mul(1 << storage_failures.min(16))
                            .min(MAX_STORAGE_BACKOFF_MS);
                        let wake_at = self.clock.now_ms().saturating_add(backoff_ms);
                        self.clock.sleep_until_ms(wake_at).await;
                        match self.store.load(&execution.id).await {
                            Ok(Some(stored)) => break Ok(stored),
                            Ok(None) => break Err(Error::UnknownExecution(execution.id.clone())),
                            Err(e) if storage_failures < MAX_STORAGE_FAILURES => {
                                storage_failures += 1;
                                tracing::warn!(
                                    execution = %execution.id,
                                    failures = storage_failures,
                                    "reloading failed, trying again: {e}"
                                );
                            }
                            Err(e) => break Err(e.into()),
                        }
                    };
                    execution = match reloaded {
                        Ok(stored) => stored,
                        Err(e) => break Err(e),
                    };
                    status.send_replace(execution.status);
                    let action = execution.recovery_action(self.clock.now_ms(), u64::MAX);
                    if action != RecoveryAction::Skip {
                        queue.push_front(Envelope {
                            input: Input::Recover { action },
                            ack: None,
                            hold: None,
                        });
                    }
                    if let Some(input) = retry {
                        queue.push_back(Envelope {
                            input,
                            ack: envelope.ack,
                            hold: None,
                        });
                    }
                    continue;
                }
                Err(e) => break Err(e),
            };
            storage_failures = 0;
            for command in commands {
                self.perform(&execution, command, &tx, &mut in_flight);
            }
            status.send_replace(execution.status);
            if let Some(ack) = envelope.ack {
                let _ = ack.send(changed);
            }
            // The call's result is committed: it no longer counts as in flight.
            drop(envelope.hold);
        };
        for (_, handle) in in_flight {
            handle.abort();
        }
        result.map(|()| execution)
    }

    /// Spawns an outbound call (an agent call, an `http` request, an email) whose result comes
    /// back as [`Input::AgentReturned`], holding its place in the in-flight count.
    fn spawn_outbound(
        &self,
        tx: mpsc::Sender<Box<Envelope>>,
        (step, lane, attempt): (usize, Lane, u32),
        send: impl std::future::Future<Output = Result<Value, StepError>> + Send + 'static,
    ) -> AbortHandle {
        let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
        let counted = (!draining).then(|| CallInFlight::new(&self.calls_in_flight));
        let task = tokio::spawn(async move {
            let Some(counted) = counted else {
                // Shutting down: the call stays dispatched in storage, and recovery sends it
                // at the next start.
                return std::future::pending::<()>().await;
            };
            let result = send.await;
            post_result(&tx, (step, lane, attempt), result, counted).await;
        });
        task.abort_handle()
    }

    fn perform(
        self: &Arc<Self>,
        execution: &Execution,
        command: Command,
        tx: &mpsc::Sender<Box<Envelope>>,
        in_flight: &mut BTreeMap<(usize, Lane), AbortHandle>,
    ) {
        let tx = tx.clone();
        let (step, handle) = match command {
            Command::StartChild {
                step,
                tenant,
                child_id,
                process,
                version,
                input,
            } => {
                let engine = Engine {
                    inner: self.clone(),
                };
                let task = tokio::spawn(async move {
                    let result = engine
                        .run_child(&tenant, &child_id, &process, version, input)
                        .await;
                    let input = Input::AgentReturned {
                        step,
                        lane: Lane::Main,
                        attempt: 1,
                        result,
                    };
                    post(&tx, input).await;
                });
                ((step, Lane::Main), task.abort_handle())
            }
            Command::CancelChild { child_id } => {
                let engine = Engine {
                    inner: self.clone(),
                };
                // Not tracked: it must outlive the parent's task, which may end right now.
                tokio::spawn(async move {
                    if let Err(e) = engine
                        .cancel(&child_id, Some("parent cancelled".into()))
                        .await
                    {
                        tracing::warn!(child = %child_id, "cancelling the child failed: {e}");
                    }
                });
                return;
            }
            Command::CallAgent(call) => {
                let addr = self
                    .agents
                    .get(&call.agent)
                    .cloned()
                    .expect("checked at create: every agent has an address");
                let client = self.client.clone();
                let request = AgentRequest {
                    execution_id: execution.id.clone(),
                    step_id: call.step_id.clone(),
                    attempt: call.attempt,
                    idempotency_key: call.idempotency_key.clone(),
                    input: call.input.clone(),
                };
                let at = (call.step, call.lane, call.attempt);
                let relay_tx = tx.clone();
                let calling = async move {
                    let tx = relay_tx;
                    // Progress lines go to the execution before the result, in the order sent.
                    let (progress_tx, mut progress_rx) =
                        mpsc::channel(crate::agent::MAX_PROGRESS_PER_CALL);
                    let relay = |progress| Envelope {
                        input: Input::AgentProgress {
                            step: call.step,
                            lane: call.lane,
                            attempt: call.attempt,
                            progress,
                        },
                        ack: None,
                        hold: None,
                    };
                    let result = {
                        let calling = client.call_observed(
                            &addr,
                            &request,
                            call.timeout_ms,
                            Some(&progress_tx),
                        );
                        let mut calling = std::pin::pin!(calling);
                        loop {
                            tokio::select! {
                                biased;
                                Some(progress) = progress_rx.recv() => {
                                    let _ = tx.send(Box::new(relay(progress))).await;
                                }
                                result = &mut calling => break result,
                            }
                        }
                    };
                    while let Ok(progress) = progress_rx.try_recv() {
                        let _ = tx.send(Box::new(relay(progress))).await;
                    }
                    result
                };
                ((at.0, at.1), self.spawn_outbound(tx, at, calling))
            }
            Command::CallHttp(call) => {
                let (http, at) = (self.http.clone(), (call.step, Lane::Main, call.attempt));
                let handle = self.spawn_outbound(tx, at, async move { http.send(&call).await });
                ((at.0, Lane::Main), handle)
            }
            Command::SendEmail(call) => {
                let (email, at) = (self.email.clone(), (call.step, Lane::Main, call.attempt));
                let handle = self.spawn_outbound(tx, at, async move { email.send(&call).await });
                ((at.0, Lane::Main), handle)
            }
            Command::Wake {
                step,
                lane,
                attempt,
                at_ms,
            } => {
                let clock = self.clock.clone();
                let task = tokio::spawn(async move {
                    clock.sleep_until_ms(at_ms).await;
                    let input = Input::Wake {
                        step,
                        lane,
                        attempt,
                    };
                    post(&tx, input).await;
                });
                ((step, lane), task.abort_handle())
            }
            Command::Abandon { step } => {
                let lanes: Vec<(usize, Lane)> = in_flight
                    .range((step, Lane::Main)..(step + 1, Lane::Main))
                    .map(|(k, _)| *k)
                    .collect();
                for key in lanes {
                    if let Some(handle) = in_flight.remove(&key) {
                        handle.abort();
                    }
                }
                return;
            }
        };
        if let Some(previous) = in_flight.insert(step, handle) {
            previous.abort();
        }
    }
}

/// What a driving task does first.
enum First {
    /// Applies this input.
    Apply(Input),
    /// Performs the commands of a transition already committed (a submit's start, written
    /// with the execution's row).
    Perform(Vec<Command>),
}

/// Marks an execution as being reset for as long as it lives.
struct ResetGuard<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> ResetGuard<'a> {
    fn take(inner: &'a Inner, id: &str) -> Result<ResetGuard<'a>, Error> {
        let mut resetting = inner.resetting.lock().unwrap_or_else(|p| p.into_inner());
        if !resetting.insert(id.to_string()) {
            return Err(Error::AlreadyResetting(id.to_string()));
        }
        Ok(ResetGuard {
            inner,
            id: id.to_string(),
        })
    }
}

impl Drop for ResetGuard<'_> {
    fn drop(&mut self) {
        self.inner
            .resetting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Each time `id` was taken up again, from storage alone (see [`Engine::history`]).
pub async fn history(store: &dyn Storage, id: &str) -> Result<Vec<Resumption>, Error> {
    let mut history: Vec<Resumption> = store
        .events(id)
        .await?
        .into_iter()
        .filter_map(|e| match e.event {
            crate::event::DomainEvent::ExecutionResumed => {
                Some(Resumption::Resumed { at_ms: e.at_ms })
            }
            crate::event::DomainEvent::ExecutionRecovered { action } => {
                Some(Resumption::Recovered {
                    at_ms: e.at_ms,
                    action,
                })
            }
            _ => None,
        })
        .collect();
    for (into, checkpoint_seq, at_ms) in store.forks_of(id).await? {
        history.push(Resumption::Reset {
            at_ms,
            into,
            checkpoint_seq,
        });
    }
    history.sort_by_key(Resumption::at_ms);
    Ok(history)
}
