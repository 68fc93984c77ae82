//! The performance table of issue #8 (`cargo xtask bench`, which also adds the simulator's rows;
//! alone: `cargo bench -p proctor-engine --bench perf -- [--quick] [--json FILE]`).
//!
//! Every figure is measured in this one run on this machine, and every ratio is against a
//! limit measured in the same run with the same settings:
//! 1. durable steps/s, one execution of 10 no-op agent steps after another (agent on loopback
//!    HTTP), `synchronous=FULL` and `NORMAL`, beside the raw SQLite commit rate (one small
//!    insert per transaction: the one-commit-per-step limit);
//! 2. 10, 100 and 1,000 executions in flight: steps/s against the raw commit rate, and the
//!    latency the engine adds per step (agent time excluded: from the agent's answer to a
//!    step to its receipt of the next call, measured by the agent);
//! 3. CPU time per step with an in-process agent (an in-memory `Network`), against the CPU
//!    time of one raw SQLite insert-and-commit;
//! 4. recovery of 10,000 in-flight executions (`Engine::recover`: scan, load, decide,
//!    re-dispatch), and the peak RSS while they all run to their end.
//!
//! Real time, threads and `HashMap`s are fine here: this is a measuring tool, not engine or
//! simulator logic. Nothing here asserts a time; the targets are reported, never enforced.

// The allocator the `proctor` binary runs with (engine/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proctor::agent::{AgentClient, AgentEndpoint, AgentRegistry, AgentRequest, ClientLimits};
use proctor::clock::{Clock, SystemClock};
use proctor::core::{Execution, ExecutionStatus, Input, Lane};
use proctor::definition::{parse, Format, ProcessDef};
use proctor::network::{accept_next, Conn, Listener, Network, TokioNetwork};
use proctor::rng::seeded;
use proctor::store::{
    SqliteOptions, SqliteStore, Storage, Synchronous, WAL_AUTOCHECKPOINT_PAGES, WRITER_CACHE_KIB,
};
use proctor::{Engine, EngineConfig, Ports, RecoveryConfig};
use serde_json::json;

/// Steps per execution in rows 1 to 3.
const CHAIN_STEPS: usize = 10;

/// One row of the table, as `cargo xtask bench` prints it.
#[derive(serde::Serialize)]
struct Row {
    row: String,
    value: f64,
    unit: &'static str,
    /// `value` divided by the limit it is compared with.
    ratio: Option<f64>,
    /// What the ratio is against.
    against: String,
    /// The target, in words, and whether this run met it.
    target: Option<String>,
    met: Option<bool>,
    /// The best value the target's measure could take in this run if the engine cost
    /// nothing (a ceiling measured beside it, in the target's terms): a missed target whose
    /// limit is under it is out of reach on this machine, not only missed.
    limit: Option<f64>,
    /// Whether `limit` is under the target.
    out_of_reach: Option<bool>,
}

impl Row {
    fn plain(row: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            row: row.into(),
            value,
            unit,
            ratio: None,
            against: String::new(),
            target: None,
            met: None,
            limit: None,
            out_of_reach: None,
        }
    }

    fn against(mut self, limit: f64, what: impl Into<String>) -> Row {
        self.ratio = Some(self.value / limit);
        self.against = what.into();
        self
    }

    fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }

    /// The target "at least `goal` times the limit the ratio is against", met or not by this
    /// row's ratio, beside `ceiling`: the ratio an engine that cost nothing would reach.
    fn at_least(self, goal: f64, ceiling: f64) -> Row {
        let met = self.ratio.unwrap_or(0.0) >= goal;
        let mut row = self.target(format!(">= {goal}x raw"), met);
        row.limit = Some(ceiling);
        row.out_of_reach = Some(ceiling < goal);
        row
    }

    fn print(&self) {
        let ratio = self
            .ratio
            .map(|r| format!("{r:.2}x {}", self.against))
            .unwrap_or_default();
        let target = match (&self.target, self.met) {
            (Some(t), Some(true)) => format!("{t}: met"),
            (Some(t), Some(false)) => missed(t, self.limit, self.out_of_reach),
            _ => String::new(),
        };
        println!(
            "{:<58} {:>12.1} {:<10} {:<40} {}",
            self.row, self.value, self.unit, ratio, target
        );
    }
}

/// A missed target's status: with the limit beside it, and whether that limit was under it.
fn missed(target: &str, limit: Option<f64>, out_of_reach: Option<bool>) -> String {
    match (limit, out_of_reach) {
        (Some(limit), Some(true)) => format!("{target}: MISSED, out of reach (limit {limit:.2})"),
        (Some(limit), _) => format!("{target}: MISSED (limit {limit:.2})"),
        (None, _) => format!("{target}: MISSED"),
    }
}

/// How much work each row does: `--quick` is a smoke run of every code path.
#[derive(Clone, Copy)]
struct Size {
    raw_commits: usize,
    sequential_executions: usize,
    concurrent_executions_per_slot: usize,
    min_concurrent_executions: usize,
    cpu_executions: usize,
    recovery_executions: usize,
}

const FULL_SIZE: Size = Size {
    raw_commits: 3_000,
    sequential_executions: 200,
    concurrent_executions_per_slot: 4,
    min_concurrent_executions: 1_000,
    cpu_executions: 2_000,
    recovery_executions: 10_000,
};

const QUICK_SIZE: Size = Size {
    raw_commits: 200,
    sequential_executions: 10,
    concurrent_executions_per_slot: 1,
    min_concurrent_executions: 20,
    cpu_executions: 20,
    recovery_executions: 200,
};

fn chain(steps: usize) -> Arc<ProcessDef> {
    let mut yaml = String::from("name: chain\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!("  - {{id: s{i}, type: agent_task, agent: worker"));
        if i > 0 {
            yaml.push_str(&format!(", depends_on: [s{}]", i - 1));
        }
        yaml.push_str("}\n");
    }
    Arc::new(parse("chain.yaml", &yaml, Format::Yaml).expect("the chain is valid"))
}

/// The CPU time this process has used, user and system, all threads.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A `/proc/self/status` field in kB (`VmRSS`, `VmHWM`); 0 where there is none.
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS, so the next reading is this phase's peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The raw commit rate: one small insert per transaction, on a database of its own in the same
/// directory, timed in blocks that can be interleaved with the engine's work so that both see
/// the same disk (this VM's shared disk changes speed from one second to the next).
struct RawCommits {
    conn: rusqlite::Connection,
    payload: String,
    commits: usize,
    wall: Duration,
    cpu: Duration,
}

impl RawCommits {
    fn open(dir: &Path, synchronous: Synchronous) -> RawCommits {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("raw-{synchronous:?}-{run}.db"));
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        conn.pragma_update(None, "synchronous", synchronous.pragma())
            .expect("sync");
        // The engine's checkpoint interval and cache, so that the raw side pays its
        // checkpoints as seldom as the engine does.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .expect("wal_autocheckpoint");
        conn.pragma_update(None, "cache_size", -i64::from(WRITER_CACHE_KIB))
            .expect("cache_size");
        conn.execute_batch(
            "CREATE TABLE events (execution_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 payload TEXT NOT NULL, PRIMARY KEY (execution_id, seq)) WITHOUT ROWID",
        )
        .expect("table");
        RawCommits {
            conn,
            payload: "x".repeat(200),
            commits: 0,
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }

    /// Commits `commits` more, adding their time to the totals.
    fn run(&mut self, commits: usize) {
        let (wall, cpu) = (Instant::now(), cpu_time());
        for _ in 0..commits {
            self.conn.execute_batch("BEGIN").expect("begin");
            self.conn
                .prepare_cached("INSERT INTO events VALUES ('exec', ?1, ?2)")
                .expect("prepare")
                .execute(rusqlite::params![self.commits as i64, self.payload])
                .expect("insert");
            self.conn.execute_batch("COMMIT").expect("commit");
            self.commits += 1;
        }
        self.wall += wall.elapsed();
        self.cpu += cpu_time() - cpu;
    }

    fn rate(&self) -> f64 {
        self.commits as f64 / self.wall.as_secs_f64()
    }
}

/// The raw commit rate over `commits` in one block, and the CPU time of one commit.
fn raw_commit_rate(dir: &Path, synchronous: Synchronous, commits: usize) -> (f64, Duration) {
    let mut raw = RawCommits::open(dir, synchronous);
    raw.run(commits);
    (raw.rate(), raw.cpu / commits as u32)
}

/// Has the kernel write back what earlier rows left dirty, so that a row's syncs do not pay
/// for another row's pages.
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Blocks row 1 alternates: raw commits, then executions, ten times over.
const INTERLEAVED_ROUNDS: usize = 10;

/// Row 1's measure: `size.sequential_executions` run one at a time on `engine`, in blocks
/// alternating with blocks of raw commits (`size.raw_commits` in all, with `synchronous`).
/// Returns the raw rate, the engine's wall time and the submissions.
async fn interleaved(
    dir: &Path,
    synchronous: Synchronous,
    size: Size,
    engine: &Engine,
    process: &Arc<ProcessDef>,
) -> (f64, Duration, Vec<(String, Instant)>) {
    let mut raw = RawCommits::open(dir, synchronous);
    let (raw_commits, executions) = (size.raw_commits, size.sequential_executions);
    let (mut wall, mut submitted) = (Duration::ZERO, Vec::new());
    for round in 0..INTERLEAVED_ROUNDS {
        let share = |total: usize| {
            total * (round + 1) / INTERLEAVED_ROUNDS - total * round / INTERLEAVED_ROUNDS
        };
        raw.run(share(raw_commits));
        let (block, mut ids) = run_executions(engine, process, share(executions), 1).await;
        wall += block;
        submitted.append(&mut ids);
    }
    (raw.rate(), wall, submitted)
}

/// When an agent call arrived and when it was answered, by (execution, step).
#[derive(Default)]
struct Timings {
    calls: HashMap<(String, String), (Instant, Instant)>,
}

/// A no-op agent that records when each call arrived and was answered, over any `Network`.
async fn start_agent(net: &dyn Network, addr: &str) -> (String, Arc<Mutex<Timings>>) {
    let mut listener = net.bind(addr).await.expect("bind the agent");
    let local = listener.local_addr().expect("address").to_string();
    let timings = Arc::new(Mutex::new(Timings::default()));
    let record = timings.clone();
    tokio::spawn(async move {
        loop {
            // Once the in-process network is dropped its listener is closed: retrying at once
            // spun on a core through every later row.
            let Some((conn, _)) = accept_next(&mut *listener).await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let arrived = Instant::now();
                        let request: AgentRequest =
                            serde_json::from_slice(&body).expect("an agent request");
                        let answer = Bytes::from(json!({"step": request.step_id}).to_string());
                        record.lock().unwrap().calls.insert(
                            (request.execution_id, request.step_id),
                            (arrived, Instant::now()),
                        );
                        Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (local, timings)
}

fn engine_on(net: Arc<dyn Network>, store: SqliteStore, agent: &str, seed: u64) -> Engine {
    let mut registry = AgentRegistry::new();
    registry.insert("worker", AgentEndpoint::Address(agent.to_string()));
    Engine::new(
        Ports {
            clock: Arc::new(SystemClock),
            net,
            store: Arc::new(store),
            rng: seeded(seed),
        },
        &registry,
        EngineConfig::default(),
    )
    .expect("engine")
}

/// A store with the production settings but `synchronous`, and the committer
/// `PROCTOR_BENCH_COMMITTER` names (`pool`, `task`; the production one otherwise).
fn open(dir: &Path, name: &str, synchronous: Synchronous) -> SqliteStore {
    let defaults = SqliteOptions::default();
    SqliteStore::open_with(
        &dir.join(name),
        &SqliteOptions {
            synchronous,
            committer: match std::env::var("PROCTOR_BENCH_COMMITTER").as_deref() {
                Ok("pool") => proctor::store::Committer::BlockingPool,
                Ok("task") => proctor::store::Committer::Task,
                _ => defaults.committer,
            },
            ..defaults
        },
    )
    .expect("open the store")
}

/// Runs `executions` executions of `process`, at most `in_flight` at a time; returns the wall
/// time and each execution's id with the instant it was submitted.
async fn run_executions(
    engine: &Engine,
    process: &Arc<ProcessDef>,
    executions: usize,
    in_flight: usize,
) -> (Duration, Vec<(String, Instant)>) {
    let next = Arc::new(AtomicUsize::new(0));
    let submitted = Arc::new(Mutex::new(Vec::with_capacity(executions)));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.min(executions) {
        let (engine, process, next, submitted) = (
            engine.clone(),
            process.clone(),
            next.clone(),
            submitted.clone(),
        );
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < executions {
                let at = Instant::now();
                let handle = engine
                    .submit(process.clone(), json!({}))
                    .await
                    .expect("submit");
                submitted.lock().unwrap().push((handle.id.clone(), at));
                let done = handle.wait().await.expect("execution");
                assert_eq!(done.status, ExecutionStatus::Completed);
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("worker");
    }
    let wall = started.elapsed();
    let submitted = std::mem::take(&mut *submitted.lock().unwrap());
    (wall, submitted)
}

/// A request of a call made outside any execution, `id` naming it and keying it.
fn call_request(id: String) -> AgentRequest {
    AgentRequest {
        execution_id: id.clone(),
        step_id: "s0".into(),
        attempt: 1,
        idempotency_key: id,
        input: json!({}),
    }
}

/// The mean time of one agent call, alone, with the engine's client: what a step costs
/// beyond its commit when nothing else is running.
async fn agent_round_trip_us(agent: &str, calls: usize) -> f64 {
    let client = AgentClient::new(Arc::new(TokioNetwork), ClientLimits::default());
    let started = Instant::now();
    for i in 0..calls {
        client
            .call(agent, &call_request(format!("round-trip-{i}")), 10_000)
            .await
            .expect("agent call");
    }
    started.elapsed().as_secs_f64() * 1e6 / calls as f64
}

/// The steps/s of chains of [`CHAIN_STEPS`] run one after another by an engine that cost
/// nothing: each chain is its submit's commit, then per step a call and the commit of its
/// end (the step's end and the next one's start share one), in sequence, because a step is
/// durable before its call is made (persist, then act) and its end before the next one.
fn chain_ceiling_steps_per_s(commit_us: f64, call_us: f64) -> f64 {
    let steps = CHAIN_STEPS as f64;
    1e6 * steps / ((steps + 1.0) * commit_us + steps * call_us)
}

/// Agent calls/s with `in_flight` callers at once, each calling in turn until `calls` are
/// made, with the engine's client on loopback HTTP: what a step costs beyond the engine when
/// many are in flight, so the most steps/s an engine that cost nothing could reach there.
async fn concurrent_calls_per_s(agent: &str, in_flight: usize, calls: usize) -> f64 {
    // Clones share one pool of kept connections.
    let client = AgentClient::new(Arc::new(TokioNetwork), ClientLimits::default());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.min(calls) {
        let (client, next, agent) = (client.clone(), next.clone(), agent.to_string());
        callers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                let request = call_request(format!("ceiling-{in_flight}-{i}"));
                client
                    .call(&agent, &request, 10_000)
                    .await
                    .expect("agent call");
            }
        });
    }
    while let Some(caller) = callers.join_next().await {
        caller.expect("caller");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// The latency the engine adds per step: for each step, from the agent's answer to the step
/// before (or the submit, for the first) to the agent's receipt of this step's call.
fn engine_latencies(timings: &Timings, submitted: &[(String, Instant)]) -> Vec<Duration> {
    let mut gaps = Vec::with_capacity(submitted.len() * CHAIN_STEPS);
    for (id, at) in submitted {
        let mut before = *at;
        for i in 0..CHAIN_STEPS {
            let (arrived, answered) = timings.calls[&(id.clone(), format!("s{i}"))];
            gaps.push(arrived.saturating_duration_since(before));
            before = answered;
        }
    }
    gaps.sort();
    gaps
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    // As the binaries run (`PROCTOR_HUGE_PAGES=on` to compare), before the runtime maps memory.
    proctor::huge_pages::turn_off_unless_asked();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = if args.iter().any(|a| a == "--quick") {
        QUICK_SIZE
    } else {
        FULL_SIZE
    };
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // `--only N`: just row N (for profiling one of them).
    let only: Option<u32> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let runs = |row: u32| only.is_none_or(|o| o == row);
    let dir = tempfile::tempdir().expect("temp dir");
    let process = chain(CHAIN_STEPS);
    let mut rows = Vec::new();
    let mut emit = |row: Row| {
        row.print();
        rows.push(row);
    };

    // 1. One execution after another.
    let (agent, timings) = start_agent(&TokioNetwork, "127.0.0.1:0").await;
    // What bounds the row: a step cannot take less than its commit plus its call.
    let call_us = if runs(1) {
        agent_round_trip_us(&agent, size.raw_commits).await
    } else {
        0.0
    };
    let mut raw = BTreeMap::new();
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        settle_disk();
        if !runs(1) {
            let (rate, _) = raw_commit_rate(dir.path(), synchronous, size.raw_commits);
            raw.insert(format!("{synchronous:?}"), rate);
            continue;
        }
        let store = open(dir.path(), &format!("seq-{synchronous:?}.db"), synchronous);
        let engine = engine_on(Arc::new(TokioNetwork), store, &agent, 1);
        let (rate, wall, submitted) =
            interleaved(dir.path(), synchronous, size, &engine, &process).await;
        raw.insert(format!("{synchronous:?}"), rate);
        emit(Row::plain(
            format!("1. raw SQLite commits/s, WAL {synchronous:?}"),
            rate,
            "commits/s",
        ));
        let gaps = engine_latencies(&timings.lock().unwrap(), &submitted);
        emit(Row::plain(
            format!("1. engine latency per step p50, {synchronous:?}"),
            percentile_us(&gaps, 0.5),
            "µs",
        ));
        let steps_per_s = (size.sequential_executions * CHAIN_STEPS) as f64 / wall.as_secs_f64();
        let row = Row::plain(
            format!("1. durable steps/s, one execution at a time, {synchronous:?}"),
            steps_per_s,
            "steps/s",
        )
        .against(rate, "raw commits/s");
        let row = if synchronous == Synchronous::Full {
            row.at_least(0.8, chain_ceiling_steps_per_s(1e6 / rate, call_us) / rate)
        } else {
            row
        };
        emit(row);
    }
    let raw_full = raw["Full"];
    if runs(1) {
        emit(Row::plain(
            "1. one agent call alone (loopback HTTP), mean",
            call_us,
            "µs",
        ));
        emit(
            Row::plain(
                "1. ceiling: steps/s if the engine cost nothing, Full",
                chain_ceiling_steps_per_s(1e6 / raw_full, call_us),
                "steps/s",
            )
            .against(raw_full, "raw commits/s"),
        );
        // The same with the agent in this process: the engine's own share shows.
        settle_disk();
        let memory: Arc<dyn Network> = Arc::new(MemoryNetwork::default());
        let (agent, _) = start_agent(&*memory, "127.0.0.1:1").await;
        let store = open(dir.path(), "seq-in-process.db", Synchronous::Full);
        let engine = engine_on(memory, store, &agent, 5);
        let (rate, wall, _) =
            interleaved(dir.path(), Synchronous::Full, size, &engine, &process).await;
        let steps_per_s = (size.sequential_executions * CHAIN_STEPS) as f64 / wall.as_secs_f64();
        emit(
            Row::plain(
                "1. durable steps/s, one at a time, Full, in-process agent",
                steps_per_s,
                "steps/s",
            )
            .against(rate, "raw commits/s (beside it)"),
        );
    }

    // 2. Many executions in flight, synchronous=FULL.
    for in_flight in [10, 100, 1_000].into_iter().filter(|_| runs(2)) {
        settle_disk();
        let (agent, timings) = start_agent(&TokioNetwork, "127.0.0.1:0").await;
        let store = open(
            dir.path(),
            &format!("concurrent-{in_flight}.db"),
            Synchronous::Full,
        );
        let engine = engine_on(Arc::new(TokioNetwork), store.clone(), &agent, 2);
        let executions =
            (in_flight * size.concurrent_executions_per_slot).max(size.min_concurrent_executions);
        // What bounds the row: with the engine costing nothing, a step would still be a call.
        let calls_per_s = concurrent_calls_per_s(&agent, in_flight, executions * 2).await;
        // The raw rate this row is held against is measured beside it, half just before and
        // half just after, as this VM's disk changes speed from one minute to the next: row
        // 1's, taken minutes earlier, differed from it by up to half.
        let mut raw = RawCommits::open(dir.path(), Synchronous::Full);
        raw.run(size.raw_commits / 2);
        let (wall, submitted) = run_executions(&engine, &process, executions, in_flight).await;
        raw.run(size.raw_commits - size.raw_commits / 2);
        let raw_full = raw.rate();
        emit(Row::plain(
            format!("2. raw SQLite commits/s, Full, beside {in_flight} in flight"),
            raw_full,
            "commits/s",
        ));
        emit(
            Row::plain(
                format!("2. ceiling: agent calls/s alone, {in_flight} in flight"),
                calls_per_s,
                "calls/s",
            )
            .against(raw_full, "raw commits/s (Full)"),
        );
        let steps_per_s = (executions * CHAIN_STEPS) as f64 / wall.as_secs_f64();
        let row = Row::plain(
            format!("2. steps/s, {in_flight} executions in flight, Full"),
            steps_per_s,
            "steps/s",
        )
        .against(raw_full, "raw commits/s (Full)");
        let row = if in_flight == 100 {
            row.at_least(5.0, calls_per_s / raw_full)
        } else {
            row
        };
        emit(row);
        let stats = store.commit_stats();
        emit(Row::plain(
            format!("2. transitions per transaction, {in_flight} in flight"),
            stats.writes as f64 / stats.transactions.max(1) as f64,
            "writes",
        ));
        let gaps = engine_latencies(&timings.lock().unwrap(), &submitted);
        emit(Row::plain(
            format!("2. engine latency per step p50, {in_flight} in flight"),
            percentile_us(&gaps, 0.5),
            "µs",
        ));
        emit(Row::plain(
            format!("2. engine latency per step p99, {in_flight} in flight"),
            percentile_us(&gaps, 0.99),
            "µs",
        ));
    }

    // 3. CPU per step with an in-process agent. On this kind of machine a sync itself costs CPU
    // (the kernel's writeback), so NORMAL shows the engine's own share and FULL what it costs
    // durably.
    for synchronous in [Synchronous::Full, Synchronous::Normal]
        .into_iter()
        .filter(|_| runs(3))
    {
        settle_disk();
        let (_, raw_cpu) = raw_commit_rate(dir.path(), synchronous, size.raw_commits);
        let memory: Arc<dyn Network> = Arc::new(MemoryNetwork::default());
        let (agent, _) = start_agent(&*memory, "127.0.0.1:1").await;
        let store = open(dir.path(), &format!("cpu-{synchronous:?}.db"), synchronous);
        let engine = engine_on(memory, store, &agent, 3);
        let cpu = cpu_time();
        run_executions(&engine, &process, size.cpu_executions, 10).await;
        let per_step = (cpu_time() - cpu) / (size.cpu_executions * CHAIN_STEPS) as u32;
        emit(Row::plain(
            format!("3. raw SQLite insert + commit, CPU time, {synchronous:?}"),
            raw_cpu.as_secs_f64() * 1e6,
            "µs",
        ));
        emit(
            Row::plain(
                format!("3. CPU per step, engine + in-process agent, {synchronous:?}"),
                per_step.as_secs_f64() * 1e6,
                "µs",
            )
            .against(raw_cpu.as_secs_f64() * 1e6, "one raw insert"),
        );
    }

    // 4. Recovery of many in-flight executions.
    if runs(4) {
        settle_disk();
        for row in recovery(dir.path(), size.recovery_executions).await {
            emit(row);
        }
    }

    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&rows).expect("json"))
            .expect("write the results");
    }
}

/// Writes `n` executions of a three-step chain whose middle step was running when the engine
/// died (written with `synchronous=OFF`: the setup is not what is measured), then recovers
/// them with a fresh engine and drives them all to their end.
async fn recovery(dir: &Path, n: usize) -> Vec<Row> {
    let process = chain(3);
    let path = dir.join("recovery.db");
    {
        let store = open(dir, "recovery.db", Synchronous::Off);
        let mut rng = seeded(1);
        let now = SystemClock.now_ms();
        for i in 0..n {
            let mut exec = Execution::new(format!("exec-{i:06}"), process.clone(), json!({}), now);
            store.create(&exec).await.expect("create");
            for input in [
                Input::Start,
                Input::AgentReturned {
                    lane: Lane::Main,
                    step: 0,
                    attempt: 1,
                    result: Ok(json!({"ok": true})),
                },
            ] {
                let t = exec.apply(input, now, &mut *rng);
                let dirty: Vec<usize> = t.dirty_steps.iter().copied().collect();
                store
                    .commit(&exec, &dirty, &t.events, &t.checkpoints)
                    .await
                    .expect("commit");
            }
        }
    }
    let (agent, _) = start_agent(&TokioNetwork, "127.0.0.1:0").await;
    let engine = engine_on(
        Arc::new(TokioNetwork),
        SqliteStore::open(&path).expect("open"),
        &agent,
        4,
    );
    reset_peak_rss();
    let rss_before = proc_status_kb("VmRSS");
    let started = Instant::now();
    let recovery = engine
        .recover(RecoveryConfig::default())
        .await
        .expect("recover");
    let recovered = started.elapsed();
    assert_eq!(recovery.report.retried, n, "every execution is recovered");
    for handle in recovery.handles {
        let exec = handle.wait().await.expect("execution");
        assert_eq!(exec.status, ExecutionStatus::Completed);
    }
    let finished = started.elapsed();
    let peak_kb = proc_status_kb("VmHWM");
    vec![
        Row::plain(
            format!("4. recovery of {n} in-flight executions"),
            recovered.as_secs_f64() * 1e3,
            "ms",
        )
        .target("< 1000 ms", recovered < Duration::from_secs(1)),
        Row::plain(
            format!("4. recovery and completion of {n} executions"),
            finished.as_secs_f64() * 1e3,
            "ms",
        ),
        Row::plain(
            format!("4. peak RSS, {n} executions in flight"),
            peak_kb as f64 / 1024.0,
            "MiB",
        ),
        Row::plain(
            "4. peak RSS above the idle engine, per execution".to_string(),
            peak_kb.saturating_sub(rss_before) as f64 * 1024.0 / n as f64,
            "bytes",
        ),
    ]
}

/// An in-process `Network`: a connection is a pair of in-memory pipes, so an agent in this
/// process is called with the engine's real HTTP client and no kernel sockets.
#[derive(Default)]
struct MemoryNetwork {
    listeners: Mutex<BTreeMap<String, tokio::sync::mpsc::Sender<tokio::io::DuplexStream>>>,
}

/// Bytes buffered each way in one in-memory connection.
const PIPE_BYTES: usize = 64 * 1024;

#[async_trait]
impl Network for MemoryNetwork {
    async fn connect(&self, addr: &str) -> std::io::Result<Box<dyn Conn>> {
        let listener = self.listeners.lock().unwrap().get(addr).cloned();
        let Some(listener) = listener else {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        };
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        listener
            .send(theirs)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
        Ok(Box::new(ours))
    }

    async fn bind(&self, addr: &str) -> std::io::Result<Box<dyn Listener>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        self.listeners.lock().unwrap().insert(addr.to_string(), tx);
        Ok(Box::new(MemoryListener { rx }))
    }
}

struct MemoryListener {
    rx: tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>,
}

#[async_trait]
impl Listener for MemoryListener {
    async fn accept(&mut self) -> std::io::Result<(Box<dyn Conn>, SocketAddr)> {
        match self.rx.recv().await {
            Some(conn) => Ok((Box::new(conn), SocketAddr::from(([127, 0, 0, 1], 1)))),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
    }
}
