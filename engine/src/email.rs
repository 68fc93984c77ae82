//! Sends an `email` step's message through the engine's SMTP server, over the [`Network`]
//! port (so the simulator runs it on simulated TCP), with lettre building the message and
//! speaking SMTP.
//!
//! - The message is the step's stored input, `{to, from, subject, body}`.
//! - The step's idempotency key goes into `X-Proctor-Idempotency-Key`, and the `Message-ID` is
//!   made from it: SMTP cannot promise a message arrives once (an answer lost after the server
//!   took the message means a re-send), but whoever reads the mailbox can drop the copy.
//! - The `Date` header comes from the engine's [`Clock`], not the system's.
//! - A transient SMTP answer (4xx), a timeout or a broken connection is retryable; a permanent
//!   one (5xx, a bad address) is not ([`ErrorKind::Request`]).
//! - One connection per attempt, closed with `QUIT` after it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::agent::client::connect_within;
use crate::clock::Clock;
use crate::core::{EmailCall, ErrorKind, StepError};
use crate::network::{Conn, Network};

/// The header that carries the step's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "X-Proctor-Idempotency-Key";
/// The name the engine greets the SMTP server with.
pub const HELLO_NAME: &str = "proctor.localhost";

/// Where `email` steps send: the SMTP server and the sender used when a step names none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpConfig {
    /// `host:port`.
    pub server: String,
    pub from: String,
}

/// Sends `email` steps' messages. Cheap to clone.
#[derive(Clone)]
pub struct EmailSender {
    net: Arc<dyn Network>,
    clock: Arc<dyn Clock>,
    smtp: Option<SmtpConfig>,
    connect_timeout_ms: u64,
}

impl EmailSender {
    pub fn new(
        net: Arc<dyn Network>,
        clock: Arc<dyn Clock>,
        smtp: Option<SmtpConfig>,
        connect_timeout_ms: u64,
    ) -> EmailSender {
        EmailSender {
            net,
            clock,
            smtp,
            connect_timeout_ms,
        }
    }

    /// Sends `call`'s message within its timeout. Never panics on what the server sends.
    pub async fn send(&self, call: &EmailCall) -> Result<Value, StepError> {
        let Some(smtp) = &self.smtp else {
            return Err(StepError::new(
                ErrorKind::Request,
                "no SMTP server is configured (set PROCTOR_SMTP=host:port)",
            ));
        };
        let message = self.message(call, smtp)?;
        let sent = self.deliver(smtp, &message);
        match tokio::time::timeout(Duration::from_millis(call.timeout_ms), sent).await {
            Err(_) => Err(StepError::new(
                ErrorKind::Timeout,
                format!(
                    "{} did not take the message within {}ms",
                    smtp.server, call.timeout_ms
                ),
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(response)) => {
                let to: Vec<String> = message
                    .envelope()
                    .to()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                Ok(json!({
                    "message_id": message_id(&call.idempotency_key),
                    "to": to,
                    "response": response,
                }))
            }
        }
    }

    /// The RFC 5322 message for `call`; a bad address is an error no retry fixes.
    fn message(&self, call: &EmailCall, smtp: &SmtpConfig) -> Result<Message, StepError> {
        let bad = |message: String| StepError::new(ErrorKind::Request, message);
        let text = |field: &str| call.message.get(field).and_then(Value::as_str);
        let from = text("from").unwrap_or(&smtp.from);
        let from: Mailbox = from
            .parse()
            .map_err(|e| bad(format!("from: {from:?} is not an address: {e}")))?;
        let mut to = Mailboxes::new();
        for address in call
            .message
            .get("to")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let address = address.as_str().unwrap_or_default();
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| bad(format!("to: {address:?} is not an address: {e}")))?;
            to.push(mailbox);
        }
        if to.iter().next().is_none() {
            return Err(bad("to: no recipient".to_string()));
        }
        if to.iter().count() > crate::definition::MAX_EMAIL_RECIPIENTS {
            return Err(bad(format!(
                "to: more than {} recipients",
                crate::definition::MAX_EMAIL_RECIPIENTS
            )));
        }
        let mut builder = Message::builder()
            .from(from)
            .subject(text("subject").unwrap_or_default())
            .message_id(Some(message_id(&call.idempotency_key)))
            .date(UNIX_EPOCH + Duration::from_millis(self.clock.now_ms()))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(IDEMPOTENCY_HEADER),
                call.idempotency_key.clone(),
            ));
        for mailbox in to {
            builder = builder.to(mailbox);
        }
        builder
            .body(text("body").unwrap_or_default().to_string())
            .map_err(|e| bad(format!("the message cannot be built: {e}")))
    }

    /// Connects, sends and quits; the server's answer to the message, as text.
    async fn deliver(&self, smtp: &SmtpConfig, message: &Message) -> Result<String, StepError> {
        let server = &smtp.server;
        let conn = connect_within(&*self.net, server, self.connect_timeout_ms).await?;
        let stream: Box<dyn AsyncTokioStream> = Box::new(Stream(Mutex::new(conn)));
        let hello = ClientId::Domain(HELLO_NAME.to_string());
        let mut smtp_conn = AsyncSmtpConnection::connect_with_transport(stream, &hello)
            .await
            .map_err(|e| smtp_error(server, &e))?;
        let response = smtp_conn
            .send(message.envelope(), &message.formatted())
            .await
            .map_err(|e| smtp_error(server, &e))?;
        // The message is taken; a failing QUIT changes nothing about that.
        let _ = smtp_conn.quit().await;
        let code = response.code().to_string();
        let said: Vec<&str> = response.message().collect();
        Ok(format!("{code} {}", said.join(" ")).trim().to_string())
    }
}

/// The `Message-ID` for an idempotency key (`<execution>:<step>`): the same for every attempt.
pub fn message_id(idempotency_key: &str) -> String {
    let local: String = idempotency_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<{local}@{HELLO_NAME}>")
}

fn smtp_error(server: &str, e: &lettre::transport::smtp::Error) -> StepError {
    let kind = if e.is_permanent() {
        ErrorKind::Request
    } else if e.is_transient() {
        ErrorKind::Server
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    StepError::new(kind, format!("{server}: {e}"))
}

/// The `Network`'s stream as lettre wants it: lettre asks for `Sync`, which a `Conn` need not
/// be; the mutex is only ever reached through `&mut`, so it never blocks.
struct Stream(Mutex<Box<dyn Conn>>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl Stream {
    fn conn(self: Pin<&mut Self>) -> Pin<&mut Box<dyn Conn>> {
        let conn = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        Pin::new(conn)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.conn().poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.conn().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.conn().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.conn().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Stream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        // lettre only logs it; the Network port does not expose it.
        Ok(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_the_same_for_every_attempt_and_a_valid_id() {
        let id = message_id("018bcfe5-6805-75d4:notify");
        assert_eq!(id, "<018bcfe5-6805-75d4.notify@proctor.localhost>");
        assert_eq!(id, message_id("018bcfe5-6805-75d4:notify"));
        assert_ne!(id, message_id("018bcfe5-6805-75d4:other"));
    }
}
