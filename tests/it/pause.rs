//! Pause, resume and cancel of live executions, and a pause that outlives the engine.

use proctor::core::{ExecutionStatus, RecoveryAction, StepStatus};
use proctor::event::DomainEvent;
use proctor::RecoveryConfig;
use proctor_tests::*;
use serde_json::json;

/// How long the agent takes per request: long enough to pause or cancel while it works.
const AGENT_DELAY_MS: u64 = 150;

fn a_output(text: &str) -> serde_json::Value {
    json!({"agent": "worker", "step": "a", "attempt": 1, "echo": {"text": text}})
}

/// Submits, pauses while `a` is at the agent, and waits until `a`'s result is in. Returns the
/// live execution's handle.
async fn paused_after_a(t: &TestEngine, text: &str) -> proctor::ExecutionHandle {
    let handle = t
        .engine
        .submit(t.process.clone(), json!({ "text": text }))
        .await
        .unwrap();
    // The pause is queued behind the start, so it lands while `a` is in flight.
    t.engine.pause(&handle.id).await.unwrap();
    let id = handle.id.clone();
    eventually("a completed", || t.step_row(&id, "a").status == "completed").await;
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_running_execution_then_resume() {
    let t = TestEngine::start(PAIR, &[("worker", slow(AGENT_DELAY_MS))]).await;
    let handle = paused_after_a(&t, "hold").await;
    let id = handle.id.clone();

    // a finished and its output is kept; b does not start while paused.
    settle().await;
    assert_eq!(t.execution_row(&id).status, "paused");
    let a = t.step_row(&id, "a");
    assert_eq!((a.status.as_str(), a.attempt), ("completed", 1));
    assert_eq!(a.output, Some(a_output("hold")));
    let b = t.step_row(&id, "b");
    assert_eq!((b.status.as_str(), b.attempt), ("pending", 0));
    assert_eq!(t.requested_steps("worker"), ["a"]);
    assert_event_sequence(
        &t.events_of(&id).await,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
        ],
    );
    assert_eq!(
        t.engine.store().list_active().await.unwrap(),
        vec![id.clone()],
        "a paused execution is active"
    );
    // Pausing again is a no-op.
    t.engine.pause(&id).await.unwrap();

    t.engine.resume(&id).await.unwrap();
    let execution = tokio::time::timeout(RUN_LIMIT, handle.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(&execution, "a").output, Some(a_output("hold")));
    assert_eq!(
        step(&execution, "b").output.as_ref().unwrap()["echo"],
        json!({"prev": "hold"})
    );
    assert_eq!(t.execution_row(&id).status, "completed");

    let events = t.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
            "ExecutionResumed",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    assert!(seq_of(&events, "ExecutionPaused") < seq_of(&events, "ExecutionResumed"));
    assert_eq!(t.bus_events_of(&id), events);
    assert_eq!(t.requested_steps("worker"), ["a", "b"]);
    let effects = t.effects("worker");
    assert_eq!(effects.len(), 2);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_restart() {
    let t = TestEngine::start(PAIR, &[("worker", slow(AGENT_DELAY_MS))]).await;
    let old = paused_after_a(&t, "durable").await;
    let id = old.id.clone();
    drop(old);
    let before = t.events_of(&id).await;

    // The engine dies; a new one recovers on the same database file.
    let t2 = t.restart(t.now() + 60_000);
    let recovery = t2.recover(RecoveryConfig::default()).await;
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

    // Recovered, yet still paused: nothing new starts.
    settle().await;
    assert_eq!(t2.execution_row(&id).status, "paused");
    assert_eq!(t2.step_row(&id, "a").output, Some(a_output("durable")));
    assert_eq!(t2.step_row(&id, "b").status, "pending");
    assert_eq!(t2.requested_steps("worker"), ["a"]);
    let events = t2.events_of(&id).await;
    assert_eq!(events[..before.len()], before[..]);
    assert_event_sequence(&events[before.len()..], &["ExecutionRecovered"]);
    assert_eq!(recovered_actions(&events), [RecoveryAction::Resume]);

    // Resumed on the new engine, it completes.
    t2.engine.resume(&id).await.unwrap();
    let finished = wait_all(recovery.handles).await;
    let execution = &finished[&id];
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(execution, "a").output, Some(a_output("durable")));
    assert_eq!(t2.execution_row(&id).status, "completed");
    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
            "ExecutionRecovered",
            "ExecutionResumed",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(t2.requested_steps("worker"), ["a", "b"]);
    let effects = t2.effects("worker");
    assert_eq!(effects.len(), 2);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_without_recovery() {
    let t = TestEngine::start(PAIR, &[("worker", slow(AGENT_DELAY_MS))]).await;
    let id = paused_after_a(&t, "direct").await.id.clone();

    // A new engine that never ran recovery picks the paused execution up on resume.
    let t2 = t.restart(t.now() + 60_000);
    t2.engine.resume(&id).await.unwrap();
    eventually("completed", || t2.execution_row(&id).status == "completed").await;
    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
            "ExecutionRecovered",
            "ExecutionResumed",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(recovered_actions(&events), [RecoveryAction::Resume]);
    assert_eq!(t2.requested_steps("worker"), ["a", "b"]);
    // A second resume of the finished execution is refused and changes nothing.
    assert!(matches!(
        t2.engine.resume(&id).await,
        Err(proctor::driver::Error::NotPaused { .. })
    ));
    settle().await;
    assert_eq!(t2.events_of(&id).await, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_running_execution() {
    // Slower than elsewhere: the cancel must land while `a` is at the agent.
    let t = TestEngine::start(PAIR, &[("worker", slow(300))]).await;
    let handle = t
        .engine
        .submit(t.process.clone(), json!({"text": "stop"}))
        .await
        .unwrap();
    let id = handle.id.clone();
    eventually("a running", || t.step_row(&id, "a").status == "running").await;
    t.engine.cancel(&id, Some("operator".into())).await.unwrap();
    let execution = tokio::time::timeout(RUN_LIMIT, handle.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::Cancelled);
    assert_eq!(step(&execution, "a").status, StepStatus::Cancelled);
    assert_eq!(step(&execution, "b").status, StepStatus::Pending);

    // Past the agent's delay: whatever it answers is ignored.
    settle().await;
    let row = t.execution_row(&id);
    assert_eq!(row.status, "cancelled");
    assert_eq!((row.output, row.error), (None, None));
    let a = t.step_row(&id, "a");
    assert_eq!(a.status, "cancelled");
    assert_eq!(a.output, None);
    assert_eq!(t.step_row(&id, "b").status, "pending");
    let events = t.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCancelled:a",
            "ExecutionCancelled",
        ],
    );
    assert_eq!(
        event(&events, "ExecutionCancelled"),
        &DomainEvent::ExecutionCancelled {
            reason: Some("operator".into())
        }
    );
    assert_eq!(t.bus_events_of(&id), events);
    assert!(t.requests("worker").iter().all(|r| r.step_id == "a"));
    assert!(t.engine.store().list_active().await.unwrap().is_empty());
    // Resuming is refused, cancelling again does nothing.
    assert!(matches!(
        t.engine.resume(&id).await,
        Err(proctor::driver::Error::NotPaused { .. })
    ));
    t.engine.cancel(&id, None).await.unwrap();
    assert_eq!(t.events_of(&id).await, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_paused_execution() {
    let t = TestEngine::start(PAIR, &[("worker", slow(AGENT_DELAY_MS))]).await;
    let handle = paused_after_a(&t, "paused").await;
    let id = handle.id.clone();
    t.engine.cancel(&id, None).await.unwrap();
    let execution = tokio::time::timeout(RUN_LIMIT, handle.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::Cancelled);
    assert_eq!(t.execution_row(&id).status, "cancelled");
    // The step that finished before the cancel keeps its result; nothing else ran.
    assert_eq!(t.step_row(&id, "a").output, Some(a_output("paused")));
    assert_eq!(t.step_row(&id, "a").status, "completed");
    assert_eq!(t.step_row(&id, "b").status, "pending");
    let events = t.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
            "ExecutionCancelled",
        ],
    );
    assert!(matches!(
        t.engine.resume(&id).await,
        Err(proctor::driver::Error::NotPaused { .. })
    ));
    settle().await;
    assert_eq!(t.execution_row(&id).status, "cancelled");
    assert_eq!(t.requested_steps("worker"), ["a"]);
    assert!(t.engine.store().list_active().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_paused_execution_after_restart() {
    let t = TestEngine::start(PAIR, &[("worker", slow(AGENT_DELAY_MS))]).await;
    let id = paused_after_a(&t, "later").await.id.clone();

    // A new engine cancels the stored (not live) paused execution directly.
    let t2 = t.restart(t.now() + 60_000);
    t2.engine.cancel(&id, Some("cleanup".into())).await.unwrap();
    assert_eq!(t2.execution_row(&id).status, "cancelled");
    let events = t2.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
            "ExecutionCancelled",
        ],
    );
    let recovery = t2.recover(RecoveryConfig::default()).await;
    assert!(recovery.report.actions.is_empty());
    assert!(recovery.handles.is_empty());
    assert_eq!(t2.requested_steps("worker"), ["a"]);
}
