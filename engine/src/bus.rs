//! The in-process event bus: committed events are handed to every subscriber, in commit
//! order. Subscribers are plain callbacks and must not block (print, push to a channel or a
//! vector); a test captures events by subscribing a closure that appends to a list.

use std::sync::{Arc, Mutex};

use crate::event::{EventRecord, SystemEvent};

/// Bound on subscribers: they are long-lived observers (a CLI printer, a test capture, an API
/// stream), not per-request objects.
pub const MAX_SUBSCRIBERS: usize = 64;

type Callback<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// A bounded list of callbacks for one kind of event.
struct Subscribers<T: ?Sized> {
    list: Mutex<Vec<Callback<T>>>,
}

impl<T: Clone + Send + 'static> Subscribers<T> {
    fn new() -> Subscribers<T> {
        Subscribers {
            list: Mutex::new(Vec::new()),
        }
    }

    /// Panics past [`MAX_SUBSCRIBERS`]: that is a leak, not load.
    fn add(&self, f: Callback<T>) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            list.len() < MAX_SUBSCRIBERS,
            "too many event bus subscribers"
        );
        list.push(f);
    }

    /// A subscriber that collects everything; returns the shared list.
    fn capture(&self) -> Arc<Mutex<Vec<T>>> {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        self.add(Arc::new(move |e: &T| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.clone())
        }));
        captured
    }

    fn publish<'a>(&self, events: impl IntoIterator<Item = &'a T>)
    where
        T: 'a,
    {
        // Call outside the lock so a subscriber may subscribe without deadlocking.
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for event in events {
            for f in &list {
                f(event);
            }
        }
    }
}

#[derive(Clone)]
pub struct EventBus {
    events: Arc<Subscribers<EventRecord>>,
    system: Arc<Subscribers<SystemEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            events: Arc::new(Subscribers::new()),
            system: Arc::new(Subscribers::new()),
        }
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus::default()
    }

    /// Adds a subscriber to committed execution events.
    pub fn subscribe(&self, f: impl Fn(&EventRecord) + Send + Sync + 'static) {
        self.events.add(Arc::new(f));
    }

    /// A subscriber that collects every execution event; returns the shared list.
    pub fn capture(&self) -> Arc<Mutex<Vec<EventRecord>>> {
        self.events.capture()
    }

    /// Adds a subscriber to engine-level events (recovery).
    pub fn subscribe_system(&self, f: impl Fn(&SystemEvent) + Send + Sync + 'static) {
        self.system.add(Arc::new(f));
    }

    /// A subscriber that collects every engine-level event; returns the shared list.
    pub fn capture_system(&self) -> Arc<Mutex<Vec<SystemEvent>>> {
        self.system.capture()
    }

    pub fn publish_system(&self, event: SystemEvent) {
        self.system.publish([&event]);
    }

    pub fn publish(&self, events: &[EventRecord]) {
        self.events.publish(events);
    }
}
