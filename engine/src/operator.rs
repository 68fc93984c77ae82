//! The `proctor` binary's operator commands: `list`, `show`, `history`, `lineage`, `tail` (an
//! execution as stored) and `dot` (a definition as a graph). Part of the binary, not the
//! library.
//!
//! They only read the database, through `Storage`, so they are safe beside the engine that
//! writes it (`proctor run`, `serve`, `recover` in another process): SQLite's WAL lets readers
//! read while it commits. Tables and event lines are styled when stdout is a terminal and plain
//! when it is not; `anstream` decides, honouring `NO_COLOR` and `CLICOLOR_FORCE`. `--json`
//! output is never styled: `list` and `show` print what the HTTP API answers
//! (`GET /api/executions`, `GET /api/executions/{id}`), `history`, `tail` and `lineage` one
//! JSON object per line.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use proctor::api::views::{ExecutionPage, ExecutionView};
use proctor::clock::{Clock, SystemClock};
use proctor::core::{Execution, ExecutionStatus, StepState, StepStatus, DEFAULT_TENANT};
use proctor::definition::graph::{self, Graph};
use proctor::event::EventRecord;
use proctor::store::{ExecutionQuery, ExecutionSummary, Storage, MAX_LIST_PAGE};
use proctor::Resumption;

use crate::{event_detail, load_definition, open_existing};

/// `proctor list`'s page when `--limit` is not given: a screenful.
const DEFAULT_LIST_LIMIT: u64 = 50;
/// How often `tail` reads the database for new events: often enough to feel live, rarely
/// enough to cost the engine nothing (a read never blocks its writes).
const TAIL_POLL_MS: u64 = 100;
/// Characters of a step error in `show`'s table (`--json` has it whole).
const ERROR_WIDTH: usize = 60;
/// Characters of an event's detail in `history` and `tail` (`--json` has it whole).
const DETAIL_WIDTH: usize = 120;
/// Characters of the execution output in `show`'s header.
const OUTPUT_WIDTH: usize = 100;
/// The longest event kind (`CompensationStepStarted`): event lines align on it.
const KIND_WIDTH: usize = 23;

pub const TOP_HELP: &str = "\
Operators (these only read the database; run them beside a running engine):
  proctor list --status failed            executions, newest first
  proctor show ID                         an execution's steps: status, attempts, durations, errors
  proctor history ID                      its events, oldest first (`tail ID` follows new ones)
  proctor dot process.yaml | dot -Tsvg > process.svg
Each of list, show, history, tail and lineage takes --json for scripts.";

const LIST_HELP: &str = "\
Examples:
  proctor list
  proctor list --status failed --definition diamond --limit 10
  proctor list --json | jq -r '.executions[].id'
  proctor list --after CURSOR        the page after a full one (its `next`)";

const SHOW_HELP: &str = "\
Examples:
  proctor show 0190f3c2-7d1e-7b9a-8c41-5f0e2a1b3c4d
  proctor show ID --json | jq '.steps[] | select(.status == \"failed\") | .error'";

const HISTORY_HELP: &str = "\
Examples:
  proctor history ID
  proctor history ID --json | jq -c 'select(.event.type == \"StepFailed\")'";

const LINEAGE_HELP: &str = "\
Examples:
  proctor lineage ID
  proctor lineage ID --json";

const TAIL_HELP: &str = "\
Exits 0 once the execution has completed, failed or been cancelled (after printing its last
events), 1 if there is no such execution. Stop it earlier with Ctrl-C.

Examples:
  proctor tail ID
  proctor tail ID --after 12 --json";

const DOT_HELP: &str = "\
Examples:
  proctor dot engine/examples/diamond.yaml | dot -Tsvg > diamond.svg
  proctor dot process.yaml --format mermaid > process.mmd";

#[derive(Args)]
#[command(after_help = LIST_HELP)]
pub struct ListArgs {
    /// Only executions in this status.
    #[arg(long, value_parser = status_values())]
    status: Option<String>,
    /// Only executions of this definition (its name).
    #[arg(long)]
    definition: Option<String>,
    /// At most this many, 1 to 500.
    #[arg(long, default_value_t = DEFAULT_LIST_LIMIT,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIST_PAGE as u64))]
    limit: u64,
    /// The page after a full one: the cursor its `next` gave (`--json`) or the hint under it.
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    /// Whose executions: those `proctor run` starts, and the API's without tokens, are the
    /// default tenant's.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Print the page as JSON, as `GET /api/executions` answers.
    #[arg(long)]
    json: bool,
    /// SQLite database file.
    #[arg(long, default_value = "proctor.db")]
    db: PathBuf,
}

#[derive(Args)]
#[command(after_help = SHOW_HELP)]
pub struct ShowArgs {
    /// The execution's id.
    id: String,
    /// Print the execution as JSON, as `GET /api/executions/{id}` answers.
    #[arg(long)]
    json: bool,
    /// SQLite database file.
    #[arg(long, default_value = "proctor.db")]
    db: PathBuf,
}

#[derive(Args)]
#[command(after_help = HISTORY_HELP)]
pub struct HistoryArgs {
    /// The execution's id.
    id: String,
    /// Print each stored event as one line of JSON.
    #[arg(long)]
    json: bool,
    /// SQLite database file.
    #[arg(long, default_value = "proctor.db")]
    db: PathBuf,
}

#[derive(Args)]
#[command(after_help = LINEAGE_HELP)]
pub struct LineageArgs {
    /// The execution's id.
    id: String,
    /// Print each entry as one line of JSON.
    #[arg(long)]
    json: bool,
    /// SQLite database file.
    #[arg(long, default_value = "proctor.db")]
    db: PathBuf,
}

#[derive(Args)]
#[command(after_help = TAIL_HELP)]
pub struct TailArgs {
    /// The execution's id.
    id: String,
    /// Start after this event (its `seq`) instead of at the beginning.
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// Print each event as one line of JSON.
    #[arg(long)]
    json: bool,
    /// SQLite database file.
    #[arg(long, default_value = "proctor.db")]
    db: PathBuf,
}

#[derive(Args)]
#[command(after_help = DOT_HELP)]
pub struct DotArgs {
    /// The definition (YAML, or JSON for .json files).
    definition: PathBuf,
    /// The output syntax.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    format: GraphFormat,
    /// Also check agent names against this agents file.
    #[arg(long)]
    agents: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart (Markdown renderers on GitHub and GitLab draw it).
    Mermaid,
}

fn status_values() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(ExecutionStatus::ALL.iter().map(|s| s.as_str()))
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db)?;
    let after = args.after.as_deref().map(parse_cursor).transpose()?;
    let limit = usize::try_from(args.limit).expect("clap bounds --limit to MAX_LIST_PAGE");
    let query = ExecutionQuery {
        tenant: args.tenant.clone(),
        status: args.status.clone(),
        definition: args.definition.clone(),
        created_from_ms: None,
        created_to_ms: None,
        after,
        limit,
    };
    let executions = store.list_executions(&query).await?;
    // As the API pages: a full page may have a page after it.
    let next = (executions.len() == limit)
        .then(|| executions.last().map(cursor))
        .flatten();
    if args.json {
        print_json(&ExecutionPage { executions, next })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = anstream::stdout().lock();
    if executions.is_empty() {
        writeln!(
            out,
            "no executions in {} (tenant {}{}{})",
            args.db.display(),
            args.tenant,
            args.status
                .as_deref()
                .map(|s| format!(", status {s}"))
                .unwrap_or_default(),
            args.definition
                .as_deref()
                .map(|d| format!(", definition {d}"))
                .unwrap_or_default(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ID",
        "DEFINITION",
        "STATUS",
        "PROGRESS",
        "CREATED (UTC)",
        "UPDATED (UTC)",
    ]);
    for e in &executions {
        // The listing has no step counts; the execution itself has (a page is bounded).
        let progress = match store.load(&e.id).await? {
            Some(execution) => decided(&execution),
            None => "-".to_string(),
        };
        let style = e
            .status
            .parse::<ExecutionStatus>()
            .map_or(Style::new(), execution_style);
        table.row(vec![
            Cell::plain(&e.id),
            Cell::plain(format!("{} v{}", e.definition, e.version)),
            Cell::styled(&e.status, style),
            Cell::plain(progress),
            Cell::plain(date_time(e.created_at_ms)),
            Cell::plain(date_time(e.updated_at_ms)),
        ]);
    }
    table.write(&mut out)?;
    if let Some(next) = next {
        let dim = Style::new().dimmed();
        writeln!(
            out,
            "{}more: the same command with --after {next}{}",
            dim.render(),
            dim.render_reset()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `<created_at_ms>:<id>`, the API's `next`.
fn cursor(e: &ExecutionSummary) -> String {
    format!("{}:{}", e.created_at_ms, e.id)
}

fn parse_cursor(text: &str) -> anyhow::Result<(u64, String)> {
    let bad = || anyhow::anyhow!("--after {text:?} is not a cursor `proctor list` gave");
    let (ms, id) = text.split_once(':').ok_or_else(bad)?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_string()))
}

/// `decided/total` steps, decided as `Progress::percent` counts them.
fn decided(e: &Execution) -> String {
    let p = e.progress();
    format!("{}/{}", p.completed + p.failed + p.skipped, p.total)
}

pub async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db)?;
    let Some(e) = store.load(&args.id).await? else {
        return missing(&args.id, &args.db);
    };
    if args.json {
        print_json(&ExecutionView::of(&e))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now_ms = SystemClock.now_ms();
    let mut out = anstream::stdout().lock();
    let field = |out: &mut dyn Write, name: &str, value: &str, style: Style| {
        let bold = Style::new().bold();
        writeln!(
            out,
            "{}{name:<10}{} {}{value}{}",
            bold.render(),
            bold.render_reset(),
            style.render(),
            style.render_reset()
        )
    };
    field(&mut out, "execution", &e.id, Style::new())?;
    field(
        &mut out,
        "definition",
        &format!("{} v{}", e.process.name, e.process.version),
        Style::new(),
    )?;
    field(
        &mut out,
        "status",
        e.status.as_str(),
        execution_style(e.status),
    )?;
    let p = e.progress();
    let counts: Vec<String> = [
        (p.completed, "completed"),
        (p.failed, "failed"),
        (p.skipped, "skipped"),
        (p.running, "running"),
        (p.pending, "pending"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    field(
        &mut out,
        "progress",
        &format!(
            "{} steps decided ({}%): {}",
            decided(&e),
            p.percent,
            counts.join(", ")
        ),
        Style::new(),
    )?;
    if e.tenant != DEFAULT_TENANT {
        field(&mut out, "tenant", &e.tenant, Style::new())?;
    }
    if let Some(origin) = &e.origin {
        field(
            &mut out,
            "forked",
            &format!(
                "from {} at checkpoint #{}",
                origin.execution_id, origin.checkpoint_seq
            ),
            Style::new(),
        )?;
    }
    field(
        &mut out,
        "created",
        &format!("{} UTC", date_time_ms(e.created_at_ms)),
        Style::new(),
    )?;
    field(
        &mut out,
        "updated",
        &format!(
            "{} UTC ({} after creation)",
            date_time_ms(e.updated_at_ms),
            duration(e.updated_at_ms.saturating_sub(e.created_at_ms))
        ),
        Style::new(),
    )?;
    if let Some(error) = &e.error {
        field(&mut out, "error", error, execution_style(e.status))?;
    }
    if let Some(output) = &e.output {
        field(
            &mut out,
            "output",
            &clip(&output.to_string(), OUTPUT_WIDTH),
            Style::new(),
        )?;
    }
    writeln!(out)?;
    let mut table = Table::new(&[
        "STEP",
        "KIND",
        "STATUS",
        "ATTEMPTS",
        "STARTED (UTC)",
        "DURATION",
        "ERROR",
    ]);
    for (def, st) in e.process.steps.iter().zip(&e.steps) {
        let status = match st.skip_reason {
            Some(reason) if st.status == StepStatus::Skipped => format!("skipped ({reason})"),
            _ => st.status.to_string(),
        };
        // An error on a step that did not fail is an earlier attempt's: worth seeing, but
        // not as loud.
        let error_style = if st.status == StepStatus::Failed {
            step_style(StepStatus::Failed)
        } else {
            Style::new().dimmed()
        };
        table.row(vec![
            Cell::plain(&def.id),
            Cell::plain(def.kind.name()),
            Cell::styled(status, step_style(st.status)),
            Cell::plain(if st.attempt == 0 {
                "-".to_string()
            } else {
                st.attempt.to_string()
            }),
            Cell::plain(
                st.started_at_ms
                    .map_or("-".to_string(), |ms| started(ms, e.created_at_ms)),
            ),
            Cell::plain(step_duration(st, now_ms)),
            Cell::styled(
                st.last_error
                    .as_ref()
                    .map_or(String::new(), |err| clip(&err.to_string(), ERROR_WIDTH)),
                error_style,
            ),
        ]);
    }
    table.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// A step's time from its first start to its end (retries included), or so far while it is
/// still in flight.
fn step_duration(st: &StepState, now_ms: u64) -> String {
    match (st.started_at_ms, st.finished_at_ms) {
        (Some(start), Some(end)) => duration(end.saturating_sub(start)),
        (Some(start), None) if st.status.is_active() => {
            format!("{} so far", duration(now_ms.saturating_sub(start)))
        }
        _ => "-".to_string(),
    }
}

pub async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db)?;
    let Some(e) = store.load(&args.id).await? else {
        return missing(&args.id, &args.db);
    };
    let events = store.events(&args.id).await?;
    if args.json {
        let mut out = io::stdout().lock();
        for event in &events {
            json_line(&mut out, event)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = anstream::stdout().lock();
    let lines = EventLines::of(&e);
    lines.header(&mut out)?;
    for event in &events {
        lines.write(&mut out, event)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn lineage(args: LineageArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db)?;
    let entries = proctor::driver::history(&store, &args.id).await?;
    // A purged execution's resets are still listed (its forks outlive it), so only an empty
    // answer asks whether the execution exists.
    if entries.is_empty() && store.load(&args.id).await?.is_none() {
        return missing(&args.id, &args.db);
    }
    if args.json {
        let mut out = io::stdout().lock();
        for entry in &entries {
            json_line(&mut out, entry)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = anstream::stdout().lock();
    if entries.is_empty() {
        writeln!(
            out,
            "execution {} was never resumed, recovered or reset",
            args.id
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["TIME (UTC)", "WHAT", "DETAIL"]);
    for entry in &entries {
        let (what, detail) = match entry {
            Resumption::Resumed { .. } => ("resumed", String::new()),
            Resumption::Recovered { action, .. } => (
                "recovered",
                serde_json::to_value(action)?
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            ),
            Resumption::Reset {
                into,
                checkpoint_seq,
                ..
            } => (
                "reset",
                format!("into {into} from checkpoint #{checkpoint_seq}"),
            ),
        };
        table.row(vec![
            Cell::plain(date_time_ms(entry.at_ms())),
            Cell::plain(what),
            Cell::plain(detail),
        ]);
    }
    table.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the history (after `--after`), then polls for new events until the execution ends.
/// The end is seen either as its terminal event or, for a history read past its end (an
/// `--after` beyond it), as a terminal status; the status is only read when a poll found
/// nothing new, and the events are read once more after it, since they are committed with it.
pub async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db)?;
    let Some(e) = store.load(&args.id).await? else {
        return missing(&args.id, &args.db);
    };
    let lines = EventLines::of(&e);
    let mut ended = e.status.is_terminal();
    let mut last_seq = args.after.unwrap_or(0);
    if !args.json {
        lines.header(&mut anstream::stdout().lock())?;
    }
    loop {
        let events = store.events(&args.id).await?;
        let fresh: Vec<&EventRecord> = events.iter().filter(|r| r.seq > last_seq).collect();
        {
            let mut styled = anstream::stdout().lock();
            let mut plain = io::stdout().lock();
            for event in &fresh {
                if args.json {
                    json_line(&mut plain, event)?;
                } else {
                    lines.write(&mut styled, event)?;
                }
                ended |= event.event.is_terminal();
                last_seq = event.seq;
            }
            plain.flush()?;
            styled.flush()?;
        }
        if ended {
            return Ok(ExitCode::SUCCESS);
        }
        if fresh.is_empty() {
            match store.load(&args.id).await? {
                None => {
                    eprintln!(
                        "error: execution {} was deleted from {}",
                        args.id,
                        args.db.display()
                    );
                    return Ok(ExitCode::from(1));
                }
                Some(now) if now.status.is_terminal() => {
                    ended = true;
                    continue;
                }
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(TAIL_POLL_MS)).await;
    }
}

pub fn dot(args: DotArgs) -> anyhow::Result<ExitCode> {
    let def = match load_definition(&args.definition, args.agents.as_deref())? {
        Ok(def) => def,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(1));
        }
    };
    let format = match args.format {
        GraphFormat::Dot => graph::Format::Dot,
        GraphFormat::Mermaid => graph::Format::Mermaid,
    };
    let mut out = io::stdout().lock();
    out.write_all(Graph::of(&def).render(format).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn missing(id: &str, db: &Path) -> anyhow::Result<ExitCode> {
    eprintln!("error: no execution {id} in {}", db.display());
    Ok(ExitCode::from(1))
}

// Both serialize before writing, so that a failed write stays an `io::Error` (a closed pipe
// ends the command quietly) rather than becoming a serde one.
fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serializing")?;
    text.push('\n');
    io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn json_line(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(value).context("serializing")?;
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(())
}

/// Event lines of one execution, `history`'s and `tail`'s: seq, time, kind, step, detail,
/// in columns fixed before the first line (`tail` cannot measure lines it has not seen).
struct EventLines {
    step_width: usize,
}

impl EventLines {
    fn of(e: &Execution) -> EventLines {
        let longest = e.process.steps.iter().map(|s| s.id.chars().count()).max();
        EventLines {
            step_width: longest.unwrap_or(0).max("STEP".len()),
        }
    }

    fn header(&self, out: &mut dyn Write) -> io::Result<()> {
        let bold = Style::new().bold();
        writeln!(
            out,
            "{}{:>4}  {:<23}  {:<KIND_WIDTH$}  {:<w$}  DETAIL{}",
            bold.render(),
            "SEQ",
            "TIME (UTC)",
            "KIND",
            "STEP",
            bold.render_reset(),
            w = self.step_width
        )
    }

    fn write(&self, out: &mut dyn Write, r: &EventRecord) -> io::Result<()> {
        let kind = r.event.kind();
        let style = event_style(kind);
        let line = format!(
            "{:>4}  {}  {}{kind:<KIND_WIDTH$}{}  {:<w$}  {}",
            r.seq,
            date_time_ms(r.at_ms),
            style.render(),
            style.render_reset(),
            r.event.step().unwrap_or("-"),
            clip(&event_detail(&r.event), DETAIL_WIDTH),
            w = self.step_width
        );
        writeln!(out, "{}", line.trim_end())
    }
}

/// A table: columns as wide as their widest cell, two spaces apart, no trailing spaces.
/// Widths count plain characters, so styles never shift a column.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

struct Cell {
    text: String,
    style: Style,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Cell {
        Cell::styled(text, Style::new())
    }

    fn styled(text: impl Into<String>, style: Style) -> Cell {
        Cell {
            text: text.into(),
            style,
        }
    }
}

impl Table {
    fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<Cell>) {
        assert_eq!(
            cells.len(),
            self.header.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.text.chars().count());
            }
        }
        let header: Vec<Cell> = self
            .header
            .iter()
            .map(|h| Cell::styled(*h, Style::new().bold()))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                if !cell.text.is_empty() {
                    line.push_str(&format!(
                        "{}{}{}",
                        cell.style.render(),
                        cell.text,
                        cell.style.render_reset()
                    ));
                }
                if i + 1 < row.len() {
                    let pad = width - cell.text.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

fn fg(color: AnsiColor) -> Style {
    Style::new().fg_color(Some(color.into()))
}

fn execution_style(status: ExecutionStatus) -> Style {
    match status {
        ExecutionStatus::Completed => fg(AnsiColor::Green),
        ExecutionStatus::Failed => fg(AnsiColor::Red).bold(),
        ExecutionStatus::Running => fg(AnsiColor::Yellow),
        ExecutionStatus::Pending => Style::new(),
        ExecutionStatus::Paused | ExecutionStatus::Cancelled => Style::new().dimmed(),
    }
}

fn step_style(status: StepStatus) -> Style {
    match status {
        StepStatus::Completed => fg(AnsiColor::Green),
        StepStatus::Compensated => fg(AnsiColor::Magenta),
        StepStatus::Failed => fg(AnsiColor::Red),
        StepStatus::Running | StepStatus::Retrying => fg(AnsiColor::Yellow),
        StepStatus::Pending => Style::new(),
        StepStatus::Skipped | StepStatus::Cancelled => Style::new().dimmed(),
    }
}

/// Events coloured as the statuses they lead to; the execution's own are bold.
fn event_style(kind: &str) -> Style {
    let style = if kind.ends_with("Failed") {
        fg(AnsiColor::Red)
    } else if kind.ends_with("Completed") {
        fg(AnsiColor::Green)
    } else if kind == "StepCompensated" {
        fg(AnsiColor::Magenta)
    } else if kind.ends_with("Retrying") || kind == "ExecutionPaused" {
        fg(AnsiColor::Yellow)
    } else if kind.ends_with("Cancelled") || kind == "StepSkipped" {
        Style::new().dimmed()
    } else {
        Style::new()
    };
    if kind.starts_with("Execution") {
        style.bold()
    } else {
        style
    }
}

/// `2025-01-02 15:04:05` (UTC).
fn date_time(ms: u64) -> String {
    format_ms(ms, "%Y-%m-%d %H:%M:%S")
}

/// `2025-01-02 15:04:05.123` (UTC): event times, where the milliseconds matter.
fn date_time_ms(ms: u64) -> String {
    format_ms(ms, "%Y-%m-%d %H:%M:%S%.3f")
}

/// A step's start: the time of day, with the date only when it is not the execution's.
fn started(ms: u64, created_ms: u64) -> String {
    if format_ms(ms, "%F") == format_ms(created_ms, "%F") {
        format_ms(ms, "%H:%M:%S%.3f")
    } else {
        date_time_ms(ms)
    }
}

fn format_ms(ms: u64, format: &str) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| format!("{ms}ms"), |t| t.format(format).to_string())
}

/// A duration as people read it: `850ms`, `12.3s`, `4m05s`, `2h07m`.
fn duration(ms: u64) -> String {
    const MINUTE_MS: u64 = 60_000;
    const HOUR_MS: u64 = 60 * MINUTE_MS;
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < MINUTE_MS {
        format!("{}.{}s", ms / 1_000, ms % 1_000 / 100)
    } else if ms < HOUR_MS {
        format!("{}m{:02}s", ms / MINUTE_MS, ms % MINUTE_MS / 1_000)
    } else {
        format!("{}h{:02}m", ms / HOUR_MS, ms % HOUR_MS / MINUTE_MS)
    }
}

/// `text` on one line and at most `max` characters, `...` marking a cut.
fn clip(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        for (ms, text) in [
            (0, "0ms"),
            (999, "999ms"),
            (1_000, "1.0s"),
            (59_999, "59.9s"),
            (60_000, "1m00s"),
            (245_000, "4m05s"),
            (3_600_000, "1h00m"),
            (7_620_000, "2h07m"),
        ] {
            assert_eq!(duration(ms), text, "{ms} ms");
        }
    }

    #[test]
    fn clip_keeps_one_line_and_marks_the_cut() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("two\nlines", 10), "two lines");
        assert_eq!(clip("abcdefghijkl", 10), "abcdefg...");
        assert_eq!(clip("ééééééééééé", 10).chars().count(), 10);
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(date_time(1_700_000_000_123), "2023-11-14 22:13:20");
        assert_eq!(date_time_ms(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(
            started(1_700_000_001_000, 1_700_000_000_123),
            "22:13:21.000"
        );
        assert_eq!(
            started(1_700_100_000_000, 1_700_000_000_123),
            "2023-11-16 02:00:00.000"
        );
    }

    #[test]
    fn tables_align_on_plain_text_whatever_the_styles() {
        let mut table = Table::new(&["A", "LONGER", "C"]);
        table.row(vec![
            Cell::styled("wide cell", fg(AnsiColor::Red)),
            Cell::plain("x"),
            Cell::plain(""),
        ]);
        let mut styled = Vec::new();
        table.write(&mut styled).unwrap();
        let styled = String::from_utf8(styled).unwrap();
        assert!(styled.contains("\x1b["), "{styled:?}");
        let mut plain = anstream::StripStream::new(Vec::new());
        table.write(&mut plain).unwrap();
        let plain = String::from_utf8(plain.into_inner()).unwrap();
        assert_eq!(plain, "A          LONGER  C\nwide cell  x\n");
    }

    #[test]
    fn cursors_round_trip() {
        let e = ExecutionSummary {
            id: "abc".into(),
            definition: "d".into(),
            version: 1,
            status: "completed".into(),
            created_at_ms: 42,
            updated_at_ms: 43,
        };
        assert_eq!(parse_cursor(&cursor(&e)).unwrap(), (42, "abc".to_string()));
        assert!(parse_cursor("nope").is_err());
    }
}
