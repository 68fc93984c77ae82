//! The deterministic simulator: a placeholder until its issue lands.
//!
//! It will implement the engine's Clock, Network and Storage traits on turmoil, run the engine,
//! agents and clients as simulated hosts, inject faults from a seed and check the recovery
//! invariants. For now it only re-exports the engine so that the layering (sim depends on engine,
//! never the reverse) is fixed from the first commit.

pub use proctor as engine;
