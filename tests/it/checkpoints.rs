//! Workflow resumption: checkpoints per completed step, breakpoints (`submit_until`), resets
//! (forks) from a checkpoint with or without changes, checkpoint retention, the resumption
//! history, and concurrent resets and resumes. Everything is checked through what can be
//! observed: checkpoint, execution and step rows read with plain SQL, stored events, and the
//! agents' ledgers.

use std::collections::BTreeMap;

use proctor::core::{Checkpoint, Execution, ExecutionStatus, ForkError, RecoveryAction};
use proctor::driver::Error;
use proctor::event::DomainEvent;
use proctor::{EngineConfig, ExecutionHandle, RecoveryConfig, Reset, Resumption};
use proctor_tests::*;
use serde_json::{json, Value};

/// Three agent steps in a chain, each passing the text along.
const CHAIN: &str = "
name: chain
steps:
  - id: a
    type: agent_task
    agent: worker
    input: { text: '{{input.text}}' }
  - id: b
    type: agent_task
    agent: worker
    depends_on: [a]
    input: { prev: '{{steps.a.output.echo.text}}' }
  - id: c
    type: agent_task
    agent: worker
    depends_on: [b]
    input: { prev: '{{steps.b.output.echo.prev}}' }
";

/// Five agent steps in a chain.
const FIVE: &str = "
name: five
steps:
  - { id: a, type: agent_task, agent: worker }
  - { id: b, type: agent_task, agent: worker, depends_on: [a] }
  - { id: c, type: agent_task, agent: worker, depends_on: [b] }
  - { id: d, type: agent_task, agent: worker, depends_on: [c] }
  - { id: e, type: agent_task, agent: worker, depends_on: [d] }
";

/// A diamond: `b` (on a slow agent) and `c` (on a fast one) both follow `a`; `d` joins them.
const DIAMOND: &str = "
name: diamond
steps:
  - { id: a, type: agent_task, agent: fast }
  - { id: b, type: agent_task, agent: slow, depends_on: [a] }
  - { id: c, type: agent_task, agent: fast, depends_on: [a] }
  - { id: d, type: agent_task, agent: fast, depends_on: [b, c] }
";

/// Inputs built from the execution input and from `a`'s output, to see changes made by a reset.
const MODIFY: &str = "
name: modify
steps:
  - id: a
    type: agent_task
    agent: worker
    input: { x: '{{input.x}}' }
  - id: b
    type: agent_task
    agent: worker
    depends_on: [a]
    input: { x: '{{input.x}}', y: '{{steps.a.output.y}}' }
  - id: c
    type: agent_task
    agent: worker
    depends_on: [b]
    input: { x: '{{input.x}}', y: '{{steps.a.output.y}}', from_b: '{{steps.b.output.echo.y}}' }
";

/// The echo agent's output for `step` of agent `agent`, first attempt.
fn echoed(agent: &str, step: &str, input: Value) -> Value {
    json!({"agent": agent, "step": step, "attempt": 1, "echo": input})
}

/// The outputs of CHAIN's steps for input text `text`.
fn chain_outputs(text: &str) -> (Value, Value, Value) {
    (
        echoed("worker", "a", json!({ "text": text })),
        echoed("worker", "b", json!({ "prev": text })),
        echoed("worker", "c", json!({ "prev": text })),
    )
}

/// Waits (within the limit) until the execution is paused or terminal.
async fn stopped(handle: &mut ExecutionHandle) -> ExecutionStatus {
    tokio::time::timeout(RUN_LIMIT, handle.stopped())
        .await
        .unwrap_or_else(|_| panic!("execution {} stopped within the limit", handle.id))
}

/// Waits (within the limit) for the execution's final state.
async fn finish(handle: ExecutionHandle) -> Execution {
    let id = handle.id.clone();
    tokio::time::timeout(RUN_LIMIT, handle.wait())
        .await
        .unwrap_or_else(|_| panic!("execution {id} finished within the limit"))
        .unwrap_or_else(|e| panic!("engine drove execution {id}: {e}"))
}

/// Starts `t`'s process with `input`, pausing once `breakpoint` completes; waits for the pause.
async fn paused_at(t: &TestEngine, input: Value, breakpoint: &str) -> ExecutionHandle {
    let mut handle = t
        .engine
        .submit_until(t.process.clone(), input, breakpoint)
        .await
        .expect("submit_until");
    assert_eq!(stopped(&mut handle).await, ExecutionStatus::Paused);
    handle
}

/// Step ids of a checkpoint's `completed` map, in its order.
fn completed_keys(checkpoint: &Checkpoint) -> Vec<&str> {
    checkpoint.completed.keys().map(String::as_str).collect()
}

/// Step ids the checkpoints were taken for, oldest first.
fn checkpoint_steps(checkpoints: &[Checkpoint]) -> Vec<&str> {
    checkpoints.iter().map(|c| c.step_id.as_str()).collect()
}

/// Each step's status in a checkpoint, in definition order.
fn checkpoint_statuses(checkpoint: &Checkpoint) -> Vec<&'static str> {
    checkpoint.steps.iter().map(|s| s.status.as_str()).collect()
}

/// Each step's status in the `steps` rows, in definition order.
fn row_statuses(t: &TestEngine, id: &str) -> Vec<String> {
    let statuses = step_statuses(&t.sql(), id);
    t.process
        .steps
        .iter()
        .map(|s| statuses[&s.id].clone())
        .collect()
}

/// The checkpoint seqs of `id`, oldest first.
async fn seqs(t: &TestEngine, id: &str) -> Vec<u64> {
    let checkpoints = t.engine.checkpoints(id).await.expect("read checkpoints");
    checkpoints.iter().map(|c| c.seq).collect()
}

/// Counts rows with plain SQL.
fn count(t: &TestEngine, sql: &str, id: &str) -> i64 {
    t.sql()
        .query_row(sql, [id], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn checkpoint_count(t: &TestEngine, id: &str) -> i64 {
    count(
        t,
        "SELECT COUNT(*) FROM checkpoints WHERE execution_id = ?1",
        id,
    )
}

fn fork_count(t: &TestEngine, id: &str) -> i64 {
    count(
        t,
        "SELECT COUNT(*) FROM executions WHERE origin_id = ?1",
        id,
    )
}

fn execution_count(t: &TestEngine) -> i64 {
    t.sql()
        .query_row("SELECT COUNT(*) FROM executions", [], |r| r.get(0))
        .expect("count executions")
}

/// The `origin_id` and `origin_seq` columns of an execution.
fn origin_columns(t: &TestEngine, id: &str) -> (Option<String>, Option<i64>) {
    t.sql()
        .query_row(
            "SELECT origin_id, origin_seq FROM executions WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("origin columns")
}

/// The `breakpoint` column of an execution.
fn breakpoint_column(t: &TestEngine, id: &str) -> Option<String> {
    t.sql()
        .query_row(
            "SELECT breakpoint FROM executions WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("breakpoint column")
}

/// Asserts a fork's stored events begin with `ExecutionForked { from, checkpoint_seq }` and
/// then `ExecutionStarted`, each exactly once.
fn assert_forked_from(events: &[proctor::event::EventRecord], from: &str, checkpoint_seq: u64) {
    assert_eq!(
        events.first().map(|e| &e.event),
        Some(&DomainEvent::ExecutionForked {
            from: from.to_string(),
            checkpoint_seq,
        }),
        "a fork's first event names its origin: {events:#?}"
    );
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[1].event.kind(), "ExecutionStarted");
    let kinds = kinds(events);
    for once in ["ExecutionForked", "ExecutionStarted"] {
        assert_eq!(
            kinds.iter().filter(|k| **k == once).count(),
            1,
            "{once} once: {kinds:?}"
        );
    }
}

/// 1. A breakpoint pauses the execution once its step completes, with a checkpoint for each
///    completed step; nothing after it is requested until it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_basic_resumption() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    let (a_out, b_out, c_out) = chain_outputs("hi");
    let handle = paused_at(&t, json!({"text": "hi"}), "b").await;
    let id = handle.id.clone();

    let row = t.execution_row(&id);
    assert_eq!(row.status, "paused");
    assert_eq!(
        breakpoint_column(&t, &id),
        None,
        "a reached breakpoint is cleared"
    );
    let events = t.events_of(&id).await;
    assert_event_sequence(
        &events,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepCompleted:b",
            "BreakpointReached:b",
            "ExecutionPaused",
        ],
    );

    // One checkpoint per completed step, numbered by its StepCompleted event.
    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&checkpoints), ["a", "b"]);
    assert_eq!(checkpoints[0].seq, seq_of(&events, "StepCompleted:a"));
    assert_eq!(checkpoints[1].seq, seq_of(&events, "StepCompleted:b"));
    assert!(checkpoints.iter().all(|c| c.execution_id == id));
    assert_eq!(completed_keys(&checkpoints[0]), ["a"]);
    assert_eq!(completed_keys(&checkpoints[1]), ["a", "b"]);
    assert_eq!(checkpoints[0].completed["a"], a_out);
    assert_eq!(checkpoints[1].completed["a"], a_out);
    assert_eq!(checkpoints[1].completed["b"], b_out);
    assert_eq!(
        checkpoint_statuses(&checkpoints[0]),
        ["completed", "pending", "pending"]
    );
    assert_eq!(
        checkpoint_statuses(&checkpoints[1]),
        ["completed", "completed", "pending"]
    );
    assert_eq!(checkpoint_count(&t, &id), 2);

    // c is never requested while paused.
    settle().await;
    assert_eq!(t.requested_steps("worker"), ["a", "b"]);
    let c = t.step_row(&id, "c");
    assert_eq!((c.status.as_str(), c.attempt), ("pending", 0));
    assert_eq!(t.execution_row(&id).status, "paused");
    assert_eq!(t.events_of(&id).await, events);

    t.engine.resume(&id).await.unwrap();
    let execution = finish(handle).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(&execution, "c").output, Some(c_out.clone()));
    assert_eq!(t.execution_row(&id).status, "completed");
    assert_eq!(t.requested_steps("worker"), ["a", "b", "c"]);
    assert_eq!(
        t.attempts("worker").get(&(id.clone(), "c".into())),
        Some(&1)
    );
    let all = t.events_of(&id).await;
    assert_eq!(all[..events.len()], events[..]);
    assert_event_sequence(
        &all[events.len()..],
        &[
            "ExecutionResumed",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(t.bus_events_of(&id), all);

    // The earlier checkpoints are kept as they were; c's is added.
    let after = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(after[..2], checkpoints[..]);
    assert_eq!(checkpoint_steps(&after), ["a", "b", "c"]);
    assert_eq!(after[2].seq, seq_of(&all, "StepCompleted:c"));
    assert_eq!(
        Value::Object(after[2].completed.clone()),
        json!({"a": a_out, "b": b_out, "c": c_out})
    );

    // Resuming again is refused.
    assert!(matches!(
        t.engine.resume(&id).await,
        Err(Error::NotPaused {
            status: ExecutionStatus::Completed,
            ..
        })
    ));
    // A breakpoint that names no step is refused before anything is stored.
    let before = execution_count(&t);
    assert!(matches!(
        t.engine
            .submit_until(t.process.clone(), json!({"text": "x"}), "nope")
            .await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(execution_count(&t), before);
}

/// 2. Checkpoints are listed by the engine, stored as rows, and survive a restart (and can be
///    reset from by the restarted engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_checkpointer_integration() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    let clock = t.clock.clone();
    t.engine.bus().subscribe(move |_| clock.advance_ms(1));
    let execution = t.run(json!({"text": "persist"})).await;
    let other = t.run(json!({"text": "other"})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let id = execution.id.clone();

    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&checkpoints), ["a", "b", "c"]);
    let events = t.events_of(&id).await;
    for c in &checkpoints {
        assert_eq!(c.execution_id, id);
        let completed = events
            .iter()
            .find(|e| e.seq == c.seq)
            .expect("event at seq");
        assert_eq!(completed.event.kind(), "StepCompleted");
        assert_eq!(completed.event.step(), Some(c.step_id.as_str()));
        assert_eq!(
            c.at_ms, completed.at_ms,
            "taken in the completing transition"
        );
    }
    assert!(checkpoints.windows(2).all(|w| w[0].seq < w[1].seq));

    // The rows hold exactly what the engine lists: the first every step's state, each later
    // one only what changed since the one before; outputs are not stored twice.
    let rows = t.checkpoint_rows(&id);
    assert_eq!(rows.len(), checkpoints.len());
    assert_eq!(checkpoint_count(&t, &id), 3);
    let whole = whole_checkpoint_steps(&rows);
    for ((row, c), steps) in rows.iter().zip(&checkpoints).zip(&whole) {
        assert_eq!(row.seq as u64, c.seq);
        assert_eq!(row.step_id, c.step_id);
        assert_eq!(row.at_ms as u64, c.at_ms);
        assert_eq!(row.completed, None);
        assert_eq!(*steps, serde_json::to_value(&c.steps).unwrap());
    }
    assert!(rows[0].steps.is_array());
    for (row, before) in rows[1..].iter().zip(&rows) {
        assert_eq!(
            row.steps["base"], before.seq,
            "diffed against the one before"
        );
        let changed = row.steps["changed"].as_object().unwrap();
        assert!(changed.len() < t.process.steps.len(), "{changed:?}");
    }
    // The last checkpoint agrees with the final step rows.
    let last = checkpoints.last().unwrap();
    for (def, state) in t.process.steps.iter().zip(&last.steps) {
        let row = t.step_row(&id, &def.id);
        assert_eq!(row.status, state.status.as_str());
        assert_eq!(row.output, state.output);
        assert_eq!(last.completed[&def.id], row.output.unwrap());
    }

    // Each execution has its own checkpoints.
    let others = t.engine.checkpoints(&other.id).await.unwrap();
    assert_eq!(checkpoint_steps(&others), ["a", "b", "c"]);
    assert!(others.iter().all(|c| c.execution_id == other.id));
    assert_eq!(others[2].completed["c"], chain_outputs("other").2);
    let total: i64 = t
        .sql()
        .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 6);
    assert!(t
        .engine
        .checkpoints("no-such-execution")
        .await
        .unwrap()
        .is_empty());

    // A restarted engine on the same file lists the same checkpoints...
    let t2 = t.restart(t.now() + 60_000);
    assert_eq!(t2.engine.checkpoints(&id).await.unwrap(), checkpoints);
    assert_eq!(t2.engine.checkpoints(&other.id).await.unwrap(), others);
    // ...and resets from one of them: only the steps after it run.
    let fork = t2
        .engine
        .reset(
            &id,
            Reset {
                checkpoint_seq: Some(checkpoints[1].seq),
                ..Reset::default()
            },
        )
        .await
        .unwrap();
    let fork_id = fork.id.clone();
    let forked = finish(fork).await;
    assert_eq!(forked.status, ExecutionStatus::Completed);
    assert_eq!(t2.requested_steps_of("worker", &fork_id), ["c"]);
    assert_eq!(step(&forked, "b").output, last.steps[1].output);
    assert_forked_from(&t2.events_of(&fork_id).await, &id, checkpoints[1].seq);
    // The original's checkpoints are untouched by the fork, which has its own.
    assert_eq!(t2.engine.checkpoints(&id).await.unwrap(), checkpoints);
    assert_eq!(
        checkpoint_steps(&t2.engine.checkpoints(&fork_id).await.unwrap()),
        ["c"]
    );
}

/// 3. After a breakpoint in a diamond, the latest checkpoint holds exactly the completed
///    steps, in definition order, and every step's state as in the step rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_partial_results() {
    let t = TestEngine::start(DIAMOND, &[("fast", echo()), ("slow", slow(400))]).await;
    // c (fast) completes while b (slow) is still at its agent.
    let handle = paused_at(&t, json!({}), "c").await;
    let id = handle.id.clone();

    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&checkpoints), ["a", "c"]);
    let latest = checkpoints.last().unwrap();
    assert_eq!(completed_keys(latest), ["a", "c"]);
    assert_eq!(
        checkpoint_statuses(latest),
        ["completed", "running", "completed", "pending"]
    );
    assert_eq!(row_statuses(&t, &id), checkpoint_statuses(latest));
    for key in ["a", "c"] {
        assert_eq!(
            Some(&latest.completed[key]),
            t.step_row(&id, key).output.as_ref()
        );
    }
    assert_eq!(latest.completed["c"], echoed("fast", "c", json!({})));

    // b finishes while paused: its result is kept, with a checkpoint whose completed map is
    // in definition order (a, b, c), not completion order (a, c, b).
    eventually("b completed", || t.step_row(&id, "b").status == "completed").await;
    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&checkpoints), ["a", "c", "b"]);
    let latest = checkpoints.last().unwrap();
    assert_eq!(completed_keys(latest), ["a", "b", "c"]);
    assert_eq!(
        checkpoint_statuses(latest),
        ["completed", "completed", "completed", "pending"]
    );
    assert_eq!(row_statuses(&t, &id), checkpoint_statuses(latest));
    for key in ["a", "b", "c"] {
        assert_eq!(
            Some(&latest.completed[key]),
            t.step_row(&id, key).output.as_ref()
        );
    }
    assert_eq!(latest.completed["b"], echoed("slow", "b", json!({})));
    let rows = t.checkpoint_rows(&id);
    let whole = whole_checkpoint_steps(&rows);
    assert_eq!(
        whole[2],
        serde_json::to_value(&latest.steps).unwrap(),
        "stored as listed"
    );

    // Still paused: d is not requested.
    settle().await;
    assert_eq!(t.execution_row(&id).status, "paused");
    assert_eq!(t.requested_steps("fast"), ["a", "c"]);
    assert_eq!(t.requested_steps("slow"), ["b"]);
    assert_event_sequence(
        &t.events_of(&id).await,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "StepStarted:b",
            "StepStarted:c",
            "StepCompleted:c",
            "BreakpointReached:c",
            "ExecutionPaused",
            "StepCompleted:b",
        ],
    );

    t.engine.resume(&id).await.unwrap();
    let execution = finish(handle).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&checkpoints), ["a", "c", "b", "d"]);
    assert_eq!(
        completed_keys(checkpoints.last().unwrap()),
        ["a", "b", "c", "d"]
    );
    assert_eq!(t.requested_steps("fast"), ["a", "c", "d"]);
}

/// 4. Pruning keeps the newest checkpoints; the retention setting prunes as the run goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resumption_cleanup() {
    let t = TestEngine::start(FIVE, &[("worker", echo())]).await;
    let id = t.run(json!({})).await.id;
    let other = t.run(json!({})).await.id;
    let all = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&all), ["a", "b", "c", "d", "e"]);
    assert_eq!(checkpoint_count(&t, &id), 5);

    assert_eq!(t.engine.prune_checkpoints(&id, 3).await.unwrap(), 2);
    let kept = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(kept[..], all[2..], "the three newest are kept, unchanged");
    let row_seqs: Vec<u64> = t
        .checkpoint_rows(&id)
        .iter()
        .map(|r| r.seq as u64)
        .collect();
    assert_eq!(row_seqs, seqs(&t, &id).await);
    assert_eq!(checkpoint_count(&t, &id), 3);
    // Nothing more to prune; other executions are untouched.
    assert_eq!(t.engine.prune_checkpoints(&id, 3).await.unwrap(), 0);
    assert_eq!(t.engine.prune_checkpoints(&id, 10).await.unwrap(), 0);
    assert_eq!(checkpoint_count(&t, &id), 3);
    assert_eq!(checkpoint_count(&t, &other), 5);
    assert_eq!(
        t.engine
            .prune_checkpoints("no-such-execution", 1)
            .await
            .unwrap(),
        0
    );

    // A pruned checkpoint cannot be reset from; with none left, nothing can.
    let before = execution_count(&t);
    let pruned = all[0].seq;
    match t
        .engine
        .reset(
            &id,
            Reset {
                checkpoint_seq: Some(pruned),
                ..Reset::default()
            },
        )
        .await
    {
        Err(Error::NoCheckpoint { id: got, seq }) => {
            assert_eq!((got, seq), (id.clone(), Some(pruned)))
        }
        Err(e) => panic!("expected NoCheckpoint, got {e}"),
        Ok(h) => panic!("reset from pruned checkpoint {pruned} made {}", h.id),
    }
    assert_eq!(t.engine.prune_checkpoints(&id, 0).await.unwrap(), 3);
    assert_eq!(checkpoint_count(&t, &id), 0);
    assert!(matches!(
        t.engine.reset(&id, Reset::default()).await,
        Err(Error::NoCheckpoint { seq: None, .. })
    ));
    assert_eq!(execution_count(&t), before);

    // Retention configured on the engine: a five-step run leaves the two newest.
    let config = EngineConfig {
        keep_checkpoints: Some(2),
        ..EngineConfig::default()
    };
    let k = TestEngine::start_with_config(FIVE, &[("worker", echo())], config).await;
    let kept_id = k.run(json!({})).await.id;
    let kept = k.engine.checkpoints(&kept_id).await.unwrap();
    assert_eq!(checkpoint_steps(&kept), ["d", "e"]);
    let events = k.events_of(&kept_id).await;
    assert_eq!(kept[0].seq, seq_of(&events, "StepCompleted:d"));
    assert_eq!(kept[1].seq, seq_of(&events, "StepCompleted:e"));
    assert_eq!(completed_keys(&kept[1]), ["a", "b", "c", "d", "e"]);
    assert_eq!(checkpoint_count(&k, &kept_id), 2);
    assert_eq!(k.engine.prune_checkpoints(&kept_id, 2).await.unwrap(), 0);
    // A restarted engine keeps the same retention.
    let k2 = k.restart(k.now() + 60_000);
    let again = k2.run(json!({})).await.id;
    assert_eq!(
        checkpoint_steps(&k2.engine.checkpoints(&again).await.unwrap()),
        ["d", "e"]
    );
    assert_eq!(checkpoint_count(&k2, &kept_id), 2);
}

/// 5. The history lists each time an execution was taken up again, in time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resumption_history() {
    let t = TestEngine::start(CHAIN, &[("worker", slow(150))]).await;
    // A fresh completed run was never taken up again.
    let plain = t.run(json!({"text": "plain"})).await.id;
    assert!(t.engine.history(&plain).await.unwrap().is_empty());

    let handle = paused_at(&t, json!({"text": "h"}), "a").await;
    let id = handle.id.clone();
    assert!(t.engine.history(&id).await.unwrap().is_empty());

    // Resumed after the breakpoint...
    t.clock.advance_ms(1_000);
    let resumed_at = t.now();
    t.engine.resume(&id).await.unwrap();
    // ...then paused again while b is at the agent (the pause lands behind the resume).
    t.engine.pause(&id).await.unwrap();
    eventually("b completed", || t.step_row(&id, "b").status == "completed").await;
    assert_eq!(t.execution_row(&id).status, "paused");
    assert_eq!(
        t.engine.history(&id).await.unwrap(),
        [Resumption::Resumed { at_ms: resumed_at }]
    );
    drop(handle);

    // Recovered by a restarted engine (still paused)...
    let recovered_at = T0 + 60_000;
    let t2 = t.restart(recovered_at);
    let recovery = t2.recover(RecoveryConfig::default()).await;
    assert_eq!(
        recovery.report.actions,
        [(id.clone(), RecoveryAction::Resume)]
    );
    // The recovered execution's task records its recovery just after `recover` returns.
    eventually("recovery recorded", || {
        t2.event_rows(&id)
            .iter()
            .any(|e| e.kind == "ExecutionRecovered")
    })
    .await;
    let history = t2.engine.history(&id).await.unwrap();
    assert_eq!(
        history,
        [
            Resumption::Resumed { at_ms: resumed_at },
            Resumption::Recovered {
                at_ms: recovered_at,
                action: RecoveryAction::Resume
            },
        ]
    );

    // ...resumed there, runs to its end...
    t2.clock.advance_ms(1_000);
    let resumed_again_at = t2.now();
    t2.engine.resume(&id).await.unwrap();
    let finished = wait_all(recovery.handles).await;
    assert_eq!(finished[&id].status, ExecutionStatus::Completed);
    assert_eq!(t2.requested_steps_of("worker", &id), ["a", "b", "c"]);

    // ...and is reset from its first checkpoint.
    t2.clock.advance_ms(1_000);
    let reset_at = t2.now();
    let seq_a = t2.engine.checkpoints(&id).await.unwrap()[0].seq;
    let fork = t2
        .engine
        .reset(
            &id,
            Reset {
                checkpoint_seq: Some(seq_a),
                ..Reset::default()
            },
        )
        .await
        .unwrap();
    let fork_id = fork.id.clone();
    assert_eq!(finish(fork).await.status, ExecutionStatus::Completed);

    let history = t2.engine.history(&id).await.unwrap();
    assert_eq!(
        history,
        [
            Resumption::Resumed { at_ms: resumed_at },
            Resumption::Recovered {
                at_ms: recovered_at,
                action: RecoveryAction::Resume
            },
            Resumption::Resumed {
                at_ms: resumed_again_at
            },
            Resumption::Reset {
                at_ms: reset_at,
                into: fork_id.clone(),
                checkpoint_seq: seq_a,
            },
        ]
    );
    assert!(history.windows(2).all(|w| w[0].at_ms() < w[1].at_ms()));
    // The stored events agree with the history.
    let events = t2.events_of(&id).await;
    let resumed: Vec<u64> = events
        .iter()
        .filter(|e| e.event == DomainEvent::ExecutionResumed)
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(resumed, [resumed_at, resumed_again_at]);
    assert_eq!(recovered_actions(&events), [RecoveryAction::Resume]);
    // The fork itself was never taken up again; the plain run still was not.
    assert!(t2.engine.history(&fork_id).await.unwrap().is_empty());
    assert!(t2.engine.history(&plain).await.unwrap().is_empty());
}

/// 6. A step that failed for good is run again by a reset from the checkpoint before it, once
///    its agent is healthy; the steps before it are not requested again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_error_recovery() {
    let t = TestEngine::start(CHAIN, &[("worker", failing(&["c"], 500, "broken"))]).await;
    let (a_out, b_out, c_out) = chain_outputs("fix");
    let execution = t.run(json!({"text": "fix"})).await;
    let id = execution.id.clone();
    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert_eq!(t.step_row(&id, "c").status, "failed");
    assert_eq!(t.requested_steps("worker"), ["a", "b", "c"]);
    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(
        checkpoint_steps(&checkpoints),
        ["a", "b"],
        "no checkpoint for a failure"
    );
    let original_events = t.events_of(&id).await;
    let original_row = t.execution_row(&id);

    // The agent is fixed; a new engine resets from the latest checkpoint (after b).
    let t2 = t
        .restart_with_agents(t.now() + 60_000, &[("worker", echo())])
        .await;
    let fork = t2.engine.reset(&id, Reset::default()).await.unwrap();
    let fork_id = fork.id.clone();
    assert_ne!(fork_id, id);
    let forked = finish(fork).await;
    assert_eq!(forked.status, ExecutionStatus::Completed);
    assert_eq!(step(&forked, "c").output, Some(c_out.clone()));
    assert_eq!(
        forked.output,
        Some(json!({"a": a_out, "b": b_out, "c": c_out}))
    );

    // Only c was requested again, with the input b's kept output gives it.
    let requests = t2.requests("worker");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (
            requests[0].execution_id.as_str(),
            requests[0].step_id.as_str()
        ),
        (fork_id.as_str(), "c")
    );
    assert_eq!(requests[0].input, json!({"prev": "fix"}));
    assert_eq!(requests[0].attempt, 1);
    assert_eq!(
        t.requested_steps("worker"),
        ["a", "b", "c"],
        "broken agent not called again"
    );

    // The fork's rows: a and b as at the checkpoint, c completed.
    for (s, out) in [("a", &a_out), ("b", &b_out)] {
        let row = t2.step_row(&fork_id, s);
        assert_eq!(row.status, "completed");
        assert_eq!(row.output.as_ref(), Some(out));
        assert_eq!(row, t2.step_row(&id, s), "{s} kept as it was");
    }
    assert_eq!(t2.step_row(&fork_id, "c").status, "completed");
    assert_eq!(t2.execution_row(&fork_id).status, "completed");
    assert_eq!(
        origin_columns(&t2, &fork_id),
        (Some(id.clone()), Some(checkpoints[1].seq as i64))
    );
    let fork_events = t2.events_of(&fork_id).await;
    assert_forked_from(&fork_events, &id, checkpoints[1].seq);
    assert_event_sequence(
        &fork_events,
        &[
            "ExecutionForked",
            "ExecutionStarted",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted",
        ],
    );

    // The original stays failed, its history untouched but for the reset.
    assert_eq!(t2.execution_row(&id), original_row);
    assert_eq!(t2.step_row(&id, "c").status, "failed");
    assert_eq!(t2.events_of(&id).await, original_events);
    assert_eq!(t2.engine.checkpoints(&id).await.unwrap(), checkpoints);
    let history = t2.engine.history(&id).await.unwrap();
    assert!(
        matches!(&history[..], [Resumption::Reset { into, checkpoint_seq, .. }]
            if *into == fork_id && *checkpoint_seq == checkpoints[1].seq),
        "{history:?}"
    );
}

/// 7. Two resets of one execution at once: one goes ahead, the other is refused. Two resumes
///    of one paused execution at once: it is resumed once. On a single-threaded runtime, so
///    that the two calls really overlap: the first holds the reset guard (or has its Resume
///    queued) while it waits for the execution's task, which cannot run before the second
///    call has been polled.
#[tokio::test(flavor = "current_thread")]
async fn test_concurrent_resumption() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;

    let original = paused_at(&t, json!({"text": "race"}), "a").await;
    let id = original.id.clone();
    let seq_a = t.engine.checkpoints(&id).await.unwrap()[0].seq;
    let (r1, r2) = tokio::join!(
        t.engine.reset(&id, Reset::default()),
        t.engine.reset(&id, Reset::default())
    );
    let (fork, refused) = match (r1, r2) {
        (Ok(h), Err(e)) | (Err(e), Ok(h)) => (h, e),
        (Ok(a), Ok(b)) => panic!("both resets went ahead: {} and {}", a.id, b.id),
        (Err(a), Err(b)) => panic!("both resets refused: {a}; {b}"),
    };
    assert!(
        matches!(&refused, Error::AlreadyResetting(x) if *x == id),
        "{refused}"
    );
    let fork_id = fork.id.clone();
    assert_eq!(finish(fork).await.status, ExecutionStatus::Completed);
    assert_eq!(finish(original).await.status, ExecutionStatus::Cancelled);
    assert_eq!(fork_count(&t, &id), 1);
    assert_eq!(t.requested_steps_of("worker", &id), ["a"]);
    assert_eq!(t.requested_steps_of("worker", &fork_id), ["b", "c"]);
    assert_forked_from(&t.events_of(&fork_id).await, &id, seq_a);
    let cancelled: Vec<_> = t
        .events_of(&id)
        .await
        .into_iter()
        .filter(|e| e.event.kind() == "ExecutionCancelled")
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(
        cancelled[0].event,
        DomainEvent::ExecutionCancelled {
            reason: Some(format!("reset into {fork_id}"))
        }
    );
    // The guard is released: a later reset of the (now cancelled) original goes ahead.
    let later = t.engine.reset(&id, Reset::default()).await.unwrap();
    assert_eq!(finish(later).await.status, ExecutionStatus::Completed);
    assert_eq!(fork_count(&t, &id), 2);

    // Two resumes of one paused execution at once: it is resumed once, and a refused one is
    // told NotPaused. (That exactly one of them is refused is `concurrent_resumes_one_refused`.)
    let handle = paused_at(&t, json!({"text": "resume"}), "a").await;
    let paused = handle.id.clone();
    let (r1, r2) = tokio::join!(t.engine.resume(&paused), t.engine.resume(&paused));
    assert!(r1.is_ok() || r2.is_ok(), "{r1:?} {r2:?}");
    for r in [&r1, &r2] {
        if let Err(e) = r {
            assert!(matches!(e, Error::NotPaused { .. }), "{e}");
        }
    }
    assert_eq!(finish(handle).await.status, ExecutionStatus::Completed);
    assert_event_sequence(
        &t.events_of(&paused).await,
        &[
            "ExecutionStarted",
            "StepStarted:a",
            "StepCompleted:a",
            "BreakpointReached:a",
            "ExecutionPaused",
            "ExecutionResumed",
            "StepStarted:b",
            "StepCompleted:b",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(t.requested_steps_of("worker", &paused), ["a", "b", "c"]);
    assert!(t.attempts("worker").values().all(|n| *n == 1));
    // Once resumed, a further resume is refused.
    assert!(matches!(
        t.engine.resume(&paused).await,
        Err(Error::NotPaused { .. })
    ));
}

/// Of two resumes of one paused execution at the same time, exactly one succeeds and the
/// other is refused with NotPaused, as `Engine::resume` documents.
// Regression: both once returned Ok: the second resume read the stored status while the
// first's Resume was still in the inbox, and its own no-op Resume was acknowledged as done. The
// acknowledgement now says whether the input changed anything; a no-op resume is NotPaused.
// One thread: `join!` interleaves the two resumes at their awaits, which is the racy overlap.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_resumes_one_refused() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    let handle = paused_at(&t, json!({"text": "both"}), "a").await;
    let id = handle.id.clone();
    let (r1, r2) = tokio::join!(t.engine.resume(&id), t.engine.resume(&id));
    let refused: Vec<&Error> = [&r1, &r2]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "one resume wins, the other is told: {r1:?} {r2:?}"
    );
    assert!(
        matches!(refused[0], Error::NotPaused { id: x, .. } if *x == id),
        "{}",
        refused[0]
    );
    assert_eq!(finish(handle).await.status, ExecutionStatus::Completed);
}

/// A reset running as its own task.
type ResetTask = tokio::task::JoinHandle<Result<ExecutionHandle, Error>>;

/// Resets racing from tasks on different threads, of a finished and of a paused execution:
/// whether or not a pair overlaps, every refusal is AlreadyResetting, the original is
/// cancelled at most once, and every fork is driven exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_concurrent_resets_across_threads() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    let reset_pair = |id: &str, checkpoint_seq: Option<u64>| {
        let attempt = || {
            let (engine, id) = (t.engine.clone(), id.to_string());
            tokio::spawn(async move {
                let reset = Reset {
                    checkpoint_seq,
                    ..Reset::default()
                };
                engine.reset(&id, reset).await
            })
        };
        (attempt(), attempt())
    };
    // Collects the forks of a pair; checks the refusals.
    async fn went_ahead(id: &str, pair: (ResetTask, ResetTask)) -> Vec<ExecutionHandle> {
        let mut forks = Vec::new();
        for result in [pair.0.await.unwrap(), pair.1.await.unwrap()] {
            match result {
                Ok(handle) => forks.push(handle),
                Err(Error::AlreadyResetting(x)) => assert_eq!(x, id),
                Err(e) => panic!("unexpected reset error: {e}"),
            }
        }
        assert!(!forks.is_empty(), "one of each pair goes ahead");
        forks
    }

    // A finished original.
    let done = t.run(json!({"text": "done"})).await.id;
    let seq_a = t.engine.checkpoints(&done).await.unwrap()[0].seq;
    let mut handles = Vec::new();
    for _ in 0..5 {
        handles.extend(went_ahead(&done, reset_pair(&done, Some(seq_a))).await);
    }
    let forks = wait_all(handles).await;
    assert_eq!(fork_count(&t, &done) as usize, forks.len());
    for (fork_id, fork) in &forks {
        assert_eq!(fork.status, ExecutionStatus::Completed);
        assert_eq!(t.requested_steps_of("worker", fork_id), ["b", "c"]);
        assert_forked_from(&t.events_of(fork_id).await, &done, seq_a);
    }
    assert_eq!(t.execution_row(&done).status, "completed");

    // Paused originals: cancelled once, by the first reset; a later one forks the cancelled
    // original.
    for text in ["p1", "p2", "p3"] {
        let original = paused_at(&t, json!({ "text": text }), "a").await;
        let id = original.id.clone();
        let handles = went_ahead(&id, reset_pair(&id, None)).await;
        let forks = wait_all(handles).await;
        assert_eq!(finish(original).await.status, ExecutionStatus::Cancelled);
        assert_eq!(fork_count(&t, &id) as usize, forks.len());
        let cancelled: Vec<_> = t
            .events_of(&id)
            .await
            .into_iter()
            .filter_map(|e| match e.event {
                DomainEvent::ExecutionCancelled { reason } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(cancelled.len(), 1, "cancelled once");
        let reason = cancelled[0].clone().expect("a reason");
        assert!(
            forks.keys().any(|f| reason == format!("reset into {f}")),
            "{reason} names one of {:?}",
            forks.keys()
        );
        for (fork_id, fork) in &forks {
            assert_eq!(fork.status, ExecutionStatus::Completed);
            assert_eq!(t.requested_steps_of("worker", fork_id), ["b", "c"]);
        }
        assert_eq!(t.requested_steps_of("worker", &id), ["a"]);
    }
    // Nothing was requested twice.
    assert!(t.effects("worker").values().all(|n| *n == 1));
    assert!(t.attempts("worker").values().all(|n| *n == 1));
}

/// 8. One execution reset from two of its checkpoints: two forks, each starting from its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_multiple_resumption_points() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    let (a_out, b_out, c_out) = chain_outputs("multi");
    let id = t.run(json!({"text": "multi"})).await.id;
    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    assert_eq!(checkpoint_steps(&checkpoints), ["a", "b", "c"]);
    let (cp1, cp2) = (checkpoints[0].seq, checkpoints[1].seq);

    let reset_from = |seq: u64| Reset {
        checkpoint_seq: Some(seq),
        ..Reset::default()
    };
    t.clock.advance_ms(1_000);
    let first = t.engine.reset(&id, reset_from(cp1)).await.unwrap();
    let first_id = first.id.clone();
    let first = finish(first).await;
    t.clock.advance_ms(1_000);
    let second = t.engine.reset(&id, reset_from(cp2)).await.unwrap();
    let second_id = second.id.clone();
    let second = finish(second).await;
    assert_ne!(first_id, second_id);

    for fork in [&first, &second] {
        assert_eq!(fork.status, ExecutionStatus::Completed);
        assert_eq!(
            fork.output,
            Some(json!({"a": a_out, "b": b_out, "c": c_out}))
        );
    }
    // From after a: b and c run again. From after b: only c.
    assert_eq!(t.requested_steps_of("worker", &first_id), ["b", "c"]);
    assert_eq!(t.requested_steps_of("worker", &second_id), ["c"]);
    assert_eq!(t.requested_steps_of("worker", &id), ["a", "b", "c"]);

    let first_events = t.events_of(&first_id).await;
    assert_forked_from(&first_events, &id, cp1);
    assert_event_sequence(
        &first_events,
        &[
            "ExecutionForked",
            "ExecutionStarted",
            "StepStarted:b",
            "StepCompleted:b",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted",
        ],
    );
    let second_events = t.events_of(&second_id).await;
    assert_forked_from(&second_events, &id, cp2);
    assert_event_sequence(
        &second_events,
        &[
            "ExecutionForked",
            "ExecutionStarted",
            "StepStarted:c",
            "StepCompleted:c",
            "ExecutionCompleted",
        ],
    );
    assert_eq!(
        origin_columns(&t, &first_id),
        (Some(id.clone()), Some(cp1 as i64))
    );
    assert_eq!(
        origin_columns(&t, &second_id),
        (Some(id.clone()), Some(cp2 as i64))
    );
    assert_eq!(origin_columns(&t, &id), (None, None));

    // Steps kept from the checkpoint are as they were in the original (not re-run).
    assert_eq!(t.step_row(&first_id, "a"), t.step_row(&id, "a"));
    assert_eq!(t.step_row(&second_id, "a"), t.step_row(&id, "a"));
    assert_eq!(t.step_row(&second_id, "b"), t.step_row(&id, "b"));
    // Each fork's checkpoints cover the steps it ran, on top of what it started from.
    let first_cps = t.engine.checkpoints(&first_id).await.unwrap();
    assert_eq!(checkpoint_steps(&first_cps), ["b", "c"]);
    assert_eq!(completed_keys(&first_cps[0]), ["a", "b"]);
    let second_cps = t.engine.checkpoints(&second_id).await.unwrap();
    assert_eq!(checkpoint_steps(&second_cps), ["c"]);
    assert_eq!(completed_keys(&second_cps[0]), ["a", "b", "c"]);

    // The original is untouched and records both resets.
    assert_eq!(t.execution_row(&id).status, "completed");
    assert_eq!(t.engine.checkpoints(&id).await.unwrap(), checkpoints);
    let history = t.engine.history(&id).await.unwrap();
    let resets: Vec<(String, u64)> = history
        .iter()
        .map(|h| match h {
            Resumption::Reset {
                into,
                checkpoint_seq,
                ..
            } => (into.clone(), *checkpoint_seq),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(resets, [(first_id.clone(), cp1), (second_id.clone(), cp2)]);
    assert_eq!(fork_count(&t, &id), 2);

    // A fork can itself be reset (from its own checkpoints).
    let third = t.engine.reset(&second_id, Reset::default()).await.unwrap();
    let third_id = third.id.clone();
    assert_eq!(finish(third).await.status, ExecutionStatus::Completed);
    assert!(t.requested_steps_of("worker", &third_id).is_empty());
    assert_forked_from(&t.events_of(&third_id).await, &second_id, second_cps[0].seq);
}

/// 9. A reset with a new input and an overridden output runs the remaining steps with them; an
///    override for a step that had not completed is refused and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_resumption_with_modification() {
    let t = TestEngine::start(
        MODIFY,
        &[("worker", with_outputs(&[("a", json!({"y": "from-agent"}))]))],
    )
    .await;
    let id = t.run(json!({"x": "one"})).await.id;
    let inputs_of = |exec: &str| -> BTreeMap<String, Value> {
        t.requests("worker")
            .into_iter()
            .filter(|r| r.execution_id == exec)
            .map(|r| (r.step_id, r.input))
            .collect()
    };
    assert_eq!(
        inputs_of(&id),
        BTreeMap::from([
            ("a".to_string(), json!({"x": "one"})),
            ("b".to_string(), json!({"x": "one", "y": "from-agent"})),
            (
                "c".to_string(),
                json!({"x": "one", "y": "from-agent", "from_b": "from-agent"})
            ),
        ])
    );
    let checkpoints = t.engine.checkpoints(&id).await.unwrap();
    let cp_a = checkpoints[0].seq;
    assert_eq!(checkpoints[0].step_id, "a");

    // New input, and a's output overridden.
    let fork = t
        .engine
        .reset(
            &id,
            Reset {
                checkpoint_seq: Some(cp_a),
                input: Some(json!({"x": "two"})),
                outputs: BTreeMap::from([("a".to_string(), json!({"y": "override"}))]),
            },
        )
        .await
        .unwrap();
    let fork_id = fork.id.clone();
    let forked = finish(fork).await;
    assert_eq!(forked.status, ExecutionStatus::Completed);
    assert_eq!(
        inputs_of(&fork_id),
        BTreeMap::from([
            ("b".to_string(), json!({"x": "two", "y": "override"})),
            (
                "c".to_string(),
                json!({"x": "two", "y": "override", "from_b": "override"})
            ),
        ]),
        "a is not run again; b and c see the new input and a's new output"
    );
    assert_eq!(t.execution_row(&fork_id).input, json!({"x": "two"}));
    let a = t.step_row(&fork_id, "a");
    assert_eq!(a.status, "completed");
    assert_eq!(a.output, Some(json!({"y": "override"})));
    assert_eq!(
        t.engine.checkpoints(&fork_id).await.unwrap()[0].completed["a"],
        json!({"y": "override"})
    );
    assert_forked_from(&t.events_of(&fork_id).await, &id, cp_a);
    // The original keeps its input and outputs.
    assert_eq!(t.execution_row(&id).input, json!({"x": "one"}));
    assert_eq!(
        t.step_row(&id, "a").output,
        Some(json!({"y": "from-agent"}))
    );

    // Overriding a step that had not completed at the checkpoint is refused; nothing is made.
    let executions = execution_count(&t);
    let dump = t.dump();
    for step in ["b", "c", "no-such-step"] {
        let result = t
            .engine
            .reset(
                &id,
                Reset {
                    checkpoint_seq: Some(cp_a),
                    input: None,
                    outputs: BTreeMap::from([(step.to_string(), json!({"y": "bad"}))]),
                },
            )
            .await;
        match result {
            Err(Error::Fork(ForkError::NotCompleted(s))) => assert_eq!(s, step),
            Err(e) => panic!("expected NotCompleted({step}), got {e}"),
            Ok(h) => panic!("override of {step} made {}", h.id),
        }
    }
    assert_eq!(execution_count(&t), executions);
    assert_eq!(t.dump(), dump, "a refused reset changes nothing");
    assert_eq!(fork_count(&t, &id), 1);

    // The same refusal for a paused original leaves it paused, and it can still be resumed.
    let handle = paused_at(&t, json!({"x": "three"}), "a").await;
    let paused = handle.id.clone();
    let before = t.events_of(&paused).await;
    let refused = t
        .engine
        .reset(
            &paused,
            Reset {
                outputs: BTreeMap::from([("b".to_string(), json!({}))]),
                ..Reset::default()
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(Error::Fork(ForkError::NotCompleted(s))) if s == "b"),
        "{:?}",
        refused.as_ref().map(|h| &h.id)
    );
    assert_eq!(t.execution_row(&paused).status, "paused");
    assert_eq!(t.events_of(&paused).await, before);
    assert_eq!(fork_count(&t, &paused), 0);
    t.engine.resume(&paused).await.unwrap();
    assert_eq!(finish(handle).await.status, ExecutionStatus::Completed);
}

/// A running execution cannot be reset; once it has finished it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_reset_refused_while_running() {
    let t = TestEngine::start(CHAIN, &[("worker", slow(150))]).await;
    let handle = t
        .engine
        .submit(t.process.clone(), json!({"text": "busy"}))
        .await
        .unwrap();
    let id = handle.id.clone();
    eventually("a completed", || t.step_row(&id, "a").status == "completed").await;
    let executions = execution_count(&t);
    match t.engine.reset(&id, Reset::default()).await {
        Err(Error::Running(x)) => assert_eq!(x, id),
        Err(e) => panic!("expected Running, got {e}"),
        Ok(h) => panic!("reset of a running execution made {}", h.id),
    }
    assert_eq!(execution_count(&t), executions);
    assert_eq!(fork_count(&t, &id), 0);

    // The refused reset did not disturb it.
    let execution = finish(handle).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(t.requested_steps("worker"), ["a", "b", "c"]);
    let events = t.events_of(&id).await;
    assert!(!kinds(&events).contains(&"ExecutionCancelled"));
    assert!(t.engine.history(&id).await.unwrap().is_empty());

    // Finished, it can be reset (the refusal released the reset guard).
    let fork = t.engine.reset(&id, Reset::default()).await.unwrap();
    assert_eq!(finish(fork).await.status, ExecutionStatus::Completed);
    assert_eq!(fork_count(&t, &id), 1);
    assert_eq!(t.execution_row(&id).status, "completed");
}

/// Resetting a paused execution cancels it, naming the fork; live or (after a restart) not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_reset_of_paused_execution_cancels_original() {
    let t = TestEngine::start(CHAIN, &[("worker", echo())]).await;
    let handle = paused_at(&t, json!({"text": "p"}), "b").await;
    let id = handle.id.clone();
    let seq_b = t.engine.checkpoints(&id).await.unwrap()[1].seq;

    let fork = t.engine.reset(&id, Reset::default()).await.unwrap();
    let fork_id = fork.id.clone();
    // The original is cancelled before the reset returns.
    assert_eq!(t.execution_row(&id).status, "cancelled");
    let original = finish(handle).await;
    assert_eq!(original.status, ExecutionStatus::Cancelled);
    let events = t.events_of(&id).await;
    assert_eq!(
        events.last().map(|e| &e.event),
        Some(&DomainEvent::ExecutionCancelled {
            reason: Some(format!("reset into {fork_id}"))
        })
    );
    assert_eq!(t.step_row(&id, "c").status, "pending");
    assert!(matches!(
        t.engine.resume(&id).await,
        Err(Error::NotPaused {
            status: ExecutionStatus::Cancelled,
            ..
        })
    ));

    let forked = finish(fork).await;
    assert_eq!(forked.status, ExecutionStatus::Completed);
    assert_forked_from(&t.events_of(&fork_id).await, &id, seq_b);
    assert_eq!(t.requested_steps_of("worker", &id), ["a", "b"]);
    assert_eq!(t.requested_steps_of("worker", &fork_id), ["c"]);

    // Paused before a restart and not recovered: the new engine cancels the stored original.
    let other = paused_at(&t, json!({"text": "q"}), "a").await.id.clone();
    let t2 = t.restart(t.now() + 60_000);
    let fork = t2.engine.reset(&other, Reset::default()).await.unwrap();
    let fork_id = fork.id.clone();
    assert_eq!(finish(fork).await.status, ExecutionStatus::Completed);
    assert_eq!(t2.execution_row(&other).status, "cancelled");
    assert_eq!(
        t2.events_of(&other).await.last().map(|e| &e.event),
        Some(&DomainEvent::ExecutionCancelled {
            reason: Some(format!("reset into {fork_id}"))
        })
    );
    assert_eq!(t2.requested_steps_of("worker", &fork_id), ["b", "c"]);
    assert_eq!(t2.requested_steps_of("worker", &other), ["a"]);
}
