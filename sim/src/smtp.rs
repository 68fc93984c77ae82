//! The simulated mail server: a host that speaks just enough SMTP (RFC 5321: greeting, EHLO or
//! HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for the engine's `email` steps, and files every
//! message it takes into a [`Mailbox`] that outlives the host, as a real server's spool would.
//! It can be crashed, partitioned and held like any host. A test fixture, not a mail server:
//! it trusts what it is sent and bounds what it keeps.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The port the mail host listens on.
pub const SMTP_PORT: u16 = 25;
/// Longest message kept; a longer one is refused (552), as a real server's size limit would.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Longest command line; a longer one ends the session.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// One message the server took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// Simulated ms since the run began, when the server answered 250 to the message.
    pub at_ms: u64,
    pub from: String,
    pub to: Vec<String>,
    /// Its `X-Proctor-Idempotency-Key` header, if it had one.
    pub key: Option<String>,
    pub raw: String,
}

/// Every message taken, in order; shared by every life of the host.
pub type Mailbox = Arc<Mutex<Vec<Mail>>>;

/// Serves SMTP on `0.0.0.0:SMTP_PORT` of the current host until the host dies.
pub async fn serve(mailbox: Mailbox) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SMTP_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let mailbox = mailbox.clone();
        tokio::spawn(async move {
            // A client that goes away mid-session is not the server's problem.
            let _ = session(stream, mailbox).await;
        });
    }
}

async fn session(stream: turmoil::net::TcpStream, mailbox: Mailbox) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read);
    write.write_all(b"220 mail.sim ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 || line.len() > MAX_LINE_BYTES {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-mail.sim\r\n250 8BITMIME\r\n",
            "HELO" | "NOOP" => b"250 ok\r\n",
            "RSET" => {
                (from, to) = (String::new(), Vec::new());
                b"250 ok\r\n"
            }
            "MAIL" => {
                from = address(&command);
                b"250 ok\r\n"
            }
            "RCPT" => {
                to.push(address(&command));
                b"250 ok\r\n"
            }
            "DATA" if to.is_empty() => b"503 no recipients\r\n",
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let Some(raw) = data(&mut lines).await? else {
                    write.write_all(b"552 message too large\r\n").await?;
                    continue;
                };
                let key = header(&raw, proctor::email::IDEMPOTENCY_HEADER);
                mailbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Mail {
                        at_ms: crate::runner::sim_elapsed_ms(),
                        from: std::mem::take(&mut from),
                        to: std::mem::take(&mut to),
                        key,
                        raw,
                    });
                b"250 queued\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// The message's lines up to the lone `.`, dot-unstuffed; `None` past [`MAX_MESSAGE_BYTES`].
async fn data<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut R,
) -> std::io::Result<Option<String>> {
    let mut raw = String::new();
    let mut too_large = false;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text == "." {
            return Ok((!too_large).then_some(raw));
        }
        if raw.len() + text.len() > MAX_MESSAGE_BYTES {
            too_large = true;
            continue;
        }
        raw.push_str(text.strip_prefix('.').unwrap_or(text));
        raw.push('\n');
    }
}

/// `MAIL FROM:<a@b>` → `a@b`.
fn address(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command.rfind('>').unwrap_or(command.len());
    command.get(start..end).unwrap_or_default().to_string()
}

/// A header's value in `raw` (headers end at the first empty line).
fn header(raw: &str, name: &str) -> Option<String> {
    raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_headers_are_read() {
        assert_eq!(address("MAIL FROM:<a@b.example>"), "a@b.example");
        assert_eq!(address("RCPT TO:<c@d.example> NOTIFY=NEVER"), "c@d.example");
        let raw =
            "Subject: x\nX-Proctor-Idempotency-Key: e1:mail\n\nX-Proctor-Idempotency-Key: no\n";
        assert_eq!(
            header(raw, "x-proctor-idempotency-key").as_deref(),
            Some("e1:mail")
        );
        assert_eq!(header(raw, "From"), None);
    }
}
