//! Planted bugs: deliberate engine defects that the simulator's harness tests switch on, one at
//! a time, to prove that each named invariant (and the determinism check) actually catches the
//! class of bug it claims to. A checker that never fails proves nothing; these are its
//! mutation tests.
//!
//! The switch exists only with the `planted-bugs` cargo feature, which is test-only: the one
//! thing that enables it is the dev-dependency of `proctor-tests` (tests/Cargo.toml), so
//! `cargo build` (release or not) and the installed binaries never have it. (A test build of the
//! whole workspace may unify the feature in; there nothing but the harness's child processes
//! calls `plant`.)
//! Without the feature [`planted`] is a `const fn` returning `false`, so every bug site in the
//! engine is `if false { .. }` and compiles to nothing, and `plant` does not exist.
//!
//! With the feature, the planted bug is process-global (an atomic), set by `plant` before a
//! run starts. tests/scenarios.rs plants the bug named by `PROCTOR_PLANT=<name>` (see
//! [`Bug::name`]) in the fresh child process that performs one simulated run; nothing else ever
//! plants, so a test process that does not ask for a bug runs the engine unchanged.
//!
//! The sites, each an `if crate::planted::planted(Bug::..)` branch in `core/machine.rs` (and
//! one in `driver.rs`, one in `api/events.rs`):
//! - [`Bug::NoRedispatchOnRecovery`] (`Execution::rearm`): recovery forgets the agent calls
//!   that were in flight, so those executions stay running forever (`no_lost_execution`).
//! - [`Bug::CompleteTwice`] (`Execution::complete_step`): a completed step records
//!   `StepCompleted` twice (`effect_at_most_once`).
//! - [`Bug::FreshKeyOnRecovery`] (`Execution::rearm`): a call re-dispatched after a restart
//!   carries a new idempotency key, so an agent that already applied the first call applies the
//!   step's effect again (`effect_at_most_once`).
//! - [`Bug::UnorderedDispatch`] (`Execution::schedule`): steps that become ready together start
//!   in the iteration order of a std `HashSet` (a random hasher per process) instead of
//!   definition order, so one seed's trace differs between processes (`deterministic`).
//! - [`Bug::CompensateInCompletionOrder`] (`Execution::begin_compensation`): a saga undoes its
//!   steps in the order they completed instead of the reverse (`compensation_in_reverse_order`).
//! - [`Bug::KeyNotStored`] (`Engine::create_idempotent_in`): a start's idempotency key never
//!   reaches the store, so a start retried after its reply was lost creates a second execution
//!   (`idempotent_starts`).
//! - [`Bug::StreamResumesLate`] (`api::events::stream`): a stream resumed after event N
//!   starts at N + 2, so a reconnecting client misses one event (`stream_complete`).

/// One deliberate defect. Names (for `PROCTOR_PLANT`) are the snake_case variant names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// On recovery, running agent calls are not re-issued.
    NoRedispatchOnRecovery = 1,
    /// A step's completion is recorded twice.
    CompleteTwice = 2,
    /// A call re-dispatched on recovery gets a fresh idempotency key.
    FreshKeyOnRecovery = 3,
    /// Steps made ready by one transition start in a random (per-process) order.
    UnorderedDispatch = 4,
    /// Compensations run oldest completion first.
    CompensateInCompletionOrder = 5,
    /// A start's idempotency key is checked but never stored with the execution.
    KeyNotStored = 6,
    /// A resumed event stream starts one event late (an off-by-one on `Last-Event-ID`).
    StreamResumesLate = 7,
}

impl Bug {
    pub const ALL: [Bug; 7] = [
        Bug::NoRedispatchOnRecovery,
        Bug::CompleteTwice,
        Bug::FreshKeyOnRecovery,
        Bug::UnorderedDispatch,
        Bug::CompensateInCompletionOrder,
        Bug::KeyNotStored,
        Bug::StreamResumesLate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::NoRedispatchOnRecovery => "no_redispatch_on_recovery",
            Bug::CompleteTwice => "complete_twice",
            Bug::FreshKeyOnRecovery => "fresh_key_on_recovery",
            Bug::UnorderedDispatch => "unordered_dispatch",
            Bug::CompensateInCompletionOrder => "compensate_in_completion_order",
            Bug::KeyNotStored => "key_not_stored",
            Bug::StreamResumesLate => "stream_resumes_late",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "planted-bugs")]
mod switch {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::Bug;

    /// The planted bug's discriminant, 0 for none. Process-global because the bug must reach
    /// the pure core without threading a flag through every input; the harness runs each
    /// planted run in its own process, so no other test can see it.
    static PLANTED: AtomicU8 = AtomicU8::new(0);

    /// Plants `bug` (or removes the planted one) for the rest of this process.
    pub fn plant(bug: Option<Bug>) {
        PLANTED.store(bug.map_or(0, |b| b as u8), Ordering::SeqCst);
    }

    /// Whether `bug` is planted.
    pub(crate) fn planted(bug: Bug) -> bool {
        PLANTED.load(Ordering::Relaxed) == bug as u8
    }
}

#[cfg(feature = "planted-bugs")]
pub use switch::plant;
#[cfg(feature = "planted-bugs")]
pub(crate) use switch::planted;

/// Without the `planted-bugs` feature nothing can be planted: every bug site is `if false`.
#[cfg(not(feature = "planted-bugs"))]
pub(crate) const fn planted(_bug: Bug) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(Bug::from_name("no_such_bug"), None);
    }

    /// Nothing in the engine's own tests plants a bug (a plant would leak into every test
    /// thread of the process), so none is planted here, with or without the feature.
    #[test]
    fn nothing_is_planted_by_default() {
        for bug in Bug::ALL {
            assert!(!planted(bug), "{} is planted", bug.name());
        }
    }
}
