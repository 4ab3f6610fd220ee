//! QEMU's rate limit of chatty events (`monitor_qapi_event_queue`): the
//! first event of a key goes out at once; later ones within the period
//! are held, only the newest kept, and sent when the period ends (which
//! starts a new period); a period without events ends the key's state.
//! QEMU throttles `QUORUM_REPORT_BAD` per node-name and `QUORUM_FAILURE`
//! per event, 1 s each. The timers are plain threads that live only while
//! a key has events within its period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::events::EventBus;

/// QEMU's period for its rate-limited events.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Held events by key (event name plus the key member's value).
pub struct EventThrottle {
    bus: Arc<EventBus>,
    period: Duration,
    held: Mutex<HashMap<String, Option<(String, Value)>>>,
}

impl EventThrottle {
    /// A throttle emitting on `bus` with `period`.
    pub fn new(bus: Arc<EventBus>, period: Duration) -> Arc<Self> {
        Arc::new(EventThrottle {
            bus,
            period,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<(String, Value)>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emits `event` with `data`, rate limited per `key`.
    pub fn emit(self: &Arc<Self>, event: &str, key: &str, data: Value) {
        let k = format!("{event}\u{0}{key}");
        {
            let mut held = self.lock();
            if let Some(slot) = held.get_mut(&k) {
                *slot = Some((event.to_owned(), data));
                return;
            }
            held.insert(k.clone(), None);
        }
        self.bus.emit(event, Some(data));
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("event-throttle".into())
            .spawn(move || me.run_period(&k));
        if let Err(e) = spawned {
            // Without a timer the key would stay held forever.
            tracing::warn!("event throttle timer: {e}; events of {event} not held");
            self.lock().remove(&format!("{event}\u{0}{key}"));
        }
    }

    fn run_period(&self, k: &str) {
        loop {
            std::thread::sleep(self.period);
            let next = {
                let mut held = self.lock();
                match held.get_mut(k).and_then(Option::take) {
                    Some(e) => e,
                    None => {
                        held.remove(k);
                        return;
                    }
                }
            };
            self.bus.emit(&next.0, Some(next.1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(rx: &std::sync::mpsc::Receiver<Arc<str>>) -> Vec<Value> {
        rx.try_iter()
            .map(|l| serde_json::from_str::<Value>(&l).unwrap()["data"].clone())
            .collect()
    }

    #[test]
    fn the_first_goes_at_once_the_newest_of_the_rest_at_the_period_end() {
        let bus = Arc::new(EventBus::new());
        let sub = bus.subscribe();
        let t = EventThrottle::new(bus.clone(), Duration::from_millis(200));
        for i in 0..5 {
            t.emit("QUORUM_REPORT_BAD", "b", json!({"n": i}));
        }
        t.emit("QUORUM_REPORT_BAD", "c", json!({"n": 10}));
        assert_eq!(names(&sub.rx), vec![json!({"n": 0}), json!({"n": 10})]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(names(&sub.rx), vec![json!({"n": 4})]);
        // A quiet period ends the key: the next event goes at once.
        std::thread::sleep(Duration::from_millis(500));
        t.emit("QUORUM_REPORT_BAD", "b", json!({"n": 5}));
        assert_eq!(names(&sub.rx), vec![json!({"n": 5})]);
    }
}
