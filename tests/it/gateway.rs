//! Exclusive gateways: first match wins, default route, routing on a step's output, boolean
//! logic in conditions, and skipped branches in the store.

use proctor::core::{ExecutionStatus, SkipReason, StepStatus};
use proctor::event::DomainEvent;
use proctor_tests::*;
use serde_json::json;

const ROUTES: &str = "
name: routes
steps:
  - id: route
    type: gateway
    routes:
      - { when: 'input.amount > 1000', to: [big] }
      - { when: 'input.amount > 100', to: [medium] }
    default: [small]
  - { id: big, type: agent_task, agent: worker, depends_on: [route] }
  - { id: medium, type: agent_task, agent: worker, depends_on: [route] }
  - { id: small, type: agent_task, agent: worker, depends_on: [route] }
  - { id: done, type: agent_task, agent: worker, depends_on: [big, medium, small] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_gateway_takes_the_first_match() {
    let t = TestEngine::start(ROUTES, &[("worker", echo())]).await;
    // Both conditions hold; the first listed wins.
    let execution = t.run(json!({"amount": 5000})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(
        step(&execution, "route").output,
        Some(json!({"route": ["big"], "matched": 0}))
    );
    assert_eq!(step(&execution, "big").status, StepStatus::Completed);
    for id in ["medium", "small"] {
        assert_eq!(step(&execution, id).status, StepStatus::Skipped, "{id}");
        assert_eq!(
            step(&execution, id).skip_reason,
            Some(SkipReason::RouteNotTaken)
        );
    }
    assert_eq!(step(&execution, "done").status, StepStatus::Completed);
    assert_eq!(t.requested_steps("worker"), ["big", "done"]);

    let row = t.step_row(&execution.id, "route");
    assert_eq!(row.kind, "gateway");
    assert_eq!(row.status, "completed");
    assert_eq!(row.output, Some(json!({"route": ["big"], "matched": 0})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route() {
    let t = TestEngine::start(ROUTES, &[("worker", echo())]).await;
    let execution = t.run(json!({"amount": 5})).await;

    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(
        step(&execution, "route").output,
        Some(json!({"route": ["small"], "matched": "default"}))
    );
    assert_eq!(t.requested_steps("worker"), ["small", "done"]);
    let statuses = step_statuses(&t.sql(), &execution.id);
    assert_eq!(statuses["big"], "skipped");
    assert_eq!(statuses["medium"], "skipped");
    assert_eq!(statuses["small"], "completed");
    assert_eq!(statuses["done"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_on_a_step_output() {
    let yaml = "
name: triage
steps:
  - { id: score, type: agent_task, agent: scorer }
  - id: decide
    type: gateway
    depends_on: [score]
    routes:
      - { when: 'steps.score.output.score >= 0.8', to: [escalate] }
    default: [archive]
  - { id: escalate, type: agent_task, agent: worker, depends_on: [decide], input: { score: '{{steps.score.output.score}}' } }
  - { id: archive, type: agent_task, agent: worker, depends_on: [decide] }
";
    for (score, taken, skipped) in [(0.9, "escalate", "archive"), (0.3, "archive", "escalate")] {
        let t = TestEngine::start(
            yaml,
            &[
                (
                    "scorer",
                    with_outputs(&[("score", json!({"score": score}))]),
                ),
                ("worker", echo()),
            ],
        )
        .await;
        let execution = t.run(json!({})).await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Completed,
            "score {score}"
        );
        assert_eq!(step(&execution, taken).status, StepStatus::Completed);
        assert_eq!(step(&execution, skipped).status, StepStatus::Skipped);
        assert_eq!(t.requested_steps("worker"), [taken], "score {score}");
        if taken == "escalate" {
            assert_eq!(t.requests("worker")[0].input, json!({"score": 0.9}));
        }
        let events = t.events_of(&execution.id).await;
        assert!(seq_of(&events, "StepCompleted:score") < seq_of(&events, "StepStarted:decide"));
        assert!(
            seq_of(&events, &format!("StepSkipped:{skipped}"))
                > seq_of(&events, "StepCompleted:decide")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complex_condition() {
    let yaml = "
name: complex
steps:
  - id: check
    type: gateway
    routes:
      - { when: \"(input.amount > 100 && input.country == 'NL') || (input.vip && !input.blocked)\", to: [approve] }
    default: [reject]
  - { id: approve, type: agent_task, agent: worker, depends_on: [check] }
  - { id: reject, type: agent_task, agent: worker, depends_on: [check] }
";
    let cases = [
        (
            json!({"amount": 500, "country": "NL", "vip": false, "blocked": true}),
            "approve",
        ),
        (
            json!({"amount": 500, "country": "DE", "vip": false, "blocked": false}),
            "reject",
        ),
        (
            json!({"amount": 5, "country": "DE", "vip": true, "blocked": false}),
            "approve",
        ),
        (
            json!({"amount": 5, "country": "NL", "vip": true, "blocked": true}),
            "reject",
        ),
    ];
    let t = TestEngine::start(yaml, &[("worker", echo())]).await;
    for (input, expected) in cases {
        let execution = t.run(input.clone()).await;
        assert_eq!(execution.status, ExecutionStatus::Completed, "{input}");
        let taken: Vec<&str> = ["approve", "reject"]
            .into_iter()
            .filter(|id| step(&execution, id).status == StepStatus::Completed)
            .collect();
        assert_eq!(taken, [expected], "{input}");
        let statuses = step_statuses(&t.sql(), &execution.id);
        let other = if expected == "approve" {
            "reject"
        } else {
            "approve"
        };
        assert_eq!(statuses[other], "skipped", "{input}");
    }
    assert_eq!(
        t.requested_steps("worker"),
        ["approve", "reject", "approve", "reject"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_branch_steps_have_status_skipped_in_sql() {
    let yaml = "
name: branches
steps:
  - id: pick
    type: gateway
    routes:
      - { when: 'input.left', to: [l1] }
    default: [r1]
  - { id: l1, type: agent_task, agent: worker, depends_on: [pick] }
  - { id: l2, type: agent_task, agent: worker, depends_on: [l1] }
  - { id: r1, type: agent_task, agent: worker, depends_on: [pick] }
  - { id: r2, type: agent_task, agent: worker, depends_on: [r1] }
";
    let t = TestEngine::start(yaml, &[("worker", echo())]).await;
    let execution = t.run(json!({"left": true})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(t.requested_steps("worker"), ["l1", "l2"]);

    let r1 = t.step_row(&execution.id, "r1");
    assert_eq!(r1.status, "skipped");
    assert_eq!(r1.skip_reason.as_deref(), Some("route_not_taken"));
    assert_eq!((r1.attempt, r1.started_at_ms), (0, None));
    assert!(r1.finished_at_ms.is_some());
    let r2 = t.step_row(&execution.id, "r2");
    assert_eq!(r2.status, "skipped");
    assert_eq!(r2.skip_reason.as_deref(), Some("upstream_skipped"));

    let skipped: Vec<(String, Option<String>)> = t
        .sql()
        .prepare(
            "SELECT step_id, skip_reason FROM steps
             WHERE execution_id = ?1 AND status = 'skipped' ORDER BY position",
        )
        .unwrap()
        .query_map([&execution.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        skipped,
        [
            ("r1".to_string(), Some("route_not_taken".to_string())),
            ("r2".to_string(), Some("upstream_skipped".to_string())),
        ]
    );

    let events = t.events_of(&execution.id).await;
    match event(&events, "StepSkipped:r2") {
        DomainEvent::StepSkipped { reason, error, .. } => {
            assert_eq!(*reason, SkipReason::UpstreamSkipped);
            assert_eq!(*error, None);
        }
        other => panic!("{other:?}"),
    }
    let output = execution.output.unwrap();
    assert!(
        output.get("r1").is_none() && output.get("l2").is_some(),
        "{output}"
    );
}
