//! The Clock port: wall time for records and durable deadlines, a monotonic timer for waiting.
//!
//! Durable waits (timers, retry backoff) store an absolute wall-clock deadline, so that a wait
//! interrupted by a restart ends at its original time (as well as the new life's clock can
//! tell). But a running wait is measured on a monotonic timer from the moment it is armed: if
//! an operator or NTP steps the wall clock while it runs, forward or back, it neither fires
//! early nor hangs on for the size of the step.
//!
//! The engine reads time only through [`Clock`]. Production uses [`SystemClock`]; tests use
//! [`ManualClock`]; the simulator implements it on turmoil's simulated time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

#[async_trait]
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Waits out the time that separates `now_ms()` from `deadline_ms` at the call (not at
    /// all if the deadline has passed), on a monotonic timer: a step of the wall clock during
    /// the wait changes nothing. Deadlines are absolute so that a durable timer re-armed after
    /// a restart fires at its original time.
    async fn sleep_until_ms(&self, deadline_ms: u64) {
        // tokio's timer runs on the monotonic clock (simulated time under turmoil): converted
        // once, at arming.
        let remaining_ms = deadline_ms.saturating_sub(self.now_ms());
        if remaining_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(remaining_ms)).await;
        }
    }
}

/// The operating system's clock and tokio's timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told, or when someone sleeps: `sleep_until_ms` jumps the clock
/// forward to the deadline and returns at once. Timers in tests therefore take no real time,
/// yet every recorded timestamp is consistent with the waits. With several sleepers the clock
/// only moves forward, so a shorter wait that starts after a longer one observes the later time.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    pub fn advance_ms(&self, by_ms: u64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    async fn sleep_until_ms(&self, deadline_ms: u64) {
        self.now_ms.fetch_max(deadline_ms, Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
}
