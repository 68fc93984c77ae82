//! The recovery service's types: what it is told ([`RecoveryConfig`]) and what it reports
//! ([`RecoveryReport`]). [`crate::Engine::recover`] runs it: at startup, before new work is
//! accepted, every non-terminal execution in storage gets a [`RecoveryAction`].

use serde::Serialize;

use crate::core::RecoveryAction;

/// Default age past which an interrupted execution is failed rather than resumed.
pub const DEFAULT_MAX_AGE_HOURS: u64 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    pub max_age_hours: u64,
    /// Compute the report, change nothing, start nothing.
    pub dry_run: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_age_hours: DEFAULT_MAX_AGE_HOURS,
            dry_run: false,
        }
    }
}

impl RecoveryConfig {
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_hours.saturating_mul(3_600_000)
    }
}

/// One execution that recovery could not handle; the others are recovered regardless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoveryError {
    pub execution_id: String,
    pub error: String,
}

/// What one recovery scan did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    pub dry_run: bool,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub resumed: usize,
    pub retried: usize,
    pub failed: usize,
    pub skipped: usize,
    pub errors: Vec<RecoveryError>,
    /// Each execution's action, in scan order (oldest first).
    pub actions: Vec<(String, RecoveryAction)>,
}

impl RecoveryReport {
    pub fn count(&mut self, id: &str, action: RecoveryAction) {
        match action {
            RecoveryAction::Resume => self.resumed += 1,
            RecoveryAction::RetryStep => self.retried += 1,
            RecoveryAction::MarkFailed => self.failed += 1,
            RecoveryAction::Skip => self.skipped += 1,
        }
        self.actions.push((id.to_string(), action));
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "recovery{}: {} resumed, {} retried, {} failed, {} skipped, {} errors in {}ms",
            if self.dry_run { " (dry run)" } else { "" },
            self.resumed,
            self.retried,
            self.failed,
            self.skipped,
            self.errors.len(),
            self.finished_at_ms.saturating_sub(self.started_at_ms)
        )
    }
}
