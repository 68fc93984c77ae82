//! The example agent: a small, real HTTP agent server speaking the protocol.
//!
//! It echoes its input and counts the effects it applied per idempotency key (an effect is
//! applied once per key, however many attempts arrive), and can be told to misbehave: fail or
//! hang the first N attempts of each key, fail or hang a random share of attempts, answer with
//! a given status and error type, or respond after a fixed or random delay.
//! The README's demo, `proctor agent`, the integration tests and the simulator use it.
//!
//! It is also a plain HTTP service for `http` steps: any method on `/echo...` answers
//! `{agent, method, path, query, idempotency_key, body}` (the body parsed when it is JSON),
//! with the same misbehaviours, keyed by the request's `Idempotency-Key` header (a request
//! without one is answered and not recorded).
//!
//! Random behaviours draw from a ChaCha8 generator seeded by whoever starts the agent
//! ([`start_seeded`]), so a simulated run stays reproducible from its seed. Each request draws
//! once its body has parsed, in a fixed order (hang, fail, latency), and only for the
//! behaviours that are set: an agent with no random behaviour draws nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AgentRequest;
use crate::clock::Clock;
use crate::network::{accept_next, Listener, Network};

/// Largest request body the example agent reads.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How the example agent behaves. [`Behaviour::check`] says whether it makes sense.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Fail the first `fail_first` attempts of each idempotency key: exercises retries with a
    /// known number of failures.
    #[serde(default)]
    pub fail_first: u32,
    /// Status of every failure this behaviour causes (default 503, a transient failure).
    #[serde(default)]
    pub fail_status: Option<u16>,
    /// `error.type` in the failure body (default "unavailable"), for error policies that match
    /// on it.
    #[serde(default)]
    pub error_type: Option<String>,
    /// Fail every attempt of these steps (by step id), with the same status and type.
    #[serde(default)]
    pub fail_steps: Vec<String>,
    /// Probability (0 to 1) that an attempt which would otherwise succeed fails, with the same
    /// status and type: a flaky agent rather than one that fails a known number of times.
    #[serde(default)]
    pub fail_rate: f64,
    /// Never answer the first `hang_first` attempts of each idempotency key: the agent accepted
    /// the request and went silent, so only the caller's response timeout ends the attempt.
    /// The request is recorded in the ledger but no effect is applied.
    #[serde(default)]
    pub hang_first: u32,
    /// Probability (0 to 1) that an attempt is never answered, as for `hang_first`.
    #[serde(default)]
    pub hang_rate: f64,
    /// Wait this long before answering, the same for every request.
    #[serde(default)]
    pub delay_ms: u64,
    /// `[min, max]`: wait a delay drawn uniformly from `min..=max` before answering, so that
    /// concurrent attempts complete out of order. Exclusive with `delay_ms`.
    #[serde(default)]
    pub latency_ms: Option<[u64; 2]>,
    /// Fixed outputs by step id; other steps get the echo output.
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    /// Stream the answer as NDJSON: the reference progress kinds (`agent_started` and
    /// `agent_thinking` before the delay, `tool_executing`, `tool_completed` and
    /// `agent_completed` after it), each with `{execution_id, step, attempt, n}`, then the
    /// output (or the failure) as the last line. A hang sends the first two and goes silent.
    #[serde(default)]
    pub progress: bool,
}

impl Behaviour {
    /// Every problem with this behaviour, each naming its field, joined by "; ".
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (field, rate) in [("fail_rate", self.fail_rate), ("hang_rate", self.hang_rate)] {
            // `contains` is false for NaN, and infinities are out of range.
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{field}: must be between 0 and 1, got {rate}"));
            }
        }
        if let Some([min, max]) = self.latency_ms {
            if min > max {
                problems.push(format!("latency_ms: min {min} is above max {max}"));
            }
            if self.delay_ms > 0 {
                problems.push("delay_ms and latency_ms: give one, not both".to_string());
            }
        }
        if let Some(status) = self.fail_status {
            if StatusCode::from_u16(status).is_err() {
                problems.push(format!(
                    "fail_status: {status} is not an HTTP status (100 to 999)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The random choices for one request, drawn together so that one request's draws are never
/// interleaved with another's.
#[derive(Debug, Default, PartialEq)]
struct Rolls {
    hang: bool,
    fail: bool,
    latency_ms: u64,
}

impl Rolls {
    /// Draws in a fixed order, and only for the behaviours that are set, so that adding a
    /// random behaviour to one agent does not change what another agent's seed produces.
    fn draw(behaviour: &Behaviour, rng: &mut ChaCha8Rng) -> Rolls {
        let hang = behaviour.hang_rate > 0.0 && rng.random::<f64>() < behaviour.hang_rate;
        let fail = behaviour.fail_rate > 0.0 && rng.random::<f64>() < behaviour.fail_rate;
        let latency_ms = match behaviour.latency_ms {
            // An unchecked inverted range is read as the range it meant rather than panicking.
            Some([a, b]) => rng.random_range(a.min(b)..=a.max(b)),
            None => 0,
        };
        Rolls {
            hang,
            fail,
            latency_ms,
        }
    }
}

/// What the agent has seen; shared with whoever started it.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Every request, in arrival order.
    pub requests: Vec<AgentRequest>,
    /// Attempts seen per idempotency key.
    pub attempts: BTreeMap<String, u32>,
    /// Effects applied per idempotency key: never above 1.
    pub effects: BTreeMap<String, u32>,
    /// When each request arrived and was answered, for an agent started with a clock
    /// ([`start_timed`]): the simulator's timeline draws calls from them. In the order the
    /// agent decided them (after any delay); a request it hangs on has no answer.
    pub calls: Vec<CallTiming>,
}

/// One request's arrival and answer, on the agent's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallTiming {
    pub execution_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub received_ms: u64,
    /// `None` for a request the agent hangs on.
    pub answered_ms: Option<u64>,
    /// `ok`, `error` or `hang`.
    pub answer: &'static str,
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
/// across agent crashes, as a real agent keeps its effects in its own storage). Random
/// behaviours use seed 0.
pub async fn start_with_ledger(
    net: &dyn Network,
    addr: &str,
    name: &str,
    behaviour: Behaviour,
    ledger: Arc<Mutex<Ledger>>,
) -> std::io::Result<RunningAgent> {
    start_seeded(net, addr, name, behaviour, ledger, 0).await
}

/// As [`start_with_ledger`], drawing every random choice of the behaviour from `seed`.
/// A behaviour that fails [`Behaviour::check`] is refused (`InvalidInput`).
pub async fn start_seeded(
    net: &dyn Network,
    addr: &str,
    name: &str,
    behaviour: Behaviour,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
) -> std::io::Result<RunningAgent> {
    start_timed(net, addr, name, behaviour, ledger, seed, None).await
}

/// As [`start_seeded`], stamping each request's arrival and answer with `clock` into
/// [`Ledger::calls`]. Reading the clock changes nothing the agent does.
pub async fn start_timed(
    net: &dyn Network,
    addr: &str,
    name: &str,
    behaviour: Behaviour,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
    clock: Option<Arc<dyn Clock>>,
) -> std::io::Result<RunningAgent> {
    behaviour.check().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("agent {name}: {e}"),
        )
    })?;
    let listener = net.bind(addr).await?;
    let local = listener.local_addr()?;
    let agent = Arc::new(Agent {
        name: name.to_string(),
        behaviour,
        rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
        clock,
    });
    let task = tokio::spawn(serve(listener, agent, ledger.clone()));
    Ok(RunningAgent {
        addr: local,
        ledger,
        task,
    })
}

/// What every handler of one agent shares.
struct Agent {
    name: String,
    behaviour: Behaviour,
    rng: Arc<Mutex<ChaCha8Rng>>,
    clock: Option<Arc<dyn Clock>>,
}

impl Agent {
    fn now_ms(&self) -> Option<u64> {
        self.clock.as_ref().map(|c| c.now_ms())
    }
}

async fn serve(mut listener: Box<dyn Listener>, agent: Arc<Agent>, ledger: Arc<Mutex<Ledger>>) {
    // Connections live in the set so that stopping the server (aborting this task) also ends
    // them, hung requests included, instead of leaving them waiting forever.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Some((conn, _peer)) = accept_next(&mut *listener).await else {
            return;
        };
        let (agent, ledger) = (agent.clone(), ledger.clone());
        connections.spawn(async move {
            let service = service_fn(move |req| handle(req, agent.clone(), ledger.clone()));
            // A client that goes away mid-request is not our problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, std::convert::Infallible>;

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_reply(status: StatusCode, error_type: &str, message: &str) -> Response<Body> {
    reply(
        status,
        json!({"error": {"type": error_type, "message": message}}),
    )
}

/// What one attempt gets, decided under the ledger lock.
enum Outcome {
    Hang,
    Fail(u32),
    Answer,
}

async fn handle(
    req: Request<Incoming>,
    agent: Arc<Agent>,
    ledger: Arc<Mutex<Ledger>>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let behaviour = &agent.behaviour;
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
    if req.uri().path().starts_with("/echo") {
        return Ok(echo(req, agent, ledger).await);
    }
    if req.method() != hyper::Method::POST || req.uri().path() != "/run" {
        return Ok(error_reply(
            StatusCode::NOT_FOUND,
            "not_found",
            "this agent serves POST /run, GET /ledger and /echo",
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
    let received_ms = agent.now_ms();
    let rolls = Rolls::draw(
        behaviour,
        &mut agent.rng.lock().unwrap_or_else(|p| p.into_inner()),
    );
    if behaviour.progress {
        return Ok(stream_answer(agent, ledger, request, rolls, received_ms));
    }
    let ok = output(&agent, &request);
    Ok(answer(&agent, &ledger, &request, &rolls, received_ms, ok).await)
}

/// A plain (not streamed) answer to `request`: after the behaviour's delay, recorded in the
/// ledger, then a hang, a failure, or `ok`.
async fn answer(
    agent: &Agent,
    ledger: &Mutex<Ledger>,
    request: &AgentRequest,
    rolls: &Rolls,
    received_ms: Option<u64>,
    ok: Value,
) -> Response<Body> {
    let behaviour = &agent.behaviour;
    let delay_ms = behaviour.delay_ms.saturating_add(rolls.latency_ms);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let stamp = received_ms.zip(agent.now_ms());
    match decide(behaviour, rolls, ledger, request, stamp) {
        // Recorded above, so the simulator sees the attempt; only the caller's timeout ends it.
        Outcome::Hang => match std::future::pending::<std::convert::Infallible>().await {},
        Outcome::Fail(attempts) => {
            let status = behaviour
                .fail_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let (error_type, message) = failure(agent, request, attempts);
            error_reply(status, &error_type, &message)
        }
        Outcome::Answer => reply(StatusCode::OK, ok),
    }
}

/// A plain HTTP request to `/echo...`: answered with what it carried, after the agent's
/// behaviour (delays, failures, hangs) for its `Idempotency-Key`.
async fn echo(
    req: Request<Incoming>,
    agent: Arc<Agent>,
    ledger: Arc<Mutex<Ledger>>,
) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let body = if body.is_empty() {
        Value::Null
    } else if is_json {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("not JSON: {e}"),
                )
            }
        }
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    };
    let echoed = json!({
        "agent": agent.name,
        "method": method,
        "path": path,
        "query": query,
        "idempotency_key": key,
        "body": body,
    });
    let Some(key) = key else {
        return reply(StatusCode::OK, echoed);
    };
    // The engine's key is `<execution>:<step>`: the ledger files the request under both.
    let (execution_id, step_id) = key
        .rsplit_once(':')
        .map_or((String::new(), key.clone()), |(e, s)| {
            (e.to_string(), s.to_string())
        });
    let request = AgentRequest {
        execution_id,
        step_id,
        attempt: 0,
        idempotency_key: key,
        input: json!({"method": echoed["method"], "path": echoed["path"], "body": echoed["body"]}),
    };
    let received_ms = agent.now_ms();
    let rolls = Rolls::draw(
        &agent.behaviour,
        &mut agent.rng.lock().unwrap_or_else(|p| p.into_inner()),
    );
    answer(&agent, &ledger, &request, &rolls, received_ms, echoed).await
}

/// The failure an attempt gets: its `error.type` and message.
fn failure(agent: &Agent, request: &AgentRequest, attempts: u32) -> (String, String) {
    let error_type = agent
        .behaviour
        .error_type
        .as_deref()
        .unwrap_or("unavailable");
    let message = format!(
        "{} failing attempt {attempts} of {}",
        agent.name, request.idempotency_key
    );
    (error_type.to_string(), message)
}

/// The output of a successful attempt.
fn output(agent: &Agent, request: &AgentRequest) -> Value {
    agent
        .behaviour
        .outputs
        .get(&request.step_id)
        .cloned()
        .unwrap_or_else(|| {
            json!({
                "agent": agent.name,
                "step": request.step_id,
                "attempt": request.attempt,
                "echo": request.input,
            })
        })
}

/// A streamed (NDJSON) answer, written by a task as the work goes on.
fn stream_answer(
    agent: Arc<Agent>,
    ledger: Arc<Mutex<Ledger>>,
    request: AgentRequest,
    rolls: Rolls,
    received_ms: Option<u64>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut n = 0u32;
        let line = |value: Value| Bytes::from(format!("{value}\n"));
        let mut progress = |kind: &str| {
            n += 1;
            line(json!({"progress": {"kind": kind, "data": {
                "execution_id": request.execution_id,
                "step": request.step_id,
                "attempt": request.attempt,
                "n": n,
            }}}))
        };
        let delay_ms = agent.behaviour.delay_ms.saturating_add(rolls.latency_ms);
        for kind in ["agent_started", "agent_thinking"] {
            if tx.send(progress(kind)).await.is_err() {
                return;
            }
        }
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let stamp = received_ms.zip(agent.now_ms());
        let last = match decide(&agent.behaviour, &rolls, &ledger, &request, stamp) {
            Outcome::Hang => {
                // Silent until the caller gives up (dropping the receiver ends this task).
                tx.closed().await;
                return;
            }
            Outcome::Fail(attempts) => {
                let (error_type, message) = failure(&agent, &request, attempts);
                line(json!({"error": {"type": error_type, "message": message}}))
            }
            Outcome::Answer => {
                for kind in ["tool_executing", "tool_completed", "agent_completed"] {
                    if tx.send(progress(kind)).await.is_err() {
                        return;
                    }
                }
                line(json!({"output": output(&agent, &request)}))
            }
        };
        let _ = tx.send(last).await;
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes)),
            rx,
        ))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Records the attempt in the ledger and decides what it gets (applying the effect, once per
/// key, when it is answered). `stamp`: when the request arrived and now, for an agent with a
/// clock.
fn decide(
    behaviour: &Behaviour,
    rolls: &Rolls,
    ledger: &Mutex<Ledger>,
    request: &AgentRequest,
    stamp: Option<(u64, u64)>,
) -> Outcome {
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    let outcome = decide_locked(behaviour, rolls, &mut ledger, request);
    if let Some((received_ms, now_ms)) = stamp {
        let (answered_ms, answer) = match outcome {
            Outcome::Hang => (None, "hang"),
            Outcome::Fail(_) => (Some(now_ms), "error"),
            Outcome::Answer => (Some(now_ms), "ok"),
        };
        ledger.calls.push(CallTiming {
            execution_id: request.execution_id.clone(),
            step_id: request.step_id.clone(),
            attempt: request.attempt,
            received_ms,
            answered_ms,
            answer,
        });
    }
    outcome
}

fn decide_locked(
    behaviour: &Behaviour,
    rolls: &Rolls,
    ledger: &mut Ledger,
    request: &AgentRequest,
) -> Outcome {
    ledger.requests.push(request.clone());
    let attempts = {
        let n = ledger
            .attempts
            .entry(request.idempotency_key.clone())
            .or_insert(0);
        *n += 1;
        *n
    };
    if attempts <= behaviour.hang_first || rolls.hang {
        Outcome::Hang
    } else if attempts <= behaviour.fail_first
        || behaviour.fail_steps.contains(&request.step_id)
        || rolls.fail
    {
        Outcome::Fail(attempts)
    } else {
        // Apply the effect once per key; a repeated key gets the same answer without a new
        // effect.
        let effects = ledger
            .effects
            .entry(request.idempotency_key.clone())
            .or_insert(0);
        if *effects == 0 {
            *effects = 1;
        }
        Outcome::Answer
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{AgentClient, ClientLimits};
    use crate::network::TokioNetwork;

    fn request(key: &str) -> AgentRequest {
        AgentRequest {
            execution_id: "e1".into(),
            step_id: "s1".into(),
            attempt: 1,
            idempotency_key: key.into(),
            input: json!({"x": 1}),
        }
    }

    fn client() -> AgentClient {
        AgentClient::new(Arc::new(TokioNetwork), ClientLimits::default())
    }

    /// The status each of 20 requests (distinct keys, one at a time) gets from a fresh agent.
    async fn statuses(behaviour: &Behaviour, seed: u64) -> Vec<u16> {
        let agent = start_seeded(
            &TokioNetwork,
            "127.0.0.1:0",
            "flaky",
            behaviour.clone(),
            Arc::default(),
            seed,
        )
        .await
        .unwrap();
        let client = client();
        let mut statuses = Vec::new();
        for i in 0..20 {
            let status = match client
                .call(&agent.address(), &request(&format!("k{i}")), 5_000)
                .await
            {
                Ok(_) => 200,
                Err(e) => e.status.expect("the agent answered"),
            };
            statuses.push(status);
        }
        statuses
    }

    #[test]
    fn check_names_the_field() {
        assert_eq!(Behaviour::default().check(), Ok(()));
        let ok = Behaviour {
            fail_rate: 1.0,
            hang_rate: 0.0,
            latency_ms: Some([10, 10]),
            fail_status: Some(422),
            ..Behaviour::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let cases = [
            (
                Behaviour {
                    fail_rate: 1.5,
                    ..Behaviour::default()
                },
                "fail_rate: must be between 0 and 1, got 1.5",
            ),
            (
                Behaviour {
                    hang_rate: -0.1,
                    ..Behaviour::default()
                },
                "hang_rate: must be between 0 and 1, got -0.1",
            ),
            (
                Behaviour {
                    fail_rate: f64::NAN,
                    ..Behaviour::default()
                },
                "fail_rate: must be between 0 and 1, got NaN",
            ),
            (
                Behaviour {
                    hang_rate: f64::INFINITY,
                    ..Behaviour::default()
                },
                "hang_rate: must be between 0 and 1, got inf",
            ),
            (
                Behaviour {
                    latency_ms: Some([50, 10]),
                    ..Behaviour::default()
                },
                "latency_ms: min 50 is above max 10",
            ),
            (
                Behaviour {
                    delay_ms: 5,
                    latency_ms: Some([1, 2]),
                    ..Behaviour::default()
                },
                "delay_ms and latency_ms: give one, not both",
            ),
            (
                Behaviour {
                    fail_status: Some(42),
                    ..Behaviour::default()
                },
                "fail_status: 42 is not an HTTP status (100 to 999)",
            ),
        ];
        for (behaviour, want) in cases {
            assert_eq!(behaviour.check(), Err(want.to_string()), "{behaviour:?}");
        }
        let both = Behaviour {
            fail_rate: 2.0,
            latency_ms: Some([3, 1]),
            ..Behaviour::default()
        };
        assert_eq!(
            both.check(),
            Err(
                "fail_rate: must be between 0 and 1, got 2; latency_ms: min 3 is above max 1"
                    .into()
            )
        );
    }

    #[test]
    fn new_fields_default_and_unknown_fields_are_refused() {
        let b: Behaviour = serde_json::from_value(
            json!({"fail_rate": 0.25, "latency_ms": [5, 9], "hang_first": 2}),
        )
        .unwrap();
        assert_eq!(
            b,
            Behaviour {
                fail_rate: 0.25,
                latency_ms: Some([5, 9]),
                hang_first: 2,
                ..Behaviour::default()
            }
        );
        assert!(serde_json::from_value::<Behaviour>(json!({"fail_rat": 0.5})).is_err());
    }

    #[test]
    fn rolls_draw_only_for_random_behaviours() {
        let fresh = ChaCha8Rng::seed_from_u64(7);
        let mut rng = fresh.clone();
        let plain = Behaviour {
            fail_first: 3,
            hang_first: 1,
            delay_ms: 10,
            ..Behaviour::default()
        };
        for _ in 0..10 {
            assert_eq!(Rolls::draw(&plain, &mut rng), Rolls::default());
        }
        assert_eq!(rng, fresh, "a behaviour with nothing random draws nothing");

        let random = Behaviour {
            hang_rate: 0.5,
            fail_rate: 0.5,
            latency_ms: Some([10, 20]),
            ..Behaviour::default()
        };
        let (mut a, mut b) = (fresh.clone(), fresh.clone());
        let mut seen = (false, false);
        for _ in 0..50 {
            let roll = Rolls::draw(&random, &mut a);
            assert_eq!(roll, Rolls::draw(&random, &mut b));
            assert!((10..=20).contains(&roll.latency_ms), "{roll:?}");
            seen = (seen.0 || roll.hang, seen.1 || roll.fail);
        }
        assert_eq!(seen, (true, true));
        let certain = Behaviour {
            hang_rate: 1.0,
            fail_rate: 1.0,
            latency_ms: Some([4, 4]),
            ..Behaviour::default()
        };
        let roll = Rolls::draw(&certain, &mut a);
        assert_eq!(
            roll,
            Rolls {
                hang: true,
                fail: true,
                latency_ms: 4
            }
        );
    }

    #[tokio::test]
    async fn fail_rate_is_reproducible_from_the_seed() {
        let flaky = Behaviour {
            fail_rate: 0.5,
            fail_status: Some(502),
            ..Behaviour::default()
        };
        let first = statuses(&flaky, 1).await;
        assert_eq!(first, statuses(&flaky, 1).await);
        assert!(first.iter().all(|s| [200, 502].contains(s)), "{first:?}");
        assert!(first.contains(&200) && first.contains(&502), "{first:?}");
        assert_ne!(first, statuses(&flaky, 2).await);
    }

    #[tokio::test]
    async fn invalid_behaviour_is_refused_at_start() {
        let bad = Behaviour {
            fail_rate: 1.5,
            ..Behaviour::default()
        };
        let err = start_seeded(&TokioNetwork, "127.0.0.1:0", "bad", bad, Arc::default(), 0)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("fail_rate"), "{err}");
    }

    #[tokio::test]
    async fn hang_first_records_the_attempt_and_never_answers() {
        let agent = start(
            &TokioNetwork,
            "127.0.0.1:0",
            "silent",
            Behaviour {
                hang_first: 1,
                ..Behaviour::default()
            },
        )
        .await
        .unwrap();
        let client = client();
        let req = request("e1:s1");
        let first = tokio::time::timeout(
            Duration::from_millis(200),
            client.call(&agent.address(), &req, 10_000),
        )
        .await;
        assert!(first.is_err(), "the first attempt got an answer: {first:?}");
        {
            let ledger = agent.ledger();
            assert_eq!(ledger.requests, vec![req.clone()]);
            assert_eq!(ledger.attempts.get("e1:s1"), Some(&1));
            assert_eq!(ledger.effects.get("e1:s1").copied().unwrap_or(0), 0);
        }
        let second = client.call(&agent.address(), &req, 5_000).await;
        assert!(second.is_ok(), "{second:?}");
        let ledger = agent.ledger();
        assert_eq!(ledger.attempts.get("e1:s1"), Some(&2));
        assert_eq!(ledger.effects.get("e1:s1"), Some(&1));
    }

    #[tokio::test]
    async fn latency_delays_within_the_range() {
        let agent = start_seeded(
            &TokioNetwork,
            "127.0.0.1:0",
            "slow",
            Behaviour {
                latency_ms: Some([300, 400]),
                ..Behaviour::default()
            },
            Arc::default(),
            5,
        )
        .await
        .unwrap();
        let client = client();
        let early = tokio::time::timeout(
            Duration::from_millis(50),
            client.call(&agent.address(), &request("a"), 5_000),
        )
        .await;
        assert!(early.is_err(), "answered before the minimum latency");
        let late = tokio::time::timeout(
            Duration::from_millis(2_000),
            client.call(&agent.address(), &request("b"), 5_000),
        )
        .await;
        assert!(matches!(late, Ok(Ok(_))), "{late:?}");
    }
}
