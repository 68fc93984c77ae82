//! A typed client for the API over the [`Network`] port: what the simulator's client host,
//! the end-to-end tests and the load test use, so all of them speak to the server exactly as
//! any HTTP client would. One HTTP/1.1 connection per request, each under a timeout (a
//! partitioned link drops bytes silently rather than failing).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::views::{ExecutionPage, ExecutionView, Registered, Started, WebhookReceipt};
use crate::event::EventRecord;
use crate::network::Network;

/// Largest response body the client reads (an event history page is the largest).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest single event on a stream.
pub const MAX_STREAM_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the connection failed, broke, or timed out. The request may or may not
    /// have taken effect.
    #[error("transport: {0}")]
    Transport(String),
    /// The server answered with an error.
    #[error("HTTP {status} {kind}: {message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl ClientError {
    /// The server's error type (`not_found`, `conflict`, ...), for an API error.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    net: Arc<dyn Network>,
    /// `host:port`.
    addr: String,
    token: Option<String>,
    timeout_ms: u64,
}

impl ApiClient {
    pub fn new(net: Arc<dyn Network>, addr: &str, timeout_ms: u64) -> ApiClient {
        ApiClient {
            net,
            addr: addr.to_string(),
            token: None,
            timeout_ms,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> ApiClient {
        ApiClient {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        request
            .body(Full::new(body))
            .map_err(|e| ClientError::Decode(format!("bad request parts: {e}")))
    }

    /// Connects and sends; the response's body is not read yet. The connection's task lives
    /// as long as the returned guard.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, ConnectionTask), ClientError> {
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let conn = self
            .net
            .connect(&self.addr)
            .await
            .map_err(|e| transport(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
            .await
            .map_err(|e| transport(&e))?;
        let task = ConnectionTask(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(&e))?;
        Ok((response, task))
    }

    /// One request; returns the status and the whole body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let request = self.build(method, path, headers, body)?;
        let exchange = async {
            let (response, _task) = self.send(request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ClientError::Transport(format!("reading the response: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(Duration::from_millis(self.timeout_ms), exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Transport(format!(
                "no response from {} within {}ms",
                self.addr, self.timeout_ms
            ))),
        }
    }

    /// A request whose success is JSON `T`; an error status becomes [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.request(method, path, headers, body).await?;
        decode(status, &bytes)
    }

    fn json_body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
        Some((
            "application/json",
            serde_json::to_vec(value).expect("JSON values serialize"),
        ))
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/api/health", &[], None).await
    }

    /// Registers a definition from its YAML text.
    pub async fn register_definition(&self, yaml: &str) -> Result<Registered, ClientError> {
        let body = Some(("application/yaml", yaml.as_bytes().to_vec()));
        self.call(Method::POST, "/api/definitions", &[], body).await
    }

    /// Registers a parsed definition (sent as JSON).
    pub async fn register_process(
        &self,
        process: &crate::definition::ProcessDef,
    ) -> Result<Registered, ClientError> {
        let body = serde_json::to_vec(process).expect("definitions serialize");
        self.call(
            Method::POST,
            "/api/definitions",
            &[],
            Some(("application/json", body)),
        )
        .await
    }

    pub async fn set_current_definition(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Value, ClientError> {
        let path = format!("/api/definitions/{name}/current");
        let body = Self::json_body(&json!({ "version": version }));
        self.call(Method::PUT, &path, &[], body).await
    }

    /// Starts an execution of `definition` (its current version); with `key`, idempotently.
    pub async fn start(
        &self,
        definition: &str,
        input: &Value,
        key: Option<&str>,
    ) -> Result<Started, ClientError> {
        let body = Self::json_body(&json!({ "definition": definition, "input": input }));
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.call(Method::POST, "/api/executions", &headers, body)
            .await
    }

    pub async fn get(&self, id: &str) -> Result<ExecutionView, ClientError> {
        self.call(Method::GET, &format!("/api/executions/{id}"), &[], None)
            .await
    }

    /// One page; `query` is the query string without `?` (`status=running&limit=50`).
    pub async fn list(&self, query: &str) -> Result<ExecutionPage, ClientError> {
        self.call(Method::GET, &format!("/api/executions?{query}"), &[], None)
            .await
    }

    pub async fn pause(&self, id: &str) -> Result<ExecutionView, ClientError> {
        let path = format!("/api/executions/{id}/pause");
        self.call(Method::POST, &path, &[], None).await
    }

    pub async fn resume(&self, id: &str) -> Result<ExecutionView, ClientError> {
        let path = format!("/api/executions/{id}/resume");
        self.call(Method::POST, &path, &[], None).await
    }

    pub async fn cancel(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<ExecutionView, ClientError> {
        let path = format!("/api/executions/{id}/cancel");
        let body = Self::json_body(&json!({ "reason": reason }));
        self.call(Method::POST, &path, &[], body).await
    }

    /// Sends a signal under the sender's `signal_id` (the same id twice is applied once).
    pub async fn signal(
        &self,
        id: &str,
        name: &str,
        payload: &Value,
        signal_id: &str,
    ) -> Result<ExecutionView, ClientError> {
        let path = format!("/api/executions/{id}/signal");
        let body = Self::json_body(&json!({ "name": name, "payload": payload, "id": signal_id }));
        self.call(Method::POST, &path, &[], body).await
    }

    /// Delivers `body` to webhook `name` (a signal hook's when `execution_id` is given, a
    /// start hook's otherwise) as delivery `delivery`, signed with `secret`. Sending the same
    /// delivery again is safe: the receipt says `applied: false`.
    pub async fn webhook(
        &self,
        name: &str,
        execution_id: Option<&str>,
        delivery: &str,
        body: &Value,
        secret: &[u8],
    ) -> Result<WebhookReceipt, ClientError> {
        let path = match execution_id {
            Some(id) => format!("/api/webhooks/{name}/{id}"),
            None => format!("/api/webhooks/{name}"),
        };
        let body = serde_json::to_vec(body).expect("JSON values serialize");
        let signature = super::webhooks::sign(secret, &body);
        let headers = [
            (super::webhooks::SIGNATURE_HEADER, signature.as_str()),
            (super::webhooks::DELIVERY_HEADER, delivery),
        ];
        self.call(
            Method::POST,
            &path,
            &headers,
            Some(("application/json", body)),
        )
        .await
    }

    /// The stored history after event `after`.
    pub async fn events(&self, id: &str, after: u64) -> Result<Vec<EventRecord>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Page {
            events: Vec<EventRecord>,
        }
        let path = format!("/api/executions/{id}/events?after={after}");
        let page: Page = self.call(Method::GET, &path, &[], None).await?;
        Ok(page.events)
    }

    /// Opens the live stream of `id`'s events after `after` (sent as `Last-Event-ID`).
    /// Opening is under the client's timeout; reading the stream is not (it follows the
    /// execution for as long as it runs): bound it with [`EventStream::next`]'s caller.
    pub async fn stream(&self, id: &str, after: u64) -> Result<EventStream, ClientError> {
        let path = format!("/api/executions/{id}/events/stream");
        let after = after.to_string();
        let request = self.build(
            Method::GET,
            &path,
            &[("accept", "text/event-stream"), ("last-event-id", &after)],
            None,
        )?;
        let opened =
            tokio::time::timeout(Duration::from_millis(self.timeout_ms), self.send(request))
                .await
                .map_err(|_| {
                    ClientError::Transport(format!("no response within {}ms", self.timeout_ms))
                })?;
        let (response, task) = opened?;
        let status = response.status();
        if !status.is_success() {
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(decode::<Value>(status, &body).unwrap_err());
        }
        Ok(EventStream {
            body: response.into_body(),
            buffer: Vec::new(),
            _task: task,
        })
    }
}

/// Aborts the connection's task when the exchange is done with it.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| {
            ClientError::Decode(format!(
                "{e}: {}",
                String::from_utf8_lossy(&body[..body.len().min(256)])
            ))
        });
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: ErrorFields,
    }
    #[derive(serde::Deserialize)]
    struct ErrorFields {
        #[serde(rename = "type")]
        kind: String,
        message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => Err(ClientError::Api {
            status: status.as_u16(),
            kind: b.error.kind,
            message: b.error.message,
        }),
        Err(_) => Err(ClientError::Api {
            status: status.as_u16(),
            kind: "unknown".into(),
            message: String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned(),
        }),
    }
}

/// A live event stream (Server-Sent Events), read one event at a time.
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
    _task: ConnectionTask,
}

impl EventStream {
    /// The next event; `None` when the server ended the stream (the execution finished, or
    /// the server shut down: reconnect with the last `seq` to find out which).
    pub async fn next(&mut self) -> Option<Result<EventRecord, ClientError>> {
        loop {
            if let Some(end) = find_blank_line(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end.0).collect();
                self.buffer.drain(..end.1 - end.0);
                match parse_block(&block) {
                    Some(parsed) => return Some(parsed),
                    // A comment (keep-alive) or an event without data.
                    None => continue,
                }
            }
            if self.buffer.len() > MAX_STREAM_EVENT_BYTES {
                return Some(Err(ClientError::Decode("stream event too large".into())));
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => return Some(Err(ClientError::Transport(e.to_string()))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Where the first event block ends: (end of block, start of the next).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_block(block: &[u8]) -> Option<Result<EventRecord, ClientError>> {
    let text = String::from_utf8_lossy(block);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(serde_json::from_str(&data).map_err(|e| ClientError::Decode(format!("event: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_blocks_parse_and_comments_are_skipped() {
        let record = r#"{"execution_id":"e","seq":3,"at_ms":5,"event":{"type":"ExecutionPaused"}}"#;
        let block = format!("id: 3\nevent: ExecutionPaused\ndata: {record}");
        let parsed = parse_block(block.as_bytes()).unwrap().unwrap();
        assert_eq!((parsed.execution_id.as_str(), parsed.seq), ("e", 3));
        assert!(parse_block(b": keep-alive").is_none());
        assert_eq!(find_blank_line(b"a\n\nb"), Some((1, 3)));
        assert_eq!(find_blank_line(b"a\r\n\r\nb"), Some((1, 5)));
        assert_eq!(find_blank_line(b"a\nb"), None);
    }

    #[test]
    fn error_bodies_decode_to_their_type() {
        let e = decode::<Value>(
            StatusCode::NOT_FOUND,
            br#"{"error":{"type":"not_found","message":"no execution with id x"}}"#,
        )
        .unwrap_err();
        assert_eq!((e.status(), e.kind()), (Some(404), Some("not_found")));
        let e = decode::<Value>(StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert_eq!(e.kind(), Some("unknown"));
    }
}
