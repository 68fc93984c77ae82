//! SQLite implementation of [`Storage`]: WAL journal, `synchronous=FULL` (a commit that
//! returned survives power loss), one transaction per transition.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::checkpoint_rows::{self, Bases};
use super::group::{CommitStats, Committer, Group};
use super::wal_buffer;
use super::{
    ControlAction, ControlRequest, DefinitionInfo, Error, ExecutionQuery, ExecutionSummary,
    FireRecord, PurgedExecution, ScheduleRecord, Storage, MAX_LIST_PAGE,
};
use crate::core::{
    Checkpoint, CompensationRun, Execution, ForkOrigin, NewCheckpoint, ReceivedSignal, StepState,
};
use crate::definition::ProcessDef;
use crate::event::{DomainEvent, EventRecord};
use crate::schedule::ScheduleState;

/// 2: `executions.detail` and `steps.detail` (compensation, loops, signals, completion order),
/// `control_requests.signal`, `executions.tenant`, tables `definitions`, `current_definitions`, `schedules` and
/// `schedule_fires` (created by `SCHEMA`).
/// 3: `executions.idempotency_key`, unique per tenant.
/// 4: an execution's definition and input, which never change, move to `execution_inputs`, so
/// the row every transition rewrites stays small (a 10-step definition is 2 KB of JSON).
const SCHEMA_VERSION: i64 = 4;

/// From each older version to the next; applied in order inside one transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "ALTER TABLE executions ADD COLUMN detail TEXT; ALTER TABLE steps ADD COLUMN detail TEXT;
     ALTER TABLE control_requests ADD COLUMN signal TEXT;
     ALTER TABLE executions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';",
    ),
    (2, "ALTER TABLE executions ADD COLUMN idempotency_key TEXT;"),
    (
        3,
        "CREATE TABLE execution_inputs (
         execution_id TEXT PRIMARY KEY REFERENCES executions (id),
         definition   TEXT NOT NULL,
         input        TEXT NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO execution_inputs (execution_id, definition, input)
         SELECT id, definition, input FROM executions;
     ALTER TABLE executions DROP COLUMN definition;
     ALTER TABLE executions DROP COLUMN input;",
    ),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS executions (
    id              TEXT PRIMARY KEY,
    process_name    TEXT NOT NULL,
    process_version INTEGER NOT NULL,
    status          TEXT NOT NULL,
    output          TEXT,
    error           TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    next_seq        INTEGER NOT NULL,
    breakpoint      TEXT,
    origin_id       TEXT,
    origin_seq      INTEGER,
    detail          TEXT,
    tenant          TEXT NOT NULL DEFAULT 'default',
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_tenant ON executions (tenant, created_at_ms, id);
CREATE UNIQUE INDEX IF NOT EXISTS executions_by_key ON executions (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_by_origin ON executions (origin_id);
CREATE TABLE IF NOT EXISTS execution_inputs (
    execution_id TEXT PRIMARY KEY REFERENCES executions (id),
    definition   TEXT NOT NULL,
    input        TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    execution_id TEXT NOT NULL REFERENCES executions (id),
    seq          INTEGER NOT NULL,
    step_id      TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,
    completed    TEXT NOT NULL,
    steps        TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status, created_at_ms);
CREATE TABLE IF NOT EXISTS steps (
    execution_id   TEXT NOT NULL REFERENCES executions (id),
    position       INTEGER NOT NULL,
    step_id        TEXT NOT NULL,
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    retry_count    INTEGER NOT NULL,
    input          TEXT,
    output         TEXT,
    last_error     TEXT,
    skip_reason    TEXT,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER,
    wake_at_ms     INTEGER,
    detail         TEXT,
    PRIMARY KEY (execution_id, step_id)
);
CREATE TABLE IF NOT EXISTS events (
    execution_id TEXT NOT NULL REFERENCES executions (id),
    seq          INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    step_id      TEXT,
    payload      TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS control_requests (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id    TEXT NOT NULL,
    action          TEXT NOT NULL,
    reason          TEXT,
    requested_at_ms INTEGER NOT NULL,
    signal          TEXT
);
CREATE TABLE IF NOT EXISTS definitions (
    tenant        TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    definition    TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS current_definitions (
    tenant  TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedules (
    name       TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    spec       TEXT NOT NULL,
    definition TEXT NOT NULL,
    input      TEXT NOT NULL,
    state      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_fires (
    schedule       TEXT NOT NULL,
    at_ms          INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    fire           TEXT NOT NULL,
    execution_id   TEXT,
    decided_at_ms  INTEGER NOT NULL,
    open           INTEGER NOT NULL,
    PRIMARY KEY (schedule, at_ms, outcome)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS schedule_fires_open ON schedule_fires (schedule, open);
";

/// The embedded store. Cheap to clone; clones share its connections.
///
/// Transitions go through group commit ([`group`](super::group)): the rows are serialized by
/// the caller, then written with the transitions other executions queued meanwhile, in one
/// transaction on the one writing connection. Reads use a connection of their own where the
/// file allows a second one (WAL: readers never wait for a commit's sync); other writes take
/// the writing connection directly.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    /// `None` where a second connection cannot see the first's data (in memory) or cannot
    /// open at all (exclusive locking): reads then use `writer`.
    reader: Option<Arc<Mutex<Connection>>>,
    group: Arc<Group<Prepared>>,
    /// Parsed definitions by their stored JSON text: every execution row carries its process
    /// definition, and most rows share a few. Bounded by [`MAX_CACHED_DEFINITIONS`].
    definitions: Arc<Mutex<BTreeMap<String, Arc<ProcessDef>>>>,
    /// Each execution's last committed checkpoint, which its next one is stored as a diff
    /// against (`checkpoint_rows`).
    bases: Bases,
}

/// Brings an older (or new, empty) database to [`SCHEMA_VERSION`]. IMMEDIATE takes the write
/// lock first (waiting out other writers) and the version is read again under it, so of two
/// processes opening an old file only the first upgrades it and the second finds it done.
fn upgrade(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(backend)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if version < SCHEMA_VERSION {
        let mut sql = String::new();
        for (from, migration) in MIGRATIONS {
            if version > 0 && version <= *from {
                sql.push_str(migration);
            }
        }
        sql.push_str(SCHEMA);
        sql.push_str(&format!("PRAGMA user_version = {SCHEMA_VERSION};"));
        tx.execute_batch(&sql).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

/// Distinct definitions kept parsed; past this the cache starts over.
pub const MAX_CACHED_DEFINITIONS: usize = 64;

/// A u64 time as SQLite's i64, clamped: `u64::MAX` must stay "later than anything", not wrap
/// around to -1.
fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A backend failure, classified where the caller can act on the class: a full disk and an
/// I/O error pass (once space is freed, once the device answers again), unlike a bug.
fn backend<E: std::fmt::Display + 'static>(e: E) -> Error {
    let any: &dyn std::any::Any = &e;
    if let Some(rusqlite::Error::SqliteFailure(failure, _)) = any.downcast_ref::<rusqlite::Error>()
    {
        match failure.code {
            rusqlite::ErrorCode::DiskFull => return Error::DiskFull(e.to_string()),
            rusqlite::ErrorCode::SystemIoFailure => return Error::Io(e.to_string()),
            _ => {}
        }
    }
    Error::Backend(e.to_string())
}

/// How durable a commit is when it returns (SQLite's `synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// The production setting: the WAL is synced at every commit, so a commit that returned
    /// survives power loss.
    #[default]
    Full,
    /// WAL synced only at checkpoints: a power cut may lose the latest commits.
    Normal,
    /// Never synced: a power cut may lose anything. Only for showing what that costs.
    Off,
}

impl Synchronous {
    /// The value of SQLite's `synchronous` pragma.
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

/// How [`SqliteStore::open_with`] opens its file. The defaults are the production settings.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// A registered SQLite VFS to do the file I/O (the simulator's disk); the OS's if `None`.
    pub vfs: Option<String>,
    pub synchronous: Synchronous,
    /// Hold the database's lock for the connection's life (`locking_mode=EXCLUSIVE`, set before
    /// WAL is entered, so SQLite keeps the WAL index in the heap and needs no shared memory).
    /// Other processes cannot open the file meanwhile; a VFS without shared memory needs it.
    /// Reads then share the writing connection.
    pub exclusive: bool,
    /// Where group commits run: a task whose worker hands its other tasks over while it writes
    /// (the default), tokio's blocking pool, or a plain task on the caller's runtime (the
    /// simulator, whose runs must not depend on OS threads).
    pub committer: Committer,
    /// The writing connection's page cache, in KiB. SQLite's default (2,000 KiB) is smaller
    /// than the pages a thousand executions in flight keep touching: every miss is a read from
    /// the file, and a transaction whose dirty pages outgrow the cache spills them to the WAL
    /// before its commit. The cache fills only as pages are used.
    pub cache_kib: u32,
    /// The WAL's length, in pages, past which a commit copies it back into the database
    /// (`wal_autocheckpoint`). A page changed many times between two checkpoints is copied
    /// once, and the hot pages of executions in flight change at every step; SQLite's 1,000
    /// pages copied most of them again at every checkpoint. The costs: the WAL file grows to
    /// about this many pages (4 KiB each) and keeps that size once reused, and the commit that
    /// passes the mark copies them back before its writers are answered (rarer, longer
    /// pauses in the committer).
    pub wal_autocheckpoint_pages: u32,
}

/// [`SqliteOptions::cache_kib`] in production: with 1,000 executions in flight the bench's
/// reads from the file fell from 4.6 a step to 0.6 at 16 MiB and no further at 64 MiB.
pub const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// [`SqliteOptions::wal_autocheckpoint_pages`] in production.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// SQLite's own defaults for the two above (`cache_size = -2000`, `wal_autocheckpoint =
/// 1000`), for stores that should behave as SQLite does out of the box: the simulator, whose
/// small databases must still reach checkpoints so that faults can strike during them.
pub const SQLITE_DEFAULT_CACHE_KIB: u32 = 2_000;
pub const SQLITE_DEFAULT_WAL_AUTOCHECKPOINT_PAGES: u32 = 1_000;

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            vfs: None,
            synchronous: Synchronous::Full,
            exclusive: false,
            committer: Committer::Worker,
            cache_kib: WRITER_CACHE_KIB,
            wal_autocheckpoint_pages: WAL_AUTOCHECKPOINT_PAGES,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, with the production settings.
    pub fn open(path: &Path) -> Result<SqliteStore, Error> {
        SqliteStore::open_with(path, &SqliteOptions::default())
    }

    /// Opens (creating if needed) the database file at `path` as `options` say.
    pub fn open_with(path: &Path, options: &SqliteOptions) -> Result<SqliteStore, Error> {
        let mut synchronous = options.synchronous;
        if crate::planted::planted(crate::planted::Bug::FsyncSkipped) {
            // Planted bug (test-only, see `planted`): commits are never synced.
            synchronous = Synchronous::Off;
        }
        // At FULL every commit syncs the WAL before publishing it, which is what lets the WAL's
        // writes wait in a buffer until then (see `wal_buffer`).
        let vfs = match synchronous {
            Synchronous::Full => {
                Some(wal_buffer::register(options.vfs.as_deref()).map_err(Error::Backend)?)
            }
            Synchronous::Normal | Synchronous::Off => options.vfs.clone(),
        };
        let connect = || {
            match &vfs {
                None => Connection::open(path),
                Some(vfs) => Connection::open_with_flags_and_vfs(
                    path,
                    rusqlite::OpenFlags::default(),
                    vfs.as_str(),
                ),
            }
            .map_err(backend)
        };
        let conn = connect()?;
        if options.exclusive {
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
                .map_err(backend)?;
        }
        // Sorts and statement journals stay in memory: nothing temporary touches the disk.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        // A negative cache_size is in KiB, a positive one in pages.
        conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))
            .map_err(backend)?;
        conn.pragma_update(None, "wal_autocheckpoint", options.wal_autocheckpoint_pages)
            .map_err(backend)?;
        let mut store = SqliteStore::init(conn, synchronous, options.committer)?;
        if !options.exclusive {
            let reader = connect()?;
            configure(&reader)?;
            reader
                .pragma_update(None, "query_only", "ON")
                .map_err(backend)?;
            store.reader = Some(Arc::new(Mutex::new(reader)));
        }
        Ok(store)
    }

    /// A private in-memory database, for tests. Its commits run in the caller's task.
    pub fn open_in_memory() -> Result<SqliteStore, Error> {
        SqliteStore::init(
            Connection::open_in_memory().map_err(backend)?,
            Synchronous::Full,
            Committer::Task,
        )
    }

    fn init(
        conn: Connection,
        synchronous: Synchronous,
        committer: Committer,
    ) -> Result<SqliteStore, Error> {
        configure(&conn)?;
        conn.pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if version > SCHEMA_VERSION {
            return Err(Error::Backend(format!(
                "database schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
            )));
        }
        let mut conn = conn;
        if version < SCHEMA_VERSION {
            upgrade(&mut conn)?;
        }
        let writer = Arc::new(Mutex::new(conn));
        let batch_writer = writer.clone();
        let bases = Bases::default();
        let committed_bases = bases.clone();
        let group = Group::new(
            committer,
            Box::new(move |writes: &[Prepared]| {
                let results = write_batch(&mut lock(&batch_writer), writes);
                for (write, result) in writes.iter().zip(&results) {
                    if let (Ok(()), Some(last)) = (result, write.checkpoints.last()) {
                        committed_bases.committed(&write.id, last.seq as u64, last.steps.clone());
                    }
                }
                results
            }),
        );
        Ok(SqliteStore {
            writer,
            reader: None,
            group,
            definitions: Arc::new(Mutex::new(BTreeMap::new())),
            bases,
        })
    }

    fn parse_definition(&self, text: String) -> Result<Arc<ProcessDef>, serde_json::Error> {
        let mut cache = self.definitions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(process) = cache.get(&text) {
            return Ok(process.clone());
        }
        let process = Arc::new(serde_json::from_str::<ProcessDef>(&text)?);
        if cache.len() >= MAX_CACHED_DEFINITIONS {
            cache.clear();
        }
        cache.insert(text, process.clone());
        Ok(process)
    }

    /// Queues a transition's rows for the next group commit and waits until it committed.
    async fn write(
        &self,
        execution: &Execution,
        steps: &[usize],
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
        must_be_new: bool,
    ) -> Result<(), Error> {
        let prepared = Prepared::of(
            execution,
            steps,
            events,
            checkpoints,
            must_be_new,
            &self.bases,
        );
        self.group.write(prepared).await
    }

    /// Transitions written so far, and the transactions that held them.
    pub fn commit_stats(&self) -> CommitStats {
        self.group.stats()
    }

    /// The connection for writes other than transitions.
    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    /// The connection for reads.
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(self.reader.as_ref().unwrap_or(&self.writer))
    }
}

/// What every connection of the store sets: a wait for another process's lock, and plans that
/// do not depend on bound values (SQLite's query planner stability guarantee: without it, a
/// statement with a bound `LIMIT` is prepared again each time it is bound, so the statement
/// cache does not help the listing the API serves on every poll).
fn configure(conn: &Connection) -> Result<(), Error> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)
}

fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave a half-done transaction behind (SQLite
    // rolls back an unfinished one), so a poisoned lock is still usable.
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// One transition's rows, serialized by its caller so that the committer only binds them.
struct Prepared {
    id: String,
    tenant: String,
    idempotency_key: Option<String>,
    /// An existing row with this id is an error, never overwritten.
    must_be_new: bool,
    status: &'static str,
    output: Option<String>,
    error: Option<String>,
    updated_at_ms: i64,
    next_seq: i64,
    breakpoint: Option<String>,
    detail: Option<String>,
    /// What only a new row needs; kept unserialized, as most writes update a row that exists.
    new_row: NewRow,
    steps: Vec<StepRow>,
    events: Vec<EventRow>,
    checkpoints: Vec<checkpoint_rows::Row>,
}

struct NewRow {
    process: Arc<ProcessDef>,
    input: Value,
    created_at_ms: i64,
    origin: Option<ForkOrigin>,
}

struct StepRow {
    position: i64,
    step_id: String,
    kind: &'static str,
    status: &'static str,
    attempt: u32,
    retry_count: u32,
    input: Option<String>,
    output: Option<String>,
    last_error: Option<String>,
    skip_reason: Option<&'static str>,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    wake_at_ms: Option<i64>,
    detail: Option<String>,
}

struct EventRow {
    seq: i64,
    at_ms: i64,
    kind: &'static str,
    step_id: Option<String>,
    payload: String,
}

impl Prepared {
    fn of(
        execution: &Execution,
        steps: &[usize],
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
        must_be_new: bool,
        bases: &Bases,
    ) -> Prepared {
        debug_assert!(
            events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "event seqs are contiguous"
        );
        debug_assert!(events
            .last()
            .is_none_or(|e| e.seq + 1 == execution.next_seq));
        debug_assert!(events.iter().all(|e| e.execution_id == execution.id));
        debug_assert!(checkpoints
            .iter()
            .all(|c| c.steps.len() == execution.steps.len() && c.seq < execution.next_seq));
        Prepared {
            id: execution.id.clone(),
            tenant: execution.tenant.clone(),
            idempotency_key: execution.idempotency_key.clone(),
            must_be_new,
            status: execution.status.as_str(),
            output: opt_json(&execution.output),
            error: execution.error.clone(),
            updated_at_ms: execution.updated_at_ms as i64,
            next_seq: execution.next_seq as i64,
            breakpoint: execution.breakpoint.clone(),
            detail: ExecutionDetail::of(execution).to_column(),
            new_row: NewRow {
                process: execution.process.clone(),
                input: execution.input.clone(),
                created_at_ms: execution.created_at_ms as i64,
                origin: execution.origin.clone(),
            },
            steps: steps
                .iter()
                .map(|&i| {
                    let def = &execution.process.steps[i];
                    let st = &execution.steps[i];
                    StepRow {
                        position: i as i64,
                        step_id: def.id.clone(),
                        kind: def.kind.name(),
                        status: st.status.as_str(),
                        attempt: st.attempt,
                        retry_count: st.retry_count(),
                        input: opt_json(&st.input),
                        output: opt_json(&st.output),
                        last_error: opt_json(&st.last_error),
                        skip_reason: st.skip_reason.map(|r| r.as_str()),
                        started_at_ms: st.started_at_ms.map(|v| v as i64),
                        finished_at_ms: st.finished_at_ms.map(|v| v as i64),
                        wake_at_ms: st.wake_at_ms.map(|v| v as i64),
                        detail: (!st.detail.is_empty()).then(|| to_json(&st.detail)),
                    }
                })
                .collect(),
            events: events
                .iter()
                .map(|e| EventRow {
                    seq: e.seq as i64,
                    at_ms: e.at_ms as i64,
                    kind: e.event.kind(),
                    step_id: e.event.step().map(str::to_string),
                    payload: to_json(&e.event),
                })
                .collect(),
            checkpoints: checkpoint_rows::Row::of(&execution.id, checkpoints, bases),
        }
    }
}

/// Writes `writes` in one transaction. A write refused as a duplicate is refused alone (its
/// checks come before any of its rows); any other failure fails them all, as the transaction
/// is rolled back.
fn write_batch(conn: &mut Connection, writes: &[Prepared]) -> Vec<Result<(), Error>> {
    let mut results = Vec::with_capacity(writes.len());
    let outcome = (|| {
        let tx = conn.transaction().map_err(backend)?;
        for write in writes {
            match check_new(&tx, write)? {
                Ok(()) => {
                    write_rows(&tx, write)?;
                    results.push(Ok(()));
                }
                Err(refused) => results.push(Err(refused)),
            }
        }
        tx.commit().map_err(backend)
    })();
    match outcome {
        Ok(()) => results,
        Err(e) => writes.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// For a write that must be new: the inner error refuses it, if its id, or its idempotency
/// key in its tenant, is taken. The outer one is a failure to check, which fails the batch.
fn check_new(tx: &rusqlite::Transaction<'_>, write: &Prepared) -> Result<Result<(), Error>, Error> {
    if !write.must_be_new {
        return Ok(Ok(()));
    }
    let exists: i64 = tx
        .prepare_cached("SELECT count(*) FROM executions WHERE id = ?1")
        .and_then(|mut s| s.query_row([&write.id], |r| r.get(0)))
        .map_err(backend)?;
    if exists > 0 {
        return Ok(Err(Error::Duplicate(write.id.clone())));
    }
    if let Some(key) = &write.idempotency_key {
        let holder: Option<String> = tx
            .prepare_cached("SELECT id FROM executions WHERE tenant = ?1 AND idempotency_key = ?2")
            .and_then(|mut s| s.query_row([&write.tenant, key], |r| r.get(0)).optional())
            .map_err(backend)?;
        if let Some(id) = holder {
            return Ok(Err(Error::DuplicateKey {
                key: key.clone(),
                id,
            }));
        }
    }
    Ok(Ok(()))
}

/// The execution row, the step rows, the events and the checkpoints of one write.
fn write_rows(tx: &rusqlite::Transaction<'_>, w: &Prepared) -> Result<(), Error> {
    let updated = if w.must_be_new {
        0
    } else {
        let updated = tx
            .prepare_cached(
                "UPDATE executions SET output = ?2, error = ?3, updated_at_ms = ?4,
                     next_seq = ?5, breakpoint = ?6, detail = ?7
                 WHERE id = ?1",
            )
            .and_then(|mut update| {
                update.execute(params![
                    w.id,
                    w.output,
                    w.error,
                    w.updated_at_ms,
                    w.next_seq,
                    w.breakpoint,
                    w.detail,
                ])
            })
            .map_err(backend)?;
        // Apart: SQLite rewrites the entries of every index on a column an UPDATE sets, changed
        // or not, and most transitions leave the status (indexed) as it was.
        tx.prepare_cached("UPDATE executions SET status = ?2 WHERE id = ?1 AND status <> ?2")
            .and_then(|mut update| update.execute(params![w.id, w.status]))
            .map_err(backend)?;
        updated
    };
    if updated == 0 {
        let new = &w.new_row;
        tx.prepare_cached(
            "INSERT INTO executions (id, process_name, process_version,
                 status, output, error, created_at_ms, updated_at_ms, next_seq, breakpoint,
                 origin_id, origin_seq, detail, tenant, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                w.id,
                new.process.name,
                new.process.version,
                w.status,
                w.output,
                w.error,
                new.created_at_ms,
                w.updated_at_ms,
                w.next_seq,
                w.breakpoint,
                new.origin.as_ref().map(|o| o.execution_id.clone()),
                new.origin.as_ref().map(|o| o.checkpoint_seq as i64),
                w.detail,
                w.tenant,
                w.idempotency_key,
            ])
        })
        .map_err(backend)?;
        tx.prepare_cached(
            "INSERT INTO execution_inputs (execution_id, definition, input) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut insert| {
            insert.execute(params![w.id, to_json(&*new.process), to_json(&new.input)])
        })
        .map_err(backend)?;
    }
    // A step's row is written whole when its execution's row is, and updated after: an
    // UPDATE finds the row by its key, where an upsert first tries the insert, fails on the
    // key, and then finds the row to update. Both take the same parameters (the UPDATE leaves
    // the position and the kind, ?2 and ?4, as they are).
    let mut update = tx
        .prepare_cached(
            "UPDATE steps SET status = ?5, attempt = ?6, retry_count = ?7, input = ?8,
                 output = ?9, last_error = ?10, skip_reason = ?11, started_at_ms = ?12,
                 finished_at_ms = ?13, wake_at_ms = ?14, detail = ?15
             WHERE execution_id = ?1 AND step_id = ?3",
        )
        .map_err(backend)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO steps (execution_id, position, step_id, kind, status, attempt,
                 retry_count, input, output, last_error, skip_reason, started_at_ms,
                 finished_at_ms, wake_at_ms, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )
        .map_err(backend)?;
    for st in &w.steps {
        let row = params![
            w.id,
            st.position,
            st.step_id,
            st.kind,
            st.status,
            st.attempt,
            st.retry_count,
            st.input,
            st.output,
            st.last_error,
            st.skip_reason,
            st.started_at_ms,
            st.finished_at_ms,
            st.wake_at_ms,
            st.detail,
        ];
        let step_updated = if updated == 0 {
            0
        } else {
            update.execute(row).map_err(backend)?
        };
        if step_updated == 0 {
            insert.execute(row).map_err(backend)?;
        }
    }
    let mut append = tx
        .prepare_cached(
            "INSERT INTO events (execution_id, seq, at_ms, kind, step_id, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for e in &w.events {
        append
            .execute(params![w.id, e.seq, e.at_ms, e.kind, e.step_id, e.payload])
            .map_err(backend)?;
    }
    let mut checkpoint = tx
        .prepare_cached(
            "INSERT INTO checkpoints (execution_id, seq, step_id, at_ms, completed, steps)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for c in &w.checkpoints {
        let base_stored = match c.diff_base() {
            Some(base) => tx
                .prepare_cached("SELECT 1 FROM checkpoints WHERE execution_id = ?1 AND seq = ?2")
                .and_then(|mut s| s.exists(params![w.id, base as i64]))
                .map_err(backend)?,
            None => false,
        };
        // `completed` is left empty: reads derive it from the step states.
        checkpoint
            .execute(params![
                w.id,
                c.seq,
                c.step_id,
                c.at_ms,
                "",
                c.column(base_stored)
            ])
            .map_err(backend)?;
    }
    Ok(())
}

/// The execution row's `detail` column: execution state that most executions never use.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ExecutionDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compensation: Option<CompensationRun>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signals: Vec<ReceivedSignal>,
}

impl ExecutionDetail {
    fn of(execution: &Execution) -> ExecutionDetail {
        ExecutionDetail {
            compensation: execution.compensation.clone(),
            signals: execution.signals.clone(),
        }
    }

    fn to_column(&self) -> Option<String> {
        (self.compensation.is_some() || !self.signals.is_empty()).then(|| to_json(self))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("engine values serialize to JSON")
}

fn opt_json<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(to_json)
}

impl SqliteStore {
    /// The execution as last committed on `conn` (`Storage::load`, `Storage::load_many`).
    fn load_on(&self, conn: &Connection, id: &str) -> Result<Option<Execution>, Error> {
        let corrupt = |problem: String| Error::Corrupt {
            id: id.to_string(),
            problem,
        };
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            i64,
            i64,
            i64,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            String,
            Option<String>,
        );
        let row: Option<Row> = conn
            .prepare_cached(
                "SELECT i.definition, i.input, e.status, e.output, e.error, e.created_at_ms,
                        e.updated_at_ms, e.next_seq, e.breakpoint, e.origin_id, e.origin_seq,
                        e.detail, e.tenant, e.idempotency_key
                 FROM executions e JOIN execution_inputs i ON i.execution_id = e.id
                 WHERE e.id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                        r.get(12)?,
                        r.get(13)?,
                    ))
                })
                .optional()
            })
            .map_err(backend)?;
        let Some((
            definition,
            input,
            status,
            output,
            error,
            created,
            updated,
            next_seq,
            breakpoint,
            origin_id,
            origin_seq,
            detail,
            tenant,
            idempotency_key,
        )) = row
        else {
            return Ok(None);
        };
        let process = self
            .parse_definition(definition)
            .map_err(|e| corrupt(format!("definition: {e}")))?;
        let mut execution = Execution::new(
            id.to_string(),
            process,
            serde_json::from_str(&input).map_err(|e| corrupt(format!("input: {e}")))?,
            created as u64,
        );
        execution.status = status.parse().map_err(corrupt)?;
        execution.output = output
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|e| corrupt(format!("output: {e}")))?;
        execution.error = error;
        execution.updated_at_ms = updated as u64;
        execution.next_seq = next_seq as u64;
        execution.breakpoint = breakpoint;
        execution.origin = origin_id.zip(origin_seq).map(|(id, seq)| ForkOrigin {
            execution_id: id,
            checkpoint_seq: seq as u64,
        });
        let detail: ExecutionDetail = detail
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| corrupt(format!("detail: {e}")))?
            .unwrap_or_default();
        execution.compensation = detail.compensation;
        execution.tenant = tenant;
        execution.idempotency_key = idempotency_key;
        execution.signals = detail.signals;

        let mut stmt = conn
            .prepare_cached(
                "SELECT position, step_id, status, attempt, output, last_error, skip_reason,
                        started_at_ms, finished_at_ms, wake_at_ms, input, detail
                 FROM steps WHERE execution_id = ?1 ORDER BY position",
            )
            .map_err(backend)?;
        let mut rows = stmt.query([id]).map_err(backend)?;
        while let Some(r) = rows.next().map_err(backend)? {
            let position: i64 = r.get(0).map_err(backend)?;
            let step_id: String = r.get(1).map_err(backend)?;
            let i = usize::try_from(position)
                .ok()
                .filter(|&i| {
                    execution
                        .process
                        .steps
                        .get(i)
                        .is_some_and(|s| s.id == step_id)
                })
                .ok_or_else(|| corrupt(format!("step row {step_id} at position {position}")))?;
            let json_col =
                |n: usize| -> Result<Option<String>, Error> { r.get(n).map_err(backend) };
            let status: String = r.get(2).map_err(backend)?;
            let skip_reason: Option<String> = r.get(6).map_err(backend)?;
            execution.steps[i] = StepState {
                status: status.parse().map_err(corrupt)?,
                attempt: r.get(3).map_err(backend)?,
                input: json_col(10)?
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|e| corrupt(format!("step {step_id} input: {e}")))?,
                output: json_col(4)?
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|e| corrupt(format!("step {step_id} output: {e}")))?,
                last_error: json_col(5)?
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|e| corrupt(format!("step {step_id} error: {e}")))?,
                skip_reason: skip_reason
                    .map(|s| s.parse())
                    .transpose()
                    .map_err(corrupt)?,
                started_at_ms: r
                    .get::<_, Option<i64>>(7)
                    .map_err(backend)?
                    .map(|v| v as u64),
                finished_at_ms: r
                    .get::<_, Option<i64>>(8)
                    .map_err(backend)?
                    .map(|v| v as u64),
                wake_at_ms: r
                    .get::<_, Option<i64>>(9)
                    .map_err(backend)?
                    .map(|v| v as u64),
                detail: json_col(11)?
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|e| corrupt(format!("step {step_id} detail: {e}")))?
                    .unwrap_or_default(),
            };
        }
        Ok(Some(execution))
    }
}

#[async_trait]
impl Storage for SqliteStore {
    async fn commit(
        &self,
        execution: &Execution,
        steps: &[usize],
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
    ) -> Result<(), Error> {
        self.write(execution, steps, events, checkpoints, false)
            .await
    }

    async fn create(&self, execution: &Execution) -> Result<(), Error> {
        let all: Vec<usize> = (0..execution.steps.len()).collect();
        self.write(execution, &all, &[], &[], true).await
    }

    async fn create_started(
        &self,
        execution: &Execution,
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
    ) -> Result<(), Error> {
        let all: Vec<usize> = (0..execution.steps.len()).collect();
        self.write(execution, &all, events, checkpoints, true).await
    }

    async fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>, Error> {
        let conn = self.reader();
        let Some((tenant, definition)) = conn
            .prepare_cached(
                "SELECT e.tenant, i.definition
                 FROM executions e JOIN execution_inputs i ON i.execution_id = e.id
                 WHERE e.id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
            })
            .map_err(backend)?
        else {
            return Ok(Vec::new());
        };
        let corrupt = |seq: i64, problem: String| Error::Corrupt {
            id: id.to_string(),
            problem: format!("checkpoint {seq}: {problem}"),
        };
        let process = self
            .parse_definition(definition)
            .map_err(|e| corrupt(0, format!("definition: {e}")))?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, step_id, at_ms, completed, steps FROM checkpoints
                 WHERE execution_id = ?1 ORDER BY seq",
            )
            .map_err(backend)?;
        let rows: Vec<(i64, String, i64, String, String)> = stmt
            .query_map([id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        let folded = checkpoint_rows::fold(
            id,
            rows.iter()
                .map(|(seq, .., steps)| (*seq as u64, steps.as_str())),
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for ((seq, step_id, at_ms, completed, _), folded) in rows.into_iter().zip(folded) {
            let steps: Vec<StepState> = folded
                .steps
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(|e| corrupt(seq, e.to_string()))?;
            // Rows written before checkpoints were stored as diffs carry their own map.
            let completed = if completed.is_empty() {
                Checkpoint::completed_of(&process, &steps)
            } else {
                serde_json::from_str(&completed).map_err(|e| corrupt(seq, e.to_string()))?
            };
            out.push(Checkpoint {
                execution_id: id.to_string(),
                seq: seq as u64,
                step_id,
                at_ms: at_ms as u64,
                completed,
                steps,
                tenant: tenant.clone(),
            });
        }
        Ok(out)
    }

    async fn prune_checkpoints(&self, id: &str, keep: usize) -> Result<usize, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(backend)?;
        let rows: Vec<(i64, String)> = tx
            .prepare_cached(
                "SELECT seq, steps FROM checkpoints WHERE execution_id = ?1 ORDER BY seq",
            )
            .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(backend)?;
        let first_kept = rows.len().saturating_sub(keep);
        if first_kept == 0 {
            return Ok(0);
        }
        let oldest_kept = rows.get(first_kept).map_or(i64::MAX, |(seq, _)| *seq);
        let folded =
            checkpoint_rows::fold(id, rows.iter().map(|(seq, s)| (*seq as u64, s.as_str())))?;
        // A kept row stored against a base about to go is stored whole instead.
        for kept in &folded[first_kept..] {
            if kept.base.is_some_and(|base| (base as i64) < oldest_kept) {
                tx.prepare_cached(
                    "UPDATE checkpoints SET steps = ?3 WHERE execution_id = ?1 AND seq = ?2",
                )
                .and_then(|mut s| s.execute(params![id, kept.seq as i64, to_json(&kept.steps)]))
                .map_err(backend)?;
            }
        }
        let deleted = tx
            .execute(
                "DELETE FROM checkpoints WHERE execution_id = ?1 AND seq < ?2",
                params![id, oldest_kept],
            )
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(deleted)
    }

    async fn forks_of(&self, id: &str) -> Result<Vec<(String, u64, u64)>, Error> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, origin_seq, created_at_ms FROM executions WHERE origin_id = ?1
                 ORDER BY created_at_ms, id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    async fn load(&self, id: &str) -> Result<Option<Execution>, Error> {
        self.load_on(&self.reader(), id)
    }

    async fn load_many(&self, ids: &[String]) -> Vec<Result<Option<Execution>, Error>> {
        let conn = self.reader();
        // One read transaction for the lot: each load alone takes and drops the file's shared
        // lock, which cost recovery more than the reads themselves.
        let tx = match conn.unchecked_transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = backend(e);
                return ids.iter().map(|_| Err(e.clone())).collect();
            }
        };
        ids.iter().map(|id| self.load_on(&tx, id)).collect()
    }

    async fn events(&self, id: &str) -> Result<Vec<EventRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at_ms, payload FROM events WHERE execution_id = ?1 ORDER BY seq",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at_ms, payload) = row.map_err(backend)?;
            let event: DomainEvent =
                serde_json::from_str(&payload).map_err(|e| Error::Corrupt {
                    id: id.to_string(),
                    problem: format!("event {seq}: {e}"),
                })?;
            out.push(EventRecord {
                execution_id: id.to_string(),
                seq: seq as u64,
                at_ms: at_ms as u64,
                event,
            });
        }
        Ok(out)
    }

    async fn request_control(&self, request: &ControlRequest) -> Result<(), Error> {
        let action = serde_json::to_value(request.action).expect("enum serializes");
        self.writer()
            .execute(
                "INSERT INTO control_requests (execution_id, action, reason, requested_at_ms,
                     signal)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    request.execution_id,
                    action.as_str(),
                    request.reason,
                    request.requested_at_ms as i64,
                    opt_json(&request.signal),
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn take_control_requests(&self, limit: usize) -> Result<Vec<ControlRequest>, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(backend)?;
        type Row = (i64, String, String, Option<String>, i64, Option<String>);
        let rows: Vec<Row> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, execution_id, action, reason, requested_at_ms, signal
                     FROM control_requests ORDER BY id LIMIT ?1",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, execution_id, action, reason, at, signal) in rows {
            tx.execute("DELETE FROM control_requests WHERE id = ?1", [id])
                .map_err(backend)?;
            let action: ControlAction = serde_json::from_value(Value::String(action.clone()))
                .map_err(|_| Error::Corrupt {
                    id: execution_id.clone(),
                    problem: format!("control request {id} has unknown action {action:?}"),
                })?;
            let signal = signal
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| Error::Corrupt {
                    id: execution_id.clone(),
                    problem: format!("control request {id}: signal: {e}"),
                })?;
            out.push(ControlRequest {
                execution_id,
                action,
                reason,
                requested_at_ms: at as u64,
                signal,
            });
        }
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    async fn purge_terminal(
        &self,
        cutoff_ms: u64,
        limit: usize,
        dry_run: bool,
    ) -> Result<Vec<PurgedExecution>, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(backend)?;
        let matched: Vec<PurgedExecution> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, status, updated_at_ms FROM executions
                     WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at_ms < ?1
                     ORDER BY updated_at_ms, id LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![cutoff_ms as i64, limit as i64], |r| {
                    Ok(PurgedExecution {
                        id: r.get(0)?,
                        status: r.get(1)?,
                        updated_at_ms: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        if dry_run {
            return Ok(matched);
        }
        for table in ["checkpoints", "events", "steps", "execution_inputs"] {
            let mut delete = tx
                .prepare_cached(&format!("DELETE FROM {table} WHERE execution_id = ?1"))
                .map_err(backend)?;
            for m in &matched {
                delete.execute([&m.id]).map_err(backend)?;
            }
        }
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM executions WHERE id = ?1")
                .map_err(backend)?;
            for m in &matched {
                delete.execute([&m.id]).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(matched)
    }

    async fn list_executions(
        &self,
        query: &ExecutionQuery,
    ) -> Result<Vec<ExecutionSummary>, Error> {
        let (after_ms, after_id) = query
            .after
            .clone()
            .map_or((i64::MAX, String::new()), |(ms, id)| (ms as i64, id));
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, process_name, process_version, status, created_at_ms, updated_at_ms
                 FROM executions
                 WHERE tenant = ?1
                   AND (?2 IS NULL OR status = ?2)
                   AND (?3 IS NULL OR process_name = ?3)
                   AND (?4 IS NULL OR created_at_ms >= ?4)
                   AND (?5 IS NULL OR created_at_ms < ?5)
                   AND (created_at_ms < ?6 OR (created_at_ms = ?6 AND id < ?7) OR ?8 = 0)
                 ORDER BY created_at_ms DESC, id DESC LIMIT ?9",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(
                params![
                    query.tenant,
                    query.status,
                    query.definition,
                    // Times past i64::MAX (no real time) are clamped rather than wrapped.
                    query.created_from_ms.map(clamp_ms),
                    query.created_to_ms.map(clamp_ms),
                    after_ms,
                    after_id,
                    i64::from(query.after.is_some()),
                    query.limit.min(MAX_LIST_PAGE) as i64,
                ],
                |r| {
                    Ok(ExecutionSummary {
                        id: r.get(0)?,
                        definition: r.get(1)?,
                        version: r.get(2)?,
                        status: r.get(3)?,
                        created_at_ms: r.get::<_, i64>(4)? as u64,
                        updated_at_ms: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    async fn register_definition(
        &self,
        tenant: &str,
        process: &ProcessDef,
        now_ms: u64,
    ) -> Result<u32, Error> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current: Option<(u32, String)> = tx
            .query_row(
                "SELECT d.version, d.definition FROM current_definitions c
                 JOIN definitions d
                   ON d.tenant = c.tenant AND d.name = c.name AND d.version = c.version
                 WHERE c.tenant = ?1 AND c.name = ?2",
                params![tenant, process.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        if let Some((version, text)) = &current {
            let mut candidate = process.clone();
            candidate.version = *version;
            if to_json(&candidate) == *text {
                return Ok(*version);
            }
        }
        let latest: Option<u32> = tx
            .query_row(
                "SELECT max(version) FROM definitions WHERE tenant = ?1 AND name = ?2",
                params![tenant, process.name],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let version = latest.unwrap_or(0) + 1;
        let mut stored = process.clone();
        stored.version = version;
        tx.execute(
            "INSERT INTO definitions (tenant, name, version, definition, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                tenant,
                process.name,
                version,
                to_json(&stored),
                now_ms as i64
            ],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO current_definitions (tenant, name, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, name) DO UPDATE SET version = excluded.version",
            params![tenant, process.name, version],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(version)
    }

    async fn definition(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<ProcessDef>>, Error> {
        let text: Option<String> = {
            let conn = self.reader();
            match version {
                Some(v) => conn.query_row(
                    "SELECT definition FROM definitions
                     WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                    params![tenant, name, v],
                    |r| r.get(0),
                ),
                None => conn.query_row(
                    "SELECT d.definition FROM current_definitions c
                     JOIN definitions d
                       ON d.tenant = c.tenant AND d.name = c.name AND d.version = c.version
                     WHERE c.tenant = ?1 AND c.name = ?2",
                    params![tenant, name],
                    |r| r.get(0),
                ),
            }
            .optional()
            .map_err(backend)?
        };
        text.map(|t| {
            self.parse_definition(t).map_err(|e| Error::Corrupt {
                id: format!("definition {name}"),
                problem: e.to_string(),
            })
        })
        .transpose()
    }

    async fn definitions(&self, tenant: &str) -> Result<Vec<DefinitionInfo>, Error> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT c.name, c.version, (SELECT max(version) FROM definitions d
                     WHERE d.tenant = c.tenant AND d.name = c.name)
                 FROM current_definitions c WHERE c.tenant = ?1 ORDER BY c.name",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([tenant], |r| {
                Ok(DefinitionInfo {
                    name: r.get(0)?,
                    current: r.get(1)?,
                    latest: r.get(2)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    async fn set_current_definition(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<(), Error> {
        let conn = self.writer();
        let exists: i64 = conn
            .query_row(
                "SELECT count(*) FROM definitions WHERE tenant = ?1 AND name = ?2 AND version = ?3",
                params![tenant, name, version],
                |r| r.get(0),
            )
            .map_err(backend)?;
        if exists == 0 {
            return Err(Error::NoSuchVersion {
                name: name.to_string(),
                version,
            });
        }
        conn.execute(
            "UPDATE current_definitions SET version = ?3 WHERE tenant = ?1 AND name = ?2",
            params![tenant, name, version],
        )
        .map_err(backend)?;
        Ok(())
    }

    async fn put_schedule(&self, schedule: &ScheduleRecord) -> Result<(), Error> {
        self.writer()
            .execute(
                "INSERT INTO schedules (name, spec, definition, input, state, tenant)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,
                     definition = excluded.definition, input = excluded.input,
                     state = excluded.state, tenant = excluded.tenant",
                params![
                    schedule.name,
                    to_json(&schedule.spec),
                    to_json(&*schedule.process),
                    to_json(&schedule.input),
                    to_json(&schedule.state),
                    schedule.tenant,
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, Error> {
        type Row = (String, String, String, String, String, String);
        let rows: Vec<Row> = {
            let conn = self.reader();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, spec, definition, input, state, tenant FROM schedules
                     ORDER BY name",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (name, spec, definition, input, state, tenant) in rows {
            let corrupt = |what: &str, e: serde_json::Error| Error::Corrupt {
                id: format!("schedule {name}"),
                problem: format!("{what}: {e}"),
            };
            out.push(ScheduleRecord {
                spec: serde_json::from_str(&spec).map_err(|e| corrupt("spec", e))?,
                process: self
                    .parse_definition(definition)
                    .map_err(|e| corrupt("definition", e))?,
                input: serde_json::from_str(&input).map_err(|e| corrupt("input", e))?,
                state: serde_json::from_str(&state).map_err(|e| corrupt("state", e))?,
                name,
                tenant,
            });
        }
        Ok(out)
    }

    async fn commit_fires(
        &self,
        name: &str,
        state: &ScheduleState,
        fires: &[FireRecord],
        closed: &[u64],
    ) -> Result<(), Error> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(backend)?;
        let updated = tx
            .execute(
                "UPDATE schedules SET state = ?2 WHERE name = ?1",
                params![name, to_json(state)],
            )
            .map_err(backend)?;
        if updated != 1 {
            return Err(Error::Corrupt {
                id: format!("schedule {name}"),
                problem: "no such schedule".into(),
            });
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO schedule_fires (schedule, at_ms, outcome, fire,
                         execution_id, decided_at_ms, open)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(backend)?;
            for f in fires {
                insert
                    .execute(params![
                        name,
                        f.fire.at_ms as i64,
                        f.outcome.as_str(),
                        to_json(&f.fire),
                        f.execution_id,
                        f.decided_at_ms as i64,
                        i64::from(f.outcome == super::FireOutcome::Started),
                    ])
                    .map_err(backend)?;
            }
            let mut close = tx
                .prepare_cached(
                    "UPDATE schedule_fires SET open = 0
                     WHERE schedule = ?1 AND at_ms = ?2 AND outcome = 'started'",
                )
                .map_err(backend)?;
            for at_ms in closed {
                close
                    .execute(params![name, *at_ms as i64])
                    .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    async fn fires(&self, name: &str, open_only: bool) -> Result<Vec<FireRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT outcome, fire, execution_id, decided_at_ms FROM schedule_fires
                 WHERE schedule = ?1 AND (open = 1 OR ?2 = 0)
                 ORDER BY at_ms, decided_at_ms, outcome",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![name, i64::from(open_only)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (outcome, fire, execution_id, decided) = row.map_err(backend)?;
            let corrupt = |problem: String| Error::Corrupt {
                id: format!("schedule {name}"),
                problem,
            };
            out.push(FireRecord {
                fire: serde_json::from_str(&fire).map_err(|e| corrupt(format!("fire: {e}")))?,
                outcome: serde_json::from_value(Value::String(outcome.clone()))
                    .map_err(|_| corrupt(format!("unknown fire outcome {outcome:?}")))?,
                execution_id,
                decided_at_ms: decided as u64,
            });
        }
        Ok(out)
    }

    async fn list_active(&self) -> Result<Vec<String>, Error> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id FROM executions WHERE status IN ('pending', 'running', 'paused')
                 ORDER BY created_at_ms, id",
            )
            .map_err(backend)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ExecutionStatus, Input};
    use crate::definition::{parse, Format};
    use crate::rng::seeded;
    use serde_json::json;

    fn execution(id: &str) -> Execution {
        let def = parse(
            "p.yaml",
            "name: p\nsteps:\n  - {id: a, type: agent_task, agent: e}\n  - {id: b, type: agent_task, agent: e, depends_on: [a]}\n",
            Format::Yaml,
        )
        .unwrap();
        Execution::new(id.into(), Arc::new(def), json!({"x": 1}), 1_000)
    }

    #[tokio::test]
    async fn commit_load_and_events_round_trip() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut exec = execution("e1");
        store.commit(&exec, &[0, 1], &[], &[]).await.unwrap();
        let mut rng = seeded(1);
        let t1 = exec.apply(Input::Start, 2_000, &mut *rng);
        commit_transition(&store, &exec, &t1).await;
        let t2 = exec.apply(
            Input::AgentReturned {
                lane: crate::core::Lane::Main,
                step: 0,
                attempt: 1,
                result: Ok(json!({"y": 2})),
            },
            3_000,
            &mut *rng,
        );
        commit_transition(&store, &exec, &t2).await;

        let loaded = store.load("e1").await.unwrap().unwrap();
        assert_eq!(loaded, exec);
        let events = store.events("e1").await.unwrap();
        let expected: Vec<EventRecord> = t1.events.into_iter().chain(t2.events).collect();
        assert_eq!(events, expected);
        assert_eq!(store.list_active().await.unwrap(), vec!["e1".to_string()]);
        assert!(store.load("nope").await.unwrap().is_none());
    }

    /// Commits what `t` changed in `exec`, as the driver does.
    async fn commit_transition(store: &SqliteStore, exec: &Execution, t: &crate::core::Transition) {
        let dirty: Vec<usize> = t.dirty_steps.iter().copied().collect();
        store
            .commit(exec, &dirty, &t.events, &t.checkpoints)
            .await
            .unwrap();
    }

    /// A chain of `n` agent steps, run to its end through `store`; returns the execution and
    /// every checkpoint the core took, in order.
    async fn run_chain(store: &SqliteStore, id: &str, n: usize) -> (Execution, Vec<Checkpoint>) {
        let mut yaml = String::from("name: chain\nsteps:\n");
        for i in 0..n {
            yaml.push_str(&format!("  - {{id: s{i}, type: agent_task, agent: e"));
            if i > 0 {
                yaml.push_str(&format!(", depends_on: [s{}]", i - 1));
            }
            yaml.push_str("}\n");
        }
        let def = parse("chain.yaml", &yaml, Format::Yaml).unwrap();
        let mut exec = Execution::new(id.into(), Arc::new(def), json!({}), 1_000);
        store.create(&exec).await.unwrap();
        let mut rng = seeded(5);
        let mut taken = Vec::new();
        let mut inputs = vec![Input::Start];
        inputs.extend((0..n).map(|step| Input::AgentReturned {
            lane: crate::core::Lane::Main,
            step,
            attempt: 1,
            result: Ok(json!({"step": step, "text": "x".repeat(200)})),
        }));
        for (at, input) in inputs.into_iter().enumerate() {
            let t = exec.apply(input, 2_000 + at as u64, &mut *rng);
            commit_transition(store, &exec, &t).await;
            taken.extend(t.checkpoints.iter().map(|c| c.read_back(&exec)));
        }
        assert_eq!(exec.status, ExecutionStatus::Completed);
        (exec, taken)
    }

    /// The stored `steps` column of each checkpoint of `id`, by seq.
    fn stored_steps(store: &SqliteStore, id: &str) -> Vec<(i64, String)> {
        store
            .writer()
            .prepare("SELECT seq, steps FROM checkpoints WHERE execution_id = ?1 ORDER BY seq")
            .unwrap()
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn checkpoints_are_stored_as_diffs_and_read_back_whole() {
        let store = SqliteStore::open_in_memory().unwrap();
        let (_, taken) = run_chain(&store, "c1", 12).await;
        assert_eq!(taken.len(), 12);
        assert_eq!(store.checkpoints("c1").await.unwrap(), taken);
        let stored = stored_steps(&store, "c1");
        assert!(stored[0].1.starts_with('['), "the first is whole");
        for (seq, column) in &stored[1..] {
            assert!(
                column.starts_with("{\"base\":"),
                "checkpoint {seq}: {column}"
            );
            // The step that completed and the one that started, not all twelve.
            assert!(
                column.len() < 1_000,
                "checkpoint {seq} is {} bytes",
                column.len()
            );
        }
        let whole_last = to_json(&taken.last().unwrap().steps);
        assert!(
            whole_last.len() > 3_000,
            "whole, the last would be {}",
            whole_last.len()
        );
    }

    #[tokio::test]
    async fn pruning_the_base_of_kept_checkpoints_stores_them_whole() {
        let store = SqliteStore::open_in_memory().unwrap();
        let (_, taken) = run_chain(&store, "c2", 6).await;
        assert_eq!(store.prune_checkpoints("c2", 2).await.unwrap(), 4);
        assert_eq!(store.checkpoints("c2").await.unwrap(), taken[4..].to_vec());
        let stored = stored_steps(&store, "c2");
        assert!(stored[0].1.starts_with('['), "its base went: whole");
        assert!(stored[1].1.starts_with("{\"base\":"), "its base stayed");
        assert_eq!(store.prune_checkpoints("c2", 2).await.unwrap(), 0);
        assert_eq!(store.prune_checkpoints("c2", 0).await.unwrap(), 2);
        assert!(store.checkpoints("c2").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_checkpoint_whose_remembered_base_was_pruned_is_written_whole() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut yaml = String::from("name: chain\nsteps:\n");
        for i in 0..3 {
            let after = if i > 0 {
                format!(", depends_on: [s{}]", i - 1)
            } else {
                String::new()
            };
            yaml.push_str(&format!(
                "  - {{id: s{i}, type: agent_task, agent: e{after}}}\n"
            ));
        }
        let def = parse("chain.yaml", &yaml, Format::Yaml).unwrap();
        let mut exec = Execution::new("c3".into(), Arc::new(def), json!({}), 1_000);
        store.create(&exec).await.unwrap();
        let mut rng = seeded(9);
        let mut taken = Vec::new();
        for (at, input) in [
            Input::Start,
            Input::AgentReturned {
                lane: crate::core::Lane::Main,
                step: 0,
                attempt: 1,
                result: Ok(json!(0)),
            },
            Input::AgentReturned {
                lane: crate::core::Lane::Main,
                step: 1,
                attempt: 1,
                result: Ok(json!(1)),
            },
        ]
        .into_iter()
        .enumerate()
        {
            let t = exec.apply(input, 2_000 + at as u64, &mut *rng);
            if at == 2 {
                // The writer still remembers the first checkpoint as the base.
                assert_eq!(store.prune_checkpoints("c3", 0).await.unwrap(), 1);
            }
            commit_transition(&store, &exec, &t).await;
            taken.extend(t.checkpoints.iter().map(|c| c.read_back(&exec)));
        }
        let stored = stored_steps(&store, "c3");
        assert_eq!(stored.len(), 1);
        assert!(stored[0].1.starts_with('['), "{}", stored[0].1);
        assert_eq!(store.checkpoints("c3").await.unwrap(), taken[1..].to_vec());
    }

    #[tokio::test]
    async fn checkpoints_stored_whole_with_their_map_still_read() {
        let store = SqliteStore::open_in_memory().unwrap();
        let (_, taken) = run_chain(&store, "c4", 3).await;
        // As rows were written before diffs: every state, and the completed map.
        for c in &taken {
            store
                .writer()
                .execute(
                    "UPDATE checkpoints SET steps = ?3, completed = ?4
                     WHERE execution_id = ?1 AND seq = ?2",
                    params!["c4", c.seq as i64, to_json(&c.steps), to_json(&c.completed)],
                )
                .unwrap();
        }
        assert_eq!(store.checkpoints("c4").await.unwrap(), taken);
    }

    #[tokio::test]
    async fn a_diff_whose_base_is_missing_is_reported_corrupt() {
        let store = SqliteStore::open_in_memory().unwrap();
        run_chain(&store, "c5", 3).await;
        let first = stored_steps(&store, "c5")[0].0;
        store
            .writer()
            .execute(
                "DELETE FROM checkpoints WHERE execution_id = 'c5' AND seq = ?1",
                [first],
            )
            .unwrap();
        match store.checkpoints("c5").await {
            Err(Error::Corrupt { id, problem }) => {
                assert_eq!(id, "c5");
                assert!(
                    problem.contains(&format!("its base {first} is not stored")),
                    "{problem}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn load_many_answers_each_id_as_load_does_in_order() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut rng = seeded(3);
        let mut started = execution("started");
        store.create(&started).await.unwrap();
        let t = started.apply(Input::Start, 2_000, &mut *rng);
        commit_transition(&store, &started, &t).await;
        let pending = execution("pending");
        store.create(&pending).await.unwrap();
        let ids: Vec<String> = ["pending", "missing", "started"].map(String::from).to_vec();
        let loaded: Vec<Option<Execution>> = store
            .load_many(&ids)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(loaded, vec![Some(pending), None, Some(started.clone())]);
        assert_eq!(loaded[2].as_ref().unwrap().status, ExecutionStatus::Running);
        assert!(store.load_many(&[]).await.is_empty());
    }

    #[tokio::test]
    async fn transitions_queued_together_share_one_transaction_and_all_land() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut executions: Vec<Execution> =
            (0..50).map(|i| execution(&format!("e{i:02}"))).collect();
        for exec in &executions {
            store.create(exec).await.unwrap();
        }
        let before = store.commit_stats();
        let mut rng = seeded(7);
        let mut writers = Vec::new();
        for exec in &mut executions {
            let t = exec.apply(Input::Start, 2_000, &mut *rng);
            let dirty: Vec<usize> = t.dirty_steps.iter().copied().collect();
            let (store, exec) = (store.clone(), exec.clone());
            writers.push(tokio::spawn(async move {
                store.commit(&exec, &dirty, &t.events, &t.checkpoints).await
            }));
        }
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let after = store.commit_stats();
        assert_eq!(after.writes - before.writes, 50);
        assert_eq!(
            after.transactions - before.transactions,
            1,
            "50 writers queued before the committer ran: one transaction"
        );
        for exec in &executions {
            let loaded = store.load(&exec.id).await.unwrap().unwrap();
            assert_eq!(loaded.status, ExecutionStatus::Running);
            assert_eq!(
                store.events(&exec.id).await.unwrap().len(),
                exec.next_seq as usize - 1
            );
        }
    }

    #[tokio::test]
    async fn a_refused_create_fails_alone_in_its_transaction() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.create(&execution("taken")).await.unwrap();
        let before = store.commit_stats();
        let (taken, fresh) = (execution("taken"), execution("fresh"));
        let (again, fresh) = tokio::join!(store.create(&taken), store.create(&fresh));
        assert_eq!(store.commit_stats().transactions - before.transactions, 1);
        assert!(matches!(again, Err(Error::Duplicate(id)) if id == "taken"));
        fresh.unwrap();
        assert!(store.load("fresh").await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_multi_thread_runtime_concurrent_transitions_all_land_in_a_file() {
        for committer in [Committer::Worker, Committer::BlockingPool] {
            concurrent_transitions_land(committer).await;
        }
    }

    /// The WAL's frames after `executions` are created in a store opened with `options`, and
    /// the writing connection's `cache_size`.
    async fn wal_frames_and_cache(options: &SqliteOptions, executions: usize) -> (i64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&dir.path().join("wal.db"), options).unwrap();
        for i in 0..executions {
            store.create(&execution(&format!("e{i:03}"))).await.unwrap();
        }
        let writer = lock(&store.writer);
        // A passive checkpoint copies back what it can without waiting, and answers with the
        // WAL's length in frames (its second column), which the copy does not change.
        let frames = writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
            .unwrap();
        let cache = writer
            .pragma_query_value(None, "cache_size", |r| r.get::<_, i64>(0))
            .unwrap();
        (frames, cache)
    }

    #[tokio::test]
    async fn the_options_size_the_writers_cache_and_how_long_the_wal_grows() {
        let production = SqliteOptions::default();
        let (frames, cache) = wal_frames_and_cache(&production, 500).await;
        assert_eq!(cache, -i64::from(WRITER_CACHE_KIB));
        assert!(
            frames > i64::from(SQLITE_DEFAULT_WAL_AUTOCHECKPOINT_PAGES)
                && frames < i64::from(WAL_AUTOCHECKPOINT_PAGES),
            "500 commits stay in the WAL, past SQLite's default checkpoint: {frames} frames"
        );
        let small = SqliteOptions {
            cache_kib: SQLITE_DEFAULT_CACHE_KIB,
            wal_autocheckpoint_pages: 50,
            ..SqliteOptions::default()
        };
        let (frames, cache) = wal_frames_and_cache(&small, 500).await;
        assert_eq!(cache, -i64::from(SQLITE_DEFAULT_CACHE_KIB));
        // Far under SQLite's 1,000 (which left 763 here): a create writes a few pages, and
        // the WAL starts over once it passed 50.
        assert!(frames < 200, "checkpointed every 50 pages: {frames} frames");
    }

    /// Through the WAL buffer (every FULL store writes through it): a batch far larger than
    /// the writer's small cache, whose transaction spills pages to the WAL and reads them back
    /// before it commits; checkpoints every 20 pages and the WAL starting over; the second
    /// connection reading between commits; and a fresh store reading the file back. Reads that
    /// did not see what the buffer holds, or a buffer that lost a write, fail one of them (the
    /// simulator's power cuts check what a sync makes durable: `proctor-sim`'s VFS tests).
    #[tokio::test]
    async fn what_goes_through_the_wal_buffer_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffered.db");
        let options = SqliteOptions {
            cache_kib: 16,
            wal_autocheckpoint_pages: 20,
            ..SqliteOptions::default()
        };
        let mut expected = Vec::new();
        {
            let store = SqliteStore::open_with(&path, &options).unwrap();
            let creates: Vec<_> = (0..150)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut exec = execution(&format!("e{i:03}"));
                        exec.input = json!({ "i": i, "pad": "p".repeat(3_000) });
                        store.create(&exec).await.map(|()| exec)
                    })
                })
                .collect();
            for create in creates {
                expected.push(create.await.unwrap().unwrap());
            }
            assert!(
                store.commit_stats().transactions < 10,
                "the creates shared a few large transactions: {:?}",
                store.commit_stats()
            );
            let mut rng = seeded(3);
            for exec in &mut expected {
                let t = exec.apply(Input::Start, 2_000, &mut *rng);
                commit_transition(&store, exec, &t).await;
                // The read connection finds each commit as soon as it is answered.
                assert_eq!(store.load(&exec.id).await.unwrap().as_ref(), Some(&*exec));
            }
        }
        let reopened = SqliteStore::open_with(&path, &options).unwrap();
        for exec in &expected {
            assert_eq!(reopened.load(&exec.id).await.unwrap().as_ref(), Some(exec));
        }
        let integrity: String = lock(&reopened.writer)
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }

    async fn concurrent_transitions_land(committer: Committer) {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            committer,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("group.db"), &options).unwrap();
        let writers: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut exec = execution(&format!("e{i:03}"));
                    store.create(&exec).await?;
                    let t = exec.apply(Input::Start, 2_000, &mut *seeded(i));
                    let dirty: Vec<usize> = t.dirty_steps.iter().copied().collect();
                    store.commit(&exec, &dirty, &t.events, &t.checkpoints).await
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let stats = store.commit_stats();
        assert_eq!(stats.writes, 400);
        assert!(stats.transactions <= stats.writes);
        let reopened = SqliteStore::open(&dir.path().join("group.db")).unwrap();
        let active = reopened.list_active().await.unwrap();
        assert_eq!(active.len(), 200);
        for id in active {
            let loaded = reopened.load(&id).await.unwrap().unwrap();
            assert_eq!(loaded.status, ExecutionStatus::Running);
        }
    }

    #[tokio::test]
    async fn terminal_executions_are_not_active() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut exec = execution("e2");
        let t = exec.apply(Input::Cancel { reason: None }, 1_500, &mut *seeded(1));
        assert_eq!(exec.status, ExecutionStatus::Cancelled);
        store
            .commit(&exec, &[0, 1], &t.events, &t.checkpoints)
            .await
            .unwrap();
        assert!(store.list_active().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_repeated_event_seq_is_refused_and_nothing_is_written() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut exec = execution("e3");
        let t = exec.apply(Input::Start, 2_000, &mut *seeded(1));
        store
            .commit(&exec, &[0, 1], &t.events, &t.checkpoints)
            .await
            .unwrap();
        // Same events again, as a buggy driver replaying a transition would: the primary key
        // on (execution_id, seq) rejects it and the transaction leaves no partial write.
        let before = store.load("e3").await.unwrap();
        exec.status = ExecutionStatus::Completed;
        let err = store
            .commit(&exec, &[], &t.events, &t.checkpoints)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Backend(_)), "{err}");
        assert_eq!(store.load("e3").await.unwrap(), before);
    }

    /// `a` completed, `b` failed, and `a`'s compensation is retrying: the state that only
    /// lives in the `detail` columns.
    async fn compensating(store: &SqliteStore) -> Execution {
        let def = parse(
            "p.yaml",
            "name: p\non_failure: compensate\nsteps:\n  - {id: a, type: agent_task, agent: e, compensate: {agent: e, retry: {max_attempts: 2}}}\n  - {id: b, type: agent_task, agent: e, depends_on: [a]}\n",
            Format::Yaml,
        )
        .unwrap();
        let mut exec = Execution::new("c1".into(), Arc::new(def), json!({}), 1_000);
        store.create(&exec).await.unwrap();
        let mut rng = seeded(1);
        let fail = |step| Input::AgentReturned {
            lane: crate::core::Lane::Main,
            step,
            attempt: 1,
            result: Err(crate::core::StepError::new(
                crate::core::ErrorKind::Server,
                "x",
            )),
        };
        let inputs = [
            Input::Start,
            Input::AgentReturned {
                lane: crate::core::Lane::Main,
                step: 0,
                attempt: 1,
                result: Ok(json!({"id": 7})),
            },
            fail(1),
            Input::AgentReturned {
                lane: crate::core::Lane::Compensation,
                step: 0,
                attempt: 1,
                result: Err(crate::core::StepError::new(
                    crate::core::ErrorKind::Server,
                    "y",
                )),
            },
        ];
        for (i, input) in inputs.into_iter().enumerate() {
            let t = exec.apply(input, 2_000 + i as u64, &mut *rng);
            commit_transition(store, &exec, &t).await;
        }
        let undo = exec.steps[0].detail.compensation.as_ref().unwrap();
        assert_eq!(undo.status, crate::core::CallStatus::Retrying);
        exec
    }

    #[tokio::test]
    async fn compensation_state_round_trips() {
        let store = SqliteStore::open_in_memory().unwrap();
        let exec = compensating(&store).await;
        assert!(exec.compensation.is_some());
        assert_eq!(store.load("c1").await.unwrap().unwrap(), exec);
    }

    /// An idempotency key names one execution per tenant: a second create under it is
    /// refused with the holder's id, while another tenant may use the same key.
    #[tokio::test]
    async fn an_idempotency_key_creates_one_execution_per_tenant() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut first = execution("k-first");
        first.idempotency_key = Some("key-1".into());
        store.create(&first).await.unwrap();
        let mut second = execution("k-second");
        second.idempotency_key = Some("key-1".into());
        match store.create(&second).await {
            Err(Error::DuplicateKey { key, id }) => {
                assert_eq!((key.as_str(), id.as_str()), ("key-1", "k-first"))
            }
            other => panic!("expected DuplicateKey, got {other:?}"),
        }
        assert!(store.load("k-second").await.unwrap().is_none());
        second.tenant = "other".into();
        store.create(&second).await.unwrap();
        assert_eq!(
            store
                .load("k-first")
                .await
                .unwrap()
                .unwrap()
                .idempotency_key,
            Some("key-1".into())
        );
    }

    /// Two processes that both found an old file: the second upgrade, run after the first
    /// finished, reads the version again under the write lock and leaves the file alone.
    #[tokio::test]
    async fn an_upgrade_that_lost_the_race_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.db");
        let store = SqliteStore::open(&path).unwrap();
        to_version_1(&store);
        drop(store);
        // Both "processes" saw version 1; the first upgrades.
        let mut first = Connection::open(&path).unwrap();
        let mut second = Connection::open(&path).unwrap();
        upgrade(&mut first).unwrap();
        upgrade(&mut second).unwrap();
        let version: i64 = second
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// Turns the file back into what version 1 wrote: definition and input in the executions
    /// row, no `detail`, `tenant`, `signal` or `idempotency_key` columns.
    fn to_version_1(store: &SqliteStore) {
        store
            .writer()
            .execute_batch(
                "ALTER TABLE executions ADD COLUMN definition TEXT NOT NULL DEFAULT '';
                 ALTER TABLE executions ADD COLUMN input TEXT NOT NULL DEFAULT '';
                 UPDATE executions SET
                     definition = (SELECT definition FROM execution_inputs WHERE execution_id = id),
                     input = (SELECT input FROM execution_inputs WHERE execution_id = id);
                 DROP TABLE execution_inputs;
                 DROP INDEX executions_by_key; ALTER TABLE executions DROP COLUMN idempotency_key;
                 ALTER TABLE executions DROP COLUMN detail; ALTER TABLE steps DROP COLUMN detail;
                 ALTER TABLE control_requests DROP COLUMN signal;
                 DROP INDEX executions_by_tenant; ALTER TABLE executions DROP COLUMN tenant;
                 PRAGMA user_version = 1;",
            )
            .unwrap();
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let store = SqliteStore::open(&path).unwrap();
        let mut exec = execution("old");
        store.create(&exec).await.unwrap();
        let t = exec.apply(Input::Start, 2_000, &mut *seeded(1));
        store
            .commit(&exec, &[0], &t.events, &t.checkpoints)
            .await
            .unwrap();
        to_version_1(&store);
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load("old").await.unwrap().unwrap(), exec);
        let version: i64 = store
            .writer()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        compensating(&store).await;
        assert!(store
            .load("c1")
            .await
            .unwrap()
            .unwrap()
            .compensation
            .is_some());
    }
}

#[cfg(test)]
mod control_tests {
    use super::*;
    use crate::store::{ControlAction, ControlRequest};

    fn request(id: &str, action: ControlAction, at: u64) -> ControlRequest {
        ControlRequest {
            execution_id: id.into(),
            action,
            reason: None,
            requested_at_ms: at,
            signal: None,
        }
    }

    #[tokio::test]
    async fn control_requests_are_taken_once_in_order_up_to_the_limit() {
        let store = SqliteStore::open_in_memory().unwrap();
        let sent = vec![
            request("e1", ControlAction::Pause, 1),
            request("e2", ControlAction::Cancel, 2),
            request("e1", ControlAction::Resume, 3),
        ];
        for r in &sent {
            store.request_control(r).await.unwrap();
        }
        assert_eq!(store.take_control_requests(2).await.unwrap(), sent[..2]);
        assert_eq!(store.take_control_requests(10).await.unwrap(), sent[2..]);
        assert!(store.take_control_requests(10).await.unwrap().is_empty());
    }
}
