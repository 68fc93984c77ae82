//! Step and execution outputs: stored, read back, and substituted into later inputs.

use proctor::core::ExecutionStatus;
use proctor_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_stored_and_retrievable() {
    let yaml = "
name: out
output:
  total: '{{steps.calc.output.total}}'
  who: '{{input.who}}'
  line: 'total for {{input.who}}: {{steps.calc.output.total}}'
steps:
  - { id: calc, type: agent_task, agent: worker }
";
    let calc = json!({"total": 12.5, "items": ["a", "b"], "nested": {"ok": true}});
    let t = TestEngine::start(yaml, &[("worker", with_outputs(&[("calc", calc.clone())]))]).await;
    let execution = t.run(json!({"who": "ann"})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let expected = json!({"total": 12.5, "who": "ann", "line": "total for ann: 12.5"});
    assert_eq!(execution.output, Some(expected.clone()));

    let loaded = t.engine.load(&execution.id).await.unwrap().expect("stored");
    assert_eq!(loaded.status, ExecutionStatus::Completed);
    assert_eq!(loaded.output, Some(expected.clone()));
    assert_eq!(step(&loaded, "calc").output, Some(calc.clone()));

    assert_eq!(t.execution_row(&execution.id).output, Some(expected));
    let raw: String = t
        .sql()
        .query_row(
            "SELECT output FROM steps WHERE execution_id = ?1 AND step_id = 'calc'",
            [&execution.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&raw).unwrap(),
        calc
    );

    assert!(t.engine.load("no-such-execution").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_substituted_into_the_next_step() {
    let yaml = "
name: subst
steps:
  - { id: lookup, type: agent_task, agent: worker }
  - id: use
    type: agent_task
    agent: worker
    depends_on: [lookup]
    input: { customer: '{{steps.lookup.output.customer.id}}', tier: '{{steps.lookup.output.customer.tier}}', tags: '{{steps.lookup.output.tags}}' }
";
    let lookup = json!({"customer": {"id": 981, "tier": "gold"}, "tags": ["x", "y"]});
    let t = TestEngine::start(yaml, &[("worker", with_outputs(&[("lookup", lookup)]))]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);

    let requests = t.requests("worker");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].step_id, "use");
    assert_eq!(
        requests[1].input,
        json!({"customer": 981, "tier": "gold", "tags": ["x", "y"]})
    );
    // The echo output of `use` carries what it was sent, and is stored too.
    assert_eq!(
        t.step_row(&execution.id, "use").output.unwrap()["echo"],
        requests[1].input
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_substitutions_in_one_input() {
    let yaml = "
name: many
steps:
  - { id: a, type: agent_task, agent: worker }
  - id: b
    type: agent_task
    agent: worker
    depends_on: [a]
    input:
      message: 'Dear {{input.name}}, order {{steps.a.output.order}} ships in {{steps.a.output.days}} days ({{steps.a.output.carrier.name}}).'
      whole: '{{steps.a.output}}'
      carrier: '{{steps.a.output.carrier}}'
      list: ['{{input.name}}', '{{steps.a.output.days}}', 'fixed']
      # JSON integers are CEL ints, so arithmetic on them needs no conversion.
      nested: { sum: '{{steps.a.output.days + 1}}' }
";
    let a = json!({"order": "A-17", "days": 3, "carrier": {"name": "PostNL", "express": false}});
    let t = TestEngine::start(yaml, &[("worker", with_outputs(&[("a", a.clone())]))]).await;
    let execution = t.run(json!({"name": "Bo"})).await;
    assert_eq!(
        execution.status,
        ExecutionStatus::Completed,
        "{:?}",
        execution.error
    );

    let requests = t.requests("worker");
    let input = &requests[1].input;
    assert_eq!(
        input["message"],
        "Dear Bo, order A-17 ships in 3 days (PostNL)."
    );
    assert_eq!(
        input["whole"], a,
        "a whole-object substitution keeps the object"
    );
    assert_eq!(
        input["carrier"],
        json!({"name": "PostNL", "express": false})
    );
    assert_eq!(input["list"], json!(["Bo", 3, "fixed"]));
    assert_eq!(input["nested"], json!({"sum": 4}));
}
