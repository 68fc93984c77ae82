//! The `proctor` binary end to end: `validate` on bad definitions, and `run` of the example
//! diamond against the built-in example agents, checked through the SQLite file it leaves.

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

fn run_proctor(args: &[&str], db: &Path) -> (i32, String) {
    let out = proctor().args(args).arg("--db").arg(db).output().unwrap();
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

    let (code, out) = run_proctor(&["history", &id], &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"kind\":\"reset\""), "{out}");
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
