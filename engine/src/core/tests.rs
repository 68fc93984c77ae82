//! Unit tests of the pure execution core: driven input by input, with no runtime.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::{
    AgentCall, Command, ErrorKind, Execution, ExecutionStatus, Input, Lane, RecoveryAction,
    SkipReason, StepError, StepState, StepStatus, Transition,
};
use crate::definition::{self, Format, ProcessDef};
use crate::event::{DomainEvent, EventRecord};

mod compensation;
mod foreach;
mod signals;

const EXEC_ID: &str = "ex-1";
const T0: u64 = 1_000;

/// Parses and validates a YAML definition, as the loader does.
fn def(yaml: &str) -> Arc<ProcessDef> {
    let def = definition::parse("test.yaml", yaml, Format::Yaml)
        .unwrap_or_else(|e| panic!("definition does not parse: {e}"));
    definition::validate("test.yaml", &def, None)
        .unwrap_or_else(|e| panic!("definition does not validate: {e}"));
    Arc::new(def)
}

/// Drives one execution exactly as a driver would: one input at a time, with a fake clock and a
/// seeded RNG, recording every transition.
struct Harness {
    exec: Execution,
    now: u64,
    rng: ChaCha8Rng,
    transitions: Vec<Transition>,
}

impl Harness {
    fn new(yaml: &str, input: Value) -> Harness {
        Harness::with_seed(yaml, input, 42)
    }

    fn with_seed(yaml: &str, input: Value, seed: u64) -> Harness {
        Harness {
            exec: Execution::new(EXEC_ID.to_string(), def(yaml), input, T0),
            now: T0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            transitions: Vec::new(),
        }
    }

    fn apply(&mut self, input: Input) -> Transition {
        let tx = self.exec.apply(input, self.now, &mut self.rng);
        self.transitions.push(tx.clone());
        tx
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    fn idx(&self, step_id: &str) -> usize {
        self.exec
            .process
            .position(step_id)
            .unwrap_or_else(|| panic!("no step {step_id}"))
    }

    fn step(&self, step_id: &str) -> &StepState {
        &self.exec.steps[self.idx(step_id)]
    }

    fn status(&self, step_id: &str) -> StepStatus {
        self.step(step_id).status
    }

    fn start(&mut self) -> Transition {
        self.apply(Input::Start)
    }

    /// The step's current attempt returns `result`.
    fn agent_result(&mut self, step_id: &str, result: Result<Value, StepError>) -> Transition {
        let step = self.idx(step_id);
        let attempt = self.exec.steps[step].attempt;
        self.apply(Input::AgentReturned {
            lane: Lane::Main,
            step,
            attempt,
            result,
        })
    }

    fn agent_ok(&mut self, step_id: &str, output: Value) -> Transition {
        self.agent_result(step_id, Ok(output))
    }

    fn agent_err(&mut self, step_id: &str, error: StepError) -> Transition {
        self.agent_result(step_id, Err(error))
    }

    /// Delivers the wake-up for the step's current attempt.
    fn wake(&mut self, step_id: &str) -> Transition {
        let step = self.idx(step_id);
        let attempt = self.exec.steps[step].attempt;
        self.apply(Input::Wake {
            lane: Lane::Main,
            step,
            attempt,
        })
    }

    fn cancel(&mut self, reason: Option<&str>) -> Transition {
        self.apply(Input::Cancel {
            reason: reason.map(str::to_string),
        })
    }

    fn events(&self) -> Vec<EventRecord> {
        self.transitions
            .iter()
            .flat_map(|t| t.events.iter().cloned())
            .collect()
    }

    fn commands(&self) -> Vec<Command> {
        self.transitions
            .iter()
            .flat_map(|t| t.commands.iter().cloned())
            .collect()
    }

    /// Every event so far as `Kind` or `Kind:step`.
    fn event_kinds(&self) -> Vec<String> {
        kinds(&self.events())
    }

    /// Agent calls issued whose attempt is still running (what the driver would be waiting on).
    fn pending_calls(&self) -> Vec<AgentCall> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::CallAgent(call) => Some(call),
                _ => None,
            })
            .filter(|call| {
                let st = &self.exec.steps[call.step];
                st.status == StepStatus::Running && st.attempt == call.attempt
            })
            .collect()
    }

    fn pending_ids(&self) -> Vec<String> {
        self.pending_calls()
            .into_iter()
            .map(|c| c.step_id)
            .collect()
    }

    fn pause(&mut self) -> Transition {
        self.apply(Input::Pause)
    }

    fn resume(&mut self) -> Transition {
        self.apply(Input::Resume)
    }

    fn recover(&mut self, action: RecoveryAction) -> Transition {
        self.apply(Input::Recover { action })
    }

    /// Simulates an engine restart `down_ms` later: the stored execution and its events
    /// survive, the commands in flight (agent calls, armed wake-ups) are lost. The harness goes
    /// on from a copy of the stored state, which is also returned.
    fn restart(&mut self, down_ms: u64) -> Execution {
        let stored = self.exec.clone();
        for tx in &mut self.transitions {
            tx.commands.clear();
        }
        self.exec = stored.clone();
        self.advance(down_ms);
        stored
    }

    /// Events are numbered 1..n without gaps across all transitions, and `next_seq` follows.
    fn assert_seqs(&self) {
        let seqs: Vec<u64> = self.events().iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "event seqs have gaps or repeats");
        assert_eq!(self.exec.next_seq, seqs.len() as u64 + 1);
        assert!(self.events().iter().all(|e| e.execution_id == EXEC_ID));
    }
}

fn kinds(events: &[EventRecord]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.event.step() {
            Some(step) => format!("{}:{step}", e.event.kind()),
            None => e.event.kind().to_string(),
        })
        .collect()
}

fn calls(tx: &Transition) -> Vec<AgentCall> {
    tx.commands
        .iter()
        .filter_map(|c| match c {
            Command::CallAgent(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

fn call_ids(tx: &Transition) -> Vec<String> {
    calls(tx).into_iter().map(|c| c.step_id).collect()
}

/// The `Command::Wake`s of a transition, as `(step, attempt, at_ms)`.
fn wakes(tx: &Transition) -> Vec<(usize, u32, u64)> {
    tx.commands
        .iter()
        .filter_map(|c| match c {
            Command::Wake {
                lane: Lane::Main,
                step,
                attempt,
                at_ms,
            } => Some((*step, *attempt, *at_ms)),
            _ => None,
        })
        .collect()
}

fn err(kind: ErrorKind, message: &str) -> StepError {
    StepError::new(kind, message)
}

fn agent_error(error_type: &str) -> StepError {
    StepError {
        kind: ErrorKind::Agent,
        error_type: Some(error_type.to_string()),
        message: "rejected".to_string(),
        status: Some(422),
    }
}

fn only_event(tx: &Transition) -> &DomainEvent {
    assert_eq!(
        tx.events.len(),
        1,
        "expected one event, got {:?}",
        kinds(&tx.events)
    );
    &tx.events[0].event
}

fn assert_noop(tx: &Transition) {
    assert_eq!(tx, &Transition::default(), "expected an empty transition");
    assert!(!tx.changed);
}

// ---------------------------------------------------------------------------------------------
// 1. Single agent step.

const SINGLE: &str = r#"
name: single
version: 3
steps:
  - id: a
    type: agent_task
    agent: echo
    timeout: 2s
    input:
      text: "{{input.x}}"
      greeting: "hello {{input.x}}"
      fixed: 5
"#;

#[test]
fn single_step_runs_and_completes() {
    let mut h = Harness::new(SINGLE, json!({"x": "world"}));
    assert_eq!(h.exec.status, ExecutionStatus::Pending);

    let tx = h.start();
    assert!(tx.changed);
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    assert_eq!(tx.dirty_steps.iter().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        tx.events,
        vec![
            EventRecord {
                execution_id: EXEC_ID.into(),
                seq: 1,
                at_ms: T0,
                event: DomainEvent::ExecutionStarted {
                    process: "single".into(),
                    version: 3
                },
            },
            EventRecord {
                execution_id: EXEC_ID.into(),
                seq: 2,
                at_ms: T0,
                event: DomainEvent::StepStarted {
                    step: "a".into(),
                    attempt: 1,
                    wake_at_ms: None
                },
            },
        ]
    );
    assert_eq!(
        tx.commands,
        vec![Command::CallAgent(AgentCall {
            lane: Lane::Main,
            step: 0,
            step_id: "a".into(),
            agent: "echo".into(),
            attempt: 1,
            idempotency_key: "ex-1:a".into(),
            input: json!({"text": "world", "greeting": "hello world", "fixed": 5}),
            timeout_ms: 2_000,
        })]
    );
    assert_eq!(h.status("a"), StepStatus::Running);
    assert_eq!(h.step("a").attempt, 1);
    assert_eq!(h.step("a").started_at_ms, Some(T0));

    h.advance(500);
    let tx = h.agent_ok("a", json!({"y": 1}));
    assert!(tx.commands.is_empty());
    assert_eq!(
        tx.events,
        vec![
            EventRecord {
                execution_id: EXEC_ID.into(),
                seq: 3,
                at_ms: 1_500,
                event: DomainEvent::StepCompleted {
                    step: "a".into(),
                    attempt: 1,
                    output: json!({"y": 1})
                },
            },
            EventRecord {
                execution_id: EXEC_ID.into(),
                seq: 4,
                at_ms: 1_500,
                event: DomainEvent::ExecutionCompleted {
                    output: json!({"a": {"y": 1}})
                },
            },
        ]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(h.exec.output, Some(json!({"a": {"y": 1}})));
    assert_eq!(h.exec.updated_at_ms, 1_500);
    assert_eq!(h.exec.created_at_ms, T0);
    assert_eq!(h.status("a"), StepStatus::Completed);
    assert_eq!(h.step("a").output, Some(json!({"y": 1})));
    assert_eq!(h.step("a").finished_at_ms, Some(1_500));
    assert_eq!(h.step("a").retry_count(), 0);
    h.assert_seqs();

    // Terminal: further inputs change nothing.
    assert_noop(&h.start());
    assert_noop(&h.agent_ok("a", json!(2)));
    assert_noop(&h.cancel(None));
    h.assert_seqs();
}

#[test]
fn start_twice_is_a_noop_and_default_input_is_empty_object() {
    let mut h = Harness::new(
        "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo}\n",
        json!(null),
    );
    let tx = h.start();
    assert_eq!(calls(&tx)[0].input, json!({}));
    assert_eq!(calls(&tx)[0].timeout_ms, 30_000);
    assert_noop(&h.start());
}

#[test]
fn explicit_output_template_is_rendered() {
    let mut h = Harness::new(
        "name: p\noutput: {total: '{{steps.a.output.n}}', who: '{{input.who}}'}\nsteps:\n  - {id: a, type: agent_task, agent: echo}\n",
        json!({"who": "me"}),
    );
    h.start();
    let tx = h.agent_ok("a", json!({"n": 7}));
    assert_eq!(
        tx.events.last().unwrap().event,
        DomainEvent::ExecutionCompleted {
            output: json!({"total": 7, "who": "me"})
        }
    );
    assert_eq!(h.exec.output, Some(json!({"total": 7, "who": "me"})));
}

// ---------------------------------------------------------------------------------------------
// 2. Chain.

const CHAIN: &str = r#"
name: chain
steps:
  - {id: a, type: agent_task, agent: echo}
  - id: b
    type: agent_task
    agent: echo
    depends_on: [a]
    input:
      n: "{{steps.a.output.y}}"
      obj: "{{steps.a.output.z}}"
      text: "y={{steps.a.output.y}}"
  - id: c
    type: agent_task
    agent: echo
    depends_on: [b]
    input: "{{steps.b.output}}"
"#;

#[test]
fn chain_runs_in_order_and_keeps_json_types() {
    let mut h = Harness::new(CHAIN, json!({}));
    let tx = h.start();
    assert_eq!(call_ids(&tx), vec!["a"]);
    assert_eq!(h.status("b"), StepStatus::Pending);
    assert_eq!(h.status("c"), StepStatus::Pending);

    h.advance(10);
    let tx = h.agent_ok("a", json!({"y": 42, "z": {"k": [true, 1.5]}}));
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:a", "StepStarted:b"]);
    let b = &calls(&tx)[0];
    assert_eq!(b.step_id, "b");
    assert_eq!(b.idempotency_key, "ex-1:b");
    assert_eq!(
        b.input,
        json!({"n": 42, "obj": {"k": [true, 1.5]}, "text": "y=42"})
    );
    assert!(b.input["n"].is_u64() || b.input["n"].is_i64());
    assert_eq!(h.status("c"), StepStatus::Pending);

    h.advance(10);
    let tx = h.agent_ok("b", json!({"list": [1, 2, 3]}));
    assert_eq!(call_ids(&tx), vec!["c"]);
    assert_eq!(calls(&tx)[0].input, json!({"list": [1, 2, 3]}));

    h.advance(10);
    h.agent_ok("c", json!("done"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(
        h.exec.output,
        Some(
            json!({"a": {"y": 42, "z": {"k": [true, 1.5]}}, "b": {"list": [1, 2, 3]}, "c": "done"})
        )
    );
    assert_eq!(
        h.event_kinds(),
        vec![
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepCompleted:b",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted"
        ]
    );
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 3. Parallel + diamond.

const DIAMOND: &str = r#"
name: diamond
steps:
  - {id: a, type: agent_task, agent: echo}
  - {id: b, type: agent_task, agent: echo, depends_on: [a]}
  - {id: c, type: agent_task, agent: echo, depends_on: [a]}
  - id: d
    type: agent_task
    agent: echo
    depends_on: [b, c]
    input: {b: "{{steps.b.output}}", c: "{{steps.c.output}}"}
"#;

#[test]
fn diamond_fans_out_and_joins_on_all() {
    let mut h = Harness::new(DIAMOND, json!({}));
    h.start();
    assert_eq!(h.pending_ids(), vec!["a"]);

    let tx = h.agent_ok("a", json!(1));
    assert_eq!(call_ids(&tx), vec!["b", "c"]);
    assert_eq!(
        kinds(&tx.events),
        vec!["StepCompleted:a", "StepStarted:b", "StepStarted:c"]
    );
    assert_eq!(
        tx.dirty_steps.iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(h.pending_ids(), vec!["b", "c"]);

    // c finishes first: d still waits for b.
    let tx = h.agent_ok("c", json!("C"));
    assert!(tx.commands.is_empty());
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:c"]);
    assert_eq!(h.status("d"), StepStatus::Pending);
    assert_eq!(h.exec.status, ExecutionStatus::Running);

    let tx = h.agent_ok("b", json!("B"));
    assert_eq!(call_ids(&tx), vec!["d"]);
    assert_eq!(calls(&tx)[0].input, json!({"b": "B", "c": "C"}));

    h.agent_ok("d", json!("D"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(
        h.exec.output,
        Some(json!({"a": 1, "b": "B", "c": "C", "d": "D"}))
    );
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 4. stop_on_failure: true.

#[test]
fn failure_cancels_running_siblings_by_default() {
    let mut h = Harness::new(DIAMOND, json!({}));
    h.start();
    h.agent_ok("a", json!(1));
    h.advance(100);

    let error = err(ErrorKind::Server, "boom");
    let tx = h.agent_err("b", error.clone());
    assert_eq!(
        kinds(&tx.events),
        vec!["StepFailed:b", "StepCancelled:c", "ExecutionFailed"]
    );
    assert_eq!(
        tx.events[0].event,
        DomainEvent::StepFailed {
            step: "b".into(),
            attempt: 1,
            error: error.clone()
        }
    );
    assert_eq!(
        tx.events[1].event,
        DomainEvent::StepCancelled {
            step: "c".into(),
            attempt: 1
        }
    );
    assert_eq!(
        tx.events[2].event,
        DomainEvent::ExecutionFailed {
            step: Some("b".into()),
            error: error.to_string()
        }
    );
    assert_eq!(tx.commands, vec![Command::Abandon { step: 2 }]);
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.exec.error, Some(error.to_string()));
    assert_eq!(h.status("b"), StepStatus::Failed);
    assert_eq!(h.step("b").last_error, Some(error));
    assert_eq!(h.status("c"), StepStatus::Cancelled);
    assert_eq!(h.step("c").finished_at_ms, Some(T0 + 100));
    assert_eq!(h.status("d"), StepStatus::Pending);

    // c's call comes back late: ignored.
    let c = h.idx("c");
    let tx = h.apply(Input::AgentReturned {
        lane: Lane::Main,
        step: c,
        attempt: 1,
        result: Ok(json!("late")),
    });
    assert_noop(&tx);
    assert_eq!(h.status("c"), StepStatus::Cancelled);
    assert!(h
        .commands()
        .iter()
        .all(|c| !matches!(c, Command::CallAgent(a) if a.step_id == "d")));
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 5. stop_on_failure: false.

const NO_STOP: &str = r#"
name: nostop
stop_on_failure: false
steps:
  - {id: a, type: agent_task, agent: echo}
  - {id: b, type: agent_task, agent: echo, depends_on: [a]}
  - {id: c, type: agent_task, agent: echo, depends_on: [a]}
  - {id: d, type: agent_task, agent: echo, depends_on: [b, c]}
  - {id: e, type: agent_task, agent: echo, depends_on: [c]}
"#;

#[test]
fn without_stop_on_failure_siblings_finish_then_execution_fails() {
    let mut h = Harness::new(NO_STOP, json!({}));
    h.start();
    h.agent_ok("a", json!(1));
    assert_eq!(h.pending_ids(), vec!["b", "c"]);

    let error = err(ErrorKind::Timeout, "too slow");
    let tx = h.agent_err("b", error.clone());
    assert_eq!(kinds(&tx.events), vec!["StepFailed:b"]);
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    assert_eq!(h.status("c"), StepStatus::Running);

    // c completes; e depends only on c but nothing new starts once the execution is failing.
    h.advance(50);
    let tx = h.agent_ok("c", json!("C"));
    assert_eq!(
        kinds(&tx.events),
        vec!["StepCompleted:c", "ExecutionFailed"]
    );
    assert!(tx.commands.is_empty());
    assert_eq!(
        tx.events[1].event,
        DomainEvent::ExecutionFailed {
            step: Some("b".into()),
            error: error.to_string()
        }
    );
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.status("c"), StepStatus::Completed);
    assert_eq!(h.status("d"), StepStatus::Pending);
    assert_eq!(h.status("e"), StepStatus::Pending);
    let called: Vec<String> = h
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::CallAgent(a) => Some(a.step_id),
            _ => None,
        })
        .collect();
    assert_eq!(called, vec!["a", "b", "c"]);
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 6. Retries.

const RETRY: &str = r#"
name: retry
steps:
  - id: a
    type: agent_task
    agent: flaky
    input: {x: "{{input.x}}"}
    retry: {max_attempts: 3, initial_delay: 100ms, backoff: 2.0, max_delay: 10s, non_retryable: [bad_input]}
  - {id: b, type: agent_task, agent: echo, depends_on: [a]}
"#;

#[test]
fn retries_with_backoff_then_succeeds() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    let first = h.pending_calls()[0].clone();
    assert_eq!(first.attempt, 1);

    // Attempt 1 fails.
    let e1 = StepError {
        status: Some(503),
        ..err(ErrorKind::Server, "unavailable")
    };
    let tx = h.agent_err("a", e1.clone());
    assert_eq!(
        *only_event(&tx),
        DomainEvent::StepRetrying {
            step: "a".into(),
            next_attempt: 2,
            delay_ms: 100,
            error: e1.clone()
        }
    );
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 1,
            at_ms: T0 + 100
        }]
    );
    assert_eq!(h.status("a"), StepStatus::Retrying);
    assert_eq!(h.step("a").wake_at_ms, Some(T0 + 100));
    assert_eq!(h.step("a").last_error, Some(e1.clone()));
    assert_eq!(h.exec.status, ExecutionStatus::Running);

    // Backoff over: attempt 2, same idempotency key and input.
    h.advance(100);
    let tx = h.wake("a");
    assert_eq!(
        *only_event(&tx),
        DomainEvent::StepStarted {
            step: "a".into(),
            attempt: 2,
            wake_at_ms: None
        }
    );
    let second = calls(&tx)[0].clone();
    assert_eq!(second.attempt, 2);
    assert_eq!(second.idempotency_key, first.idempotency_key);
    assert_eq!(second.idempotency_key, "ex-1:a");
    assert_eq!(second.input, json!({"x": 1}));
    assert_eq!(h.step("a").started_at_ms, Some(T0), "first start is kept");

    // A late answer from attempt 1 and a stale wake-up are ignored.
    assert_noop(&h.apply(Input::AgentReturned {
        lane: Lane::Main,
        step: 0,
        attempt: 1,
        result: Ok(json!("stale")),
    }));
    assert_noop(&h.apply(Input::Wake {
        lane: Lane::Main,
        step: 0,
        attempt: 1,
    }));

    // Attempt 2 fails: delay doubles.
    let tx = h.agent_err("a", err(ErrorKind::Connection, "reset"));
    match only_event(&tx) {
        DomainEvent::StepRetrying {
            next_attempt,
            delay_ms,
            ..
        } => {
            assert_eq!((*next_attempt, *delay_ms), (3, 200));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 2,
            at_ms: h.now + 200
        }]
    );

    h.advance(200);
    let tx = h.wake("a");
    assert_eq!(calls(&tx)[0].attempt, 3);

    let tx = h.agent_ok("a", json!({"ok": true}));
    assert_eq!(
        tx.events[0].event,
        DomainEvent::StepCompleted {
            step: "a".into(),
            attempt: 3,
            output: json!({"ok": true})
        }
    );
    assert_eq!(call_ids(&tx), vec!["b"]);
    assert_eq!(h.step("a").retry_count(), 2);
    assert_eq!(h.step("a").wake_at_ms, None);
    h.agent_ok("b", json!(null));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
}

#[test]
fn retries_exhausted_fail_the_step_and_execution() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    for attempt in 1..=2 {
        let tx = h.agent_err("a", err(ErrorKind::Server, "down"));
        assert_eq!(
            kinds(&tx.events),
            vec!["StepRetrying:a"],
            "attempt {attempt}"
        );
        h.advance(1_000);
        h.wake("a");
    }
    let last = err(ErrorKind::Server, "still down");
    let tx = h.agent_err("a", last.clone());
    assert_eq!(kinds(&tx.events), vec!["StepFailed:a", "ExecutionFailed"]);
    assert_eq!(
        tx.events[0].event,
        DomainEvent::StepFailed {
            step: "a".into(),
            attempt: 3,
            error: last.clone()
        }
    );
    assert_eq!(
        tx.events[1].event,
        DomainEvent::ExecutionFailed {
            step: Some("a".into()),
            error: last.to_string()
        }
    );
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.status("b"), StepStatus::Pending);
    assert_eq!(h.step("a").retry_count(), 2);
    h.assert_seqs();
}

#[test]
fn non_retryable_error_type_is_not_retried() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    let tx = h.agent_err("a", agent_error("bad_input"));
    assert_eq!(kinds(&tx.events), vec!["StepFailed:a", "ExecutionFailed"]);
    assert_eq!(h.step("a").attempt, 1);
    assert!(!tx
        .commands
        .iter()
        .any(|c| matches!(c, Command::Wake { .. })));

    // Another agent error type is retried.
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    let tx = h.agent_err("a", agent_error("rate_limited"));
    assert_eq!(kinds(&tx.events), vec!["StepRetrying:a"]);
}

#[test]
fn invalid_response_is_never_retried() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    let tx = h.agent_err("a", err(ErrorKind::InvalidResponse, "not json"));
    assert_eq!(kinds(&tx.events), vec!["StepFailed:a", "ExecutionFailed"]);
    assert_eq!(h.step("a").retry_count(), 0);
}

#[test]
fn retry_delay_is_capped_by_max_delay() {
    let mut h = Harness::new(
        "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo, retry: {max_attempts: 4, initial_delay: 6s, backoff: 3, max_delay: 10s}}\n",
        json!({}),
    );
    h.start();
    let mut delays = Vec::new();
    for _ in 0..3 {
        let tx = h.agent_err("a", err(ErrorKind::Timeout, "slow"));
        match only_event(&tx) {
            DomainEvent::StepRetrying { delay_ms, .. } => delays.push(*delay_ms),
            other => panic!("unexpected {other:?}"),
        }
        h.advance(20_000);
        h.wake("a");
    }
    assert_eq!(delays, vec![6_000, 10_000, 10_000]);
}

#[test]
fn wake_for_a_running_agent_task_is_ignored() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    assert_noop(&h.wake("a"));
    assert_eq!(h.status("a"), StepStatus::Running);
}

// ---------------------------------------------------------------------------------------------
// 7. on_error.

#[test]
fn on_error_skip_step_lets_dependants_run() {
    let mut h = Harness::new(
        r#"
name: skip
steps:
  - {id: a, type: agent_task, agent: echo, on_error: skip_step}
  - id: b
    type: agent_task
    agent: echo
    depends_on: [a]
    input: {status: "{{steps.a.status}}", out: "{{steps.a.output}}"}
"#,
        json!({}),
    );
    h.start();
    let error = agent_error("nope");
    let tx = h.agent_err("a", error.clone());
    assert_eq!(kinds(&tx.events), vec!["StepSkipped:a", "StepStarted:b"]);
    assert_eq!(
        tx.events[0].event,
        DomainEvent::StepSkipped {
            step: "a".into(),
            reason: SkipReason::OnError,
            error: Some(error.clone())
        }
    );
    assert_eq!(h.status("a"), StepStatus::Skipped);
    assert_eq!(h.step("a").skip_reason, Some(SkipReason::OnError));
    assert_eq!(h.step("a").last_error, Some(error));
    assert_eq!(
        calls(&tx)[0].input,
        json!({"status": "skipped", "out": null})
    );

    let tx = h.agent_ok("b", json!("B"));
    assert_eq!(
        kinds(&tx.events),
        vec!["StepCompleted:b", "ExecutionCompleted"]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(h.exec.output, Some(json!({"b": "B"})));
    h.assert_seqs();
}

#[test]
fn on_error_skip_step_applies_only_after_retries() {
    let mut h = Harness::new(
        "name: p\nsteps:\n  - {id: a, type: agent_task, agent: echo, on_error: skip_step, retry: {max_attempts: 2, initial_delay: 10ms}}\n",
        json!({}),
    );
    h.start();
    let tx = h.agent_err("a", err(ErrorKind::Server, "x"));
    assert_eq!(kinds(&tx.events), vec!["StepRetrying:a"]);
    h.advance(10);
    h.wake("a");
    let tx = h.agent_err("a", err(ErrorKind::Server, "y"));
    assert_eq!(
        kinds(&tx.events),
        vec!["StepSkipped:a", "ExecutionCompleted"]
    );
    assert_eq!(h.exec.output, Some(json!({})));
}

#[test]
fn on_error_continue_records_failure_and_goes_on() {
    let mut h = Harness::new(
        r#"
name: cont
steps:
  - {id: a, type: agent_task, agent: echo, on_error: continue}
  - id: b
    type: agent_task
    agent: echo
    depends_on: [a]
    input:
      status: "{{steps.a.status}}"
      message: "{{steps.a.error.message}}"
      kind: "{{steps.a.error.kind}}"
"#,
        json!({}),
    );
    h.start();
    let error = err(ErrorKind::Server, "kaput");
    let tx = h.agent_err("a", error.clone());
    assert_eq!(kinds(&tx.events), vec!["StepFailed:a", "StepStarted:b"]);
    assert_eq!(
        tx.events[0].event,
        DomainEvent::StepFailed {
            step: "a".into(),
            attempt: 1,
            error
        }
    );
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    assert_eq!(
        calls(&tx)[0].input,
        json!({"status": "failed", "message": "kaput", "kind": "server"})
    );

    let tx = h.agent_ok("b", json!(2));
    assert_eq!(
        kinds(&tx.events),
        vec!["StepCompleted:b", "ExecutionCompleted"]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(h.status("a"), StepStatus::Failed);
    assert_eq!(h.exec.output, Some(json!({"b": 2})));
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 8. Gateways.

const FIRST_MATCH: &str = r#"
name: gw
steps:
  - id: g
    type: gateway
    routes:
      - {when: "input.n > 1", to: [x]}
      - {when: "input.n > 0", to: [y]}
    default: [z]
  - {id: x, type: agent_task, agent: echo, depends_on: [g]}
  - {id: y, type: agent_task, agent: echo, depends_on: [g]}
  - {id: z, type: agent_task, agent: echo, depends_on: [g]}
"#;

#[test]
fn gateway_first_matching_route_wins() {
    let mut h = Harness::new(FIRST_MATCH, json!({"n": 5}));
    let tx = h.start();
    assert_eq!(
        kinds(&tx.events),
        vec![
            "ExecutionStarted",
            "StepStarted:g",
            "StepCompleted:g",
            "StepStarted:x",
            "StepSkipped:y",
            "StepSkipped:z"
        ]
    );
    assert_eq!(
        tx.events[2].event,
        DomainEvent::StepCompleted {
            step: "g".into(),
            attempt: 1,
            output: json!({"route": ["x"], "matched": 0})
        }
    );
    for (i, step) in [(4, "y"), (5, "z")] {
        assert_eq!(
            tx.events[i].event,
            DomainEvent::StepSkipped {
                step: step.into(),
                reason: SkipReason::RouteNotTaken,
                error: None
            }
        );
    }
    assert_eq!(call_ids(&tx), vec!["x"]);
    assert_eq!(h.step("y").skip_reason, Some(SkipReason::RouteNotTaken));
    h.agent_ok("x", json!("X"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(
        h.exec.output,
        Some(json!({"g": {"route": ["x"], "matched": 0}, "x": "X"}))
    );
    h.assert_seqs();
}

#[test]
fn gateway_second_route_and_default() {
    let mut h = Harness::new(FIRST_MATCH, json!({"n": 1}));
    let tx = h.start();
    assert_eq!(call_ids(&tx), vec!["y"]);
    assert_eq!(
        h.step("g").output,
        Some(json!({"route": ["y"], "matched": 1}))
    );
    assert_eq!(h.status("x"), StepStatus::Skipped);
    assert_eq!(h.status("z"), StepStatus::Skipped);

    let mut h = Harness::new(FIRST_MATCH, json!({"n": 0}));
    let tx = h.start();
    assert_eq!(call_ids(&tx), vec!["z"]);
    assert_eq!(
        h.step("g").output,
        Some(json!({"route": ["z"], "matched": "default"}))
    );
    assert_eq!(h.step("x").skip_reason, Some(SkipReason::RouteNotTaken));
    assert_eq!(h.step("y").skip_reason, Some(SkipReason::RouteNotTaken));
}

const ON_OUTPUT: &str = r#"
name: score
steps:
  - {id: a, type: agent_task, agent: scorer}
  - id: g
    type: gateway
    depends_on: [a]
    routes:
      - {when: "steps.a.output.score > 0.8", to: [hi]}
    default: [lo]
  - {id: hi, type: agent_task, agent: echo, depends_on: [g]}
  - {id: lo, type: agent_task, agent: echo, depends_on: [g]}
  - {id: join, type: agent_task, agent: echo, depends_on: [hi, lo]}
"#;

#[test]
fn gateway_routes_on_step_output_and_join_still_runs() {
    for (score, taken, not_taken) in [(0.9, "hi", "lo"), (0.5, "lo", "hi")] {
        let mut h = Harness::new(ON_OUTPUT, json!({}));
        h.start();
        let tx = h.agent_ok("a", json!({"score": score}));
        assert_eq!(call_ids(&tx), vec![taken], "score {score}");
        assert_eq!(h.status("g"), StepStatus::Completed);
        assert_eq!(h.status(not_taken), StepStatus::Skipped);
        assert_eq!(
            h.step(not_taken).skip_reason,
            Some(SkipReason::RouteNotTaken)
        );
        assert_eq!(h.status("join"), StepStatus::Pending);

        let tx = h.agent_ok(taken, json!(taken));
        assert_eq!(call_ids(&tx), vec!["join"], "score {score}");
        h.agent_ok("join", json!("J"));
        assert_eq!(h.exec.status, ExecutionStatus::Completed);
        h.assert_seqs();
    }
}

#[test]
fn gateway_complex_condition() {
    let yaml = r#"
name: complex
steps:
  - id: g
    type: gateway
    routes:
      - {when: "(input.vip && input.amount > 100) || !(input.region == 'eu')", to: [yes]}
    default: [no]
  - {id: "yes", type: agent_task, agent: echo, depends_on: [g]}
  - {id: "no", type: agent_task, agent: echo, depends_on: [g]}
"#;
    let cases = [
        (json!({"vip": true, "amount": 200, "region": "eu"}), "yes"),
        (json!({"vip": true, "amount": 50, "region": "eu"}), "no"),
        (json!({"vip": false, "amount": 200, "region": "eu"}), "no"),
        (json!({"vip": false, "amount": 0, "region": "us"}), "yes"),
    ];
    for (input, expected) in cases {
        let mut h = Harness::new(yaml, input.clone());
        let tx = h.start();
        assert_eq!(call_ids(&tx), vec![expected], "input {input}");
    }
}

#[test]
fn gateway_without_match_or_default_fails_with_no_route() {
    let mut h = Harness::new(
        r#"
name: noroute
steps:
  - id: g
    type: gateway
    routes:
      - {when: "input.n > 10", to: [x]}
  - {id: x, type: agent_task, agent: echo, depends_on: [g]}
"#,
        json!({"n": 1}),
    );
    let tx = h.start();
    assert_eq!(
        kinds(&tx.events),
        vec![
            "ExecutionStarted",
            "StepStarted:g",
            "StepFailed:g",
            "ExecutionFailed"
        ]
    );
    match &tx.events[2].event {
        DomainEvent::StepFailed {
            step,
            attempt,
            error,
        } => {
            assert_eq!((step.as_str(), *attempt), ("g", 1));
            assert_eq!(error.kind, ErrorKind::NoRoute);
        }
        other => panic!("unexpected {other:?}"),
    }
    match &tx.events[3].event {
        DomainEvent::ExecutionFailed { step, error } => {
            assert_eq!(step.as_deref(), Some("g"));
            assert!(error.starts_with("no_route"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.status("x"), StepStatus::Pending);
}

// ---------------------------------------------------------------------------------------------
// 9. Skip propagation.

#[test]
fn skips_propagate_down_untaken_branches() {
    let mut h = Harness::new(
        r#"
name: propagate
steps:
  - id: g
    type: gateway
    routes:
      - {when: "input.left", to: [l1]}
    default: [r1]
  - {id: l1, type: agent_task, agent: echo, depends_on: [g]}
  - {id: l2, type: agent_task, agent: echo, depends_on: [l1]}
  - {id: r1, type: agent_task, agent: echo, depends_on: [g]}
  - {id: r2, type: agent_task, agent: echo, depends_on: [r1]}
  - {id: r3, type: timer, duration: 1s, depends_on: [r2]}
"#,
        json!({"left": true}),
    );
    let tx = h.start();
    assert_eq!(call_ids(&tx), vec!["l1"]);
    assert_eq!(h.step("r1").skip_reason, Some(SkipReason::RouteNotTaken));
    assert_eq!(h.step("r2").skip_reason, Some(SkipReason::UpstreamSkipped));
    assert_eq!(h.step("r3").skip_reason, Some(SkipReason::UpstreamSkipped));
    let skipped: Vec<(String, SkipReason)> = tx
        .events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::StepSkipped {
                step,
                reason,
                error,
            } => {
                assert!(error.is_none());
                Some((step.clone(), *reason))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("r1".to_string(), SkipReason::RouteNotTaken),
            ("r2".to_string(), SkipReason::UpstreamSkipped),
            ("r3".to_string(), SkipReason::UpstreamSkipped),
        ]
    );
    assert!(!tx
        .commands
        .iter()
        .any(|c| matches!(c, Command::Wake { .. })));

    let tx = h.agent_ok("l1", json!(1));
    assert_eq!(call_ids(&tx), vec!["l2"]);
    h.agent_ok("l2", json!(2));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 10. Timers.

const TIMER: &str = r#"
name: timer
steps:
  - {id: t, type: timer, duration: 10m}
  - id: after
    type: agent_task
    agent: echo
    depends_on: [t]
    input: "{{steps.t.output.waited_ms}}"
"#;

#[test]
fn timer_arms_a_wake_and_completes_on_it() {
    let mut h = Harness::new(TIMER, json!({}));
    let tx = h.start();
    let deadline = T0 + 600_000;
    assert_eq!(
        tx.events[1].event,
        DomainEvent::StepStarted {
            step: "t".into(),
            attempt: 1,
            wake_at_ms: Some(deadline)
        }
    );
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 1,
            at_ms: deadline
        }]
    );
    assert_eq!(h.status("t"), StepStatus::Running);
    assert_eq!(h.step("t").wake_at_ms, Some(deadline));
    assert_eq!(h.status("after"), StepStatus::Pending);
    assert!(h.pending_calls().is_empty());

    h.now = deadline + 500;
    let tx = h.wake("t");
    assert_eq!(
        tx.events[0],
        EventRecord {
            execution_id: EXEC_ID.into(),
            seq: 3,
            at_ms: deadline + 500,
            event: DomainEvent::StepCompleted {
                step: "t".into(),
                attempt: 1,
                output: json!({"waited_ms": 600_500, "waited_seconds": 600.5, "deadline_ms": deadline})
            }
        }
    );
    assert_eq!(call_ids(&tx), vec!["after"]);
    assert_eq!(calls(&tx)[0].input, json!(600_500));
    assert_eq!(h.step("t").wake_at_ms, None);

    // A second delivery of the same wake-up is ignored.
    assert_noop(&h.apply(Input::Wake {
        lane: Lane::Main,
        step: 0,
        attempt: 1,
    }));

    h.agent_ok("after", json!("ok"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
}

/// The wall clock was stepped back an hour while the engine was down: the stored deadline now
/// lies more than an hour away, but the re-armed timer waits at most its own duration, and the
/// recovery's records are not stamped before the history's last event. With a sound clock the
/// stored deadline stands.
#[test]
fn a_timer_rearmed_after_the_clock_went_back_waits_at_most_its_duration() {
    let mut h = Harness::new(TIMER, json!({}));
    // Started well after the epoch, so that the clock has room to go back.
    let started = T0 + 4_000_000;
    h.now = started;
    h.start();
    let deadline = started + 600_000;
    h.advance(100_000);
    h.restart(0);
    h.now -= 3_600_000;
    let tx = h.recover(RecoveryAction::Resume);
    let wake = |at_ms| Command::Wake {
        lane: Lane::Main,
        step: 0,
        attempt: 1,
        at_ms,
    };
    assert_eq!(tx.commands, vec![wake(h.now + 600_000)]);
    assert!(
        tx.events.iter().all(|e| e.at_ms == started),
        "{:?}",
        tx.events
    );
    assert_eq!(
        h.step("t").wake_at_ms,
        Some(deadline),
        "the record keeps the deadline"
    );

    let mut sound = Harness::new(TIMER, json!({}));
    sound.now = started;
    sound.start();
    sound.advance(100_000);
    sound.restart(0);
    let tx = sound.recover(RecoveryAction::Resume);
    assert_eq!(tx.commands, vec![wake(deadline)]);
}

// Regression: `Input::AgentReturned` once checked only that the step was running with that
// attempt, so a stray result for a running timer step completed the timer early.
#[test]
fn agent_result_for_a_timer_step_is_ignored() {
    let mut h = Harness::new(TIMER, json!({}));
    h.start();
    assert_noop(&h.apply(Input::AgentReturned {
        lane: Lane::Main,
        step: 0,
        attempt: 1,
        result: Ok(json!(1)),
    }));
    assert_eq!(h.status("t"), StepStatus::Running);
}

#[test]
fn timer_until_uses_the_absolute_deadline() {
    let mut h = Harness::new(
        "name: p\nsteps:\n  - {id: t, type: timer, until: '2030-01-01T00:00:00Z'}\n",
        json!({}),
    );
    let deadline = 1_893_456_000_000;
    let tx = h.start();
    assert_eq!(
        tx.events[1].event,
        DomainEvent::StepStarted {
            step: "t".into(),
            attempt: 1,
            wake_at_ms: Some(deadline)
        }
    );
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 1,
            at_ms: deadline
        }]
    );
    h.now = deadline;
    let tx = h.wake("t");
    assert_eq!(
        kinds(&tx.events),
        vec!["StepCompleted:t", "ExecutionCompleted"]
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Cancel.

#[test]
fn cancel_pending_execution() {
    let mut h = Harness::new(DIAMOND, json!({}));
    let tx = h.cancel(Some("changed my mind"));
    assert_eq!(
        tx.events,
        vec![EventRecord {
            execution_id: EXEC_ID.into(),
            seq: 1,
            at_ms: T0,
            event: DomainEvent::ExecutionCancelled {
                reason: Some("changed my mind".into())
            }
        }]
    );
    assert!(tx.commands.is_empty());
    assert!(tx.changed);
    assert_eq!(h.exec.status, ExecutionStatus::Cancelled);
    assert!(h.exec.steps.iter().all(|s| s.status == StepStatus::Pending));
    assert_noop(&h.start());
    assert_noop(&h.cancel(None));
    h.assert_seqs();
}

#[test]
fn cancel_running_execution_abandons_active_steps() {
    let mut h = Harness::new(
        r#"
name: cancel
steps:
  - {id: a, type: agent_task, agent: echo}
  - {id: b, type: agent_task, agent: echo, retry: {max_attempts: 3, initial_delay: 1s}}
  - {id: t, type: timer, duration: 1h}
  - {id: c, type: agent_task, agent: echo, depends_on: [a, b, t]}
"#,
        json!({}),
    );
    h.start();
    h.agent_err("b", err(ErrorKind::Server, "x"));
    assert_eq!(h.status("b"), StepStatus::Retrying);
    h.advance(10);

    let tx = h.cancel(None);
    assert_eq!(
        kinds(&tx.events),
        vec![
            "StepCancelled:a",
            "StepCancelled:b",
            "StepCancelled:t",
            "ExecutionCancelled"
        ]
    );
    assert_eq!(
        tx.events[1].event,
        DomainEvent::StepCancelled {
            step: "b".into(),
            attempt: 1
        }
    );
    assert_eq!(
        tx.events[3].event,
        DomainEvent::ExecutionCancelled { reason: None }
    );
    assert_eq!(
        tx.commands,
        vec![
            Command::Abandon { step: 0 },
            Command::Abandon { step: 1 },
            Command::Abandon { step: 2 }
        ]
    );
    assert_eq!(
        tx.dirty_steps.iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Cancelled);
    for id in ["a", "b", "t"] {
        assert_eq!(h.status(id), StepStatus::Cancelled);
        assert_eq!(h.step(id).finished_at_ms, Some(T0 + 10));
        assert_eq!(h.step(id).wake_at_ms, None);
    }
    assert_eq!(h.status("c"), StepStatus::Pending);

    // Late results and wake-ups, and a second cancel, change nothing.
    assert_noop(&h.agent_ok("a", json!(1)));
    assert_noop(&h.wake("b"));
    assert_noop(&h.wake("t"));
    assert_noop(&h.cancel(Some("again")));
    h.assert_seqs();
}

#[test]
fn cancel_terminal_execution_is_a_noop() {
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.agent_ok("a", json!(1));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    let before = h.exec.clone();
    assert_noop(&h.cancel(Some("too late")));
    assert_eq!(h.exec, before);

    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.agent_err("a", err(ErrorKind::Agent, "no"));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_noop(&h.cancel(None));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
}

// ---------------------------------------------------------------------------------------------
// 12. Determinism.

const JITTER: &str = r#"
name: jitter
steps:
  - id: a
    type: agent_task
    agent: echo
    retry: {max_attempts: 5, initial_delay: 100ms, backoff: 2, max_delay: 10s, jitter: 0.5}
  - id: b
    type: agent_task
    agent: echo
    retry: {max_attempts: 5, initial_delay: 1s, jitter: 0.5}
  - {id: c, type: agent_task, agent: echo, depends_on: [a, b]}
"#;

fn jitter_run(seed: u64) -> (Vec<Transition>, Execution) {
    let mut h = Harness::with_seed(JITTER, json!({"k": 1}), seed);
    h.start();
    for _ in 0..3 {
        h.advance(7);
        h.agent_err("a", err(ErrorKind::Timeout, "slow"));
        h.agent_err("b", err(ErrorKind::Connection, "reset"));
        h.advance(5_000);
        h.wake("b");
        h.wake("a");
    }
    h.agent_ok("a", json!("A"));
    h.agent_ok("b", json!("B"));
    h.agent_ok("c", json!("C"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
    (h.transitions, h.exec)
}

#[test]
fn same_inputs_and_seed_give_identical_transitions() {
    let (t1, e1) = jitter_run(7);
    let (t2, e2) = jitter_run(7);
    assert_eq!(t1, t2);
    assert_eq!(e1, e2);

    // The jittered delays stay within ±50% of the base delay.
    let delays: Vec<(String, u32, u64)> = t1
        .iter()
        .flat_map(|t| t.events.iter())
        .filter_map(|e| match &e.event {
            DomainEvent::StepRetrying {
                step,
                next_attempt,
                delay_ms,
                ..
            } => Some((step.clone(), *next_attempt, *delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 6);
    for (step, next_attempt, delay) in &delays {
        let base = match step.as_str() {
            "a" => 100.0 * 2f64.powi(*next_attempt as i32 - 2),
            _ => 1_000.0 * 2f64.powi(*next_attempt as i32 - 2),
        };
        assert!(
            (base * 0.5..=base * 1.5).contains(&(*delay as f64)),
            "{step} attempt {next_attempt}: {delay} vs {base}"
        );
    }
    // Wake commands carry the same jittered delays.
    let wakes: Vec<u64> = t1
        .iter()
        .flat_map(|t| t.commands.iter())
        .filter_map(|c| match c {
            Command::Wake {
                lane: Lane::Main,
                at_ms,
                ..
            } => Some(*at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(wakes.len(), 6);
}

// ---------------------------------------------------------------------------------------------
// 13. Expressions failing at run time.

#[test]
fn input_expression_failure_fails_the_step_without_retry() {
    let mut h = Harness::new(
        r#"
name: expr
steps:
  - {id: a, type: agent_task, agent: echo}
  - id: b
    type: agent_task
    agent: echo
    depends_on: [a]
    retry: {max_attempts: 3, initial_delay: 10ms}
    input: {v: "{{steps.a.output.missing}}"}
"#,
        json!({}),
    );
    h.start();
    let tx = h.agent_ok("a", json!({"y": 1}));
    assert_eq!(
        kinds(&tx.events),
        vec![
            "StepCompleted:a",
            "StepStarted:b",
            "StepFailed:b",
            "ExecutionFailed"
        ]
    );
    assert!(
        tx.commands.is_empty(),
        "no call, no wake: {:?}",
        tx.commands
    );
    match &tx.events[2].event {
        DomainEvent::StepFailed {
            step,
            attempt,
            error,
        } => {
            assert_eq!((step.as_str(), *attempt), ("b", 1));
            assert_eq!(error.kind, ErrorKind::Expression);
            assert!(
                error.message.contains("steps.a.output.missing"),
                "{}",
                error.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.step("b").retry_count(), 0);
    h.assert_seqs();
}

#[test]
fn gateway_condition_failure_fails_with_expression_error() {
    let mut h = Harness::new(
        r#"
name: gwexpr
steps:
  - id: g
    type: gateway
    routes:
      - {when: "input.n", to: [x]}
    default: [x]
  - {id: x, type: agent_task, agent: echo, depends_on: [g]}
"#,
        json!({"n": 3}),
    );
    let tx = h.start();
    assert_eq!(
        kinds(&tx.events),
        vec![
            "ExecutionStarted",
            "StepStarted:g",
            "StepFailed:g",
            "ExecutionFailed"
        ]
    );
    match &tx.events[2].event {
        DomainEvent::StepFailed { error, .. } => assert_eq!(error.kind, ErrorKind::Expression),
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness.

#[test]
fn inputs_for_unknown_steps_are_ignored() {
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    assert_noop(&h.apply(Input::AgentReturned {
        lane: Lane::Main,
        step: 99,
        attempt: 1,
        result: Ok(json!(1)),
    }));
    // Regression: `Input::Wake` once indexed the steps before checking bounds, and panicked.
    assert_noop(&h.apply(Input::Wake {
        lane: Lane::Main,
        step: 99,
        attempt: 1,
    }));
}

// ---------------------------------------------------------------------------------------------
// 14. Pause and resume.

#[test]
fn pause_lets_the_running_step_finish_but_starts_no_dependant() {
    let mut h = Harness::new(CHAIN, json!({}));
    h.start();
    h.advance(10);

    let tx = h.pause();
    assert!(tx.changed);
    assert_eq!(
        tx.events,
        vec![EventRecord {
            execution_id: EXEC_ID.into(),
            seq: 3,
            at_ms: T0 + 10,
            event: DomainEvent::ExecutionPaused,
        }]
    );
    assert!(tx.commands.is_empty());
    assert!(tx.dirty_steps.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert_eq!(h.exec.updated_at_ms, T0 + 10);
    assert_eq!(
        h.status("a"),
        StepStatus::Running,
        "the call in flight goes on"
    );

    // a's result arrives while paused: kept, but b does not start.
    h.advance(10);
    let tx = h.agent_ok("a", json!({"y": 7, "z": "zz"}));
    assert_eq!(
        tx.events,
        vec![EventRecord {
            execution_id: EXEC_ID.into(),
            seq: 4,
            at_ms: T0 + 20,
            event: DomainEvent::StepCompleted {
                step: "a".into(),
                attempt: 1,
                output: json!({"y": 7, "z": "zz"})
            },
        }]
    );
    assert!(tx.commands.is_empty(), "no dependant starts while paused");
    assert_eq!(tx.dirty_steps.iter().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert_eq!(h.status("a"), StepStatus::Completed);
    assert_eq!(h.step("a").output, Some(json!({"y": 7, "z": "zz"})));
    assert_eq!(h.status("b"), StepStatus::Pending);

    // Resume: b starts with a's output.
    h.advance(10);
    let tx = h.resume();
    assert_eq!(
        tx.events[0],
        EventRecord {
            execution_id: EXEC_ID.into(),
            seq: 5,
            at_ms: T0 + 30,
            event: DomainEvent::ExecutionResumed,
        }
    );
    assert_eq!(kinds(&tx.events), vec!["ExecutionResumed", "StepStarted:b"]);
    assert_eq!(call_ids(&tx), vec!["b"]);
    assert_eq!(
        calls(&tx)[0].input,
        json!({"n": 7, "obj": "zz", "text": "y=7"})
    );
    assert_eq!(tx.commands.len(), 1);
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    assert_eq!(h.status("b"), StepStatus::Running);

    h.agent_ok("b", json!("B"));
    h.agent_ok("c", json!("C"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(
        h.event_kinds(),
        vec![
            "ExecutionStarted",
            "StepStarted:a",
            "ExecutionPaused",
            "StepCompleted:a",
            "ExecutionResumed",
            "StepStarted:b",
            "StepCompleted:b",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted"
        ]
    );
    h.assert_seqs();
}

#[test]
fn pause_on_the_last_step_defers_completion_until_resume() {
    let mut h = Harness::new(SINGLE, json!({"x": "w"}));
    h.start();
    h.pause();
    let tx = h.agent_ok("a", json!({"y": 1}));
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:a"]);
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert_eq!(h.exec.output, None);
    assert_eq!(h.step("a").output, Some(json!({"y": 1})));

    h.advance(5);
    let tx = h.resume();
    assert_eq!(
        tx.events
            .iter()
            .map(|e| e.event.clone())
            .collect::<Vec<_>>(),
        vec![
            DomainEvent::ExecutionResumed,
            DomainEvent::ExecutionCompleted {
                output: json!({"a": {"y": 1}})
            }
        ]
    );
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(h.exec.output, Some(json!({"a": {"y": 1}})));
    assert_eq!(h.exec.updated_at_ms, T0 + 5);
    h.assert_seqs();
}

#[test]
fn timer_due_while_paused_completes_but_its_dependant_waits() {
    let mut h = Harness::new(TIMER, json!({}));
    h.start();
    let deadline = T0 + 600_000;
    h.pause();
    h.now = deadline;
    let tx = h.wake("t");
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:t"]);
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert_eq!(h.status("after"), StepStatus::Pending);

    h.advance(1_000);
    let tx = h.resume();
    assert_eq!(
        kinds(&tx.events),
        vec!["ExecutionResumed", "StepStarted:after"]
    );
    assert_eq!(call_ids(&tx), vec!["after"]);
    assert_eq!(calls(&tx)[0].input, json!(600_000));
    h.agent_ok("after", json!(1));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
}

#[test]
fn pause_and_resume_are_noops_where_they_do_not_apply() {
    // Pending: neither pause nor resume.
    let mut h = Harness::new(CHAIN, json!({}));
    assert_noop(&h.pause());
    assert_noop(&h.resume());
    assert_eq!(h.exec.status, ExecutionStatus::Pending);

    // Running: resume is a no-op; paused: pause is a no-op.
    h.start();
    assert_noop(&h.resume());
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    assert!(h.pause().changed);
    assert_noop(&h.pause());
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert!(h.resume().changed);
    assert_noop(&h.resume());
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    h.assert_seqs();

    // Completed.
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.agent_ok("a", json!(1));
    let before = h.exec.clone();
    assert_noop(&h.pause());
    assert_noop(&h.resume());
    assert_eq!(h.exec, before);

    // Failed.
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.agent_err("a", err(ErrorKind::Agent, "no"));
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_noop(&h.pause());
    assert_noop(&h.resume());
    assert_eq!(h.exec.status, ExecutionStatus::Failed);

    // Cancelled, from pending and from paused.
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.cancel(None);
    assert_noop(&h.pause());
    assert_noop(&h.resume());
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.pause();
    h.cancel(None);
    assert_noop(&h.pause());
    assert_noop(&h.resume());
    assert_eq!(h.exec.status, ExecutionStatus::Cancelled);
    h.assert_seqs();
}

#[test]
fn retry_backoff_ending_while_paused_waits_for_resume() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    let first = h.pending_calls()[0].clone();
    h.pause();
    h.advance(5);

    let error = err(ErrorKind::Server, "down");
    let tx = h.agent_err("a", error.clone());
    assert_eq!(
        *only_event(&tx),
        DomainEvent::StepRetrying {
            step: "a".into(),
            next_attempt: 2,
            delay_ms: 100,
            error
        }
    );
    let wake_at = T0 + 105;
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 1,
            at_ms: wake_at
        }]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert_eq!(h.status("a"), StepStatus::Retrying);
    assert_eq!(h.step("a").wake_at_ms, Some(wake_at));

    // The wake-up is delivered while paused: held, nothing changes.
    h.now = wake_at;
    let before = h.exec.clone();
    assert_noop(&h.wake("a"));
    assert_eq!(h.exec, before);

    // Resume re-arms it at the stored deadline (already past: the driver delivers at once).
    h.advance(1_000);
    let tx = h.resume();
    assert_eq!(kinds(&tx.events), vec!["ExecutionResumed"]);
    assert_eq!(
        tx.commands,
        vec![Command::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 1,
            at_ms: wake_at
        }]
    );
    assert_eq!(h.status("a"), StepStatus::Retrying);

    let tx = h.wake("a");
    assert_eq!(
        *only_event(&tx),
        DomainEvent::StepStarted {
            step: "a".into(),
            attempt: 2,
            wake_at_ms: None
        }
    );
    let second = calls(&tx)[0].clone();
    assert_eq!(second.attempt, 2);
    assert_eq!(second.idempotency_key, first.idempotency_key);
    assert_eq!(second.input, first.input);

    h.agent_ok("a", json!("A"));
    h.agent_ok("b", json!("B"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
}

const MIXED: &str = r#"
name: mixed
steps:
  - {id: a, type: agent_task, agent: echo}
  - {id: b, type: agent_task, agent: echo, retry: {max_attempts: 3, initial_delay: 1s}}
  - {id: t, type: timer, duration: 1h}
  - {id: c, type: agent_task, agent: echo, depends_on: [a, b, t]}
"#;

#[test]
fn cancel_while_paused_abandons_active_steps() {
    let mut h = Harness::new(MIXED, json!({}));
    h.start();
    h.agent_err("b", err(ErrorKind::Server, "x"));
    h.pause();
    h.advance(10);

    let tx = h.cancel(Some("stop"));
    assert_eq!(
        kinds(&tx.events),
        vec![
            "StepCancelled:a",
            "StepCancelled:b",
            "StepCancelled:t",
            "ExecutionCancelled"
        ]
    );
    assert_eq!(
        tx.events[3].event,
        DomainEvent::ExecutionCancelled {
            reason: Some("stop".into())
        }
    );
    assert_eq!(
        tx.commands,
        vec![
            Command::Abandon { step: 0 },
            Command::Abandon { step: 1 },
            Command::Abandon { step: 2 }
        ]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Cancelled);
    for id in ["a", "b", "t"] {
        assert_eq!(h.status(id), StepStatus::Cancelled);
        assert_eq!(h.step(id).finished_at_ms, Some(T0 + 10));
    }
    assert_eq!(h.status("c"), StepStatus::Pending);
    assert_noop(&h.resume());
    assert_noop(&h.agent_ok("a", json!(1)));
    assert_noop(&h.wake("b"));
    assert_noop(&h.wake("t"));
    h.assert_seqs();
}

#[test]
fn failure_while_paused_cancels_siblings_and_fails_on_resume() {
    let mut h = Harness::new(DIAMOND, json!({}));
    h.start();
    h.agent_ok("a", json!(1));
    h.pause();
    h.advance(20);

    let error = err(ErrorKind::Server, "boom");
    let tx = h.agent_err("b", error.clone());
    assert_eq!(kinds(&tx.events), vec!["StepFailed:b", "StepCancelled:c"]);
    assert_eq!(tx.commands, vec![Command::Abandon { step: 2 }]);
    assert_eq!(h.exec.status, ExecutionStatus::Paused);
    assert_eq!(h.exec.error, None);
    assert_eq!(h.status("b"), StepStatus::Failed);
    assert_eq!(h.status("c"), StepStatus::Cancelled);
    assert_eq!(h.status("d"), StepStatus::Pending);

    // c's late result is ignored; still paused.
    assert_noop(&h.agent_ok("c", json!("late")));
    assert_eq!(h.exec.status, ExecutionStatus::Paused);

    h.advance(20);
    let tx = h.resume();
    assert_eq!(
        tx.events
            .iter()
            .map(|e| e.event.clone())
            .collect::<Vec<_>>(),
        vec![
            DomainEvent::ExecutionResumed,
            DomainEvent::ExecutionFailed {
                step: Some("b".into()),
                error: error.to_string()
            }
        ]
    );
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.exec.error, Some(error.to_string()));
    assert!(h
        .commands()
        .iter()
        .all(|c| !matches!(c, Command::CallAgent(a) if a.step_id == "d")));
    h.assert_seqs();
}

#[test]
fn failure_while_paused_without_stop_on_failure_lets_siblings_finish() {
    let mut h = Harness::new(NO_STOP, json!({}));
    h.start();
    h.agent_ok("a", json!(1));
    h.pause();
    let error = err(ErrorKind::Timeout, "slow");
    let tx = h.agent_err("b", error.clone());
    assert_eq!(kinds(&tx.events), vec!["StepFailed:b"]);
    assert!(tx.commands.is_empty());
    assert_eq!(h.status("c"), StepStatus::Running);

    let tx = h.agent_ok("c", json!("C"));
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:c"]);
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Paused);

    let tx = h.resume();
    assert_eq!(
        kinds(&tx.events),
        vec!["ExecutionResumed", "ExecutionFailed"]
    );
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert_eq!(h.status("e"), StepStatus::Pending);
    h.assert_seqs();
}

// ---------------------------------------------------------------------------------------------
// 15. Recovery.

const HOUR_MS: u64 = 3_600_000;

#[test]
fn recovery_action_decisions() {
    // Pending, young: resume. The age limit is strict, and clock skew is not age.
    let h = Harness::new(SINGLE, json!({"x": 1}));
    assert_eq!(h.exec.recovery_action(T0, HOUR_MS), RecoveryAction::Resume);
    assert_eq!(
        h.exec.recovery_action(T0 + HOUR_MS, HOUR_MS),
        RecoveryAction::Resume
    );
    assert_eq!(
        h.exec.recovery_action(T0 + HOUR_MS + 1, HOUR_MS),
        RecoveryAction::MarkFailed
    );
    assert_eq!(h.exec.recovery_action(0, 0), RecoveryAction::Resume);

    // An agent call in flight: retry the step; too old: mark failed.
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    assert_eq!(
        h.exec.recovery_action(T0 + 10, HOUR_MS),
        RecoveryAction::RetryStep
    );
    assert_eq!(
        h.exec.recovery_action(T0 + HOUR_MS + 1, HOUR_MS),
        RecoveryAction::MarkFailed
    );
    // Paused with a call in flight: still a retry of the step.
    h.pause();
    assert_eq!(
        h.exec.recovery_action(T0 + 10, HOUR_MS),
        RecoveryAction::RetryStep
    );

    // Terminal: skip, however old.
    h.resume();
    h.agent_ok("a", json!(1));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(h.exec.recovery_action(T0, HOUR_MS), RecoveryAction::Skip);
    assert_eq!(
        h.exec.recovery_action(T0 + 100 * HOUR_MS, HOUR_MS),
        RecoveryAction::Skip
    );
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.cancel(None);
    assert_eq!(
        h.exec.recovery_action(T0 + 100 * HOUR_MS, HOUR_MS),
        RecoveryAction::Skip
    );
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.agent_err("a", err(ErrorKind::Agent, "no"));
    assert_eq!(h.exec.recovery_action(T0, HOUR_MS), RecoveryAction::Skip);

    // Between steps: a retry backoff, or a timer.
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    h.agent_err("a", err(ErrorKind::Server, "down"));
    assert_eq!(h.status("a"), StepStatus::Retrying);
    assert_eq!(h.exec.recovery_action(T0, HOUR_MS), RecoveryAction::Resume);
    let mut h = Harness::new(TIMER, json!({}));
    h.start();
    assert_eq!(h.exec.recovery_action(T0, HOUR_MS), RecoveryAction::Resume);
    assert_eq!(
        h.exec.recovery_action(T0 + HOUR_MS + 1, HOUR_MS),
        RecoveryAction::MarkFailed
    );

    // A timer and an agent call both in flight: the call decides.
    let mut h = Harness::new(MIXED, json!({}));
    h.start();
    assert_eq!(
        h.exec.recovery_action(T0, HOUR_MS),
        RecoveryAction::RetryStep
    );
}

#[test]
fn recover_retry_step_redispatches_the_same_call() {
    let mut h = Harness::new(CHAIN, json!({}));
    h.start();
    h.advance(10);
    let tx = h.agent_ok("a", json!({"y": 3, "z": [1, 2]}));
    let original = calls(&tx)[0].clone();
    assert_eq!(original.step_id, "b");
    let started_at = h.step("b").started_at_ms;

    // Crash: b's call is lost. The engine comes back 5 s later.
    let stored = h.restart(5_000);
    assert_eq!(
        stored.recovery_action(h.now, HOUR_MS),
        RecoveryAction::RetryStep
    );
    let tx = h.recover(RecoveryAction::RetryStep);
    assert!(tx.changed);
    assert_eq!(
        tx.events,
        vec![EventRecord {
            execution_id: EXEC_ID.into(),
            seq: 5,
            at_ms: T0 + 5_010,
            event: DomainEvent::ExecutionRecovered {
                action: RecoveryAction::RetryStep
            },
        }]
    );
    assert_eq!(
        tx.commands,
        vec![Command::CallAgent(AgentCall {
            lane: Lane::Main,
            step: 1,
            step_id: "b".into(),
            agent: "echo".into(),
            attempt: 1,
            idempotency_key: "ex-1:b".into(),
            input: json!({"n": 3, "obj": [1, 2], "text": "y=3"}),
            timeout_ms: 30_000,
        })]
    );
    assert_eq!(tx.commands, vec![Command::CallAgent(original)]);
    assert!(tx.dirty_steps.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Running);
    assert_eq!(h.status("b"), StepStatus::Running);
    assert_eq!(h.step("b").attempt, 1);
    assert_eq!(h.step("b").started_at_ms, started_at);
    assert_eq!(h.exec.steps, stored.steps, "step rows untouched");

    // The re-dispatched call answers; the flow goes on.
    let tx = h.agent_ok("b", json!("B"));
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:b", "StepStarted:c"]);
    // A duplicate answer for the same attempt is ignored.
    assert_noop(&h.apply(Input::AgentReturned {
        lane: Lane::Main,
        step: 1,
        attempt: 1,
        result: Ok(json!("dup")),
    }));
    h.agent_ok("c", json!("C"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    assert_eq!(
        h.event_kinds()
            .iter()
            .filter(|k| *k == "StepStarted:b")
            .count(),
        1,
        "no new StepStarted for the re-dispatched call"
    );
    h.assert_seqs();
}

#[test]
fn recover_retry_step_keeps_a_later_attempt_number() {
    let mut h = Harness::new(RETRY, json!({"x": 9}));
    h.start();
    h.agent_err("a", err(ErrorKind::Server, "down"));
    h.advance(100);
    let tx = h.wake("a");
    let original = calls(&tx)[0].clone();
    assert_eq!(original.attempt, 2);

    h.restart(60_000);
    let tx = h.recover(RecoveryAction::RetryStep);
    assert_eq!(
        *only_event(&tx),
        DomainEvent::ExecutionRecovered {
            action: RecoveryAction::RetryStep
        }
    );
    assert_eq!(tx.commands, vec![Command::CallAgent(original.clone())]);
    assert_eq!(original.idempotency_key, "ex-1:a");
    assert_eq!(original.input, json!({"x": 9}));
    assert_eq!(h.step("a").attempt, 2);
    assert_eq!(h.step("a").retry_count(), 1);

    // Attempt 2 (the re-dispatched call) answers.
    let tx = h.agent_ok("a", json!("A"));
    assert_eq!(
        tx.events[0].event,
        DomainEvent::StepCompleted {
            step: "a".into(),
            attempt: 2,
            output: json!("A")
        }
    );
    h.assert_seqs();
}

#[test]
fn recover_resume_rearms_a_timer_at_its_stored_deadline() {
    for down_ms in [60_000, 700_000] {
        let mut h = Harness::new(TIMER, json!({}));
        h.start();
        let deadline = T0 + 600_000;
        h.restart(down_ms);
        let tx = h.recover(RecoveryAction::Resume);
        assert_eq!(
            tx.events,
            vec![EventRecord {
                execution_id: EXEC_ID.into(),
                seq: 3,
                at_ms: T0 + down_ms,
                event: DomainEvent::ExecutionRecovered {
                    action: RecoveryAction::Resume
                },
            }]
        );
        assert_eq!(
            tx.commands,
            vec![Command::Wake {
                lane: Lane::Main,
                step: 0,
                attempt: 1,
                at_ms: deadline
            }],
            "the original deadline, not now + duration (down {down_ms} ms)"
        );
        assert_eq!(h.step("t").wake_at_ms, Some(deadline));
        assert_eq!(h.step("t").started_at_ms, Some(T0));
        assert_eq!(h.status("t"), StepStatus::Running);

        h.now = h.now.max(deadline);
        let waited = h.now - T0;
        let tx = h.wake("t");
        assert_eq!(
            tx.events[0].event,
            DomainEvent::StepCompleted {
                step: "t".into(),
                attempt: 1,
                output: json!({
                    "waited_ms": waited,
                    "waited_seconds": waited as f64 / 1000.0,
                    "deadline_ms": deadline
                })
            }
        );
        assert_eq!(
            kinds(&tx.events),
            vec!["StepCompleted:t", "StepStarted:after"]
        );
        assert_eq!(call_ids(&tx), vec!["after"]);

        // The original wake-up (armed before the crash) arriving too: the timer fires once.
        h.advance(1);
        assert_noop(&h.apply(Input::Wake {
            lane: Lane::Main,
            step: 0,
            attempt: 1,
        }));
        h.agent_ok("after", json!("ok"));
        assert_eq!(h.exec.status, ExecutionStatus::Completed);
        assert_eq!(
            h.event_kinds()
                .iter()
                .filter(|k| *k == "StepCompleted:t")
                .count(),
            1
        );
        h.assert_seqs();
    }
}

#[test]
fn recover_resume_rearms_a_retry_at_its_stored_wake_time() {
    let mut h = Harness::new(RETRY, json!({"x": 1}));
    h.start();
    h.advance(5);
    h.agent_err("a", err(ErrorKind::Server, "down"));
    let wake_at = T0 + 105;
    assert_eq!(h.step("a").wake_at_ms, Some(wake_at));

    let stored = h.restart(45);
    assert_eq!(
        stored.recovery_action(h.now, HOUR_MS),
        RecoveryAction::Resume
    );
    let tx = h.recover(RecoveryAction::Resume);
    assert_eq!(
        *only_event(&tx),
        DomainEvent::ExecutionRecovered {
            action: RecoveryAction::Resume
        }
    );
    assert_eq!(wakes(&tx), vec![(0, 1, wake_at)]);
    assert_eq!(tx.commands.len(), 1);
    assert!(tx.dirty_steps.is_empty());
    assert_eq!(h.status("a"), StepStatus::Retrying);
    assert_eq!(h.step("a").wake_at_ms, Some(wake_at));

    h.now = wake_at;
    let tx = h.wake("a");
    assert_eq!(
        *only_event(&tx),
        DomainEvent::StepStarted {
            step: "a".into(),
            attempt: 2,
            wake_at_ms: None
        }
    );
    assert_eq!(calls(&tx)[0].attempt, 2);
    assert_eq!(calls(&tx)[0].idempotency_key, "ex-1:a");
    h.assert_seqs();
}

#[test]
fn recover_pending_execution_starts_it() {
    for action in [RecoveryAction::Resume, RecoveryAction::RetryStep] {
        let mut h = Harness::new(SINGLE, json!({"x": "w"}));
        h.advance(30);
        let tx = h.recover(action);
        assert_eq!(
            tx.events,
            vec![
                EventRecord {
                    execution_id: EXEC_ID.into(),
                    seq: 1,
                    at_ms: T0 + 30,
                    event: DomainEvent::ExecutionRecovered { action },
                },
                EventRecord {
                    execution_id: EXEC_ID.into(),
                    seq: 2,
                    at_ms: T0 + 30,
                    event: DomainEvent::ExecutionStarted {
                        process: "single".into(),
                        version: 3
                    },
                },
                EventRecord {
                    execution_id: EXEC_ID.into(),
                    seq: 3,
                    at_ms: T0 + 30,
                    event: DomainEvent::StepStarted {
                        step: "a".into(),
                        attempt: 1,
                        wake_at_ms: None
                    },
                },
            ]
        );
        assert_eq!(call_ids(&tx), vec!["a"]);
        assert_eq!(
            calls(&tx)[0].input,
            json!({"text": "w", "greeting": "hello w", "fixed": 5})
        );
        assert_eq!(tx.commands.len(), 1);
        assert_eq!(h.exec.status, ExecutionStatus::Running);
        // Start afterwards is a no-op: it already started.
        assert_noop(&h.start());
        h.agent_ok("a", json!(1));
        assert_eq!(h.exec.status, ExecutionStatus::Completed);
        h.assert_seqs();
    }
}

#[test]
fn recover_mark_failed_abandons_active_steps_and_fails() {
    let mut h = Harness::new(MIXED, json!({}));
    h.start();
    h.agent_err("b", err(ErrorKind::Server, "x"));
    let stored = h.restart(2 * HOUR_MS);
    assert_eq!(
        stored.recovery_action(h.now, HOUR_MS),
        RecoveryAction::MarkFailed
    );

    let tx = h.recover(RecoveryAction::MarkFailed);
    assert_eq!(
        kinds(&tx.events),
        vec![
            "ExecutionRecovered",
            "StepCancelled:a",
            "StepCancelled:b",
            "StepCancelled:t",
            "ExecutionFailed"
        ]
    );
    assert_eq!(
        tx.events[0].event,
        DomainEvent::ExecutionRecovered {
            action: RecoveryAction::MarkFailed
        }
    );
    match &tx.events[4].event {
        DomainEvent::ExecutionFailed { step, error } => {
            assert_eq!(*step, None);
            assert!(error.contains("age limit"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        tx.commands,
        vec![
            Command::Abandon { step: 0 },
            Command::Abandon { step: 1 },
            Command::Abandon { step: 2 }
        ]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    assert!(h.exec.error.as_deref().unwrap().contains("age limit"));
    for id in ["a", "b", "t"] {
        assert_eq!(h.status(id), StepStatus::Cancelled);
        assert_eq!(h.step(id).finished_at_ms, Some(T0 + 2 * HOUR_MS));
    }
    assert_eq!(h.status("c"), StepStatus::Pending);
    assert_noop(&h.agent_ok("a", json!(1)));
    assert_noop(&h.recover(RecoveryAction::MarkFailed));
    h.assert_seqs();

    // Pending and paused executions can be marked failed too.
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    let tx = h.recover(RecoveryAction::MarkFailed);
    assert_eq!(
        kinds(&tx.events),
        vec!["ExecutionRecovered", "ExecutionFailed"]
    );
    assert!(tx.commands.is_empty());
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    h.assert_seqs();

    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    h.start();
    h.pause();
    h.restart(10);
    let tx = h.recover(RecoveryAction::MarkFailed);
    assert_eq!(
        kinds(&tx.events),
        vec!["ExecutionRecovered", "StepCancelled:a", "ExecutionFailed"]
    );
    assert_eq!(tx.commands, vec![Command::Abandon { step: 0 }]);
    assert_eq!(h.exec.status, ExecutionStatus::Failed);
    h.assert_seqs();
}

#[test]
fn recover_while_paused_redispatches_calls_but_holds_retries() {
    let mut h = Harness::new(MIXED, json!({}));
    let tx = h.start();
    let call_a = calls(&tx)[0].clone();
    assert_eq!(call_a.step_id, "a");
    let deadline = T0 + HOUR_MS;
    h.advance(5);
    h.agent_err("b", err(ErrorKind::Server, "x"));
    let retry_at = T0 + 5 + 1_000;
    assert_eq!(h.step("b").wake_at_ms, Some(retry_at));
    h.pause();

    let stored = h.restart(10);
    assert_eq!(
        stored.recovery_action(h.now, HOUR_MS),
        RecoveryAction::RetryStep
    );
    let tx = h.recover(RecoveryAction::RetryStep);
    assert_eq!(
        *only_event(&tx),
        DomainEvent::ExecutionRecovered {
            action: RecoveryAction::RetryStep
        }
    );
    // a's call again, t's deadline again; b's backoff waits for the resume.
    assert_eq!(
        tx.commands,
        vec![
            Command::CallAgent(call_a),
            Command::Wake {
                lane: Lane::Main,
                step: 2,
                attempt: 1,
                at_ms: deadline
            }
        ]
    );
    assert_eq!(h.exec.status, ExecutionStatus::Paused);

    // Results still land while paused; c waits.
    let tx = h.agent_ok("a", json!("A"));
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:a"]);
    assert!(tx.commands.is_empty());
    h.now = retry_at;
    assert_noop(&h.wake("b"));

    let tx = h.resume();
    assert_eq!(kinds(&tx.events), vec!["ExecutionResumed"]);
    assert_eq!(wakes(&tx), vec![(1, 1, retry_at)]);
    assert_eq!(tx.commands.len(), 1);
    let tx = h.wake("b");
    assert_eq!(kinds(&tx.events), vec!["StepStarted:b"]);
    assert_eq!(calls(&tx)[0].attempt, 2);
    h.agent_ok("b", json!("B"));
    h.now = deadline;
    let tx = h.wake("t");
    assert_eq!(kinds(&tx.events), vec!["StepCompleted:t", "StepStarted:c"]);
    h.agent_ok("c", json!("C"));
    assert_eq!(h.exec.status, ExecutionStatus::Completed);
    h.assert_seqs();
}

#[test]
fn recover_skip_and_recover_terminal_are_noops() {
    // Skip on a running and on a pending execution.
    let mut h = Harness::new(SINGLE, json!({"x": 1}));
    assert_noop(&h.recover(RecoveryAction::Skip));
    assert_eq!(h.exec.status, ExecutionStatus::Pending);
    h.start();
    let before = h.exec.clone();
    assert_noop(&h.recover(RecoveryAction::Skip));
    assert_eq!(h.exec, before);

    // Any action on a terminal execution.
    let actions = [
        RecoveryAction::Resume,
        RecoveryAction::RetryStep,
        RecoveryAction::MarkFailed,
        RecoveryAction::Skip,
    ];
    let mut completed = Harness::new(SINGLE, json!({"x": 1}));
    completed.start();
    completed.agent_ok("a", json!(1));
    let mut failed = Harness::new(SINGLE, json!({"x": 1}));
    failed.start();
    failed.agent_err("a", err(ErrorKind::Agent, "no"));
    let mut cancelled = Harness::new(MIXED, json!({}));
    cancelled.start();
    cancelled.cancel(None);
    for mut h in [completed, failed, cancelled] {
        assert!(h.exec.status.is_terminal());
        let before = h.exec.clone();
        for action in actions {
            assert_noop(&h.recover(action));
        }
        assert_eq!(h.exec, before);
        h.assert_seqs();
    }
}

/// Regression: a re-dispatched call once re-rendered its input, so a template over a step that
/// changed meanwhile sent a different input under the same idempotency key. The input is now
/// rendered once, stored on the step, and re-sent as it was.
#[test]
fn redispatch_after_restart_sends_the_original_input() {
    const PARALLEL: &str = "name: p\nsteps:\n  - {id: a, type: agent_task, agent: w}\n  - {id: b, type: agent_task, agent: w, input: {s: '{{steps.a.status}}'}, retry: {max_attempts: 2, initial_delay: 10ms}}\n";
    let mut h = Harness::new(PARALLEL, json!({}));
    let started = h.start();
    let original = calls(&started)
        .into_iter()
        .find(|c| c.step_id == "b")
        .expect("b is called");
    assert_eq!(original.input, json!({"s": "running"}));
    h.agent_ok("a", json!({}));
    h.restart(1_000);
    let recovered = h.recover(RecoveryAction::RetryStep);
    let again = calls(&recovered);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0], original, "same attempt, key and input");
    // A retry after a failure sends it once more, unchanged.
    h.agent_err("b", StepError::new(ErrorKind::Server, "boom"));
    let retry = h.wake("b");
    assert_eq!(calls(&retry)[0].input, json!({"s": "running"}));
}
