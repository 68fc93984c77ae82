//! Retries: success after failures, exhaustion, `on_error: skip_step`, persisted counters,
//! backoff growth on the ManualClock, and non-retryable error types.

use proctor::core::{ErrorKind, ExecutionStatus, SkipReason, StepStatus};
use proctor::event::DomainEvent;
use proctor_tests::*;
use serde_json::json;

fn retrying(max_attempts: u32) -> String {
    format!(
        "
name: retry
steps:
  - id: a
    type: agent_task
    agent: worker
    input: {{ n: 1 }}
    retry: {{ max_attempts: {max_attempts}, initial_delay: 100ms, backoff: 2.0, jitter: 0 }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_succeeds_on_third_attempt() {
    let t = TestEngine::start(&retrying(3), &[("worker", flaky(2))]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    let a = step(&execution, "a");
    assert_eq!(a.status, StepStatus::Completed);
    assert_eq!(a.attempt, 3);
    assert_eq!(a.output.as_ref().unwrap()["attempt"], 3);

    let requests = t.requests("worker");
    assert_eq!(
        requests.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let key = &requests[0].idempotency_key;
    assert!(
        requests.iter().all(|r| &r.idempotency_key == key),
        "one idempotency key across attempts: {requests:?}"
    );
    assert!(key.contains(&execution.id) && key.contains('a'), "{key}");
    {
        let ledger = t.agent("worker").ledger();
        assert_eq!(ledger.attempts.get(key), Some(&3));
        assert_eq!(ledger.effects.get(key), Some(&1), "the effect applied once");
        assert_eq!(ledger.effects.len(), 1);
    }

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepRetrying:a",
            "StepStarted:a",
            "StepRetrying:a",
            "StepStarted:a",
            "StepCompleted:a",
            "ExecutionCompleted",
        ],
    );
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::StepStarted { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_fail_the_execution() {
    let t = TestEngine::start(&retrying(3), &[("worker", flaky(10))]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Failed);
    let a = step(&execution, "a");
    assert_eq!(a.status, StepStatus::Failed);
    assert_eq!(a.attempt, 3);
    let error = a.last_error.as_ref().unwrap();
    assert_eq!((error.kind, error.status), (ErrorKind::Server, Some(503)));

    assert_eq!(t.requests("worker").len(), 3);
    assert!(
        t.agent("worker").ledger().effects.is_empty(),
        "no effect applied"
    );

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepRetrying:a",
            "StepStarted:a",
            "StepRetrying:a",
            "StepStarted:a",
            "StepFailed:a",
            "ExecutionFailed",
        ],
    );
    match event(&events, "StepFailed:a") {
        DomainEvent::StepFailed { attempt, error, .. } => {
            assert_eq!(*attempt, 3);
            assert_eq!(error.status, Some(503));
        }
        other => panic!("{other:?}"),
    }
    let row = t.step_row(&execution.id, "a");
    assert_eq!(
        (row.status.as_str(), row.attempt, row.retry_count),
        ("failed", 3, 2)
    );
    assert_eq!(t.execution_row(&execution.id).status, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_skip_step_continues() {
    let yaml = "
name: skip
steps:
  - id: a
    type: agent_task
    agent: worker
    on_error: skip_step
    retry: { max_attempts: 2, initial_delay: 50ms }
  - { id: b, type: agent_task, agent: worker, depends_on: [a], input: { a_output: '{{steps.a.output}}', a_status: '{{steps.a.status}}' } }
";
    let t = TestEngine::start(yaml, &[("worker", failing(&["a"], 503, "down"))]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    let a = step(&execution, "a");
    assert_eq!(a.status, StepStatus::Skipped);
    assert_eq!(a.skip_reason, Some(SkipReason::OnError));
    assert_eq!(a.attempt, 2, "skipped only after its retries");
    assert_eq!(step(&execution, "b").status, StepStatus::Completed);
    assert_eq!(t.requested_steps("worker"), ["a", "a", "b"]);
    let b_request = t.requests("worker").pop().unwrap();
    assert_eq!(
        b_request.input,
        json!({"a_output": null, "a_status": "skipped"})
    );

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepRetrying:a",
            "StepStarted:a",
            "StepSkipped:a",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    match event(&events, "StepSkipped:a") {
        DomainEvent::StepSkipped { reason, error, .. } => {
            assert_eq!(*reason, SkipReason::OnError);
            let error = error.as_ref().expect("the skip keeps the error");
            assert_eq!(error.status, Some(503));
            assert_eq!(error.error_type.as_deref(), Some("down"));
        }
        other => panic!("{other:?}"),
    }
    let row = t.step_row(&execution.id, "a");
    assert_eq!(row.status, "skipped");
    assert_eq!(row.skip_reason.as_deref(), Some("on_error"));
    assert_eq!(row.last_error.unwrap()["type"], "down");
    assert_eq!(t.execution_row(&execution.id).status, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_count_persisted() {
    let t = TestEngine::start(&retrying(3), &[("worker", flaky(2))]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(&execution, "a").retry_count(), 2);

    let (retry_count, attempt, status): (i64, i64, String) = t
        .sql()
        .query_row(
            "SELECT retry_count, attempt, status FROM steps WHERE execution_id = ?1 AND step_id = 'a'",
            [&execution.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((retry_count, attempt, status.as_str()), (2, 3, "completed"));

    let loaded = t.engine.load(&execution.id).await.unwrap().unwrap();
    assert_eq!(step(&loaded, "a").retry_count(), 2);
    assert_eq!(step(&loaded, "a").attempt, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_delays_grow() {
    let t = TestEngine::start(&retrying(4), &[("worker", flaky(3))]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(&execution, "a").attempt, 4);

    let events = t.events_of(&execution.id).await;
    let delays: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::StepRetrying {
                delay_ms,
                next_attempt,
                error,
                ..
            } => {
                assert_eq!(error.kind, ErrorKind::Server);
                Some((*next_attempt, *delay_ms))
            }
            _ => None,
        })
        .enumerate()
        .map(|(i, (next, delay))| {
            assert_eq!(next as usize, i + 2);
            delay
        })
        .collect();
    assert_eq!(delays, [100, 200, 400]);

    // The ManualClock jumps to each backoff's end: attempt n+1 starts exactly `delay` after
    // attempt n failed (and the agent answers in no clock time).
    let starts: Vec<u64> = events
        .iter()
        .filter(|e| e.event.kind() == "StepStarted")
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(starts, [T0, T0 + 100, T0 + 300, T0 + 700]);
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, delays);
    assert!(t.now() >= T0 + 700);
    let row = t.step_row(&execution.id, "a");
    assert_eq!(
        row.started_at_ms,
        Some(T0 as i64),
        "started_at is the first attempt's"
    );
    assert_eq!(row.finished_at_ms, Some((T0 + 700) as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_error_type_is_not_retried() {
    let yaml = "
name: strict
steps:
  - id: a
    type: agent_task
    agent: worker
    retry: { max_attempts: 5, initial_delay: 10ms, non_retryable: [invalid_input] }
";
    let t = TestEngine::start(yaml, &[("worker", failing(&["a"], 422, "invalid_input"))]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert_eq!(step(&execution, "a").attempt, 1);
    assert_eq!(t.requests("worker").len(), 1, "not retried");

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
    match event(&events, "StepFailed:a") {
        DomainEvent::StepFailed { error, attempt, .. } => {
            assert_eq!(*attempt, 1);
            assert_eq!(error.kind, ErrorKind::Agent);
            assert_eq!(error.status, Some(422));
            assert_eq!(error.error_type.as_deref(), Some("invalid_input"));
        }
        other => panic!("{other:?}"),
    }
    let row = t.step_row(&execution.id, "a");
    assert_eq!((row.attempt, row.retry_count), (1, 0));
}
