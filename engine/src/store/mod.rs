//! The Storage port: the execution repository.
//!
//! One [`Storage::commit`] is one atomic transition: the execution row, the step rows that
//! changed, and the domain events the transition caused, all or nothing. Nothing here is
//! SQLite-specific, so another backend (PostgreSQL) can implement the same trait.

mod checkpoint_rows;
mod group;
mod sqlite;
mod wal_buffer;

use async_trait::async_trait;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::core::{Checkpoint, Execution, NewCheckpoint};
use crate::definition::ProcessDef;
use crate::event::EventRecord;
use crate::schedule::{Fire, ScheduleSpec, ScheduleState};

pub use checkpoint_rows::MAX_REMEMBERED_BASES;
pub use group::{CommitStats, Committer, MAX_BATCH_WRITES};
pub use sqlite::{
    SqliteOptions, SqliteStore, Synchronous, SQLITE_DEFAULT_CACHE_KIB,
    SQLITE_DEFAULT_WAL_AUTOCHECKPOINT_PAGES, WAL_AUTOCHECKPOINT_PAGES, WRITER_CACHE_KIB,
};

/// `Clone`: one failed group commit fails every write it held, each with the same error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The disk is full: nothing was written. Passes once space is freed.
    #[error("storage is full, nothing was written: {0}")]
    DiskFull(String),
    /// The device failed a read, write or sync. A failed commit may or may not have landed.
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("an execution with id {0} already exists")]
    Duplicate(String),
    /// The tenant already has an execution created under this idempotency key.
    #[error("idempotency key {key:?} already created execution {id}")]
    DuplicateKey { key: String, id: String },
    #[error("stored execution {id} is unreadable: {problem}")]
    Corrupt { id: String, problem: String },
    #[error("no definition {name} version {version}")]
    NoSuchVersion { name: String, version: u32 },
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// Atomically writes `execution`'s row, the rows of `steps` (indices into its steps; all of
    /// them when the execution is new), appends `events` and stores `checkpoints`.
    async fn commit(
        &self,
        execution: &Execution,
        steps: &[usize],
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
    ) -> Result<(), Error>;

    /// The execution's checkpoints, oldest first.
    async fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>, Error>;

    /// Deletes all but the newest `keep` checkpoints of the execution; returns how many went.
    async fn prune_checkpoints(&self, id: &str, keep: usize) -> Result<usize, Error>;

    /// Executions forked from `id`: `(child id, checkpoint seq, created_at_ms)`, oldest first.
    async fn forks_of(&self, id: &str) -> Result<Vec<(String, u64, u64)>, Error>;

    /// Writes a new execution (its row and all its step rows). An execution with the same id
    /// is an error ([`Error::Duplicate`]), never overwritten.
    async fn create(&self, execution: &Execution) -> Result<(), Error>;

    /// Writes a new execution together with its first transition (`events`, `checkpoints`), in
    /// one transaction: [`Storage::create`] and [`Storage::commit`] at the cost of one.
    async fn create_started(
        &self,
        execution: &Execution,
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
    ) -> Result<(), Error>;

    /// The execution as last committed, or `None` if there is none with that id.
    async fn load(&self, id: &str) -> Result<Option<Execution>, Error>;

    /// Each of `ids` as `load` would answer, read together where the backend can (recovery
    /// loads every active execution); one at a time by default.
    async fn load_many(&self, ids: &[String]) -> Vec<Result<Option<Execution>, Error>> {
        let mut loaded = Vec::with_capacity(ids.len());
        for id in ids {
            loaded.push(self.load(id).await);
        }
        loaded
    }

    /// The execution's events, by `seq`.
    async fn events(&self, id: &str) -> Result<Vec<EventRecord>, Error>;

    /// Ids of executions that are not terminal (pending, running, paused), oldest first.
    async fn list_active(&self) -> Result<Vec<String>, Error>;

    /// Records an operator's request to control an execution. It is durable: an engine running
    /// on this storage applies it on its next poll, or at its next start.
    async fn request_control(&self, request: &ControlRequest) -> Result<(), Error>;

    /// Removes and returns the pending control requests, oldest first (at most `limit`).
    async fn take_control_requests(&self, limit: usize) -> Result<Vec<ControlRequest>, Error>;

    /// Creates or replaces a schedule (its spec, process, input and planner state).
    async fn put_schedule(&self, schedule: &ScheduleRecord) -> Result<(), Error>;

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, Error>;

    /// One planning step of schedule `name`, atomically: its new planner state, the fires it
    /// decided, and the started fires whose runs were seen to end (`closed`, by `at_ms`).
    async fn commit_fires(
        &self,
        name: &str,
        state: &ScheduleState,
        fires: &[FireRecord],
        closed: &[u64],
    ) -> Result<(), Error>;

    /// Terminal executions last changed before `cutoff_ms`, oldest first, at most `limit`;
    /// unless `dry_run`, they are deleted with their steps, events and checkpoints, in one
    /// transaction. Running, paused and pending executions are never touched.
    async fn purge_terminal(
        &self,
        cutoff_ms: u64,
        limit: usize,
        dry_run: bool,
    ) -> Result<Vec<PurgedExecution>, Error>;

    /// Registers `process` under its name: a new version (1 + the latest) that becomes
    /// current, unless its content equals the current version's, which is returned instead
    /// (so a registration retried after a crash does not add a version). The stored
    /// definition's `version` is the one assigned.
    /// Each tenant has its own registry.
    async fn register_definition(
        &self,
        tenant: &str,
        process: &ProcessDef,
        now_ms: u64,
    ) -> Result<u32, Error>;

    /// A registered definition of `tenant`: `version`, or the current one.
    async fn definition(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<ProcessDef>>, Error>;

    /// Every name `tenant` registered, with its current and latest version.
    async fn definitions(&self, tenant: &str) -> Result<Vec<DefinitionInfo>, Error>;

    /// Makes `version` (which must exist) current for new executions: a rollback, or a
    /// roll forward again.
    async fn set_current_definition(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<(), Error>;

    /// One page of `query.tenant`'s executions, newest first (by creation, then id).
    async fn list_executions(&self, query: &ExecutionQuery)
        -> Result<Vec<ExecutionSummary>, Error>;

    /// The schedule's decided fires in time order; with `open_only`, only the started ones
    /// whose runs have not been seen to end.
    async fn fires(&self, name: &str, open_only: bool) -> Result<Vec<FireRecord>, Error>;
}

/// Which executions to list: always one tenant's; the other filters are optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionQuery {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A definition name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// Created at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from_ms: Option<u64>,
    /// Created before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_to_ms: Option<u64>,
    /// Pagination: the page after this `(created_at_ms, id)`, the last one of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<(u64, String)>,
    /// At most this many (capped at [`MAX_LIST_PAGE`]).
    pub limit: usize,
}

/// Largest page [`Storage::list_executions`] returns.
pub const MAX_LIST_PAGE: usize = 500;

/// One listed execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionSummary {
    pub id: String,
    pub definition: String,
    pub version: u32,
    pub status: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// An execution a retention purge matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgedExecution {
    pub id: String,
    pub status: String,
    pub updated_at_ms: u64,
}

/// A registered definition name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionInfo {
    pub name: String,
    pub current: u32,
    pub latest: u32,
}

/// A registered schedule: when to start `process` with `input`, and the planner's state.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRecord {
    pub name: String,
    /// Its runs belong to this tenant (and its process is that tenant's).
    pub tenant: String,
    pub spec: ScheduleSpec,
    pub process: Arc<ProcessDef>,
    pub input: serde_json::Value,
    pub state: ScheduleState,
}

/// What the scheduler decided about one fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRecord {
    pub fire: Fire,
    pub outcome: FireOutcome,
    /// The run's execution id, for a started fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// When it was decided (Clock time).
    pub decided_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    Started,
    /// Kept to start when the run in progress ends (`overlap: buffer_one`); it is recorded
    /// again as started when it does.
    Buffered,
    /// Skipped: missed while the engine was down (or the clock jumped).
    Missed,
    /// Skipped: a run was still in progress.
    Overlap,
}

impl FireOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Started => "started",
            FireOutcome::Buffered => "buffered",
            FireOutcome::Missed => "missed",
            FireOutcome::Overlap => "overlap",
        }
    }
}

/// What an operator can ask of an execution from outside the engine process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Pause,
    Resume,
    Cancel,
    /// Deliver [`ControlRequest::signal`].
    Signal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub execution_id: String,
    pub action: ControlAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requested_at_ms: u64,
    /// The signal, for [`ControlAction::Signal`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalRequest>,
}

/// A signal to deliver to an execution. `id` is the sender's: the same id twice is one signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    pub id: String,
    pub name: String,
    pub payload: serde_json::Value,
}
