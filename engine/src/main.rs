//! The `proctor` command: validate definitions, run an execution against agents, serve the
//! API and the example agent; the operator's read-only commands are in `operator.rs`.

mod operator;

// glibc malloc's arena locks took a fifth of the CPU with 100 executions in flight
// (docs/PERFORMANCE.md); mimalloc's per-thread heaps do not contend.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::Value;

use proctor::agent::example::{self, Behaviour, RunningAgent};
use proctor::agent::AgentRegistry;
use proctor::clock::{Clock, SystemClock};
use proctor::core::ExecutionStatus;
use proctor::definition;
use proctor::event::{DomainEvent, EventRecord};
use proctor::network::{Network as _, TokioNetwork};
use proctor::store::{ControlAction, ControlRequest, SignalRequest, SqliteStore, Storage};
use proctor::{Engine, EngineConfig, Ports, RecoveryConfig};

#[derive(Parser)]
#[command(
    name = "proctor",
    version,
    about = "A durable process engine",
    after_help = operator::TOP_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a process definition; prints every problem and exits 1 if there is one.
    Validate {
        /// The definition (YAML, or JSON for .json files).
        file: PathBuf,
        /// Also check agent names against this agents file.
        #[arg(long)]
        agents: Option<PathBuf>,
    },
    /// Run one execution to completion, printing each event as it happens.
    Run {
        definition: PathBuf,
        /// The execution input: JSON text, or @FILE.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Agents file: name -> url, or `example` for the built-in example agent.
        #[arg(long)]
        agents: PathBuf,
        /// SQLite database file (created if missing).
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
        /// Seed for the engine's random source (ids, retry jitter); random if omitted.
        #[arg(long)]
        seed: Option<u64>,
        /// Stop (pause) once this step completes; its checkpoint is stored.
        #[arg(long)]
        until: Option<String>,
    },
    /// List an execution's checkpoints (one per completed step, until pruned).
    Checkpoints {
        id: String,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
    },
    /// List executions, newest first: status, progress, when created and last changed.
    List(operator::ListArgs),
    /// Show one execution: its state, then each step's status, attempts, timing and error.
    Show(operator::ShowArgs),
    /// Print an execution's events (its history and audit log), oldest first.
    History(operator::HistoryArgs),
    /// Print an execution's events, then follow new ones until it ends.
    Tail(operator::TailArgs),
    /// Show each time an execution was resumed, recovered or reset.
    Lineage(operator::LineageArgs),
    /// Draw a definition's graph (Graphviz DOT or Mermaid) after validating it.
    #[command(visible_alias = "graph")]
    Dot(operator::DotArgs),
    /// Reset an execution to a checkpoint: a new execution starts from that state and runs.
    Reset {
        id: String,
        #[arg(long)]
        agents: PathBuf,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
        /// The checkpoint's seq (see `proctor checkpoints`); the latest if omitted.
        #[arg(long)]
        seq: Option<u64>,
        /// A new input (JSON, or @FILE); the original if omitted.
        #[arg(long)]
        input: Option<String>,
        /// Replace a completed step's output: STEP=JSON (repeatable).
        #[arg(long = "output", value_name = "STEP=JSON")]
        outputs: Vec<String>,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Recover every interrupted execution in the database and drive them to the end.
    Recover {
        /// Agents file, as for `run`.
        #[arg(long)]
        agents: PathBuf,
        /// SQLite database file.
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
        /// Fail, rather than resume, executions created longer ago than this.
        #[arg(long, default_value_t = proctor::recovery::DEFAULT_MAX_AGE_HOURS)]
        max_age_hours: u64,
        /// Print what recovery would do and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Send a named signal (with an optional JSON payload) to an execution; a `wait_signal`
    /// step for that name consumes it, now or when the execution reaches it.
    Signal {
        id: String,
        name: String,
        /// JSON, or `@file.json`.
        #[arg(long)]
        payload: Option<String>,
        /// The signal's id: sending the same id again is a no-op (default: a fresh one).
        #[arg(long = "signal-id")]
        signal_id: Option<String>,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
    },
    /// Ask for an execution to pause: no new step starts; steps in flight finish.
    Pause {
        id: String,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
    },
    /// Ask for a paused execution to resume.
    Resume {
        id: String,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
    },
    /// Ask for an execution to be cancelled.
    Cancel {
        id: String,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retention: delete terminal executions (and their history) older than `--older-than`;
    /// `--dry-run` lists what would go. Pending, running and paused ones are never touched.
    Purge {
        /// e.g. `30d`, `12h`.
        #[arg(long = "older-than")]
        older_than: String,
        #[arg(long = "dry-run")]
        dry_run: bool,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
    },
    /// Show executions (or one execution's steps and events) in a database.
    Status {
        id: Option<String>,
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
    },
    /// Serve the HTTP API (see engine/openapi.yaml) until SIGTERM or Ctrl-C: recovery first,
    /// then definitions, executions and their live event streams.
    Serve {
        /// SQLite database file (created if missing).
        #[arg(long, default_value = "proctor.db")]
        db: PathBuf,
        /// Address to listen on (port 0 picks a free one; the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Agents file: name -> url, or `example` for the built-in example agent.
        #[arg(long)]
        agents: PathBuf,
        /// Bearer tokens file (`tokens: [{name, token, tenant}]`). Without one, the API is
        /// open and every request acts for the default tenant: for local use only.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Inbound webhooks file (`webhooks: [{name, secret_env, tenant, signal | start}]`):
        /// `POST /api/webhooks/NAME[/EXECUTION]`, signed with HMAC-SHA256, becomes a signal or
        /// a start. Refused at start if any entry is wrong (a secret's variable unset, ...).
        #[arg(long)]
        webhooks: Option<PathBuf>,
        /// On shutdown, how long requests and agent calls in progress may take to finish.
        #[arg(long, default_value_t = 10_000)]
        shutdown_grace_ms: u64,
        /// Seed for the engine's random source (ids, retry jitter); random if omitted.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Serve the example agent over HTTP (POST /run) until interrupted.
    Agent {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: String,
        /// Name the agent reports in its outputs.
        #[arg(long, default_value = "example")]
        name: String,
        /// Fail the first N attempts of each idempotency key (HTTP 503).
        #[arg(long, default_value_t = 0)]
        fail_first: u32,
        /// Wait this many milliseconds before each answer.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
}

/// The engine's settings from the environment: `PROCTOR_SECRET_<NAME>` variables are the
/// secrets `http` steps' headers may name.
fn engine_config() -> EngineConfig {
    EngineConfig {
        // `vars()` would panic on a variable that is not UTF-8; such a one is no secret of ours.
        secrets: proctor::secrets::Secrets::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        ),
        smtp: std::env::var("PROCTOR_SMTP")
            .ok()
            .map(|server| proctor::email::SmtpConfig {
                server,
                from: std::env::var("PROCTOR_SMTP_FROM")
                    .unwrap_or_else(|_| "proctor@localhost".to_string()),
            }),
        ..EngineConfig::default()
    }
}

fn main() -> ExitCode {
    let huge_pages_off = proctor::huge_pages::turn_off_unless_asked();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PROCTOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !huge_pages_off {
        tracing::debug!("transparent huge pages stay as the system sets them");
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        // The reader went away (`proctor history ID | head`): nothing left to say to it.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { file, agents } => match load_definition(&file, agents.as_deref())? {
            Ok(def) => {
                println!(
                    "{}: ok ({} v{}, {} steps)",
                    file.display(),
                    def.name,
                    def.version,
                    def.steps.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(diagnostics) => {
                eprintln!("{diagnostics}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Run {
            definition,
            input,
            agents,
            db,
            seed,
            until,
        } => run(definition, input, agents, db, seed, until).await,
        Command::Checkpoints { id, db } => {
            let store = open_existing(&db)?;
            let checkpoints = store.checkpoints(&id).await?;
            if checkpoints.is_empty() {
                println!("execution {id} has no checkpoints");
            }
            for c in checkpoints {
                let done: Vec<&str> = c.completed.keys().map(String::as_str).collect();
                println!(
                    "seq {:>4}  after {:<16} completed: {}",
                    c.seq,
                    c.step_id,
                    done.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => operator::list(args).await,
        Command::Show(args) => operator::show(args).await,
        Command::History(args) => operator::history(args).await,
        Command::Tail(args) => operator::tail(args).await,
        Command::Lineage(args) => operator::lineage(args).await,
        Command::Dot(args) => operator::dot(args),
        Command::Reset {
            id,
            agents,
            db,
            seq,
            input,
            outputs,
            seed,
        } => {
            let mut reset = proctor::Reset {
                checkpoint_seq: seq,
                input: input
                    .as_deref()
                    .map(|i| json_arg(i, "--input"))
                    .transpose()?,
                ..proctor::Reset::default()
            };
            for pair in &outputs {
                let (step, json) = pair
                    .split_once('=')
                    .with_context(|| format!("--output {pair:?} is not STEP=JSON"))?;
                reset
                    .outputs
                    .insert(step.to_string(), json_arg(json, "--output")?);
            }
            open_existing(&db)?;
            let (engine, _agents) = open_engine(&agents, &db, seed).await?;
            let recovery = recover(&engine, RecoveryConfig::default()).await?;
            let _control = engine.poll_control_requests(CONTROL_POLL_MS);
            let forked = engine.reset(&id, reset).await?;
            println!("reset {id} into {}", forked.id);
            let execution = forked.wait().await?;
            wait_unless_paused(&engine, recovery.handles).await?;
            outcome(execution, &db)
        }
        Command::Recover {
            agents,
            db,
            max_age_hours,
            dry_run,
            seed,
        } => {
            let (engine, _agents) = open_engine(&agents, &db, seed).await?;
            let config = RecoveryConfig {
                max_age_hours,
                dry_run,
            };
            let recovery = recover(&engine, config).await?;
            if dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            let _control = engine.poll_control_requests(CONTROL_POLL_MS);
            let failed = wait_unless_paused(&engine, recovery.handles).await?;
            Ok(if recovery.report.errors.is_empty() && failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Pause { id, db } => control(&db, id, ControlAction::Pause, None, None).await,
        Command::Resume { id, db } => control(&db, id, ControlAction::Resume, None, None).await,
        Command::Cancel { id, db, reason } => {
            control(&db, id, ControlAction::Cancel, reason, None).await
        }
        Command::Signal {
            id,
            name,
            payload,
            signal_id,
            db,
        } => {
            let payload = match payload {
                None => Value::Null,
                Some(text) => json_arg(&text, "--payload")?,
            };
            let signal_id = signal_id.unwrap_or_else(|| {
                let mut rng = proctor::rng::seeded(wall_clock_seed());
                proctor::rng::new_id(SystemClock.now_ms(), &mut *rng)
            });
            let signal = SignalRequest {
                id: signal_id,
                name,
                payload,
            };
            control(&db, id, ControlAction::Signal, None, Some(signal)).await
        }
        Command::Status { id, db } => status(&db, id.as_deref()).await,
        Command::Purge {
            older_than,
            dry_run,
            db,
        } => {
            let older_than = humantime::parse_duration(&older_than)
                .with_context(|| format!("--older-than {older_than:?} is not a duration"))?;
            let store = open_existing(&db)?;
            let cutoff_ms = SystemClock
                .now_ms()
                .saturating_sub(older_than.as_millis() as u64);
            let purged = store
                .purge_terminal(cutoff_ms, proctor::driver::MAX_PURGE_BATCH, dry_run)
                .await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for p in &purged {
                println!(
                    "{verb} {} ({}, last changed at {} ms)",
                    p.id, p.status, p.updated_at_ms
                );
            }
            println!("{verb} {} execution(s)", purged.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            db,
            listen,
            agents,
            tokens,
            webhooks,
            shutdown_grace_ms,
            seed,
        } => {
            serve(
                db,
                listen,
                agents,
                tokens,
                webhooks,
                shutdown_grace_ms,
                seed,
            )
            .await
        }
        Command::Agent {
            listen,
            name,
            fail_first,
            delay_ms,
        } => {
            let behaviour = Behaviour {
                fail_first,
                delay_ms,
                ..Behaviour::default()
            };
            let agent = example::start(&TokioNetwork, &listen, &name, behaviour)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("agent '{name}' listening on http://{}", agent.address());
            tokio::signal::ctrl_c().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(
    definition_path: PathBuf,
    input: String,
    agents_path: PathBuf,
    db: PathBuf,
    seed: Option<u64>,
    until: Option<String>,
) -> anyhow::Result<ExitCode> {
    let registry = AgentRegistry::load(&agents_path).map_err(anyhow::Error::msg)?;
    let process = match definition::load(&definition_path, Some(&registry.names())) {
        Ok(def) => Arc::new(def),
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(1));
        }
    };
    let input = json_arg(&input, "--input")?;
    let (engine, _agents) = open_engine(&agents_path, &db, seed).await?;
    // Startup recovery comes before new work: executions a previous run left behind finish
    // alongside this one.
    let recovery = recover(&engine, RecoveryConfig::default()).await?;
    let _control = engine.poll_control_requests(CONTROL_POLL_MS);
    let mut handle = match &until {
        Some(step) => engine.submit_until(process, input, step).await?,
        None => engine.submit(process, input).await?,
    };
    let id = handle.id.clone();
    // With a breakpoint, stop at the pause. Without one, a pause comes from an operator and
    // this process waits for their resume (it polls for control requests).
    if until.is_some() && handle.stopped().await == ExecutionStatus::Paused {
        wait_unless_paused(&engine, recovery.handles).await?;
        println!();
        println!(
            "execution {id} paused{}; checkpoints: `proctor checkpoints {id}`; continue: `proctor resume {id}` then `proctor recover`",
            until.map(|s| format!(" after {s}")).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let execution = handle.wait().await?;
    wait_unless_paused(&engine, recovery.handles).await?;
    outcome(execution, &db)
}

/// `proctor serve`: recovery (reported, and never fatal: the server starts anyway), then the
/// API until a stop signal; then a graceful shutdown: stop accepting, end event streams, let
/// requests and agent calls in progress finish within the grace period. Whatever is still
/// in flight after it stays durable and is recovered at the next start.
async fn serve(
    db: PathBuf,
    listen: String,
    agents_path: PathBuf,
    tokens: Option<PathBuf>,
    webhooks: Option<PathBuf>,
    grace_ms: u64,
    seed: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let webhooks = match &webhooks {
        Some(path) => {
            let hooks = proctor::api::webhooks::Webhooks::load(path)?;
            for hook in hooks.iter().filter(|h| h.inline_secret) {
                eprintln!(
                    "warning: webhook '{}' has its secret in {}: prefer `secret_env`",
                    hook.name,
                    path.display()
                );
            }
            hooks
        }
        None => proctor::api::webhooks::Webhooks::default(),
    };
    let auth = match &tokens {
        Some(path) => proctor::api::auth::Auth::load(path)?,
        None => {
            eprintln!("warning: no --tokens file: the API is open, acting for the default tenant");
            proctor::api::auth::Auth::Open
        }
    };
    let registry = AgentRegistry::load(&agents_path).map_err(anyhow::Error::msg)?;
    let (registry, _agents) = example::start_all(&TokioNetwork, &registry)
        .await
        .context("starting example agents")?;
    let store = SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let engine = Engine::new(
        Ports {
            clock: Arc::new(SystemClock),
            net: Arc::new(TokioNetwork),
            store: Arc::new(store),
            rng: proctor::rng::seeded(seed.unwrap_or_else(wall_clock_seed)),
        },
        &registry,
        engine_config(),
    )?;
    let api = proctor::api::Api::new(engine.clone(), auth).with_webhooks(webhooks);
    match recover(&engine, RecoveryConfig::default()).await {
        Ok(recovery) => println!("{}", recovery.report.summary()),
        Err(e) => println!("recovery failed, serving anyway: {e:#}"),
    }
    let _control = engine.poll_control_requests(CONTROL_POLL_MS);
    let _schedules = engine.run_schedules();
    let listener = TokioNetwork
        .bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    api.serve(listener, grace_ms, stop_signal()).await;
    println!("shutting down: waiting up to {grace_ms}ms for agent calls in flight");
    let drained = engine.drain(grace_ms).await;
    println!(
        "stopped: {} agent call(s) were in flight, {} left for recovery",
        drained.in_flight_at_start, drained.abandoned
    );
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    biased;
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints a finished execution's outcome; exit 0 when it completed, 1 when it failed.
fn outcome(execution: proctor::core::Execution, db: &Path) -> anyhow::Result<ExitCode> {
    println!();
    println!("execution {} {}", execution.id, execution.status);
    match execution.status {
        ExecutionStatus::Completed => {
            let output = execution.output.unwrap_or(Value::Null);
            println!("{}", serde_json::to_string_pretty(&output)?);
            println!("database: {}", db.display());
            Ok(ExitCode::SUCCESS)
        }
        ExecutionStatus::Failed => {
            println!("error: {}", execution.error.unwrap_or_default());
            println!("database: {}", db.display());
            Ok(ExitCode::from(1))
        }
        other => bail!("execution ended {other}"),
    }
}

/// Opens the database and starts the engine (and any example agents the agents file names),
/// printing every event as it is committed.
async fn open_engine(
    agents_path: &Path,
    db: &Path,
    seed: Option<u64>,
) -> anyhow::Result<(Engine, Vec<RunningAgent>)> {
    let registry = AgentRegistry::load(agents_path).map_err(anyhow::Error::msg)?;
    let clock = Arc::new(SystemClock);
    let seed = seed.unwrap_or_else(wall_clock_seed);
    let (registry, agents) = example::start_all(&TokioNetwork, &registry)
        .await
        .context("starting example agents")?;
    let store = SqliteStore::open(db).with_context(|| format!("opening {}", db.display()))?;
    let engine = Engine::new(
        Ports {
            clock: clock.clone(),
            net: Arc::new(TokioNetwork),
            store: Arc::new(store),
            rng: proctor::rng::seeded(seed),
        },
        &registry,
        engine_config(),
    )?;
    let started_ms = clock.now_ms();
    engine
        .bus()
        .subscribe(move |e| println!("{}", event_line(e, started_ms)));
    Ok((engine, agents))
}

/// A seed from the wall clock's nanoseconds: the CLI is production, not simulated, so without
/// `--seed` (or for a fresh signal id) it draws from real time. The one place it does.
fn wall_clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A JSON command-line value: JSON text, or @FILE.
fn json_arg(text: &str, what: &str) -> anyhow::Result<Value> {
    match text.strip_prefix('@') {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("{what} {path} is not JSON"))
        }
        None => serde_json::from_str(text).with_context(|| format!("{what} is not JSON")),
    }
}

/// How often a running engine looks for pause/resume/cancel requests from other processes.
const CONTROL_POLL_MS: u64 = 100;

/// Queues a control request in the database for the engine running on it (or the next one
/// to start on it).
async fn control(
    db: &Path,
    id: String,
    action: ControlAction,
    reason: Option<String>,
    signal: Option<SignalRequest>,
) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let Some(execution) = store.load(&id).await? else {
        eprintln!("error: no execution {id} in {}", db.display());
        return Ok(ExitCode::from(1));
    };
    if execution.status.is_terminal() {
        eprintln!("error: execution {id} is already {}", execution.status);
        return Ok(ExitCode::from(1));
    }
    let request = ControlRequest {
        execution_id: id.clone(),
        action,
        reason,
        requested_at_ms: SystemClock.now_ms(),
        signal,
    };
    store.request_control(&request).await?;
    let verb = serde_json::to_value(action)?;
    println!(
        "{} requested for {id} (now {}); the engine running on {} applies it, or the next `proctor recover` does",
        verb.as_str().unwrap_or("?"),
        execution.status,
        db.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads, parses and validates a definition file, checking agent names against `agents`
/// when given. The outer error is an unreadable agents file; the inner, the definition's
/// problems, each naming the file and step.
fn load_definition(
    file: &Path,
    agents: Option<&Path>,
) -> anyhow::Result<Result<definition::ProcessDef, definition::Diagnostics>> {
    let names = match agents {
        Some(path) => Some(
            AgentRegistry::load(path)
                .map_err(anyhow::Error::msg)?
                .names(),
        ),
        None => None,
    };
    Ok(definition::load(file, names.as_deref()))
}

fn open_existing(db: &Path) -> anyhow::Result<SqliteStore> {
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    SqliteStore::open(db).with_context(|| format!("opening {}", db.display()))
}

async fn status(db: &Path, id: Option<&str>) -> anyhow::Result<ExitCode> {
    let store = open_existing(db)?;
    let Some(id) = id else {
        let active = store.list_active().await?;
        if active.is_empty() {
            println!("no active executions in {}", db.display());
        }
        for id in active {
            if let Some(e) = store.load(&id).await? {
                println!(
                    "{id} {} {} v{}",
                    e.status, e.process.name, e.process.version
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(execution) = store.load(id).await? else {
        eprintln!("error: no execution {id} in {}", db.display());
        return Ok(ExitCode::from(1));
    };
    let p = execution.progress();
    println!(
        "execution {id} {} ({} v{}): {}% of {} steps decided ({} completed, {} running, {} failed, {} skipped, {} pending)",
        execution.status,
        execution.process.name,
        execution.process.version,
        p.percent,
        p.total,
        p.completed,
        p.running,
        p.failed,
        p.skipped,
        p.pending
    );
    for (def, st) in execution.process.steps.iter().zip(&execution.steps) {
        println!("  {:<16} {:<10} attempt {}", def.id, st.status, st.attempt);
    }
    let events = store.events(id).await?;
    let first_ms = events.first().map_or(0, |e| e.at_ms);
    for e in &events {
        println!("{}", event_line(e, first_ms));
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for recovered executions to end, except those that are (or become) paused: they stay
/// paused in the database until someone resumes them. Returns how many failed.
async fn wait_unless_paused(
    engine: &Engine,
    handles: Vec<proctor::ExecutionHandle>,
) -> anyhow::Result<usize> {
    let mut waiting = handles;
    let mut failed = 0;
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for handle in waiting {
            if handle.is_finished() {
                let execution = handle.wait().await?;
                println!("execution {} {}", execution.id, execution.status);
                failed += usize::from(execution.status == ExecutionStatus::Failed);
            } else if engine.load(&handle.id).await?.map(|e| e.status)
                == Some(ExecutionStatus::Paused)
            {
                println!(
                    "execution {} paused: `proctor resume {}` then `proctor recover` to continue",
                    handle.id, handle.id
                );
            } else {
                still.push(handle);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(failed)
}

/// Runs startup recovery and prints its report when there was anything to recover.
async fn recover(engine: &Engine, config: RecoveryConfig) -> anyhow::Result<proctor::Recovery> {
    let recovery = engine.recover(config).await?;
    let report = &recovery.report;
    if !report.actions.is_empty() || !report.errors.is_empty() {
        println!("{}", report.summary());
        for (id, action) in &report.actions {
            println!(
                "  {id}: {}",
                serde_json::to_value(action)?.as_str().unwrap_or("?")
            );
        }
        for e in &report.errors {
            println!("  {}: error: {}", e.execution_id, e.error);
        }
    }
    Ok(recovery)
}

/// One line per event: sequence, time since start, type, step, details.
fn event_line(e: &EventRecord, started_ms: u64) -> String {
    format!(
        "{:>3} {:>6}ms {:<19} {:<10} {}",
        e.seq,
        e.at_ms.saturating_sub(started_ms),
        e.event.kind(),
        e.event.step().unwrap_or("-"),
        event_detail(&e.event)
    )
}

/// What an event says beyond its kind and step, in a few words (outputs and payloads whole).
fn event_detail(event: &DomainEvent) -> String {
    match event {
        DomainEvent::ExecutionStarted { process, version } => format!("{process} v{version}"),
        DomainEvent::ExecutionForked {
            from,
            checkpoint_seq,
        } => format!("from {from} at #{checkpoint_seq}"),
        DomainEvent::StepStarted { attempt, .. } => format!("attempt {attempt}"),
        DomainEvent::StepCompleted { output, .. } => output.to_string(),
        DomainEvent::StepFailed { error, .. } => error.to_string(),
        DomainEvent::StepRetrying {
            next_attempt,
            delay_ms,
            error,
            ..
        } => format!("attempt {next_attempt} in {delay_ms}ms after {error}"),
        DomainEvent::StepSkipped { reason, .. } => reason.to_string(),
        DomainEvent::StepCancelled { attempt, .. } => format!("attempt {attempt}"),
        DomainEvent::ExecutionCompleted { .. } => String::new(),
        DomainEvent::ExecutionFailed { error, .. } => error.clone(),
        DomainEvent::ExecutionCancelled { reason } => reason.clone().unwrap_or_default(),
        DomainEvent::ExecutionPaused | DomainEvent::ExecutionResumed => String::new(),
        DomainEvent::BreakpointReached { .. } => "paused here".to_string(),
        DomainEvent::ExecutionRecovered { action } => {
            serde_json::to_value(action).map_or_else(|_| String::new(), |v| v.to_string())
        }
        DomainEvent::CompensationStarted { steps, .. } => format!("undo: {}", steps.join(", ")),
        DomainEvent::CompensationStepStarted { attempt, .. }
        | DomainEvent::CompensationCancelled { attempt, .. } => format!("attempt {attempt}"),
        DomainEvent::StepCompensated { output, .. } => output.to_string(),
        DomainEvent::CompensationRetrying {
            next_attempt,
            delay_ms,
            error,
            ..
        } => format!("attempt {next_attempt} in {delay_ms}ms after {error}"),
        DomainEvent::CompensationFailed { error, .. } => error.to_string(),
        DomainEvent::CompensationCompleted { steps } => steps.join(", "),
        DomainEvent::ItemStarted { index, attempt, .. } => {
            format!("item {index} attempt {attempt}")
        }
        DomainEvent::ItemCompleted { index, output, .. } => format!("item {index}: {output}"),
        DomainEvent::ItemRetrying {
            index,
            next_attempt,
            delay_ms,
            error,
            ..
        } => format!("item {index} attempt {next_attempt} in {delay_ms}ms after {error}"),
        DomainEvent::ItemFailed { index, error, .. } => format!("item {index}: {error}"),
        DomainEvent::LoopBroken { index, .. } => format!("after item {index}"),
        DomainEvent::Audit {
            actor,
            action,
            detail,
        } => format!(
            "{action} by {}{}",
            actor.as_deref().unwrap_or("?"),
            detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        DomainEvent::AgentProgress {
            attempt,
            kind,
            data,
            ..
        } => format!("attempt {attempt}: {kind} {data}"),
        DomainEvent::SignalReceived {
            name,
            signal_id,
            payload,
        } => format!("{name} ({signal_id}): {payload}"),
    }
}
