//! Recovery after a crash. The crashed engine is simulated without killing a process (a
//! separate test does real SIGKILL): [`DeadEngine`] drives executions with the pure core and
//! commits every transition exactly as the driver would, but performs only the commands the
//! test says it performed before dying. A fresh engine (new ManualClock, same SQLite file, same
//! real agents) then runs [`Engine::recover`](proctor::Engine::recover).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use proctor::core::{Execution, ExecutionStatus, Input, Lane, RecoveryAction, StepStatus};
use proctor::event::{DomainEvent, SystemEvent};
use proctor::RecoveryConfig;
use proctor_tests::*;
use serde_json::json;

/// When the dead engine did its work.
const DIED_AT: u64 = T0;
/// When the fresh engine starts: half a minute later.
const RESTART_AT: u64 = T0 + 30_000;
const HOUR: u64 = 3_600_000;

fn default_config() -> RecoveryConfig {
    RecoveryConfig::default()
}

/// A pending execution: created, never started.
async fn pending(t: &TestEngine, dead: &mut DeadEngine, text: &str, created: u64) -> Execution {
    dead.create(&t.process, json!({ "text": text }), created)
        .await
}

/// Started; the engine died after committing `a` as running, before sending its request.
async fn a_in_flight(t: &TestEngine, dead: &mut DeadEngine, text: &str, created: u64) -> Execution {
    let mut e = pending(t, dead, text, created).await;
    let commands = dead.apply(&mut e, Input::Start, created).await;
    call_of(&commands, "a");
    e
}

/// `a` completed (its request sent and answered); `b` committed as running and, if `sent`,
/// its request sent too (the agent applied the effect) but the answer lost in the crash.
async fn b_in_flight(
    t: &TestEngine,
    dead: &mut DeadEngine,
    text: &str,
    created: u64,
    sent: bool,
) -> Execution {
    let mut e = pending(t, dead, text, created).await;
    let commands = dead.apply(&mut e, Input::Start, created).await;
    let answer = dead.call(&e, call_of(&commands, "a")).await;
    let commands = dead.apply(&mut e, answer, created + 100).await;
    let call_b = call_of(&commands, "b");
    if sent {
        let _lost = dead.call(&e, call_b).await;
    }
    assert_eq!(step(&e, "a").status, StepStatus::Completed);
    assert_eq!(step(&e, "b").status, StepStatus::Running);
    e
}

/// Run to completion by the dead engine before it died.
async fn completed(t: &TestEngine, dead: &mut DeadEngine, text: &str, created: u64) -> Execution {
    let mut e = pending(t, dead, text, created).await;
    let commands = dead.apply(&mut e, Input::Start, created).await;
    let answer = dead.call(&e, call_of(&commands, "a")).await;
    let commands = dead.apply(&mut e, answer, created + 100).await;
    let answer = dead.call(&e, call_of(&commands, "b")).await;
    let commands = dead.apply(&mut e, answer, created + 200).await;
    assert!(commands.is_empty());
    assert_eq!(e.status, ExecutionStatus::Completed);
    e
}

fn actions(report: &proctor::RecoveryReport) -> BTreeMap<String, RecoveryAction> {
    let map: BTreeMap<_, _> = report.actions.iter().cloned().collect();
    assert_eq!(map.len(), report.actions.len(), "one action per execution");
    map
}

fn pair(id: &str, step: &str) -> (String, String) {
    (id.to_string(), step.to_string())
}

/// Asserts that agent `worker` applied exactly one effect for each `(execution, step)` and no
/// other.
fn assert_effects_once(t: &TestEngine, expected: &[(&str, &str)]) {
    let expected: BTreeMap<(String, String), u32> =
        expected.iter().map(|(id, s)| (pair(id, s), 1)).collect();
    assert_eq!(t.effects("worker"), expected, "effects per step");
}

/// Asserts the execution completed, in the store, with both steps completed on attempt 1 and
/// the output built from the agent's echo.
fn assert_pair_completed(t: &TestEngine, id: &str, text: &str) {
    let row = t.execution_row(id);
    assert_eq!(row.status, "completed", "{row:?}");
    for s in ["a", "b"] {
        let r = t.step_row(id, s);
        assert_eq!(
            (r.status.as_str(), r.attempt),
            ("completed", 1),
            "{s}: {r:?}"
        );
    }
    let output = row.output.expect("output stored");
    assert_eq!(output["a"]["echo"], json!({ "text": text }));
    assert_eq!(output["b"]["echo"], json!({ "prev": text }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resume_execution_between_steps() {
    // This core commits "a completed" and "b started" in one transaction, so the state "a
    // done, b not started, nothing at the agent" is reached with a durable wait between them.
    let yaml = "
name: gap
steps:
  - { id: a, type: agent_task, agent: worker, input: { text: '{{input.text}}' } }
  - { id: gap, type: timer, duration: 1m, depends_on: [a] }
  - { id: b, type: agent_task, agent: worker, depends_on: [gap], input: { prev: '{{steps.a.output.echo.text}}' } }
";
    let t = TestEngine::start(yaml, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let mut e = pending(&t, &mut dead, "between", DIED_AT).await;
    let commands = dead.apply(&mut e, Input::Start, DIED_AT).await;
    let answer = dead.call(&e, call_of(&commands, "a")).await;
    let commands = dead.apply(&mut e, answer, DIED_AT + 100).await;
    assert!(
        commands
            .iter()
            .all(|c| !matches!(c, proctor::core::Command::CallAgent(_))),
        "no agent call in flight: {commands:?}"
    );
    let id = e.id.clone();
    let before = t.events_of(&id).await;
    assert_eq!(t.step_row(&id, "a").status, "completed");
    assert_eq!(t.step_row(&id, "b").status, "pending");

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (1, 0, 0, 0)
    );
    assert!(report.errors.is_empty());
    assert_eq!(report.actions, [(id.clone(), RecoveryAction::Resume)]);
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished[&id].status, ExecutionStatus::Completed);

    let row = t2.execution_row(&id);
    assert_eq!(row.status, "completed");
    assert_eq!(t2.step_row(&id, "a").attempt, 1);
    assert_eq!(t2.step_row(&id, "b").status, "completed");
    assert_eq!(
        row.output.unwrap()["b"]["echo"],
        json!({ "prev": "between" })
    );
    // The timer fired at its stored deadline.
    assert_eq!(
        t2.step_row(&id, "gap").finished_at_ms,
        Some((DIED_AT + 100 + 60_000) as i64)
    );

    let events = t2.events_of(&id).await;
    assert_eq!(events[..before.len()], before[..], "history kept");
    assert_eq!(
        labels(&events[before.len()..]),
        [
            "ExecutionRecovered",
            "StepCompleted:gap",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted"
        ]
    );
    assert_eq!(recovered_actions(&events), [RecoveryAction::Resume]);
    assert_eq!(t2.bus_events_of(&id), events[before.len()..]);

    assert_eq!(t2.requested_steps("worker"), ["a", "b"], "a is not re-run");
    assert_effects_once(&t2, &[(&id, "a"), (&id, "b")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resume_pending_execution() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let id = pending(&t, &mut dead, "never started", DIED_AT).await.id;
    assert_eq!(t.execution_row(&id).status, "pending");
    assert!(t.events_of(&id).await.is_empty());

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (1, 0, 0, 0)
    );
    assert_eq!(report.actions, [(id.clone(), RecoveryAction::Resume)]);
    assert_eq!(recovery.handles.len(), 1);
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished[&id].status, ExecutionStatus::Completed);

    assert_pair_completed(&t2, &id, "never started");
    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionRecovered",
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(recovered_actions(&events), [RecoveryAction::Resume]);
    assert!(events.iter().all(|e| e.at_ms >= RESTART_AT));
    assert_eq!(t2.requested_steps("worker"), ["a", "b"]);
    assert_effects_once(&t2, &[(&id, "a"), (&id, "b")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_retry_running_step() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    // The agent received b's request and applied its effect; the answer died with the engine.
    let id = b_in_flight(&t, &mut dead, "in flight", DIED_AT, true)
        .await
        .id;
    let sent = t.requests("worker");
    assert_eq!(sent.len(), 2);
    let before = t.events_of(&id).await;

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (0, 1, 0, 0)
    );
    assert_eq!(report.actions, [(id.clone(), RecoveryAction::RetryStep)]);
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished[&id].status, ExecutionStatus::Completed);
    assert_pair_completed(&t2, &id, "in flight");

    // b re-dispatched with the same request: same attempt, same idempotency key, same input.
    let requests = t2.requests("worker");
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[..2], sent[..]);
    assert_eq!(requests[2], sent[1]);
    assert_eq!(
        (requests[2].step_id.as_str(), requests[2].attempt),
        ("b", 1)
    );
    assert_eq!(
        t2.attempts("worker"),
        BTreeMap::from([(pair(&id, "a"), 1), (pair(&id, "b"), 2)])
    );
    assert_effects_once(&t2, &[(&id, "a"), (&id, "b")]);

    let events = t2.events_of(&id).await;
    assert_eq!(events[..before.len()], before[..]);
    assert_eq!(
        labels(&events[before.len()..]),
        [
            "ExecutionRecovered",
            "StepCompleted:b",
            "ExecutionCompleted"
        ],
        "b is not started again: its attempt is re-issued"
    );
    assert_eq!(recovered_actions(&events), [RecoveryAction::RetryStep]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_retry_running_step_keeps_its_attempt_number() {
    let yaml = "
name: flaky
steps:
  - id: a
    type: agent_task
    agent: worker
    retry: { max_attempts: 3, initial_delay: 1s, jitter: 0 }
";
    let t = TestEngine::start(yaml, &[("worker", flaky(1))]).await;
    let mut dead = t.dead_engine();
    let mut e = dead.create(&t.process, json!({}), DIED_AT).await;
    let commands = dead.apply(&mut e, Input::Start, DIED_AT).await;
    let answer = dead.call(&e, call_of(&commands, "a")).await;
    assert!(matches!(
        &answer,
        Input::AgentReturned {
            lane: Lane::Main,
            result: Err(_),
            ..
        }
    ));
    let commands = dead.apply(&mut e, answer, DIED_AT + 10).await;
    assert_eq!(step(&e, "a").status, StepStatus::Retrying);
    assert_eq!(commands.len(), 1, "{commands:?}");
    let commands = dead
        .apply(
            &mut e,
            Input::Wake {
                lane: Lane::Main,
                step: 0,
                attempt: 1,
            },
            DIED_AT + 1_010,
        )
        .await;
    call_of(&commands, "a");
    assert_eq!(step(&e, "a").attempt, 2);
    let id = e.id.clone();
    // Died with attempt 2 committed as running, its request never sent.

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    assert_eq!(
        recovery.report.actions,
        [(id.clone(), RecoveryAction::RetryStep)]
    );
    let finished = wait_all(recovery.handles).await;
    let execution = &finished[&id];
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(execution, "a").attempt, 2);
    assert_eq!(step(execution, "a").output.as_ref().unwrap()["attempt"], 2);

    let requests = t2.requests("worker");
    assert_eq!(
        requests.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2],
        "attempt 2 re-issued as attempt 2, not 3"
    );
    assert_eq!(requests[0].idempotency_key, requests[1].idempotency_key);
    assert_effects_once(&t2, &[(&id, "a")]);
    let row = t2.step_row(&id, "a");
    assert_eq!((row.attempt, row.retry_count), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_retry_first_step_running() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let id = a_in_flight(&t, &mut dead, "first", DIED_AT).await.id;
    assert_eq!(t.step_row(&id, "a").status, "running");
    assert!(
        t.requests("worker").is_empty(),
        "the request never went out"
    );

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (0, 1, 0, 0)
    );
    assert_eq!(report.actions, [(id.clone(), RecoveryAction::RetryStep)]);
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished[&id].status, ExecutionStatus::Completed);
    assert_pair_completed(&t2, &id, "first");

    let requests = t2.requests("worker");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        (
            requests[0].step_id.as_str(),
            requests[0].attempt,
            &requests[0].input
        ),
        ("a", 1, &json!({ "text": "first" }))
    );
    assert!(requests[0].idempotency_key.contains(&id));
    assert_effects_once(&t2, &[(&id, "a"), (&id, "b")]);

    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionRecovered",
            "StepCompleted:a",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(recovered_actions(&events), [RecoveryAction::RetryStep]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mark_failed_old_execution() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let created = RESTART_AT - 25 * HOUR;
    let id = a_in_flight(&t, &mut dead, "old", created).await.id;

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (0, 0, 1, 0)
    );
    assert!(report.errors.is_empty());
    assert_eq!(report.actions, [(id.clone(), RecoveryAction::MarkFailed)]);
    assert!(recovery.handles.is_empty(), "nothing to drive");

    let row = t2.execution_row(&id);
    assert_eq!(row.status, "failed");
    let error = row.error.expect("error stored");
    assert!(error.contains("age limit"), "{error}");
    assert_eq!(row.output, None);
    assert_eq!(t2.step_row(&id, "a").status, "cancelled");
    assert_eq!(t2.step_row(&id, "b").status, "pending");
    assert!(t2.engine.store().list_active().await.unwrap().is_empty());

    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionRecovered",
            "StepCancelled:a",
            "ExecutionFailed",
        ],
    );
    assert_eq!(recovered_actions(&events), [RecoveryAction::MarkFailed]);
    assert_eq!(events[2].at_ms, RESTART_AT);
    match event(&events, "ExecutionFailed") {
        DomainEvent::ExecutionFailed { step, error: e } => {
            assert_eq!(*step, None);
            assert_eq!(*e, error);
        }
        other => panic!("{other:?}"),
    }

    settle().await;
    assert!(t2.requests("worker").is_empty(), "no agent call");
    assert!(t2.effects("worker").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mark_failed_custom_age_threshold() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let two_hours = a_in_flight(&t, &mut dead, "2h", RESTART_AT - 2 * HOUR)
        .await
        .id;
    // Exactly at the limit is not older than it.
    let one_hour = pending(&t, &mut dead, "1h", RESTART_AT - HOUR).await.id;
    let half_hour = pending(&t, &mut dead, "30m", RESTART_AT - HOUR / 2)
        .await
        .id;

    let t2 = t.restart(RESTART_AT);
    let recovery = t2
        .recover(RecoveryConfig {
            max_age_hours: 1,
            dry_run: false,
        })
        .await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (2, 0, 1, 0)
    );
    assert_eq!(
        report.actions,
        [
            (two_hours.clone(), RecoveryAction::MarkFailed),
            (one_hour.clone(), RecoveryAction::Resume),
            (half_hour.clone(), RecoveryAction::Resume),
        ],
        "oldest first"
    );
    let finished = wait_all(recovery.handles).await;
    assert_eq!(
        finished.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([one_hour.clone(), half_hour.clone()])
    );

    assert_eq!(t2.execution_row(&two_hours).status, "failed");
    assert_pair_completed(&t2, &one_hour, "1h");
    assert_pair_completed(&t2, &half_hour, "30m");
    assert_eq!(
        recovered_actions(&t2.events_of(&two_hours).await),
        [RecoveryAction::MarkFailed]
    );
    assert_effects_once(
        &t2,
        &[
            (&one_hour, "a"),
            (&one_hour, "b"),
            (&half_hour, "a"),
            (&half_hour, "b"),
        ],
    );

    // The same 2-hour-old execution would have been retried under the default limit: the
    // threshold, not the state, decided.
    let t3 = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t3.dead_engine();
    let id = a_in_flight(&t3, &mut dead, "2h", RESTART_AT - 2 * HOUR)
        .await
        .id;
    let t4 = t3.restart(RESTART_AT);
    let recovery = t4.recover(default_config()).await;
    assert_eq!(recovery.report.actions, [(id, RecoveryAction::RetryStep)]);
    wait_all(recovery.handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_skip_completed_execution() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let done = completed(&t, &mut dead, "done", DIED_AT).await.id;
    let done_events = t.events_of(&done).await;
    let done_rows = (
        t.execution_row(&done),
        t.step_row(&done, "a"),
        t.step_row(&done, "b"),
        t.event_rows(&done),
    );
    assert_eq!(done_rows.0.status, "completed");

    // Only the terminal one: nothing to do.
    let t2 = t.restart(RESTART_AT);
    assert!(t2.engine.store().list_active().await.unwrap().is_empty());
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (0, 0, 0, 0)
    );
    assert!(report.actions.is_empty() && report.errors.is_empty());
    assert!(recovery.handles.is_empty());

    // Next to an active one: only the active one is recovered.
    let mut dead = t2.dead_engine();
    let active = a_in_flight(&t2, &mut dead, "active", DIED_AT + 1_000)
        .await
        .id;
    let t3 = t2.restart(RESTART_AT);
    assert_eq!(
        t3.engine.store().list_active().await.unwrap(),
        vec![active.clone()]
    );
    let recovery = t3.recover(default_config()).await;
    assert_eq!(
        recovery.report.actions,
        [(active.clone(), RecoveryAction::RetryStep)]
    );
    assert_eq!(recovery.report.skipped, 0);
    wait_all(recovery.handles).await;
    assert_pair_completed(&t3, &active, "active");

    assert_eq!(t3.events_of(&done).await, done_events, "events unchanged");
    assert_eq!(
        (
            t3.execution_row(&done),
            t3.step_row(&done, "a"),
            t3.step_row(&done, "b"),
            t3.event_rows(&done),
        ),
        done_rows,
        "rows unchanged"
    );
    assert!(recovered_actions(&done_events).is_empty());
    assert!(t3.bus_events_of(&done).is_empty());
    assert_eq!(
        t3.requests("worker")
            .iter()
            .filter(|r| r.execution_id == done)
            .count(),
        2,
        "only the calls it made before the crash"
    );
    assert_effects_once(
        &t3,
        &[(&done, "a"), (&done, "b"), (&active, "a"), (&active, "b")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mixed_batch_recovery() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let old = a_in_flight(&t, &mut dead, "old", RESTART_AT - 30 * HOUR)
        .await
        .id;
    let done = completed(&t, &mut dead, "done", DIED_AT).await.id;
    let pending_1 = pending(&t, &mut dead, "p1", DIED_AT + 1).await.id;
    let a_running = a_in_flight(&t, &mut dead, "ra", DIED_AT + 2).await.id;
    let b_sent = b_in_flight(&t, &mut dead, "rb", DIED_AT + 3, true).await.id;
    let b_unsent = b_in_flight(&t, &mut dead, "rb2", DIED_AT + 4, false)
        .await
        .id;
    let pending_2 = pending(&t, &mut dead, "p2", DIED_AT + 5).await.id;

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (2, 3, 1, 0)
    );
    assert!(report.errors.is_empty());
    assert_eq!(
        report.actions.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        [&old, &pending_1, &a_running, &b_sent, &b_unsent, &pending_2],
        "scan order is oldest first; the completed one is not scanned"
    );
    assert_eq!(
        actions(report),
        BTreeMap::from([
            (old.clone(), RecoveryAction::MarkFailed),
            (pending_1.clone(), RecoveryAction::Resume),
            (a_running.clone(), RecoveryAction::RetryStep),
            (b_sent.clone(), RecoveryAction::RetryStep),
            (b_unsent.clone(), RecoveryAction::RetryStep),
            (pending_2.clone(), RecoveryAction::Resume),
        ])
    );
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished.len(), 5);
    assert!(!finished.contains_key(&old));

    assert_eq!(t2.execution_row(&old).status, "failed");
    assert_eq!(t2.execution_row(&done).status, "completed");
    for (id, text) in [
        (&pending_1, "p1"),
        (&a_running, "ra"),
        (&b_sent, "rb"),
        (&b_unsent, "rb2"),
        (&pending_2, "p2"),
    ] {
        assert_eq!(finished[id].status, ExecutionStatus::Completed, "{text}");
        assert_pair_completed(&t2, id, text);
    }
    for (id, action) in &report.actions {
        assert_eq!(
            recovered_actions(&t2.events_of(id).await),
            [*action],
            "{id}"
        );
    }
    assert!(t2.engine.store().list_active().await.unwrap().is_empty());

    let mut expected = vec![];
    for id in [
        &done, &pending_1, &a_running, &b_sent, &b_unsent, &pending_2,
    ] {
        expected.push((id.as_str(), "a"));
        expected.push((id.as_str(), "b"));
    }
    assert_effects_once(&t2, &expected);
    let attempts = t2.attempts("worker");
    assert_eq!(attempts[&pair(&b_sent, "b")], 2, "sent before and after");
    assert_eq!(
        attempts.values().sum::<u32>(),
        13,
        "one request per step, plus b_sent's re-dispatch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_recovery_continues_on_error() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let first = pending(&t, &mut dead, "first", DIED_AT).await.id;
    let broken = a_in_flight(&t, &mut dead, "broken", DIED_AT + 1).await.id;
    let last = a_in_flight(&t, &mut dead, "last", DIED_AT + 2).await.id;
    let changed = t
        .sql()
        .execute(
            "UPDATE execution_inputs SET definition = '{not json' WHERE execution_id = ?1",
            [&broken],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let broken_events = t.events_of(&broken).await;

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = &recovery.report;
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].execution_id, broken);
    assert!(
        report.errors[0].error.contains("definition"),
        "{}",
        report.errors[0].error
    );
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(
        report.actions,
        [
            (first.clone(), RecoveryAction::Resume),
            (last.clone(), RecoveryAction::RetryStep)
        ]
    );
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished.len(), 2);
    assert_pair_completed(&t2, &first, "first");
    assert_pair_completed(&t2, &last, "last");

    let system = t2.system_events();
    assert_eq!(system.len(), 3, "{system:#?}");
    assert_eq!(
        system[1],
        SystemEvent::ExecutionRecoveryFailed {
            at_ms: RESTART_AT,
            execution_id: broken.clone(),
            error: report.errors[0].error.clone(),
        }
    );
    assert!(matches!(
        system[2],
        SystemEvent::RecoveryCompleted {
            resumed: 1,
            retried: 1,
            errors: 1,
            ..
        }
    ));

    // The broken one is left exactly as it was (and is still active, for a person to look at).
    assert_eq!(t2.events_of(&broken).await, broken_events);
    assert_eq!(t2.execution_row(&broken).status, "running");
    assert_eq!(
        t2.engine.store().list_active().await.unwrap(),
        vec![broken.clone()]
    );
    assert!(t2
        .requests("worker")
        .iter()
        .all(|r| r.execution_id != broken));
    assert_effects_once(
        &t2,
        &[(&first, "a"), (&first, "b"), (&last, "a"), (&last, "b")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_recovery_events_emitted() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let old = a_in_flight(&t, &mut dead, "old", RESTART_AT - 48 * HOUR)
        .await
        .id;
    let waiting = pending(&t, &mut dead, "p", DIED_AT).await.id;
    let running = b_in_flight(&t, &mut dead, "r", DIED_AT + 1, false).await.id;
    let before: BTreeMap<String, usize> = {
        let mut m = BTreeMap::new();
        for id in [&old, &waiting, &running] {
            m.insert(id.clone(), t.events_of(id).await.len());
        }
        m
    };

    let t2 = t.restart(RESTART_AT);
    let recovery = t2.recover(default_config()).await;
    let report = recovery.report.clone();
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished.len(), 2);

    assert_eq!(
        t2.system_events(),
        [
            SystemEvent::RecoveryStarted {
                at_ms: RESTART_AT,
                active: 3,
                dry_run: false,
            },
            SystemEvent::RecoveryCompleted {
                at_ms: RESTART_AT,
                resumed: 1,
                retried: 1,
                failed: 1,
                skipped: 0,
                errors: 0,
            },
        ]
    );
    assert_eq!(
        (report.started_at_ms, report.finished_at_ms),
        (RESTART_AT, RESTART_AT)
    );

    for (id, action) in [
        (&old, RecoveryAction::MarkFailed),
        (&waiting, RecoveryAction::Resume),
        (&running, RecoveryAction::RetryStep),
    ] {
        assert_eq!(actions(&report)[id], action);
        let events = t2.events_of(id).await;
        // The first event the new engine wrote is the recovery, numbered on from the history.
        let recovered = &events[before[id]];
        assert_eq!(recovered.event, DomainEvent::ExecutionRecovered { action });
        assert_eq!(recovered.seq, before[id] as u64 + 1);
        assert_eq!(recovered.at_ms, RESTART_AT);
        assert_eq!(recovered_actions(&events), [action]);
        // The bus delivered exactly what was stored after the restart.
        assert_eq!(t2.bus_events_of(id), events[before[id]..], "{id}");
        let stored = t2.event_rows(id);
        assert_eq!(stored[before[id]].kind, "ExecutionRecovered");
        assert_eq!(
            stored[before[id]].payload,
            json!({
                "type": "ExecutionRecovered",
                "action": serde_json::to_value(action).unwrap()
            })
        );
    }
    assert_eq!(
        t2.event_rows(&waiting)[0].payload,
        json!({"type": "ExecutionRecovered", "action": "resume"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_dry_run_mode() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let old = a_in_flight(&t, &mut dead, "old", RESTART_AT - 25 * HOUR)
        .await
        .id;
    let done = completed(&t, &mut dead, "done", DIED_AT).await.id;
    let waiting = pending(&t, &mut dead, "p", DIED_AT + 1).await.id;
    let running = b_in_flight(&t, &mut dead, "r", DIED_AT + 2, true).await.id;
    let requests_before = t.requests("worker");
    let dump_before = t.dump();

    let t2 = t.restart(RESTART_AT);
    let recovery = t2
        .recover(RecoveryConfig {
            dry_run: true,
            ..RecoveryConfig::default()
        })
        .await;
    let report = &recovery.report;
    assert!(report.dry_run);
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (1, 1, 1, 0)
    );
    assert!(report.errors.is_empty());
    assert_eq!(
        actions(report),
        BTreeMap::from([
            (old.clone(), RecoveryAction::MarkFailed),
            (waiting.clone(), RecoveryAction::Resume),
            (running.clone(), RecoveryAction::RetryStep),
        ])
    );
    assert!(recovery.handles.is_empty(), "a dry run starts nothing");
    assert!(report.summary().contains("dry run"), "{}", report.summary());

    settle().await;
    assert_eq!(t2.dump(), dump_before, "a dry run changes nothing");
    assert_eq!(t2.requests("worker"), requests_before, "no agent request");
    assert!(t2.captured.lock().unwrap().is_empty(), "no domain event");
    assert_eq!(
        t2.system_events(),
        [
            SystemEvent::RecoveryStarted {
                at_ms: RESTART_AT,
                active: 3,
                dry_run: true,
            },
            SystemEvent::RecoveryCompleted {
                at_ms: RESTART_AT,
                resumed: 1,
                retried: 1,
                failed: 1,
                skipped: 0,
                errors: 0,
            },
        ]
    );
    assert_eq!(t2.engine.last_recovery_report().as_ref(), Some(report));

    // The real recovery afterwards finds the same work.
    let recovery = t2.recover(default_config()).await;
    assert!(!recovery.report.dry_run);
    assert_eq!(recovery.report.actions, report.actions);
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished.len(), 2);
    assert_pair_completed(&t2, &waiting, "p");
    assert_pair_completed(&t2, &running, "r");
    assert_eq!(t2.execution_row(&old).status, "failed");
    assert_effects_once(
        &t2,
        &[
            (&done, "a"),
            (&done, "b"),
            (&waiting, "a"),
            (&waiting, "b"),
            (&running, "a"),
            (&running, "b"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_last_recovery_report_stored() {
    let t = TestEngine::start(PAIR, &[("worker", echo())]).await;
    let mut dead = t.dead_engine();
    let id = a_in_flight(&t, &mut dead, "x", DIED_AT).await.id;

    let t2 = t.restart(RESTART_AT);
    assert_eq!(t2.engine.last_recovery_report(), None);
    let recovery = t2.recover(default_config()).await;
    assert_eq!(
        t2.engine.last_recovery_report().as_ref(),
        Some(&recovery.report)
    );
    assert_eq!(recovery.report.actions, [(id, RecoveryAction::RetryStep)]);
    wait_all(recovery.handles).await;

    // A later scan replaces it.
    let again = t2.recover(default_config()).await;
    assert!(again.report.actions.is_empty());
    assert_eq!(t2.engine.last_recovery_report(), Some(again.report));
    // Each engine keeps its own.
    assert_eq!(t.engine.last_recovery_report(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_durable_timer_fires_at_original_deadline_after_restart() {
    let yaml = "
name: nap
steps:
  - { id: wait, type: timer, duration: 10m }
  - { id: b, type: agent_task, agent: worker, depends_on: [wait], input: { waited: '{{steps.wait.output.waited_ms}}' } }
";
    const TEN_MIN: u64 = 600_000;
    for (restart_at, fired_at) in [
        // Restarted 3 minutes in: fires at T+10m (not T+13m).
        (T0 + 180_000, T0 + TEN_MIN),
        // Restarted after the deadline: fires at once.
        (T0 + 1_200_000, T0 + 1_200_000),
    ] {
        let t = TestEngine::start(yaml, &[("worker", echo())]).await;
        let mut dead = t.dead_engine();
        let mut e = dead.create(&t.process, json!({}), T0).await;
        let commands = dead.apply(&mut e, Input::Start, T0).await;
        assert_eq!(commands.len(), 1, "{commands:?}");
        let id = e.id.clone();
        assert_eq!(
            t.step_row(&id, "wait").wake_at_ms,
            Some((T0 + TEN_MIN) as i64)
        );

        let t2 = t.restart(restart_at);
        let began = Instant::now();
        let recovery = t2.recover(default_config()).await;
        assert_eq!(
            recovery.report.actions,
            [(id.clone(), RecoveryAction::Resume)]
        );
        let finished = wait_all(recovery.handles).await;
        assert!(began.elapsed().as_secs() < 5, "no real waiting");
        let execution = &finished[&id];
        assert_eq!(execution.status, ExecutionStatus::Completed);

        let waited = fired_at - T0;
        let output = step(execution, "wait").output.clone().unwrap();
        assert_eq!(output["waited_ms"], waited, "restart at {restart_at}");
        assert_eq!(output["deadline_ms"], T0 + TEN_MIN);
        let events = t2.events_of(&id).await;
        match event(&events, "StepCompleted:wait") {
            DomainEvent::StepCompleted { output: o, .. } => assert_eq!(*o, output),
            other => panic!("{other:?}"),
        }
        let completed_at = events
            .iter()
            .find(|e| e.event.kind() == "StepCompleted" && e.event.step() == Some("wait"))
            .unwrap()
            .at_ms;
        assert_eq!(completed_at, fired_at, "restart at {restart_at}");
        let row = t2.step_row(&id, "wait");
        assert_eq!(row.started_at_ms, Some(T0 as i64), "start time kept");
        assert_eq!(row.finished_at_ms, Some(fired_at as i64));
        assert_event_sequence(
            &events,
            &[
                "ExecutionStarted",
                "StepStarted:wait",
                "ExecutionRecovered",
                "StepCompleted:wait",
                "StepStarted:b",
                "StepCompleted:b",
                "ExecutionCompleted",
            ],
        );
        let requests = t2.requests("worker");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].input, json!({ "waited": waited }));
        assert_effects_once(&t2, &[(&id, "b")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_retry_backoff_rearmed_at_original_deadline_after_restart() {
    let yaml = "
name: backoff
steps:
  - id: a
    type: agent_task
    agent: worker
    retry: { max_attempts: 3, initial_delay: 10s, jitter: 0 }
";
    let t = TestEngine::start(yaml, &[("worker", flaky(1))]).await;
    let mut dead = t.dead_engine();
    let mut e = dead.create(&t.process, json!({}), T0).await;
    let commands = dead.apply(&mut e, Input::Start, T0).await;
    let answer = dead.call(&e, call_of(&commands, "a")).await;
    dead.apply(&mut e, answer, T0).await;
    // Died during the backoff: attempt 2 is due at T0+10s.
    let id = e.id.clone();
    let row = t.step_row(&id, "a");
    assert_eq!(row.status, "retrying");
    assert_eq!(row.wake_at_ms, Some((T0 + 10_000) as i64));

    let t2 = t.restart(T0 + 3_000);
    let recovery = t2.recover(default_config()).await;
    assert_eq!(
        recovery.report.actions,
        [(id.clone(), RecoveryAction::Resume)],
        "no call was in flight"
    );
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished[&id].status, ExecutionStatus::Completed);
    assert_eq!(step(&finished[&id], "a").attempt, 2);

    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepRetrying:a",
            "ExecutionRecovered",
            "StepStarted:a",
            "StepCompleted:a",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(
        events[4].at_ms,
        T0 + 10_000,
        "attempt 2 at the stored deadline"
    );
    assert_eq!(
        t2.requests("worker")
            .iter()
            .map(|r| r.attempt)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_effects_once(&t2, &[(&id, "a")]);
}

/// One pending execution, one with `a` in flight (unsent), one with `b` in flight (sent).
async fn three_interrupted(t: &TestEngine) -> Vec<String> {
    let mut dead = t.dead_engine();
    vec![
        pending(t, &mut dead, "p", DIED_AT).await.id,
        a_in_flight(t, &mut dead, "a", DIED_AT + 1).await.id,
        b_in_flight(t, &mut dead, "b", DIED_AT + 2, true).await.id,
    ]
}

fn assert_driven_once(t: &TestEngine, ids: &[String]) {
    let mut expected = vec![];
    for id in ids {
        let text = t.execution_row(id).input["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert_pair_completed(t, id, &text);
        expected.push((id.as_str(), "a"));
        expected.push((id.as_str(), "b"));
    }
    assert_effects_once(t, &expected);
    // Requests: the pending and a-in-flight executions one per step; the b-in-flight one had a
    // and b sent before the crash, and b once more after.
    let attempts = t.attempts("worker");
    assert_eq!(
        attempts,
        BTreeMap::from([
            (pair(&ids[0], "a"), 1),
            (pair(&ids[0], "b"), 1),
            (pair(&ids[1], "a"), 1),
            (pair(&ids[1], "b"), 1),
            (pair(&ids[2], "a"), 1),
            (pair(&ids[2], "b"), 2),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_concurrent_recovery_does_not_double() {
    // Twice in a row while the first scan's executions are still live (the agent is slow).
    let t = TestEngine::start(PAIR, &[("worker", slow(300))]).await;
    let ids = three_interrupted(&t).await;
    let t2 = t.restart(RESTART_AT);
    let first = t2.recover(default_config()).await;
    assert_eq!(
        (first.report.resumed, first.report.retried),
        (1, 2),
        "{:?}",
        first.report
    );
    assert_eq!(first.handles.len(), 3);
    let second = t2.recover(default_config()).await;
    let report = &second.report;
    assert_eq!(
        (
            report.resumed,
            report.retried,
            report.failed,
            report.skipped
        ),
        (0, 0, 0, 3),
        "{report:?}"
    );
    assert!(report
        .actions
        .iter()
        .all(|(_, a)| *a == RecoveryAction::Skip));
    assert!(second.handles.is_empty());
    let finished = wait_all(first.handles).await;
    assert_eq!(finished.keys().cloned().collect::<Vec<_>>(), {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted
    });
    assert_driven_once(&t2, &ids);
    for id in &ids {
        assert_eq!(recovered_actions(&t2.events_of(id).await).len(), 1, "{id}");
    }

    // Two scans at the same time, on two runtime threads.
    let t = TestEngine::start(PAIR, &[("worker", slow(300))]).await;
    let ids = three_interrupted(&t).await;
    let t2 = t.restart(RESTART_AT);
    let (e1, e2) = (t2.engine.clone(), t2.engine.clone());
    let r1 = tokio::spawn(async move { e1.recover(default_config()).await });
    let r2 = tokio::spawn(async move { e2.recover(default_config()).await });
    let (r1, r2) = (r1.await.unwrap().unwrap(), r2.await.unwrap().unwrap());
    for r in [&r1, &r2] {
        assert!(r.report.errors.is_empty());
        let mut scanned: Vec<String> = r.report.actions.iter().map(|(id, _)| id.clone()).collect();
        scanned.sort();
        let mut all = ids.clone();
        all.sort();
        assert_eq!(scanned, all, "each scan saw every execution once");
    }
    // Regression: the scan that lost the race for an execution once still counted it as
    // resumed/retried. Executions are now claimed before they are loaded, so each report
    // counts exactly what it drives, and the two reports together count each execution once.
    for r in [&r1, &r2] {
        let driven = r.report.resumed + r.report.retried;
        assert_eq!(driven, r.handles.len(), "{:?}", r.report);
    }
    assert_eq!(
        r1.report.resumed + r1.report.retried + r2.report.resumed + r2.report.retried,
        3
    );
    let handles: Vec<_> = r1.handles.into_iter().chain(r2.handles).collect();
    assert_eq!(
        handles.len(),
        3,
        "each execution driven by exactly one scan"
    );
    let finished = wait_all(handles).await;
    assert_eq!(finished.len(), 3);
    assert_driven_once(&t2, &ids);
    for id in &ids {
        assert_eq!(recovered_actions(&t2.events_of(id).await).len(), 1, "{id}");
    }
}
