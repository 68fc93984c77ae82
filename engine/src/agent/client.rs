//! The agent client: one HTTP/1.1 request per attempt over a fresh connection from the
//! Network port, with a connect timeout and a response timeout (the step's `timeout`).
//!
//! Timeouts use tokio's timer, which the simulator replaces with simulated time; they are not
//! recorded anywhere, so they need not come from the Clock.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{AgentRequest, ErrorBody};
use crate::core::{ErrorKind, StepError};
use crate::network::Network;

/// Limits on one call.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub connect_timeout_ms: u64,
    /// A larger response body is an invalid response: outputs are persisted and must stay small.
    pub max_response_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connect_timeout_ms: 5_000,
            max_response_bytes: 1024 * 1024,
        }
    }
}

#[derive(Clone)]
pub struct AgentClient {
    net: Arc<dyn Network>,
    limits: ClientLimits,
}

impl AgentClient {
    pub fn new(net: Arc<dyn Network>, limits: ClientLimits) -> AgentClient {
        AgentClient { net, limits }
    }

    /// Calls the agent at `addr` (`host:port`). Never panics on what the agent sends.
    pub async fn call(
        &self,
        addr: &str,
        request: &AgentRequest,
        timeout_ms: u64,
    ) -> Result<Value, StepError> {
        let connect = tokio::time::timeout(
            Duration::from_millis(self.limits.connect_timeout_ms),
            self.net.connect(addr),
        )
        .await;
        let conn = match connect {
            Err(_) => {
                return Err(StepError::new(
                    ErrorKind::Connection,
                    format!(
                        "connecting to {addr} timed out after {}ms",
                        self.limits.connect_timeout_ms
                    ),
                ))
            }
            Ok(Err(e)) => {
                return Err(StepError::new(
                    ErrorKind::Connection,
                    format!("cannot connect to {addr}: {e}"),
                ))
            }
            Ok(Ok(conn)) => conn,
        };
        let exchange = self.exchange(conn, addr, request);
        match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
            Err(_) => Err(StepError::new(
                ErrorKind::Timeout,
                format!("no response from {addr} within {timeout_ms}ms"),
            )),
            Ok(result) => result,
        }
    }

    async fn exchange(
        &self,
        conn: Box<dyn crate::network::Conn>,
        addr: &str,
        request: &AgentRequest,
    ) -> Result<Value, StepError> {
        let broken = |what: &str, e: &dyn std::fmt::Display| {
            StepError::new(ErrorKind::Connection, format!("{what} {addr}: {e}"))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
            .await
            .map_err(|e| broken("handshake with", &e))?;
        // The connection task ends when the exchange is done or dropped (sender dropped).
        let driver = tokio::spawn(connection);
        let body = serde_json::to_vec(request).expect("requests serialize");
        let http_request = Request::post("/run")
            .header(header::HOST, addr)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request parts are valid");
        let result = async {
            let response = sender
                .send_request(http_request)
                .await
                .map_err(|e| broken("request to", &e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.limits.max_response_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        StepError::new(
                            ErrorKind::InvalidResponse,
                            format!(
                                "response from {addr} is over {} bytes",
                                self.limits.max_response_bytes
                            ),
                        )
                    } else {
                        broken("reading response from", &e)
                    }
                })?
                .to_bytes();
            Ok::<_, StepError>((status, body))
        }
        .await;
        driver.abort();
        let (status, body) = result?;
        classify(status.as_u16(), &body)
    }
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
