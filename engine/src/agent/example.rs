//! The example agent: a small, real HTTP agent server speaking the protocol.
//!
//! It echoes its input and counts the effects it applied per idempotency key (an effect is
//! applied once per key, however many attempts arrive), and can be told to misbehave: fail the
//! first N attempts of each key, answer with a given status and error type, or respond slowly.
//! The README's demo, `proctor agent`, and the integration tests use it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AgentRequest;
use crate::network::{Listener, Network};

/// Largest request body the example agent reads.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How the example agent behaves.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Fail the first `fail_first` attempts of each idempotency key.
    #[serde(default)]
    pub fail_first: u32,
    /// Status of those failures (default 503).
    #[serde(default)]
    pub fail_status: Option<u16>,
    /// `error.type` in the failure body (default "unavailable").
    #[serde(default)]
    pub error_type: Option<String>,
    /// Fail every attempt of these steps (by step id), with the same status and type.
    #[serde(default)]
    pub fail_steps: Vec<String>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
    /// Fixed outputs by step id; other steps get the echo output.
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
}

/// What the agent has seen; shared with whoever started it.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every request, in arrival order.
    pub requests: Vec<AgentRequest>,
    /// Attempts seen per idempotency key.
    pub attempts: BTreeMap<String, u32>,
    /// Effects applied per idempotency key: never above 1.
    pub effects: BTreeMap<String, u32>,
}

/// A running example agent. Dropping it stops the server.
pub struct RunningAgent {
    pub addr: SocketAddr,
    pub ledger: Arc<Mutex<Ledger>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// `host:port`, as the registry wants it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` on `net` and serves until dropped.
pub async fn start(
    net: &dyn Network,
    addr: &str,
    name: &str,
    behaviour: Behaviour,
) -> std::io::Result<RunningAgent> {
    start_with_ledger(net, addr, name, behaviour, Arc::default()).await
}

/// As [`start`], recording into `ledger`, which may outlive the agent (the simulator keeps it
/// across agent crashes, as a real agent keeps its effects in its own storage).
pub async fn start_with_ledger(
    net: &dyn Network,
    addr: &str,
    name: &str,
    behaviour: Behaviour,
    ledger: Arc<Mutex<Ledger>>,
) -> std::io::Result<RunningAgent> {
    let listener = net.bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(serve(
        listener,
        Arc::new((name.to_string(), behaviour)),
        ledger.clone(),
    ));
    Ok(RunningAgent {
        addr: local,
        ledger,
        task,
    })
}

async fn serve(
    mut listener: Box<dyn Listener>,
    config: Arc<(String, Behaviour)>,
    ledger: Arc<Mutex<Ledger>>,
) {
    loop {
        let Ok((conn, _peer)) = listener.accept().await else {
            continue;
        };
        let (config, ledger) = (config.clone(), ledger.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, config.clone(), ledger.clone()));
            // A client that goes away mid-request is not our problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_reply(status: StatusCode, error_type: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"error": {"type": error_type, "message": message}}),
    )
}

async fn handle(
    req: Request<Incoming>,
    config: Arc<(String, Behaviour)>,
    ledger: Arc<Mutex<Ledger>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (name, behaviour) = &*config;
    if req.method() == hyper::Method::GET && req.uri().path() == "/ledger" {
        // For tests in another process (crash tests): what this agent has seen and applied.
        let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
        return Ok(reply(
            StatusCode::OK,
            json!({
                "requests": ledger.requests.len(),
                "attempts": ledger.attempts,
                "effects": ledger.effects,
            }),
        ));
    }
    if req.method() != hyper::Method::POST || req.uri().path() != "/run" {
        return Ok(error_reply(
            StatusCode::NOT_FOUND,
            "not_found",
            "this agent serves POST /run and GET /ledger",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_reply(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &e.to_string(),
            ))
        }
    };
    let request: AgentRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(error_reply(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("body is not an agent request: {e}"),
            ))
        }
    };
    if behaviour.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.delay_ms)).await;
    }
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    ledger.requests.push(request.clone());
    let attempts = {
        let n = ledger
            .attempts
            .entry(request.idempotency_key.clone())
            .or_insert(0);
        *n += 1;
        *n
    };
    if attempts <= behaviour.fail_first || behaviour.fail_steps.contains(&request.step_id) {
        let status = behaviour
            .fail_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let error_type = behaviour.error_type.as_deref().unwrap_or("unavailable");
        return Ok(error_reply(
            status,
            error_type,
            &format!(
                "{name} failing attempt {attempts} of {}",
                request.idempotency_key
            ),
        ));
    }
    // Apply the effect once per key; a repeated key gets the same answer without a new effect.
    let effects = ledger
        .effects
        .entry(request.idempotency_key.clone())
        .or_insert(0);
    if *effects == 0 {
        *effects = 1;
    }
    let output = behaviour
        .outputs
        .get(&request.step_id)
        .cloned()
        .unwrap_or_else(|| {
            json!({
                "agent": name,
                "step": request.step_id,
                "attempt": request.attempt,
                "echo": request.input,
            })
        });
    Ok(reply(StatusCode::OK, output))
}

/// Starts every example agent in `registry` on a free loopback port and returns the registry
/// with their addresses, plus the running agents (keep them alive while the engine runs).
pub async fn start_all(
    net: &dyn Network,
    registry: &super::AgentRegistry,
) -> std::io::Result<(super::AgentRegistry, Vec<RunningAgent>)> {
    let mut resolved = super::AgentRegistry::new();
    let mut running = Vec::new();
    for (name, endpoint) in registry.iter() {
        match endpoint {
            super::AgentEndpoint::Example(behaviour) => {
                let agent = start(net, "127.0.0.1:0", name, behaviour.clone()).await?;
                resolved.insert(name.clone(), super::AgentEndpoint::Address(agent.address()));
                running.push(agent);
            }
            other => resolved.insert(name.clone(), other.clone()),
        }
    }
    Ok((resolved, running))
}
