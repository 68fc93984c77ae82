//! How checkpoints are stored. A checkpoint holds every step's state, and one is taken per
//! completed step, so stored whole they grow with the square of the steps: the tenth of a
//! ten-step chain was 2.5 KB, past what fits on a page, and each step's commit wrote overflow
//! pages for it. A checkpoint row therefore holds only the states that changed since an
//! earlier checkpoint of the same execution, its *base*, named in the row; reading folds the
//! rows in order.
//!
//! The writer remembers, per execution, the last checkpoint it committed (its step states),
//! and diffs the next one against it: states are compared as values, and only the changed ones
//! are serialized (serializing every state of every checkpoint to compare them as text cost
//! more than the rest of the row). Nothing depends on that memory being
//! current: a row names its base, the write checks that the base is still stored (pruning may
//! have deleted it) and writes the whole state otherwise, and pruning rewrites whole any kept
//! row whose base it deletes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;

use super::Error;
use crate::core::{NewCheckpoint, StepState};

/// Executions whose last checkpoint the writer remembers; past this it starts over (a
/// forgotten base only costs one whole row).
pub const MAX_REMEMBERED_BASES: usize = 4096;

/// A checkpoint's step states, shared between its row and the writer's memory of it.
pub(super) type StepStates = Arc<Vec<StepState>>;

/// The last committed checkpoint of each execution, by id: its `seq` and step states.
#[derive(Clone, Default)]
pub(super) struct Bases(Arc<Mutex<BTreeMap<String, (u64, StepStates)>>>);

impl Bases {
    fn get(&self, id: &str) -> Option<(u64, StepStates)> {
        self.lock().get(id).cloned()
    }

    /// Remembers `seq` as `id`'s latest committed checkpoint. Only after its commit.
    pub(super) fn committed(&self, id: &str, seq: u64, steps: StepStates) {
        let mut bases = self.lock();
        if bases.len() >= MAX_REMEMBERED_BASES && !bases.contains_key(id) {
            bases.clear();
        }
        bases.insert(id.to_string(), (seq, steps));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, StepStates)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One checkpoint row to write.
pub(super) struct Row {
    pub seq: i64,
    pub step_id: String,
    pub at_ms: i64,
    pub steps: StepStates,
    /// Its `steps` column, serialized by the writer's task so that the committer only binds
    /// it.
    pub stored: Column,
}

/// A checkpoint row's `steps` column.
pub(super) enum Column {
    /// Every state: an execution's first checkpoint, or one whose base the writer forgot.
    Whole(String),
    /// The states changed since the checkpoint `base`, to be written only while `base` is
    /// still stored.
    Diff { base: u64, json: String },
}

impl Row {
    /// The rows of one transition's checkpoints, each diffed against the one before it: the
    /// writer's last committed one for the first.
    pub(super) fn of(execution_id: &str, checkpoints: &[NewCheckpoint], bases: &Bases) -> Vec<Row> {
        let mut base = if checkpoints.is_empty() {
            None
        } else {
            bases.get(execution_id)
        };
        checkpoints
            .iter()
            .map(|c| {
                let steps: StepStates = c.steps.clone();
                let stored = match base.as_ref().filter(|(_, b)| b.len() == steps.len()) {
                    Some((base, before)) => Column::Diff {
                        base: *base,
                        json: diff_column(*base, before, &steps),
                    },
                    None => Column::Whole(whole_column(&steps)),
                };
                base = Some((c.seq, steps.clone()));
                Row {
                    seq: c.seq as i64,
                    step_id: c.step_id.clone(),
                    at_ms: c.at_ms as i64,
                    steps,
                    stored,
                }
            })
            .collect()
    }

    /// The checkpoint its diff is stored against, if it is stored as one.
    pub(super) fn diff_base(&self) -> Option<u64> {
        match self.stored {
            Column::Diff { base, .. } => Some(base),
            Column::Whole(_) => None,
        }
    }

    /// The `steps` column to write: the diff where its base is stored, else every state. The
    /// committer serializes the whole state itself only where a remembered base turned out to
    /// be gone (pruned since).
    pub(super) fn column(&self, base_stored: bool) -> Cow<'_, str> {
        match &self.stored {
            Column::Diff { json, .. } if base_stored => Cow::Borrowed(json),
            Column::Diff { .. } => Cow::Owned(whole_column(&self.steps)),
            Column::Whole(json) => Cow::Borrowed(json),
        }
    }
}

fn state_json(state: &StepState) -> String {
    serde_json::to_string(state).expect("a step state serializes")
}

/// The states of `steps` that differ from `before`, against the checkpoint `base`. Compared as
/// values: a JSON object's key order does not make a state differ.
fn diff_column(base: u64, before: &[StepState], steps: &[StepState]) -> String {
    let mut out = format!("{{\"base\":{base},\"changed\":{{");
    let changed = (0..steps.len()).filter(|&i| before[i] != steps[i]);
    for (n, i) in changed.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{i}\":{}", state_json(&steps[i])));
    }
    out.push_str("}}");
    out
}

/// Every step's state as the `steps` column stores it whole: a JSON array.
fn whole_column(steps: &[StepState]) -> String {
    let jsons: Vec<String> = steps.iter().map(state_json).collect();
    format!("[{}]", jsons.join(","))
}

/// A stored `steps` column.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Whole(Vec<Value>),
    /// `changed` is keyed by step position, as text (JSON keys are strings; an untagged
    /// enum cannot read them as numbers).
    Diff {
        base: u64,
        changed: BTreeMap<String, Value>,
    },
}

/// One checkpoint as read back: its whole state, and the base its row is stored against.
pub(super) struct Folded {
    pub seq: u64,
    pub base: Option<u64>,
    pub steps: Vec<Value>,
}

/// Folds one execution's stored `steps` columns, in `seq` order, into every checkpoint's
/// whole state.
pub(super) fn fold<'a>(
    execution_id: &str,
    rows: impl IntoIterator<Item = (u64, &'a str)>,
) -> Result<Vec<Folded>, Error> {
    let corrupt = |seq: u64, problem: String| Error::Corrupt {
        id: execution_id.to_string(),
        problem: format!("checkpoint {seq}: {problem}"),
    };
    let mut folded: Vec<Folded> = Vec::new();
    let mut at: BTreeMap<u64, usize> = BTreeMap::new();
    for (seq, column) in rows {
        let stored: Stored =
            serde_json::from_str(column).map_err(|e| corrupt(seq, e.to_string()))?;
        let (base, steps) = match stored {
            Stored::Whole(steps) => (None, steps),
            Stored::Diff { base, changed } => {
                let Some(&i) = at.get(&base).filter(|_| base < seq) else {
                    return Err(corrupt(seq, format!("its base {base} is not stored")));
                };
                let mut steps = folded[i].steps.clone();
                for (step, state) in changed {
                    let slot = step
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| steps.get_mut(i))
                        .ok_or_else(|| corrupt(seq, format!("no step at position {step}")))?;
                    *slot = state;
                }
                (Some(base), steps)
            }
        };
        at.insert(seq, folded.len());
        folded.push(Folded { seq, base, steps });
    }
    Ok(folded)
}
