//! Sequential chains: order, data passed between steps, input, a failure in the middle.

use proctor::core::{ExecutionStatus, StepStatus};
use proctor_tests::*;
use serde_json::json;

const CHAIN: &str = "
name: chain
steps:
  - { id: a, type: agent_task, agent: worker }
  - { id: b, type: agent_task, agent: worker, depends_on: [a] }
  - { id: c, type: agent_task, agent: worker, depends_on: [b] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_step_chain_completes_in_order() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    // Let time move one millisecond per delivered event, so timestamps order the steps.
    let clock = t.clock.clone();
    t.engine.bus().subscribe(move |_| clock.advance_ms(1));

    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(t.requested_steps("worker"), ["a", "b", "c"]);

    let (a, b, c) = (
        t.step_row(&execution.id, "a"),
        t.step_row(&execution.id, "b"),
        t.step_row(&execution.id, "c"),
    );
    for row in [&a, &b, &c] {
        assert_eq!(row.status, "completed");
    }
    let started = |r: &StepRow| r.started_at_ms.expect("started");
    let finished = |r: &StepRow| r.finished_at_ms.expect("finished");
    assert!(started(&a) < started(&b) && started(&b) < started(&c));
    assert!(finished(&a) <= started(&b), "b starts after a finished");
    assert!(finished(&b) <= started(&c), "c starts after b finished");

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepCompleted:b",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_passed_between_steps() {
    let yaml = "
name: pass
steps:
  - { id: a, type: agent_task, agent: worker }
  - id: b
    type: agent_task
    agent: worker
    depends_on: [a]
    input: { value: '{{steps.a.output.x}}', label: '{{steps.a.output.label}}', both: 'x={{steps.a.output.x}}' }
";
    let t = TestEngine::start(
        yaml,
        &[(
            "worker",
            with_outputs(&[("a", json!({"x": 42, "label": "forty-two"}))]),
        )],
    )
    .await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(
        step(&execution, "a").output,
        Some(json!({"x": 42, "label": "forty-two"}))
    );

    let requests = t.requests("worker");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].step_id, "b");
    let input = &requests[1].input;
    assert_eq!(input["label"], "forty-two");
    assert_eq!(input["both"], "x=42");
    // A whole-expression template keeps the JSON type: a number, not the string "42".
    assert!(
        input["value"].is_number(),
        "typed number stays a number: {input}"
    );
    assert_eq!(input["value"], json!(42));
    assert_eq!(
        step(&execution, "b").output.as_ref().unwrap()["echo"],
        *input
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_available_to_the_first_step() {
    let yaml = "
name: input
steps:
  - id: a
    type: agent_task
    agent: worker
    input: { greeting: 'hello {{input.x}}', x: '{{input.x}}', n: '{{input.n}}', all: '{{input}}' }
";
    let t = TestEngine::start(yaml, &[("worker", echo())]).await;
    let input = json!({"x": "world", "n": 7, "flags": [true, false]});
    let execution = t.run(input.clone()).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);

    let requests = t.requests("worker");
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].input,
        json!({"greeting": "hello world", "x": "world", "n": 7, "all": input})
    );
    assert_eq!(t.execution_row(&execution.id).input, input);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middle_step_failure_stops_the_chain() {
    let t = TestEngine::start(CHAIN, &[("worker", failing(&["b"], 409, "conflict"))]).await;
    let execution = t.run(json!({})).await;

    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert_eq!(step(&execution, "a").status, StepStatus::Completed);
    assert_eq!(step(&execution, "b").status, StepStatus::Failed);
    assert_eq!(step(&execution, "c").status, StepStatus::Pending);
    assert_eq!(t.requested_steps("worker"), ["a", "b"], "c is never called");

    let c = t.step_row(&execution.id, "c");
    assert_eq!(c.status, "pending");
    assert_eq!(c.attempt, 0);
    assert_eq!((c.started_at_ms, c.finished_at_ms), (None, None));
    assert_eq!(t.step_row(&execution.id, "b").status, "failed");
    assert_eq!(t.execution_row(&execution.id).status, "failed");

    let events = t.events_of(&execution.id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepFailed:b",
            "ExecutionFailed",
        ],
    );
    assert!(events.iter().all(|e| e.event.step() != Some("c")));
}
