//! The in-process event bus: committed events are handed to every subscriber, in commit
//! order. Subscribers are plain callbacks and must not block (print, push to a channel or a
//! vector); a test captures events by subscribing a closure that appends to a list.

use std::sync::{Arc, Mutex};

use crate::event::{EventRecord, SystemEvent};

/// Bound on subscribers: they are long-lived observers (a CLI printer, a test capture, an API
/// stream), not per-request objects.
pub const MAX_SUBSCRIBERS: usize = 64;

type Subscriber = Arc<dyn Fn(&EventRecord) + Send + Sync>;
type SystemSubscriber = Arc<dyn Fn(&SystemEvent) + Send + Sync>;

#[derive(Clone, Default)]
pub struct EventBus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    system: Arc<Mutex<Vec<SystemSubscriber>>>,
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus::default()
    }

    /// Adds a subscriber. Panics past [`MAX_SUBSCRIBERS`]: that is a leak, not load.
    pub fn subscribe(&self, f: impl Fn(&EventRecord) + Send + Sync + 'static) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            subs.len() < MAX_SUBSCRIBERS,
            "too many event bus subscribers"
        );
        subs.push(Arc::new(f));
    }

    /// A subscriber that collects every event; returns the shared list.
    pub fn capture(&self) -> Arc<Mutex<Vec<EventRecord>>> {
        let list = Arc::new(Mutex::new(Vec::new()));
        let sink = list.clone();
        self.subscribe(move |e| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.clone())
        });
        list
    }

    /// Adds a subscriber to engine-level events (recovery). Same bound as [`EventBus::subscribe`].
    pub fn subscribe_system(&self, f: impl Fn(&SystemEvent) + Send + Sync + 'static) {
        let mut subs = self.system.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            subs.len() < MAX_SUBSCRIBERS,
            "too many event bus subscribers"
        );
        subs.push(Arc::new(f));
    }

    /// A subscriber that collects every engine-level event; returns the shared list.
    pub fn capture_system(&self) -> Arc<Mutex<Vec<SystemEvent>>> {
        let list = Arc::new(Mutex::new(Vec::new()));
        let sink = list.clone();
        self.subscribe_system(move |e| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.clone())
        });
        list
    }

    pub fn publish_system(&self, event: SystemEvent) {
        let subs = self
            .system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for sub in &subs {
            sub(&event);
        }
    }

    pub fn publish(&self, events: &[EventRecord]) {
        if events.is_empty() {
            return;
        }
        let subs = self
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for event in events {
            for sub in &subs {
                sub(event);
            }
        }
    }
}
