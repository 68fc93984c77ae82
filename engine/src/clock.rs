//! The Clock port: wall time for records and durable waits.
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
    /// Returns once `now_ms() >= deadline_ms` (at once if it already is). Deadlines are absolute
    /// so that a durable timer re-armed after a restart fires at its original time.
    async fn sleep_until_ms(&self, deadline_ms: u64);
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

    async fn sleep_until_ms(&self, deadline_ms: u64) {
        // Re-check after waking: the wall clock may have been stepped while we slept.
        loop {
            let now = self.now_ms();
            if now >= deadline_ms {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(deadline_ms - now)).await;
        }
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
