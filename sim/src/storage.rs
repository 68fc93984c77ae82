//! The storage fault layer: the engine's own SQLite store, wrapped so that the simulator can
//! fail its writes and kill the engine at named points in them.
//!
//! Fault model. Every write the engine makes (a transition's `commit`, an execution's
//! `create`) is one numbered storage write. A write can fail with an I/O error (nothing
//! written), fail ambiguously (written and durable, but reported failed: the engine cannot
//! tell the two apart), or be the point where the engine host dies, just before the write or
//! just after it became durable. Once the host is dying, every further write from it waits
//! forever, so nothing it does after the fatal point reaches the disk; the runner then crashes
//! the host. Reads are not faulted: they see the durable image, which outlives the host.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use proctor::core::{Checkpoint, Execution, NewCheckpoint};
use proctor::definition::{ProcessDef, StepKind};
use proctor::event::{DomainEvent, EventRecord};
use proctor::schedule::ScheduleState;
use proctor::store::{
    ControlRequest, DefinitionInfo, Error, ExecutionQuery, ExecutionSummary, FireRecord,
    PurgedExecution, ScheduleRecord, SqliteStore, Storage,
};
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scenario::{Point, StorageFault};

/// A crash waiting for its point.
#[derive(Clone, Debug)]
pub struct PointCrash {
    /// Index of the scenario fault it came from.
    pub fault: usize,
    pub point: Point,
    pub step: Option<String>,
    pub nth: u32,
    /// Occurrences seen so far.
    pub seen: u32,
}

/// What the runner arms and reads back between simulation steps.
#[derive(Debug)]
pub struct Faults {
    /// Storage writes so far (commits and creates, failed ones included).
    pub writes: u64,
    /// Spoil the next writes: `(how, how many)`, oldest first.
    pub spoil: Vec<(StorageFault, u32)>,
    /// Spoil these writes, by number (the first write is 1).
    pub spoil_writes: BTreeMap<u64, StorageFault>,
    /// Per-write chance of each storage fault (chaos).
    pub io_error_rate: f64,
    pub ambiguous_rate: f64,
    /// Crashes at `before_commit`, `after_commit`, `after_create` and `timer_waiting`.
    pub crashes: Vec<PointCrash>,
    /// Set when a point crash fired: the fault index. The runner crashes the engine host and
    /// clears it; until then every write waits forever.
    pub dying: Option<usize>,
    /// Storage faults injected: when (simulated ms since the run began) and which.
    pub injected: Vec<(u64, StorageFault)>,
    rng: ChaCha8Rng,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            writes: 0,
            spoil: Vec::new(),
            spoil_writes: BTreeMap::new(),
            io_error_rate: 0.0,
            ambiguous_rate: 0.0,
            crashes: Vec::new(),
            dying: None,
            injected: Vec::new(),
            // Its own stream, so storage chaos never shifts turmoil's or the engine's draws.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5354_4f52_4147_4521),
        }
    }

    /// The fault for this write, if any; draws from the RNG only when a rate is set.
    fn next_storage_fault(&mut self) -> Option<StorageFault> {
        if let Some(kind) = self.spoil_writes.remove(&self.writes) {
            return Some(kind);
        }
        if let Some((kind, left)) = self.spoil.first_mut() {
            let kind = *kind;
            *left -= 1;
            if *left == 0 {
                self.spoil.remove(0);
            }
            return Some(kind);
        }
        if self.io_error_rate > 0.0 && self.rng.random_bool(self.io_error_rate) {
            return Some(StorageFault::IoError);
        }
        if self.ambiguous_rate > 0.0 && self.rng.random_bool(self.ambiguous_rate) {
            return Some(StorageFault::Ambiguous);
        }
        None
    }

    /// Counts this write against the crashes at `point` (filtered by `matches`); returns the
    /// fault that fires, if one does.
    fn fire(&mut self, point: Point, matches: impl Fn(&PointCrash) -> bool) -> Option<usize> {
        let mut fired = None;
        for crash in self.crashes.iter_mut().filter(|c| c.point == point) {
            if matches(crash) {
                crash.seen += 1;
                if crash.seen == crash.nth && fired.is_none() {
                    fired = Some(crash.fault);
                }
            }
        }
        if let Some(fault) = fired {
            self.crashes.retain(|c| c.fault != fault);
            self.dying = Some(fault);
        }
        fired
    }
}

/// [`SqliteStore`] behind the fault layer. Clones share the durable image and the faults.
#[derive(Clone)]
pub struct FaultyStore {
    inner: SqliteStore,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyStore {
    pub fn new(inner: SqliteStore, faults: Arc<Mutex<Faults>>) -> FaultyStore {
        FaultyStore { inner, faults }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks before a write: a dying host never writes again; a `before_commit` crash
    /// fires here; otherwise, the storage fault (if any) this write suffers.
    async fn before_write(&self) -> Option<StorageFault> {
        // `None`: this host is dying (or dies here) and must not write.
        let verdict = {
            let mut faults = self.faults();
            if faults.dying.is_some() {
                None
            } else {
                faults.writes += 1;
                if faults.fire(Point::BeforeCommit, |_| true).is_some() {
                    None
                } else {
                    let fault = faults.next_storage_fault();
                    if let Some(kind) = fault {
                        faults
                            .injected
                            .push((crate::runner::sim_elapsed_ms(), kind));
                    }
                    Some(fault)
                }
            }
        };
        match verdict {
            Some(fault) => fault,
            None => std::future::pending().await,
        }
    }

    /// The checks after a durable write: `after_commit`, `after_create` (when `created`)
    /// and `timer_waiting` crashes.
    async fn after_write(&self, execution: &Execution, events: &[EventRecord], created: bool) {
        let timers_started: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.event {
                DomainEvent::StepStarted { step, .. } => Some(step.as_str()),
                _ => None,
            })
            .filter(|step| {
                execution
                    .process
                    .steps
                    .iter()
                    .any(|d| d.id == *step && matches!(d.kind, StepKind::Timer(_)))
            })
            .collect();
        let dying = {
            let mut faults = self.faults();
            let fired = faults.fire(Point::AfterCommit, |_| true).is_some()
                || (created && faults.fire(Point::AfterCreate, |_| true).is_some())
                || timers_started.iter().any(|started| {
                    faults
                        .fire(Point::TimerWaiting, |c| {
                            c.step.as_deref().is_none_or(|s| s == *started)
                        })
                        .is_some()
                });
            fired
        };
        if dying {
            std::future::pending::<()>().await;
        }
    }

    /// `write` (not started yet) with this store's faults around it: an I/O error instead of
    /// it, or a fault after it landed (an ambiguous commit, a crash point).
    async fn faulty(
        &self,
        execution: &Execution,
        events: &[EventRecord],
        created: bool,
        write: impl std::future::Future<Output = Result<(), Error>> + Send,
    ) -> Result<(), Error> {
        let fault = self.before_write().await;
        if fault == Some(StorageFault::IoError) {
            return Err(Self::spoiled(StorageFault::IoError));
        }
        write.await?;
        self.after_write(execution, events, created).await;
        match fault {
            Some(kind) => Err(Self::spoiled(kind)),
            None => Ok(()),
        }
    }

    fn spoiled(kind: StorageFault) -> Error {
        Error::Backend(format!("injected storage fault: {}", kind.name()))
    }
}

#[async_trait]
impl Storage for FaultyStore {
    async fn commit(
        &self,
        execution: &Execution,
        steps: &[usize],
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
    ) -> Result<(), Error> {
        let write = self.inner.commit(execution, steps, events, checkpoints);
        self.faulty(execution, events, false, write).await
    }

    async fn create(&self, execution: &Execution) -> Result<(), Error> {
        let write = self.inner.create(execution);
        self.faulty(execution, &[], true, write).await
    }

    async fn create_started(
        &self,
        execution: &Execution,
        events: &[EventRecord],
        checkpoints: &[NewCheckpoint],
    ) -> Result<(), Error> {
        let write = self.inner.create_started(execution, events, checkpoints);
        self.faulty(execution, events, true, write).await
    }

    async fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>, Error> {
        self.inner.checkpoints(id).await
    }

    async fn prune_checkpoints(&self, id: &str, keep: usize) -> Result<usize, Error> {
        self.inner.prune_checkpoints(id, keep).await
    }

    async fn forks_of(&self, id: &str) -> Result<Vec<(String, u64, u64)>, Error> {
        self.inner.forks_of(id).await
    }

    async fn load(&self, id: &str) -> Result<Option<Execution>, Error> {
        self.inner.load(id).await
    }

    async fn events(&self, id: &str) -> Result<Vec<EventRecord>, Error> {
        self.inner.events(id).await
    }

    async fn list_active(&self) -> Result<Vec<String>, Error> {
        self.inner.list_active().await
    }

    async fn request_control(&self, request: &ControlRequest) -> Result<(), Error> {
        self.inner.request_control(request).await
    }

    async fn take_control_requests(&self, limit: usize) -> Result<Vec<ControlRequest>, Error> {
        self.inner.take_control_requests(limit).await
    }

    // Definitions and schedules pass through without faults: the layer numbers execution
    // writes only.
    async fn register_definition(
        &self,
        tenant: &str,
        process: &ProcessDef,
        now_ms: u64,
    ) -> Result<u32, Error> {
        self.inner
            .register_definition(tenant, process, now_ms)
            .await
    }

    async fn definition(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<ProcessDef>>, Error> {
        self.inner.definition(tenant, name, version).await
    }

    async fn list_executions(
        &self,
        query: &ExecutionQuery,
    ) -> Result<Vec<ExecutionSummary>, Error> {
        self.inner.list_executions(query).await
    }

    async fn purge_terminal(
        &self,
        cutoff_ms: u64,
        limit: usize,
        dry_run: bool,
    ) -> Result<Vec<PurgedExecution>, Error> {
        self.inner.purge_terminal(cutoff_ms, limit, dry_run).await
    }

    async fn definitions(&self, tenant: &str) -> Result<Vec<DefinitionInfo>, Error> {
        self.inner.definitions(tenant).await
    }

    async fn set_current_definition(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<(), Error> {
        self.inner
            .set_current_definition(tenant, name, version)
            .await
    }

    async fn put_schedule(&self, schedule: &ScheduleRecord) -> Result<(), Error> {
        self.inner.put_schedule(schedule).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, Error> {
        self.inner.schedules().await
    }

    async fn commit_fires(
        &self,
        name: &str,
        state: &ScheduleState,
        fires: &[FireRecord],
        closed: &[u64],
    ) -> Result<(), Error> {
        self.inner.commit_fires(name, state, fires, closed).await
    }

    async fn fires(&self, name: &str, open_only: bool) -> Result<Vec<FireRecord>, Error> {
        self.inner.fires(name, open_only).await
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use proctor::definition::{self, Format};
    use serde_json::json;

    use super::*;

    /// Polls once: the store's writes never wait, unless the host is dying.
    fn poll<F: Future>(future: F) -> Poll<F::Output> {
        let mut future = pin!(future);
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    fn rig() -> (FaultyStore, Arc<Mutex<Faults>>) {
        let faults = Arc::new(Mutex::new(Faults::new(1)));
        let store = FaultyStore::new(
            SqliteStore::open_in_memory().expect("SQLite"),
            faults.clone(),
        );
        (store, faults)
    }

    fn execution(id: &str) -> Execution {
        let yaml = "name: t\nsteps:\n  - { id: wait, type: timer, duration: 1s }\n";
        let def = definition::parse("t.yaml", yaml, Format::Yaml).expect("parses");
        Execution::new(id.to_string(), Arc::new(def), json!({}), 1_000)
    }

    fn stored(store: &FaultyStore, id: &str) -> bool {
        matches!(poll(store.load(id)), Poll::Ready(Ok(Some(_))))
    }

    #[test]
    fn io_error_writes_nothing_and_ambiguous_writes_but_reports_failure() {
        let (store, faults) = rig();
        faults
            .lock()
            .expect("faults")
            .spoil
            .push((StorageFault::IoError, 1));
        assert!(matches!(
            poll(store.create(&execution("a"))),
            Poll::Ready(Err(_))
        ));
        assert!(!stored(&store, "a"));
        faults
            .lock()
            .expect("faults")
            .spoil_writes
            .insert(2, StorageFault::Ambiguous);
        assert!(matches!(
            poll(store.create(&execution("b"))),
            Poll::Ready(Err(_))
        ));
        assert!(stored(&store, "b"), "an ambiguous write is durable");
        assert!(matches!(
            poll(store.create(&execution("c"))),
            Poll::Ready(Ok(()))
        ));
        let faults = faults.lock().expect("faults");
        assert_eq!(faults.writes, 3);
        assert_eq!(
            faults.injected,
            vec![(0, StorageFault::IoError), (0, StorageFault::Ambiguous)]
        );
    }

    fn arm(faults: &Arc<Mutex<Faults>>, point: Point, nth: u32) {
        faults.lock().expect("faults").crashes.push(PointCrash {
            fault: 7,
            point,
            step: None,
            nth,
            seen: 0,
        });
    }

    #[test]
    fn before_commit_crash_stops_the_write_and_every_later_one() {
        let (store, faults) = rig();
        arm(&faults, Point::BeforeCommit, 2);
        assert!(poll(store.create(&execution("a"))).is_ready());
        assert!(poll(store.create(&execution("b"))).is_pending());
        assert!(!stored(&store, "b"), "the host died before writing");
        assert_eq!(faults.lock().expect("faults").dying, Some(7));
        assert!(poll(store.create(&execution("c"))).is_pending());
        assert!(!stored(&store, "c"), "a dying host never writes again");
        // The runner crashed the host; the next one writes.
        faults.lock().expect("faults").dying = None;
        assert!(poll(store.create(&execution("d"))).is_ready());
    }

    #[test]
    fn after_commit_crash_keeps_the_write_and_withholds_the_reply() {
        let (store, faults) = rig();
        arm(&faults, Point::AfterCommit, 1);
        assert!(poll(store.create(&execution("a"))).is_pending());
        assert!(stored(&store, "a"), "durable before the host died");
        assert_eq!(faults.lock().expect("faults").dying, Some(7));
    }
}
