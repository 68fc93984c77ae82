//! Definition versions: registering again makes a new version (unless nothing changed), an
//! execution stays on the version it was created with — across a restart too — and a rollback
//! makes an earlier version current for new executions only.

use proctor::core::ExecutionStatus;
use proctor::event::DomainEvent;
use proctor::RecoveryConfig;
use proctor_tests::*;
use serde_json::json;

const V1: &str =
    "name: greet\nsteps:\n  - {id: a, type: agent_task, agent: worker, input: {say: hello}}\n";
const V2: &str =
    "name: greet\nsteps:\n  - {id: a, type: agent_task, agent: worker, input: {say: bonjour}}\n";

fn def(yaml: &str) -> proctor::definition::ProcessDef {
    (*process(yaml)).clone()
}

#[tokio::test]
async fn versions_increment_pin_executions_and_roll_back() {
    let t = TestEngine::start(V1, &[("worker", Default::default())]).await;
    let e = &t.engine;
    assert_eq!(e.register_definition(def(V1)).await.unwrap(), 1);
    assert_eq!(
        e.register_definition(def(V1)).await.unwrap(),
        1,
        "nothing changed"
    );
    assert_eq!(
        e.create_registered("x1", "greet", None, json!({}))
            .await
            .unwrap(),
        1
    );
    assert_eq!(e.register_definition(def(V2)).await.unwrap(), 2);
    assert_eq!(
        e.create_registered("x2", "greet", None, json!({}))
            .await
            .unwrap(),
        2
    );
    e.set_current_definition("greet", 1).await.unwrap();
    assert_eq!(
        e.create_registered("x3", "greet", None, json!({}))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        e.create_registered("x4", "greet", Some(2), json!({}))
            .await
            .unwrap(),
        2,
        "an explicit version"
    );
    let missing = e.set_current_definition("greet", 9).await.unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("no definition greet version 9"),
        "{missing}"
    );
    let infos = e.store().definitions("default").await.unwrap();
    assert_eq!((infos[0].current, infos[0].latest), (1, 2));

    // A restart: every execution still runs the version it was created with.
    let later = t.restart(t.now() + 1_000);
    let recovery = later
        .engine
        .recover(RecoveryConfig::default())
        .await
        .unwrap();
    assert_eq!(recovery.handles.len(), 4, "pending executions are resumed");
    let done = wait_all(recovery.handles).await;
    let said = |id: &str| {
        let x = &done[id];
        assert_eq!(x.status, ExecutionStatus::Completed);
        (
            x.process.version,
            x.steps[0].output.clone().unwrap()["echo"]["say"].clone(),
        )
    };
    assert_eq!(said("x1"), (1, json!("hello")));
    assert_eq!(said("x2"), (2, json!("bonjour")));
    assert_eq!(said("x3"), (1, json!("hello")));
    assert_eq!(said("x4"), (2, json!("bonjour")));
    let events = later.events_of("x2").await;
    assert!(events
        .iter()
        .any(|ev| matches!(&ev.event, DomainEvent::ExecutionStarted { version: 2, .. })));
}

#[tokio::test]
async fn an_invalid_or_unknown_definition_is_refused() {
    let t = TestEngine::start(V1, &[("worker", Default::default())]).await;
    let bad = def(&V1.replace("agent: worker", "agent: nobody"));
    let err = t
        .engine
        .register_definition(bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown agent 'nobody'"), "{err}");
    let err = t
        .engine
        .create_registered("y", "greet", None, json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "no registered definition greet");
}
