//! Sub-processes: a step runs a registered definition as a child execution and completes with
//! its output; the child's failure fails the step; cancelling the parent cancels the child; a
//! restart finds the child rather than creating a second one.

use proctor::core::{ErrorKind, ExecutionStatus};
use proctor::RecoveryConfig;
use proctor_tests::*;
use serde_json::json;

const PARENT: &str = r#"
name: parent
steps:
  - {id: prep, type: agent_task, agent: worker, input: {n: "{{input.n}}"}}
  - {id: sub, type: subprocess, process: child, depends_on: [prep], input: {n: "{{steps.prep.output.echo.n}}"}}
  - {id: after, type: agent_task, agent: worker, depends_on: [sub], input: {got: "{{steps.sub.output.doubled}}"}}
"#;
const CHILD: &str = r#"
name: child
steps:
  - {id: double, type: agent_task, agent: worker, input: {v: "{{input.n * 2}}"}}
output:
  doubled: "{{steps.double.output.echo.v}}"
"#;
const WAITING_CHILD: &str = "name: child\nsteps:\n  - {id: wait, type: wait_signal, signal: go}\noutput: {doubled: '{{steps.wait.output.payload}}'}\n";

/// A parent started whose child (waiting for a signal) exists: the engine, the parent's
/// handle and the child's id.
async fn parent_waiting_on_its_child() -> (TestEngine, proctor::ExecutionHandle, String) {
    let t = TestEngine::start(PARENT, &[("worker", Default::default())]).await;
    t.engine
        .register_definition(def(WAITING_CHILD))
        .await
        .unwrap();
    let handle = t
        .engine
        .submit(t.process.clone(), json!({"n": 1}))
        .await
        .unwrap();
    let child_id = format!("{}.sub", handle.id);
    eventually("the child exists", || status_of(&t, &child_id).is_some()).await;
    (t, handle, child_id)
}

/// The stored status of execution `id`, if it exists.
fn status_of(t: &TestEngine, id: &str) -> Option<String> {
    t.sql()
        .query_row("SELECT status FROM executions WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .ok()
}

fn def(yaml: &str) -> proctor::definition::ProcessDef {
    (*process(yaml)).clone()
}

#[tokio::test]
async fn the_step_completes_with_the_childs_output() {
    let t = TestEngine::start(PARENT, &[("worker", Default::default())]).await;
    t.engine.register_definition(def(CHILD)).await.unwrap();
    let parent = t.run(json!({"n": 21})).await;
    assert_eq!(
        parent.status,
        ExecutionStatus::Completed,
        "{:?}",
        parent.error
    );
    assert_eq!(step(&parent, "sub").output, Some(json!({"doubled": 42})));
    assert_eq!(
        step(&parent, "after").output.clone().unwrap()["echo"]["got"],
        json!(42)
    );
    let child = t
        .engine
        .load(&format!("{}.sub", parent.id))
        .await
        .unwrap()
        .expect("the child is a stored execution");
    assert_eq!(child.status, ExecutionStatus::Completed);
    assert_eq!(child.input, json!({"n": 21}));
}

#[tokio::test]
async fn an_unregistered_or_failing_child_fails_the_step() {
    let t = TestEngine::start(PARENT, &[("worker", Default::default())]).await;
    let parent = t.run(json!({"n": 1})).await;
    assert_eq!(parent.status, ExecutionStatus::Failed);
    let error = step(&parent, "sub").last_error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Child);
    assert_eq!(error.message, "no registered definition child");

    let failing = CHILD.replace("input.n * 2", "input.missing.deeper");
    t.engine.register_definition(def(&failing)).await.unwrap();
    let parent = t.run(json!({"n": 1})).await;
    assert_eq!(parent.status, ExecutionStatus::Failed);
    let error = step(&parent, "sub").last_error.clone().unwrap();
    assert!(error.message.contains("failed"), "{}", error.message);
}

#[tokio::test]
async fn cancelling_the_parent_cancels_the_child() {
    let (t, handle, child_id) = parent_waiting_on_its_child().await;
    t.engine.cancel(&handle.id, None).await.unwrap();
    eventually("the child is cancelled", || {
        status_of(&t, &child_id).as_deref() == Some("cancelled")
    })
    .await;
}

#[tokio::test]
async fn a_restart_finds_the_child_instead_of_starting_another() {
    let (t, handle, child_id) = parent_waiting_on_its_child().await;
    // A restart: recovery drives both; the parent re-issues its start and finds the child
    // (same id), which a signal then completes.
    let later = t.restart(t.now() + 1_000);
    let recovery = later
        .engine
        .recover(RecoveryConfig::default())
        .await
        .unwrap();
    let signal = proctor::store::SignalRequest {
        id: "s".into(),
        name: "go".into(),
        payload: json!(5),
    };
    later.engine.signal(&child_id, signal).await.unwrap();
    let done = wait_all(recovery.handles).await;
    assert_eq!(
        done[&handle.id].status,
        ExecutionStatus::Completed,
        "{:?}",
        done[&handle.id].error
    );
    assert_eq!(done[&child_id].status, ExecutionStatus::Completed);
    let children: i64 = later
        .sql()
        .query_row(
            "SELECT count(*) FROM executions WHERE id LIKE ?1",
            [format!("{}.%", handle.id)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(children, 1);
}
