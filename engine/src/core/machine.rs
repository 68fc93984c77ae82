//! [`Execution::apply`]: one input in, one [`Transition`] out.
//!
//! Scheduling rule (DESIGN §2): a pending step is decided once every dependency is terminal.
//! It runs when at least one dependency *satisfied* it (completed on a taken route, skipped by
//! its own `on_error: skip_step`, or failed under `on_error: continue`); it is skipped when all
//! were skipped or routed away; it never starts while a dependency failed for good or was
//! cancelled, and no new step starts once the execution is failing.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand::RngCore;
use serde_json::{json, Map, Value};

use super::checkpoint::{ForkOrigin, NewCheckpoint};
use super::retry::{max_retry_delay_ms, retry_delay_ms};
use super::state::{
    CallState, CallStatus, CompensationRun, ErrorKind, ExecutionStatus, ReceivedSignal, SkipReason,
    StepError, StepState, StepStatus,
};
use crate::definition::{
    FailurePolicy, Foreach, ItemErrorPolicy, OnError, ProcessDef, RetryPolicy, StepKind,
    MAX_FOREACH_ITEMS,
};
use crate::event::{DomainEvent, EventRecord};
use crate::expr;
use crate::planted::Bug;

/// What the core reacts to.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Begin a pending execution.
    Start,
    /// An agent call finished, with the output or the error. Results for an attempt that is no
    /// longer current (late, after a cancel or a retry) are ignored.
    AgentReturned {
        step: usize,
        lane: Lane,
        attempt: u32,
        result: Result<Value, StepError>,
    },
    /// A wake-up armed by [`Command::Wake`] is due: a timer step's deadline or a retry backoff.
    Wake {
        step: usize,
        lane: Lane,
        attempt: u32,
    },
    /// A named signal for the execution, with the sender's id for it: kept until a
    /// `wait_signal` step consumes it; a repeated id, or one past
    /// [`MAX_SIGNALS_PER_EXECUTION`], is ignored, as is any signal once terminal.
    Signal {
        id: String,
        name: String,
        payload: Value,
    },
    /// Cancel the execution; a no-op once it is terminal.
    Cancel { reason: Option<String> },
    /// An agent working on a call reported progress. Recorded as an
    /// [`DomainEvent::AgentProgress`] while that attempt is the one in flight; dropped
    /// otherwise (a late report of an abandoned or superseded attempt).
    AgentProgress {
        step: usize,
        lane: Lane,
        attempt: u32,
        progress: crate::agent::AgentProgress,
    },
    /// `input`, made by `actor`: when it changes anything, an [`DomainEvent::Audit`] naming
    /// who and what comes first in the same transition, so the audit history is exactly as
    /// durable as the change (the events are the audit log).
    Audited {
        actor: Option<String>,
        action: String,
        detail: Option<String>,
        input: Box<Input>,
    },
    /// Stop starting new steps. Steps in flight finish and their results are kept; retry
    /// backoffs that end while paused wait for the resume.
    Pause,
    /// Undo a pause: re-arm waiting retries and schedule again.
    Resume,
    /// The engine restarted and found this execution in storage: re-issue whatever was in
    /// flight (calls with their original attempt and idempotency key, wake-ups at their stored
    /// deadlines), or fail it, as the recovery service decided.
    Recover { action: RecoveryAction },
}

/// Step counts of an execution, by kind of state; `percent` is the share of steps decided
/// (completed, failed, cancelled or skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub total: usize,
    pub pending: usize,
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub percent: u8,
}

/// The tenant of everything created without one (the library's plain [`crate::Engine`]
/// methods, the CLI).
pub const DEFAULT_TENANT: &str = "default";

/// Signals one execution keeps (consumed or not): its row carries them all.
pub const MAX_SIGNALS_PER_EXECUTION: usize = 1_000;

/// What recovery does with one stored execution (DESIGN §2).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryAction {
    /// Between steps (or pending): schedule again.
    Resume,
    /// An agent call was in flight: re-dispatch it with the same idempotency key.
    RetryStep,
    /// Older than the age limit: fail it instead of resuming.
    MarkFailed,
    /// Already terminal: nothing to do.
    Skip,
}

/// Which of a step's calls (or wake-ups) an input or command is about: a step may have its
/// own call and, later, its compensating action's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// The step itself.
    #[default]
    Main,
    /// One item of a `foreach` step, by 0-based index.
    Item(u32),
    /// The step's compensating action.
    Compensation,
}

impl Lane {
    /// This lane's step id on the wire (`reserve#compensate`, `charge#3`): each lane is its
    /// own effect, with its own idempotency key. Step ids cannot hold `#`.
    pub fn wire_id(self, step_id: &str) -> String {
        match self {
            Lane::Main => step_id.to_string(),
            Lane::Item(index) => format!("{step_id}#{index}"),
            Lane::Compensation => format!("{step_id}#compensate"),
        }
    }
}

/// One agent call to perform.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentCall {
    pub step: usize,
    pub lane: Lane,
    /// The step's id, with the lane's suffix.
    pub step_id: String,
    pub agent: String,
    pub attempt: u32,
    /// Execution and step, not the attempt: the agent applies the effect at most once.
    pub idempotency_key: String,
    pub input: Value,
    pub timeout_ms: u64,
}

/// One plain HTTP request to send, for an `http` step.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpCall {
    pub step: usize,
    pub step_id: String,
    pub attempt: u32,
    /// Execution and step: sent as the `Idempotency-Key` header of every attempt.
    pub idempotency_key: String,
    /// The rendered request, `{method, url, headers, body}`, as stored in the step's input:
    /// secret references in headers are still references (the driver fills them in).
    pub request: Value,
    pub timeout_ms: u64,
    pub success: Vec<crate::definition::StatusMatch>,
}

/// One email to send, for an `email` step.
#[derive(Clone, Debug, PartialEq)]
pub struct EmailCall {
    pub step: usize,
    pub step_id: String,
    pub attempt: u32,
    /// Execution and step: the message's `X-Proctor-Idempotency-Key`, and its `Message-ID`.
    pub idempotency_key: String,
    /// The rendered message, `{to: [..], from, subject, body}`, as stored in the step's input.
    pub message: Value,
    pub timeout_ms: u64,
}

/// Side effects the driver performs after the transition is durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    CallAgent(AgentCall),
    /// Send an `http` step's request; its result comes back as [`Input::AgentReturned`].
    CallHttp(HttpCall),
    /// Send an `email` step's message; its result comes back as [`Input::AgentReturned`].
    SendEmail(EmailCall),
    /// Deliver [`Input::Wake`] at `at_ms` (Clock time), or at once if that has passed.
    Wake {
        step: usize,
        lane: Lane,
        attempt: u32,
        at_ms: u64,
    },
    /// Create (if it does not exist) and start the child execution of a `subprocess` step,
    /// then deliver its result as [`Input::AgentReturned`] for the step's attempt 1.
    StartChild {
        step: usize,
        /// The parent's: a child belongs to its parent's tenant and is resolved in its registry.
        tenant: String,
        child_id: String,
        process: String,
        version: Option<u32>,
        input: Value,
    },
    /// Cancel a child execution (its parent was cancelled or gave up).
    CancelChild {
        child_id: String,
    },
    /// Stop waiting for the step's calls and wake-ups, in every lane; a late result would be
    /// ignored anyway.
    Abandon {
        step: usize,
    },
}

/// The result of one [`Execution::apply`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    pub events: Vec<EventRecord>,
    pub commands: Vec<Command>,
    /// Steps whose state changed, by index, ascending.
    pub dirty_steps: BTreeSet<usize>,
    /// Whether anything about the execution changed (nothing to persist if false).
    pub changed: bool,
    /// One per step completed in this transition, committed with it.
    pub checkpoints: Vec<NewCheckpoint>,
}

/// One execution of a process: plain data.
#[derive(Clone, Debug, PartialEq)]
pub struct Execution {
    pub id: String,
    pub process: Arc<ProcessDef>,
    pub input: Value,
    pub status: ExecutionStatus,
    /// Indexed like `process.steps`.
    pub steps: Vec<StepState>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The `seq` the next event gets.
    pub next_seq: u64,
    /// Pause when this step completes (an `execute_until`); cleared when reached.
    pub breakpoint: Option<String>,
    /// Set when this execution was forked from another's checkpoint.
    pub origin: Option<ForkOrigin>,
    /// Who owns it: every read and write through [`crate::tenant::Tenant`] is scoped to it.
    pub tenant: String,
    /// Set once a fatal failure started compensating the completed steps.
    pub compensation: Option<CompensationRun>,
    /// Signals received, in arrival order.
    pub signals: Vec<ReceivedSignal>,
    /// The client's key for the request that created it: the tenant's other requests with
    /// the same key return this execution instead of creating another.
    pub idempotency_key: Option<String>,
}

/// How one dependency stands for one dependant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DepState {
    Waiting,
    Satisfied,
    /// Skipped, or a gateway routed elsewhere: the dependant may be skipped.
    Dead,
    /// Failed for good or cancelled: the dependant must never start.
    Blocked,
}

struct Ctx<'a> {
    now_ms: u64,
    rng: &'a mut dyn RngCore,
    tx: Transition,
}

impl Execution {
    /// A new pending execution. Nothing runs until [`Input::Start`].
    pub fn new(id: String, process: Arc<ProcessDef>, input: Value, now_ms: u64) -> Execution {
        let steps = vec![StepState::new(); process.steps.len()];
        Execution {
            id,
            process,
            input,
            status: ExecutionStatus::Pending,
            steps,
            output: None,
            error: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            next_seq: 1,
            breakpoint: None,
            origin: None,
            tenant: DEFAULT_TENANT.to_string(),
            compensation: None,
            signals: Vec::new(),
            idempotency_key: None,
        }
    }

    /// Applies one input at time `now_ms`.
    pub fn apply(&mut self, input: Input, now_ms: u64, rng: &mut dyn RngCore) -> Transition {
        if let Input::Audited {
            actor,
            action,
            detail,
            input,
        } = input
        {
            return self.apply_audited(actor, action, detail, *input, now_ms, rng);
        }
        let mut cx = Ctx {
            now_ms,
            rng,
            tx: Transition::default(),
        };
        match input {
            Input::Audited { .. } => unreachable!("handled above"),
            Input::Start => {
                if self.status != ExecutionStatus::Pending {
                    return cx.tx;
                }
                if let Some(origin) = self.origin.clone() {
                    let event = DomainEvent::ExecutionForked {
                        from: origin.execution_id,
                        checkpoint_seq: origin.checkpoint_seq,
                    };
                    self.emit(&mut cx, event);
                }
                self.set_status(&mut cx, ExecutionStatus::Running);
                let event = DomainEvent::ExecutionStarted {
                    process: self.process.name.clone(),
                    version: self.process.version,
                };
                self.emit(&mut cx, event);
            }
            Input::AgentProgress {
                step,
                lane,
                attempt,
                progress,
            } => {
                let current = match lane {
                    Lane::Main => {
                        self.is_current(step, attempt, StepStatus::Running)
                            && matches!(self.process.steps[step].kind, StepKind::AgentTask(_))
                    }
                    Lane::Item(index) => self.is_item(step, index, attempt, CallStatus::Running),
                    Lane::Compensation => self.is_compensating(step, attempt, CallStatus::Running),
                };
                if !current {
                    return cx.tx;
                }
                let event = DomainEvent::AgentProgress {
                    step: lane.wire_id(&self.process.steps[step].id),
                    attempt,
                    kind: progress.kind,
                    data: progress.data,
                };
                self.emit(&mut cx, event);
            }
            Input::AgentReturned {
                step,
                lane: Lane::Compensation,
                attempt,
                result,
            } => {
                if !self.is_compensating(step, attempt, CallStatus::Running) {
                    return cx.tx;
                }
                match result {
                    Ok(output) => self.compensation_completed(&mut cx, step, output),
                    Err(error) => self.compensation_attempt_failed(&mut cx, step, error),
                }
            }
            Input::Wake {
                step,
                lane: Lane::Compensation,
                attempt,
            } => {
                if !self.is_compensating(step, attempt, CallStatus::Retrying)
                    || self.status == ExecutionStatus::Paused
                {
                    // Paused: held until resume, which re-arms it.
                    return cx.tx;
                }
                self.start_compensation_attempt(&mut cx, step, attempt + 1);
            }
            Input::AgentReturned {
                step,
                lane: Lane::Item(index),
                attempt,
                result,
            } => {
                if !self.is_item(step, index, attempt, CallStatus::Running) {
                    return cx.tx;
                }
                match result {
                    Ok(output) => self.item_completed(&mut cx, step, index, output),
                    Err(error) => self.item_attempt_failed(&mut cx, step, index, error),
                }
            }
            Input::Wake {
                step,
                lane: Lane::Item(index),
                attempt,
            } => {
                if !self.is_item(step, index, attempt, CallStatus::Retrying)
                    || self.status == ExecutionStatus::Paused
                {
                    // Paused: held until resume, which re-arms it.
                    return cx.tx;
                }
                self.start_item_attempt(&mut cx, step, index, attempt + 1);
            }
            Input::AgentReturned {
                step,
                lane: Lane::Main,
                attempt,
                result,
            } => {
                // Only agent tasks and sub-processes have results in flight; anything else is a
                // confused driver.
                if !self.is_current(step, attempt, StepStatus::Running)
                    || !matches!(
                        self.process.steps[step].kind,
                        StepKind::AgentTask(_)
                            | StepKind::Subprocess(_)
                            | StepKind::Http(_)
                            | StepKind::Email(_)
                    )
                {
                    return cx.tx;
                }
                match result {
                    Ok(output) => self.complete_step(&mut cx, step, output),
                    Err(error) => self.attempt_failed(&mut cx, step, error),
                }
            }
            Input::Wake {
                step,
                lane: Lane::Main,
                attempt,
            } => {
                if self.is_current(step, attempt, StepStatus::Retrying) {
                    if self.status == ExecutionStatus::Paused {
                        // Held until resume, which re-arms it.
                        return cx.tx;
                    }
                    self.start_attempt(&mut cx, step, attempt + 1);
                } else if self.is_current(step, attempt, StepStatus::Running)
                    && matches!(self.process.steps[step].kind, StepKind::WaitSignal(_))
                {
                    self.signal_timed_out(&mut cx, step);
                } else if self.is_current(step, attempt, StepStatus::Running)
                    && matches!(self.process.steps[step].kind, StepKind::Timer(_))
                {
                    let st = &self.steps[step];
                    let started = st.started_at_ms.expect("a running timer has started");
                    let waited_ms = now_ms.saturating_sub(started);
                    let output = json!({
                        "waited_ms": waited_ms,
                        "waited_seconds": waited_ms as f64 / 1000.0,
                        "deadline_ms": st.wake_at_ms,
                    });
                    self.complete_step(&mut cx, step, output);
                } else {
                    return cx.tx;
                }
            }
            Input::Signal { id, name, payload } => {
                let mut repeated = self.signals.iter().any(|s| s.id == id);
                if crate::planted::planted(Bug::SignalDeliveredTwice) {
                    // Planted bug (test-only, see `planted`): the sender's id is not checked.
                    repeated = false;
                }
                if self.status.is_terminal()
                    || self.signals.len() >= MAX_SIGNALS_PER_EXECUTION
                    || repeated
                {
                    return cx.tx;
                }
                let event = DomainEvent::SignalReceived {
                    signal_id: id.clone(),
                    name: name.clone(),
                    payload: payload.clone(),
                };
                self.emit(&mut cx, event);
                self.signals.push(ReceivedSignal {
                    id,
                    name: name.clone(),
                    payload,
                    received_at_ms: now_ms,
                    consumed_by: None,
                });
                // A step already waiting takes it at once, even while paused: like a result in
                // flight, it is work that was started before the pause.
                let waiting = (0..self.steps.len()).find(|&i| {
                    self.steps[i].status == StepStatus::Running
                        && matches!(&self.process.steps[i].kind,
                            StepKind::WaitSignal(w) if w.signal == name)
                });
                if let Some(step) = waiting {
                    self.consume_signal(&mut cx, step);
                }
            }
            Input::Cancel { reason } => {
                if self.status.is_terminal() {
                    return cx.tx;
                }
                self.abandon_active(&mut cx);
                self.set_status(&mut cx, ExecutionStatus::Cancelled);
                self.emit(&mut cx, DomainEvent::ExecutionCancelled { reason });
                return cx.tx;
            }
            Input::Pause => {
                if self.status != ExecutionStatus::Running {
                    return cx.tx;
                }
                self.set_status(&mut cx, ExecutionStatus::Paused);
                self.emit(&mut cx, DomainEvent::ExecutionPaused);
                return cx.tx;
            }
            Input::Resume => {
                if self.status != ExecutionStatus::Paused {
                    return cx.tx;
                }
                self.set_status(&mut cx, ExecutionStatus::Running);
                self.emit(&mut cx, DomainEvent::ExecutionResumed);
                self.rearm(&mut cx, false);
            }
            Input::Recover { action } => {
                if self.status.is_terminal() || action == RecoveryAction::Skip {
                    return cx.tx;
                }
                self.emit(&mut cx, DomainEvent::ExecutionRecovered { action });
                match action {
                    RecoveryAction::MarkFailed => {
                        self.abandon_active(&mut cx);
                        let error = "abandoned by recovery: older than the age limit".to_string();
                        self.fail(&mut cx, None, error);
                        return cx.tx;
                    }
                    _ if self.status == ExecutionStatus::Pending => {
                        self.set_status(&mut cx, ExecutionStatus::Running);
                        let event = DomainEvent::ExecutionStarted {
                            process: self.process.name.clone(),
                            version: self.process.version,
                        };
                        self.emit(&mut cx, event);
                    }
                    _ => {
                        if crate::planted::planted(Bug::PauseLostOnRestart)
                            && self.status == ExecutionStatus::Paused
                        {
                            // Planted bug (test-only, see `planted`): the pause is forgotten.
                            self.set_status(&mut cx, ExecutionStatus::Running);
                        }
                        self.rearm(&mut cx, true)
                    }
                }
            }
        }
        self.schedule(&mut cx);
        cx.tx
    }

    /// Applies `input` after an audit event, both or neither: a no-op change is not audited.
    fn apply_audited(
        &mut self,
        actor: Option<String>,
        action: String,
        detail: Option<String>,
        input: Input,
        now_ms: u64,
        rng: &mut dyn RngCore,
    ) -> Transition {
        let before = (self.next_seq, self.updated_at_ms);
        let audit = EventRecord {
            execution_id: self.id.clone(),
            seq: self.next_seq,
            at_ms: now_ms,
            event: DomainEvent::Audit {
                actor,
                action,
                detail,
            },
        };
        self.next_seq += 1;
        let mut tx = self.apply(input, now_ms, rng);
        if !tx.changed {
            (self.next_seq, self.updated_at_ms) = before;
            return tx;
        }
        tx.events.insert(0, audit);
        tx
    }

    /// How far along it is, from its steps' states (for monitoring).
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            total: self.steps.len(),
            ..Progress::default()
        };
        for st in &self.steps {
            match st.status {
                StepStatus::Pending => p.pending += 1,
                StepStatus::Running | StepStatus::Retrying => p.running += 1,
                StepStatus::Completed | StepStatus::Compensated => p.completed += 1,
                StepStatus::Failed | StepStatus::Cancelled => p.failed += 1,
                StepStatus::Skipped => p.skipped += 1,
            }
        }
        let decided = p.completed + p.failed + p.skipped;
        p.percent = (decided * 100).checked_div(p.total).unwrap_or(100) as u8;
        p
    }

    /// The recovery service's decision for this execution at `now_ms`.
    pub fn recovery_action(&self, now_ms: u64, max_age_ms: u64) -> RecoveryAction {
        if self.status.is_terminal() {
            RecoveryAction::Skip
        } else if now_ms.saturating_sub(self.created_at_ms) > max_age_ms {
            RecoveryAction::MarkFailed
        } else if self.process.steps.iter().zip(&self.steps).any(|(d, s)| {
            (s.status == StepStatus::Running
                && matches!(
                    d.kind,
                    StepKind::AgentTask(_)
                        | StepKind::Subprocess(_)
                        | StepKind::Http(_)
                        | StepKind::Email(_)
                ))
                || s.detail.compensation.as_ref().map(|c| c.status) == Some(CallStatus::Running)
                || s.detail
                    .items
                    .iter()
                    .any(|i| i.status == CallStatus::Running)
        }) {
            RecoveryAction::RetryStep
        } else {
            RecoveryAction::Resume
        }
    }

    /// Re-issues the commands for work in flight. `calls` re-dispatches running agent calls
    /// and timers (after a restart nothing is in flight); retry backoffs are re-armed only while
    /// running (a paused execution re-arms them on resume).
    ///
    /// A wait re-armed here ends at its stored deadline, but never later than its own length
    /// from now (a timer's duration, a signal's timeout, the longest backoff of its policy):
    /// the deadline was set by an earlier life's wall clock, and if the clock has been stepped
    /// back since, honouring it alone would stretch the wait by the step.
    fn rearm(&mut self, cx: &mut Ctx<'_>, calls: bool) {
        let now_ms = cx.now_ms;
        let capped = |at_ms: u64, length_ms: Option<u64>| {
            length_ms.map_or(at_ms, |l| at_ms.min(now_ms.saturating_add(l)))
        };
        for step in 0..self.steps.len() {
            let st = &self.steps[step];
            let (status, attempt, wake_at) = (st.status, st.attempt, st.wake_at_ms);
            match (status, &self.process.steps[step].kind) {
                (
                    StepStatus::Running,
                    StepKind::AgentTask(_) | StepKind::Http(_) | StepKind::Email(_),
                ) if calls => {
                    if crate::planted::planted(Bug::NoRedispatchOnRecovery) {
                        // Planted bug (test-only, see `planted`): the call is forgotten.
                        continue;
                    }
                    let mut command = self.call_command(step, attempt);
                    if crate::planted::planted(Bug::FreshKeyOnRecovery) {
                        // Planted bug (test-only, see `planted`): a new key for the same call.
                        if let Command::CallAgent(call) = &mut command {
                            call.idempotency_key.push_str(":r");
                        }
                    }
                    cx.tx.commands.push(command);
                }
                (StepStatus::Running, StepKind::WaitSignal(wait)) if calls && wake_at.is_some() => {
                    let timeout_ms = wait.timeout.as_ref().map(|t| t.as_millis());
                    cx.tx.commands.push(Command::Wake {
                        step,
                        lane: Lane::Main,
                        attempt,
                        at_ms: capped(wake_at.expect("checked"), timeout_ms),
                    });
                }
                (StepStatus::Running, StepKind::Subprocess(_)) if calls => {
                    cx.tx.commands.push(self.child_command(step));
                }
                (StepStatus::Running, StepKind::Timer(timer)) if calls => {
                    let duration_ms = timer.duration.as_ref().map(|d| d.as_millis());
                    let mut at_ms = capped(
                        wake_at.expect("a running timer has a deadline"),
                        duration_ms,
                    );
                    if crate::planted::planted(Bug::TimerRecomputedOnRestart) {
                        // Planted bug (test-only, see `planted`): the wait starts over from now.
                        if let Some(duration) = &timer.duration {
                            at_ms = cx.now_ms.saturating_add(duration.as_millis());
                        }
                    }
                    cx.tx.commands.push(Command::Wake {
                        step,
                        lane: Lane::Main,
                        attempt,
                        at_ms,
                    });
                }
                (StepStatus::Retrying, kind) if self.status == ExecutionStatus::Running => {
                    let longest = kind.call_retry().map(max_retry_delay_ms);
                    cx.tx.commands.push(Command::Wake {
                        step,
                        lane: Lane::Main,
                        attempt,
                        at_ms: capped(wake_at.expect("a retrying step has a deadline"), longest),
                    });
                }
                _ => {}
            }
            if status == StepStatus::Running {
                for (index, item) in self.steps[step].detail.items.iter().enumerate() {
                    let index = index as u32;
                    match item.status {
                        CallStatus::Running if calls => {
                            cx.tx.commands.push(self.item_call(step, index));
                        }
                        CallStatus::Retrying if self.status == ExecutionStatus::Running => {
                            let longest = max_retry_delay_ms(&self.foreach_def(step).retry);
                            cx.tx.commands.push(Command::Wake {
                                step,
                                lane: Lane::Item(index),
                                attempt: item.attempt,
                                at_ms: capped(
                                    item.wake_at_ms.expect("a retrying item has a deadline"),
                                    Some(longest),
                                ),
                            });
                        }
                        _ => {}
                    }
                }
            }
            let Some(undo) = &self.steps[step].detail.compensation else {
                continue;
            };
            match undo.status {
                CallStatus::Running if calls => {
                    cx.tx.commands.push(self.compensation_call(step));
                }
                CallStatus::Retrying if self.status == ExecutionStatus::Running => {
                    let longest = max_retry_delay_ms(&self.compensate_def(step).retry);
                    let at_ms = undo
                        .wake_at_ms
                        .expect("a retrying compensation has a deadline");
                    cx.tx.commands.push(Command::Wake {
                        step,
                        lane: Lane::Compensation,
                        attempt: undo.attempt,
                        at_ms: capped(at_ms, Some(longest)),
                    });
                }
                _ => {}
            }
        }
    }

    /// Whether `step` is waiting, as `status`, on exactly this attempt. Results arrive while
    /// paused too: a pause stops new work, not the work in flight.
    fn is_current(&self, step: usize, attempt: u32, status: StepStatus) -> bool {
        matches!(
            self.status,
            ExecutionStatus::Running | ExecutionStatus::Paused
        ) && step < self.steps.len()
            && self.steps[step].status == status
            && self.steps[step].attempt == attempt
    }

    fn emit(&mut self, cx: &mut Ctx<'_>, event: DomainEvent) {
        // Records never go back in time, even when the wall clock is stepped back: a history
        // is in time order (deadlines still use the clock as it reads).
        let at_ms = cx.now_ms.max(self.updated_at_ms);
        cx.tx.events.push(EventRecord {
            execution_id: self.id.clone(),
            seq: self.next_seq,
            at_ms,
            event,
        });
        self.next_seq += 1;
        cx.tx.changed = true;
        self.updated_at_ms = at_ms;
    }

    fn set_status(&mut self, cx: &mut Ctx<'_>, next: ExecutionStatus) {
        assert!(
            self.status.can_become(next),
            "execution {}: {} -> {next} is not a lifecycle edge",
            self.id,
            self.status
        );
        self.status = next;
        cx.tx.changed = true;
        self.updated_at_ms = cx.now_ms.max(self.updated_at_ms);
    }

    fn set_step_status(&mut self, cx: &mut Ctx<'_>, step: usize, next: StepStatus) {
        let st = &mut self.steps[step];
        assert!(
            st.status.can_become(next),
            "execution {} step {}: {} -> {next} is not a lifecycle edge",
            self.id,
            self.process.steps[step].id,
            st.status
        );
        st.status = next;
        if next.is_terminal() {
            st.finished_at_ms = Some(cx.now_ms);
            st.wake_at_ms = None;
        }
        cx.tx.dirty_steps.insert(step);
        cx.tx.changed = true;
    }

    /// The variables expressions see: `input` and, per step, status/output/error.
    pub fn scope(&self) -> expr::Scope {
        let mut steps = Map::new();
        for (def, st) in self.process.steps.iter().zip(&self.steps) {
            steps.insert(
                def.id.clone(),
                json!({
                    "status": st.status.as_str(),
                    "output": st.output.clone().unwrap_or(Value::Null),
                    // A step that succeeded after retries keeps its last error in the row (it
                    // says why it retried), but expressions see an error only on failure.
                    "error": st.last_error.as_ref()
                        .filter(|_| matches!(st.status, StepStatus::Failed | StepStatus::Skipped))
                        .map(|e| serde_json::to_value(e).expect("serializes")),
                    "attempt": st.attempt,
                }),
            );
        }
        expr::Scope {
            input: self.input.clone(),
            steps: Value::Object(steps),
            locals: Vec::new(),
        }
    }

    /// Starts every step that can start, skips every step that can never run, and finishes the
    /// execution when nothing is left in flight.
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        if self.status != ExecutionStatus::Running {
            return;
        }
        if self.compensation.is_some() {
            return self.advance_compensation(cx);
        }
        for step in 0..self.steps.len() {
            if self.steps[step].status == StepStatus::Running
                && matches!(self.process.steps[step].kind, StepKind::Foreach(_))
            {
                self.pump_items(cx, step);
            }
        }
        // Each pass decides at least one step or stops, so this ends within steps.len() passes.
        let mut progressed = true;
        while progressed && !self.is_failing() && self.status == ExecutionStatus::Running {
            progressed = false;
            if crate::planted::planted(Bug::UnorderedDispatch) {
                self.planted_unordered_start(cx);
            }
            for step in 0..self.steps.len() {
                if self.steps[step].status != StepStatus::Pending {
                    continue;
                }
                match self.readiness(step) {
                    None => {}
                    Some(Ok(())) => {
                        self.start_step(cx, step);
                        progressed = true;
                    }
                    Some(Err(reason)) => {
                        self.set_step_status(cx, step, StepStatus::Skipped);
                        self.steps[step].skip_reason = Some(reason);
                        let id = self.process.steps[step].id.clone();
                        self.emit(
                            cx,
                            DomainEvent::StepSkipped {
                                step: id,
                                reason,
                                error: None,
                            },
                        );
                        progressed = true;
                    }
                }
                if self.is_failing() || self.status != ExecutionStatus::Running {
                    break;
                }
            }
        }
        self.finish_if_done(cx);
    }

    /// Planted bug (test-only, see `planted`): starts the steps that are ready now in the
    /// iteration order of a std `HashSet`, whose `RandomState` is seeded differently in every
    /// process, instead of definition order. The one place the engine may use a random hasher.
    fn planted_unordered_start(&mut self, cx: &mut Ctx<'_>) {
        let ready: std::collections::HashSet<usize> = (0..self.steps.len())
            .filter(|&s| {
                self.steps[s].status == StepStatus::Pending
                    && matches!(self.readiness(s), Some(Ok(())))
            })
            .collect();
        for step in ready {
            if self.is_failing() || self.status != ExecutionStatus::Running {
                break;
            }
            self.start_step(cx, step);
        }
    }

    /// `None`: not decidable yet (or never: blocked). `Some(Ok)`: start it. `Some(Err)`: skip.
    fn readiness(&self, step: usize) -> Option<Result<(), SkipReason>> {
        let def = &self.process.steps[step];
        if def.depends_on.is_empty() {
            return Some(Ok(()));
        }
        let mut any_satisfied = false;
        let mut routed_away = false;
        let mut waiting = false;
        for dep_id in &def.depends_on {
            let dep = self
                .process
                .position(dep_id)
                .expect("validated: dependencies exist");
            match self.dep_state(dep, &def.id) {
                DepState::Waiting => {
                    if crate::planted::planted(Bug::JoinIgnoresPending) {
                        // Planted bug (test-only, see `planted`): one in flight is not waited for.
                        waiting = true;
                        continue;
                    }
                    return None;
                }
                DepState::Blocked => return None,
                DepState::Satisfied => any_satisfied = true,
                DepState::Dead => {
                    routed_away |= self.steps[dep].status == StepStatus::Completed;
                }
            }
        }
        if any_satisfied {
            Some(Ok(()))
        } else if waiting {
            None
        } else if routed_away {
            Some(Err(SkipReason::RouteNotTaken))
        } else {
            Some(Err(SkipReason::UpstreamSkipped))
        }
    }

    fn dep_state(&self, dep: usize, dependant: &str) -> DepState {
        let st = &self.steps[dep];
        let def = &self.process.steps[dep];
        match st.status {
            StepStatus::Pending | StepStatus::Running | StepStatus::Retrying => DepState::Waiting,
            StepStatus::Completed | StepStatus::Compensated => match &def.kind {
                StepKind::Gateway(gateway) => {
                    let targeted = gateway
                        .routes
                        .iter()
                        .flat_map(|r| r.to.iter())
                        .chain(gateway.default.iter())
                        .any(|t| t == dependant);
                    let taken = st
                        .output
                        .as_ref()
                        .and_then(|o| o.get("route"))
                        .and_then(Value::as_array)
                        .is_some_and(|r| r.iter().any(|t| t.as_str() == Some(dependant)));
                    if targeted && !taken {
                        DepState::Dead
                    } else {
                        DepState::Satisfied
                    }
                }
                _ => DepState::Satisfied,
            },
            StepStatus::Skipped => match st.skip_reason {
                Some(SkipReason::OnError) => DepState::Satisfied,
                _ => DepState::Dead,
            },
            StepStatus::Failed => match def_on_error(&def.kind) {
                OnError::Continue => DepState::Satisfied,
                _ => DepState::Blocked,
            },
            StepStatus::Cancelled => DepState::Blocked,
        }
    }

    /// A step failed for good under `on_error: fail`; with `stop_on_failure: false` the
    /// execution lets running siblings finish before failing.
    fn is_failing(&self) -> bool {
        self.first_fatal_failure().is_some()
    }

    fn first_fatal_failure(&self) -> Option<usize> {
        (0..self.steps.len()).find(|&i| {
            self.steps[i].status == StepStatus::Failed
                && def_on_error(&self.process.steps[i].kind) != OnError::Continue
        })
    }

    fn start_step(&mut self, cx: &mut Ctx<'_>, step: usize) {
        let def = self.process.steps[step].clone();
        match &def.kind {
            StepKind::AgentTask(_) | StepKind::Http(_) | StepKind::Email(_) => {
                self.start_attempt(cx, step, 1)
            }
            StepKind::Transform(transform) => {
                // No I/O: the output is computed here, and the step ends in this transition.
                self.mark_started(cx, step, 1, None);
                match expr::render(&transform.output, &self.scope()) {
                    Ok(output) => self.complete_step(cx, step, output),
                    Err(e) => {
                        let error = StepError::new(ErrorKind::Expression, e.to_string());
                        self.attempt_failed(cx, step, error);
                    }
                }
            }
            StepKind::Subprocess(sub) => {
                self.mark_started(cx, step, 1, None);
                let input = match &sub.input {
                    None => Ok(json!({})),
                    Some(template) => expr::render(template, &self.scope())
                        .map_err(|e| StepError::new(ErrorKind::Expression, e.to_string())),
                };
                match input {
                    Ok(input) => {
                        self.steps[step].input = Some(input);
                        cx.tx.commands.push(self.child_command(step));
                    }
                    Err(error) => self.attempt_failed(cx, step, error),
                }
            }
            StepKind::WaitSignal(wait) => {
                let deadline = wait
                    .timeout
                    .map(|t| cx.now_ms.saturating_add(t.as_millis()));
                self.mark_started(cx, step, 1, deadline);
                if !self.consume_signal(cx, step) {
                    if let Some(at_ms) = deadline {
                        cx.tx.commands.push(Command::Wake {
                            step,
                            lane: Lane::Main,
                            attempt: 1,
                            at_ms,
                        });
                    }
                }
            }
            StepKind::Foreach(each) => {
                self.mark_started(cx, step, 1, None);
                let template = Value::String(each.items.clone());
                let list = match expr::render(&template, &self.scope()) {
                    Ok(Value::Array(list)) if list.len() <= MAX_FOREACH_ITEMS => Ok(list),
                    Ok(Value::Array(list)) => Err(StepError::new(
                        ErrorKind::Limit,
                        format!(
                            "items: {} items, over the limit of {MAX_FOREACH_ITEMS}",
                            list.len()
                        ),
                    )),
                    Ok(other) => Err(StepError::new(
                        ErrorKind::Expression,
                        format!("items: gave {other}, not a list"),
                    )),
                    Err(e) => Err(StepError::new(ErrorKind::Expression, format!("items: {e}"))),
                };
                match list {
                    Ok(list) => {
                        self.steps[step].input = Some(Value::Array(list));
                        self.pump_items(cx, step);
                    }
                    Err(error) => self.attempt_failed(cx, step, error),
                }
            }
            StepKind::Gateway(gateway) => {
                self.mark_started(cx, step, 1, None);
                let scope = self.scope();
                let mut decision = Ok(None);
                for (i, route) in gateway.routes.iter().enumerate() {
                    match expr::condition(&route.when, &scope) {
                        Ok(true) => {
                            decision = Ok(Some((json!(i), route.to.clone())));
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            decision = Err(StepError::new(ErrorKind::Expression, e.to_string()));
                            break;
                        }
                    }
                }
                let decision = decision.and_then(|taken| match taken {
                    Some(t) => Ok(t),
                    None if !gateway.default.is_empty() => {
                        Ok((json!("default"), gateway.default.clone()))
                    }
                    None => Err(StepError::new(
                        ErrorKind::NoRoute,
                        "no route matched and the gateway has no default",
                    )),
                });
                match decision {
                    Ok((matched, route)) => {
                        self.complete_step(cx, step, json!({"route": route, "matched": matched}))
                    }
                    Err(error) => self.attempt_failed(cx, step, error),
                }
            }
            StepKind::Timer(timer) => {
                let deadline = match (&timer.duration, &timer.until) {
                    (Some(d), _) => cx.now_ms.saturating_add(d.as_millis()),
                    (None, Some(until)) => humantime::parse_rfc3339_weak(until)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64)
                        .expect("validated: `until` is RFC 3339 after the epoch"),
                    (None, None) => unreachable!("validated: timer has duration or until"),
                };
                self.mark_started(cx, step, 1, Some(deadline));
                cx.tx.commands.push(Command::Wake {
                    step,
                    lane: Lane::Main,
                    attempt: 1,
                    at_ms: deadline,
                });
            }
        }
    }

    fn mark_started(&mut self, cx: &mut Ctx<'_>, step: usize, attempt: u32, wake_at: Option<u64>) {
        self.set_step_status(cx, step, StepStatus::Running);
        let st = &mut self.steps[step];
        st.attempt = attempt;
        st.wake_at_ms = wake_at;
        if attempt == 1 {
            st.started_at_ms = Some(cx.now_ms);
        }
        let id = self.process.steps[step].id.clone();
        self.emit(
            cx,
            DomainEvent::StepStarted {
                step: id,
                attempt,
                wake_at_ms: wake_at,
            },
        );
    }

    /// Starts attempt `attempt` of an agent task (input rendered afresh).
    fn start_attempt(&mut self, cx: &mut Ctx<'_>, step: usize, attempt: u32) {
        assert!(
            self.process.steps[step].kind.call_retry().is_some(),
            "only steps that call out have attempts"
        );
        self.mark_started(cx, step, attempt, None);
        if self.steps[step].input.is_none() {
            match self.render_input(step) {
                Ok(input) => self.steps[step].input = Some(input),
                Err(e) => return self.attempt_failed(cx, step, e),
            }
        }
        cx.tx.commands.push(self.call_command(step, attempt));
    }

    /// Renders an agent task's input from the current scope. Done once, at the first attempt:
    /// every retry and every re-dispatch after a restart sends the stored result, so one
    /// idempotency key never carries two different inputs.
    fn render_input(&self, step: usize) -> Result<Value, StepError> {
        let expression = |e: expr::Error| StepError::new(ErrorKind::Expression, e.to_string());
        match &self.process.steps[step].kind {
            StepKind::AgentTask(task) => match &task.input {
                None => Ok(json!({})),
                Some(template) => expr::render(template, &self.scope()).map_err(expression),
            },
            StepKind::Http(http) => {
                let scope = self.scope();
                let text = |template: &str, field: &str| -> Result<String, StepError> {
                    match expr::render(&Value::String(template.to_string()), &scope)
                        .map_err(expression)?
                    {
                        Value::String(s) => Ok(s),
                        Value::Null => Ok(String::new()),
                        other if !other.is_object() && !other.is_array() => Ok(other.to_string()),
                        other => Err(StepError::new(
                            ErrorKind::Expression,
                            format!("{field}: {template:?} gave {other}, not text"),
                        )),
                    }
                };
                let mut headers = serde_json::Map::new();
                for (name, value) in &http.headers {
                    // Secret references are not templates: they pass through unfilled.
                    headers.insert(
                        name.to_ascii_lowercase(),
                        Value::String(text(value, &format!("headers.{name}"))?),
                    );
                }
                let body = match &http.body {
                    None => Value::Null,
                    Some(template) => expr::render(template, &scope).map_err(expression)?,
                };
                Ok(json!({
                    "method": http.method.to_ascii_uppercase(),
                    "url": text(&http.url, "url")?,
                    "headers": headers,
                    "body": body,
                }))
            }
            StepKind::Email(email) => {
                let scope = self.scope();
                let to = match expr::render(&email.to, &scope).map_err(expression)? {
                    Value::String(one) => vec![Value::String(one)],
                    Value::Array(many) => many
                        .into_iter()
                        .flat_map(|v| match v {
                            // A template in the list may give a list of its own.
                            Value::Array(inner) => inner,
                            other => vec![other],
                        })
                        .collect(),
                    other => {
                        return Err(StepError::new(
                            ErrorKind::Expression,
                            format!("to: gave {other}, not an address or a list of them"),
                        ))
                    }
                };
                let text = |template: &str| {
                    expr::render(&Value::String(template.to_string()), &scope)
                        .map_err(expression)
                        .map(|v| match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        })
                };
                Ok(json!({
                    "to": to,
                    "from": email.from.as_deref().map(text).transpose()?,
                    "subject": text(&email.subject)?,
                    "body": text(&email.body)?,
                }))
            }
            _ => unreachable!("only agent tasks, http and email steps have inputs"),
        }
    }

    /// The agent call for `attempt` of `step`, with the step's stored input.
    fn call_command(&self, step: usize, attempt: u32) -> Command {
        let def = &self.process.steps[step];
        let input = self.steps[step]
            .input
            .clone()
            .expect("a step's input is rendered before its first call");
        let mut idempotency_key = format!("{}:{}", self.id, def.id);
        if crate::planted::planted(Bug::RetryWithFreshKey) && attempt > 1 {
            // Planted bug (test-only, see `planted`): each retry is keyed as a new call.
            idempotency_key = format!("{idempotency_key}:{attempt}");
        }
        let task = match &def.kind {
            StepKind::AgentTask(task) => task,
            StepKind::Http(http) => {
                return Command::CallHttp(HttpCall {
                    step,
                    step_id: def.id.clone(),
                    attempt,
                    idempotency_key,
                    request: input,
                    timeout_ms: http.timeout.as_millis(),
                    success: http.success.clone(),
                })
            }
            StepKind::Email(email) => {
                return Command::SendEmail(EmailCall {
                    step,
                    step_id: def.id.clone(),
                    attempt,
                    idempotency_key,
                    message: input,
                    timeout_ms: email.timeout.as_millis(),
                })
            }
            _ => unreachable!("only agent tasks, http and email steps call out"),
        };
        Command::CallAgent(AgentCall {
            step,
            lane: Lane::Main,
            step_id: def.id.clone(),
            agent: task.agent.clone(),
            attempt,
            idempotency_key,
            input,
            timeout_ms: task.timeout.as_millis(),
        })
    }

    fn complete_step(&mut self, cx: &mut Ctx<'_>, step: usize, output: Value) {
        self.set_step_status(cx, step, StepStatus::Completed);
        let order = 1 + self
            .steps
            .iter()
            .filter_map(|s| s.detail.completed_order)
            .max()
            .unwrap_or(0);
        let st = &mut self.steps[step];
        st.output = Some(output.clone());
        st.detail.completed_order = Some(order);
        let attempt = st.attempt;
        let id = self.process.steps[step].id.clone();
        if crate::planted::planted(Bug::CompleteTwice) {
            // Planted bug (test-only, see `planted`): the completion is recorded twice.
            let event = DomainEvent::StepCompleted {
                step: id.clone(),
                attempt,
                output: output.clone(),
            };
            self.emit(cx, event);
        }
        self.emit(
            cx,
            DomainEvent::StepCompleted {
                step: id.clone(),
                attempt,
                output,
            },
        );
        let seq = self.next_seq - 1;
        cx.tx
            .checkpoints
            .push(NewCheckpoint::of(self, seq, &id, cx.now_ms));
        if self.breakpoint.as_deref() == Some(id.as_str())
            && self.status == ExecutionStatus::Running
        {
            self.breakpoint = None;
            self.emit(cx, DomainEvent::BreakpointReached { step: id });
            self.set_status(cx, ExecutionStatus::Paused);
            self.emit(cx, DomainEvent::ExecutionPaused);
        }
    }

    fn attempt_failed(&mut self, cx: &mut Ctx<'_>, step: usize, error: StepError) {
        let def = self.process.steps[step].clone();
        let attempt = self.steps[step].attempt;
        self.steps[step].last_error = Some(error.clone());
        cx.tx.dirty_steps.insert(step);
        if let Some(retry) = def.kind.call_retry() {
            if let Some((delay_ms, at_ms)) = backoff(retry, attempt, &error, cx) {
                self.set_step_status(cx, step, StepStatus::Retrying);
                self.steps[step].wake_at_ms = Some(at_ms);
                self.emit(
                    cx,
                    DomainEvent::StepRetrying {
                        step: def.id.clone(),
                        next_attempt: attempt + 1,
                        delay_ms,
                        error,
                    },
                );
                cx.tx.commands.push(Command::Wake {
                    step,
                    lane: Lane::Main,
                    attempt,
                    at_ms,
                });
                return;
            }
        }
        match def_on_error(&def.kind) {
            OnError::SkipStep => {
                self.set_step_status(cx, step, StepStatus::Skipped);
                self.steps[step].skip_reason = Some(SkipReason::OnError);
                self.emit(
                    cx,
                    DomainEvent::StepSkipped {
                        step: def.id.clone(),
                        reason: SkipReason::OnError,
                        error: Some(error),
                    },
                );
            }
            OnError::Continue => {
                self.set_step_status(cx, step, StepStatus::Failed);
                self.emit(
                    cx,
                    DomainEvent::StepFailed {
                        step: def.id.clone(),
                        attempt,
                        error,
                    },
                );
            }
            OnError::Fail | OnError::Compensate => {
                self.set_step_status(cx, step, StepStatus::Failed);
                self.emit(
                    cx,
                    DomainEvent::StepFailed {
                        step: def.id.clone(),
                        attempt,
                        error,
                    },
                );
                if self.process.stop_on_failure {
                    self.abandon_active(cx);
                }
            }
        }
    }

    /// Cancels every step in flight: their calls and wake-ups are abandoned.
    fn abandon_active(&mut self, cx: &mut Ctx<'_>) {
        for step in 0..self.steps.len() {
            if self.steps[step].status.is_active() {
                if matches!(self.process.steps[step].kind, StepKind::Subprocess(_)) {
                    let child_id = self.child_id(step);
                    cx.tx.commands.push(Command::CancelChild { child_id });
                }
                for item in &mut self.steps[step].detail.items {
                    item.cancel();
                }
                self.set_step_status(cx, step, StepStatus::Cancelled);
                cx.tx.commands.push(Command::Abandon { step });
                let attempt = self.steps[step].attempt;
                let id = self.process.steps[step].id.clone();
                self.emit(cx, DomainEvent::StepCancelled { step: id, attempt });
            }
            let undo = self.steps[step].detail.compensation.as_mut();
            if let Some(undo) = undo.and_then(|u| u.cancel().then_some(u)) {
                let attempt = undo.attempt;
                cx.tx.dirty_steps.insert(step);
                cx.tx.commands.push(Command::Abandon { step });
                let id = self.process.steps[step].id.clone();
                self.emit(cx, DomainEvent::CompensationCancelled { step: id, attempt });
            }
        }
    }

    fn finish_if_done(&mut self, cx: &mut Ctx<'_>) {
        if self.status != ExecutionStatus::Running
            || self.steps.iter().any(|s| s.status.is_active())
        {
            return;
        }
        if let Some(failed) = self.first_fatal_failure() {
            let step = self.process.steps[failed].id.clone();
            let error = self.steps[failed]
                .last_error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "step failed".to_string());
            if self.compensates(failed) {
                return self.begin_compensation(cx, Some(step), error);
            }
            self.fail(cx, Some(step), error);
            return;
        }
        assert!(
            self.steps.iter().all(|s| s.status.is_terminal()),
            "execution {}: nothing in flight, no failure, yet steps are undecided",
            self.id
        );
        let output = match &self.process.output {
            Some(template) => match expr::render(template, &self.scope()) {
                Ok(v) => v,
                Err(e) => return self.fail(cx, None, format!("output: {e}")),
            },
            None => Value::Object(
                self.process
                    .steps
                    .iter()
                    .zip(&self.steps)
                    .filter(|(_, s)| s.status == StepStatus::Completed)
                    .map(|(d, s)| (d.id.clone(), s.output.clone().unwrap_or(Value::Null)))
                    .collect(),
            ),
        };
        self.set_status(cx, ExecutionStatus::Completed);
        self.output = Some(output.clone());
        self.emit(cx, DomainEvent::ExecutionCompleted { output });
    }

    fn fail(&mut self, cx: &mut Ctx<'_>, step: Option<String>, error: String) {
        self.set_status(cx, ExecutionStatus::Failed);
        self.error = Some(error.clone());
        self.emit(cx, DomainEvent::ExecutionFailed { step, error });
    }

    /// Whether the fatal failure of `failed` compensates before failing the execution.
    fn compensates(&self, failed: usize) -> bool {
        def_on_error(&self.process.steps[failed].kind) == OnError::Compensate
            || self.process.on_failure == FailurePolicy::Compensate
    }

    /// Freezes the compensation order (completed steps with a compensating action, latest
    /// completion first) and starts undoing them. Only completed steps are compensated: a step
    /// cancelled in flight has an unknown effect (use `stop_on_failure: false` to let running
    /// siblings finish, and so be compensated too).
    fn begin_compensation(&mut self, cx: &mut Ctx<'_>, cause_step: Option<String>, cause: String) {
        assert!(
            self.compensation.is_none(),
            "execution {}: compensation starts at most once",
            self.id
        );
        let mut done: Vec<(u64, usize)> = (0..self.steps.len())
            .filter(|&i| {
                self.steps[i].status == StepStatus::Completed
                    && matches!(&self.process.steps[i].kind,
                        StepKind::AgentTask(t) if t.compensate.is_some())
            })
            .map(|i| {
                let order = self.steps[i].detail.completed_order;
                (order.expect("a completed step has a completion order"), i)
            })
            .collect();
        done.sort_unstable_by(|a, b| b.cmp(a));
        if crate::planted::planted(Bug::CompensateInCompletionOrder) {
            // Planted bug (test-only, see `planted`): the oldest completion is undone first.
            done.reverse();
        }
        let order: Vec<String> = done
            .iter()
            .map(|&(_, i)| self.process.steps[i].id.clone())
            .collect();
        let event = DomainEvent::CompensationStarted {
            cause_step: cause_step.clone(),
            steps: order.clone(),
        };
        self.emit(cx, event);
        self.compensation = Some(CompensationRun {
            cause_step,
            cause,
            order,
        });
        self.advance_compensation(cx);
    }

    /// Starts the next compensating action in order, or ends the execution once every step is
    /// compensated or one compensation failed for good. Starts nothing while paused.
    fn advance_compensation(&mut self, cx: &mut Ctx<'_>) {
        if self.status != ExecutionStatus::Running {
            return;
        }
        let run = self
            .compensation
            .clone()
            .expect("only called while compensating");
        for id in &run.order {
            let step = self
                .process
                .position(id)
                .expect("the compensation order names steps of the process");
            if self.steps[step].detail.compensation.is_none() {
                self.start_compensation_attempt(cx, step, 1);
            }
            let undo = self.steps[step]
                .detail
                .compensation
                .as_ref()
                .expect("started above");
            match undo.status {
                CallStatus::Completed => continue,
                CallStatus::Running | CallStatus::Retrying => return,
                CallStatus::Failed | CallStatus::Skipped | CallStatus::Cancelled => {
                    let why = undo
                        .last_error
                        .as_ref()
                        .map_or_else(|| "abandoned".to_string(), |e| e.to_string());
                    let left = self.uncompensated(&run.order).join(", ");
                    let error = format!(
                        "{}; compensation of '{id}' failed: {why} (not compensated: {left})",
                        run.cause
                    );
                    return self.fail(cx, run.cause_step.clone(), error);
                }
            }
        }
        let steps = run.order.clone();
        let error = if steps.is_empty() {
            format!("{} (nothing to compensate)", run.cause)
        } else {
            format!("{} (compensated: {})", run.cause, steps.join(", "))
        };
        self.emit(cx, DomainEvent::CompensationCompleted { steps });
        self.fail(cx, run.cause_step, error);
    }

    fn uncompensated<'a>(&self, order: &'a [String]) -> Vec<&'a str> {
        order
            .iter()
            .filter(|id| {
                let step = self.process.position(id).expect("order names steps");
                self.steps[step].status != StepStatus::Compensated
            })
            .map(String::as_str)
            .collect()
    }

    /// Dispatches attempt `attempt` of `step`'s compensating action. Its input is rendered at
    /// the first attempt and kept, like a step's: one idempotency key, one input.
    fn start_compensation_attempt(&mut self, cx: &mut Ctx<'_>, step: usize, attempt: u32) {
        let id = self.process.steps[step].id.clone();
        if attempt == 1 {
            let rendered = match &self.compensate_def(step).input {
                None => Ok(json!({})),
                Some(template) => expr::render(template, &self.scope())
                    .map_err(|e| StepError::new(ErrorKind::Expression, e.to_string())),
            };
            let failed = rendered.as_ref().err().cloned();
            let undo = CallState::first(rendered.unwrap_or(Value::Null));
            self.steps[step].detail.compensation = Some(undo);
            cx.tx.dirty_steps.insert(step);
            if let Some(error) = failed {
                // A template that cannot render never will: no call, no retry.
                return self.compensation_gave_up(cx, step, error);
            }
        } else {
            self.steps[step]
                .detail
                .compensation
                .as_mut()
                .expect("a retry follows a first attempt")
                .rerun(attempt);
            cx.tx.dirty_steps.insert(step);
        }
        self.emit(
            cx,
            DomainEvent::CompensationStepStarted { step: id, attempt },
        );
        cx.tx.commands.push(self.compensation_call(step));
    }

    fn compensate_def(&self, step: usize) -> &crate::definition::Compensate {
        match &self.process.steps[step].kind {
            StepKind::AgentTask(task) => task
                .compensate
                .as_ref()
                .expect("only steps with a compensating action are compensated"),
            _ => unreachable!("only agent tasks have compensating actions"),
        }
    }

    fn compensation_call(&self, step: usize) -> Command {
        let id = &self.process.steps[step].id;
        let def = self.compensate_def(step);
        let undo = self.steps[step]
            .detail
            .compensation
            .as_ref()
            .expect("a compensation call has its state");
        let step_id = Lane::Compensation.wire_id(id);
        Command::CallAgent(AgentCall {
            step,
            lane: Lane::Compensation,
            idempotency_key: format!("{}:{step_id}", self.id),
            step_id,
            agent: def.agent.clone(),
            attempt: undo.attempt,
            input: undo.input.clone(),
            timeout_ms: def.timeout.as_millis(),
        })
    }

    /// Whether `step`'s compensating action is waiting, as `status`, on exactly `attempt`.
    fn is_compensating(&self, step: usize, attempt: u32, status: CallStatus) -> bool {
        matches!(
            self.status,
            ExecutionStatus::Running | ExecutionStatus::Paused
        ) && self.compensation.is_some()
            && self
                .steps
                .get(step)
                .and_then(|s| s.detail.compensation.as_ref())
                .is_some_and(|u| u.status == status && u.attempt == attempt)
    }

    fn compensation_completed(&mut self, cx: &mut Ctx<'_>, step: usize, output: Value) {
        let undo = self.steps[step]
            .detail
            .compensation
            .as_mut()
            .expect("checked by is_compensating");
        undo.complete(output.clone());
        let attempt = undo.attempt;
        self.set_step_status(cx, step, StepStatus::Compensated);
        let id = self.process.steps[step].id.clone();
        self.emit(
            cx,
            DomainEvent::StepCompensated {
                step: id,
                attempt,
                output,
            },
        );
    }

    fn compensation_attempt_failed(&mut self, cx: &mut Ctx<'_>, step: usize, error: StepError) {
        let mut policy = self.compensate_def(step).retry.clone();
        if crate::planted::planted(Bug::CompensationRetriedPastPolicy) {
            // Planted bug (test-only, see `planted`): an off-by-one on the retry budget.
            policy.max_attempts += 1;
        }
        let undo = self.steps[step]
            .detail
            .compensation
            .as_mut()
            .expect("checked by is_compensating");
        let attempt = undo.attempt;
        let Some((delay_ms, at_ms)) = backoff(&policy, attempt, &error, cx) else {
            return self.compensation_gave_up(cx, step, error);
        };
        undo.retry_at(at_ms, error.clone());
        cx.tx.dirty_steps.insert(step);
        let id = self.process.steps[step].id.clone();
        self.emit(
            cx,
            DomainEvent::CompensationRetrying {
                step: id,
                next_attempt: attempt + 1,
                delay_ms,
                error,
            },
        );
        cx.tx.commands.push(Command::Wake {
            step,
            lane: Lane::Compensation,
            attempt,
            at_ms,
        });
    }

    /// The compensating action failed for good; [`Self::advance_compensation`] then fails the
    /// execution, naming what was left uncompensated. It is never tried again.
    fn compensation_gave_up(&mut self, cx: &mut Ctx<'_>, step: usize, error: StepError) {
        let undo = self.steps[step]
            .detail
            .compensation
            .as_mut()
            .expect("a compensation that fails has started");
        undo.give_up(CallStatus::Failed, error.clone());
        let attempt = undo.attempt;
        cx.tx.dirty_steps.insert(step);
        let id = self.process.steps[step].id.clone();
        self.emit(
            cx,
            DomainEvent::CompensationFailed {
                step: id,
                attempt,
                error,
            },
        );
    }
}

impl Execution {
    fn foreach_def(&self, step: usize) -> &Foreach {
        match &self.process.steps[step].kind {
            StepKind::Foreach(each) => each,
            _ => unreachable!("only foreach steps have items"),
        }
    }

    /// The list a running `foreach` step iterates, fixed when it started.
    fn item_list(&self, step: usize) -> &[Value] {
        match &self.steps[step].input {
            Some(Value::Array(list)) => list,
            _ => unreachable!("a running foreach step has its list"),
        }
    }

    /// Whether item `index` of `step` is waiting, as `status`, on exactly `attempt`.
    fn is_item(&self, step: usize, index: u32, attempt: u32, status: CallStatus) -> bool {
        matches!(
            self.status,
            ExecutionStatus::Running | ExecutionStatus::Paused
        ) && self
            .steps
            .get(step)
            .filter(|s| s.status == StepStatus::Running)
            .and_then(|s| s.detail.items.get(index as usize))
            .is_some_and(|i| i.status == status && i.attempt == attempt)
    }

    /// Starts items in order while fewer than `max_concurrency` are in flight (not while
    /// paused, not after a break), and completes the loop once nothing is left to run.
    fn pump_items(&mut self, cx: &mut Ctx<'_>, step: usize) {
        let max_concurrency = self.foreach_def(step).max_concurrency as usize;
        while self.steps[step].status == StepStatus::Running {
            let total = self.item_list(step).len();
            let st = &self.steps[step];
            let active = st
                .detail
                .items
                .iter()
                .filter(|i| i.status.is_active())
                .count();
            let next = st.detail.items.len();
            let open = st.detail.broken_at.is_none() && next < total;
            if open && active < max_concurrency && self.status == ExecutionStatus::Running {
                self.start_item_attempt(cx, step, next as u32, 1);
                continue;
            }
            if !open && active == 0 {
                self.finish_loop(cx, step);
            }
            return;
        }
    }

    fn start_item_attempt(&mut self, cx: &mut Ctx<'_>, step: usize, index: u32, attempt: u32) {
        let id = self.process.steps[step].id.clone();
        if attempt == 1 {
            assert_eq!(
                self.steps[step].detail.items.len(),
                index as usize,
                "items start in order"
            );
            let item = self.item_list(step)[index as usize].clone();
            let mut scope = self.scope();
            scope.locals = vec![("item", item.clone()), ("index", json!(index))];
            let rendered = match &self.foreach_def(step).input {
                None => Ok(json!({"item": item, "index": index})),
                Some(template) => expr::render(template, &scope)
                    .map_err(|e| StepError::new(ErrorKind::Expression, e.to_string())),
            };
            let failed = rendered.as_ref().err().cloned();
            let item = CallState::first(rendered.unwrap_or(Value::Null));
            self.steps[step].detail.items.push(item);
            cx.tx.dirty_steps.insert(step);
            if let Some(error) = failed {
                return self.item_gave_up(cx, step, index, error);
            }
        } else {
            self.steps[step].detail.items[index as usize].rerun(attempt);
            cx.tx.dirty_steps.insert(step);
        }
        self.emit(
            cx,
            DomainEvent::ItemStarted {
                step: id,
                index,
                attempt,
            },
        );
        cx.tx.commands.push(self.item_call(step, index));
    }

    fn item_call(&self, step: usize, index: u32) -> Command {
        let each = self.foreach_def(step);
        let item = &self.steps[step].detail.items[index as usize];
        let lane = Lane::Item(index);
        let step_id = lane.wire_id(&self.process.steps[step].id);
        Command::CallAgent(AgentCall {
            step,
            lane,
            idempotency_key: format!("{}:{step_id}", self.id),
            step_id,
            agent: each.agent.clone(),
            attempt: item.attempt,
            input: item.input.clone(),
            timeout_ms: each.timeout.as_millis(),
        })
    }

    fn item_completed(&mut self, cx: &mut Ctx<'_>, step: usize, index: u32, output: Value) {
        let id = self.process.steps[step].id.clone();
        let item = &mut self.steps[step].detail.items[index as usize];
        item.complete(output.clone());
        let attempt = item.attempt;
        cx.tx.dirty_steps.insert(step);
        self.emit(
            cx,
            DomainEvent::ItemCompleted {
                step: id.clone(),
                index,
                attempt,
                output: output.clone(),
            },
        );
        let Some(when) = self.foreach_def(step).break_when.clone() else {
            return;
        };
        if self.steps[step].detail.broken_at.is_some() {
            return;
        }
        let mut scope = self.scope();
        let item = self.item_list(step)[index as usize].clone();
        scope.locals = vec![("item", item), ("index", json!(index)), ("output", output)];
        match expr::condition(&when, &scope) {
            Ok(false) => {}
            Ok(true) => {
                self.steps[step].detail.broken_at = Some(index);
                self.emit(cx, DomainEvent::LoopBroken { step: id, index });
            }
            Err(e) => {
                let error = StepError::new(ErrorKind::Expression, format!("break_when: {e}"));
                self.fail_loop(cx, step, error);
            }
        }
    }

    fn item_attempt_failed(&mut self, cx: &mut Ctx<'_>, step: usize, index: u32, error: StepError) {
        let policy = self.foreach_def(step).retry.clone();
        let attempt = self.steps[step].detail.items[index as usize].attempt;
        let Some((delay_ms, at_ms)) = backoff(&policy, attempt, &error, cx) else {
            return self.item_gave_up(cx, step, index, error);
        };
        self.steps[step].detail.items[index as usize].retry_at(at_ms, error.clone());
        cx.tx.dirty_steps.insert(step);
        let id = self.process.steps[step].id.clone();
        self.emit(
            cx,
            DomainEvent::ItemRetrying {
                step: id,
                index,
                next_attempt: attempt + 1,
                delay_ms,
                error,
            },
        );
        cx.tx.commands.push(Command::Wake {
            step,
            lane: Lane::Item(index),
            attempt,
            at_ms,
        });
    }

    /// An item failed for good: kept (continue), left out (skip), or the loop fails.
    fn item_gave_up(&mut self, cx: &mut Ctx<'_>, step: usize, index: u32, error: StepError) {
        let policy = self.foreach_def(step).on_item_error;
        let status = match policy {
            ItemErrorPolicy::Skip => CallStatus::Skipped,
            ItemErrorPolicy::Continue | ItemErrorPolicy::Fail => CallStatus::Failed,
        };
        let item = &mut self.steps[step].detail.items[index as usize];
        item.give_up(status, error.clone());
        let attempt = item.attempt;
        cx.tx.dirty_steps.insert(step);
        let id = self.process.steps[step].id.clone();
        self.emit(
            cx,
            DomainEvent::ItemFailed {
                step: id,
                index,
                attempt,
                error: error.clone(),
            },
        );
        if policy == ItemErrorPolicy::Fail {
            let mut error = error;
            error.message = format!("item {index}: {}", error.message);
            self.fail_loop(cx, step, error);
        }
    }

    /// The loop step fails: items in flight are abandoned, then the step's `on_error` applies.
    fn fail_loop(&mut self, cx: &mut Ctx<'_>, step: usize, error: StepError) {
        let mut abandoned = false;
        for item in &mut self.steps[step].detail.items {
            abandoned |= item.cancel();
        }
        if abandoned {
            cx.tx.commands.push(Command::Abandon { step });
        }
        self.attempt_failed(cx, step, error);
    }

    /// Every item is done (or the loop broke and the items in flight finished): the step
    /// completes with the outputs in item order.
    fn finish_loop(&mut self, cx: &mut Ctx<'_>, step: usize) {
        let st = &self.steps[step];
        let mut outputs = Vec::with_capacity(st.detail.items.len());
        let mut skipped = Vec::new();
        let mut errors = Map::new();
        for (index, item) in st.detail.items.iter().enumerate() {
            match item.status {
                CallStatus::Completed => outputs.push(item.output.clone().unwrap_or(Value::Null)),
                CallStatus::Skipped => skipped.push(index),
                CallStatus::Failed => {
                    outputs.push(Value::Null);
                    let error = serde_json::to_value(&item.last_error).expect("serializes");
                    errors.insert(index.to_string(), error);
                }
                other => unreachable!("a finished loop has no {other:?} item"),
            }
        }
        let output = json!({
            "count": outputs.len(),
            "items": outputs,
            "skipped": skipped,
            "errors": errors,
            "broken_at": st.detail.broken_at,
        });
        self.complete_step(cx, step, output);
    }
}

/// After attempt `attempt` failed with `error`: the delay before the next one and when it is
/// due, or `None` if the call failed for good under `policy`. Draws from the RNG only when it
/// retries, so the stream is the same for a step, an item and a compensation.
fn backoff(
    policy: &RetryPolicy,
    attempt: u32,
    error: &StepError,
    cx: &mut Ctx<'_>,
) -> Option<(u64, u64)> {
    if !(retryable(policy, error) && attempt < policy.max_attempts) {
        return None;
    }
    let delay_ms = retry_delay_ms(policy, attempt, cx.rng);
    Some((delay_ms, cx.now_ms.saturating_add(delay_ms)))
}

/// Whether an attempt that failed with `error` may be tried again under `policy` (attempts
/// left aside): transient kinds, unless the agent's error type is listed non-retryable.
fn retryable(policy: &RetryPolicy, error: &StepError) -> bool {
    error.kind.is_transient()
        && !error
            .error_type
            .as_ref()
            .is_some_and(|t| policy.non_retryable.contains(t))
}

impl Execution {
    /// The id of `step`'s child execution: stable, so a re-issued start finds the child.
    pub fn child_id(&self, step: usize) -> String {
        format!("{}.{}", self.id, self.process.steps[step].id)
    }

    fn child_command(&self, step: usize) -> Command {
        let StepKind::Subprocess(sub) = &self.process.steps[step].kind else {
            unreachable!("only subprocess steps have children")
        };
        Command::StartChild {
            step,
            tenant: self.tenant.clone(),
            child_id: self.child_id(step),
            process: sub.process.clone(),
            version: sub.version,
            input: self.steps[step]
                .input
                .clone()
                .expect("a running subprocess step has its input"),
        }
    }

    /// Completes the waiting `step` with the oldest unconsumed signal of its name, if any.
    fn consume_signal(&mut self, cx: &mut Ctx<'_>, step: usize) -> bool {
        let StepKind::WaitSignal(wait) = &self.process.steps[step].kind else {
            unreachable!("only wait_signal steps consume signals")
        };
        let name = wait.signal.clone();
        let Some(signal) = self
            .signals
            .iter_mut()
            .find(|s| s.consumed_by.is_none() && s.name == name)
        else {
            return false;
        };
        let id = self.process.steps[step].id.clone();
        signal.consumed_by = Some(id);
        let output = json!({
            "signal": name,
            "signal_id": signal.id,
            "payload": signal.payload,
            "timed_out": false,
        });
        if self.steps[step].wake_at_ms.is_some() {
            // Its timeout will not be needed.
            cx.tx.commands.push(Command::Abandon { step });
        }
        self.complete_step(cx, step, output);
        true
    }

    fn signal_timed_out(&mut self, cx: &mut Ctx<'_>, step: usize) {
        let StepKind::WaitSignal(wait) = &self.process.steps[step].kind else {
            unreachable!("only wait_signal steps time out waiting for a signal")
        };
        match wait.timeout_output.clone() {
            Some(payload) => {
                let output = json!({
                    "signal": wait.signal,
                    "signal_id": null,
                    "payload": payload,
                    "timed_out": true,
                });
                self.complete_step(cx, step, output);
            }
            None => {
                let waited = wait.timeout.expect("only a step with a timeout times out");
                let message = format!("no signal '{}' within {waited}", wait.signal);
                self.attempt_failed(cx, step, StepError::new(ErrorKind::Timeout, message));
            }
        }
    }
}

fn def_on_error(kind: &StepKind) -> OnError {
    match kind {
        StepKind::AgentTask(task) => task.on_error,
        StepKind::Foreach(each) => each.on_error,
        StepKind::Subprocess(sub) => sub.on_error,
        StepKind::Http(http) => http.on_error,
        StepKind::Email(email) => email.on_error,
        StepKind::Transform(transform) => transform.on_error,
        StepKind::Gateway(_) | StepKind::Timer(_) | StepKind::WaitSignal(_) => OnError::Fail,
    }
}
