//! Integration tests: the engine against real SQLite and real HTTP example agents, with a
//! ManualClock. Fixtures live in the crate's lib.rs.

mod checkpoints;
mod email;
mod events;
mod examples;
mod gateway;
mod http;
mod lifecycle;
mod output;
mod parallel;
mod pause;
mod recovery;
mod retention;
mod retry;
mod schedules;
mod sequential;
mod storage_faults;
mod subprocess;
mod tenants;
mod timer;
mod versioning;
