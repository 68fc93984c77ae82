//! Compensation (saga): reverse completion order, one at a time, each with its own retries,
//! at most once; a compensation that fails for good fails the execution and stops there.

use super::*;
use crate::core::CallStatus;

/// `a` and `b` each reserve something and can undo it; `c` charges and fails for good.
const SAGA: &str = r#"
name: saga
steps:
  - id: a
    type: agent_task
    agent: inventory
    input: {sku: "{{input.sku}}"}
    compensate: {agent: inventory, input: {release: "{{steps.a.output.hold}}"}}
  - id: b
    type: agent_task
    agent: hotel
    depends_on: [a]
    compensate:
      agent: hotel
      input: {cancel: "{{steps.b.output.booking}}"}
      timeout: 2s
      retry: {max_attempts: 3, initial_delay: 100ms}
  - id: c
    type: agent_task
    agent: payment
    depends_on: [b]
    on_error: compensate
"#;

fn compensation_calls(h: &Harness) -> Vec<AgentCall> {
    h.commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::CallAgent(call) if call.lane == Lane::Compensation => Some(call),
            _ => None,
        })
        .collect()
}

/// Returns the current attempt of `step_id`'s compensating action.
fn undo_result(h: &mut Harness, step_id: &str, result: Result<Value, StepError>) -> Transition {
    let step = h.idx(step_id);
    let attempt = h.exec.steps[step]
        .detail
        .compensation
        .as_ref()
        .expect("compensation started")
        .attempt;
    h.apply(Input::AgentReturned {
        step,
        lane: Lane::Compensation,
        attempt,
        result,
    })
}

/// Runs SAGA up to the moment `c` has failed: `a` and `b` completed.
fn saga_until_failure() -> Harness {
    let mut h = Harness::new(SAGA, json!({"sku": "X1"}));
    h.start();
    h.agent_ok("a", json!({"hold": "H-7"}));
    h.agent_ok("b", json!({"booking": "B-9"}));
    h.agent_err("c", agent_error("card_declined"));
    h
}

#[test]
fn compensates_completed_steps_in_reverse_order_one_at_a_time() {
    let mut h = saga_until_failure();
    assert_eq!(h.exec.status, ExecutionStatus::Running, "compensating");
    let run = h.exec.compensation.clone().expect("compensation began");
    assert_eq!(run.order, vec!["b", "a"]);
    assert_eq!(run.cause_step.as_deref(), Some("c"));
    let first = compensation_calls(&h);
    assert_eq!(first.len(), 1, "one compensation at a time: {first:?}");
    assert_eq!(first[0].step_id, "b#compensate");
    assert_eq!(first[0].idempotency_key, "ex-1:b#compensate");
    assert_eq!(first[0].agent, "hotel");
    assert_eq!(first[0].input, json!({"cancel": "B-9"}));
    assert_eq!(first[0].timeout_ms, 2_000);

    undo_result(&mut h, "b", Ok(json!({"cancelled": true})));
    assert_eq!(h.status("b"), StepStatus::Compensated);
    let calls = compensation_calls(&h);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].step_id, "a#compensate");
    assert_eq!(calls[1].input, json!({"release": "H-7"}));

    undo_result(&mut h, "a", Ok(json!({})));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.status("a"), StepStatus::Compensated);
    assert_eq!(h.status("c"), StepStatus::Failed);
    let error = h.exec.error.clone().unwrap();
    assert!(error.contains("card_declined"), "{error}");
    assert!(error.ends_with("(compensated: b, a)"), "{error}");
    let tail: Vec<String> = h.event_kinds().into_iter().skip(6).collect();
    assert_eq!(
        tail,
        vec![
            "StepFailed:c",
            "CompensationStarted",
            "CompensationStepStarted:b",
            "StepCompensated:b",
            "CompensationStepStarted:a",
            "StepCompensated:a",
            "CompensationCompleted",
            "ExecutionFailed",
        ]
    );
    h.assert_seqs();
}

#[test]
fn order_follows_completion_not_definition() {
    let yaml = r#"
name: p
on_failure: compensate
steps:
  - {id: a, type: agent_task, agent: x, compensate: {agent: x}}
  - {id: b, type: agent_task, agent: x, compensate: {agent: x}}
  - {id: n, type: agent_task, agent: x}
  - {id: c, type: agent_task, agent: x, depends_on: [a, b, n]}
"#;
    let mut h = Harness::new(yaml, json!({}));
    h.start();
    h.agent_ok("b", json!(1));
    h.agent_ok("n", json!(2));
    h.agent_ok("a", json!(3));
    h.agent_err("c", err(ErrorKind::Server, "boom"));
    // `n` has no compensating action; `a` completed last, so it is undone first.
    assert_eq!(h.exec.compensation.as_ref().unwrap().order, vec!["a", "b"]);
    assert_eq!(
        call_ids(h.transitions.last().unwrap()),
        vec!["a#compensate"]
    );
}

#[test]
fn a_failing_compensation_retries_with_its_own_policy_and_the_same_key() {
    let mut h = saga_until_failure();
    let tx = undo_result(&mut h, "b", Err(err(ErrorKind::Server, "503")));
    let at_ms = match tx.commands.as_slice() {
        [Command::Wake {
            lane: Lane::Compensation,
            attempt: 1,
            at_ms,
            ..
        }] => *at_ms,
        other => panic!("expected one compensation wake-up, got {other:?}"),
    };
    assert_eq!(at_ms, h.now + 100);
    assert!(h
        .event_kinds()
        .contains(&"CompensationRetrying:b".to_string()));
    h.advance(100);
    let b = h.idx("b");
    let tx = h.apply(Input::Wake {
        step: b,
        lane: Lane::Compensation,
        attempt: 1,
    });
    let retry = calls(&tx);
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempt, 2);
    assert_eq!(retry[0].idempotency_key, "ex-1:b#compensate");
    assert_eq!(retry[0].input, json!({"cancel": "B-9"}));
    // A late result of attempt 1 is ignored.
    assert_noop(&h.apply(Input::AgentReturned {
        step: b,
        lane: Lane::Compensation,
        attempt: 1,
        result: Ok(json!({})),
    }));
    undo_result(&mut h, "b", Ok(json!({})));
    assert_eq!(h.status("b"), StepStatus::Compensated);
}

#[test]
fn a_compensation_that_keeps_failing_fails_the_execution_and_never_loops() {
    let mut h = saga_until_failure();
    for _ in 0..3 {
        undo_result(&mut h, "b", Err(err(ErrorKind::Server, "503")));
        h.advance(10_000);
        let b = h.idx("b");
        let attempt = h.exec.steps[b]
            .detail
            .compensation
            .as_ref()
            .unwrap()
            .attempt;
        h.apply(Input::Wake {
            step: b,
            lane: Lane::Compensation,
            attempt,
        });
    }
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    let undo = h.step("b").detail.compensation.clone().unwrap();
    assert_eq!(undo.status, CallStatus::Failed);
    assert_eq!(
        undo.attempt, 3,
        "max_attempts of the compensation's own policy"
    );
    assert_eq!(h.status("b"), StepStatus::Completed, "not compensated");
    assert_eq!(
        h.status("a"),
        StepStatus::Completed,
        "never tried after b failed"
    );
    let error = h.exec.error.clone().unwrap();
    assert!(
        error.contains("compensation of 'b' failed: server: 503 (not compensated: b, a)"),
        "{error}"
    );
    assert!(compensation_calls(&h)
        .iter()
        .all(|c| c.step_id == "b#compensate"));
    assert!(h
        .event_kinds()
        .contains(&"CompensationFailed:b".to_string()));
    // Terminal: nothing more happens, whatever arrives.
    assert_noop(&h.apply(Input::Resume));
    let b = h.idx("b");
    assert_noop(&h.apply(Input::AgentReturned {
        step: b,
        lane: Lane::Compensation,
        attempt: 3,
        result: Ok(json!({})),
    }));
}

#[test]
fn a_compensation_input_that_cannot_render_fails_without_a_call() {
    let yaml = r#"
name: p
steps:
  - {id: a, type: agent_task, agent: x, compensate: {agent: x, input: {v: "{{steps.a.output.missing.deeper}}"}}}
  - {id: c, type: agent_task, agent: x, depends_on: [a], on_error: compensate}
"#;
    let mut h = Harness::new(yaml, json!({}));
    h.start();
    h.agent_ok("a", json!({}));
    h.agent_err("c", err(ErrorKind::Server, "boom"));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert!(compensation_calls(&h).is_empty());
    let undo = h.step("a").detail.compensation.clone().unwrap();
    assert_eq!(undo.last_error.unwrap().kind, ErrorKind::Expression);
}

#[test]
fn without_a_compensate_policy_a_failure_just_fails() {
    let yaml = SAGA.replace("    on_error: compensate\n", "");
    let mut h = Harness::new(&yaml, json!({"sku": "X1"}));
    h.start();
    h.agent_ok("a", json!({"hold": "H"}));
    h.agent_ok("b", json!({"booking": "B"}));
    h.agent_err("c", agent_error("card_declined"));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert!(h.exec.compensation.is_none());
    assert!(compensation_calls(&h).is_empty());
}

#[test]
fn recovery_redispatches_the_compensation_in_flight_with_its_key() {
    let mut h = saga_until_failure();
    undo_result(&mut h, "b", Ok(json!({})));
    let before = compensation_calls(&h).pop().unwrap();
    let stored = h.restart(5_000);
    assert_eq!(
        stored.recovery_action(h.now, u64::MAX),
        RecoveryAction::RetryStep
    );
    let tx = h.recover(RecoveryAction::RetryStep);
    let again = calls(&tx);
    assert_eq!(again, vec![before]);
    undo_result(&mut h, "a", Ok(json!({})));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    // Each step compensated exactly once in the history.
    let compensated = h
        .event_kinds()
        .into_iter()
        .filter(|k| k.starts_with("StepCompensated"))
        .collect::<Vec<_>>();
    assert_eq!(compensated, vec!["StepCompensated:b", "StepCompensated:a"]);
}

#[test]
fn recovery_rearms_a_compensation_backoff_at_its_deadline() {
    let mut h = saga_until_failure();
    undo_result(&mut h, "b", Err(err(ErrorKind::Timeout, "slow")));
    let deadline = h.step("b").detail.compensation.as_ref().unwrap().wake_at_ms;
    h.restart(10);
    let tx = h.recover(RecoveryAction::Resume);
    let b = h.idx("b");
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            step: b,
            lane: Lane::Compensation,
            attempt: 1,
            at_ms: deadline.unwrap(),
        }]
    );
}

#[test]
fn cancel_abandons_the_compensation_in_flight() {
    let mut h = saga_until_failure();
    let tx = h.cancel(Some("operator"));
    let b = h.idx("b");
    assert_eq!(tx.commands, vec![Command::Abandon { step: b }]);
    assert_eq!(h.exec.status, ExecutionStatus::Cancelled);
    let undo = h.step("b").detail.compensation.clone().unwrap();
    assert_eq!(undo.status, CallStatus::Cancelled);
    assert!(h
        .event_kinds()
        .contains(&"CompensationCancelled:b".to_string()));
}

#[test]
fn pause_holds_the_next_compensation_until_resume() {
    let mut h = saga_until_failure();
    h.pause();
    // The compensation in flight finishes while paused; the next one waits.
    undo_result(&mut h, "b", Ok(json!({})));
    assert_eq!(h.status("b"), StepStatus::Compensated);
    assert_eq!(compensation_calls(&h).len(), 1);
    let tx = h.resume();
    assert_eq!(call_ids(&tx), vec!["a#compensate"]);
}

#[test]
fn stop_on_failure_cancels_running_siblings_which_are_then_not_compensated() {
    let yaml = r#"
name: p
on_failure: compensate
steps:
  - {id: a, type: agent_task, agent: x, compensate: {agent: x}}
  - {id: slow, type: agent_task, agent: x, compensate: {agent: x}}
  - {id: c, type: agent_task, agent: x, depends_on: [a]}
"#;
    let mut h = Harness::new(yaml, json!({}));
    h.start();
    h.agent_ok("a", json!({}));
    h.agent_err("c", err(ErrorKind::InvalidResponse, "garbage"));
    assert_eq!(h.status("slow"), StepStatus::Cancelled);
    assert_eq!(h.exec.compensation.as_ref().unwrap().order, vec!["a"]);

    // With stop_on_failure: false the running sibling finishes first and is compensated too.
    let yaml = yaml.replace(
        "on_failure: compensate",
        "on_failure: compensate\nstop_on_failure: false",
    );
    let mut h = Harness::new(&yaml, json!({}));
    h.start();
    h.agent_ok("a", json!({}));
    h.agent_err("c", err(ErrorKind::InvalidResponse, "garbage"));
    assert!(
        h.exec.compensation.is_none(),
        "waits for the running sibling"
    );
    h.agent_ok("slow", json!({}));
    assert_eq!(
        h.exec.compensation.as_ref().unwrap().order,
        vec!["slow", "a"]
    );
}

#[test]
fn validation_names_compensation_problems() {
    let check = |yaml: &str| {
        let def = definition::parse("p.yaml", yaml, Format::Yaml).unwrap();
        definition::validate("p.yaml", &def, Some(&["x".to_string()]))
            .unwrap_err()
            .to_string()
    };
    let out =
        check("name: p\nsteps:\n  - {id: a, type: agent_task, agent: x, on_error: compensate}\n");
    assert!(
        out.contains("step 'a': on_error is compensate but no step declares a `compensate` action"),
        "{out}"
    );
    let out =
        check("name: p\non_failure: compensate\nsteps:\n  - {id: a, type: agent_task, agent: x}\n");
    assert!(out.contains("p.yaml: on_failure is compensate"), "{out}");
    let out = check(
        "name: p\nsteps:\n  - {id: a, type: agent_task, agent: x, compensate: {agent: y, retry: {max_attempts: 0}, input: {v: '{{nope.x}}'}}}\n",
    );
    assert!(
        out.contains("step 'a': compensate.agent: unknown agent 'y'"),
        "{out}"
    );
    assert!(
        out.contains("step 'a': compensate.retry.max_attempts"),
        "{out}"
    );
    assert!(out.contains("step 'a': compensate.input:"), "{out}");
}
