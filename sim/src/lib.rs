//! The deterministic simulator: the engine, unchanged, runs inside a turmoil simulation that
//! injects faults from a seed, and every run is checked against named invariants.
//!
//! - [`ports`]: the engine's Clock and Network on turmoil (simulated time, simulated TCP).
//! - [`scenario`]: scenario files (process, agents, workload, faults, expectations).
//! - [`disk`]: the simulated disk (volatile until synced, torn and lost writes at a power cut,
//!   EIO, a full disk) and [`vfs`], the SQLite VFS that puts the engine's database on it.
//! - [`storage`]: the fault layer over the engine's SQLite store (I/O errors, ambiguous
//!   commits, crashes before and after a write).
//! - [`floor`]: what turmoil costs by itself (a run's hosts idle for its simulated time): the
//!   limit `proctor-sim speed` holds the runs against.
//! - [`chaos`]: random faults from rates, drawn from the seed (with swarm testing).
//! - [`client`]: the client host, which drives the workload through the engine's HTTP API.
//! - [`runner`]: one run = (scenario, seed): hosts, fault schedule, liveness phase, outcome.
//! - [`smtp`]: the simulated mail server for `email` steps (a host that can be faulted).
//! - [`shrink`]: a failing run's fault schedule written out and reduced (delta debugging) to a
//!   minimal one that fails the same way.
//! - [`summary`]: a run's outcome in brief (JSON for sweeps, snapshots for tests).
//! - [`timeline`]: a run drawn as a self-contained HTML page (hosts, calls, faults, steps,
//!   violated invariants), for `repro --html`.
//! - [`trace`]: the run's trace (one line per event, simulated time first) and its hash.
//! - [`checker`]: the invariants, one module each.

pub mod chaos;
pub mod checker;
pub mod client;
pub mod disk;
pub mod floor;
pub mod ports;
pub mod runner;
pub mod scenario;
pub mod shrink;
pub mod smtp;
pub mod storage;
pub mod summary;
pub mod timeline;
pub mod trace;
pub mod vfs;

pub use runner::{run, Outcome};
pub use scenario::Scenario;
pub use summary::Summary;
