//! The deterministic simulator: the engine, unchanged, runs inside a turmoil simulation that
//! injects faults from a seed, and every run is checked against named invariants.
//!
//! - [`ports`]: the engine's Clock and Network on turmoil (simulated time, simulated TCP).
//! - [`scenario`]: scenario files (process, agents, workload, faults, expectations).
//! - [`runner`]: one run = (scenario, seed): hosts, fault schedule, liveness phase, outcome.
//! - [`trace`]: the run's trace (one line per event, simulated time first) and its hash.
//! - [`checker`]: the invariants, one module each.

pub mod checker;
pub mod ports;
pub mod runner;
pub mod scenario;
pub mod trace;

pub use runner::{run, Outcome};
pub use scenario::Scenario;
