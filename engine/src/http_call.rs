//! Sends an `http` step's request (plain HTTP/1.1 over the [`Network`] port, so the simulator
//! runs it on simulated TCP) and turns the response into the step's output or error.
//!
//! - The request is the step's stored input, `{method, url, headers, body}`; secret references
//!   in header values are filled in here, just before sending, and every error text that
//!   leaves this module has the secrets' values cut out.
//! - Each attempt carries the step's idempotency key (`Idempotency-Key`), so a service can
//!   apply a re-sent request once.
//! - A status in the step's `success` list (2xx by default) completes the step with
//!   `{status, headers, body}`; the body is parsed when the content type says JSON, and kept as
//!   text otherwise. 5xx, 408 and 429 are retryable ([`ErrorKind::Server`]); any other status
//!   is [`ErrorKind::Request`], which no retry will fix.
//! - One connection per attempt, closed after it: a step's requests are few and far between.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, Uri};
use serde_json::{json, Map, Value};

use crate::agent::client::open_http1;
use crate::agent::ClientLimits;
use crate::core::{ErrorKind, HttpCall, StepError};
use crate::definition::http_success;
use crate::network::Network;
use crate::secrets::Secrets;

/// Longest error message kept from a response body: errors are persisted with the step.
pub const MAX_ERROR_BODY_CHARS: usize = 500;

/// Sends `http` steps' requests. Cheap to clone.
#[derive(Clone)]
pub struct HttpCaller {
    net: Arc<dyn Network>,
    limits: ClientLimits,
    secrets: Arc<Secrets>,
}

/// The parts of a stored request.
struct Parts {
    method: Method,
    uri: Uri,
    authority: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl HttpCaller {
    pub fn new(net: Arc<dyn Network>, limits: ClientLimits, secrets: Secrets) -> HttpCaller {
        HttpCaller {
            net,
            limits,
            secrets: Arc::new(secrets),
        }
    }

    /// Sends `call`'s request within its timeout. Never panics on what the service sends.
    pub async fn send(&self, call: &HttpCall) -> Result<Value, StepError> {
        let sent = async {
            let parts = self.parts(&call.request)?;
            self.exchange(parts, call).await
        };
        let result = match tokio::time::timeout(Duration::from_millis(call.timeout_ms), sent).await
        {
            Err(_) => Err(StepError::new(
                ErrorKind::Timeout,
                format!("no response within {}ms", call.timeout_ms),
            )),
            Ok(result) => result,
        };
        result.map_err(|e| StepError {
            message: self.secrets.redact(&e.message),
            ..e
        })
    }

    /// Reads the stored request; a bad one (a URL a template made unusable, an unknown secret)
    /// is an error no retry fixes.
    fn parts(&self, request: &Value) -> Result<Parts, StepError> {
        let bad = |message: String| StepError::new(ErrorKind::Request, message);
        let text = |field: &str| request.get(field).and_then(Value::as_str).unwrap_or("");
        let method = Method::from_bytes(text("method").as_bytes())
            .map_err(|_| bad(format!("bad method {:?}", text("method"))))?;
        let url = text("url");
        let uri: Uri = url
            .parse()
            .map_err(|e| bad(format!("bad url {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(format!(
                "url {url:?}: only http:// is supported (https is not yet)"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad(format!("url {url:?} names no host")))?;
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let mut headers = Vec::new();
        if let Some(given) = request.get("headers").and_then(Value::as_object) {
            for (name, value) in given {
                let value = value.as_str().unwrap_or_default();
                let filled = self.secrets.fill(value).map_err(bad)?;
                headers.push((name.clone(), filled));
            }
        }
        Ok(Parts {
            method,
            uri,
            authority,
            headers,
            body: request.get("body").cloned().unwrap_or(Value::Null),
        })
    }

    async fn exchange(&self, parts: Parts, call: &HttpCall) -> Result<Value, StepError> {
        let addr = parts.authority.clone();
        let broken = |what: &str, e: &dyn std::fmt::Display| {
            StepError::new(ErrorKind::Connection, format!("{what} {addr}: {e}"))
        };
        // Dropped at the end of the attempt, which closes the connection.
        let mut conn = open_http1(&*self.net, &addr, self.limits.connect_timeout_ms).await?;
        let request = build(parts, &call.idempotency_key)?;
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(|e| broken("request to", &e))?;
        let status = response.status().as_u16();
        let mut headers = Map::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(seen)) => {
                    seen.push_str(", ");
                    seen.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_string(), Value::String(value));
                }
            }
        }
        let is_json = headers
            .get("content-type")
            .and_then(Value::as_str)
            .is_some_and(|t| {
                let t = t.to_ascii_lowercase();
                t.starts_with("application/json") || t.contains("+json")
            });
        let body = Limited::new(response.into_body(), self.limits.max_response_bytes)
            .collect()
            .await;
        let body = match body {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(StepError {
                    status: Some(status),
                    ..StepError::new(
                        ErrorKind::InvalidResponse,
                        format!(
                            "response from {addr} is over {} bytes",
                            self.limits.max_response_bytes
                        ),
                    )
                })
            }
            Err(e) => return Err(broken("reading the response from", &e)),
        };
        let text = String::from_utf8_lossy(&body);
        if !http_success(&call.success, status) {
            let kind = if status >= 500 || status == 408 || status == 429 {
                ErrorKind::Server
            } else {
                ErrorKind::Request
            };
            let message: String = text.chars().take(MAX_ERROR_BODY_CHARS).collect();
            return Err(StepError {
                status: Some(status),
                ..StepError::new(kind, format!("{addr} answered {status}: {message}"))
            });
        }
        let body = if body.is_empty() {
            Value::Null
        } else if is_json {
            serde_json::from_slice(&body).map_err(|e| StepError {
                status: Some(status),
                ..StepError::new(
                    ErrorKind::InvalidResponse,
                    format!("{addr} said JSON but sent something else: {e}"),
                )
            })?
        } else {
            Value::String(text.into_owned())
        };
        Ok(json!({"status": status, "headers": headers, "body": body}))
    }
}

/// The hyper request for `parts`: origin-form target, `Host`, the step's headers, the
/// idempotency key, and the body (JSON unless it is a string).
fn build(parts: Parts, idempotency_key: &str) -> Result<Request<Full<Bytes>>, StepError> {
    let bad = |message: String| StepError::new(ErrorKind::Request, message);
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(target)
        .header(header::HOST, parts.authority.trim_end_matches(":80"))
        .header("idempotency-key", idempotency_key);
    let has_type = parts
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    for (name, value) in &parts.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = match parts.body {
        Value::Null => Bytes::new(),
        Value::String(text) => {
            if !has_type {
                builder = builder.header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            }
            Bytes::from(text)
        }
        json => {
            if !has_type {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
            }
            Bytes::from(json.to_string())
        }
    };
    builder
        .body(Full::new(body))
        .map_err(|e| bad(format!("the request cannot be built: {e}")))
}
