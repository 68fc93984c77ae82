//! Checkpoints and forks. A checkpoint is taken each time a step completes, in the same
//! transition: the set of completed steps with their outputs, and every step's state. A fork
//! (a *reset*, in Temporal's words) starts a new execution from a checkpoint, optionally with
//! another input or other outputs, and runs forward from there.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::machine::Execution;
use super::state::{StepState, StepStatus};
use crate::definition::ProcessDef;

/// The durable state of an execution right after one step completed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub execution_id: String,
    /// The `seq` of the `StepCompleted` event this checkpoint follows.
    pub seq: u64,
    /// The step whose completion made it.
    pub step_id: String,
    pub at_ms: u64,
    /// Every step completed so far, with its output, in definition order.
    pub completed: Map<String, Value>,
    /// Every step's state, indexed like the process's steps.
    pub steps: Vec<StepState>,
    /// The execution's tenant: a fork belongs to the same one.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

/// A checkpoint as a transition takes it, for the store to write: what [`Checkpoint`] holds
/// less what the store derives (the execution's id and tenant, and the completed outputs,
/// which reads recompute from the states). Its states are shared, not copied, with the store's
/// memory of the last checkpoint it wrote, which it diffs the next one against.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCheckpoint {
    /// The `seq` of the `StepCompleted` event this checkpoint follows.
    pub seq: u64,
    /// The step whose completion made it.
    pub step_id: String,
    pub at_ms: u64,
    /// Every step's state, indexed like the process's steps.
    pub steps: Arc<Vec<StepState>>,
}

impl NewCheckpoint {
    pub(super) fn of(execution: &Execution, seq: u64, step_id: &str, at_ms: u64) -> NewCheckpoint {
        NewCheckpoint {
            seq,
            step_id: step_id.to_string(),
            at_ms,
            steps: Arc::new(execution.steps.clone()),
        }
    }

    /// The checkpoint as reading it back returns it.
    pub fn read_back(&self, execution: &Execution) -> Checkpoint {
        Checkpoint {
            execution_id: execution.id.clone(),
            seq: self.seq,
            step_id: self.step_id.clone(),
            at_ms: self.at_ms,
            completed: Checkpoint::completed_of(&execution.process, &self.steps),
            steps: self.steps.to_vec(),
            tenant: execution.tenant.clone(),
        }
    }
}

fn default_tenant() -> String {
    super::machine::DEFAULT_TENANT.to_string()
}

/// Where a forked execution came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    pub execution_id: String,
    pub checkpoint_seq: u64,
}

impl Checkpoint {
    /// The `completed` map of a checkpoint whose step states are `steps`: every completed
    /// step's output, by step id, in definition order.
    pub fn completed_of(process: &ProcessDef, steps: &[StepState]) -> Map<String, Value> {
        process
            .steps
            .iter()
            .zip(steps)
            .filter(|(_, s)| s.status == StepStatus::Completed)
            .map(|(d, s)| (d.id.clone(), s.output.clone().unwrap_or(Value::Null)))
            .collect()
    }
}

/// Why a fork could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForkError {
    #[error("checkpoint has {got} step states but the process has {want} steps")]
    ShapeMismatch { got: usize, want: usize },
    #[error("cannot override the output of step '{0}': it had not completed at that checkpoint")]
    NotCompleted(String),
}

/// A new pending execution that starts from `checkpoint`: steps that had completed or been
/// skipped keep their state (with `outputs` overriding completed steps' outputs); every other
/// step (running, retrying, failed, cancelled, pending) starts afresh.
pub fn fork(
    id: String,
    process: Arc<ProcessDef>,
    checkpoint: &Checkpoint,
    input: Value,
    outputs: &BTreeMap<String, Value>,
    now_ms: u64,
) -> Result<Execution, ForkError> {
    if checkpoint.steps.len() != process.steps.len() {
        return Err(ForkError::ShapeMismatch {
            got: checkpoint.steps.len(),
            want: process.steps.len(),
        });
    }
    for step in outputs.keys() {
        let done = process
            .position(step)
            .is_some_and(|i| checkpoint.steps[i].status == StepStatus::Completed);
        if !done {
            return Err(ForkError::NotCompleted(step.clone()));
        }
    }
    let mut execution = Execution::new(id, process, input, now_ms);
    execution.tenant = checkpoint.tenant.clone();
    for (i, kept) in checkpoint.steps.iter().enumerate() {
        if matches!(kept.status, StepStatus::Completed | StepStatus::Skipped) {
            let mut state = kept.clone();
            if let Some(output) = outputs.get(&execution.process.steps[i].id) {
                state.output = Some(output.clone());
            }
            // The fork has compensated nothing yet; completion order is kept.
            state.detail.compensation = None;
            execution.steps[i] = state;
        }
    }
    execution.origin = Some(ForkOrigin {
        execution_id: checkpoint.execution_id.clone(),
        checkpoint_seq: checkpoint.seq,
    });
    Ok(execution)
}
