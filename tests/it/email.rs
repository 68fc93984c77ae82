//! `email` steps against a real SMTP server on loopback: Python's aiosmtpd, started by the test
//! with its Mailbox handler, which writes each message it takes into a maildir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proctor::core::{ErrorKind, ExecutionStatus};
use proctor::email::SmtpConfig;
use proctor::EngineConfig;
use proctor_tests::*;
use serde_json::json;

/// A running aiosmtpd, killed when dropped.
pub struct SmtpServer {
    child: Child,
    pub addr: String,
    pub maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpServer {
    /// Starts aiosmtpd on a free loopback port and waits until it accepts connections.
    pub async fn start() -> SmtpServer {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap().to_string();
        drop(probe);
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail");
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &addr,
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut server = SmtpServer {
            child,
            addr,
            maildir,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&server.addr).await.is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut stderr) = server.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                panic!(
                    "aiosmtpd exited ({status}): {err}\nthe email tests need it: `pip install \
                     aiosmtpd` (as .ci/run does)"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not listen on {} in time", server.addr);
    }

    /// Every message the server took, as raw text, oldest first.
    pub fn messages(&self) -> Vec<String> {
        read_maildir(&self.maildir)
    }
}

pub fn read_maildir(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

fn config(server: &SmtpServer) -> EngineConfig {
    EngineConfig {
        smtp: Some(SmtpConfig {
            server: server.addr.clone(),
            from: "proctor@example.com".to_string(),
        }),
        ..EngineConfig::default()
    }
}

const NOTIFY: &str = r#"
name: notify
steps:
  - id: shape
    type: transform
    output: { total: "{{input.qty * 10}}" }
  - id: mail
    type: email
    depends_on: [shape]
    to: ["ops@example.com", "{{input.owner}}"]
    subject: "Order {{input.order}}"
    body: "Order {{input.order}} totals {{steps.shape.output.total}}."
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_smtp_server_with_its_idempotency_key() {
    let smtp = SmtpServer::start().await;
    let t = TestEngine::start_with_config(NOTIFY, &[], config(&smtp)).await;
    let execution = t
        .run(json!({"order": 17, "qty": 3, "owner": "kim@example.com"}))
        .await;
    assert_eq!(execution.status, ExecutionStatus::Completed);
    let output = step(&execution, "mail").output.clone().expect("output");
    assert_eq!(output["to"], json!(["ops@example.com", "kim@example.com"]));
    assert!(
        output["response"].as_str().unwrap().starts_with("250"),
        "{output}"
    );

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    let key = format!("{}:mail", execution.id);
    for expected in [
        "Subject: Order 17".to_string(),
        "From: proctor@example.com".to_string(),
        "To: ops@example.com, kim@example.com".to_string(),
        format!("X-Proctor-Idempotency-Key: {key}"),
        format!("Message-ID: {}", output["message_id"].as_str().unwrap()),
        "Order 17 totals 30.".to_string(),
    ] {
        assert!(
            message.contains(&expected),
            "{expected:?} not in:\n{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_smtp_server_the_step_fails_saying_so() {
    let t = TestEngine::start(NOTIFY, &[]).await;
    let execution = t
        .run(json!({"order": 1, "qty": 1, "owner": "kim@example.com"}))
        .await;
    assert_eq!(execution.status, ExecutionStatus::Failed);
    let error = step(&execution, "mail")
        .last_error
        .clone()
        .expect("an error");
    assert_eq!(error.kind, ErrorKind::Request);
    assert!(
        error.message.contains("no SMTP server is configured"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_address_from_a_template_fails_without_retry() {
    let smtp = SmtpServer::start().await;
    let yaml = NOTIFY.replace("body:", "retry: { max_attempts: 5 }\n    body:");
    let t = TestEngine::start_with_config(&yaml, &[], config(&smtp)).await;
    let execution = t
        .run(json!({"order": 1, "qty": 1, "owner": "not an address"}))
        .await;
    assert_eq!(execution.status, ExecutionStatus::Failed);
    let mail = step(&execution, "mail");
    assert_eq!(mail.attempt, 1);
    let error = mail.last_error.clone().expect("an error");
    assert_eq!(error.kind, ErrorKind::Request);
    assert!(
        error.message.contains("\"not an address\""),
        "{}",
        error.message
    );
    assert!(smtp.messages().is_empty());
}
