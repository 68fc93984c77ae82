//! A run drawn as a timeline: a self-contained HTML page (`proctor-sim repro --html`, and so
//! `cargo xtask repro SCENARIO --seed N --html OUT.html`) for a person looking at a failed seed.
//!
//! [`Timeline::of`] turns an [`Outcome`] into plain data, in simulated milliseconds since the
//! run began:
//! - one lane per host (client, engine, each agent), where the client's starts lie from the
//!   first try to the answer, and faults lie as bands (a crash until
//!   its restart, a cut link until it heals, a full disk) or strike as ticks (storage and disk
//!   faults, clock jumps);
//! - agent calls, from each agent's ledger (when the request arrived and was answered), drawn
//!   as an arrow from the engine at the dispatch that sent it and back to the engine at the
//!   event that took its answer in;
//! - one lane per execution with a row per step: what state the step was in, when, from its
//!   events (spans while it runs, retries or compensates; ticks for every event);
//! - each violated invariant at its instant: the last event of the step (or execution) it
//!   names, or the end of the run when it names neither.
//!
//! [`Timeline::html`] puts the data, as JSON, into one page with its own script and styles
//! (`timeline.html`): no network is needed to open it. The script draws SVG, zooms (wheel,
//! buttons, keys) and shows details on hover.

use std::collections::BTreeMap;

use proctor::core::ErrorKind;
use proctor::event::{DomainEvent, EventRecord};
use serde::Serialize;

use crate::runner::{short, FaultEntry, FaultPhase, Outcome, EPOCH_MS};
use crate::scenario::{CLIENT_HOST, ENGINE_HOST};

/// Executions drawn with their steps; the rest are counted. A page stays readable and small.
pub const MAX_EXECUTION_LANES: usize = 60;
/// Agent calls drawn; the rest are counted.
pub const MAX_CALLS: usize = 5_000;
/// How far before an arrival the dispatch that sent it may lie (a longer gap is no dispatch
/// of this call: it lost its way in a crash or a partition).
const MAX_DISPATCH_GAP_MS: u64 = 10_000;

const TEMPLATE: &str = include_str!("timeline.html");
const DATA_SLOT: &str = "/*TIMELINE_DATA*/null";

#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub scenario: String,
    pub seed: u64,
    pub passed: bool,
    pub elapsed_ms: u64,
    /// When the last fault ended: the liveness phase follows.
    pub window_end_ms: u64,
    pub repro: String,
    /// Host lanes, top to bottom.
    pub hosts: Vec<String>,
    pub faults: Vec<Band>,
    /// The client's starts, from its first try to the answer.
    pub starts: Vec<Start>,
    pub calls: Vec<Call>,
    pub hidden_calls: usize,
    pub executions: Vec<ExecutionLane>,
    pub hidden_executions: usize,
    pub violations: Vec<Marker>,
}

/// A fault on host lanes: from `from_ms` to `to_ms` (equal for one that strikes once).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Band {
    pub kind: String,
    pub hosts: Vec<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// Struck once rather than lasting.
    pub instant: bool,
    /// Still in force when the run ended.
    pub open: bool,
    pub label: String,
}

/// One start the client had answered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Start {
    pub key: String,
    pub execution: String,
    /// The answer said this request created it (`false`: a retry found it).
    pub created: bool,
    pub sent_ms: u64,
    pub answered_ms: u64,
}

/// One request to an agent and its answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Call {
    pub agent: String,
    pub execution: String,
    pub step: String,
    pub attempt: u32,
    /// The engine event that sent it (a step's start or retry, a recovery), if one is near.
    pub sent_ms: Option<u64>,
    pub received_ms: u64,
    /// `None`: the agent hung on it.
    pub answered_ms: Option<u64>,
    /// The engine event that took the answer in; `None` when the answer was lost.
    pub taken_ms: Option<u64>,
    /// `ok`, `error` or `hang`.
    pub answer: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExecutionLane {
    pub id: String,
    pub short: String,
    pub status: String,
    /// Step rows, in the definition's order.
    pub steps: Vec<String>,
    pub spans: Vec<Span>,
    pub marks: Vec<Mark>,
}

/// A step in a lasting state (`running`, `retrying`, `compensating`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Span {
    pub step: String,
    pub state: &'static str,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// One event; on its step's row, or on the execution's own row when it has no step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    pub at_ms: u64,
    pub seq: u64,
    pub kind: String,
    pub step: Option<String>,
    /// Placed from the engine's clock: the event was committed but never published (the
    /// engine died in between), so its simulated instant is not known exactly.
    pub approx: bool,
}

/// A violated invariant at its instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Marker {
    pub invariant: String,
    pub detail: String,
    pub at_ms: u64,
    pub execution: Option<String>,
    pub step: Option<String>,
}

impl Timeline {
    /// The timeline of `outcome`; `repro` is the command that replays it.
    pub fn of(outcome: &Outcome, repro: &str) -> Timeline {
        let times = EventTimes::of(outcome);
        let mut hosts = vec![CLIENT_HOST.to_string(), ENGINE_HOST.to_string()];
        hosts.extend(outcome.ledgers.keys().cloned());
        // Hosts that are no agent (the mail server) show up in the faults that touch them.
        for entry in &outcome.fault_log {
            for host in &entry.hosts {
                if !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
        }
        let mut order: Vec<&(proctor::core::Execution, Vec<EventRecord>)> =
            outcome.executions.iter().collect();
        // By first event: the page reads top to bottom in the order work began.
        order.sort_by_key(|(e, _)| {
            let first_ms = times.events(&e.id).first().map_or(u64::MAX, |t| t.at_ms);
            (first_ms, e.id.clone())
        });
        let executions: Vec<ExecutionLane> = order
            .iter()
            .take(MAX_EXECUTION_LANES)
            .map(|(e, _)| execution_lane(e, &times, outcome.elapsed_ms))
            .collect();
        let (calls, hidden_calls) = calls(outcome, &times);
        let violations = outcome
            .violations
            .iter()
            .map(|v| {
                let at_ms = v
                    .execution
                    .as_deref()
                    .and_then(|id| times.last_of(id, v.step.as_deref()))
                    .unwrap_or(outcome.elapsed_ms);
                Marker {
                    invariant: v.invariant.to_string(),
                    detail: v.detail.clone(),
                    at_ms,
                    execution: v.execution.as_deref().map(|id| short(id).to_string()),
                    step: v.step.clone(),
                }
            })
            .collect();
        Timeline {
            scenario: outcome.scenario.clone(),
            seed: outcome.seed,
            passed: outcome.passed(),
            elapsed_ms: outcome.elapsed_ms,
            window_end_ms: outcome.window_end_ms,
            repro: repro.to_string(),
            hosts,
            faults: bands_of(&outcome.fault_log, outcome.elapsed_ms),
            starts: outcome
                .starts
                .iter()
                .map(|s| Start {
                    key: s.key.clone(),
                    execution: short(&s.id).to_string(),
                    created: s.created,
                    sent_ms: s.sent_ms,
                    answered_ms: s.answered_ms,
                })
                .collect(),
            calls,
            hidden_calls,
            hidden_executions: outcome.executions.len().saturating_sub(MAX_EXECUTION_LANES),
            executions,
            violations,
        }
    }

    /// The page: the template with this timeline's data in it.
    pub fn html(&self) -> String {
        let json = serde_json::to_string(self).expect("a timeline serialises");
        // Inside <script>, `</` could end the element early; `<\/` reads the same in JSON.
        let json = json.replace("</", "<\\/");
        debug_assert!(TEMPLATE.contains(DATA_SLOT));
        TEMPLATE.replacen(DATA_SLOT, &json, 1)
    }
}

/// Simulated instants of events, by execution and seq.
struct EventTimes<'a> {
    outcome: &'a Outcome,
    /// Each execution's events with their instants, in seq order.
    by_execution: BTreeMap<&'a str, Vec<Timed<'a>>>,
}

/// One event and its simulated instant.
struct Timed<'a> {
    at_ms: u64,
    /// Placed from the engine's clock (see [`Mark::approx`]).
    approx: bool,
    record: &'a EventRecord,
}

impl<'a> EventTimes<'a> {
    fn of(outcome: &'a Outcome) -> EventTimes<'a> {
        let mut times = EventTimes {
            outcome,
            by_execution: BTreeMap::new(),
        };
        for (execution, events) in &outcome.executions {
            let timed = events
                .iter()
                .map(|record| {
                    let (at_ms, approx) = times.at(&execution.id, record);
                    Timed {
                        at_ms,
                        approx,
                        record,
                    }
                })
                .collect();
            times.by_execution.insert(&execution.id, timed);
        }
        times
    }

    /// When `record` happened, and whether that is approximate (read back from the engine's
    /// clock, whose jumps the run's clock offsets undo).
    fn at(&self, execution: &str, record: &EventRecord) -> (u64, bool) {
        if let Some(ms) = self
            .outcome
            .event_sim_ms
            .get(&(execution.to_string(), record.seq))
        {
            return (*ms, false);
        }
        let wall_ms = record.at_ms.saturating_sub(EPOCH_MS);
        let sim_ms = self
            .outcome
            .clock_offsets
            .iter()
            .rev()
            .map(|(from, offset)| (*from, wall_ms.saturating_add_signed(-offset)))
            .find(|(from, sim)| from <= sim)
            .map_or(wall_ms, |(_, sim)| sim);
        (sim_ms.min(self.outcome.elapsed_ms), true)
    }

    /// The instant of the last event of `step` in `execution` (of any event, without a step).
    fn last_of(&self, execution: &str, step: Option<&str>) -> Option<u64> {
        self.by_execution
            .get(execution)?
            .iter()
            .rev()
            .find(|t| step.is_none() || t.record.event.step().map(base_step) == step)
            .map(|t| t.at_ms)
    }

    fn events(&self, execution: &str) -> &[Timed<'a>] {
        self.by_execution.get(execution).map_or(&[], Vec::as_slice)
    }
}

/// A call's lane (`step#3`, `step#compensate`) belongs to its step's row.
fn base_step(lane: &str) -> &str {
    lane.split('#').next().unwrap_or(lane)
}

/// The state a step is in after `event`: `Some` for a lasting one the row draws as a span,
/// `None` for one that ends it (or changes nothing the row shows).
fn lasting_state(event: &DomainEvent) -> Option<&'static str> {
    match event {
        DomainEvent::StepStarted { .. } | DomainEvent::ItemStarted { .. } => Some("running"),
        DomainEvent::StepRetrying { .. } | DomainEvent::ItemRetrying { .. } => Some("retrying"),
        DomainEvent::CompensationStepStarted { .. } | DomainEvent::CompensationRetrying { .. } => {
            Some("compensating")
        }
        _ => None,
    }
}

/// Whether `event` changes a step's state (progress and items in a loop do not end a span).
fn changes_state(event: &DomainEvent) -> bool {
    !matches!(
        event,
        DomainEvent::AgentProgress { .. }
            | DomainEvent::ItemStarted { .. }
            | DomainEvent::ItemCompleted { .. }
            | DomainEvent::ItemRetrying { .. }
            | DomainEvent::ItemFailed { .. }
            | DomainEvent::BreakpointReached { .. }
    )
}

fn execution_lane(
    execution: &proctor::core::Execution,
    times: &EventTimes<'_>,
    end_ms: u64,
) -> ExecutionLane {
    let steps: Vec<String> = execution
        .process
        .steps
        .iter()
        .map(|s| s.id.clone())
        .collect();
    let mut open: BTreeMap<String, (&'static str, u64)> = BTreeMap::new();
    let mut spans = Vec::new();
    let mut marks = Vec::new();
    for &Timed {
        at_ms,
        approx,
        record,
    } in times.events(&execution.id)
    {
        let step = record.event.step().map(|s| base_step(s).to_string());
        marks.push(Mark {
            at_ms,
            seq: record.seq,
            kind: record.event.kind().to_string(),
            step: step.clone(),
            approx,
        });
        let Some(step) = step else { continue };
        if !changes_state(&record.event) && open.contains_key(&step) {
            continue;
        }
        if let Some((state, from_ms)) = open.remove(&step) {
            spans.push(Span {
                step: step.clone(),
                state,
                from_ms,
                to_ms: at_ms.max(from_ms),
            });
        }
        if let Some(state) = lasting_state(&record.event) {
            open.insert(step, (state, at_ms));
        }
    }
    // Still running (or retrying) when the run ended: the span reaches the end.
    for (step, (state, from_ms)) in open {
        spans.push(Span {
            step,
            state,
            from_ms,
            to_ms: end_ms.max(from_ms),
        });
    }
    ExecutionLane {
        id: execution.id.clone(),
        short: short(&execution.id).to_string(),
        status: execution.status.to_string(),
        steps,
        spans,
        marks,
    }
}

/// Every agent call, with the engine events that sent it and took its answer in.
fn calls(outcome: &Outcome, times: &EventTimes<'_>) -> (Vec<Call>, usize) {
    let mut all: Vec<Call> = Vec::new();
    for (agent, ledger) in &outcome.ledgers {
        for timing in &ledger.calls {
            all.push(Call {
                agent: agent.clone(),
                execution: timing.execution_id.clone(),
                step: timing.step_id.clone(),
                attempt: timing.attempt,
                sent_ms: None,
                received_ms: timing.received_ms.saturating_sub(EPOCH_MS),
                answered_ms: timing.answered_ms.map(|ms| ms.saturating_sub(EPOCH_MS)),
                taken_ms: None,
                answer: timing.answer.to_string(),
            });
        }
    }
    all.sort_by(|a, b| {
        (a.received_ms, &a.agent, &a.execution, &a.step).cmp(&(
            b.received_ms,
            &b.agent,
            &b.execution,
            &b.step,
        ))
    });
    let hidden = all.len().saturating_sub(MAX_CALLS);
    all.truncate(MAX_CALLS);
    for i in 0..all.len() {
        let (execution, step) = (
            all[i].execution.clone(),
            base_step(&all[i].step).to_string(),
        );
        let events = times.events(&execution);
        let received_ms = all[i].received_ms;
        // The dispatch: the latest event of this step, or a recovery or resumption (which
        // re-dispatch without a new event of the step), at or before the arrival.
        all[i].sent_ms = events
            .iter()
            .rev()
            .filter(|t| t.at_ms <= received_ms && received_ms - t.at_ms <= MAX_DISPATCH_GAP_MS)
            .find(|t| {
                t.record.event.step().map(base_step) == Some(step.as_str())
                    || matches!(
                        t.record.event,
                        DomainEvent::ExecutionRecovered { .. }
                            | DomainEvent::ExecutionResumed
                            | DomainEvent::ExecutionStarted { .. }
                    )
            })
            .map(|t| t.at_ms);
        // The answer was taken in by the first event of this step after it, unless another
        // call of the step arrived first (then this answer was lost on the way back).
        if let Some(answered_ms) = all[i].answered_ms {
            let next_call_ms = all[i + 1..]
                .iter()
                .filter(|c| c.execution == execution && base_step(&c.step) == step)
                .map(|c| c.received_ms)
                .next()
                .unwrap_or(u64::MAX);
            let ok = all[i].answer == "ok";
            all[i].taken_ms = events
                .iter()
                .find(|t| {
                    t.at_ms >= answered_ms
                        && t.at_ms <= next_call_ms
                        && t.record.event.step().map(base_step) == Some(step.as_str())
                        && takes_answer(&t.record.event, ok)
                })
                .map(|t| t.at_ms);
        }
    }
    for call in &mut all {
        call.execution = short(&call.execution).to_string();
    }
    (all, hidden)
}

/// Whether `event` is what an answer (`ok` or an error) turns into: a timeout's retry is not
/// the answer taken in, so an answer lost on the way gets no arrow back to the engine.
fn takes_answer(event: &DomainEvent, ok: bool) -> bool {
    if ok {
        matches!(
            event,
            DomainEvent::StepCompleted { .. }
                | DomainEvent::ItemCompleted { .. }
                | DomainEvent::StepCompensated { .. }
        )
    } else {
        let error = match event {
            DomainEvent::StepFailed { error, .. }
            | DomainEvent::StepRetrying { error, .. }
            | DomainEvent::ItemFailed { error, .. }
            | DomainEvent::ItemRetrying { error, .. }
            | DomainEvent::CompensationRetrying { error, .. }
            | DomainEvent::CompensationFailed { error, .. } => error,
            _ => return false,
        };
        // A timeout or a broken connection is the engine giving up, not the answer arriving.
        !matches!(error.kind, ErrorKind::Timeout | ErrorKind::Connection)
    }
}

/// Faults as bands: each beginning paired with the next end of the same kind on the same
/// hosts; one with no end lasts to the end of the run (`end_ms`).
fn bands_of(log: &[FaultEntry], end_ms: u64) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    let mut open: BTreeMap<(String, Vec<String>), usize> = BTreeMap::new();
    for entry in log {
        let mut hosts = entry.hosts.clone();
        hosts.sort();
        let key = (entry.kind.clone(), hosts);
        match entry.phase {
            FaultPhase::Begins => {
                if open.contains_key(&key) {
                    continue; // already in force: a second cut of a cut link changes nothing
                }
                open.insert(key, bands.len());
                bands.push(Band {
                    kind: entry.kind.clone(),
                    hosts: entry.hosts.clone(),
                    from_ms: entry.at_ms,
                    to_ms: end_ms,
                    instant: false,
                    open: true,
                    label: entry.label.clone(),
                });
            }
            FaultPhase::Ends => {
                if let Some(i) = open.remove(&key) {
                    bands[i].to_ms = entry.at_ms.max(bands[i].from_ms);
                    bands[i].open = false;
                    bands[i].label = format!("{}; then {}", bands[i].label, entry.label);
                }
            }
            FaultPhase::Strikes => bands.push(Band {
                kind: entry.kind.clone(),
                hosts: entry.hosts.clone(),
                from_ms: entry.at_ms,
                to_ms: entry.at_ms,
                instant: true,
                open: false,
                label: entry.label.clone(),
            }),
        }
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, kind: &str, phase: FaultPhase, hosts: &[&str]) -> FaultEntry {
        FaultEntry {
            at_ms,
            kind: kind.to_string(),
            phase,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            label: format!("{kind} at {at_ms}"),
        }
    }

    #[test]
    fn a_fault_lasts_from_its_start_to_its_end_and_an_unended_one_to_the_end_of_the_run() {
        let log = vec![
            entry(100, "crash", FaultPhase::Begins, &["engine"]),
            entry(150, "partition", FaultPhase::Begins, &["engine", "a"]),
            entry(200, "io_error", FaultPhase::Strikes, &["engine"]),
            // The other direction of the same link ends it.
            entry(250, "partition", FaultPhase::Ends, &["a", "engine"]),
            entry(400, "crash", FaultPhase::Ends, &["engine"]),
            entry(500, "hold", FaultPhase::Begins, &["engine", "b"]),
        ];
        let bands = super::bands_of(&log, 900);
        let summary: Vec<(&str, u64, u64, bool, bool)> = bands
            .iter()
            .map(|b| (b.kind.as_str(), b.from_ms, b.to_ms, b.instant, b.open))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("crash", 100, 400, false, false),
                ("partition", 150, 250, false, false),
                ("io_error", 200, 200, true, false),
                ("hold", 500, 900, false, true),
            ]
        );
        assert_eq!(bands[0].label, "crash at 100; then crash at 400");
    }

    #[test]
    fn the_page_carries_its_data_and_no_early_script_end() {
        let timeline = Timeline {
            scenario: "s</script><b>".into(),
            seed: 3,
            passed: true,
            elapsed_ms: 10,
            window_end_ms: 5,
            repro: "cargo xtask repro s --seed 3".into(),
            hosts: vec!["engine".into()],
            faults: vec![],
            starts: vec![],
            calls: vec![],
            hidden_calls: 0,
            executions: vec![],
            hidden_executions: 0,
            violations: vec![],
        };
        let page = timeline.html();
        assert!(!page.contains(DATA_SLOT), "the data replaced the slot");
        assert!(page.contains(r#""seed":3"#));
        assert!(
            !page.contains("s</script><b>"),
            "a name cannot end the script"
        );
        assert!(page.contains(r#"s<\/script><b>"#));
        for fetch in ["src=", "<link", "@import", "url(h", "url('h", "fetch("] {
            assert!(!page.contains(fetch), "the page fetches nothing ({fetch})");
        }
    }
}
