//! Parallel branches: fan-out, diamonds, joins, and failures with and without
//! `stop_on_failure`.

use std::time::Instant;

use proctor::core::{ExecutionStatus, StepStatus};
use proctor::event::DomainEvent;
use proctor_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parallel_steps_both_complete() {
    let yaml = "
name: pair
steps:
  - { id: left, type: agent_task, agent: worker, input: { side: left } }
  - { id: right, type: agent_task, agent: worker, input: { side: right } }
";
    let t = TestEngine::start(yaml, &[("worker", slow(30))]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    let mut called = t.requested_steps("worker");
    called.sort();
    assert_eq!(called, ["left", "right"]);
    let output = execution.output.as_ref().unwrap();
    assert_eq!(output["left"]["echo"], json!({"side": "left"}));
    assert_eq!(output["right"]["echo"], json!({"side": "right"}));

    // Both start in the first transition, before either completes.
    let events = t.events_of(&execution.id).await;
    assert_eq!(
        labels(&events[..3]),
        ["ExecutionStarted", "StepStarted:left", "StepStarted:right"]
    );
    let completed =
        seq_of(&events, "StepCompleted:left").min(seq_of(&events, "StepCompleted:right"));
    assert!(seq_of(&events, "StepStarted:right") < completed);
    assert_eq!(kinds(&events).last(), Some(&"ExecutionCompleted"));
    let statuses = step_statuses(&t.sql(), &execution.id);
    assert!(statuses.values().all(|s| s == "completed"), "{statuses:?}");
}

const DIAMOND: &str = "
name: diamond
steps:
  - { id: start, type: agent_task, agent: worker }
  - { id: left, type: agent_task, agent: worker, depends_on: [start] }
  - { id: right, type: agent_task, agent: slowpoke, depends_on: [start] }
  - { id: join, type: agent_task, agent: worker, depends_on: [left, right] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond() {
    let t = TestEngine::start(DIAMOND, &[("worker", echo()), ("slowpoke", echo())]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    for id in ["start", "left", "right", "join"] {
        assert_eq!(step(&execution, id).status, StepStatus::Completed, "{id}");
    }
    let worker = t.requested_steps("worker");
    assert_eq!(worker.first().map(String::as_str), Some("start"));
    assert_eq!(worker.last().map(String::as_str), Some("join"));
    assert_eq!(worker.len(), 3);
    assert_eq!(t.requested_steps("slowpoke"), ["right"]);

    let events = t.events_of(&execution.id).await;
    assert_eq!(events.len(), 10);
    let start_done = seq_of(&events, "StepCompleted:start");
    assert!(start_done < seq_of(&events, "StepStarted:left"));
    assert!(start_done < seq_of(&events, "StepStarted:right"));
    assert_eq!(
        execution
            .output
            .as_ref()
            .unwrap()
            .as_object()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_waits_for_all_dependencies() {
    let t = TestEngine::start(DIAMOND, &[("worker", echo()), ("slowpoke", slow(150))]).await;
    let clock = t.clock.clone();
    t.engine.bus().subscribe(move |_| clock.advance_ms(1));

    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let id = &execution.id;

    let (left, right, join) = (
        t.step_row(id, "left"),
        t.step_row(id, "right"),
        t.step_row(id, "join"),
    );
    let join_started = join.started_at_ms.unwrap();
    assert!(join_started >= left.finished_at_ms.unwrap());
    assert!(join_started >= right.finished_at_ms.unwrap());
    assert!(
        left.finished_at_ms < right.finished_at_ms,
        "the slow branch finished last"
    );

    let events = t.events_of(id).await;
    let join_seq = seq_of(&events, "StepStarted:join");
    assert!(join_seq > seq_of(&events, "StepCompleted:left"));
    assert!(join_seq > seq_of(&events, "StepCompleted:right"));
    assert!(
        seq_of(&events, "StepCompleted:left") < seq_of(&events, "StepCompleted:right"),
        "left completed while right was still running"
    );
    // join was called only after the slow branch answered.
    assert_eq!(t.requested_steps("worker"), ["start", "left", "join"]);
}

const FORK_FAIL: &str = "
name: forkfail
stop_on_failure: STOP
steps:
  - { id: bad, type: agent_task, agent: fast }
  - { id: sibling, type: agent_task, agent: slow }
  - { id: after, type: agent_task, agent: fast, depends_on: [bad, sibling] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_failure_with_stop_on_failure_cancels_siblings() {
    let yaml = FORK_FAIL.replace("STOP", "true");
    let t = TestEngine::start(
        &yaml,
        &[
            ("fast", failing(&["bad"], 400, "broken")),
            ("slow", slow(300)),
        ],
    )
    .await;
    let began = Instant::now();
    let execution = t.run(json!({})).await;
    let elapsed = began.elapsed();

    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert!(
        elapsed.as_millis() < 250,
        "failed without waiting for the slow sibling: {elapsed:?}"
    );
    assert_eq!(step(&execution, "bad").status, StepStatus::Failed);
    assert_eq!(step(&execution, "sibling").status, StepStatus::Cancelled);
    assert_eq!(step(&execution, "after").status, StepStatus::Pending);

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:bad",
            "StepStarted:sibling",
            "StepFailed:bad",
            "StepCancelled:sibling",
            "ExecutionFailed",
        ],
    );
    match event(&events, "ExecutionFailed") {
        DomainEvent::ExecutionFailed { step, .. } => assert_eq!(step.as_deref(), Some("bad")),
        other => panic!("{other:?}"),
    }
    let statuses = step_statuses(&t.sql(), &execution.id);
    assert_eq!(statuses["sibling"], "cancelled");
    assert_eq!(statuses["bad"], "failed");
    assert_eq!(statuses["after"], "pending");
    assert_eq!(
        t.requested_steps("fast"),
        ["bad"],
        "the dependant never runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_failure_without_stop_on_failure_lets_siblings_finish() {
    let yaml = FORK_FAIL.replace("STOP", "false");
    let t = TestEngine::start(
        &yaml,
        &[
            ("fast", failing(&["bad"], 400, "broken")),
            ("slow", slow(100)),
        ],
    )
    .await;
    let began = Instant::now();
    let execution = t.run(json!({})).await;
    let elapsed = began.elapsed();

    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert!(
        elapsed.as_millis() >= 100,
        "waited for the sibling: {elapsed:?}"
    );
    assert_eq!(step(&execution, "bad").status, StepStatus::Failed);
    assert_eq!(step(&execution, "sibling").status, StepStatus::Completed);
    assert_eq!(step(&execution, "after").status, StepStatus::Pending);
    assert_eq!(t.requested_steps("slow"), ["sibling"]);
    assert_eq!(
        t.requested_steps("fast"),
        ["bad"],
        "the dependant never runs"
    );

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:bad",
            "StepStarted:sibling",
            "StepFailed:bad",
            "StepCompleted:sibling",
            "ExecutionFailed",
        ],
    );
    let statuses = step_statuses(&t.sql(), &execution.id);
    assert_eq!(statuses["sibling"], "completed");
    assert_eq!(statuses["after"], "pending");
    assert_eq!(t.execution_row(&execution.id).status, "failed");
}
