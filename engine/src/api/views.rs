//! What the API returns: plain serde types, so a client (the simulator's, a test's) can read
//! responses back into them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::{Execution, Progress};

/// One execution: its state, steps, outputs and errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionView {
    pub id: String,
    pub tenant: String,
    pub definition: String,
    pub version: u32,
    pub status: String,
    pub input: Value,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub progress: Progress,
    pub steps: Vec<StepView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub id: String,
    pub status: String,
    pub attempt: u32,
    pub retry_count: u32,
    #[serde(default)]
    pub output: Option<Value>,
    /// The last error, as text.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
}

impl ExecutionView {
    pub fn of(e: &Execution) -> ExecutionView {
        ExecutionView {
            id: e.id.clone(),
            tenant: e.tenant.clone(),
            definition: e.process.name.clone(),
            version: e.process.version,
            status: e.status.to_string(),
            input: e.input.clone(),
            output: e.output.clone(),
            error: e.error.clone(),
            created_at_ms: e.created_at_ms,
            updated_at_ms: e.updated_at_ms,
            idempotency_key: e.idempotency_key.clone(),
            progress: e.progress(),
            steps: e
                .process
                .steps
                .iter()
                .zip(&e.steps)
                .map(|(def, st)| StepView {
                    id: def.id.clone(),
                    status: st.status.to_string(),
                    attempt: st.attempt,
                    retry_count: st.retry_count(),
                    output: st.output.clone(),
                    error: st.last_error.as_ref().map(|e| e.to_string()),
                    started_at_ms: st.started_at_ms,
                    finished_at_ms: st.finished_at_ms,
                })
                .collect(),
        }
    }
}

/// `POST /api/executions`'s answer: the execution, and whether this request created it
/// (`false`: its idempotency key had already created it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub created: bool,
    pub execution: ExecutionView,
}

/// One page of a listing; `next` is the cursor of the page after it, if there may be one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPage {
    pub executions: Vec<crate::store::ExecutionSummary>,
    #[serde(default)]
    pub next: Option<String>,
}

/// A registered definition version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub name: String,
    pub version: u32,
    /// `false` when the content equals the current version's (nothing new was stored).
    pub created: bool,
}

/// A webhook delivery's answer (`POST /api/webhooks/...`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookReceipt {
    pub webhook: String,
    /// The request's `X-Proctor-Delivery`.
    pub delivery: String,
    /// The execution signalled, or started.
    pub execution_id: String,
    /// `true`: this request delivered the signal (started the execution); `false`: the same
    /// delivery had already been applied, and nothing changed.
    pub applied: bool,
}
