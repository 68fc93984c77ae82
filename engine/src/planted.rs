//! Planted bugs: deliberate engine defects that the simulator's harness tests switch on, one at
//! a time, to prove that each named invariant (and the determinism check) actually catches the
//! class of bug it claims to. A checker that never fails proves nothing; these are its
//! mutation tests.
//!
//! The switch exists only with the `planted-bugs` cargo feature, which is test-only: it is
//! enabled by the dev-dependency of `proctor-tests` (tests/Cargo.toml) and by the simulator's
//! own `planted-bugs` feature (sim/Cargo.toml), which only `cargo xtask mutants` and
//! `cargo xtask repro --plant` ask for, so `cargo build` (release or not) and the installed
//! binaries never have it. (A test build of the whole workspace may unify the feature in; there
//! too nothing plants a bug unless asked to, below.)
//! Without the feature [`planted`] is a `const fn` returning `false`, so every bug site in the
//! engine is `if false { .. }` and compiles to nothing, and `plant` does not exist.
//!
//! With the feature, the planted bug is process-global (an atomic), set by `plant` before a
//! run starts. tests/scenarios.rs plants the bug named by `PROCTOR_PLANT=<name>` (see
//! [`Bug::name`]) in the fresh child process that performs one simulated run, and
//! `proctor-sim run/repro --plant <name>` in its own process; nothing else ever plants, so a
//! process that does not ask for a bug runs the engine unchanged. `cargo xtask mutants` sweeps
//! every bug over every scenario until an invariant catches it.
//!
//! The sites, each an `if crate::planted::planted(Bug::..)` branch in `core/machine.rs` (and
//! two in `driver.rs`, one in `api/events.rs`, one in `store/sqlite.rs`):
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
//! - [`Bug::RetryWithFreshKey`] (`Execution::call_command`): a retry (attempt > 1) carries the
//!   key with the attempt appended, so an agent that applied an attempt whose reply was lost
//!   (a timeout, a cut link) applies the step's effect again (`effect_at_most_once`); an
//!   `email` step's retried message carries a key of no step (`mail_delivered`).
//! - [`Bug::JoinIgnoresPending`] (`Execution::readiness`): a join starts as soon as one
//!   dependency satisfied it, while others are still pending or running
//!   (`dependencies_respected`).
//! - [`Bug::TimerRecomputedOnRestart`] (`Execution::rearm`): recovery re-arms a running timer
//!   at now + its full duration instead of its stored deadline, so a timer interrupted by a
//!   restart fires late by up to its whole duration (`timers_not_late`).
//! - [`Bug::RecoveryFailsFreshExecutions`] (`Engine::recover`): the age limit is passed in
//!   hours where milliseconds are expected, so recovery fails every execution older than a few
//!   milliseconds as too old (`age_limit_respected`).
//! - [`Bug::CompensationRetriedPastPolicy`] (`Execution::compensation_attempt_failed`): an
//!   off-by-one on the compensating action's retry budget tries it once more than its policy
//!   allows (`retries_within_policy`).
//! - [`Bug::SignalDeliveredTwice`] (`Input::Signal` in `Execution::apply`): a signal is no
//!   longer deduplicated by its sender's id, so a signal re-sent after its reply was lost is
//!   received twice (`effect_at_most_once`).
//! - [`Bug::FsyncSkipped`] (`SqliteStore::open_with`): the store runs with `synchronous=OFF`,
//!   so a commit returns before it is on the disk and a power cut loses acknowledged work
//!   (`no_lost_execution`; only the simulator's disk, below SQLite, can show it).
//! - [`Bug::PauseLostOnRestart`] (`Input::Recover` in `Execution::apply`): recovery puts a
//!   paused execution back to running without a resume, so it goes on starting steps
//!   (`pause_respected`).

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
    /// A retried agent call (attempt > 1) carries a new idempotency key.
    RetryWithFreshKey = 8,
    /// A step starts once one dependency satisfied it, without waiting for the others.
    JoinIgnoresPending = 9,
    /// Recovery re-arms a running timer at now + its duration instead of its stored deadline.
    TimerRecomputedOnRestart = 10,
    /// Recovery compares ages with the age limit in hours taken as milliseconds.
    RecoveryFailsFreshExecutions = 11,
    /// A compensating action is retried once more than its retry policy allows.
    CompensationRetriedPastPolicy = 12,
    /// A signal is not deduplicated by its sender's id.
    SignalDeliveredTwice = 13,
    /// The SQLite store never syncs its commits (`synchronous=OFF`).
    FsyncSkipped = 14,
    /// Recovery forgets that an execution was paused.
    PauseLostOnRestart = 15,
}

impl Bug {
    pub const ALL: [Bug; 15] = [
        Bug::NoRedispatchOnRecovery,
        Bug::CompleteTwice,
        Bug::FreshKeyOnRecovery,
        Bug::UnorderedDispatch,
        Bug::CompensateInCompletionOrder,
        Bug::KeyNotStored,
        Bug::StreamResumesLate,
        Bug::RetryWithFreshKey,
        Bug::JoinIgnoresPending,
        Bug::TimerRecomputedOnRestart,
        Bug::RecoveryFailsFreshExecutions,
        Bug::CompensationRetriedPastPolicy,
        Bug::SignalDeliveredTwice,
        Bug::FsyncSkipped,
        Bug::PauseLostOnRestart,
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
            Bug::RetryWithFreshKey => "retry_with_fresh_key",
            Bug::JoinIgnoresPending => "join_ignores_pending",
            Bug::TimerRecomputedOnRestart => "timer_recomputed_on_restart",
            Bug::RecoveryFailsFreshExecutions => "recovery_fails_fresh_executions",
            Bug::CompensationRetriedPastPolicy => "compensation_retried_past_policy",
            Bug::SignalDeliveredTwice => "signal_delivered_twice",
            Bug::FsyncSkipped => "fsync_skipped",
            Bug::PauseLostOnRestart => "pause_lost_on_restart",
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

    /// `ALL` lists the bugs once each, in discriminant order without gaps (1, 2, ...), and no
    /// two share a name.
    #[test]
    fn all_lists_every_bug_once() {
        for (i, bug) in Bug::ALL.into_iter().enumerate() {
            assert_eq!(bug as usize, i + 1, "{} is out of place in ALL", bug.name());
        }
        let mut names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Bug::ALL.len(), "two bugs share a name");
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
