//! The scheduler: the async shell around [`crate::schedule`]'s pure planner. Each tick, per
//! schedule: notice the runs that ended (`run_finished`), plan the due fires (`due`), commit the
//! new planner state with every decided fire in one transaction, then create and start the
//! runs. Persist, then act: a crash after the commit leaves started fires whose executions do
//! not exist yet, and the next tick creates them under the same ids (`<schedule>-<at_ms>`), so
//! a fire never starts twice and a started one is never lost.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::core::DEFAULT_TENANT;
use crate::definition::ProcessDef;
use crate::driver::{Engine, Error};
use crate::schedule::{CompiledSchedule, Fire, Plan, ScheduleSpec, ScheduleState, SkipCause};
use crate::store::{self, FireOutcome, FireRecord, ScheduleRecord};

/// Longest the scheduler sleeps between ticks, whatever the next fire: it notices runs that
/// ended (to start a buffered fire) and clock jumps within this bound.
pub const MAX_SCHEDULER_SLEEP_MS: u64 = 1_000;
/// Longest schedule name: it prefixes its runs' execution ids.
pub const MAX_SCHEDULE_NAME_BYTES: usize = 64;

/// The execution id of the run a schedule starts for `fire`.
pub fn run_id(schedule: &str, fire: &Fire) -> String {
    format!("{schedule}-{}", fire.at_ms)
}

impl Engine {
    /// Registers schedule `name`: `process` starts with `input` at each fire of `spec`. A
    /// schedule registered again keeps its planner state (what fired, what runs), so
    /// registering on every start is safe; a new one plans from now.
    pub async fn register_schedule(
        &self,
        name: &str,
        spec: ScheduleSpec,
        process: Arc<ProcessDef>,
        input: Value,
    ) -> Result<(), Error> {
        self.register_schedule_in(DEFAULT_TENANT, name, spec, process, input)
            .await
    }

    /// [`Engine::register_schedule`] for `tenant`, whose runs the schedule's are. Schedule
    /// names are one namespace across tenants; another tenant's name is refused.
    pub(crate) async fn register_schedule_in(
        &self,
        tenant: &str,
        name: &str,
        spec: ScheduleSpec,
        process: Arc<ProcessDef>,
        input: Value,
    ) -> Result<(), Error> {
        if !crate::name::is_plain(name, MAX_SCHEDULE_NAME_BYTES) {
            return Err(Error::BadSchedule(format!(
                "name {name:?}: 1 to {MAX_SCHEDULE_NAME_BYTES} letters, digits, '_' or '-'"
            )));
        }
        spec.check()
            .map_err(|e| Error::BadSchedule(format!("{name}: {e}")))?;
        self.check_agents(&process)?;
        let existing = self
            .store()
            .schedules()
            .await?
            .into_iter()
            .find(|s| s.name == name);
        let state = match existing {
            Some(s) if s.tenant != tenant => {
                return Err(Error::BadSchedule(format!("{name}: the name is taken")))
            }
            Some(s) => s.state,
            None => ScheduleState::new_at(self.clock().now_ms()),
        };
        let record = ScheduleRecord {
            name: name.to_string(),
            tenant: tenant.to_string(),
            spec,
            process,
            input,
            state,
        };
        Ok(self.store().put_schedule(&record).await?)
    }

    /// One pass over every schedule at the Clock's now; returns when the next fire is due (at
    /// the latest). A schedule whose spec no longer checks is logged and left alone.
    pub async fn tick_schedules(&self) -> Result<Option<u64>, Error> {
        let mut next: Option<u64> = None;
        for record in self.store().schedules().await? {
            let compiled = match record.spec.check() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(schedule = %record.name, "schedule does not check: {e}");
                    continue;
                }
            };
            if let Some(at) = self.tick_one(record, &compiled).await? {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    async fn tick_one(
        &self,
        mut record: ScheduleRecord,
        compiled: &CompiledSchedule,
    ) -> Result<Option<u64>, Error> {
        let now_ms = self.clock().now_ms();
        let open = self.store().fires(&record.name, true).await?;
        let mut closed = Vec::new();
        let mut plans = Vec::new();
        let mut to_start = Vec::new();
        for f in open {
            let id = f
                .execution_id
                .clone()
                .expect("a started fire has its run's id");
            match self.store().load(&id).await? {
                Some(e) if e.status.is_terminal() => {
                    closed.push(f.fire.at_ms);
                    plans.push(compiled.run_finished(&mut record.state, now_ms));
                }
                Some(_) => {}
                // Committed as started, but the run was never created (a crash in between).
                None => to_start.push(f.fire),
            }
        }
        plans.push(compiled.due(&mut record.state, now_ms));
        let mut fires = Vec::new();
        let mut next = None;
        for plan in plans {
            next = plan.next_wake_ms.or(next);
            fires.extend(records(&record.name, &plan, now_ms));
            to_start.extend(plan.start);
        }
        self.store()
            .commit_fires(&record.name, &record.state, &fires, &closed)
            .await?;
        for fire in to_start {
            self.start_run(&record, &fire).await?;
        }
        Ok(next)
    }

    /// Creates and starts the run for `fire`, idempotently (it may exist already).
    async fn start_run(&self, record: &ScheduleRecord, fire: &Fire) -> Result<(), Error> {
        let id = run_id(&record.name, fire);
        let about = json!({
            "name": record.name,
            "at_ms": fire.at_ms,
            "local": fire.local,
            "utc": fire.utc,
        });
        let input = match &record.input {
            Value::Object(map) => {
                let mut map = map.clone();
                map.insert("schedule".into(), about);
                Value::Object(map)
            }
            other => json!({"input": other, "schedule": about}),
        };
        match self
            .create_with_id_in(&record.tenant, &id, record.process.clone(), input)
            .await
        {
            Ok(()) | Err(Error::Store(store::Error::Duplicate(_))) => {}
            Err(e) => return Err(e),
        }
        match self.start(&id).await {
            Ok(_) | Err(Error::AlreadyLive(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Ticks forever (until the task is aborted), sleeping until the next fire but at most
    /// [`MAX_SCHEDULER_SLEEP_MS`]. A failed tick is logged and tried again.
    pub fn run_schedules(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                let now_ms = engine.clock().now_ms();
                let next = match engine.tick_schedules().await {
                    Ok(next) => next.unwrap_or(u64::MAX),
                    Err(e) => {
                        tracing::warn!("schedule tick failed: {e}");
                        now_ms
                    }
                };
                let wake = next.clamp(now_ms + 1, now_ms + MAX_SCHEDULER_SLEEP_MS);
                engine.clock().sleep_until_ms(wake).await;
            }
        })
    }
}

/// The fires a plan decided, as stored.
fn records(schedule: &str, plan: &Plan, now_ms: u64) -> Vec<FireRecord> {
    let record = |fire: &Fire, outcome| FireRecord {
        fire: fire.clone(),
        outcome,
        execution_id: (outcome == FireOutcome::Started).then(|| run_id(schedule, fire)),
        decided_at_ms: now_ms,
    };
    let mut out: Vec<FireRecord> = plan
        .skipped
        .iter()
        .map(|(fire, cause)| {
            let outcome = match cause {
                SkipCause::Missed => FireOutcome::Missed,
                SkipCause::Overlap => FireOutcome::Overlap,
            };
            record(fire, outcome)
        })
        .collect();
    if let Some(bulk) = &plan.skipped_bulk {
        tracing::info!(
            schedule,
            count = bulk.count,
            "skipped {} missed fires from {} to {} (ms)",
            bulk.count,
            bulk.first_at_ms,
            bulk.last_at_ms
        );
    }
    out.extend(
        plan.buffered
            .iter()
            .map(|f| record(f, FireOutcome::Buffered)),
    );
    out.extend(plan.start.iter().map(|f| record(f, FireOutcome::Started)));
    out
}
