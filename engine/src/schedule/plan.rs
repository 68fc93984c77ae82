//! The planner: given a schedule's stored [`ScheduleState`] and the time, which fires start,
//! which are skipped and why, and when to look again. Pure: the engine persists the updated
//! state together with the [`Plan`], then starts the runs.

use serde::{Deserialize, Serialize};

use super::{
    CompiledSchedule, Fire, Missed, Overlap, MAX_CATCH_UP_RUNS, MAX_COUNTED_BULK_FIRES,
    MAX_LISTED_FIRES, MISSED_GRACE_MS,
};

/// What the engine stores per schedule between calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ScheduleState {
    /// The newest fire already dealt with (started, buffered or skipped); fires at or before
    /// it are never due again. `None`: never planned, see [`CompiledSchedule::due`].
    pub last_fire_ms: Option<u64>,
    /// Runs of this schedule started and not yet finished. Plans count the runs they start;
    /// [`ScheduleState::run_started`] counts the others.
    pub running: u32,
    /// The fire kept by [`Overlap::BufferOne`], started when the running run finishes.
    pub buffered: Option<Fire>,
}

impl ScheduleState {
    /// The state of a schedule created at `created_ms`: only fires after it are ever due.
    pub fn new_at(created_ms: u64) -> ScheduleState {
        ScheduleState {
            last_fire_ms: Some(created_ms),
            running: 0,
            buffered: None,
        }
    }

    /// A run of this schedule started outside a plan (a manual trigger, say), so that the
    /// overlap policy sees it. Runs that a [`Plan`] starts are already counted: do not call
    /// this for them.
    pub fn run_started(&mut self) {
        self.running = self
            .running
            .checked_add(1)
            .expect("more than u32::MAX runs of one schedule at once");
    }
}

/// Why a due fire did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipCause {
    /// Not started in time, and the [`Missed`] policy let it go.
    Missed,
    /// A run was in progress and the [`Overlap`] policy let it go.
    Overlap,
}

/// Missed fires too old to be listed one by one (past the newest [`MAX_LISTED_FIRES`] due
/// fires): every fire from `first_at_ms` to `last_at_ms`, both included, was skipped as
/// [`SkipCause::Missed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SkippedBulk {
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    /// How many fires the range holds, counted up to [`MAX_COUNTED_BULK_FIRES`].
    pub count: u64,
    /// The count stopped at [`MAX_COUNTED_BULK_FIRES`]: the range holds more.
    pub count_capped: bool,
}

/// What the engine does now. Every list is in time order, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Plan {
    /// Start one run per fire; `ScheduleState::running` already counts them.
    pub start: Vec<Fire>,
    /// A fire this plan kept for later ([`Overlap::BufferOne`]); it is in the state too.
    pub buffered: Option<Fire>,
    /// Due fires that will never start, with why.
    pub skipped: Vec<(Fire, SkipCause)>,
    /// Missed fires older than everything in `skipped`, summarized.
    pub skipped_bulk: Option<SkippedBulk>,
    /// When to call [`CompiledSchedule::due`] next; at or before now means at once. `None`:
    /// the schedule never fires again (past croner's year-5000 limit).
    pub next_wake_ms: Option<u64>,
}

/// The due fires of one call: the newest ones listed (newest first), the older ones summed up.
struct DueFires {
    newest_first: Vec<u64>,
    bulk: Option<SkippedBulk>,
}

impl CompiledSchedule {
    /// Plans the fires in `(state.last_fire_ms, now_ms]` and updates `state` to match.
    ///
    /// A state with no `last_fire_ms` is taken as created now: nothing is due, and
    /// `last_fire_ms` becomes `now_ms`. Otherwise, in order:
    ///
    /// 1. A buffered fire whose run is no longer counted (`running` is 0) starts first. This
    ///    only happens when the engine reset `running` itself, since `run_finished` starts it.
    /// 2. Due fires are found newest first, at most [`MAX_LISTED_FIRES`]; any older ones are
    ///    missed and only summarized in [`Plan::skipped_bulk`].
    /// 3. The [`Missed`] policy picks which due fires to start: always a newest-first run of
    ///    them, the rest skipped as [`SkipCause::Missed`].
    /// 4. The [`Overlap`] policy takes those oldest first: while any run is counted (including
    ///    one started earlier in this plan), `skip` skips, `buffer_one` keeps the first in
    ///    `state.buffered` if it is empty and skips the others, `allow_all` starts.
    ///
    /// `last_fire_ms` becomes the newest due fire, so each fire is planned exactly once;
    /// [`Plan::next_wake_ms`] is the first fire after both it and `now_ms`.
    pub fn due(&self, state: &mut ScheduleState, now_ms: u64) -> Plan {
        let mut plan = Plan::default();
        let Some(last_fire_ms) = state.last_fire_ms else {
            state.last_fire_ms = Some(now_ms);
            plan.next_wake_ms = self.next_ms_after(now_ms);
            return plan;
        };

        if state.running == 0 {
            if let Some(fire) = state.buffered.take() {
                state.run_started();
                plan.start.push(fire);
            }
        }

        let due = self.due_fires(last_fire_ms, now_ms);
        plan.skipped_bulk = due.bulk;
        if let Some(&newest_ms) = due.newest_first.first() {
            state.last_fire_ms = Some(newest_ms);
        }

        let start_count = self.start_count(&due.newest_first, now_ms);
        let (to_start, missed) = due.newest_first.split_at(start_count);
        for &at_ms in missed.iter().rev() {
            plan.skipped.push((self.fire(at_ms), SkipCause::Missed));
        }
        for &at_ms in to_start.iter().rev() {
            let fire = self.fire(at_ms);
            if state.running == 0 || self.overlap == Overlap::AllowAll {
                state.run_started();
                plan.start.push(fire);
            } else if self.overlap == Overlap::BufferOne && state.buffered.is_none() {
                state.buffered = Some(fire.clone());
                plan.buffered = Some(fire);
            } else {
                plan.skipped.push((fire, SkipCause::Overlap));
            }
        }

        let after_ms = state
            .last_fire_ms
            .map_or(now_ms, |last_ms| last_ms.max(now_ms));
        plan.next_wake_ms = self.next_ms_after(after_ms);
        debug_assert!(plan.start.len() <= MAX_CATCH_UP_RUNS + 1);
        debug_assert!(plan.skipped.len() <= MAX_LISTED_FIRES);
        plan
    }

    /// A run of this schedule finished at `now_ms`. If that leaves none running and a fire is
    /// buffered, the plan starts it, however late it now is: it was on time when it was kept.
    ///
    /// A finish when no run is counted is taken as a duplicate report and changes no count.
    /// [`Plan::next_wake_ms`] is the first fire after `last_fire_ms`: if that is not after
    /// `now_ms`, fires are waiting and the engine should call `due` at once.
    pub fn run_finished(&self, state: &mut ScheduleState, now_ms: u64) -> Plan {
        let mut plan = Plan::default();
        state.running = state.running.saturating_sub(1);
        if state.running == 0 {
            if let Some(fire) = state.buffered.take() {
                state.run_started();
                plan.start.push(fire);
            }
        }
        plan.next_wake_ms = self.next_ms_after(state.last_fire_ms.unwrap_or(now_ms));
        plan
    }

    /// How many of the due fires (newest first) the [`Missed`] policy starts: always the
    /// newest ones, so the answer is a count.
    fn start_count(&self, newest_first: &[u64], now_ms: u64) -> usize {
        let Some(&newest_ms) = newest_first.first() else {
            return 0;
        };
        let on_time = now_ms.saturating_sub(newest_ms) <= MISSED_GRACE_MS;
        match self.missed {
            Missed::Skip => usize::from(on_time),
            Missed::RunOnce => 1,
            Missed::CatchUp { window } => {
                let horizon_ms = now_ms.saturating_sub(window.as_millis());
                let in_window = newest_first
                    .iter()
                    .take_while(|&&at_ms| at_ms >= horizon_ms)
                    .count();
                in_window.max(usize::from(on_time)).min(MAX_CATCH_UP_RUNS)
            }
        }
    }

    /// The fires in `(after_ms, now_ms]`: the newest [`MAX_LISTED_FIRES`] listed, any older
    /// ones summarized. Costs at most `MAX_LISTED_FIRES + MAX_COUNTED_BULK_FIRES + 2` searches.
    fn due_fires(&self, after_ms: u64, now_ms: u64) -> DueFires {
        let mut newest_first = Vec::new();
        let mut bulk_last_ms = None;
        let mut cursor_ms = now_ms;
        while let Some(at_ms) = self.latest_ms_at_or_before(cursor_ms) {
            if at_ms <= after_ms {
                break;
            }
            if newest_first.len() == MAX_LISTED_FIRES {
                bulk_last_ms = Some(at_ms);
                break;
            }
            newest_first.push(at_ms);
            let Some(before_ms) = at_ms.checked_sub(1) else {
                break;
            };
            cursor_ms = before_ms;
        }
        let bulk = bulk_last_ms.map(|last_at_ms| self.count_bulk(after_ms, last_at_ms));
        DueFires { newest_first, bulk }
    }

    /// Summarizes the fires in `(after_ms, last_at_ms]`, which holds at least `last_at_ms`.
    fn count_bulk(&self, after_ms: u64, last_at_ms: u64) -> SkippedBulk {
        // Forward and backward searches agree (a property test checks it), so the first fire
        // after `after_ms` is at most `last_at_ms`. Should croner ever disagree, the summary
        // comes out short rather than the engine stopping.
        let first_at_ms = match self.next_ms_after(after_ms) {
            Some(at_ms) if at_ms <= last_at_ms => at_ms,
            _ => {
                debug_assert!(
                    false,
                    "no fire in ({after_ms}, {last_at_ms}] going forwards"
                );
                last_at_ms
            }
        };
        let mut count = 1;
        let mut at_ms = first_at_ms;
        while at_ms < last_at_ms && count < MAX_COUNTED_BULK_FIRES {
            match self.next_ms_after(at_ms) {
                Some(next_ms) if next_ms <= last_at_ms => {
                    at_ms = next_ms;
                    count += 1;
                }
                _ => {
                    debug_assert!(false, "no fire in ({at_ms}, {last_at_ms}] going forwards");
                    break;
                }
            }
        }
        SkippedBulk {
            first_at_ms,
            last_at_ms,
            count,
            count_capped: at_ms < last_at_ms,
        }
    }
}
