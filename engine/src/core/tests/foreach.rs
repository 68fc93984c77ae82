//! `foreach` loops: items in order up to `max_concurrency`, outputs collected in item order,
//! break conditions, per-item error policies, retries, recovery and the list limit.

use super::*;
use crate::core::CallStatus;

fn each(extra: &str) -> String {
    format!(
        r#"
name: p
steps:
  - id: loop
    type: foreach
    items: "{{{{input.orders}}}}"
    agent: x
    input: {{order: "{{{{item}}}}", position: "{{{{index}}}}"}}
    retry: {{max_attempts: 2, initial_delay: 100ms}}
{extra}
  - {{id: after, type: agent_task, agent: x, depends_on: [loop], input: {{all: "{{{{steps.loop.output.items}}}}"}}}}
"#
    )
}

fn item_calls(tx: &Transition) -> Vec<(u32, u32, Value)> {
    calls(tx)
        .into_iter()
        .filter_map(|c| match c.lane {
            Lane::Item(i) => Some((i, c.attempt, c.input)),
            _ => None,
        })
        .collect()
}

fn item_result(h: &mut Harness, index: u32, result: Result<Value, StepError>) -> Transition {
    let step = h.idx("loop");
    let attempt = h.exec.steps[step].detail.items[index as usize].attempt;
    h.apply(Input::AgentReturned {
        step,
        lane: Lane::Item(index),
        attempt,
        result,
    })
}

#[test]
fn items_run_in_order_within_the_concurrency_and_outputs_keep_item_order() {
    let mut h = Harness::new(
        &each("    max_concurrency: 2"),
        json!({"orders": ["a", "b", "c"]}),
    );
    let tx = h.start();
    assert_eq!(
        item_calls(&tx),
        vec![
            (0, 1, json!({"order": "a", "position": 0})),
            (1, 1, json!({"order": "b", "position": 1}))
        ]
    );
    let first = calls(&tx);
    assert_eq!(first[0].step_id, "loop#0");
    assert_eq!(first[0].idempotency_key, "ex-1:loop#0");
    // Item 1 finishes first; item 2 takes its slot.
    let tx = item_result(&mut h, 1, Ok(json!("B")));
    assert_eq!(
        item_calls(&tx),
        vec![(2, 1, json!({"order": "c", "position": 2}))]
    );
    item_result(&mut h, 2, Ok(json!("C")));
    assert_eq!(h.status("loop"), StepStatus::Running);
    let tx = item_result(&mut h, 0, Ok(json!("A")));
    assert_eq!(h.status("loop"), StepStatus::Completed);
    let output = h.step("loop").output.clone().unwrap();
    assert_eq!(output["items"], json!(["A", "B", "C"]));
    assert_eq!(output["count"], json!(3));
    assert_eq!(call_ids(&tx), vec!["after"]);
    assert_eq!(calls(&tx)[0].input, json!({"all": ["A", "B", "C"]}));
}

#[test]
fn break_when_stops_starting_items_and_keeps_those_in_flight() {
    let mut h = Harness::new(
        &each("    max_concurrency: 2\n    break_when: \"output.stop == true\""),
        json!({"orders": [1, 2, 3, 4]}),
    );
    h.start();
    item_result(&mut h, 0, Ok(json!({"stop": true})));
    assert!(h.event_kinds().contains(&"LoopBroken:loop".to_string()));
    assert_eq!(
        h.step("loop").detail.items.len(),
        2,
        "no item starts after the break"
    );
    item_result(&mut h, 1, Ok(json!({"stop": false})));
    let output = h.step("loop").output.clone().unwrap();
    assert_eq!(output["items"], json!([{"stop": true}, {"stop": false}]));
    assert_eq!(output["broken_at"], json!(0));
}

#[test]
fn a_failed_item_is_skipped_continued_or_fails_the_loop() {
    let orders = json!({"orders": ["a", "b", "c"]});
    let declined = || agent_error("declined");
    let run = |policy: &str| {
        let mut h = Harness::new(
            &each(&format!("    on_item_error: {policy}")),
            orders.clone(),
        );
        h.start();
        item_result(&mut h, 0, Ok(json!("A")));
        // Item 1: two attempts (its retry policy), both declined.
        item_result(&mut h, 1, Err(declined()));
        h.advance(100);
        let step = h.idx("loop");
        h.apply(Input::Wake {
            step,
            lane: Lane::Item(1),
            attempt: 1,
        });
        item_result(&mut h, 1, Err(declined()));
        h
    };

    let mut h = run("skip");
    item_result(&mut h, 2, Ok(json!("C")));
    let output = h.step("loop").output.clone().unwrap();
    assert_eq!(output["items"], json!(["A", "C"]));
    assert_eq!(output["skipped"], json!([1]));

    let mut h = run("continue");
    item_result(&mut h, 2, Ok(json!("C")));
    let output = h.step("loop").output.clone().unwrap();
    assert_eq!(output["items"], json!(["A", null, "C"]));
    assert_eq!(output["errors"]["1"]["type"], json!("declined"));

    let h = run("fail");
    assert_eq!(h.status("loop"), StepStatus::Failed);
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.step("loop").detail.items.len(), 2, "item 2 never started");
    assert!(
        h.exec.error.clone().unwrap().contains("item 1"),
        "{:?}",
        h.exec.error
    );
}

#[test]
fn failing_the_loop_abandons_the_items_in_flight() {
    let mut h = Harness::new(
        &each("    max_concurrency: 3"),
        json!({"orders": ["a", "b", "c"]}),
    );
    h.start();
    let tx = item_result(&mut h, 1, Err(err(ErrorKind::InvalidResponse, "garbage")));
    let step = h.idx("loop");
    assert!(tx.commands.contains(&Command::Abandon { step }));
    let items = &h.step("loop").detail.items;
    assert_eq!(items[0].status, CallStatus::Cancelled);
    assert_eq!(items[2].status, CallStatus::Cancelled);
    // A late result of an abandoned item changes nothing.
    assert_noop(&item_result(&mut h, 0, Ok(json!("A"))));
}

#[test]
fn an_empty_list_completes_at_once_and_a_non_list_fails() {
    let mut h = Harness::new(&each(""), json!({"orders": []}));
    let tx = h.start();
    assert_eq!(h.status("loop"), StepStatus::Completed);
    assert_eq!(h.step("loop").output.clone().unwrap()["items"], json!([]));
    assert_eq!(call_ids(&tx), vec!["after"]);

    let mut h = Harness::new(&each(""), json!({"orders": "nope"}));
    h.start();
    assert_eq!(h.status("loop"), StepStatus::Failed);
    let error = h.step("loop").last_error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Expression);
    assert!(error.message.contains("not a list"), "{}", error.message);
}

#[test]
fn a_list_over_the_limit_fails_with_both_numbers() {
    let too_many: Vec<u32> = (0..=crate::definition::MAX_FOREACH_ITEMS as u32).collect();
    let mut h = Harness::new(&each(""), json!({ "orders": too_many }));
    let tx = h.start();
    assert!(calls(&tx).is_empty());
    let error = h.step("loop").last_error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Limit);
    assert_eq!(error.message, "items: 1001 items, over the limit of 1000");
}

#[test]
fn recovery_redispatches_items_in_flight_with_their_keys_and_inputs() {
    let mut h = Harness::new(
        &each("    max_concurrency: 2"),
        json!({"orders": ["a", "b", "c"]}),
    );
    let first = calls(&h.start());
    item_result(&mut h, 0, Ok(json!("A")));
    let running = h.pending_item_calls();
    let stored = h.restart(1_000);
    assert_eq!(
        stored.recovery_action(h.now, u64::MAX),
        RecoveryAction::RetryStep
    );
    let again = calls(&h.recover(RecoveryAction::RetryStep));
    assert_eq!(again, running);
    assert_eq!(again[0], first[1], "item 1 again, same key and input");
}

#[test]
fn pause_stops_new_items_and_resume_goes_on() {
    let mut h = Harness::new(&each(""), json!({"orders": ["a", "b"]}));
    h.start();
    h.pause();
    let tx = item_result(&mut h, 0, Ok(json!("A")));
    assert!(calls(&tx).is_empty(), "no item starts while paused");
    let tx = h.resume();
    assert_eq!(
        item_calls(&tx),
        vec![(1, 1, json!({"order": "b", "position": 1}))]
    );
}

#[test]
fn validation_names_loop_problems() {
    let check = |yaml: &str| {
        let def = definition::parse("p.yaml", yaml, Format::Yaml).unwrap();
        definition::validate("p.yaml", &def, None)
            .unwrap_err()
            .to_string()
    };
    let out = check(
        "name: p\nsteps:\n  - {id: l, type: foreach, items: 'input.x', agent: x, max_concurrency: 0, break_when: 'nope > 1', input: {v: '{{output}}'}}\n",
    );
    assert!(
        out.contains("step 'l': items: must be a `{{ expr }}`"),
        "{out}"
    );
    assert!(
        out.contains("step 'l': max_concurrency must be between 1 and 100"),
        "{out}"
    );
    assert!(
        out.contains("step 'l': break_when:") && out.contains("unknown variable `nope`"),
        "{out}"
    );
    assert!(
        out.contains("step 'l': input:") && out.contains("unknown variable `output`"),
        "{out}"
    );
}

impl Harness {
    /// Item calls whose attempt is still running.
    fn pending_item_calls(&self) -> Vec<AgentCall> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::CallAgent(call) => Some(call),
                _ => None,
            })
            .filter(|call| match call.lane {
                Lane::Item(i) => self.exec.steps[call.step]
                    .detail
                    .items
                    .get(i as usize)
                    .is_some_and(|it| {
                        it.status == CallStatus::Running && it.attempt == call.attempt
                    }),
                _ => false,
            })
            .collect()
    }
}

#[test]
fn progress_counts_steps_as_they_are_decided() {
    let mut h = Harness::new(&each("    max_concurrency: 2"), json!({"orders": ["a"]}));
    assert_eq!(h.exec.progress().percent, 0);
    assert_eq!(h.exec.progress().pending, 2);
    h.start();
    let p = h.exec.progress();
    assert_eq!((p.running, p.pending, p.percent), (1, 1, 0));
    item_result(&mut h, 0, Ok(json!("A")));
    let p = h.exec.progress();
    assert_eq!((p.completed, p.running, p.percent), (1, 1, 50));
    h.agent_ok("after", json!({}));
    let p = h.exec.progress();
    assert_eq!((p.completed, p.total, p.percent), (2, 2, 100));
}
