//! The execution core: a pure state machine. No async, no I/O, no clock reads.
//!
//! [`Execution::apply`] takes one [`Input`] (with the current time and a random source passed
//! in), mutates the execution, and returns a [`Transition`]: the domain events it caused and
//! the [`Command`]s the driver must perform *after* persisting the new state. Because the core
//! cannot do I/O it cannot fail on I/O; because time and randomness are inputs, the same inputs
//! always give the same transitions.

mod checkpoint;
mod machine;
mod retry;
mod state;

pub use checkpoint::{fork, Checkpoint, ForkError, ForkOrigin, NewCheckpoint};
pub use machine::{
    AgentCall, Command, EmailCall, Execution, HttpCall, Input, Lane, Progress, RecoveryAction,
    Transition, DEFAULT_TENANT, MAX_SIGNALS_PER_EXECUTION,
};
pub use retry::retry_delay_ms;
pub use state::{
    CallState, CallStatus, CompensationRun, ErrorKind, ExecutionStatus, ReceivedSignal, SkipReason,
    StepDetail, StepError, StepState, StepStatus,
};

#[cfg(test)]
mod tests;
