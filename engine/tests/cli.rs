//! The `proctor` binary end to end: `validate` on bad definitions, `run` of the example
//! diamond against the built-in example agents, checked through the SQLite file it leaves, and
//! the operator's commands (`list`, `show`, `history`, `lineage`, `tail`, `dot`) on such files,
//! `tail` while another process is still writing one.

use std::path::{Path, PathBuf};
use std::process::Command;

fn proctor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_proctor"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn validate_prints_the_cycle_and_exits_1() {
    let out = proctor()
        .args(["validate"])
        .arg(example("cycle.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cycle.yaml: step 'a': dependency cycle: a -> b -> c -> a"),
        "{stderr}"
    );
}

#[test]
fn validate_names_the_step_with_a_missing_dependency() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.yaml");
    std::fs::write(
        &file,
        "name: m\nsteps:\n  - {id: first, type: agent_task, agent: x}\n  - {id: second, type: agent_task, agent: x, depends_on: [frist]}\n",
    )
    .unwrap();
    let out = proctor().arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("step 'second': depends on unknown step 'frist'"),
        "{stderr}"
    );
}

#[test]
fn validate_accepts_the_examples() {
    let out = proctor()
        .arg("validate")
        .arg(example("diamond.yaml"))
        .arg("--agents")
        .arg(example("agents.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (diamond v1, 4 steps)"));
}

#[test]
fn run_rejects_bad_input_json_with_a_message() {
    let out = proctor()
        .arg("run")
        .arg(example("diamond.yaml"))
        .args(["--input", "{not json"])
        .arg("--agents")
        .arg(example("agents.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input is not JSON"));
}

#[test]
fn run_diamond_prints_events_and_persists_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let out = proctor()
        .arg("run")
        .arg(example("diamond.yaml"))
        .args(["--input", r#"{"text":"hello"}"#, "--seed", "7"])
        .arg("--agents")
        .arg(example("agents.yaml"))
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "ExecutionStarted",
        "StepRetrying",
        "ExecutionCompleted",
        "\"summary\": \"hello has 5 characters\"",
    ] {
        assert!(stdout.contains(needle), "missing {needle} in:\n{stdout}");
    }

    let conn = rusqlite::Connection::open(&db).unwrap();
    let status: String = conn
        .query_row("SELECT status FROM executions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "completed");
    let steps: Vec<(String, String, u32)> = conn
        .prepare("SELECT step_id, status, attempt FROM steps ORDER BY position")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        steps,
        vec![
            ("fetch".into(), "completed".into(), 2),
            ("left".into(), "completed".into(), 1),
            ("right".into(), "completed".into(), 1),
            ("join".into(), "completed".into(), 1),
        ]
    );
    let seqs: Vec<i64> = conn
        .prepare("SELECT seq FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let last: String = conn
        .query_row(
            "SELECT kind FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(last, "ExecutionCompleted");
}

/// Runs `proctor ARGS --db DB` with stdout piped and no colour forced; exit code and output.
fn run_proctor(args: &[&str], db: &Path) -> (i32, String) {
    let out = proctor()
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn run_until_a_breakpoint_then_reset_from_a_checkpoint_with_a_new_output() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let diamond = example("diamond.yaml");
    let agents = example("agents.yaml");
    let (diamond, agents) = (diamond.to_str().unwrap(), agents.to_str().unwrap());

    let (code, out) = run_proctor(
        &[
            "run",
            diamond,
            "--input",
            r#"{"text":"hello"}"#,
            "--agents",
            agents,
            "--until",
            "fetch",
        ],
        &db,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("paused after fetch"), "{out}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let id: String = conn
        .query_row("SELECT id FROM executions", [], |r| r.get(0))
        .unwrap();

    let (code, out) = run_proctor(&["checkpoints", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("after fetch") && out.contains("completed: fetch"),
        "{out}"
    );
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM checkpoints WHERE execution_id = ?1 AND step_id = 'fetch'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();

    // Reset from after `fetch`, pretending it had fetched another text.
    let (code, out) = run_proctor(
        &[
            "reset",
            &id,
            "--agents",
            agents,
            "--seq",
            &seq.to_string(),
            "--output",
            r#"fetch={"echo":{"text":"bonjour"}}"#,
        ],
        &db,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"summary\": \"bonjour has 7 characters\""),
        "{out}"
    );
    assert!(out.contains("ExecutionForked"), "{out}");
    // `fetch` was not run again in the fork: its output came from the checkpoint.
    assert!(!out.contains("StepStarted         fetch"), "{out}");

    let (code, out) = run_proctor(&["lineage", &id, "--json"], &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"kind\":\"reset\""), "{out}");
    let (code, out) = run_proctor(&["lineage", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(" reset ") && out.contains("from checkpoint #"),
        "{out}"
    );
    let original: String = conn
        .query_row("SELECT status FROM executions WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        original, "cancelled",
        "a paused original is replaced by its reset"
    );
}

/// `proctor signal` from another process reaches an execution that `proctor run` is driving
/// and waiting on; sending the same signal id twice is one signal.
#[test]
fn a_signal_from_another_process_completes_a_waiting_execution() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let child = proctor()
        .arg("run")
        .arg(example("approval.yaml"))
        .args(["--input", r#"{"text":"memo"}"#, "--seed", "3"])
        .arg("--agents")
        .arg(example("agents.yaml"))
        .arg("--db")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until the execution waits for its signal.
    let mut id = None;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let Ok(conn) = rusqlite::Connection::open(&db) else {
            continue;
        };
        id = conn
            .query_row(
                "SELECT execution_id FROM steps WHERE step_id = 'approval' AND status = 'running'",
                [],
                |r| r.get::<_, String>(0),
            )
            .ok();
        if id.is_some() {
            break;
        }
    }
    let id = id.expect("the execution reached its wait_signal step within 10 s");
    for _ in 0..2 {
        let (code, out) = run_proctor(
            &[
                "signal",
                &id,
                "approve",
                "--payload",
                r#"{"by":"ana"}"#,
                "--signal-id",
                "approval-1",
            ],
            &db,
        );
        assert_eq!(code, 0, "{out}");
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"approved_by\": \"ana\""), "{stdout}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let received: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'SignalReceived'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(received, 1, "the repeated signal id was applied once");
}

#[test]
fn purge_lists_then_deletes_finished_executions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let (diamond, agents) = (example("diamond.yaml"), example("agents.yaml"));
    let (code, out) = run_proctor(
        &[
            "run",
            diamond.to_str().unwrap(),
            "--input",
            r#"{"text":"old"}"#,
            "--agents",
            agents.to_str().unwrap(),
        ],
        &db,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_proctor(&["purge", "--older-than", "1h"], &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted 0 execution(s)"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, out) = run_proctor(&["purge", "--older-than", "10ms", "--dry-run"], &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would delete 1 execution(s)"), "{out}");
    let (code, out) = run_proctor(&["purge", "--older-than", "10ms"], &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted 1 execution(s)"), "{out}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let left: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
    let (code, out) = run_proctor(&["purge", "--older-than", "soon"], &db);
    assert_eq!(code, 2, "bad usage: {out}");
    assert!(
        out.contains("--older-than \"soon\" is not a duration"),
        "{out}"
    );
}

/// A bad tokens file stops `proctor serve` before it listens, naming the file, the entry and
/// the problem.
#[test]
fn serve_refuses_a_bad_tokens_file_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - { name: ci, token: short, tenant: acme }\n",
    )
    .unwrap();
    let out = proctor()
        .args(["serve", "--listen", "127.0.0.1:0", "--agents"])
        .arg(example("agents.yaml"))
        .arg("--db")
        .arg(dir.path().join("p.db"))
        .arg("--tokens")
        .arg(&tokens)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tokens.yaml: tokens[0] (ci): token must be at least 16"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// A child process killed when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Generous bound on waiting for a child's next line: against a hang, not a speed check.
const LINE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Spawns `proctor ARGS --db DB` with piped stdout, whose lines arrive on the receiver (which
/// disconnects at end of output).
fn spawn_lines(args: &[&str], db: &Path) -> (Running, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead as _;
    let mut child = proctor()
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("CLICOLOR_FORCE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

/// Lines from `rx` up to and including the first that `pred` accepts.
fn lines_until(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(LINE_WAIT) {
            Ok(line) => {
                let done = pred(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no line with {what} ({e}); got:\n{}", seen.join("\n")),
        }
    }
}

/// Every line left until the child closes its output.
fn rest(rx: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(LINE_WAIT) {
            Ok(line) => lines.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(e) => panic!("output did not end ({e}); got:\n{}", lines.join("\n")),
        }
    }
}

fn run_diamond(db: &Path) -> String {
    let (diamond, agents) = (example("diamond.yaml"), example("agents.yaml"));
    let (code, out) = run_proctor(
        &[
            "run",
            diamond.to_str().unwrap(),
            "--input",
            r#"{"text":"hello"}"#,
            "--agents",
            agents.to_str().unwrap(),
            "--seed",
            "7",
        ],
        db,
    );
    assert_eq!(code, 0, "{out}");
    only_execution_id(db)
}

fn only_execution_id(db: &Path) -> String {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT id FROM executions", [], |r| r.get(0))
        .unwrap()
}

fn stored_kinds(db: &Path, id: &str) -> Vec<String> {
    rusqlite::Connection::open(db)
        .unwrap()
        .prepare("SELECT kind FROM events WHERE execution_id = ?1 ORDER BY seq")
        .unwrap()
        .query_map([id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The whitespace-separated cells of the table row that starts with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

fn assert_plain(out: &str) {
    assert!(!out.contains("\x1b["), "styled output when piped:\n{out}");
}

#[test]
fn list_show_history_and_lineage_read_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let id = run_diamond(&db);

    let (code, out) = run_proctor(&["list"], &db);
    assert_eq!(code, 0, "{out}");
    assert_plain(&out);
    assert_eq!(
        row(&out, "ID")[..6],
        ["ID", "DEFINITION", "STATUS", "PROGRESS", "CREATED", "(UTC)"]
    );
    assert_eq!(row(&out, &id)[1..5], ["diamond", "v1", "completed", "4/4"]);

    let (code, out) = run_proctor(&["list", "--json"], &db);
    assert_eq!(code, 0, "{out}");
    let page: proctor::api::views::ExecutionPage = serde_json::from_str(&out).unwrap();
    assert_eq!(page.next, None);
    assert_eq!(page.executions.len(), 1);
    let listed = &page.executions[0];
    assert_eq!(
        (
            listed.id.as_str(),
            listed.definition.as_str(),
            listed.version
        ),
        (id.as_str(), "diamond", 1)
    );
    assert_eq!(listed.status, "completed");
    assert!(listed.created_at_ms <= listed.updated_at_ms);

    let (code, out) = run_proctor(&["list", "--status", "failed"], &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no executions in"), "{out}");
    let (code, out) = run_proctor(&["list", "--status", "broken"], &db);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("possible values: pending, running"), "{out}");
    let (code, out) = run_proctor(&["list", "--limit", "501"], &db);
    assert_eq!(code, 2, "{out}");

    let (code, out) = run_proctor(&["show", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert_plain(&out);
    assert_eq!(row(&out, "status"), ["status", "completed"]);
    assert!(
        out.contains("progress   4/4 steps decided (100%): 4 completed"),
        "{out}"
    );
    // fetch's first attempt failed (the example fetcher fails once): two attempts, and the
    // error that made it retry.
    let fetch = row(&out, "fetch");
    assert_eq!(fetch[1..4], ["agent_task", "completed", "2"], "{out}");
    assert!(
        fetch.contains(&"[HTTP") && fetch.contains(&"503]:"),
        "{out}"
    );
    for step in ["left", "right", "join"] {
        assert_eq!(
            row(&out, step)[1..4],
            ["agent_task", "completed", "1"],
            "{out}"
        );
    }

    let (code, out) = run_proctor(&["show", &id, "--json"], &db);
    assert_eq!(code, 0, "{out}");
    let view: proctor::api::views::ExecutionView = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (view.id.as_str(), view.status.as_str()),
        (id.as_str(), "completed")
    );
    let steps: Vec<(&str, &str, u32)> = view
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status.as_str(), s.attempt))
        .collect();
    assert_eq!(
        steps,
        [
            ("fetch", "completed", 2),
            ("left", "completed", 1),
            ("right", "completed", 1),
            ("join", "completed", 1)
        ]
    );
    assert!(view
        .steps
        .iter()
        .all(|s| s.started_at_ms <= s.finished_at_ms && s.finished_at_ms.is_some()));
    assert_eq!(view.progress.percent, 100);

    let kinds = stored_kinds(&db, &id);
    let (code, out) = run_proctor(&["history", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert_plain(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].trim_start().starts_with("SEQ  TIME (UTC)"),
        "{out}"
    );
    // seq, date, time, kind, step, detail
    let printed: Vec<(String, String)> = lines[1..]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[3].to_string(), cells[4].to_string())
        })
        .collect();
    assert_eq!(
        printed.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        kinds.iter().collect::<Vec<_>>()
    );
    assert_eq!(printed[0], ("ExecutionStarted".into(), "-".into()));
    assert_eq!(printed[2], ("StepRetrying".into(), "fetch".into()));
    assert_eq!(printed.last().unwrap().0, "ExecutionCompleted");
    assert!(lines[2].ends_with("attempt 1"), "{}", lines[2]);

    let (code, out) = run_proctor(&["history", &id, "--json"], &db);
    assert_eq!(code, 0, "{out}");
    let records: Vec<proctor::event::EventRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=kinds.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        records.iter().map(|r| r.event.kind()).collect::<Vec<_>>(),
        kinds
    );
    assert!(records.iter().all(|r| r.execution_id == id));

    let (code, out) = run_proctor(&["lineage", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("was never resumed, recovered or reset"),
        "{out}"
    );
    let (code, out) = run_proctor(&["lineage", &id, "--json"], &db);
    assert_eq!((code, out.as_str()), (0, ""));

    for command in ["show", "history", "lineage", "tail"] {
        let (code, out) = run_proctor(&[command, "no-such-id"], &db);
        assert_eq!(code, 1, "{command}: {out}");
        assert!(
            out.contains("no execution no-such-id in"),
            "{command}: {out}"
        );
    }
    let (code, out) = run_proctor(&["list"], &dir.path().join("absent.db"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no database at"), "{out}");
}

#[test]
fn a_failed_run_shows_its_error_clipped_in_the_table_and_whole_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let agents = dir.path().join("agents.yaml");
    std::fs::write(
        &agents,
        "agents:\n  flaky: { example: { fail_first: 5 } }\n",
    )
    .unwrap();
    let process = dir.path().join("charge.yaml");
    std::fs::write(
        &process,
        "name: charge\nsteps:\n  - {id: charge, type: agent_task, agent: flaky}\n  - {id: receipt, type: agent_task, agent: flaky, depends_on: [charge]}\n",
    )
    .unwrap();
    let (code, out) = run_proctor(
        &[
            "run",
            process.to_str().unwrap(),
            "--agents",
            agents.to_str().unwrap(),
        ],
        &db,
    );
    assert_eq!(code, 1, "{out}");
    let id = only_execution_id(&db);

    let (code, out) = run_proctor(&["list", "--status", "failed"], &db);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        row(&out, &id)[1..5],
        ["charge", "v1", "failed", "1/2"],
        "{out}"
    );

    let (code, out) = run_proctor(&["show", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert_eq!(row(&out, "status"), ["status", "failed"]);
    let error_line = out.lines().find(|l| l.starts_with("error ")).unwrap();
    assert!(error_line.contains("charge"), "{out}");
    let charge = row(&out, "charge");
    assert_eq!(charge[1..4], ["agent_task", "failed", "1"], "{out}");
    assert!(charge.contains(&"503]:"), "{out}");
    // The message names the idempotency key `<id>:charge`, past the table's width.
    assert!(charge.last().unwrap().ends_with("..."), "{out}");
    let receipt = row(&out, "receipt");
    assert_eq!(receipt[1..4], ["agent_task", "pending", "-"], "{out}");

    let (code, out) = run_proctor(&["show", &id, "--json"], &db);
    assert_eq!(code, 0, "{out}");
    let view: proctor::api::views::ExecutionView = serde_json::from_str(&out).unwrap();
    assert_eq!(view.status, "failed");
    assert!(view.error.is_some());
    let error = view.steps[0].error.as_deref().unwrap();
    assert!(
        error.ends_with(&format!("flaky failing attempt 1 of {id}:charge")),
        "{error}"
    );
}

#[test]
fn styles_only_on_request_when_piped_and_never_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let id = run_diamond(&db);
    let styled = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = proctor();
        command
            .args(args)
            .arg("--db")
            .arg(&db)
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [
        &["list"][..],
        &["show", &id][..],
        &["history", &id][..],
        &["tail", &id][..],
    ] {
        assert_plain(&styled(args, &[]));
        let forced = styled(args, &[("CLICOLOR_FORCE", "1")]);
        assert!(forced.contains("\x1b["), "{args:?} unstyled:\n{forced}");
        assert_plain(&styled(args, &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]));
    }
    // completed is green, whatever else is styled
    assert!(styled(&["show", &id], &[("CLICOLOR_FORCE", "1")]).contains("\x1b[32mcompleted"));
    for args in [
        &["list", "--json"][..],
        &["show", &id, "--json"][..],
        &["history", &id, "--json"][..],
    ] {
        assert_plain(&styled(args, &[("CLICOLOR_FORCE", "1")]));
    }
}

/// `tail` follows an execution that `proctor run` (another process) is driving: it prints the
/// history so far, then what happens after it started (here: everything after the signal it
/// could not have seen before), and exits 0 by itself when the execution completes.
#[test]
fn tail_follows_a_running_execution_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proctor.db");
    let (approval, agents) = (example("approval.yaml"), example("agents.yaml"));
    let (mut run, _run_lines) = spawn_lines(
        &[
            "run",
            approval.to_str().unwrap(),
            "--input",
            r#"{"text":"memo"}"#,
            "--agents",
            agents.to_str().unwrap(),
        ],
        &db,
    );
    let mut id = None;
    for _ in 0..400 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let Ok(conn) = rusqlite::Connection::open(&db) else {
            continue;
        };
        id = conn
            .query_row(
                "SELECT execution_id FROM steps WHERE step_id = 'approval' AND status = 'running'",
                [],
                |r| r.get::<_, String>(0),
            )
            .ok();
        if id.is_some() {
            break;
        }
    }
    let id = id.expect("the execution reached its wait_signal step within 20 s");

    let (mut plain, plain_lines) = spawn_lines(&["tail", &id], &db);
    let (mut json, json_lines) = spawn_lines(&["tail", &id, "--json"], &db);
    // Both have printed the history so far, up to the wait for the signal.
    let before = lines_until(&plain_lines, "StepStarted approval", |l| {
        l.contains("StepStarted") && l.contains(" approval ")
    });
    assert!(before[0].trim_start().starts_with("SEQ"), "{before:?}");
    assert!(before[1].contains("ExecutionStarted"), "{before:?}");
    let json_before = lines_until(&json_lines, "StepStarted approval", |l| {
        l.contains(r#""type":"StepStarted","step":"approval""#)
    });

    let (code, out) = run_proctor(
        &["signal", &id, "approve", "--payload", r#"{"by":"ana"}"#],
        &db,
    );
    assert_eq!(code, 0, "{out}");

    let after = rest(&plain_lines);
    let kinds: Vec<(&str, &str)> = after
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[3], cells[4])
        })
        .filter(|(kind, _)| *kind != "Audit")
        .collect();
    assert_eq!(
        kinds,
        [
            ("SignalReceived", "-"),
            ("StepCompleted", "approval"),
            ("StepStarted", "publish"),
            ("StepCompleted", "publish"),
            ("ExecutionCompleted", "-"),
        ],
        "{after:?}"
    );
    assert_eq!(plain.0.wait().unwrap().code(), Some(0));

    let json_after = rest(&json_lines);
    assert_eq!(json.0.wait().unwrap().code(), Some(0));
    let records: Vec<proctor::event::EventRecord> = json_before
        .iter()
        .chain(&json_after)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds = stored_kinds(&db, &id);
    assert_eq!(
        records.iter().map(|r| r.event.kind()).collect::<Vec<_>>(),
        kinds,
        "tail --json printed every event once, in order"
    );
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=kinds.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(run.0.wait().unwrap().code(), Some(0));

    // Tailing an ended execution prints what is asked for and returns at once.
    let (code, out) = run_proctor(&["tail", &id, "--json", "--after", "3"], &db);
    assert_eq!(code, 0, "{out}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<proctor::event::EventRecord>(l)
                .unwrap()
                .seq
        })
        .collect();
    assert_eq!(seqs, (4..=kinds.len() as u64).collect::<Vec<_>>());
    let (code, out) = run_proctor(&["tail", &id, "--json", "--after", "1000"], &db);
    assert_eq!((code, out.as_str()), (0, ""));
}

const ROUTED: &str = r#"name: routed
steps:
  - {id: score, type: agent_task, agent: worker}
  - id: route
    type: gateway
    depends_on: [score]
    routes:
      - { when: 'steps.score.output.tier == "gold"', to: [fast] }
    default: [slow]
  - {id: fast, type: agent_task, agent: worker, depends_on: [route]}
  - {id: slow, type: timer, duration: 1m, depends_on: [route]}
  - {id: done, type: wait_signal, signal: ok, depends_on: [fast, slow]}
"#;

/// Runs `proctor dot FILE ARGS`; exit code, stdout, stderr.
fn dot(file: &Path, args: &[&str]) -> (i32, String, String) {
    let out = proctor().arg("dot").arg(file).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// When Graphviz happens to be installed, it must accept the output (without it, the test
/// still checks the text itself).
fn graphviz_accepts(text: &str) {
    use std::io::Write as _;
    let Ok(mut child) = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "graphviz: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dot_draws_every_step_and_edge() {
    let (code, out, err) = dot(&example("diamond.yaml"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("digraph \"diamond v1\" {"), "{out}");
    for step in ["fetch", "left", "right", "join"] {
        assert!(
            out.contains(&format!("\"{step}\" [label=\"{step}\\nagent_task\\n")),
            "{step} missing:\n{out}"
        );
    }
    for (from, to) in [
        ("fetch", "left"),
        ("fetch", "right"),
        ("left", "join"),
        ("right", "join"),
    ] {
        assert!(
            out.contains(&format!("\"{from}\" -> \"{to}\";")),
            "{from} -> {to} missing:\n{out}"
        );
    }
    assert_eq!(out.matches(" -> ").count(), 4, "{out}");
    graphviz_accepts(&out);

    let (code, out, err) = dot(&example("diamond.yaml"), &["--format", "mermaid"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("flowchart TB\n"), "{out}");
    for (i, step) in ["fetch", "left", "right", "join"].iter().enumerate() {
        assert!(
            out.contains(&format!("n{i}(\"{step}<br/>agent_task<br/>")),
            "{step} missing:\n{out}"
        );
    }
    for edge in ["n0 --> n1", "n0 --> n2", "n1 --> n3", "n2 --> n3"] {
        assert!(out.contains(edge), "{edge} missing:\n{out}");
    }
    assert_eq!(out.matches(" --> ").count(), 4, "{out}");
}

#[test]
fn dot_labels_gateway_routes_with_their_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routed.yaml");
    std::fs::write(&file, ROUTED).unwrap();
    let (code, out, err) = dot(&file, &[]);
    assert_eq!(code, 0, "{err}");
    for line in [
        r#""route" [label="route\ngateway\n2 route(s)", shape=diamond];"#,
        r#""slow" [label="slow\ntimer\nwait 1m", shape=ellipse"#,
        r#""done" [label="done\nwait_signal\nsignal: ok", shape=cds];"#,
        r#""route" -> "fast" [label="steps.score.output.tier == \"gold\""];"#,
        r#""route" -> "slow" [label="default"];"#,
    ] {
        assert!(out.contains(line), "missing {line} in\n{out}");
    }
    graphviz_accepts(&out);
    let (code, out, err) = proctor()
        .args(["graph", "--format", "mermaid"])
        .arg(&file)
        .output()
        .map(|o| {
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8(o.stdout).unwrap(),
                String::from_utf8(o.stderr).unwrap(),
            )
        })
        .unwrap();
    assert_eq!(code, 0, "`graph` is `dot`: {err}");
    assert!(
        out.contains(r#"n1 -->|"steps.score.output.tier == #34;gold#34;"| n2"#),
        "{out}"
    );
    assert!(out.contains(r#"n1 -->|"default"| n3"#), "{out}");
    assert!(
        out.contains(r#"n3(("slow<br/>timer<br/>wait 1m"))"#),
        "{out}"
    );
}

#[test]
fn dot_refuses_an_invalid_definition_as_validate_does() {
    let dir = tempfile::tempdir().unwrap();
    let stray = dir.path().join("stray.yaml");
    std::fs::write(
        &stray,
        "name: stray\nsteps:\n  - {id: g, type: gateway, default: [a]}\n  - {id: a, type: agent_task, agent: x}\n",
    )
    .unwrap();
    for (file, needle) in [
        (example("cycle.yaml"), "step 'a': dependency cycle"),
        (
            stray,
            "step 'g': routes to 'a', which does not depend on 'g'",
        ),
    ] {
        let (code, out, err) = dot(&file, &[]);
        assert_eq!(code, 1, "{out}");
        assert_eq!(out, "", "nothing is drawn");
        let validate = proctor().arg("validate").arg(&file).output().unwrap();
        assert_eq!(err, String::from_utf8(validate.stderr).unwrap());
        assert!(err.contains(needle), "{err}");
    }
    let file = dir.path().join("routed.yaml");
    std::fs::write(&file, ROUTED).unwrap();
    let (code, _, err) = dot(
        &file,
        &["--agents", example("agents.yaml").to_str().unwrap()],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("step 'score': ") && err.contains("worker"),
        "agents are checked when given: {err}"
    );
}

#[test]
fn help_lists_the_operator_commands_with_examples() {
    let out = proctor().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "list",
        "show",
        "history",
        "tail",
        "lineage",
        "dot",
        "proctor list --status failed",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    for command in ["list", "show", "history", "tail", "lineage", "dot"] {
        let out = proctor().args([command, "--help"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{command}");
        assert!(
            text.contains("Examples:") && text.contains(&format!("proctor {command} ")),
            "{command} --help has no examples:\n{text}"
        );
        assert!(text.contains("--json") || command == "dot", "{text}");
    }
}

/// `proctor run` of `http` → `transform` → `email`: the request goes to `proctor agent`'s plain
/// `/echo` service in another process (its header's secret from `PROCTOR_SECRET_*`), the
/// transform reshapes the response, and the mail goes to a real SMTP server (Python's
/// aiosmtpd, writing a maildir), carrying the transformed data.
#[test]
fn run_chains_http_transform_and_email() {
    use std::io::BufRead as _;
    let mut agent = proctor()
        .args(["agent", "--listen", "127.0.0.1:0", "--name", "svc"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(agent.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _agent = Running(agent);
    let service = first
        .trim()
        .rsplit("http://")
        .next()
        .expect("the agent prints its address")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("order.yaml");
    std::fs::write(
        &def,
        r#"
name: order
steps:
  - id: fetch
    type: http
    method: POST
    url: "http://{{input.service}}/echo/orders/{{input.order}}"
    headers: { authorization: "Bearer ${secrets.SVC_TOKEN}" }
    body: { qty: "{{input.qty}}" }
  - id: shape
    type: transform
    depends_on: [fetch]
    output:
      order: "{{steps.fetch.output.body.path}}"
      total: "{{steps.fetch.output.body.body.qty * 10}}"
  - id: notify
    type: email
    depends_on: [shape]
    to: "ops@example.com"
    subject: "Order {{steps.shape.output.order}}"
    body: "Total: {{steps.shape.output.total}}"
"#,
    )
    .unwrap();
    let smtp = SmtpSink::start(dir.path());
    let agents = dir.path().join("agents.yaml");
    std::fs::write(&agents, "agents: {}\n").unwrap();
    let db = dir.path().join("p.db");
    let input = format!(r#"{{"service": "{service}", "order": 7, "qty": 3}}"#);
    let out = proctor()
        .arg("run")
        .arg(&def)
        .args(["--input", &input, "--agents"])
        .arg(&agents)
        .arg("--db")
        .arg(&db)
        .env("PROCTOR_SECRET_SVC_TOKEN", "cli-secret-value-42")
        .env("PROCTOR_SMTP", &smtp.addr)
        .env("PROCTOR_SMTP_FROM", "proctor@example.com")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#""order":"/echo/orders/7""#) && stdout.contains(r#""total":30"#),
        "{stdout}"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let input: String = conn
        .query_row("SELECT input FROM steps WHERE step_id = 'fetch'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(input.contains("${secrets.SVC_TOKEN}"), "{input}");
    assert!(!stdout.contains("cli-secret-value-42"));
    // The mail carries the transformed data.
    let mail = smtp.messages();
    assert_eq!(mail.len(), 1, "{mail:?}");
    for expected in [
        "Subject: Order /echo/orders/7",
        "To: ops@example.com",
        "Total: 30",
        "X-Proctor-Idempotency-Key: ",
    ] {
        assert!(
            mail[0].contains(expected),
            "{expected:?} not in:\n{}",
            mail[0]
        );
    }
}

/// Python's aiosmtpd on a free loopback port, writing what it takes into a maildir; killed
/// when dropped.
struct SmtpSink {
    _server: Running,
    addr: String,
    maildir: PathBuf,
}

impl SmtpSink {
    fn start(dir: &Path) -> SmtpSink {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap().to_string();
        drop(probe);
        let maildir = dir.join("mail");
        let mut child = std::process::Command::new("python3")
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
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        let waited = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("aiosmtpd exited ({status}): `pip install aiosmtpd` (as .ci/run does)");
            }
            assert!(
                waited.elapsed() < LINE_WAIT,
                "aiosmtpd did not listen on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        SmtpSink {
            _server: Running(child),
            addr,
            maildir,
        }
    }

    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect()
    }
}
