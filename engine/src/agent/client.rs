//! The agent client: one HTTP/1.1 request per attempt, with a connect timeout and a response
//! timeout (the step's `timeout`).
//!
//! Connections are kept alive and reused (at most [`ClientLimits::max_idle_per_agent`] idle
//! per agent): a connect and its teardown cost more than a no-op agent's whole answer. A
//! connection goes back to the pool only after a whole, plain answer was read from it; one that
//! timed out, broke or streamed is dropped. A request sent on a kept connection that turns out
//! to be dead (the agent restarted, or closed it while idle) before any answer came back is sent
//! once more on a fresh connection, as HTTP clients do: the same attempt, under the same
//! idempotency key, so an agent that did receive the first copy applies it once.
//!
//! Timeouts use tokio's timer, which the simulator replaces with simulated time; they are not
//! recorded anywhere, so they need not come from the Clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use tokio::sync::mpsc;

use super::{
    AgentProgress, AgentRequest, ErrorBody, MAX_PROGRESS_KIND_BYTES, MAX_PROGRESS_LINE_BYTES,
    MAX_PROGRESS_PER_CALL,
};
use crate::core::{ErrorKind, StepError};
use crate::network::{Conn, Network};

/// Limits on one call.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub connect_timeout_ms: u64,
    /// A larger response body is an invalid response: outputs are persisted and must stay small.
    pub max_response_bytes: usize,
    /// Idle kept-alive connections per agent address; 0 opens a connection per call.
    pub max_idle_per_agent: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connect_timeout_ms: 5_000,
            max_response_bytes: 1024 * 1024,
            max_idle_per_agent: 256,
        }
    }
}

/// Cheap to clone; clones share the pool of idle connections.
#[derive(Clone)]
pub struct AgentClient {
    net: Arc<dyn Network>,
    limits: ClientLimits,
    /// Idle connections by agent address, the most recently used last.
    idle: Arc<Mutex<BTreeMap<String, Vec<Connection>>>>,
}

/// An open HTTP/1.1 connection: the handle requests are sent through, and the task that
/// drives the connection (stopped when this is dropped).
pub(crate) struct Connection {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

/// A stream to `addr` over `net`, within `connect_timeout_ms` (which a call's own timeout
/// around it may cut shorter). Every outbound call (agents, `http` steps, email) connects so.
pub(crate) async fn connect_within(
    net: &dyn Network,
    addr: &str,
    connect_timeout_ms: u64,
) -> Result<Box<dyn Conn>, StepError> {
    match tokio::time::timeout(Duration::from_millis(connect_timeout_ms), net.connect(addr)).await {
        Err(_) => Err(StepError::new(
            ErrorKind::Connection,
            format!("connecting to {addr} timed out after {connect_timeout_ms}ms"),
        )),
        Ok(Err(e)) => Err(StepError::new(
            ErrorKind::Connection,
            format!("cannot connect to {addr}: {e}"),
        )),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// A new HTTP/1.1 connection to `addr` ([`connect_within`], then the handshake).
pub(crate) async fn open_http1(
    net: &dyn Network,
    addr: &str,
    connect_timeout_ms: u64,
) -> Result<Connection, StepError> {
    let conn = connect_within(net, addr, connect_timeout_ms).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| {
            StepError::new(ErrorKind::Connection, format!("handshake with {addr}: {e}"))
        })?;
    let driver = tokio::spawn(async move {
        // Its end (a close, a reset) shows in the next request on it.
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// How an exchange ended, for the connection it used.
enum Exchanged {
    /// A whole answer was read: the connection may serve another request.
    Reusable(Result<Value, StepError>),
    /// The connection was found dead before any answer came back.
    Dead(StepError),
    /// Anything else: the connection is dropped.
    Spent(Result<Value, StepError>),
}

impl AgentClient {
    pub fn new(net: Arc<dyn Network>, limits: ClientLimits) -> AgentClient {
        AgentClient {
            net,
            limits,
            idle: Arc::default(),
        }
    }

    /// Idle connections to `addr` now (for tests and the benchmark).
    pub fn idle_connections(&self, addr: &str) -> usize {
        self.pool().get(addr).map_or(0, Vec::len)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Connection>>> {
        // Pushes and pops only: a panic cannot leave the map half-changed.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection to `addr` that is still open.
    fn take_idle(&self, addr: &str) -> Option<Connection> {
        let mut pool = self.pool();
        let idle = pool.get_mut(addr)?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, addr: &str, conn: Connection) {
        if self.limits.max_idle_per_agent == 0 || conn.sender.is_closed() {
            return;
        }
        let mut pool = self.pool();
        let idle = pool.entry(addr.to_string()).or_default();
        if idle.len() < self.limits.max_idle_per_agent {
            idle.push(conn);
        }
    }

    /// Calls the agent at `addr` (`host:port`). Never panics on what the agent sends.
    pub async fn call(
        &self,
        addr: &str,
        request: &AgentRequest,
        timeout_ms: u64,
    ) -> Result<Value, StepError> {
        self.call_observed(addr, request, timeout_ms, None).await
    }

    /// [`AgentClient::call`], handing each progress line a streaming agent sends to
    /// `progress` (at most [`MAX_PROGRESS_PER_CALL`], so a channel of that capacity never
    /// fills), in order, before the result is returned.
    pub async fn call_observed(
        &self,
        addr: &str,
        request: &AgentRequest,
        timeout_ms: u64,
        progress: Option<&mpsc::Sender<AgentProgress>>,
    ) -> Result<Value, StepError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("requests serialize"));
        let attempt = async {
            if let Some(mut kept) = self.take_idle(addr) {
                match self.exchange(&mut kept, addr, body.clone(), progress).await {
                    // Sent again below, on a fresh connection.
                    Exchanged::Dead(_) => {}
                    ended => return self.settle(addr, kept, ended),
                }
            }
            let mut fresh = self.connect(addr).await?;
            let ended = self.exchange(&mut fresh, addr, body, progress).await;
            self.settle(addr, fresh, ended)
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), attempt).await {
            Err(_) => Err(StepError::new(
                ErrorKind::Timeout,
                format!("no response from {addr} within {timeout_ms}ms"),
            )),
            Ok(result) => result,
        }
    }

    /// The call's result; `conn` goes back to the pool if the exchange left it reusable.
    fn settle(&self, addr: &str, conn: Connection, ended: Exchanged) -> Result<Value, StepError> {
        match ended {
            Exchanged::Reusable(result) => {
                self.put_idle(addr, conn);
                result
            }
            Exchanged::Spent(result) => result,
            Exchanged::Dead(e) => Err(e),
        }
    }

    /// A new connection to `addr`, within the connect timeout (which the response timeout
    /// around it may cut shorter).
    async fn connect(&self, addr: &str) -> Result<Connection, StepError> {
        open_http1(&*self.net, addr, self.limits.connect_timeout_ms).await
    }

    /// One request and its answer on `conn`.
    async fn exchange(
        &self,
        conn: &mut Connection,
        addr: &str,
        body: Bytes,
        progress: Option<&mpsc::Sender<AgentProgress>>,
    ) -> Exchanged {
        let broken = |what: &str, e: &dyn std::fmt::Display| {
            StepError::new(ErrorKind::Connection, format!("{what} {addr}: {e}"))
        };
        let http_request = Request::post("/run")
            .header(header::HOST, addr)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("request parts are valid");
        if conn.sender.ready().await.is_err() {
            return Exchanged::Dead(broken("connection closed to", &"before the request"));
        }
        let response = match conn.sender.send_request(http_request).await {
            Ok(response) => response,
            // Closed before the request went out, or before any of the answer came back.
            Err(e) if e.is_canceled() || e.is_incomplete_message() => {
                return Exchanged::Dead(broken("request to", &e))
            }
            Err(e) => return Exchanged::Spent(Err(broken("request to", &e))),
        };
        let status = response.status();
        let streamed = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(NDJSON));
        if status.is_success() && streamed {
            return Exchanged::Spent(
                self.read_stream(response.into_body(), addr, status.as_u16(), progress)
                    .await,
            );
        }
        let body = Limited::new(response.into_body(), self.limits.max_response_bytes)
            .collect()
            .await;
        match body {
            Ok(body) => Exchanged::Reusable(classify(status.as_u16(), &body.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Exchanged::Spent(Err(StepError::new(
                    ErrorKind::InvalidResponse,
                    format!(
                        "response from {addr} is over {} bytes",
                        self.limits.max_response_bytes
                    ),
                )))
            }
            Err(e) => Exchanged::Spent(Err(broken("reading response from", &e))),
        }
    }

    /// Reads a streamed (NDJSON) answer: progress lines, then the result line.
    async fn read_stream(
        &self,
        mut body: hyper::body::Incoming,
        addr: &str,
        status: u16,
        progress: Option<&mpsc::Sender<AgentProgress>>,
    ) -> Result<Value, StepError> {
        let invalid = |message: String| StepError {
            kind: ErrorKind::InvalidResponse,
            error_type: None,
            message,
            status: Some(status),
        };
        let mut buffer: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut relayed = 0usize;
        loop {
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                match parse_line(&line).map_err(&invalid)? {
                    Line::Blank => {}
                    Line::Progress(p) => {
                        if relayed < MAX_PROGRESS_PER_CALL {
                            relayed += 1;
                            if let Some(tx) = progress {
                                // Capacity MAX_PROGRESS_PER_CALL: never full.
                                let _ = tx.try_send(p);
                            }
                        }
                    }
                    Line::Done(result) => {
                        return result.map_err(|e| StepError {
                            status: Some(status),
                            ..e
                        })
                    }
                }
            }
            if buffer.len() > MAX_PROGRESS_LINE_BYTES {
                return Err(invalid(format!(
                    "a line from {addr} is over {MAX_PROGRESS_LINE_BYTES} bytes"
                )));
            }
            match body.frame().await {
                None => {
                    // The last line may lack its newline.
                    return match parse_line(&buffer).map_err(&invalid)? {
                        Line::Done(result) => result,
                        _ => Err(invalid(format!(
                            "the stream from {addr} ended without an output or error line"
                        ))),
                    };
                }
                Some(Err(e)) => {
                    return Err(StepError::new(
                        ErrorKind::Connection,
                        format!("reading the stream from {addr}: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len();
                        if total > self.limits.max_response_bytes {
                            return Err(invalid(format!(
                                "response from {addr} is over {} bytes",
                                self.limits.max_response_bytes
                            )));
                        }
                        buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// The media type of a streamed answer.
const NDJSON: &str = "application/x-ndjson";

/// One line of a streamed answer.
enum Line {
    Blank,
    Progress(AgentProgress),
    Done(Result<Value, StepError>),
}

fn parse_line(line: &[u8]) -> Result<Line, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("stream line is not UTF-8: {e}"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Line::Blank);
    }
    let shown = || text.chars().take(200).collect::<String>();
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("stream line is not JSON ({e}): {}", shown()))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("stream line is not an object: {}", shown()));
    };
    if fields.len() != 1 {
        return Err(format!(
            "a stream line holds exactly one of progress, output, error: {}",
            shown()
        ));
    }
    if let Some(p) = fields.remove("progress") {
        let p: AgentProgress = serde_json::from_value(p)
            .map_err(|e| format!("bad progress line ({e}): {}", shown()))?;
        if !crate::name::is_plain(&p.kind, MAX_PROGRESS_KIND_BYTES) {
            return Err(format!("progress kind {:?} is not a plain name", p.kind));
        }
        return Ok(Line::Progress(p));
    }
    if let Some(output) = fields.remove("output") {
        return Ok(Line::Done(Ok(output)));
    }
    if let Some(error) = fields.remove("error") {
        let detail: super::ErrorDetail = serde_json::from_value(error)
            .map_err(|e| format!("bad error line ({e}): {}", shown()))?;
        return Ok(Line::Done(Err(StepError {
            kind: ErrorKind::Agent,
            error_type: Some(detail.error_type),
            message: detail.message,
            status: None,
        })));
    }
    Err(format!(
        "a stream line holds exactly one of progress, output, error: {}",
        shown()
    ))
}

/// Maps a response to the step's output or error.
fn classify(status: u16, body: &[u8]) -> Result<Value, StepError> {
    let text = || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    match status {
        200..=299 => serde_json::from_slice(body).map_err(|e| StepError {
            kind: ErrorKind::InvalidResponse,
            error_type: None,
            message: format!("response is not JSON ({e}): {}", text()),
            status: Some(status),
        }),
        _ => {
            // 4xx: the agent rejected this attempt; anything else (5xx, odd codes): it failed.
            let kind = if (400..=499).contains(&status) {
                ErrorKind::Agent
            } else {
                ErrorKind::Server
            };
            let (error_type, message) = match serde_json::from_slice::<ErrorBody>(body) {
                Ok(b) => (Some(b.error.error_type), b.error.message),
                Err(_) => (None, text()),
            };
            Err(StepError {
                kind,
                error_type,
                message,
                status: Some(status),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_responses() {
        assert_eq!(
            classify(200, br#"{"a":1}"#).unwrap(),
            serde_json::json!({"a": 1})
        );
        let e = classify(200, b"nope").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
        let e = classify(
            422,
            br#"{"error":{"type":"invalid_input","message":"bad"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            (
                e.kind,
                e.error_type.as_deref(),
                e.message.as_str(),
                e.status
            ),
            (ErrorKind::Agent, Some("invalid_input"), "bad", Some(422))
        );
        let e = classify(503, b"down").unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Server, "down"));
    }
}
