//! The scheduler over real storage and agents: fires become executions under stable ids, the
//! missed-run and overlap policies hold across engine restarts, and a fire committed as started
//! whose run was never created (a crash in between) is created by the next tick.

use proctor::schedule::{Missed, Overlap, ScheduleSpec};
use proctor::scheduler::run_id;
use proctor::store::{FireOutcome, FireRecord};
use proctor_tests::*;
use serde_json::json;

const ONE_STEP: &str =
    "name: tick\nsteps:\n  - {id: a, type: agent_task, agent: worker, timeout: 1s}\n";
const MINUTE_MS: u64 = 60_000;

fn every_minute(missed: Missed, overlap: Overlap) -> ScheduleSpec {
    ScheduleSpec {
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        overlap,
        missed,
    }
}

/// T0 rounded up to the next whole minute, so fires land at known instants.
fn next_minute(now_ms: u64) -> u64 {
    now_ms.div_ceil(MINUTE_MS) * MINUTE_MS
}

async fn outcomes(t: &TestEngine, name: &str) -> Vec<(u64, FireOutcome)> {
    let fires = t.engine.store().fires(name, false).await.unwrap();
    fires.iter().map(|f| (f.fire.at_ms, f.outcome)).collect()
}

#[tokio::test]
async fn a_due_fire_starts_one_run_under_a_stable_id_and_is_never_repeated() {
    let t = TestEngine::start(ONE_STEP, &[("worker", Default::default())]).await;
    let spec = every_minute(Missed::Skip, Overlap::AllowAll);
    t.engine
        .register_schedule("tick", spec, t.process.clone(), json!({"k": 1}))
        .await
        .unwrap();
    assert!(outcomes(&t, "tick").await.is_empty());
    let first = next_minute(t.now() + 1);
    t.clock.advance_ms(first - t.now());
    t.engine.tick_schedules().await.unwrap();
    t.engine.tick_schedules().await.unwrap();
    assert_eq!(
        outcomes(&t, "tick").await,
        vec![(first, FireOutcome::Started)]
    );
    let fires = t.engine.store().fires("tick", false).await.unwrap();
    let id = fires[0].execution_id.clone().unwrap();
    assert_eq!(id, format!("tick-{first}"));
    eventually("the run completes", || {
        t.execution_row(&id).status == "completed"
    })
    .await;
    let run = t.engine.load(&id).await.unwrap().unwrap();
    assert_eq!(run.input["k"], json!(1));
    assert_eq!(run.input["schedule"]["at_ms"], json!(first));
}

#[tokio::test]
async fn after_downtime_run_once_starts_the_latest_fire_and_records_the_missed_ones() {
    let t = TestEngine::start(ONE_STEP, &[("worker", Default::default())]).await;
    let spec = every_minute(Missed::RunOnce, Overlap::AllowAll);
    t.engine
        .register_schedule("tick", spec.clone(), t.process.clone(), json!({}))
        .await
        .unwrap();
    let first = next_minute(t.now() + 1);
    // Down for five fires: a new engine on the same database, five minutes later.
    let later = t.restart(first + 4 * MINUTE_MS + 10_000);
    later
        .engine
        .register_schedule("tick", spec, later.process.clone(), json!({}))
        .await
        .unwrap();
    later.engine.tick_schedules().await.unwrap();
    let want: Vec<(u64, FireOutcome)> = (0..4)
        .map(|i| (first + i * MINUTE_MS, FireOutcome::Missed))
        .chain([(first + 4 * MINUTE_MS, FireOutcome::Started)])
        .collect();
    assert_eq!(outcomes(&later, "tick").await, want);
}

#[tokio::test]
async fn overlap_skip_skips_fires_while_a_run_is_in_progress() {
    let slow = proctor::agent::example::Behaviour {
        delay_ms: 60_000,
        ..Default::default()
    };
    let t = TestEngine::start(ONE_STEP, &[("worker", slow)]).await;
    let spec = every_minute(Missed::Skip, Overlap::Skip);
    t.engine
        .register_schedule("tick", spec, t.process.clone(), json!({}))
        .await
        .unwrap();
    let first = next_minute(t.now() + 1);
    t.clock.advance_ms(first - t.now());
    t.engine.tick_schedules().await.unwrap();
    t.clock.advance_ms(MINUTE_MS);
    t.engine.tick_schedules().await.unwrap();
    assert_eq!(
        outcomes(&t, "tick").await,
        vec![
            (first, FireOutcome::Started),
            (first + MINUTE_MS, FireOutcome::Overlap)
        ]
    );
}

#[tokio::test]
async fn a_fire_committed_as_started_but_never_created_is_created_by_the_next_tick() {
    let t = TestEngine::start(ONE_STEP, &[("worker", Default::default())]).await;
    let spec = every_minute(Missed::Skip, Overlap::AllowAll);
    t.engine
        .register_schedule("tick", spec, t.process.clone(), json!({}))
        .await
        .unwrap();
    let record = t.engine.store().schedules().await.unwrap().remove(0);
    let at_ms = next_minute(t.now() + 1);
    let fire = proctor::schedule::Fire {
        at_ms,
        local: "x".into(),
        utc: "x".into(),
    };
    // What a crash right after the scheduler's commit leaves behind.
    let started = FireRecord {
        execution_id: Some(run_id("tick", &fire)),
        fire,
        outcome: FireOutcome::Started,
        decided_at_ms: t.now(),
    };
    t.engine
        .store()
        .commit_fires("tick", &record.state, &[started], &[])
        .await
        .unwrap();
    assert!(t
        .engine
        .load(&format!("tick-{at_ms}"))
        .await
        .unwrap()
        .is_none());
    t.engine.tick_schedules().await.unwrap();
    let id = format!("tick-{at_ms}");
    eventually("the missing run is created and completes", || {
        t.execution_row(&id).status == "completed"
    })
    .await;
}

#[tokio::test]
async fn a_bad_schedule_is_refused_with_its_field() {
    let t = TestEngine::start(ONE_STEP, &[("worker", Default::default())]).await;
    let mut spec = every_minute(Missed::Skip, Overlap::Skip);
    spec.timezone = "Mars/Olympus".into();
    let err = t
        .engine
        .register_schedule("tick", spec, t.process.clone(), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("timezone"), "{err}");
    let err = t
        .engine
        .register_schedule(
            "bad name",
            every_minute(Missed::Skip, Overlap::Skip),
            t.process.clone(),
            json!({}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("name \"bad name\""), "{err}");
}

#[tokio::test]
async fn a_tenants_schedule_runs_as_that_tenant_and_its_name_is_its_own() {
    let t = TestEngine::start(ONE_STEP, &[("worker", Default::default())]).await;
    let acme = t.engine.tenant("acme").unwrap();
    acme.register_definition((*t.process).clone())
        .await
        .unwrap();
    let spec = every_minute(Missed::Skip, Overlap::AllowAll);
    acme.register_schedule("tick", spec.clone(), "tick", json!({}))
        .await
        .unwrap();
    let globex = t.engine.tenant("globex").unwrap();
    globex
        .register_definition((*t.process).clone())
        .await
        .unwrap();
    let taken = globex
        .register_schedule("tick", spec, "tick", json!({}))
        .await
        .unwrap_err();
    assert!(taken.to_string().contains("the name is taken"), "{taken}");
    let first = next_minute(t.now() + 1);
    t.clock.advance_ms(first - t.now());
    t.engine.tick_schedules().await.unwrap();
    let id = format!("tick-{first}");
    assert!(acme.load(&id).await.unwrap().is_some(), "the run is acme's");
    assert!(globex.load(&id).await.unwrap().is_none());
}
