//! Tenants: what tenant A creates, tenant B can neither list, read, nor change; each tenant has
//! its own definition registry; a sub-process child belongs to its parent's tenant.

use proctor::core::ExecutionStatus;
use proctor::driver::Error;
use proctor::store::{ExecutionQuery, SignalRequest};
use proctor_tests::*;
use serde_json::json;

const WAIT: &str = "name: wait\nsteps:\n  - {id: s, type: wait_signal, signal: go}\n";
const OTHER_WAIT: &str = "name: wait\nsteps:\n  - {id: s, type: wait_signal, signal: other}\n";

fn def(yaml: &str) -> proctor::definition::ProcessDef {
    (*process(yaml)).clone()
}

fn unknown(result: Result<(), Error>) -> bool {
    matches!(result, Err(Error::UnknownExecution(_)))
}

fn all() -> ExecutionQuery {
    ExecutionQuery {
        limit: 100,
        ..Default::default()
    }
}

#[tokio::test]
async fn tenant_b_can_neither_list_nor_change_tenant_a_executions() {
    let t = TestEngine::start(WAIT, &[("worker", Default::default())]).await;
    let a = t.engine.tenant("acme").unwrap();
    let b = t.engine.tenant("globex").unwrap();
    a.register_definition(def(WAIT)).await.unwrap();
    a.create("a-1", "wait", None, json!({})).await.unwrap();
    a.start("a-1").await.unwrap();
    eventually("a-1 waits", || t.execution_row("a-1").status == "running").await;

    let listed: Vec<String> = a
        .list(all())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec!["a-1"]);
    assert!(b.list(all()).await.unwrap().is_empty());
    assert!(b.load("a-1").await.unwrap().is_none());
    assert!(matches!(
        b.events("a-1").await,
        Err(Error::UnknownExecution(_))
    ));
    assert!(unknown(b.pause("a-1").await));
    assert!(unknown(b.resume("a-1").await));
    assert!(unknown(b.cancel("a-1", None).await));
    let signal = |id: &str| SignalRequest {
        id: id.into(),
        name: "go".into(),
        payload: json!(1),
    };
    assert!(unknown(b.signal("a-1", signal("from-b")).await));
    assert!(matches!(
        b.start("a-1").await,
        Err(Error::UnknownExecution(_))
    ));
    // None of that touched it: still waiting, no signal received.
    let x = a.load("a-1").await.unwrap().unwrap();
    assert_eq!(x.status, ExecutionStatus::Running);
    assert!(x.signals.is_empty());
    // Its owner can.
    a.signal("a-1", signal("from-a")).await.unwrap();
    eventually("a-1 completes", || {
        t.execution_row("a-1").status == "completed"
    })
    .await;
}

#[tokio::test]
async fn each_tenant_has_its_own_registry() {
    let t = TestEngine::start(WAIT, &[("worker", Default::default())]).await;
    let a = t.engine.tenant("acme").unwrap();
    let b = t.engine.tenant("globex").unwrap();
    assert_eq!(a.register_definition(def(WAIT)).await.unwrap(), 1);
    assert_eq!(b.register_definition(def(OTHER_WAIT)).await.unwrap(), 1);
    assert_eq!(a.register_definition(def(OTHER_WAIT)).await.unwrap(), 2);
    assert_eq!(b.definitions().await.unwrap()[0].latest, 1);
    let err = t
        .engine
        .tenant("initech")
        .unwrap()
        .create("c-1", "wait", None, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownDefinition { .. }), "{err}");
    assert!(matches!(
        t.engine.tenant("no spaces"),
        Err(Error::BadTenant(_))
    ));
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let t = TestEngine::start(WAIT, &[("worker", Default::default())]).await;
    let a = t.engine.tenant("acme").unwrap();
    a.register_definition(def(WAIT)).await.unwrap();
    for i in 0..5 {
        a.create(&format!("x{i}"), "wait", None, json!({}))
            .await
            .unwrap();
        t.clock.advance_ms(10);
    }
    a.start("x4").await.unwrap();
    eventually("x4 runs", || t.execution_row("x4").status == "running").await;
    let page = |after: Option<(u64, String)>| {
        let a = a.clone();
        async move {
            a.list(ExecutionQuery {
                after,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap()
        }
    };
    let first = page(None).await;
    let ids =
        |p: &[proctor::store::ExecutionSummary]| p.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), vec!["x4", "x3"], "newest first");
    let last = first.last().unwrap();
    let second = page(Some((last.created_at_ms, last.id.clone()))).await;
    assert_eq!(ids(&second), vec!["x2", "x1"]);
    let pending = a
        .list(ExecutionQuery {
            status: Some("pending".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&pending), vec!["x3", "x2", "x1", "x0"]);
}

#[tokio::test]
async fn a_child_belongs_to_its_parents_tenant() {
    let parent = "name: parent\nsteps:\n  - {id: sub, type: subprocess, process: child}\n";
    let child = "name: child\nsteps:\n  - {id: a, type: agent_task, agent: worker}\n";
    let t = TestEngine::start(parent, &[("worker", Default::default())]).await;
    let a = t.engine.tenant("acme").unwrap();
    a.register_definition(def(parent)).await.unwrap();
    a.register_definition(def(child)).await.unwrap();
    a.create("p-1", "parent", None, json!({})).await.unwrap();
    let done = a.start("p-1").await.unwrap().wait().await.unwrap();
    assert_eq!(done.status, ExecutionStatus::Completed, "{:?}", done.error);
    let kid = a
        .load("p-1.sub")
        .await
        .unwrap()
        .expect("acme sees its child");
    assert_eq!(kid.tenant, "acme");
    let b = t.engine.tenant("globex").unwrap();
    assert!(b.load("p-1.sub").await.unwrap().is_none());
    // The default tenant has no `child` registered: acme's registry was used.
    assert!(t
        .engine
        .store()
        .definition("default", "child", None)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn every_change_is_audited_with_its_actor_in_the_same_history() {
    let t = TestEngine::start(WAIT, &[("worker", Default::default())]).await;
    let admin = t.engine.tenant("acme").unwrap().acting_as("ana");
    admin.register_definition(def(WAIT)).await.unwrap();
    admin.create("a-1", "wait", None, json!({})).await.unwrap();
    admin.start("a-1").await.unwrap();
    eventually("a-1 waits", || t.execution_row("a-1").status == "running").await;
    admin.pause("a-1").await.unwrap();
    // A request that changes nothing is not recorded.
    admin.pause("a-1").await.unwrap();
    let bot = admin.acting_as("approval-bot");
    let signal = SignalRequest {
        id: "sig-1".into(),
        name: "go".into(),
        payload: json!(true),
    };
    bot.signal("a-1", signal).await.unwrap();
    admin
        .cancel("a-1", Some("changed my mind".into()))
        .await
        .unwrap();

    let audit = admin.audit("a-1").await.unwrap();
    let lines: Vec<(Option<&str>, &str, Option<&str>)> = audit
        .iter()
        .map(|e| (e.actor.as_deref(), e.action.as_str(), e.detail.as_deref()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (Some("ana"), "start", None),
            (Some("ana"), "pause", None),
            (Some("approval-bot"), "signal", Some("go (sig-1)")),
            (Some("ana"), "cancel", Some("changed my mind")),
        ]
    );
    // Each audit event is followed, in the same history, by the change it records.
    let events = t.events_of("a-1").await;
    let kind_at = |seq: u64| events.iter().find(|e| e.seq == seq).unwrap().event.kind();
    let caused: Vec<&str> = audit.iter().map(|a| kind_at(a.seq + 1)).collect();
    assert_eq!(
        caused,
        vec![
            "ExecutionStarted",
            "ExecutionPaused",
            "SignalReceived",
            "ExecutionCancelled"
        ]
    );
    // Another tenant cannot read it.
    let other = t.engine.tenant("globex").unwrap();
    assert!(matches!(
        other.audit("a-1").await,
        Err(Error::UnknownExecution(_))
    ));
}

#[tokio::test]
async fn a_reset_is_audited_on_the_original_and_on_its_fork() {
    let two = "name: two\nsteps:\n  - {id: a, type: agent_task, agent: worker}\n  - {id: w, type: wait_signal, signal: go, depends_on: [a]}\n";
    let t = TestEngine::start(two, &[("worker", Default::default())]).await;
    let ops = t.engine.tenant("acme").unwrap().acting_as("ops");
    ops.register_definition(def(two)).await.unwrap();
    ops.create("r-1", "two", None, json!({})).await.unwrap();
    ops.start("r-1").await.unwrap();
    eventually("r-1 waits for its signal", || {
        t.sql()
            .query_row(
                "SELECT status FROM steps WHERE execution_id = 'r-1' AND step_id = 'w'",
                [],
                |r| r.get::<_, String>(0),
            )
            .is_ok_and(|s| s == "running")
    })
    .await;
    ops.pause("r-1").await.unwrap();
    let fork = ops.reset("r-1", Default::default()).await.unwrap();
    let original: Vec<(String, Option<String>)> = ops
        .audit("r-1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.detail))
        .collect();
    assert_eq!(
        original,
        vec![
            ("start".to_string(), None),
            ("pause".to_string(), None),
            ("reset".to_string(), Some(format!("reset into {}", fork.id))),
        ]
    );
    eventually("the fork starts", || {
        t.execution_row(&fork.id).status == "running"
    })
    .await;
    let forked = ops.audit(&fork.id).await.unwrap();
    assert_eq!(forked.len(), 1);
    assert_eq!(forked[0].detail.as_deref(), Some("reset from r-1"));
    assert_eq!(ops.load(&fork.id).await.unwrap().unwrap().tenant, "acme");
    let other = t.engine.tenant("globex").unwrap();
    assert!(matches!(
        other.reset("r-1", Default::default()).await,
        Err(Error::UnknownExecution(_))
    ));
}
