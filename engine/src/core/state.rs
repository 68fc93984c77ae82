//! Execution and step state, and the transitions each status may make.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle of an execution: pending → running → (paused ↔ running) → completed | failed |
/// cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Pending,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

/// Lifecycle of a step. `Retrying` waits for its backoff; `Cancelled` was abandoned while
/// running or waiting (cancel, or a sibling's failure with `stop_on_failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Retrying,
    Completed,
    Failed,
    Skipped,
    Cancelled,
    Compensated,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)*
                    other => Err(format!("unknown {} {other:?}", stringify!($ty))),
                }
            }
        }
    };
}

string_enum!(ExecutionStatus {
    Pending => "pending", Running => "running", Paused => "paused",
    Completed => "completed", Failed => "failed", Cancelled => "cancelled",
});

string_enum!(StepStatus {
    Pending => "pending", Running => "running", Retrying => "retrying",
    Completed => "completed", Failed => "failed", Skipped => "skipped",
    Cancelled => "cancelled", Compensated => "compensated",
});

impl ExecutionStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Completed | ExecutionStatus::Failed | ExecutionStatus::Cancelled
        )
    }

    /// The state machine's edges; the core asserts every change against them.
    pub fn can_become(self, next: ExecutionStatus) -> bool {
        use ExecutionStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Cancelled)
                | (Pending, Failed)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Paused, Cancelled)
                | (Paused, Failed)
        )
    }
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
                | StepStatus::Compensated
        )
    }

    /// In flight: an agent call, a timer or a retry backoff is outstanding.
    pub fn is_active(self) -> bool {
        matches!(self, StepStatus::Running | StepStatus::Retrying)
    }

    pub fn can_become(self, next: StepStatus) -> bool {
        use StepStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Skipped)
                | (Pending, Failed)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Retrying)
                | (Running, Skipped)
                | (Running, Cancelled)
                | (Retrying, Running)
                | (Retrying, Cancelled)
                | (Completed, Compensated)
        )
    }
}

/// Why a step was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A gateway took another route.
    RouteNotTaken,
    /// Every dependency was skipped, so this branch is dead.
    UpstreamSkipped,
    /// The step failed and its policy is `on_error: skip_step`.
    OnError,
}

string_enum!(SkipReason {
    RouteNotTaken => "route_not_taken", UpstreamSkipped => "upstream_skipped", OnError => "on_error",
});

/// The class of a step error; it decides retryability together with the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The agent answered 4xx with an error body.
    Agent,
    /// The agent answered 5xx.
    Server,
    /// No response within the step's timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// A 2xx response that is not a JSON value, or too large.
    InvalidResponse,
    /// An input template or condition failed to evaluate.
    Expression,
    /// A gateway matched no route and has no default.
    NoRoute,
    /// A documented limit was exceeded (a `foreach` list too long).
    Limit,
    /// A sub-process's child execution failed or was cancelled, or could not be created.
    Child,
    /// An `http` step's request could not be made as written (a bad URL, an unknown secret),
    /// or the service refused it with a status no retry changes (4xx other than 408 and 429).
    Request,
}

impl ErrorKind {
    /// Transient kinds may succeed on another attempt; the others never will.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Agent | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Connection
        )
    }
}

/// A step attempt's error, as persisted and put in events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub kind: ErrorKind,
    /// The agent's `error.type` for [`ErrorKind::Agent`].
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    pub message: String,
    /// HTTP status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl StepError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StepError {
        StepError {
            kind,
            error_type: None,
            message: message.into(),
            status: None,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = serde_json::to_value(self.kind).expect("enum serializes");
        write!(f, "{}", kind.as_str().unwrap_or("error"))?;
        if let Some(t) = &self.error_type {
            write!(f, " ({t})")?;
        }
        if let Some(s) = self.status {
            write!(f, " [HTTP {s}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One step's durable state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    /// The current (or last) attempt, 1-based; 0 before the first start.
    pub attempt: u32,
    /// An agent task's rendered input, fixed at its first attempt and sent by every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<SkipReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// When a timer step's deadline or a retry's backoff ends. Stored so that a restart can
    /// re-arm it at the original time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at_ms: Option<u64>,
    /// What only some steps need; stored as one JSON column.
    #[serde(default, skip_serializing_if = "StepDetail::is_empty")]
    pub detail: StepDetail,
}

/// The parts of a step's state that most steps never use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepDetail {
    /// Completion order: 1 + the largest order among the execution's steps when this one
    /// completed. Not the event `seq`, so that a fork, whose history starts again at 1, keeps
    /// the order of the steps it inherited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_order: Option<u64>,
    /// This step's compensating action, once the execution started compensating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CallState>,
    /// A `foreach` step's items that have started, in item order (the rest are pending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<CallState>,
    /// A `foreach` step whose break condition held at this item: no further item starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u32>,
}

impl StepDetail {
    pub fn is_empty(&self) -> bool {
        *self == StepDetail::default()
    }
}

/// Where one call that is not a step's own stands: a `foreach` item's, or a step's
/// compensating action's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Running,
    Retrying,
    Completed,
    /// Failed for good: a compensation stops there and the execution fails; an item is kept
    /// failed (`on_item_error: continue`) or fails its loop.
    Failed,
    /// An item that failed for good under `on_item_error: skip` (never a compensation).
    Skipped,
    /// Abandoned: its loop failed, or the execution was cancelled (or given up by recovery).
    Cancelled,
}

impl CallStatus {
    pub fn is_active(self) -> bool {
        matches!(self, CallStatus::Running | CallStatus::Retrying)
    }
}

/// One such call: its own attempts, rendered input and result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallState {
    pub status: CallStatus,
    pub attempt: u32,
    /// Rendered once, at the first attempt, like a step's input, and sent by every attempt.
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at_ms: Option<u64>,
}

impl CallState {
    /// Its first attempt, running with `input`.
    pub fn first(input: Value) -> CallState {
        CallState {
            status: CallStatus::Running,
            attempt: 1,
            input,
            output: None,
            last_error: None,
            wake_at_ms: None,
        }
    }

    /// Waits until `at_ms` after `error`, for its next attempt.
    pub fn retry_at(&mut self, at_ms: u64, error: StepError) {
        assert_eq!(
            self.status,
            CallStatus::Running,
            "only a running call retries"
        );
        self.status = CallStatus::Retrying;
        self.wake_at_ms = Some(at_ms);
        self.last_error = Some(error);
    }

    /// Runs attempt `attempt` after its backoff.
    pub fn rerun(&mut self, attempt: u32) {
        assert_eq!(
            self.status,
            CallStatus::Retrying,
            "only a retrying call runs again"
        );
        self.status = CallStatus::Running;
        self.attempt = attempt;
        self.wake_at_ms = None;
    }

    /// Ends it with `output`.
    pub fn complete(&mut self, output: Value) {
        assert_eq!(
            self.status,
            CallStatus::Running,
            "only a running call completes"
        );
        self.status = CallStatus::Completed;
        self.output = Some(output);
    }

    /// Ends it as `status` (failed, skipped) with `error`.
    pub fn give_up(&mut self, status: CallStatus, error: StepError) {
        self.status = status;
        self.last_error = Some(error);
        self.wake_at_ms = None;
    }

    /// Abandons it if it is in flight; whether it was.
    pub fn cancel(&mut self) -> bool {
        let active = self.status.is_active();
        if active {
            self.status = CallStatus::Cancelled;
            self.wake_at_ms = None;
        }
        active
    }
}

/// A signal sent to an execution, kept in arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedSignal {
    /// The sender's id for it: a second signal with the same id is the same signal.
    pub id: String,
    pub name: String,
    pub payload: Value,
    pub received_at_ms: u64,
    /// The `wait_signal` step that consumed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_by: Option<String>,
}

/// An execution's compensation: why it began and which steps it undoes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationRun {
    /// The step whose failure started it, if a step did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_step: Option<String>,
    /// The failure, as the execution's error would have said without compensation.
    pub cause: String,
    /// Step ids in reverse completion order; each is compensated after the one before it
    /// completed its compensation.
    pub order: Vec<String>,
}

impl StepState {
    pub fn new() -> StepState {
        StepState {
            status: StepStatus::Pending,
            attempt: 0,
            input: None,
            output: None,
            last_error: None,
            skip_reason: None,
            started_at_ms: None,
            finished_at_ms: None,
            wake_at_ms: None,
            detail: StepDetail::default(),
        }
    }

    /// Retries so far: every attempt after the first.
    pub fn retry_count(&self) -> u32 {
        self.attempt.saturating_sub(1)
    }
}

impl Default for StepState {
    fn default() -> Self {
        StepState::new()
    }
}
