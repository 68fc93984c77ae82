//! Crash tests with real processes: `proctor run` is killed with SIGKILL at a chosen point of
//! an execution, then `proctor recover` is started on the same SQLite file. The agent runs as a
//! separate `proctor agent` process, so it outlives the engine and its ledger (`GET /ledger`)
//! shows every idempotency key's effect applied exactly once.
//!
//! Each kill point is a test, named for where the engine dies.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound on any wait in these tests; real runs take well under a second.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

fn proctor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_proctor"))
}

/// A `proctor agent` child process on a free loopback port.
struct AgentProcess {
    child: Child,
    addr: String,
}

impl AgentProcess {
    fn start(args: &[&str]) -> AgentProcess {
        let mut child = proctor()
            .args(["agent", "--listen", "127.0.0.1:0", "--name", "worker"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn proctor agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("agent prints its address");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .expect("address in the first line")
            .to_string();
        AgentProcess { child, addr }
    }

    /// The agent's ledger: `{requests, attempts: {key: n}, effects: {key: n}}`.
    fn ledger(&self) -> Value {
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream
            .write_all(b"GET /ledger HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .expect("response has a body");
        serde_json::from_str(body).expect("ledger is JSON")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    definition: PathBuf,
    agents: PathBuf,
    db: PathBuf,
}

fn setup(definition: &str, agent: &AgentProcess) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let def_path = dir.path().join("process.yaml");
    std::fs::write(&def_path, definition).unwrap();
    let agents = dir.path().join("agents.yaml");
    std::fs::write(
        &agents,
        format!("agents:\n  worker: {{ url: \"http://{}\" }}\n", agent.addr),
    )
    .unwrap();
    let db = dir.path().join("proctor.db");
    Setup {
        definition: def_path,
        agents,
        db,
        _dir: dir,
    }
}

/// Polls `sql` (a query returning one integer) until it is non-zero.
fn wait_until(db: &Path, sql: &str) {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if db.exists() {
            if let Ok(conn) = rusqlite::Connection::open(db) {
                if let Ok(n) = conn.query_row(sql, [], |r| r.get::<_, i64>(0)) {
                    if n > 0 {
                        return;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {sql}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the execution, SIGKILLs the engine once `kill_when` holds, recovers, and returns the
/// recover command's stdout.
fn crash_and_recover(setup: &Setup, kill_when: &str) -> String {
    let mut run = proctor()
        .arg("run")
        .arg(&setup.definition)
        .args(["--input", r#"{"n": 1}"#, "--seed", "3"])
        .arg("--agents")
        .arg(&setup.agents)
        .arg("--db")
        .arg(&setup.db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn proctor run");
    wait_until(&setup.db, kill_when);
    run.kill().expect("SIGKILL the engine");
    let status = run.wait().unwrap();
    assert!(!status.success(), "the engine was killed, not finished");
    let conn = rusqlite::Connection::open(&setup.db).unwrap();
    let before: String = conn
        .query_row("SELECT status FROM executions", [], |r| r.get(0))
        .unwrap();
    assert!(
        ["running", "pending", "paused"].contains(&before.as_str()),
        "killed mid-execution, found {before}"
    );

    let out = proctor()
        .arg("recover")
        .arg("--agents")
        .arg(&setup.agents)
        .arg("--db")
        .arg(&setup.db)
        .output()
        .expect("run proctor recover");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "recover failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, steps_done): (String, i64) = conn
        .query_row(
            "SELECT e.status, (SELECT count(*) FROM steps s WHERE s.execution_id = e.id
                                AND s.status = 'completed') FROM executions e",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "completed", "{stdout}");
    let steps_total: i64 = conn
        .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(steps_done, steps_total);
    stdout
}

/// Every agent step's effect was applied exactly once, and there is one key per agent step.
fn assert_effects_once(agent: &AgentProcess, agent_steps: usize) -> Value {
    let ledger = agent.ledger();
    let effects = ledger["effects"].as_object().expect("effects map");
    assert_eq!(effects.len(), agent_steps, "{ledger}");
    assert!(effects.values().all(|n| n == 1), "{ledger}");
    ledger
}

const CHAIN: &str = "name: chain\nsteps:\n  - {id: a, type: agent_task, agent: worker, input: {n: '{{input.n}}'}}\n  - {id: b, type: agent_task, agent: worker, depends_on: [a], input: {prev: '{{steps.a.output.echo.n}}'}}\n  - {id: c, type: agent_task, agent: worker, depends_on: [b]}\n";

#[test]
fn sigkill_while_first_step_runs() {
    let agent = AgentProcess::start(&["--delay-ms", "200"]);
    let s = setup(CHAIN, &agent);
    let out = crash_and_recover(
        &s,
        "SELECT count(*) FROM steps WHERE step_id = 'a' AND status = 'running'",
    );
    assert!(out.contains("retry_step"), "{out}");
    assert_effects_once(&agent, 3);
}

#[test]
fn sigkill_while_a_middle_step_runs() {
    let agent = AgentProcess::start(&["--delay-ms", "200"]);
    let s = setup(CHAIN, &agent);
    let out = crash_and_recover(
        &s,
        "SELECT count(*) FROM steps WHERE step_id = 'b' AND status = 'running'",
    );
    assert!(out.contains("1 retried"), "{out}");
    let ledger = assert_effects_once(&agent, 3);
    // `a` finished before the kill and was not called again.
    let a_key = ledger["attempts"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with(":a"))
        .map(|(_, v)| v.clone());
    assert_eq!(a_key, Some(Value::from(1)), "{ledger}");
}

#[test]
fn sigkill_during_retry_backoff() {
    // The agent fails each key's first attempt; the backoff is long enough to kill inside it.
    let agent = AgentProcess::start(&["--fail-first", "1"]);
    let def = "name: backoff\nsteps:\n  - {id: a, type: agent_task, agent: worker, retry: {max_attempts: 3, initial_delay: 800ms}}\n  - {id: b, type: agent_task, agent: worker, depends_on: [a], retry: {max_attempts: 3, initial_delay: 10ms}}\n";
    let s = setup(def, &agent);
    let out = crash_and_recover(
        &s,
        "SELECT count(*) FROM steps WHERE step_id = 'a' AND status = 'retrying'",
    );
    assert!(out.contains("1 resumed"), "{out}");
    let ledger = assert_effects_once(&agent, 2);
    assert!(
        ledger["attempts"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == 2),
        "each key failed once, then succeeded once: {ledger}"
    );
}

#[test]
fn sigkill_during_timer() {
    let agent = AgentProcess::start(&[]);
    let def = "name: timed\nsteps:\n  - {id: a, type: agent_task, agent: worker}\n  - {id: t, type: timer, duration: 1500ms, depends_on: [a]}\n  - {id: c, type: agent_task, agent: worker, depends_on: [t]}\n";
    let s = setup(def, &agent);
    let out = crash_and_recover(
        &s,
        "SELECT count(*) FROM steps WHERE step_id = 't' AND status = 'running'",
    );
    assert!(out.contains("1 resumed"), "{out}");
    assert_effects_once(&agent, 2);
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    let (started, finished, deadline_out): (i64, i64, String) = conn
        .query_row(
            "SELECT started_at_ms, finished_at_ms, output FROM steps WHERE step_id = 't'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    // The timer fired at its original deadline (not a fresh 1.5 s after the restart), once.
    let output: Value = serde_json::from_str(&deadline_out).unwrap();
    assert_eq!(output["deadline_ms"], Value::from(started + 1_500));
    assert!(
        finished >= started + 1_500,
        "fired early: {started} -> {finished}"
    );
    let fired: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'StepCompleted' AND step_id = 't'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fired, 1);
}

/// Runs `proctor <args> --db <db>` and returns its stdout, asserting success.
fn proctor_ok(args: &[&str], setup: &Setup) -> String {
    let out = proctor()
        .args(args)
        .arg("--db")
        .arg(&setup.db)
        .output()
        .expect("run proctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "proctor {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn sigkill_while_paused() {
    let agent = AgentProcess::start(&["--delay-ms", "150"]);
    let s = setup(CHAIN, &agent);
    let mut run = proctor()
        .arg("run")
        .arg(&s.definition)
        .args(["--input", r#"{"n": 1}"#])
        .arg("--agents")
        .arg(&s.agents)
        .arg("--db")
        .arg(&s.db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn proctor run");
    wait_until(
        &s.db,
        "SELECT count(*) FROM steps WHERE step_id = 'a' AND status = 'running'",
    );
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    let id: String = conn
        .query_row("SELECT id FROM executions", [], |r| r.get(0))
        .unwrap();
    // Another process asks the running engine to pause; the engine polls for it.
    let out = proctor_ok(&["pause", &id], &s);
    assert!(out.contains("pause requested"), "{out}");
    wait_until(
        &s.db,
        "SELECT count(*) FROM executions WHERE status = 'paused'",
    );
    // The step in flight finishes while paused; nothing after it starts.
    wait_until(
        &s.db,
        "SELECT count(*) FROM steps WHERE step_id = 'a' AND status = 'completed'",
    );
    run.kill().expect("SIGKILL the engine");
    run.wait().unwrap();
    let b: String = conn
        .query_row("SELECT status FROM steps WHERE step_id = 'b'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(b, "pending", "nothing started while paused");

    // Recovery keeps it paused and does not wait for it.
    let out = proctor_ok(&["recover", "--agents", s.agents.to_str().unwrap()], &s);
    assert!(out.contains("paused"), "{out}");
    let status: String = conn
        .query_row("SELECT status FROM executions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "paused");

    // Resume is requested while no engine runs; the next engine start applies it.
    proctor_ok(&["resume", &id], &s);
    let out = proctor_ok(&["recover", "--agents", s.agents.to_str().unwrap()], &s);
    assert!(out.contains(&format!("execution {id} completed")), "{out}");
    assert_effects_once(&agent, 3);
    let kinds: Vec<String> = conn
        .prepare("SELECT kind FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let paused = kinds.iter().position(|k| k == "ExecutionPaused").unwrap();
    let resumed = kinds.iter().position(|k| k == "ExecutionResumed").unwrap();
    assert!(paused < resumed, "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("ExecutionCompleted"));
}

#[test]
fn control_verbs_reject_unknown_and_finished_executions() {
    let agent = AgentProcess::start(&[]);
    let s = setup(CHAIN, &agent);
    proctor_ok(
        &[
            "run",
            s.definition.to_str().unwrap(),
            "--input",
            r#"{"n": 1}"#,
            "--agents",
            s.agents.to_str().unwrap(),
        ],
        &s,
    );
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    let id: String = conn
        .query_row("SELECT id FROM executions", [], |r| r.get(0))
        .unwrap();
    for (args, needle) in [
        (vec!["pause", id.as_str()], "already completed"),
        (vec!["cancel", "no-such-id"], "no execution no-such-id"),
    ] {
        let out = proctor()
            .args(&args)
            .arg("--db")
            .arg(&s.db)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    let out = proctor_ok(&["status", &id], &s);
    assert!(out.contains(&format!("execution {id} completed")), "{out}");
}
