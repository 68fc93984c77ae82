//! The shipped examples (`engine/examples`), run as the README runs them.

use std::collections::BTreeMap;

use proctor::agent::example;
use proctor::agent::AgentRegistry;
use proctor::core::{ExecutionStatus, StepStatus};
use proctor::definition;
use proctor::network::TokioNetwork;
use proctor_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_example_with_example_agents() {
    let agents = AgentRegistry::load(&example_path("agents.yaml")).expect("agents.yaml loads");
    let (registry, running) = example::start_all(&TokioNetwork, &agents)
        .await
        .expect("example agents start");
    let names = registry.names();
    assert_eq!(names, ["analyst", "fetcher"]);
    let process = definition::load(&example_path("diamond.yaml"), Some(&names))
        .unwrap_or_else(|d| panic!("diamond.yaml: {d}"));
    let running: BTreeMap<String, _> = names.iter().cloned().zip(running).collect();
    let t = TestEngine::with_registry(process.into(), &registry, running).await;

    let execution = t.run(json!({"text": "hello"})).await;
    assert_eq!(
        execution.status,
        ExecutionStatus::Completed,
        "{:?}",
        execution.error
    );
    let output = execution.output.clone().unwrap();
    assert_eq!(output["summary"], "hello has 5 characters");
    // The fetcher fails each first attempt, so fetch needed a retry.
    assert_eq!(output["fetch_attempts"], 2);
    assert_eq!(step(&execution, "fetch").attempt, 2);
    for id in ["fetch", "left", "right", "join"] {
        assert_eq!(step(&execution, id).status, StepStatus::Completed, "{id}");
    }

    assert_eq!(t.requested_steps("fetcher"), ["fetch", "fetch"]);
    let mut analyst = t.requested_steps("analyst");
    assert_eq!(analyst.pop().as_deref(), Some("join"));
    analyst.sort();
    assert_eq!(analyst, ["left", "right"]);

    let events = t.events_of(&execution.id).await;
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "StepRetrying")
            .count(),
        1
    );
    assert_eq!(t.execution_row(&execution.id).status, "completed");
}
