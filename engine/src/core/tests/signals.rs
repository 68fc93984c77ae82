//! `wait_signal`: a signal completes the waiting step with its payload; one sent earlier is
//! kept until the step is reached; a repeated signal id is applied once; timeouts fail the step
//! or complete it with the `timeout_output`.

use super::*;

const APPROVAL: &str = r#"
name: p
steps:
  - {id: draft, type: agent_task, agent: x}
  - {id: approval, type: wait_signal, signal: approve, depends_on: [draft]}
  - {id: publish, type: agent_task, agent: x, depends_on: [approval], input: {by: "{{steps.approval.output.payload.by}}"}}
"#;

fn signal(h: &mut Harness, id: &str, name: &str, payload: Value) -> Transition {
    h.apply(Input::Signal {
        id: id.to_string(),
        name: name.to_string(),
        payload,
    })
}

#[test]
fn a_signal_completes_the_waiting_step_with_its_payload() {
    let mut h = Harness::new(APPROVAL, json!({}));
    h.start();
    let tx = h.agent_ok("draft", json!({}));
    assert!(calls(&tx).is_empty(), "nothing to call while waiting");
    assert_eq!(h.status("approval"), StepStatus::Running);
    let tx = signal(&mut h, "s-1", "approve", json!({"by": "ana"}));
    assert_eq!(h.status("approval"), StepStatus::Completed);
    let output = h.step("approval").output.clone().unwrap();
    assert_eq!(
        output,
        json!({"signal": "approve", "signal_id": "s-1", "payload": {"by": "ana"}, "timed_out": false})
    );
    assert_eq!(calls(&tx)[0].input, json!({"by": "ana"}));
    assert_eq!(h.exec.signals[0].consumed_by.as_deref(), Some("approval"));
}

#[test]
fn a_signal_sent_early_is_kept_until_the_step_is_reached() {
    let mut h = Harness::new(APPROVAL, json!({}));
    // Even before the execution starts.
    signal(&mut h, "s-1", "approve", json!({"by": "bo"}));
    signal(&mut h, "s-2", "unrelated", json!(1));
    h.start();
    assert_eq!(h.status("approval"), StepStatus::Pending);
    let tx = h.agent_ok("draft", json!({}));
    assert_eq!(h.status("approval"), StepStatus::Completed);
    assert_eq!(calls(&tx)[0].input, json!({"by": "bo"}));
    assert!(h.exec.signals[1].consumed_by.is_none());
}

#[test]
fn a_repeated_signal_id_is_applied_once() {
    let yaml = r#"
name: p
steps:
  - {id: one, type: wait_signal, signal: go}
  - {id: two, type: wait_signal, signal: go, depends_on: [one]}
"#;
    let mut h = Harness::new(yaml, json!({}));
    h.start();
    signal(&mut h, "s-1", "go", json!(1));
    assert_eq!(h.status("one"), StepStatus::Completed);
    // A client retrying the same send: no second signal, so `two` keeps waiting.
    assert_noop(&signal(&mut h, "s-1", "go", json!(1)));
    assert_eq!(h.status("two"), StepStatus::Running);
    assert_eq!(h.exec.signals.len(), 1);
    signal(&mut h, "s-2", "go", json!(2));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(h.step("two").output.clone().unwrap()["payload"], json!(2));
}

#[test]
fn a_timeout_fails_the_step_or_completes_it_with_the_default() {
    let yaml = "name: p\nsteps:\n  - {id: w, type: wait_signal, signal: go, timeout: 1m}\n";
    let mut h = Harness::new(yaml, json!({}));
    let tx = h.start();
    assert_eq!(wakes(&tx), vec![(0, 1, T0 + 60_000)]);
    h.advance(60_000);
    h.wake("w");
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    let error = h.step("w").last_error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert_eq!(error.message, "no signal 'go' within 1m");

    let yaml = "name: p\nsteps:\n  - {id: w, type: wait_signal, signal: go, timeout: 1m, timeout_output: {approved: false}}\n";
    let mut h = Harness::new(yaml, json!({}));
    h.start();
    h.advance(60_000);
    h.wake("w");
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    let output = h.step("w").output.clone().unwrap();
    assert_eq!(output["timed_out"], json!(true));
    assert_eq!(output["payload"], json!({"approved": false}));
    // A signal after the timeout is kept but changes nothing.
    assert_noop(&signal(&mut h, "late", "go", json!(1)));
}

#[test]
fn a_signal_before_the_timeout_abandons_the_timer_and_recovery_rearms_it() {
    let yaml = "name: p\nsteps:\n  - {id: w, type: wait_signal, signal: go, timeout: 10s}\n";
    let mut h = Harness::new(yaml, json!({}));
    h.start();
    h.restart(1_000);
    let tx = h.recover(RecoveryAction::Resume);
    assert_eq!(
        wakes(&tx),
        vec![(0, 1, T0 + 10_000)],
        "the original deadline"
    );
    let tx = signal(&mut h, "s", "go", json!(null));
    assert!(tx.commands.contains(&Command::Abandon { step: 0 }));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
}

#[test]
fn signals_are_bounded_and_ignored_once_terminal() {
    let yaml = "name: p\nsteps:\n  - {id: w, type: wait_signal, signal: go}\n";
    let mut h = Harness::new(yaml, json!({}));
    for i in 0..crate::core::MAX_SIGNALS_PER_EXECUTION {
        signal(&mut h, &format!("s{i}"), "other", json!(i));
    }
    assert_noop(&signal(&mut h, "one-too-many", "go", json!(null)));
    h.cancel(None);
    assert_noop(&signal(&mut h, "after", "go", json!(null)));
}

#[test]
fn validation_names_signal_problems() {
    let def = definition::parse(
        "p.yaml",
        "name: p\nsteps:\n  - {id: w, type: wait_signal, signal: 'no spaces', timeout_output: 1}\n",
        Format::Yaml,
    )
    .unwrap();
    let out = definition::validate("p.yaml", &def, None)
        .unwrap_err()
        .to_string();
    assert!(
        out.contains("step 'w': signal: a name starts with"),
        "{out}"
    );
    assert!(
        out.contains("step 'w': timeout_output without a timeout"),
        "{out}"
    );
}

#[test]
fn an_audited_change_records_its_audit_event_first_and_a_no_op_records_nothing() {
    let yaml = "name: p\nsteps:\n  - {id: w, type: wait_signal, signal: go}\n";
    let mut h = Harness::new(yaml, json!({}));
    let audited = |input: Input| Input::Audited {
        actor: Some("ana".into()),
        action: "x".into(),
        detail: None,
        input: Box::new(input),
    };
    let tx = h.apply(audited(Input::Start));
    assert_eq!(
        kinds(&tx.events)[..3],
        ["Audit", "ExecutionStarted", "StepStarted:w"]
    );
    h.apply(audited(Input::Pause));
    let next_seq = h.exec.next_seq;
    assert_noop(&h.apply(audited(Input::Pause)));
    assert_eq!(
        h.exec.next_seq, next_seq,
        "the audit event of a no-op is not kept"
    );
    h.assert_seqs();
}
