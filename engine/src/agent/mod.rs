//! Agents: external services a step calls over HTTP/1.1 JSON (DESIGN §2).
//!
//! `POST {agent}/run` with [`AgentRequest`]; a 2xx JSON body is the output; a 4xx with
//! `{"error": {"type", "message"}}` is a step error; 5xx, timeouts and resets are transient.
//! [`client`] speaks the protocol over the Network port, [`example`] is a small agent server
//! (the README's demo agent and the tests' agent), and [`registry`] maps names to addresses.

pub mod client;
pub mod example;
pub mod registry;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use client::{AgentClient, ClientLimits};
pub use registry::{AgentEndpoint, AgentRegistry};

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
