//! Inbound webhooks end to end: `proctor serve --webhooks FILE` runs as a child process (its
//! secrets in its environment, as in production) and is driven over loopback HTTP. A signed
//! delivery completes a waiting step with the body as the step's output, and a replay of it,
//! before or after a restart, changes nothing; a start hook makes one execution per delivery;
//! bad deliveries are refused and change nothing; a bad webhooks file stops `serve` before it
//! listens, naming the entry; no secret reaches the output, the events or the answers.
//!
//! The server harness is small and local: these tests need only start, restart and kill
//! (`tests/serve.rs` has the SIGTERM and streaming machinery they do not use). Every wait is
//! bounded and panics with what it waited for and the server's output.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use proctor::api::client::{ApiClient, ClientError};
use proctor::api::views::ExecutionView;
use proctor::api::webhooks::sign;
use proctor::event::DomainEvent;
use proctor::network::TokioNetwork;
use serde_json::{json, Value};

// Generous bounds: these tests share a loaded 2-core machine with builds and other tests.
/// From spawning `proctor serve` to its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// For an execution to reach a state.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// One request's answer.
const REQUEST_TIMEOUT_MS: u64 = 20_000;
const POLL: Duration = Duration::from_millis(25);

const PAYMENT_SECRET: &str = "payment-secret-0123456789";
const ORDER_SECRET: &str = "order-secret-9876543210";
const ACME_TOKEN: &str = "acme-token-0123456789";
const GLOBEX_TOKEN: &str = "globex-token-0123456789";

/// The approval example (`draft`, then `approval` waits for `approve`, then `publish`).
fn approval_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/approval.yaml");
    std::fs::read_to_string(path).expect("the approval example is readable")
}

/// A directory with `agents.yaml`, `tokens.yaml` (acme, globex) and `webhooks.yaml`:
/// `payment` sends `approve` to acme's executions, `order` starts acme's `approval`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write a config file");
    };
    write(
        "agents.yaml",
        "agents:\n  analyst: { example: {} }\n  fetcher: { example: {} }\n",
    );
    write(
        "tokens.yaml",
        &format!(
            "tokens:\n  - {{name: a, token: {ACME_TOKEN}, tenant: acme}}\n  \
             - {{name: g, token: {GLOBEX_TOKEN}, tenant: globex}}\n"
        ),
    );
    write(
        "webhooks.yaml",
        "webhooks:\n  \
         - { name: payment, secret_env: PAYMENT_SECRET, tenant: acme, signal: approve }\n  \
         - { name: order, secret_env: ORDER_SECRET, tenant: acme, start: approval }\n",
    );
    dir
}

/// A `proctor serve` child process; killed on drop.
struct Server {
    child: Child,
    addr: String,
    output: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `proctor serve` on `dir`'s files, with the webhook secrets in its environment.
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proctor"))
            .arg("serve")
            .arg("--db")
            .arg(dir.join("proctor.db"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--agents")
            .arg(dir.join("agents.yaml"))
            .arg("--tokens")
            .arg(dir.join("tokens.yaml"))
            .arg("--webhooks")
            .arg(dir.join("webhooks.yaml"))
            .env("PAYMENT_SECRET", PAYMENT_SECRET)
            .env("ORDER_SECRET", ORDER_SECRET)
            .env("PROCTOR_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proctor serve");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for (stream, tx) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Some(tx),
            ),
            (Box::new(child.stderr.take().unwrap()), None),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                    if let (Some(addr), Some(tx)) = (line.strip_prefix("listening on http://"), &tx)
                    {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            });
        }
        let mut server = Server {
            child,
            addr: String::new(),
            output,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => server.addr = addr,
            Err(_) => panic!(
                "proctor serve did not listen within {START_TIMEOUT:?}\n{}",
                server.output()
            ),
        }
        server
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(Arc::new(TokioNetwork), &self.addr, REQUEST_TIMEOUT_MS)
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Kills the process (a crash, as far as the database knows) and waits for it.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until(
    client: &ApiClient,
    id: &str,
    what: &str,
    done: impl Fn(&ExecutionView) -> bool,
) -> ExecutionView {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let execution = client
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("GET {id} while waiting until {what}: {e}"));
        if done(&execution) {
            return execution;
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} not {what} within {RUN_TIMEOUT:?}: {execution:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An approval execution of acme's, waiting for its signal.
async fn waiting_approval(acme: &ApiClient) -> String {
    let started = acme
        .start("approval", &json!({"text": "spring sale"}), None)
        .await
        .expect("start approval");
    let id = started.execution.id;
    wait_until(acme, &id, "waiting for approval", |e| {
        e.steps[1].status == "running"
    })
    .await;
    id
}

/// A raw webhook request: `(status, error type or "")`.
async fn raw(
    client: &ApiClient,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let (status, bytes) = client
        .request(
            Method::POST,
            path,
            headers,
            Some((content_type, body.to_vec())),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "POST {path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    let kind = value["error"]["type"].as_str().unwrap_or("").to_string();
    if kind.is_empty() == (400..600).contains(&status.as_u16()) {
        panic!("POST {path}: status {status} with body {value}");
    }
    (status.as_u16(), kind)
}

/// Request headers, owned values.
type Headers<'a> = Vec<(&'a str, String)>;

fn signal_count(events: &[proctor::event::EventRecord]) -> usize {
    events
        .iter()
        .filter(|r| matches!(r.event, DomainEvent::SignalReceived { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_completes_the_waiting_step_once() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let anonymous = server.client();
    let acme = anonymous.with_token(ACME_TOKEN);
    let globex = anonymous.with_token(GLOBEX_TOKEN);
    acme.register_definition(&approval_yaml()).await.unwrap();
    globex.register_definition(&approval_yaml()).await.unwrap();
    let id = waiting_approval(&acme).await;
    let path = format!("/api/webhooks/payment/{id}");
    let body = br#"{"by": "ana"}"#;
    let good = sign(PAYMENT_SECRET.as_bytes(), body);

    // Refused, each with the status and type it should have, and none changes anything.
    // (what, headers, content type, body, the answer's status and error type)
    type Refusal<'a> = (&'a str, Headers<'a>, &'a str, &'a [u8], (u16, &'a str));
    let refused: Vec<Refusal> = vec![
        (
            "no signature",
            vec![("x-proctor-delivery", "d-1".into())],
            "application/json",
            body,
            (401, "invalid_signature"),
        ),
        (
            "the other hook's secret",
            vec![
                ("x-proctor-signature", sign(ORDER_SECRET.as_bytes(), body)),
                ("x-proctor-delivery", "d-1".into()),
            ],
            "application/json",
            body,
            (401, "invalid_signature"),
        ),
        (
            "a body the signature is not for",
            vec![
                ("x-proctor-signature", good.clone()),
                ("x-proctor-delivery", "d-1".into()),
            ],
            "application/json",
            br#"{"by": "eve"}"#,
            (401, "invalid_signature"),
        ),
        (
            "a bearer token instead of a signature",
            vec![
                ("authorization", format!("Bearer {ACME_TOKEN}")),
                ("x-proctor-delivery", "d-1".into()),
            ],
            "application/json",
            body,
            (401, "invalid_signature"),
        ),
        (
            "no delivery id",
            vec![("x-proctor-signature", good.clone())],
            "application/json",
            body,
            (400, "bad_request"),
        ),
        (
            "a delivery id too long",
            vec![
                ("x-proctor-signature", good.clone()),
                ("x-proctor-delivery", "d".repeat(129)),
            ],
            "application/json",
            body,
            (400, "bad_request"),
        ),
        (
            "not JSON",
            vec![
                ("x-proctor-signature", good.clone()),
                ("x-proctor-delivery", "d-1".into()),
            ],
            "text/plain",
            body,
            (415, "unsupported_media_type"),
        ),
    ];
    for (what, headers, content_type, sent, (status, kind)) in &refused {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = raw(&anonymous, &path, &headers, content_type, sent).await;
        assert_eq!(got, (*status, kind.to_string()), "{what}");
    }
    let unknown = raw(
        &anonymous,
        &format!("/api/webhooks/nobody/{id}"),
        &[
            ("x-proctor-signature", &good),
            ("x-proctor-delivery", "d-1"),
        ],
        "application/json",
        body,
    )
    .await;
    assert_eq!(unknown, (404, "not_found".to_string()), "an unknown hook");
    let still = acme.get(&id).await.unwrap();
    assert_eq!(
        (still.status.as_str(), still.steps[1].status.as_str()),
        ("running", "running"),
        "a refused delivery changed the execution"
    );
    assert_eq!(signal_count(&acme.events(&id, 0).await.unwrap()), 0);

    // Another tenant's execution is not the hook's to signal.
    let theirs = globex
        .start("approval", &json!({"text": "x"}), None)
        .await
        .unwrap()
        .execution
        .id;
    let other = anonymous
        .webhook(
            "payment",
            Some(&theirs),
            "d-x",
            &json!({"by": "ana"}),
            PAYMENT_SECRET.as_bytes(),
        )
        .await;
    assert!(
        matches!(other, Err(ClientError::Api { status: 404, .. })),
        "{other:?}"
    );

    // The delivery: applied, and the payload is the waiting step's output.
    let payload = json!({"by": "ana"});
    let receipt = anonymous
        .webhook(
            "payment",
            Some(&id),
            "d-1",
            &payload,
            PAYMENT_SECRET.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            receipt.webhook.as_str(),
            receipt.delivery.as_str(),
            receipt.execution_id.as_str()
        ),
        ("payment", "d-1", id.as_str())
    );
    assert!(receipt.applied, "{receipt:?}");
    let done = wait_until(&acme, &id, "completed", |e| e.status == "completed").await;
    let approval = &done.steps[1];
    assert_eq!(approval.output.as_ref().unwrap()["payload"], payload);
    assert_eq!(
        approval.output.as_ref().unwrap()["signal_id"],
        "webhook:payment:d-1"
    );
    assert_eq!(done.output, Some(json!({"approved_by": "ana"})));

    // The same delivery again (a sender that lost the answer): applied once.
    let again = anonymous
        .webhook(
            "payment",
            Some(&id),
            "d-1",
            &payload,
            PAYMENT_SECRET.as_bytes(),
        )
        .await
        .unwrap();
    assert!(!again.applied, "{again:?}");
    let events = acme.events(&id, 0).await.unwrap();
    assert_eq!(signal_count(&events), 1, "{events:#?}");
    let audit: Vec<&DomainEvent> = events
        .iter()
        .map(|r| &r.event)
        .filter(|e| matches!(e, DomainEvent::Audit { action, .. } if action == "signal"))
        .collect();
    assert!(
        matches!(audit[..], [DomainEvent::Audit { actor: Some(actor), .. }] if actor == "webhook:payment"),
        "{audit:?}"
    );

    // And after a crash and restart: the replay key is durable.
    let before = server.kill();
    let server = Server::start(dir.path());
    let again = server
        .client()
        .webhook(
            "payment",
            Some(&id),
            "d-1",
            &payload,
            PAYMENT_SECRET.as_bytes(),
        )
        .await
        .unwrap();
    assert!(!again.applied, "{again:?}");
    let acme = server.client().with_token(ACME_TOKEN);
    assert_eq!(acme.events(&id, 0).await.unwrap(), events);
    // A new delivery to the ended execution is refused: it would never be taken.
    let late = server
        .client()
        .webhook(
            "payment",
            Some(&id),
            "d-2",
            &payload,
            PAYMENT_SECRET.as_bytes(),
        )
        .await;
    assert!(
        matches!(late, Err(ClientError::Api { status: 409, .. })),
        "{late:?}"
    );

    // No secret in the output (logs at debug), the events or anything answered.
    let output = format!("{before}{}", server.kill());
    let history = serde_json::to_string(&events).unwrap();
    for secret in [PAYMENT_SECRET, ORDER_SECRET] {
        assert!(
            !output.contains(secret),
            "a secret in the output:\n{output}"
        );
        assert!(!history.contains(secret), "a secret in the events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_hook_makes_one_execution_per_delivery() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let anonymous = server.client();
    let acme = anonymous.with_token(ACME_TOKEN);
    let secret = ORDER_SECRET.as_bytes();

    // Before the definition is registered: 404, and nothing is made.
    let early = anonymous
        .webhook("order", None, "o-0", &json!({"text": "x"}), secret)
        .await;
    assert!(
        matches!(early, Err(ClientError::Api { status: 404, .. })),
        "{early:?}"
    );
    acme.register_definition(&approval_yaml()).await.unwrap();

    let input = json!({"text": "order 17"});
    let first = anonymous
        .webhook("order", None, "o-1", &input, secret)
        .await
        .unwrap();
    assert!(first.applied, "{first:?}");
    let again = anonymous
        .webhook("order", None, "o-1", &input, secret)
        .await
        .unwrap();
    assert!(!again.applied, "{again:?}");
    assert_eq!(again.execution_id, first.execution_id);
    let execution = acme.get(&first.execution_id).await.unwrap();
    assert_eq!(execution.input, input);
    assert_eq!(execution.tenant, "acme");
    assert_eq!(execution.definition, "approval");
    assert_eq!(
        execution.idempotency_key.as_deref(),
        Some("webhook:order:o-1")
    );
    wait_until(&acme, &first.execution_id, "started", |e| {
        e.status == "running"
    })
    .await;

    // The same delivery id with another body is a conflict, not a second execution.
    let changed = anonymous
        .webhook("order", None, "o-1", &json!({"text": "order 18"}), secret)
        .await;
    assert!(
        matches!(&changed, Err(ClientError::Api { status: 409, kind, .. }) if kind == "idempotency_key_reused"),
        "{changed:?}"
    );
    // A signal hook's route shape is refused for a start hook, and the other way round.
    let body = br#"{"text": "x"}"#;
    let signature = sign(secret, body);
    let headers = [
        ("x-proctor-signature", signature.as_str()),
        ("x-proctor-delivery", "o-9"),
    ];
    let wrong = raw(
        &anonymous,
        &format!("/api/webhooks/order/{}", first.execution_id),
        &headers,
        "application/json",
        body,
    )
    .await;
    assert_eq!(wrong, (404, "not_found".to_string()));
    let signature = sign(PAYMENT_SECRET.as_bytes(), body);
    let headers = [
        ("x-proctor-signature", signature.as_str()),
        ("x-proctor-delivery", "o-9"),
    ];
    let wrong = raw(
        &anonymous,
        "/api/webhooks/payment",
        &headers,
        "application/json",
        body,
    )
    .await;
    assert_eq!(wrong, (404, "not_found".to_string()));

    // Another delivery is another execution.
    let second = anonymous
        .webhook("order", None, "o-2", &input, secret)
        .await
        .unwrap();
    assert!(second.applied);
    assert_ne!(second.execution_id, first.execution_id);
    let mut listed: Vec<String> = acme
        .list("")
        .await
        .unwrap()
        .executions
        .into_iter()
        .map(|e| e.id)
        .collect();
    listed.sort();
    let mut made = vec![first.execution_id.clone(), second.execution_id.clone()];
    made.sort();
    assert_eq!(listed, made, "exactly one execution per delivery");
}

/// Runs `proctor serve` on `webhooks_yaml` with `env`; it must refuse to start (exit 2) with
/// every fragment of `expected` in its error, and without printing a secret.
fn refused_config(webhooks_yaml: &str, env: &[(&str, &str)], expected: &[&str]) {
    let dir = workdir();
    let file = dir.path().join("webhooks.yaml");
    std::fs::write(&file, webhooks_yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proctor"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--agents"])
        .arg(dir.path().join("agents.yaml"))
        .arg("--db")
        .arg(dir.path().join("p.db"))
        .arg("--webhooks")
        .arg(&file)
        .envs(env.iter().copied())
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for fragment in expected {
        let want = format!("{}: {fragment}", file.display());
        assert!(stderr.contains(&want), "no {want:?} in:\n{stderr}");
    }
    assert!(!stdout.contains("listening"), "{stdout}");
    for (_, value) in env {
        assert!(!stderr.contains(value), "a secret in the error:\n{stderr}");
    }
    assert!(
        !dir.path().join("p.db").exists(),
        "a refused start created the database"
    );
}

#[test]
fn serve_refuses_a_bad_webhooks_file_naming_the_entry() {
    refused_config(
        "webhooks:\n  - { name: pay, secret_env: NOT_SET_ANYWHERE, signal: approve }\n",
        &[],
        &["webhooks[0] (pay): environment variable \"NOT_SET_ANYWHERE\" is not set"],
    );
    refused_config(
        "webhooks:\n  - { name: pay, secret_env: SHORT_HOOK_SECRET, signal: approve }\n",
        &[("SHORT_HOOK_SECRET", "tiny-secret")],
        &["webhooks[0] (pay): the secret in $SHORT_HOOK_SECRET must be 16 to 1024 bytes"],
    );
    refused_config(
        "webhooks:\n  - { name: pay, secret_env: HOOK_SECRET_A, signal: approve }\n  \
         - { name: pay, secret_env: HOOK_SECRET_A, start: approval, retries: 3 }\n  \
         - { name: pay, secret_env: HOOK_SECRET_A, start: approval }\n",
        &[("HOOK_SECRET_A", "0123456789abcdef-long-enough")],
        &[
            "webhooks[1] (pay): unknown field `retries`",
            "webhooks[2] (pay): the name \"pay\" appears twice",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_secret_works_with_a_warning() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("webhooks.yaml"),
        "webhooks:\n  - { name: payment, secret: inline-secret-0123456789, tenant: acme, signal: approve }\n  \
         - { name: order, secret_env: ORDER_SECRET, tenant: acme, start: approval }\n",
    )
    .unwrap();
    let server = Server::start(dir.path());
    let acme = server.client().with_token(ACME_TOKEN);
    acme.register_definition(&approval_yaml()).await.unwrap();
    let id = waiting_approval(&acme).await;
    let receipt = server
        .client()
        .webhook(
            "payment",
            Some(&id),
            "i-1",
            &json!({"by": "ana"}),
            b"inline-secret-0123456789",
        )
        .await
        .unwrap();
    assert!(receipt.applied);
    let output = server.kill();
    assert!(
        output.contains("warning: webhook 'payment' has its secret in")
            && output.contains("prefer `secret_env`"),
        "{output}"
    );
    assert!(!output.contains("warning: webhook 'order'"), "{output}");
    assert!(!output.contains("inline-secret-0123456789"), "{output}");
}

/// The README's recipe for a sender's signature (`openssl dgst -sha256 -hmac`, its last
/// field) gives exactly what `sign` gives, and so what the server (tested above with `sign`)
/// accepts.
#[test]
fn the_readme_openssl_recipe_signs_as_the_server_checks() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("the README is readable");
    let recipe = "openssl dgst -sha256 -hmac \"$APPROVAL_HOOK_SECRET\" | sed 's/^.* //'";
    assert!(
        readme.contains(recipe),
        "the README no longer shows {recipe}"
    );
    for body in [
        r#"{"by": "ana"}"#,
        r#"{"name": "Zoë ✓", "n": [1, 2.5, null]}"#,
    ] {
        let script = format!("printf '%s' \"$BODY\" | {recipe}");
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("BODY", body)
            .env("APPROVAL_HOOK_SECRET", PAYMENT_SECRET)
            .output()
            .expect("run sh (openssl must be installed)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hex = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            format!("sha256={}", hex.trim()),
            sign(PAYMENT_SECRET.as_bytes(), body.as_bytes()),
            "for {body}"
        );
    }
}
