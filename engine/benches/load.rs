//! `cargo xtask load` (this bench: `cargo bench -p proctor-engine --bench load -- [--clients N]
//! [--seconds S]`): a load test of `proctor serve` over real HTTP on loopback.
//!
//! Takes the `proctor` binary cargo built with it (the bench profile: optimised), starts
//! `proctor serve` on a free
//! loopback port with a temporary database and the built-in example agent (`worker`, no delay),
//! registers a two-step sequential definition, then runs `--clients` concurrent clients for
//! `--seconds`. Each client loops: start an execution (a unique `Idempotency-Key`), then get
//! it. Afterwards it counts the executions by status through the listing API (at the end of the
//! load, and again once the unfinished ones had a few seconds to finish), stops the server with
//! SIGTERM (it must exit 0) and prints a table: requests and errors per kind, requests/s, and
//! latency percentiles per kind.
//!
//! Everything is bounded: at most 256 clients and 120 seconds, a timeout on every request, on
//! the server's start and on its stop, and at most `SAMPLE_CAP` latency samples per kind (a
//! uniform reservoir sample beyond that: the percentiles are then estimates, the count and the
//! max stay exact).
//!
//! Real time and threads are fine here: this is a measuring tool, not engine or simulator
//! logic.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser as _;
use proctor::api::client::{ApiClient, ClientError};
use proctor::core::ExecutionStatus;
use proctor::network::TokioNetwork;
use serde_json::json;

const USAGE: &str = "usage: cargo xtask load [--clients N] [--seconds S]";
/// The profile this was built with.
const BUILD: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

const DEFAULT_CLIENTS: usize = 16;
const MAX_CLIENTS: usize = 256;
const DEFAULT_SECONDS: u64 = 10;
const MAX_SECONDS: u64 = 120;

/// Every request's limit: connect, send and read the whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to print its address (recovery of an empty database first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The server's own grace for requests and agent calls in flight on SIGTERM...
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// ... and how long past it we wait for it to exit before killing it.
const STOP_SLACK: Duration = Duration::from_secs(10);
/// After the load, how long the unfinished executions get to finish before the second count.
const SETTLE: Duration = Duration::from_secs(10);
/// Latency samples kept per kind (8 bytes each): beyond this, a uniform reservoir sample.
const SAMPLE_CAP: usize = 1_000_000;
/// Distinct error messages kept as examples.
const ERROR_EXAMPLES: usize = 5;
/// Lines of the server's stderr kept (the end of it).
const STDERR_TAIL_LINES: usize = 20;

/// The definition under load: two agent calls, one after the other.
const DEFINITION_NAME: &str = "load";
const DEFINITION: &str = "
name: load
steps:
  - { id: first, type: agent_task, agent: worker }
  - { id: second, type: agent_task, agent: worker, depends_on: [first] }
";
const AGENTS: &str = "agents:\n  worker: { example: { delay_ms: 0 } }\n";

/// Execution statuses, as the listing API names them.
fn statuses() -> impl Iterator<Item = &'static str> {
    ExecutionStatus::ALL.iter().map(|s| s.as_str())
}

fn main() {
    // `cargo bench` passes `--bench` to every bench binary.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Err(e) = load(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load(args: &[String]) -> Result<()> {
    let args = parse_args(args)?;
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_proctor"));
    let dir = tempfile::Builder::new()
        .prefix("proctor-load-")
        .tempdir()
        .context("creating a temporary directory")?;
    let agents = dir.path().join("agents.yaml");
    std::fs::write(&agents, AGENTS).with_context(|| format!("writing {}", agents.display()))?;
    let db = dir.path().join("load.db");

    let mut server = Server::start(&binary, &db, &agents)?;
    eprintln!(
        "load: server at {} ({} build), {} client(s) for {}s",
        server.addr, BUILD, args.clients, args.seconds
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(drive(&server.addr, &args));
    // Stop the server whatever happened to the load: SIGTERM, then its exit status.
    let stopped = server.stop();
    let stderr = server.stderr_tail();
    drop(runtime);

    let outcome = outcome?;
    print!("{}", outcome.report(&args));
    let status = stopped?;
    println!(
        "server: {}",
        server.stopped_line().unwrap_or("no `stopped:` line")
    );
    if !stderr.is_empty() {
        println!("server stderr (the end of it):\n{stderr}");
    }
    if !status.success() {
        bail!("load: the server did not exit 0 on SIGTERM ({status})");
    }
    let errors = outcome.start.errors + outcome.get.errors;
    if errors > 0 {
        bail!("load: {errors} request(s) failed");
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Args {
    clients: usize,
    seconds: u64,
}

/// The arguments after `--` (clap: `--clients 8` and `--clients=8` alike, bounds checked).
fn parse_args(args: &[String]) -> Result<Args> {
    let parsed =
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().map(String::as_str)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Args {
        clients: parsed.clients as usize,
        seconds: parsed.seconds,
    })
}

#[derive(clap::Parser)]
#[command(about = "Load test of `proctor serve`", override_usage = USAGE)]
struct Cli {
    /// Concurrent clients.
    #[arg(long, default_value_t = DEFAULT_CLIENTS as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CLIENTS as u64))]
    clients: u64,
    /// How long to drive the server.
    #[arg(long, default_value_t = DEFAULT_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    seconds: u64,
}

/// A running `proctor serve`; killed on drop if it is still running (an error midway).
struct Server {
    child: Child,
    addr: String,
    /// Its stdout, line by line (it prints a handful of lines).
    stdout: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    fn start(binary: &Path, db: &Path, agents: &Path) -> Result<Server> {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0", "--agents"])
            .arg(agents)
            .arg("--shutdown-grace-ms")
            .arg(SHUTDOWN_GRACE.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let err = child.stderr.take().expect("stderr is piped");
        let tail = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            stdout,
            stdout_seen: Vec::new(),
            stderr,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.stdout.recv_timeout(left) {
                Ok(line) => {
                    let addr = line
                        .strip_prefix("listening on http://")
                        .map(str::to_string);
                    server.stdout_seen.push(line);
                    if let Some(addr) = addr {
                        server.addr = addr.trim().to_string();
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "load: the server printed no address within {}s{}",
                    START_TIMEOUT.as_secs(),
                    server.stderr_suffix()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait().context("waiting for the server")?;
                    bail!(
                        "load: the server exited before listening ({status}){}",
                        server.stderr_suffix()
                    )
                }
            }
        }
    }

    /// SIGTERM, then its exit status; killed if it outlives its grace by `STOP_SLACK`.
    fn stop(&mut self) -> Result<ExitStatus> {
        if !cfg!(unix) {
            bail!("load: stopping the server needs SIGTERM (unix only)");
        }
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !term.success() {
            bail!("load: kill -TERM {} failed ({term})", self.child.id());
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE + STOP_SLACK;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the server")? {
                // The stdout thread ends at EOF: take what it still has.
                self.stdout_seen.extend(self.stdout.try_iter());
                while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(500)) {
                    self.stdout_seen.push(line);
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "load: the server did not exit within {}s of SIGTERM (killed)",
                    (SHUTDOWN_GRACE + STOP_SLACK).as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's last words: `stopped: N agent call(s) were in flight, M left for recovery`.
    fn stopped_line(&self) -> Option<&str> {
        self.stdout_seen
            .iter()
            .rev()
            .find(|l| l.starts_with("stopped:"))
            .map(String::as_str)
    }

    /// The end of stderr, less the expected warning about running without tokens.
    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter()
            .filter(|l| !l.contains("no --tokens file"))
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn stderr_suffix(&self) -> String {
        let tail = self.stderr_tail();
        if tail.is_empty() {
            String::new()
        } else {
            format!("; stderr:\n{tail}")
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the run measured.
#[derive(Debug)]
struct Outcome {
    start: KindStats,
    get: KindStats,
    /// The load phase's wall time: from the first request to the last client's end.
    wall: Duration,
    /// Starts answered `created: false` (must be none: every key is new).
    not_created: u64,
    /// Executions by status right after the load...
    at_end: BTreeMap<String, u64>,
    /// ... and after up to `SETTLE` more for the unfinished ones (`None`: none was).
    settled: Option<(Duration, BTreeMap<String, u64>)>,
}

/// Requests of one kind: counts, errors by reason, latencies of the successful ones.
#[derive(Debug)]
struct KindStats {
    requests: u64,
    errors: u64,
    reasons: BTreeMap<String, u64>,
    examples: Vec<String>,
    latencies: Reservoir,
}

impl KindStats {
    fn new(seed: u64) -> KindStats {
        KindStats {
            requests: 0,
            errors: 0,
            reasons: BTreeMap::new(),
            examples: Vec::new(),
            latencies: Reservoir::new(SAMPLE_CAP, seed),
        }
    }

    fn ok(&mut self, took: Duration) {
        self.requests += 1;
        self.latencies.add(took);
    }

    fn error(&mut self, e: &ClientError) {
        self.requests += 1;
        self.errors += 1;
        *self.reasons.entry(reason(e)).or_insert(0) += 1;
        let message = e.to_string();
        if self.examples.len() < ERROR_EXAMPLES && !self.examples.contains(&message) {
            self.examples.push(message);
        }
    }
}

/// An error's class, bounded in number (a message would make one entry per request).
fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Transport(m) if m.starts_with("no response") => "timeout".to_string(),
        ClientError::Transport(_) => "transport".to_string(),
        ClientError::Api { status, kind, .. } => format!("http {status} {kind}"),
        ClientError::Decode(_) => "decode".to_string(),
    }
}

/// At most `cap` latencies, a uniform sample of all those added (Algorithm R); the count and
/// the max are exact.
#[derive(Debug)]
struct Reservoir {
    cap: usize,
    seen: u64,
    max: Duration,
    samples: Vec<u64>,
    /// xorshift64* state: a sample's choice needs no real randomness.
    rng: u64,
}

impl Reservoir {
    fn new(cap: usize, seed: u64) -> Reservoir {
        Reservoir {
            cap,
            seen: 0,
            max: Duration::ZERO,
            samples: Vec::new(),
            rng: seed | 1,
        }
    }

    fn add(&mut self, took: Duration) {
        self.seen += 1;
        self.max = self.max.max(took);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        if self.samples.len() < self.cap {
            self.samples.push(nanos);
        } else {
            let slot = self.next() % self.seen;
            if let Some(s) = usize::try_from(slot)
                .ok()
                .and_then(|i| self.samples.get_mut(i))
            {
                *s = nanos;
            }
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn sampled(&self) -> bool {
        self.seen > self.samples.len() as u64
    }

    /// p50, p90, p99 (nearest rank over the samples) and the exact max.
    fn summary(&self) -> Option<[Duration; 4]> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let at = |p: f64| Duration::from_nanos(percentile(&sorted, p));
        Some([at(0.50), at(0.90), at(0.99), self.max])
    }
}

/// The nearest-rank percentile of a sorted, non-empty slice: the smallest value with at least
/// `p` of the values at or below it.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Registers the definition, runs the clients, counts the executions.
async fn drive(addr: &str, args: &Args) -> Result<Outcome> {
    let client = ApiClient::new(
        Arc::new(TokioNetwork),
        addr,
        REQUEST_TIMEOUT.as_millis() as u64,
    );
    client.health().await.context("GET /api/health")?;
    let registered = client
        .register_definition(DEFINITION)
        .await
        .context("registering the load definition")?;
    if registered.name != DEFINITION_NAME {
        bail!("registered `{}`, not `{DEFINITION_NAME}`", registered.name);
    }

    let stats = Arc::new(Mutex::new((KindStats::new(1), KindStats::new(2), 0u64)));
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.seconds);
    let progress = tokio::spawn({
        let stats = stats.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let (requests, errors) = {
                    let s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    (s.0.requests + s.1.requests, s.0.errors + s.1.errors)
                };
                eprintln!(
                    "load: {:>3}s: {requests} request(s), {errors} error(s)",
                    began.elapsed().as_secs()
                );
            }
        }
    });
    let clients: Vec<_> = (0..args.clients)
        .map(|n| tokio::spawn(run_client(n, client.clone(), deadline, stats.clone())))
        .collect();
    // A client starts no iteration past the deadline; one begun before it makes two requests,
    // each under the request timeout.
    let limit = deadline + 2 * REQUEST_TIMEOUT + Duration::from_secs(5);
    for handle in clients {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, handle).await {
            Ok(joined) => joined.context("a client panicked")?,
            Err(_) => {
                progress.abort();
                bail!(
                    "load: clients still running {}s past the end",
                    limit.duration_since(deadline).as_secs()
                )
            }
        }
    }
    let wall = began.elapsed();
    progress.abort();
    // Aborted, it drops its handle on the stats once it is polled again: wait for that.
    let _ = progress.await;
    let (start, get, not_created) = Arc::into_inner(stats)
        .context("every client is done")?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());

    let at_end = count_by_status(&client, start.requests).await?;
    let unfinished = |counts: &BTreeMap<String, u64>| {
        counts.get("pending").copied().unwrap_or(0) + counts.get("running").copied().unwrap_or(0)
    };
    let settled = if unfinished(&at_end) > 0 {
        let waited = Instant::now();
        let settle_by = waited + SETTLE;
        loop {
            let busy = client
                .list("status=running&limit=1")
                .await
                .context("listing running executions")?;
            let waiting = client
                .list("status=pending&limit=1")
                .await
                .context("listing pending executions")?;
            if (busy.executions.is_empty() && waiting.executions.is_empty())
                || Instant::now() >= settle_by
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let counts = count_by_status(&client, start.requests).await?;
        Some((waited.elapsed(), counts))
    } else {
        None
    };
    Ok(Outcome {
        start,
        get,
        wall,
        not_created,
        at_end,
        settled,
    })
}

type Shared = Arc<Mutex<(KindStats, KindStats, u64)>>;

/// One client: start an execution, get it, until the deadline.
async fn run_client(n: usize, client: ApiClient, deadline: Instant, stats: Shared) {
    let mut seq = 0u64;
    while Instant::now() < deadline {
        seq += 1;
        let key = format!("load-{n}-{seq}");
        let input = json!({ "client": n, "seq": seq });
        let sent = Instant::now();
        let started = client.start(DEFINITION_NAME, &input, Some(&key)).await;
        let took = sent.elapsed();
        let id = {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            match started {
                Ok(started) => {
                    s.0.ok(took);
                    if !started.created {
                        s.2 += 1;
                    }
                    started.execution.id
                }
                Err(e) => {
                    s.0.error(&e);
                    continue;
                }
            }
        };
        let sent = Instant::now();
        let got = client.get(&id).await;
        let took = sent.elapsed();
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        match got {
            Ok(_) => s.1.ok(took),
            Err(e) => s.1.error(&e),
        }
    }
}

/// Every execution's status, through the listing API, page by page. `expected` (how many
/// starts there were) bounds the pages read.
async fn count_by_status(client: &ApiClient, expected: u64) -> Result<BTreeMap<String, u64>> {
    const PAGE: u64 = 500;
    let mut counts: BTreeMap<String, u64> = statuses().map(|s| (s.to_string(), 0)).collect();
    let mut after: Option<String> = None;
    for _ in 0..expected / PAGE + 3 {
        let query = match &after {
            Some(cursor) => format!("limit={PAGE}&after={cursor}"),
            None => format!("limit={PAGE}"),
        };
        let page = client.list(&query).await.context("listing executions")?;
        for e in &page.executions {
            *counts.entry(e.status.clone()).or_insert(0) += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(counts),
        }
    }
    bail!(
        "load: the listing did not end within {} page(s)",
        expected / PAGE + 3
    )
}

impl Outcome {
    fn report(&self, args: &Args) -> String {
        let secs = self.wall.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        let header = [
            "kind", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
        ];
        let mut rows: Vec<[String; 8]> = Vec::new();
        for (name, k) in [("start", &self.start), ("get", &self.get)] {
            let [p50, p90, p99, max] = match k.latencies.summary() {
                Some(s) => s.map(ms),
                None => ["-"; 4].map(String::from),
            };
            rows.push([
                name.to_string(),
                k.requests.to_string(),
                k.errors.to_string(),
                format!("{:.1}", rate(k.requests)),
                p50,
                p90,
                p99,
                max,
            ]);
        }
        let requests = self.start.requests + self.get.requests;
        let errors = self.start.errors + self.get.errors;
        rows.push([
            "total".to_string(),
            requests.to_string(),
            errors.to_string(),
            format!("{:.1}", rate(requests)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);

        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let rule = widths.map(|w| "-".repeat(w));
        let mut out = format!(
            "\nload: {} client(s), {:.2}s, {} build\n\n",
            args.clients, secs, BUILD
        );
        out += &format_row(&header.map(String::from), &widths);
        out += &format_row(&rule, &widths);
        let (total, kinds) = rows.split_last().expect("the totals row is there");
        for row in kinds {
            out += &format_row(row, &widths);
        }
        out += &format_row(&rule, &widths);
        out += &format_row(total, &widths);
        out += "latency: successful requests only, wall clock from send to the whole answer\n";
        for (name, k) in [("start", &self.start), ("get", &self.get)] {
            if k.latencies.sampled() {
                out += &format!(
                    "latency: {name}: percentiles from a uniform sample of {} of {} requests\n",
                    k.latencies.samples.len(),
                    k.latencies.seen
                );
            }
        }
        for (name, k) in [("start", &self.start), ("get", &self.get)] {
            if k.errors > 0 {
                let reasons: Vec<String> =
                    k.reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
                out += &format!("errors: {name}: {}\n", reasons.join(" "));
                for example in &k.examples {
                    out += &format!("    e.g. {example}\n");
                }
            }
        }
        if self.not_created > 0 {
            out += &format!(
                "anomaly: {} start(s) with a fresh key answered `created: false`\n",
                self.not_created
            );
        }
        out += &format!(
            "executions at the end of the load: {}\n",
            format_counts(&self.at_end)
        );
        if let Some((waited, counts)) = &self.settled {
            out += &format!(
                "executions {:.1}s later: {}\n",
                waited.as_secs_f64(),
                format_counts(counts)
            );
        }
        out
    }
}

/// `completed=1200 running=3 (1203 in all)`, zero counts left out.
fn format_counts(counts: &BTreeMap<String, u64>) -> String {
    let mut parts: Vec<String> = statuses()
        .filter_map(|s| {
            counts
                .get(s)
                .filter(|&&n| n > 0)
                .map(|n| format!("{s}={n}"))
        })
        .collect();
    // A status the API grew after this was written still shows.
    for (s, n) in counts {
        if *n > 0 && s.parse::<ExecutionStatus>().is_err() {
            parts.push(format!("{s}={n}"));
        }
    }
    let all: u64 = counts.values().sum();
    if parts.is_empty() {
        "none".to_string()
    } else {
        format!("{} ({all} in all)", parts.join(" "))
    }
}

/// The kind column left-aligned, numbers right-aligned; trailing empty cells left out.
fn format_row(cells: &[String; 8], widths: &[usize; 8]) -> String {
    let used = cells
        .iter()
        .rposition(|c| !c.is_empty())
        .map_or(0, |i| i + 1);
    let mut line = String::new();
    for (i, (cell, &w)) in cells.iter().zip(widths).take(used).enumerate() {
        if i > 0 {
            line += " | ";
        }
        if i == 0 {
            line += &format!("{cell:<w$}");
        } else {
            line += &format!("{cell:>w$}");
        }
    }
    line.trim_end().to_string() + "\n"
}

// Run by engine/tests/load_tool.rs, which includes this file: a `harness = false` bench runs
// no tests of its own (here its `#[test]`s are compiled out, hence the allows).
#[cfg(test)]
#[allow(unused_imports, dead_code)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn arguments_have_defaults_take_both_forms_and_are_bounded() {
        assert_eq!(
            parse_args(&[]).unwrap(),
            Args {
                clients: 16,
                seconds: 10,
            }
        );
        assert_eq!(
            parse_args(&strings(&["--clients", "8", "--seconds=3"])).unwrap(),
            Args {
                clients: 8,
                seconds: 3,
            }
        );
        let most = parse_args(&strings(&["--clients=256", "--seconds", "120"])).unwrap();
        assert_eq!((most.clients, most.seconds), (256, 120));
        for bad in [
            &["--clients", "257"][..],
            &["--clients", "0"],
            &["--seconds", "121"],
            &["--seconds=0"],
            &["--seconds"],
            &["--clients", "many"],
            &["--release"],
            &["--verbose"],
        ] {
            assert!(parse_args(&strings(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50);
        assert_eq!(percentile(&values, 0.90), 90);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[1, 2], 0.0), 1);
        assert_eq!(percentile(&[1, 2], 1.0), 2);
    }

    #[test]
    fn the_reservoir_is_capped_and_keeps_count_and_max_exact() {
        let mut r = Reservoir::new(1000, 7);
        for i in 1..=100_000u64 {
            r.add(Duration::from_micros(i));
        }
        assert_eq!((r.samples.len(), r.seen), (1000, 100_000));
        assert!(r.sampled());
        let [p50, _, p99, max] = r.summary().unwrap();
        assert_eq!(max, Duration::from_micros(100_000));
        // A uniform sample of 1..=100000: the median is near 50000.
        let p50 = p50.as_micros() as f64;
        assert!((40_000.0..60_000.0).contains(&p50), "p50 {p50}");
        assert!(p99 > Duration::from_micros(90_000), "p99 {p99:?}");

        let mut exact = Reservoir::new(1000, 7);
        for i in [3u64, 1, 2] {
            exact.add(Duration::from_millis(i));
        }
        assert!(!exact.sampled());
        let ms = Duration::from_millis;
        assert_eq!(exact.summary(), Some([ms(2), ms(3), ms(3), ms(3)]));
        assert_eq!(Reservoir::new(10, 1).summary(), None);
    }

    #[test]
    fn the_report_has_a_row_per_kind_and_a_total() {
        let mut start = KindStats::new(1);
        let mut get = KindStats::new(2);
        for i in 1..=10 {
            start.ok(Duration::from_millis(i));
            get.ok(Duration::from_micros(500));
        }
        start.error(&ClientError::Transport(
            "no response from x within 10ms".into(),
        ));
        start.error(&ClientError::Api {
            status: 503,
            kind: "unavailable".into(),
            message: "busy".into(),
        });
        let outcome = Outcome {
            start,
            get,
            wall: Duration::from_secs(2),
            not_created: 0,
            at_end: [("completed".to_string(), 8), ("running".to_string(), 2)].into(),
            settled: Some((
                Duration::from_millis(300),
                [("completed".to_string(), 10)].into(),
            )),
        };
        let args = Args {
            clients: 2,
            seconds: 2,
        };
        let report = outcome.report(&args);
        let cells = |first: &str| -> Vec<String> {
            let line = report.lines().find(|l| l.starts_with(first)).unwrap();
            line.split('|').map(|c| c.trim().to_string()).collect()
        };
        assert_eq!(
            cells("start"),
            ["start", "12", "2", "6.0", "5.00", "9.00", "10.00", "10.00"]
        );
        assert_eq!(
            cells("get "),
            ["get", "10", "0", "5.0", "0.50", "0.50", "0.50", "0.50"]
        );
        assert_eq!(cells("total"), ["total", "22", "2", "11.0"]);
        assert!(
            report.contains("errors: start: http 503 unavailable=1 timeout=1"),
            "{report}"
        );
        assert!(
            report.contains("executions at the end of the load: running=2 completed=8 (10 in all)"),
            "{report}"
        );
        assert!(
            report.contains("executions 0.3s later: completed=10 (10 in all)"),
            "{report}"
        );
    }
}
