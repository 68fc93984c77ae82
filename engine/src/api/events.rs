//! An execution's events: the stored history, and a live Server-Sent Events stream that first
//! replays from a given event number and then follows, so a client that reconnects (with
//! `Last-Event-ID`, or `?after=`) misses nothing and sees nothing twice.
//!
//! The stream subscribes to live events before it reads the store, then skips what it has
//! sent by `seq`, so an event committed between the two is neither lost nor repeated; if it
//! falls behind the live buffer, or sees a gap, it reads the store again. It ends after the
//! execution's terminal event, or when the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::auth::Caller;
use super::body::{Path, Query};
use super::error::ApiError;
use super::{AppState, KEEP_ALIVE_MS, MAX_EVENTS_PAGE};
use crate::event::EventRecord;

/// Events a stream holds for a slow reader before it waits.
const STREAM_QUEUE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only events with a greater `seq`.
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn history(
    Caller(tenant): Caller,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(MAX_EVENTS_PAGE);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_EVENTS_PAGE}"
        )));
    }
    let events: Vec<EventRecord> = tenant
        .events(&id)
        .await?
        .into_iter()
        .filter(|e| e.seq > q.after)
        .take(limit)
        .collect();
    Ok(axum::Json(serde_json::json!({ "events": events })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    #[serde(default)]
    after: Option<u64>,
}

pub async fn stream(
    Caller(tenant): Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // `Last-Event-ID` (a reconnecting EventSource) wins over `?after=`.
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not an event number"))?,
        None => q.after.unwrap_or(0),
    };
    let after = if after > 0 && crate::planted::planted(crate::planted::Bug::StreamResumesLate) {
        after + 1
    } else {
        after
    };
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many event streams open; retry later",
        )
    })?;
    // Subscribe first: whatever commits from here on arrives live.
    let live = state.events.subscribe();
    // The ownership check, and the replay.
    let stored = tenant.events(&id).await?;
    let (tx, rx) = mpsc::channel::<Event>(STREAM_QUEUE);
    let mut shutdown = state.shutdown.clone();
    let reader = tx.clone();
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => {}
            // The reader left: stop now, not at the execution's next event (which may never
            // come: it may stay paused for days), so its stream slot is freed.
            _ = reader.closed() => {}
            _ = follow(tenant, id, after, stored, live, tx) => {}
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_millis(KEEP_ALIVE_MS))
            .text("keep-alive"),
    ))
}

fn sse_event(record: &EventRecord) -> Event {
    Event::default()
        .id(record.seq.to_string())
        .event(record.event.kind())
        .data(serde_json::to_string(record).expect("events serialize"))
}

/// Sends `id`'s events after `after`: the stored ones, then live ones. Returns when the
/// execution's terminal event is sent or the reader is gone.
async fn follow(
    tenant: crate::tenant::Tenant,
    id: String,
    after: u64,
    stored: Vec<EventRecord>,
    mut live: broadcast::Receiver<EventRecord>,
    tx: mpsc::Sender<Event>,
) {
    let mut sent = after;
    // Sends what is new in `records`; true once the terminal event went out (or the reader left).
    async fn send_new(records: &[EventRecord], sent: &mut u64, tx: &mpsc::Sender<Event>) -> bool {
        for record in records {
            if record.seq <= *sent {
                continue;
            }
            debug_assert_eq!(
                record.seq,
                *sent + 1,
                "events are sent in order, without gaps"
            );
            if tx.send(sse_event(record)).await.is_err() {
                return true;
            }
            *sent = record.seq;
            if record.event.is_terminal() {
                return true;
            }
        }
        false
    }
    if send_new(&stored, &mut sent, &tx).await {
        return;
    }
    // An execution already finished before `after` has nothing more to say.
    if stored.iter().any(|r| r.event.is_terminal()) {
        return;
    }
    loop {
        let record = match live.recv().await {
            Ok(record) => Some(record),
            // Fell behind the live buffer: the store has everything.
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Some(record) = &record {
            if record.execution_id != id || record.seq <= sent {
                continue;
            }
        }
        // A lag, or a gap before this record: fill it from the store (which has it too).
        if record.as_ref().is_none_or(|r| r.seq > sent + 1) {
            match tenant.events(&id).await {
                Ok(stored) => {
                    if send_new(&stored, &mut sent, &tx).await {
                        return;
                    }
                }
                Err(e) => tracing::warn!(execution = %id, "event stream reload failed: {e}"),
            }
            continue;
        }
        let Some(record) = record else { continue };
        if send_new(std::slice::from_ref(&record), &mut sent, &tx).await {
            return;
        }
    }
}
