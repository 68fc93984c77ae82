//! Domain events: the execution's history and audit log. Each is numbered per execution
//! (`seq`, gap-free from 1), stamped with the Clock's time, and committed in the same
//! transaction as the state change it describes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::{RecoveryAction, SkipReason, StepError};

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DomainEvent {
    ExecutionStarted {
        process: String,
        version: u32,
    },
    /// This execution was reset from another's checkpoint and starts from that state.
    ExecutionForked {
        from: String,
        checkpoint_seq: u64,
    },
    StepStarted {
        step: String,
        attempt: u32,
        /// A timer step's deadline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wake_at_ms: Option<u64>,
    },
    StepCompleted {
        step: String,
        attempt: u32,
        output: Value,
    },
    StepFailed {
        step: String,
        attempt: u32,
        error: StepError,
    },
    StepRetrying {
        step: String,
        /// The attempt that will run after the delay.
        next_attempt: u32,
        delay_ms: u64,
        error: StepError,
    },
    StepSkipped {
        step: String,
        reason: SkipReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
    },
    StepCancelled {
        step: String,
        attempt: u32,
    },
    ExecutionCompleted {
        output: Value,
    },
    ExecutionFailed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        error: String,
    },
    ExecutionCancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ExecutionPaused,
    ExecutionResumed,
    /// The step named as the breakpoint completed; the execution pauses next.
    BreakpointReached {
        step: String,
    },
    /// The engine restarted and picked this execution up.
    ExecutionRecovered {
        action: RecoveryAction,
    },
    /// A fatal failure started a compensation: `steps` are undone one by one, in this order
    /// (reverse completion order).
    CompensationStarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause_step: Option<String>,
        steps: Vec<String>,
    },
    /// An attempt of a step's compensating action was dispatched.
    CompensationStepStarted {
        step: String,
        attempt: u32,
    },
    /// A step's compensating action succeeded: the step is now `compensated`.
    StepCompensated {
        step: String,
        attempt: u32,
        output: Value,
    },
    CompensationRetrying {
        step: String,
        next_attempt: u32,
        delay_ms: u64,
        error: StepError,
    },
    /// A step's compensating action failed for good; the compensation stops there.
    CompensationFailed {
        step: String,
        attempt: u32,
        error: StepError,
    },
    /// A compensating action in flight was abandoned (the execution was cancelled).
    CompensationCancelled {
        step: String,
        attempt: u32,
    },
    /// Every step in the compensation's order was compensated.
    CompensationCompleted {
        steps: Vec<String>,
    },
    /// An attempt of a `foreach` item's call was dispatched.
    ItemStarted {
        step: String,
        index: u32,
        attempt: u32,
    },
    ItemCompleted {
        step: String,
        index: u32,
        attempt: u32,
        output: Value,
    },
    ItemRetrying {
        step: String,
        index: u32,
        next_attempt: u32,
        delay_ms: u64,
        error: StepError,
    },
    /// The item failed for good; `on_item_error` decides what the loop does.
    ItemFailed {
        step: String,
        index: u32,
        attempt: u32,
        error: StepError,
    },
    /// The break condition held after this item: no further item starts.
    LoopBroken {
        step: String,
        index: u32,
    },
    /// Who made the change that the next events of this transition record, and what they
    /// asked for (`start`, `pause`, `resume`, `cancel`, `signal`): the audit history.
    Audit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// An agent reported progress while working on a call (a streamed progress line):
    /// `step` is the call's wire id (`charge`, `charge#3`, `charge#compensate`).
    AgentProgress {
        step: String,
        attempt: u32,
        kind: String,
        #[serde(default)]
        data: Value,
    },
    /// A signal arrived and is kept until a `wait_signal` step consumes it.
    SignalReceived {
        signal_id: String,
        name: String,
        payload: Value,
    },
}

impl DomainEvent {
    /// The event's type name, as stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainEvent::ExecutionStarted { .. } => "ExecutionStarted",
            DomainEvent::ExecutionForked { .. } => "ExecutionForked",
            DomainEvent::StepStarted { .. } => "StepStarted",
            DomainEvent::StepCompleted { .. } => "StepCompleted",
            DomainEvent::StepFailed { .. } => "StepFailed",
            DomainEvent::StepRetrying { .. } => "StepRetrying",
            DomainEvent::StepSkipped { .. } => "StepSkipped",
            DomainEvent::StepCancelled { .. } => "StepCancelled",
            DomainEvent::ExecutionCompleted { .. } => "ExecutionCompleted",
            DomainEvent::ExecutionFailed { .. } => "ExecutionFailed",
            DomainEvent::ExecutionCancelled { .. } => "ExecutionCancelled",
            DomainEvent::ExecutionPaused => "ExecutionPaused",
            DomainEvent::BreakpointReached { .. } => "BreakpointReached",
            DomainEvent::ExecutionResumed => "ExecutionResumed",
            DomainEvent::ExecutionRecovered { .. } => "ExecutionRecovered",
            DomainEvent::CompensationStarted { .. } => "CompensationStarted",
            DomainEvent::CompensationStepStarted { .. } => "CompensationStepStarted",
            DomainEvent::StepCompensated { .. } => "StepCompensated",
            DomainEvent::CompensationRetrying { .. } => "CompensationRetrying",
            DomainEvent::CompensationFailed { .. } => "CompensationFailed",
            DomainEvent::CompensationCancelled { .. } => "CompensationCancelled",
            DomainEvent::CompensationCompleted { .. } => "CompensationCompleted",
            DomainEvent::ItemStarted { .. } => "ItemStarted",
            DomainEvent::ItemCompleted { .. } => "ItemCompleted",
            DomainEvent::ItemRetrying { .. } => "ItemRetrying",
            DomainEvent::ItemFailed { .. } => "ItemFailed",
            DomainEvent::LoopBroken { .. } => "LoopBroken",
            DomainEvent::SignalReceived { .. } => "SignalReceived",
            DomainEvent::AgentProgress { .. } => "AgentProgress",
            DomainEvent::Audit { .. } => "Audit",
        }
    }

    /// The execution's last event: it completed, failed or was cancelled.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            DomainEvent::ExecutionCompleted { .. }
                | DomainEvent::ExecutionFailed { .. }
                | DomainEvent::ExecutionCancelled { .. }
        )
    }

    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            DomainEvent::StepStarted { step, .. }
            | DomainEvent::StepCompleted { step, .. }
            | DomainEvent::StepFailed { step, .. }
            | DomainEvent::StepRetrying { step, .. }
            | DomainEvent::StepSkipped { step, .. }
            | DomainEvent::StepCancelled { step, .. }
            | DomainEvent::CompensationStepStarted { step, .. }
            | DomainEvent::StepCompensated { step, .. }
            | DomainEvent::CompensationRetrying { step, .. }
            | DomainEvent::CompensationFailed { step, .. }
            | DomainEvent::CompensationCancelled { step, .. }
            | DomainEvent::ItemStarted { step, .. }
            | DomainEvent::ItemCompleted { step, .. }
            | DomainEvent::ItemRetrying { step, .. }
            | DomainEvent::ItemFailed { step, .. }
            | DomainEvent::LoopBroken { step, .. }
            | DomainEvent::AgentProgress { step, .. }
            | DomainEvent::BreakpointReached { step } => Some(step),
            _ => None,
        }
    }
}

/// An event as stored and delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub execution_id: String,
    /// 1, 2, 3, ... per execution, without gaps.
    pub seq: u64,
    pub at_ms: u64,
    pub event: DomainEvent,
}

/// Engine-level events that belong to no single execution (they are delivered on the bus and
/// logged, not stored in an execution's history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SystemEvent {
    RecoveryStarted {
        at_ms: u64,
        /// Non-terminal executions found in storage.
        active: usize,
        dry_run: bool,
    },
    ExecutionRecoveryFailed {
        at_ms: u64,
        execution_id: String,
        error: String,
    },
    RecoveryCompleted {
        at_ms: u64,
        resumed: usize,
        retried: usize,
        failed: usize,
        skipped: usize,
        errors: usize,
    },
}
