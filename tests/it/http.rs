//! `http` and `transform` steps against real HTTP services on loopback: the example agent's
//! `/echo` service, and a service of the test's own that checks a bearer token.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use proctor::agent::example::{self, Behaviour, RunningAgent};
use proctor::core::{ErrorKind, ExecutionStatus, StepStatus};
use proctor::network::TokioNetwork;
use proctor::secrets::Secrets;
use proctor::EngineConfig;
use proctor_tests::*;
use serde_json::json;

const TOKEN: &str = "tok-1234567890";

fn with_token() -> EngineConfig {
    EngineConfig {
        secrets: Secrets::new([("ORDERS_TOKEN".to_string(), TOKEN.to_string())]),
        ..EngineConfig::default()
    }
}

async fn service(behaviour: Behaviour) -> RunningAgent {
    example::start(&TokioNetwork, "127.0.0.1:0", "svc", behaviour)
        .await
        .expect("the echo service starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_then_transform_passes_the_response_on() {
    let svc = service(Behaviour::default()).await;
    let yaml = format!(
        r#"
name: order
steps:
  - id: fetch
    type: http
    method: post
    url: "http://{addr}/echo/orders/{{{{input.order}}}}?v=1"
    headers: {{ x-note: "n={{{{input.order}}}}" }}
    body: {{ qty: "{{{{input.qty}}}}" }}
  - id: shape
    type: transform
    depends_on: [fetch]
    output:
      path: "{{{{steps.fetch.output.body.path}}}}"
      total: "{{{{steps.fetch.output.body.body.qty * 2}}}}"
      status: "{{{{steps.fetch.output.status}}}}"
      typed: "{{{{steps.fetch.output.headers['content-type']}}}}"
"#,
        addr = svc.address()
    );
    let t = TestEngine::start(&yaml, &[]).await;
    let execution = t.run(json!({"order": 7, "qty": 3})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(
        step(&execution, "shape").output,
        Some(
            json!({"path": "/echo/orders/7", "total": 6, "status": 200, "typed": "application/json"})
        )
    );
    let fetched = step(&execution, "fetch").output.clone().expect("output");
    assert_eq!(fetched["body"]["method"], "POST");
    assert_eq!(fetched["body"]["query"], "v=1");
    // Every attempt carries the step's idempotency key, and the service applied it once.
    let key = format!("{}:fetch", execution.id);
    assert_eq!(fetched["body"]["idempotency_key"], json!(key));
    assert_eq!(svc.ledger().effects.get(&key), Some(&1));
    assert_event_sequence(
        &t.events_of(&execution.id).await,
        &[
            "ExecutionStarted",
            "StepStarted:fetch",
            "StepCompleted:fetch",
            "StepStarted:shape",
            "StepCompleted:shape",
            "ExecutionCompleted",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_under_one_key() {
    let svc = service(Behaviour {
        fail_first: 2,
        ..Behaviour::default()
    })
    .await;
    let yaml = format!(
        r#"
name: flaky
steps:
  - id: call
    type: http
    url: "http://{}/echo/x"
    retry: {{ max_attempts: 3, initial_delay: 10ms }}
"#,
        svc.address()
    );
    let t = TestEngine::start(&yaml, &[]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(step(&execution, "call").attempt, 3);
    let key = format!("{}:call", execution.id);
    assert_eq!(svc.ledger().attempts.get(&key), Some(&3));
    assert_eq!(svc.ledger().effects.get(&key), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_not_retried_unless_the_step_counts_it_a_success() {
    let svc = service(Behaviour {
        fail_first: 10,
        fail_status: Some(404),
        ..Behaviour::default()
    })
    .await;
    let yaml = |success: &str| {
        format!(
            r#"
name: missing
steps:
  - id: call
    type: http
    url: "http://{}/echo/x"
    retry: {{ max_attempts: 5, initial_delay: 10ms }}
    {success}
"#,
            svc.address()
        )
    };
    let t = TestEngine::start(&yaml(""), &[]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Failed);
    let failed = step(&execution, "call");
    assert_eq!((failed.status, failed.attempt), (StepStatus::Failed, 1));
    let error = failed.last_error.clone().expect("an error");
    assert_eq!((error.kind, error.status), (ErrorKind::Request, Some(404)));

    let t = TestEngine::start(&yaml("success: [\"2xx\", 404]"), &[]).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let output = step(&execution, "call").output.clone().expect("output");
    assert_eq!(output["status"], 404);
    assert_eq!(output["body"]["error"]["type"], "unavailable");
}

/// A service that wants `Authorization: Bearer TOKEN` and, refusing, quotes what it got.
async fn guarded_service() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let got = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let _ = req.into_body().collect().await;
                        let (status, body) = if got == format!("Bearer {TOKEN}") {
                            (StatusCode::OK, "welcome".to_string())
                        } else {
                            (StatusCode::UNAUTHORIZED, format!("refused {got}"))
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_sent_but_never_stored_and_cut_out_of_errors() {
    let addr = guarded_service().await;
    let yaml = |suffix: &str| {
        format!(
            r#"
name: guarded
steps:
  - id: call
    type: http
    url: "http://{addr}/x"
    headers: {{ authorization: "Bearer ${{secrets.ORDERS_TOKEN}}{suffix}" }}
"#
        )
    };
    let t = TestEngine::start_with_config(&yaml(""), &[], with_token()).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let call = step(&execution, "call");
    assert_eq!(call.output.as_ref().unwrap()["body"], "welcome");
    // The stored request keeps the reference, not the value.
    assert_eq!(
        call.input.as_ref().unwrap()["headers"]["authorization"],
        "Bearer ${secrets.ORDERS_TOKEN}"
    );
    let everything = t.dump().join("\n");
    assert!(!everything.contains(TOKEN), "the secret is in the database");

    // A wrong token: the service quotes it back in its 401, and the error has it cut out.
    let t = TestEngine::start_with_config(&yaml("-wrong"), &[], with_token()).await;
    let execution = t.run(json!({})).await;
    assert_eq!(execution.status, ExecutionStatus::Failed);
    let error = step(&execution, "call")
        .last_error
        .clone()
        .expect("an error");
    assert_eq!((error.kind, error.status), (ErrorKind::Request, Some(401)));
    assert!(
        error.message.contains("refused Bearer [redacted]-wrong"),
        "{}",
        error.message
    );
    let everything = t.dump().join("\n");
    assert!(!everything.contains(TOKEN), "the secret is in the database");

    // No such secret configured: the step fails before anything is sent, naming it.
    let t = TestEngine::start(&yaml(""), &[]).await;
    let execution = t.run(json!({})).await;
    let error = step(&execution, "call")
        .last_error
        .clone()
        .expect("an error");
    assert_eq!(error.kind, ErrorKind::Request);
    assert!(
        error
            .message
            .contains("secret ORDERS_TOKEN is not configured"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_that_fails_names_its_expression() {
    let t = TestEngine::start(
        r#"
name: divide
steps:
  - id: ratio
    type: transform
    output: { r: "{{input.a / input.b}}" }
"#,
        &[],
    )
    .await;
    let execution = t.run(json!({"a": 1, "b": 0})).await;
    assert_eq!(execution.status, ExecutionStatus::Failed);
    let error = step(&execution, "ratio")
        .last_error
        .clone()
        .expect("an error");
    assert_eq!(error.kind, ErrorKind::Expression);
    assert!(
        error.message.contains("input.a / input.b"),
        "{}",
        error.message
    );
}
