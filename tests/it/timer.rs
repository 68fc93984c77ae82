//! Timer steps on the ManualClock: they complete at once in real time, with timestamps as if
//! they had waited.

use std::time::Instant;

use proctor::core::{ExecutionStatus, StepStatus};
use proctor::event::DomainEvent;
use proctor_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_completes_and_reports_waited_time() {
    let yaml = "
name: nap
steps:
  - { id: wait, type: timer, duration: 1h }
";
    let t = TestEngine::start(yaml, &[]).await;
    let began = Instant::now();
    let execution = t.run(json!({})).await;
    assert!(began.elapsed().as_secs() < 5, "no real waiting");

    assert_eq!(execution.status, ExecutionStatus::Completed);
    let wait = step(&execution, "wait");
    assert_eq!(wait.status, StepStatus::Completed);
    let output = wait.output.clone().unwrap();
    assert_eq!(output["waited_ms"], 3_600_000);
    assert_eq!(output["waited_seconds"], 3_600.0);
    assert_eq!(output["deadline_ms"], T0 + 3_600_000);
    assert_eq!(t.now(), T0 + 3_600_000);

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:wait",
            "StepCompleted:wait",
            "ExecutionCompleted",
        ],
    );
    match event(&events, "StepStarted:wait") {
        DomainEvent::StepStarted { wake_at_ms, .. } => {
            assert_eq!(*wake_at_ms, Some(T0 + 3_600_000))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events[1].at_ms, T0);
    assert_eq!(events[2].at_ms, T0 + 3_600_000);

    let row = t.step_row(&execution.id, "wait");
    assert_eq!(row.kind, "timer");
    assert_eq!(row.status, "completed");
    assert_eq!(row.started_at_ms, Some(T0 as i64));
    assert_eq!(row.finished_at_ms, Some((T0 + 3_600_000) as i64));
    assert_eq!(row.wake_at_ms, None, "cleared once the timer is done");
    assert_eq!(row.output, Some(output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_delays_dependants() {
    let yaml = "
name: later
steps:
  - { id: first, type: agent_task, agent: worker }
  - { id: wait, type: timer, duration: 5s, depends_on: [first] }
  - id: after
    type: agent_task
    agent: worker
    depends_on: [wait]
    input: { waited: '{{steps.wait.output.waited_ms}}' }
";
    let t = TestEngine::start(yaml, &[("worker", echo())]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);

    let events = t.events_of(&execution.id).await;
    let timer_start = events
        .iter()
        .find(|e| e.event.kind() == "StepStarted" && e.event.step() == Some("wait"))
        .unwrap()
        .at_ms;
    let after_start = events
        .iter()
        .find(|e| e.event.kind() == "StepStarted" && e.event.step() == Some("after"))
        .unwrap()
        .at_ms;
    assert!(
        after_start >= timer_start + 5_000,
        "after started at {after_start}, timer started at {timer_start}"
    );
    assert!(seq_of(&events, "StepCompleted:wait") < seq_of(&events, "StepStarted:after"));

    // The agent saw `first`, then `after` carrying the timer's output: the request for `after`
    // was built only once the timer had completed.
    let requests = t.requests("worker");
    assert_eq!(
        requests
            .iter()
            .map(|r| r.step_id.as_str())
            .collect::<Vec<_>>(),
        ["first", "after"]
    );
    assert_eq!(requests[1].input, json!({"waited": 5_000}));

    let wait = t.step_row(&execution.id, "wait");
    let after = t.step_row(&execution.id, "after");
    assert!(after.started_at_ms.unwrap() >= wait.started_at_ms.unwrap() + 5_000);
    assert!(after.started_at_ms >= wait.finished_at_ms);
}
