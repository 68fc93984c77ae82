//! `proctor serve` end to end: the binary runs as a child process on its own temporary
//! directory and is driven over real HTTP by the typed client (and, in
//! `curl_script_drives_the_api`, by curl): an SSE stream followed to completion and across a
//! restart, tenants kept apart by bearer tokens, bad requests answered with 4xx JSON errors
//! that store nothing, and a SIGTERM that lets the agent call in flight finish.
//!
//! Every wait is bounded and panics with what it waited for and the server's output; every
//! server is killed when its guard drops, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use proctor::api::client::{ApiClient, ClientError, EventStream};
use proctor::event::{DomainEvent, EventRecord};
use proctor::network::TokioNetwork;
use serde_json::{json, Value};
use tokio::sync::mpsc;

// Generous bounds: these tests share a loaded 2-core machine with builds and other tests.
/// From spawning `proctor serve` to its `listening on` line (recovery runs first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// From SIGTERM to the exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// For an execution (a few seconds of agent delays) to reach a state.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Between two events on a stream.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// One request's answer.
const REQUEST_TIMEOUT_MS: u64 = 20_000;
/// The curl script, start to end (its own steps are bounded more tightly).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
/// How often a poll looks again.
const POLL: Duration = Duration::from_millis(25);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn read_example(name: &str) -> String {
    std::fs::read_to_string(example(name)).expect("examples are readable")
}

/// A temporary directory holding `agents.yaml` (and, once a server ran, `proctor.db`).
fn workdir(agents_yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("agents.yaml"), agents_yaml).expect("write agents.yaml");
    dir
}

/// A chain `s1 -> s2 -> ... -> sN`, every step calling `agent`.
fn chain(name: &str, steps: usize, agent: &str) -> String {
    let mut yaml = format!("name: {name}\nversion: 1\nsteps:\n");
    for i in 1..=steps {
        yaml.push_str(&format!(
            "  - id: s{i}\n    type: agent_task\n    agent: {agent}\n    input: {{ n: {i} }}\n"
        ));
        if i > 1 {
            yaml.push_str(&format!("    depends_on: [s{}]\n", i - 1));
        }
    }
    yaml.push_str(&format!(
        "output:\n  last: \"{{{{steps.s{steps}.output.echo.n}}}}\"\n"
    ));
    yaml
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Copies `from` into `into` line by line, and sends each line on `tx` (if any).
fn pipe_lines(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    tx: Option<mpsc::UnboundedSender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            {
                let mut all = into.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
            if let Some(tx) = &tx {
                // Nobody listening any more is fine: `into` has every line.
                let _ = tx.send(line);
            }
        }
    })
}

/// A `proctor serve` child process; killed (SIGKILL) on drop unless it already exited.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`, from its `listening on http://...` line.
    addr: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exited: bool,
}

/// How a server ended.
struct Exited {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Exited {
    /// Asserts a clean exit (0) and returns the `stopped:` line's counts: (agent calls in
    /// flight when draining began, calls left for recovery).
    fn stopped(&self) -> (usize, usize) {
        assert!(
            self.status.success(),
            "proctor serve exited with {} after SIGTERM\n{}",
            self.status,
            self.output()
        );
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("stopped: "))
            .unwrap_or_else(|| panic!("no `stopped:` line after SIGTERM\n{}", self.output()));
        let parsed = line
            .strip_prefix("stopped: ")
            .and_then(|rest| rest.split_once(" agent call(s) were in flight, "))
            .and_then(|(n, rest)| Some((n, rest.strip_suffix(" left for recovery")?)))
            .and_then(|(n, m)| Some((n.parse().ok()?, m.parse().ok()?)));
        parsed.unwrap_or_else(|| panic!("unexpected `stopped:` line: {line:?}"))
    }

    fn output(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

impl Server {
    /// Starts `proctor serve` on `dir`'s database and agents file, on a free port, with
    /// `extra` arguments; returns once it listens.
    async fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_proctor"))
            .arg("serve")
            .arg("--db")
            .arg(dir.join("proctor.db"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--agents")
            .arg(dir.join("agents.yaml"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proctor serve");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, mut lines) = mpsc::unbounded_channel();
        let readers = vec![
            pipe_lines(child.stdout.take().unwrap(), stdout.clone(), Some(tx)),
            pipe_lines(child.stderr.take().unwrap(), stderr.clone(), None),
        ];
        // The guard exists before the first wait: a panic from here on kills the child.
        let mut server = Server {
            child,
            addr: String::new(),
            stdout,
            stderr,
            readers,
            exited: false,
        };
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.recv().await {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some(addr.trim().to_string());
                }
            }
            None
        })
        .await;
        match listening {
            Ok(Some(addr)) => server.addr = addr,
            Ok(None) => panic!("proctor serve exited before listening\n{}", server.output()),
            Err(_) => panic!(
                "proctor serve printed no `listening on` line within {START_TIMEOUT:?}\n{}",
                server.output()
            ),
        }
        server
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(Arc::new(TokioNetwork), &self.addr, REQUEST_TIMEOUT_MS)
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Sends SIGTERM (as a service manager would).
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits (bounded) for the process to exit after [`Server::sigterm`].
    async fn wait_exit(mut self) -> Exited {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "proctor serve still running {EXIT_TIMEOUT:?} after SIGTERM\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        self.exited = true;
        // The pipes close with the process: the readers have every line once they end.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        Exited {
            status,
            stdout,
            stderr,
        }
    }

    async fn terminate(self) -> Exited {
        self.sigterm();
        self.wait_exit().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The next event, or `None` when the server ended the stream; panics on a stream error or
/// after [`EVENT_TIMEOUT`] without one.
async fn next_event(stream: &mut EventStream, what: &str) -> Option<EventRecord> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(None) => None,
        Ok(Some(Ok(record))) => Some(record),
        Ok(Some(Err(e))) => panic!("{what}: the stream failed: {e}"),
        Err(_) => panic!("{what}: no event (nor the stream's end) within {EVENT_TIMEOUT:?}"),
    }
}

/// Every event until the server ends the stream.
async fn read_to_end(stream: &mut EventStream, what: &str) -> Vec<EventRecord> {
    let mut records = Vec::new();
    while let Some(record) = next_event(stream, what).await {
        records.push(record);
    }
    records
}

fn seqs(records: &[EventRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn kinds(records: &[EventRecord]) -> Vec<&'static str> {
    records.iter().map(|r| r.event.kind()).collect()
}

/// Polls the execution until `done` holds for it (bounded by [`RUN_TIMEOUT`]).
async fn wait_until(
    client: &ApiClient,
    id: &str,
    what: &str,
    done: impl Fn(&proctor::api::views::ExecutionView) -> bool,
) -> proctor::api::views::ExecutionView {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let execution = client
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("GET execution {id} while waiting until {what}: {e}"));
        if done(&execution) {
            return execution;
        }
        if Instant::now() > deadline {
            panic!("execution {id} not {what} within {RUN_TIMEOUT:?}: {execution:#?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks an error response: `status`, and a JSON body `{"error": {"type": kind, "message"}}`
/// with a message; returns the message, or what is wrong.
fn check_error(
    what: &str,
    response: Result<(StatusCode, hyper::body::Bytes), ClientError>,
    status: u16,
    kind: &str,
) -> Result<String, String> {
    let (got, body) = response.map_err(|e| format!("{what}: no response: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    if got.as_u16() != status {
        return Err(format!(
            "{what}: status {got}, expected {status}; body: {text}"
        ));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        format!("{what}: HTTP {got} as expected, but the body is not a JSON error ({e}): {text:?}")
    })?;
    if value["error"]["type"] != kind {
        return Err(format!("{what}: error type is not {kind:?} in {value}"));
    }
    match value["error"]["message"].as_str() {
        Some(message) if !message.is_empty() => Ok(message.to_string()),
        _ => Err(format!("{what}: no error message in {value}")),
    }
}

/// [`check_error`], panicking on a mismatch.
fn assert_error(
    what: &str,
    response: Result<(StatusCode, hyper::body::Bytes), ClientError>,
    status: u16,
    kind: &str,
) -> String {
    check_error(what, response, status, kind).unwrap_or_else(|problem| panic!("{problem}"))
}

fn api_error(what: &str, result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, kind, .. }) => (status, kind),
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

/// Streams an execution of the example diamond (slow agents, one retry, two parallel
/// branches) from event 0 to its end: the stream carries every event once, in order, ends
/// after `ExecutionCompleted`, and equals the stored history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_an_execution_over_sse_to_completion() {
    let dir = workdir(
        "agents:\n  fetcher: { example: { delay_ms: 150, fail_first: 1 } }\n  analyst: { example: { delay_ms: 150 } }\n",
    );
    let server = Server::start(dir.path(), &[]).await;
    let client = server.client();
    assert_eq!(client.health().await.unwrap(), json!({"status": "ok"}));
    let registered = client
        .register_definition(&read_example("diamond.yaml"))
        .await
        .unwrap();
    assert_eq!(
        (registered.name.as_str(), registered.version),
        ("diamond", 1)
    );
    assert!(registered.created);

    let input = json!({"text": "hello"});
    let started = client
        .start("diamond", &input, Some("follow-1"))
        .await
        .unwrap();
    assert!(started.created, "{started:?}");
    let id = started.execution.id.clone();
    assert_eq!(
        started.execution.idempotency_key.as_deref(),
        Some("follow-1")
    );

    let mut stream = client.stream(&id, 0).await.unwrap();
    let streamed = read_to_end(&mut stream, "the diamond's stream").await;
    let n = streamed.len() as u64;
    assert_eq!(
        seqs(&streamed),
        (1..=n).collect::<Vec<_>>(),
        "seqs with a gap or a repeat: {:?}",
        kinds(&streamed)
    );
    assert!(streamed.iter().all(|r| r.execution_id == id));
    let last = streamed.last().expect("at least one event");
    assert!(
        matches!(last.event, DomainEvent::ExecutionCompleted { .. }),
        "the stream ended on {:?}: {:?}",
        last.event.kind(),
        kinds(&streamed)
    );
    for kind in ["ExecutionStarted", "StepRetrying", "StepCompleted"] {
        assert!(
            kinds(&streamed).contains(&kind),
            "no {kind}: {:?}",
            kinds(&streamed)
        );
    }
    assert_eq!(
        streamed.iter().filter(|r| r.event.is_terminal()).count(),
        1,
        "one terminal event"
    );

    let history = client.events(&id, 0).await.unwrap();
    assert_eq!(
        history, streamed,
        "the stream differs from the stored history"
    );
    let execution = client.get(&id).await.unwrap();
    assert_eq!(execution.status, "completed");
    assert_eq!(
        execution.output.as_ref().unwrap()["summary"],
        "hello has 5 characters"
    );

    // A finished execution's stream replays what comes after `after`, then ends.
    let mut replay = client.stream(&id, 3).await.unwrap();
    let tail = read_to_end(&mut replay, "the replay after 3").await;
    assert_eq!(tail, history[3..].to_vec());

    // The same start again (a client retrying after a lost reply) finds the same execution
    // and changes nothing.
    let again = client
        .start("diamond", &input, Some("follow-1"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.execution.id, id);
    assert_eq!(again.execution.status, "completed");
    assert_eq!(client.events(&id, 0).await.unwrap(), history);

    server.terminate().await.stopped();
}

/// Restarts the server while a client follows an execution's stream: the stream ends at the
/// shutdown, the client reconnects to the new server with the last `seq` it saw, and the two
/// parts together are the whole history, without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_no_event() {
    const STEPS: usize = 6;
    let dir = workdir("agents:\n  slow: { example: { delay_ms: 200 } }\n");
    let server = Server::start(dir.path(), &[]).await;
    let client = server.client();
    client
        .register_definition(&chain("long", STEPS, "slow"))
        .await
        .unwrap();
    let input = json!({"run": 1});
    let started = client
        .start("long", &input, Some("restart-1"))
        .await
        .unwrap();
    assert!(started.created);
    let id = started.execution.id.clone();

    // Read until s2 completed: s3..s6 (at least 800 ms of agent delays) are still to come.
    let mut stream = client.stream(&id, 0).await.unwrap();
    let mut before = Vec::new();
    loop {
        let record = next_event(&mut stream, "before the restart")
            .await
            .unwrap_or_else(|| panic!("the stream ended early: {:?}", kinds(&before)));
        let s2_done =
            matches!(&record.event, DomainEvent::StepCompleted { step, .. } if step == "s2");
        before.push(record);
        if s2_done {
            break;
        }
    }

    // SIGTERM: the server ends the stream (cleanly: the body ends, the connection is not
    // just cut), finishes the agent call in flight, and exits.
    server.sigterm();
    before.extend(read_to_end(&mut stream, "the stream during shutdown").await);
    drop(stream);
    let exited = server.wait_exit().await;
    let (_in_flight, left) = exited.stopped();
    assert_eq!(
        left,
        0,
        "the default grace (10 s) outlasts a 200 ms call\n{}",
        exited.output()
    );
    assert!(
        !before.iter().any(|r| r.event.is_terminal()),
        "draining starts no agent call, so the execution cannot have finished: {:?}",
        kinds(&before)
    );
    let last_seen = before.last().unwrap().seq;

    // A new server on the same database, on another port: recovery resumes the execution.
    let server = Server::start(dir.path(), &[]).await;
    let client = server.client();
    let again = client
        .start("long", &input, Some("restart-1"))
        .await
        .unwrap();
    assert!(!again.created, "the idempotency key survives the restart");
    assert_eq!(again.execution.id, id);

    let mut stream = client.stream(&id, last_seen).await.unwrap();
    let after = read_to_end(&mut stream, "after the restart").await;
    let all: Vec<EventRecord> = before.iter().chain(&after).cloned().collect();
    let n = all.len() as u64;
    assert_eq!(
        seqs(&all),
        (1..=n).collect::<Vec<_>>(),
        "before the restart {:?}, after {:?}",
        seqs(&before),
        seqs(&after)
    );
    assert!(
        matches!(
            all.last().unwrap().event,
            DomainEvent::ExecutionCompleted { .. }
        ),
        "{:?}",
        kinds(&all)
    );
    let execution = client.get(&id).await.unwrap();
    assert_eq!(execution.status, "completed");
    assert_eq!(execution.output, Some(json!({"last": STEPS})));
    assert_eq!(
        client.events(&id, 0).await.unwrap(),
        all,
        "the streamed events differ from the stored history"
    );

    server.terminate().await.stopped();
}

/// With a tokens file, every request needs a known token, and a tenant sees only its own
/// executions: another tenant's answers 404, as a missing one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_tenants() {
    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-9876543210xx";
    let dir = workdir("agents:\n  quick: { example: {} }\n");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: alice, token: {ALICE}, tenant: acme}}\n  - {{name: bob, token: {BOB}, tenant: globex}}\n"
        ),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--tokens", tokens.to_str().unwrap()]).await;
    let anonymous = server.client();
    let alice = anonymous.with_token(ALICE);
    let bob = anonymous.with_token(BOB);
    let stranger = anonymous.with_token("not-a-known-token-at-all");

    // No token, a wrong one, or a malformed header: 401 with a JSON error.
    assert_error(
        "no token",
        anonymous
            .request(Method::GET, "/api/executions", &[], None)
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        "an unknown token",
        stranger
            .request(Method::GET, "/api/executions", &[], None)
            .await,
        401,
        "unauthorized",
    );
    assert_error(
        "not a bearer token",
        anonymous
            .request(
                Method::GET,
                "/api/executions",
                &[("authorization", &format!("Basic {ALICE}"))],
                None,
            )
            .await,
        401,
        "unauthorized",
    );
    assert_eq!(
        api_error(
            "start without a token",
            anonymous.start("two", &json!({}), None).await
        ),
        (401, "unauthorized".to_string())
    );

    alice
        .register_definition(&chain("two", 2, "quick"))
        .await
        .unwrap();
    let started = alice.start("two", &json!({}), None).await.unwrap();
    let id = started.execution.id.clone();
    assert_eq!(started.execution.tenant, "acme");
    let done = wait_until(&alice, &id, "completed", |e| e.status == "completed").await;
    assert_eq!(done.tenant, "acme");
    let history = alice.events(&id, 0).await.unwrap();

    // Bob (globex) sees none of it: not the execution, its events, its stream, its
    // definition; nor can he cancel it.
    let not_found = (404, "not_found".to_string());
    assert_eq!(api_error("bob GET", bob.get(&id).await), not_found);
    assert_eq!(api_error("bob events", bob.events(&id, 0).await), not_found);
    assert_eq!(
        api_error("bob stream", bob.stream(&id, 0).await.map(|_| ())),
        not_found
    );
    assert_eq!(
        api_error("bob cancel", bob.cancel(&id, None).await),
        not_found
    );
    assert_eq!(
        api_error(
            "bob starts acme's definition",
            bob.start("two", &json!({}), None).await
        ),
        not_found
    );
    assert_error(
        "bob reads acme's definition",
        bob.request(Method::GET, "/api/definitions/two", &[], None)
            .await,
        404,
        "not_found",
    );

    let alices = alice.list("").await.unwrap();
    assert_eq!(
        alices
            .executions
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let bobs = bob.list("").await.unwrap();
    assert!(bobs.executions.is_empty(), "{bobs:?}");

    // Bob's cancel changed nothing.
    assert_eq!(alice.get(&id).await.unwrap().status, "completed");
    assert_eq!(alice.events(&id, 0).await.unwrap(), history);

    server.terminate().await.stopped();
}

/// Every kind of bad request is a 4xx with a JSON error, and none stores anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_json_error_and_stores_nothing() {
    let dir = workdir("agents:\n  analyst: { example: {} }\n");
    let server = Server::start(dir.path(), &[]).await;
    let client = server.client();
    let post = |path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .request(Method::POST, path, &[], Some((content_type, body)))
                .await
        }
    };
    let json_type = "application/json";

    assert_error(
        "malformed JSON",
        post(
            "/api/executions",
            json_type,
            b"{\"definition\": \"x\",".to_vec(),
        )
        .await,
        400,
        "bad_request",
    );
    let message = assert_error(
        "an unknown field",
        post(
            "/api/executions",
            json_type,
            br#"{"definition": "x", "inptu": {}}"#.to_vec(),
        )
        .await,
        400,
        "bad_request",
    );
    assert!(message.contains("inptu"), "{message}");
    assert_error(
        "a start that is not JSON",
        post(
            "/api/executions",
            "text/plain",
            br#"{"definition": "x"}"#.to_vec(),
        )
        .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        "a definition that is neither YAML nor JSON",
        post(
            "/api/definitions",
            "text/plain",
            read_example("diamond.yaml").into_bytes(),
        )
        .await,
        415,
        "unsupported_media_type",
    );
    let over = proctor::api::MAX_BODY_BYTES + 1;
    let mut big_start = br#"{"definition": "x", "input": {"pad": ""#.to_vec();
    big_start.resize(over - 3, b'a');
    big_start.extend_from_slice(br#""}}"#);
    assert_eq!(big_start.len(), over);
    assert_error(
        "a start body over 1 MiB",
        post("/api/executions", json_type, big_start).await,
        413,
        "payload_too_large",
    );
    let message = assert_error(
        "a dependency cycle",
        post(
            "/api/definitions",
            "application/yaml",
            read_example("cycle.yaml").into_bytes(),
        )
        .await,
        422,
        "invalid_definition",
    );
    assert!(
        message.contains("step 'a'") && message.contains("dependency cycle"),
        "{message}"
    );
    let message = assert_error(
        "an unknown definition",
        post(
            "/api/executions",
            json_type,
            br#"{"definition": "nowhere", "input": {}}"#.to_vec(),
        )
        .await,
        404,
        "not_found",
    );
    assert!(message.contains("nowhere"), "{message}");
    assert_error(
        "an unknown execution",
        client
            .request(Method::GET, "/api/executions/nosuchexecution", &[], None)
            .await,
        404,
        "not_found",
    );
    assert_error(
        "an unknown route",
        client.request(Method::GET, "/api/nothing", &[], None).await,
        404,
        "not_found",
    );
    assert_error(
        "a wrong method",
        client
            .request(Method::DELETE, "/api/executions", &[], None)
            .await,
        405,
        "method_not_allowed",
    );
    assert_error(
        "an unknown status filter",
        client
            .request(Method::GET, "/api/executions?status=sleeping", &[], None)
            .await,
        400,
        "bad_request",
    );

    // Nothing was stored, and the server still serves.
    let (status, body) = client
        .request(Method::GET, "/api/definitions", &[], None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let definitions: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(definitions, json!({"definitions": []}));
    let executions = client.list("").await.unwrap();
    assert!(executions.executions.is_empty(), "{executions:?}");
    assert_eq!(client.health().await.unwrap(), json!({"status": "ok"}));

    // Failures answered by axum's own extractors rather than the API's (a raw body, a path
    // segment) must have the same JSON shape. Checked last and together, so that one of them
    // failing does not hide the rest of this test, nor the other.
    let mut big_definition = b"name: big\n# ".to_vec();
    big_definition.resize(over, b'a');
    let problems: Vec<String> = [
        check_error(
            "a definition body over 1 MiB",
            post("/api/definitions", "application/yaml", big_definition).await,
            413,
            "payload_too_large",
        ),
        check_error(
            "a path segment that is not UTF-8",
            client
                .request(Method::GET, "/api/executions/%FF", &[], None)
                .await,
            400,
            "bad_request",
        ),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let (status, body) = client
        .request(Method::GET, "/api/definitions", &[], None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"definitions": []})
    );

    server.terminate().await.stopped();
}

/// SIGTERM while an agent call is in flight: the call is let finish (within the grace
/// period) and its result stored before the exit; the next server's recovery runs the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_agent_call_finish() {
    let dir = workdir("agents:\n  slow: { example: { delay_ms: 800 } }\n");
    let grace = ["--shutdown-grace-ms", "5000"];
    let server = Server::start(dir.path(), &grace).await;
    let client = server.client();
    client
        .register_definition(&chain("pair", 2, "slow"))
        .await
        .unwrap();
    let started = client
        .start("pair", &json!({}), Some("drain-1"))
        .await
        .unwrap();
    let id = started.execution.id.clone();
    wait_until(&client, &id, "running s1", |e| {
        e.steps[0].status == "running"
    })
    .await;

    let exited = server.terminate().await;
    let stopped_at_ms = now_ms();
    let (in_flight, left) = exited.stopped();
    assert_eq!(
        (in_flight, left),
        (1, 0),
        "s1's call was in flight and finished within the grace period\n{}",
        exited.output()
    );

    let server = Server::start(dir.path(), &grace).await;
    let client = server.client();
    let execution = wait_until(&client, &id, "completed", |e| e.status == "completed").await;
    assert_eq!(execution.output, Some(json!({"last": 2})));
    let history = client.events(&id, 0).await.unwrap();
    assert_eq!(
        seqs(&history),
        (1..=history.len() as u64).collect::<Vec<_>>()
    );
    // s1's result was stored by the first server, before it exited: its call was not sent
    // again after the restart (one StepCompleted for s1, and it predates the exit).
    let s1_done: Vec<&EventRecord> = history
        .iter()
        .filter(|r| matches!(&r.event, DomainEvent::StepCompleted { step, .. } if step == "s1"))
        .collect();
    assert_eq!(s1_done.len(), 1, "{:?}", kinds(&history));
    assert!(
        s1_done[0].at_ms <= stopped_at_ms,
        "s1 completed at {} ms, after the first server exited ({stopped_at_ms} ms)",
        s1_done[0].at_ms
    );
    assert_eq!(execution.steps[0].attempt, 1, "{execution:#?}");

    server.terminate().await.stopped();
}

/// `serve_curl.sh` drives the API with curl alone (health, register, start, poll, stream,
/// a 404), as a user following the README would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_script_drives_the_api() {
    let curl = Command::new("curl").arg("--version").output();
    assert!(
        matches!(&curl, Ok(out) if out.status.success()),
        "curl_script_drives_the_api needs curl on PATH (e.g. apt-get install curl): {curl:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_curl.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_proctor"))
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout kills the script's server too.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("run bash");
    /// Kills the script's process group when dropped.
    struct Group(u32);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .stderr(Stdio::null())
                .status();
        }
    }
    let group = Group(child.id());
    let output = Arc::new(Mutex::new(String::new()));
    let readers = [
        pipe_lines(child.stdout.take().unwrap(), output.clone(), None),
        pipe_lines(child.stderr.take().unwrap(), output.clone(), None),
    ];
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "serve_curl.sh still running after {SCRIPT_TIMEOUT:?}\n{}",
                output.lock().unwrap()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    // Whatever the script left behind goes with its group (the readers then see their end).
    drop(group);
    for reader in readers {
        let _ = reader.join();
    }
    let output = output.lock().unwrap().clone();
    assert!(
        status.success(),
        "serve_curl.sh failed ({status})\n{output}"
    );
    assert!(output.contains("serve_curl.sh: ok"), "{output}");
}
