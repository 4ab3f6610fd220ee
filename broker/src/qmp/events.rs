//! QMP events: an [`EventBus`] fans each event out to every negotiated
//! session through a bounded queue per session, so a slow or stuck client
//! never stalls the broker or other clients: a session whose queue is full
//! is marked overflowed and disconnected by its session.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::wire::event_line;

/// How many serialized messages may wait for one session.
pub const SESSION_QUEUE_DEPTH: usize = 4096;

/// One session's subscription: the receiving end of its queue.
pub struct Subscription {
    /// Serialized event lines (without trailing newline).
    pub rx: Receiver<Arc<str>>,
    /// Set when an event had to be dropped because the queue was full.
    pub overflowed: Arc<std::sync::atomic::AtomicBool>,
}

/// Called when a subscriber's queue overflows (the session disconnects).
pub type OverflowHook = Box<dyn Fn() + Send + Sync>;

struct Subscriber {
    tx: SyncSender<Arc<str>>,
    overflowed: Arc<std::sync::atomic::AtomicBool>,
    on_overflow: Option<OverflowHook>,
}

/// Delivers events to every subscribed session.
#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl EventBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes a session (call once it has negotiated capabilities).
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = sync_channel(SESSION_QUEUE_DEPTH);
        let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.lock().push(Subscriber {
            tx,
            overflowed: overflowed.clone(),
            on_overflow: None,
        });
        Subscription { rx, overflowed }
    }

    /// Subscribes a session that merges events into its own output queue
    /// `tx` (shared with its replies). If the queue is full when an event
    /// arrives, the session is dropped from the bus, `on_overflow` runs
    /// (the session disconnects) and the returned flag is set.
    pub fn subscribe_sender(
        &self,
        tx: SyncSender<Arc<str>>,
        on_overflow: OverflowHook,
    ) -> Arc<std::sync::atomic::AtomicBool> {
        let overflowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.lock().push(Subscriber {
            tx,
            overflowed: overflowed.clone(),
            on_overflow: Some(on_overflow),
        });
        overflowed
    }

    /// Emits `event` with optional `data` to every subscriber, stamped with
    /// the current time as QEMU does (`{"seconds", "microseconds"}`).
    pub fn emit(&self, event: &str, data: Option<Value>) {
        let line: Arc<str> = event_line(event, data.as_ref(), SystemTime::now()).into();
        self.lock().retain(|s| match s.tx.try_send(line.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.overflowed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(hook) = &s.on_overflow {
                    hook();
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds an event object as QMP sends it (the bus itself writes the line
/// directly in QEMU's member order, see [`event_line`]).
pub fn event_json(event: &str, data: Option<Value>, at: SystemTime) -> Value {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut obj = json!({
        "event": event,
        "timestamp": {"seconds": since.as_secs(), "microseconds": since.subsec_micros()},
    });
    if let (Some(d), Some(map)) = (data, obj.as_object_mut()) {
        map.insert("data".into(), d);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_reaches_every_subscriber_with_timestamp() {
        let bus = EventBus::new();
        let a = bus.subscribe();
        let b = bus.subscribe();
        bus.emit("STOP", None);
        for s in [a, b] {
            let v: Value = serde_json::from_str(&s.rx.recv().unwrap()).unwrap();
            assert_eq!(v["event"], "STOP");
            assert!(v["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
            assert!(v["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
            assert!(v.get("data").is_none());
        }
    }

    #[test]
    fn full_queue_marks_subscriber_overflowed_and_drops_it() {
        let bus = EventBus::new();
        let slow = bus.subscribe();
        for _ in 0..SESSION_QUEUE_DEPTH + 1 {
            bus.emit("RESUME", Some(json!({})));
        }
        assert!(slow.overflowed.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(bus.lock().len(), 0);
    }
}
