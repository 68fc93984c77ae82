//! The agent client against real sockets on loopback: every response class the protocol
//! distinguishes, including the misbehaviours a real network produces (refused, reset, silence,
//! oversized and non-JSON bodies).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proctor::agent::example::{self, Behaviour};
use proctor::agent::{AgentClient, AgentRequest, ClientLimits};
use proctor::core::ErrorKind;
use proctor::network::TokioNetwork;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn request() -> AgentRequest {
    AgentRequest {
        execution_id: "e1".into(),
        step_id: "s1".into(),
        attempt: 1,
        idempotency_key: "e1:s1".into(),
        input: json!({"x": 1}),
    }
}

fn client() -> AgentClient {
    AgentClient::new(
        Arc::new(TokioNetwork),
        ClientLimits {
            connect_timeout_ms: 1_000,
            max_response_bytes: 4 * 1024,
            ..ClientLimits::default()
        },
    )
}

/// A raw TCP server that counts the connections it accepted and answers one request on each
/// with `response`, then closes it (whatever the response says about keeping it alive).
async fn counting_server(response: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(response).await;
            });
        }
    });
    (addr, accepted)
}

const KEEP_ALIVE_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

#[tokio::test]
async fn calls_reuse_a_kept_alive_connection() {
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "echo", Behaviour::default())
        .await
        .unwrap();
    let client = client();
    for _ in 0..5 {
        client
            .call(&agent.address(), &request(), 1_000)
            .await
            .unwrap();
        assert_eq!(client.idle_connections(&agent.address()), 1);
    }
    assert_eq!(agent.ledger().requests.len(), 5);
}

#[tokio::test]
async fn a_kept_connection_the_agent_closed_is_replaced_and_the_call_succeeds() {
    let (addr, accepted) = counting_server(KEEP_ALIVE_OK).await;
    let client = client();
    for call in 1..=5 {
        let out = client.call(&addr, &request(), 1_000).await.unwrap();
        assert_eq!(out, json!({"ok": true}));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            call,
            "one connection per call"
        );
    }
}

#[tokio::test]
async fn without_a_pool_every_call_connects() {
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "echo", Behaviour::default())
        .await
        .unwrap();
    let client = AgentClient::new(
        Arc::new(TokioNetwork),
        ClientLimits {
            max_idle_per_agent: 0,
            ..ClientLimits::default()
        },
    );
    for _ in 0..3 {
        client
            .call(&agent.address(), &request(), 1_000)
            .await
            .unwrap();
        assert_eq!(client.idle_connections(&agent.address()), 0);
    }
}

/// A raw TCP server that answers each connection with `response` bytes after reading the
/// request head (or closes at once when `response` is empty).
async fn raw_server(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if !response.is_empty() {
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(response).await;
                }
                // Dropping the stream closes (or resets) the connection.
            });
        }
    });
    addr
}

#[tokio::test]
async fn ok_response_is_the_output() {
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "echo", Behaviour::default())
        .await
        .unwrap();
    let out = client()
        .call(&agent.address(), &request(), 1_000)
        .await
        .unwrap();
    assert_eq!(out["echo"], json!({"x": 1}));
    assert_eq!(agent.ledger().requests, vec![request()]);
}

#[tokio::test]
async fn client_error_carries_type_and_status() {
    let behaviour = Behaviour {
        fail_first: 1,
        fail_status: Some(422),
        error_type: Some("invalid_input".into()),
        ..Behaviour::default()
    };
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "picky", behaviour)
        .await
        .unwrap();
    let err = client()
        .call(&agent.address(), &request(), 1_000)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Agent);
    assert_eq!(err.error_type.as_deref(), Some("invalid_input"));
    assert_eq!(err.status, Some(422));
}

#[tokio::test]
async fn server_error_is_transient() {
    let agent = example::start(
        &TokioNetwork,
        "127.0.0.1:0",
        "flaky",
        Behaviour {
            fail_first: 1,
            ..Behaviour::default()
        },
    )
    .await
    .unwrap();
    let err = client()
        .call(&agent.address(), &request(), 1_000)
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), (ErrorKind::Server, Some(503)));
    assert!(err.kind.is_transient());
}

#[tokio::test]
async fn slow_agent_times_out() {
    let agent = example::start(
        &TokioNetwork,
        "127.0.0.1:0",
        "slow",
        Behaviour {
            delay_ms: 2_000,
            ..Behaviour::default()
        },
    )
    .await
    .unwrap();
    let err = client()
        .call(&agent.address(), &request(), 50)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
}

#[tokio::test]
async fn refused_connection_is_a_connection_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
}

#[tokio::test]
async fn connection_closed_without_response_is_a_connection_error() {
    let addr = raw_server(b"").await;
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
}

#[tokio::test]
async fn non_json_success_is_an_invalid_response() {
    let addr = raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidResponse, "{err}");
    assert!(!err.kind.is_transient());
}

#[tokio::test]
async fn oversized_response_is_an_invalid_response() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = BIG.get_or_init(|| {
        let payload = format!("\"{}\"", "x".repeat(10_000));
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        r.extend_from_slice(payload.as_bytes());
        r
    });
    let addr = raw_server(body).await;
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidResponse, "{err}");
    assert!(err.message.contains("over 4096 bytes"), "{err}");
}

#[tokio::test]
async fn example_agent_rejects_bad_requests_with_4xx() {
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "echo", Behaviour::default())
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    stream
        .write_all(
            b"POST /run HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\n{x}",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("bad_request"), "{response}");
    assert!(agent.ledger().requests.is_empty());
}

/// A streaming agent's progress lines arrive in order, before its output.
#[tokio::test]
async fn streamed_progress_arrives_in_order_before_the_output() {
    let behaviour = Behaviour {
        progress: true,
        delay_ms: 20,
        ..Behaviour::default()
    };
    let agent = example::start(&TokioNetwork, "127.0.0.1:0", "streamer", behaviour)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(proctor::agent::MAX_PROGRESS_PER_CALL);
    let out = client()
        .call_observed(&agent.address(), &request(), 2_000, Some(&tx))
        .await
        .unwrap();
    assert_eq!(out["echo"], json!({"x": 1}));
    let mut kinds = Vec::new();
    while let Ok(p) = rx.try_recv() {
        assert_eq!(p.data["n"], json!(kinds.len() + 1), "{p:?}");
        assert_eq!(p.data["step"], json!("s1"));
        kinds.push(p.kind);
    }
    assert_eq!(kinds, proctor::agent::PROGRESS_KINDS);
}

#[tokio::test]
async fn a_streamed_error_line_is_a_step_error() {
    let body: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{\"progress\":{\"kind\":\"agent_started\"}}\n{\"error\":{\"type\":\"quota\",\"message\":\"over quota\"}}\n";
    let addr = raw_server(body).await;
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(
        (err.kind, err.error_type.as_deref(), err.message.as_str()),
        (ErrorKind::Agent, Some("quota"), "over quota")
    );
}

#[tokio::test]
async fn a_stream_without_a_result_line_is_an_invalid_response() {
    let body: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{\"progress\":{\"kind\":\"agent_started\"}}\n";
    let addr = raw_server(body).await;
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidResponse, "{err}");
    assert!(err.message.contains("without an output or error"), "{err}");
    let junk: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n{\"progress\":{\"kind\":\"no spaces allowed\"}}\n{\"output\":1}\n";
    let addr = raw_server(junk).await;
    let err = client().call(&addr, &request(), 1_000).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidResponse, "{err}");
    assert!(err.message.contains("not a plain name"), "{err}");
}
