//! Agents: external services a step calls over HTTP/1.1 JSON (DESIGN §2).
//!
//! `POST {agent}/run` with [`AgentRequest`]; a 2xx JSON body is the output; a 4xx with
//! `{"error": {"type", "message"}}` is a step error; 5xx, timeouts and resets are transient.
//!
//! An agent may instead stream its work: a 2xx with `Content-Type: application/x-ndjson`, one
//! JSON object per line: `{"progress": {"kind": "agent_thinking", "data": {...}}}` as often
//! as it likes (the reference kinds are [`PROGRESS_KINDS`]; any plain name is accepted), then
//! exactly one last line, `{"output": ...}` or `{"error": {"type", "message"}}` (a step
//! error, as a 4xx's). The engine records each progress line as an `AgentProgress` event of
//! the execution, tagged with the step and attempt, in the order sent, up to
//! [`MAX_PROGRESS_PER_CALL`] per call; progress from an attempt that is no longer current is
//! dropped.
//! [`client`] speaks the protocol over the Network port, [`example`] is a small agent server
//! (the README's demo agent and the tests' agent), and [`registry`] maps names to addresses.

pub mod client;
pub mod example;
pub mod registry;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use client::{AgentClient, ClientLimits};
pub use registry::{AgentEndpoint, AgentRegistry};

/// The progress kinds of the reference agent protocol.
pub const PROGRESS_KINDS: &[&str] = &[
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
];
/// Progress lines recorded per call; later ones are dropped (the call itself goes on).
pub const MAX_PROGRESS_PER_CALL: usize = 64;
/// Largest progress line: a longer one fails the attempt as an invalid response.
pub const MAX_PROGRESS_LINE_BYTES: usize = 16 * 1024;
/// Longest progress kind.
pub const MAX_PROGRESS_KIND_BYTES: usize = 64;

/// One progress report an agent streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentProgress {
    pub kind: String,
    #[serde(default)]
    pub data: Value,
}

/// The body of `POST /run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRequest {
    pub execution_id: String,
    pub step_id: String,
    pub attempt: u32,
    /// Stable across attempts of one step of one execution.
    pub idempotency_key: String,
    pub input: Value,
}

/// The error body of a 4xx (and, optionally, 5xx) response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub error_type: String,
    #[serde(default)]
    pub message: String,
}
