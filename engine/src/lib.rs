//! Proctor: a durable process engine.
//!
//! Layers, inside out: [`definition`] (typed, validated process files) and [`expr`]
//! (CEL templates); [`core`], the pure execution state machine, and its [`event`]s; the ports
//! [`clock`], [`network`], [`store`] and the injected [`rng`]; [`agent`] (the HTTP agent
//! protocol over the Network port); [`bus`] (in-process event delivery); and [`driver`], the
//! async shell that feeds inputs to the core and performs its commands. ARCHITECTURE.md gives
//! the rules between them.

pub mod agent;
pub mod api;
pub mod bus;
pub mod clock;
pub mod core;
pub mod definition;
pub mod driver;
pub mod email;
pub mod event;
pub mod expr;
pub mod http_call;
pub mod huge_pages;
pub mod name;
pub mod network;
pub mod planted;
pub mod recovery;
pub mod rng;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod tenant;

pub use driver::{Engine, EngineConfig, ExecutionHandle, Ports, Recovery, Reset, Resumption};
pub use recovery::{RecoveryConfig, RecoveryReport};
