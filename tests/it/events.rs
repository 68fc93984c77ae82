//! Domain events: sequences, error payloads, numbering, timestamps, and bus/store agreement.

use proctor::agent::example::Behaviour;
use proctor::core::ErrorKind;
use proctor::event::DomainEvent;
use proctor_tests::*;
use serde_json::json;

const TWO: &str = "
name: two
steps:
  - { id: a, type: agent_task, agent: worker }
  - { id: b, type: agent_task, agent: worker, depends_on: [a] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sequence_for_a_successful_execution() {
    let t = TestEngine::start(TWO, &[("worker", echo())]).await;
    let execution = t.run(json!({})).await;

    let events = t.events_of(&execution.id).await;
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "StepStarted",
            "StepCompleted",
            "StepStarted",
            "StepCompleted",
            "ExecutionCompleted",
        ]
    );
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepCompleted:b",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(
        events[0].event,
        DomainEvent::ExecutionStarted {
            process: "two".into(),
            version: 1
        }
    );
    assert_eq!(
        events[1].event,
        DomainEvent::StepStarted {
            step: "a".into(),
            attempt: 1,
            wake_at_ms: None
        }
    );
    assert_eq!(
        events[5].event,
        DomainEvent::ExecutionCompleted {
            output: execution.output.clone().unwrap()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_event_carries_the_error() {
    let t = TestEngine::start(TWO, &[("worker", failing(&["a"], 422, "invalid_input"))]).await;
    let execution = t.run(json!({})).await;
    let events = t.events_of(&execution.id).await;

    match event(&events, "StepFailed:a") {
        DomainEvent::StepFailed {
            step,
            attempt,
            error,
        } => {
            assert_eq!((step.as_str(), *attempt), ("a", 1));
            assert_eq!(error.kind, ErrorKind::Agent);
            assert_eq!(error.error_type.as_deref(), Some("invalid_input"));
            assert_eq!(error.status, Some(422));
            assert!(
                error.message.contains("worker failing attempt 1"),
                "{}",
                error.message
            );
        }
        other => panic!("{other:?}"),
    }
    match event(&events, "ExecutionFailed") {
        DomainEvent::ExecutionFailed { step, error } => {
            assert_eq!(step.as_deref(), Some("a"));
            assert!(error.contains("invalid_input"), "{error}");
            assert!(error.contains("422"), "{error}");
        }
        other => panic!("{other:?}"),
    }

    // The stored payload is the same error, in its wire form.
    let rows = t.event_rows(&execution.id);
    let failed = rows.iter().find(|r| r.kind == "StepFailed").unwrap();
    assert_eq!(failed.step_id.as_deref(), Some("a"));
    assert_eq!(failed.payload["error"]["kind"], "agent");
    assert_eq!(failed.payload["error"]["type"], "invalid_input");
    assert_eq!(failed.payload["error"]["status"], 422);
    assert_eq!(failed.payload["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_execution_id_gap_free_seq_and_timestamps() {
    let yaml = "
name: mixed
steps:
  - { id: a, type: agent_task, agent: worker, retry: { max_attempts: 2, initial_delay: 100ms } }
  - { id: nap, type: timer, duration: 2s, depends_on: [a] }
  - { id: b, type: agent_task, agent: worker, depends_on: [nap], retry: { max_attempts: 2, initial_delay: 250ms } }
";
    let t = TestEngine::start(yaml, &[("worker", flaky(1))]).await;
    // A second execution interleaves nothing into the first one's numbering.
    let other = t.run(json!({})).await;
    let execution = t.run(json!({})).await;
    assert_ne!(other.id, execution.id);

    for id in [&other.id, &execution.id] {
        let events = t.events_of(id).await;
        assert!(events.len() >= 10, "{}", events.len());
        assert!(events.iter().all(|e| &e.execution_id == id));
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (1..=events.len() as u64).collect();
        assert_eq!(seqs, expected, "gap-free from 1");
        assert!(events.iter().all(|e| e.at_ms >= T0 && e.at_ms <= t.now()));

        let rows = t.event_rows(id);
        assert_eq!(rows.len(), events.len());
        for (row, e) in rows.iter().zip(&events) {
            assert_eq!(row.seq as u64, e.seq);
            assert_eq!(row.at_ms as u64, e.at_ms);
            assert_eq!(row.kind, e.event.kind());
            assert_eq!(row.step_id.as_deref(), e.event.step());
        }
        assert_eq!(t.execution_row(id).next_seq as u64, events.len() as u64 + 1);
    }

    // Timestamps follow the ManualClock: the timer's 2s and b's 250ms backoff.
    let events = t.events_of(&execution.id).await;
    let start = events[0].at_ms;
    let at = |label: &str| {
        let seq = seq_of(&events, label);
        events[seq as usize - 1].at_ms
    };
    assert_eq!(at("StepCompleted:nap") - at("StepStarted:nap"), 2_000);
    let b_starts: Vec<u64> = events
        .iter()
        .filter(|e| e.event.kind() == "StepStarted" && e.event.step() == Some("b"))
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(b_starts.len(), 2);
    assert_eq!(b_starts[1] - b_starts[0], 250);
    assert_eq!(at("ExecutionCompleted"), start + 100 + 2_000 + 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_events_before_a_failure() {
    let t = TestEngine::start(TWO, &[("worker", failing(&["b"], 400, "bad_request"))]).await;
    let execution = t.run(json!({})).await;
    let events = t.events_of(&execution.id).await;

    let completed_a = seq_of(&events, "StepCompleted:a");
    let failed_b = seq_of(&events, "StepFailed:b");
    let failed = seq_of(&events, "ExecutionFailed");
    assert!(completed_a < failed_b && failed_b < failed);
    assert_eq!(failed, events.len() as u64, "ExecutionFailed is last");
    match event(&events, "StepCompleted:a") {
        DomainEvent::StepCompleted { output, .. } => assert_eq!(output["step"], "a"),
        other => panic!("{other:?}"),
    }
    // The completed step keeps its output in the store even though the execution failed.
    assert!(t.step_row(&execution.id, "a").output.is_some());
    assert_eq!(t.step_row(&execution.id, "a").status, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ordered() {
    let yaml = "
name: ordered
steps:
  - { id: start, type: agent_task, agent: worker }
  - { id: l, type: agent_task, agent: worker, depends_on: [start] }
  - { id: r, type: timer, duration: 3s, depends_on: [start] }
  - { id: join, type: agent_task, agent: flaky, depends_on: [l, r], retry: { max_attempts: 3, initial_delay: 100ms } }
";
    let t = TestEngine::start(yaml, &[("worker", echo()), ("flaky", flaky(1))]).await;
    let execution = t.run(json!({})).await;
    let events = t.events_of(&execution.id).await;

    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq strictly increasing"
    );
    assert!(
        events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
        "at_ms non-decreasing: {:?}",
        events.iter().map(|e| e.at_ms).collect::<Vec<_>>()
    );
    assert_eq!(kinds(&events).last(), Some(&"ExecutionCompleted"));

    let bus = t.bus_events_of(&execution.id);
    assert_eq!(bus, events, "bus order == store order");
}

/// An agent's streamed progress becomes `AgentProgress` events of its execution, tagged with
/// the step and attempt, in order, between the step's start and its completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_progress_is_relayed_into_the_history_in_order() {
    let streaming = Behaviour {
        progress: true,
        delay_ms: 5,
        ..Behaviour::default()
    };
    let t = TestEngine::start(TWO, &[("worker", streaming)]).await;
    let (first, second) = tokio::join!(t.run(json!({})), t.run(json!({})));
    for execution in [first, second] {
        assert_eq!(execution.status.to_string(), "completed");
        let events = t.events_of(&execution.id).await;
        for step in ["a", "b"] {
            let at = |kind: &str| {
                events
                    .iter()
                    .position(|e| e.event.kind() == kind && e.event.step() == Some(step))
                    .unwrap_or_else(|| panic!("no {kind} for {step}"))
            };
            let progress: Vec<&proctor::event::EventRecord> = events
                .iter()
                .filter(|e| e.event.kind() == "AgentProgress" && e.event.step() == Some(step))
                .collect();
            let kinds: Vec<&str> = progress
                .iter()
                .map(|e| match &e.event {
                    DomainEvent::AgentProgress {
                        kind,
                        data,
                        attempt,
                        ..
                    } => {
                        // Never another execution's or step's report.
                        assert_eq!(data["execution_id"], json!(execution.id));
                        assert_eq!(data["step"], json!(step));
                        assert_eq!(*attempt, 1);
                        kind.as_str()
                    }
                    _ => unreachable!(),
                })
                .collect();
            assert_eq!(kinds, proctor::agent::PROGRESS_KINDS, "{step}");
            let (started, completed) = (at("StepStarted"), at("StepCompleted"));
            for e in &progress {
                let i = events.iter().position(|x| x.seq == e.seq).unwrap();
                assert!(
                    started < i && i < completed,
                    "{step}: progress outside its attempt"
                );
            }
        }
    }
}
