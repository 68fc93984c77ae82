//! Retention: a purge deletes terminal executions older than the period, with their steps,
//! events and checkpoints; a dry run lists the same ones and deletes nothing; executions that
//! are not terminal, or are recent, are never touched.

use proctor::store::SignalRequest;
use proctor_tests::*;
use serde_json::json;

const ONE: &str = "name: p\nsteps:\n  - {id: a, type: agent_task, agent: worker}\n";
const DAY_MS: u64 = 86_400_000;

fn count(t: &TestEngine, table: &str, id: &str) -> i64 {
    let column = if table == "executions" {
        "id"
    } else {
        "execution_id"
    };
    t.sql()
        .query_row(
            &format!("SELECT count(*) FROM {table} WHERE {column} = ?1"),
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn purge_deletes_only_old_terminal_executions_and_dry_run_deletes_nothing() {
    let t = TestEngine::start(ONE, &[("worker", Default::default())]).await;
    let old = t.run(json!({})).await.id;
    // Not terminal, and old: a run waiting for a signal.
    let waiting = process("name: w\nsteps:\n  - {id: s, type: wait_signal, signal: go}\n");
    let held = t.engine.submit(waiting, json!({})).await.unwrap().id;
    t.clock.advance_ms(40 * DAY_MS);
    let recent = t.run(json!({})).await.id;
    t.clock.advance_ms(DAY_MS);

    let listed = t.engine.purge(30 * DAY_MS, true).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec![old.as_str()]);
    assert_eq!(
        count(&t, "executions", &old),
        1,
        "a dry run deletes nothing"
    );

    let purged = t.engine.purge(30 * DAY_MS, false).await.unwrap();
    assert_eq!(purged, listed);
    for table in ["executions", "steps", "events", "checkpoints"] {
        assert_eq!(
            count(&t, table, &old),
            0,
            "{table} rows of the purged execution"
        );
    }
    assert_eq!(count(&t, "executions", &recent), 1);
    assert_eq!(count(&t, "executions", &held), 1);
    // The held execution still works.
    let signal = SignalRequest {
        id: "s".into(),
        name: "go".into(),
        payload: json!(1),
    };
    t.engine.signal(&held, signal).await.unwrap();
    assert!(t.engine.purge(30 * DAY_MS, false).await.unwrap().is_empty());
}
