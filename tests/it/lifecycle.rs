//! Execution lifecycle: completion, persistence, failure, cancellation before start.

use proctor::core::{ErrorKind, ExecutionStatus, StepStatus};
use proctor::event::DomainEvent;
use proctor_tests::*;
use serde_json::json;

const SINGLE: &str = "
name: single
steps:
  - id: a
    type: agent_task
    agent: worker
    input: { text: '{{input.text}}' }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_step_completes() {
    let t = TestEngine::start(SINGLE, &[("worker", echo())]).await;
    let execution = t.run(json!({"text": "hi"})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    let a = step(&execution, "a");
    assert_eq!(a.status, StepStatus::Completed);
    assert_eq!(a.attempt, 1);
    let expected = json!({"agent": "worker", "step": "a", "attempt": 1, "echo": {"text": "hi"}});
    assert_eq!(a.output, Some(expected.clone()));
    assert_eq!(execution.output, Some(json!({"a": expected})));
    assert_eq!(execution.error, None);

    let requests = t.requests("worker");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].execution_id, execution.id);
    assert_eq!(requests[0].step_id, "a");
    assert_eq!(requests[0].attempt, 1);
    assert_eq!(requests[0].input, json!({"text": "hi"}));

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(
        t.engine.store().list_active().await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_state_persisted() {
    let t = TestEngine::start(SINGLE, &[("worker", echo())]).await;
    let execution = t.run(json!({"text": "persist me"})).await;
    let id = &execution.id;

    let row = t.execution_row(id);
    assert_eq!(row.process_name, "single");
    assert_eq!(row.process_version, 1);
    assert_eq!(row.status, "completed");
    assert_eq!(row.input, json!({"text": "persist me"}));
    assert_eq!(row.output, execution.output);
    assert_eq!(row.error, None);
    assert_eq!(row.created_at_ms, T0 as i64);
    assert!(row.updated_at_ms >= row.created_at_ms);
    assert_eq!(row.next_seq, 5, "four events were written");

    let a = t.step_row(id, "a");
    assert_eq!(a.position, 0);
    assert_eq!(a.kind, "agent_task");
    assert_eq!(a.status, "completed");
    assert_eq!((a.attempt, a.retry_count), (1, 0));
    assert_eq!(
        a.output,
        Some(json!({"agent": "worker", "step": "a", "attempt": 1, "echo": {"text": "persist me"}}))
    );
    assert_eq!(a.last_error, None);
    assert_eq!(a.skip_reason, None);
    assert!(a.started_at_ms.is_some() && a.finished_at_ms >= a.started_at_ms);
    assert_eq!(a.wake_at_ms, None);

    let rows = t.event_rows(id);
    let row_kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        row_kinds,
        [
            "ExecutionStarted",
            "StepStarted",
            "StepCompleted",
            "ExecutionCompleted"
        ]
    );
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(rows[1].step_id.as_deref(), Some("a"));
    assert_eq!(rows[0].step_id, None);
    assert_eq!(rows[3].payload["type"], "ExecutionCompleted");
    assert_eq!(rows[3].payload["output"], execution.output.clone().unwrap());

    // The store hands back the same state the engine ended with.
    let loaded = t.engine.load(id).await.unwrap().expect("stored");
    assert_eq!(loaded, execution);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_step_fails_the_execution() {
    let t = TestEngine::start(SINGLE, &[("worker", failing(&["a"], 400, "bad_request"))]).await;
    let execution = t.run(json!({"text": "x"})).await;

    assert_eq!(execution.status, ExecutionStatus::Failed);
    let a = step(&execution, "a");
    assert_eq!(a.status, StepStatus::Failed);
    assert_eq!(a.attempt, 1, "the default policy does not retry");
    let error = a.last_error.as_ref().expect("error recorded");
    assert_eq!(error.kind, ErrorKind::Agent);
    assert_eq!(error.status, Some(400));
    assert_eq!(error.error_type.as_deref(), Some("bad_request"));
    let message = execution.error.as_deref().expect("execution error");
    assert!(
        message.contains("bad_request") && message.contains("400"),
        "{message}"
    );
    assert_eq!(execution.output, None);

    assert_eq!(t.requests("worker").len(), 1, "no retry");

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepFailed:a",
            "ExecutionFailed",
        ],
    );
    match event(&events, "ExecutionFailed") {
        DomainEvent::ExecutionFailed { step, error } => {
            assert_eq!(step.as_deref(), Some("a"));
            assert_eq!(Some(error.as_str()), execution.error.as_deref());
        }
        other => panic!("{other:?}"),
    }

    let row = t.execution_row(&execution.id);
    assert_eq!(row.status, "failed");
    assert_eq!(row.error, execution.error);
    assert_eq!(row.output, None);
    let a = t.step_row(&execution.id, "a");
    assert_eq!(a.status, "failed");
    let last_error = a.last_error.expect("persisted error");
    assert_eq!(last_error["kind"], "agent");
    assert_eq!(last_error["type"], "bad_request");
    assert_eq!(last_error["status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_start() {
    let t = TestEngine::start(SINGLE, &[("worker", echo())]).await;
    let id = t
        .engine
        .create(t.process.clone(), json!({"text": "never"}))
        .await
        .unwrap();
    assert_eq!(t.execution_row(&id).status, "pending");
    assert_eq!(t.step_row(&id, "a").status, "pending");
    assert_eq!(
        t.engine.store().list_active().await.unwrap(),
        vec![id.clone()]
    );

    t.engine
        .cancel(&id, Some("changed my mind".into()))
        .await
        .unwrap();
    assert_eq!(t.execution_row(&id).status, "cancelled");

    let execution = t.engine.start(&id).await.unwrap().wait().await.unwrap();
    assert_eq!(execution.status, ExecutionStatus::Cancelled);
    assert_eq!(step(&execution, "a").status, StepStatus::Pending);
    assert_eq!(step(&execution, "a").attempt, 0);

    assert!(t.requests("worker").is_empty(), "no agent request");
    assert_eq!(t.agent("worker").ledger().effects.len(), 0);

    let events = t.events_of(&id).await;
    assert_event_sequence(&events, &["ExecutionCancelled"]);
    assert_eq!(
        events[0].event,
        DomainEvent::ExecutionCancelled {
            reason: Some("changed my mind".into())
        }
    );
    assert_eq!(t.bus_events_of(&id), events);

    let row = t.execution_row(&id);
    assert_eq!(row.status, "cancelled");
    let a = t.step_row(&id, "a");
    assert_eq!((a.status.as_str(), a.attempt), ("pending", 0));
    assert_eq!(a.started_at_ms, None);
    assert!(t.engine.store().list_active().await.unwrap().is_empty());
}
