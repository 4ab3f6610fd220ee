//! What jobs need from a node under a live device: per-node tracking of
//! requests in flight with drain (quiesce: new requests wait, those in
//! flight complete), a tap a job puts on the node's guest writes (a
//! mirror marks them dirty, a stream serialises them against its copies)
//! and a redirect that pivots the node's requests to another node (a
//! mirror's completion swaps the device's root under the live guest).
//!
//! The data path pays two atomic operations per request while nothing is
//! set; the lock is taken only when a tap or redirect exists.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use super::Node;

/// A job's hook on a node's guest writes (data, zeroes and discards).
pub trait Tap: Send + Sync {
    /// Runs the write of `[offset, offset + len)`: `io` does it and must be
    /// called exactly once; the tap may serialise it against its own
    /// copies, and record it after it completed.
    fn write(
        &self,
        offset: u64,
        len: u64,
        io: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()>;
}

#[derive(Default)]
struct Set {
    tap: Option<Arc<dyn Tap>>,
    redirect: Option<Arc<Node>>,
}

/// The hooks and in-flight accounting of one node.
#[derive(Default)]
pub struct Hooks {
    /// Fast path: whether `set` holds anything.
    any: AtomicBool,
    set: RwLock<Set>,
    inflight: AtomicUsize,
    quiesced: AtomicUsize,
    wait: Mutex<()>,
    cv: Condvar,
}

/// One request in flight on a node (dropped when it completes).
pub struct InFlight<'a>(&'a Hooks);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A drained node: new requests wait until this is dropped.
pub struct Drained<'a>(&'a Hooks);

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        let _g = self.0.wait.lock().unwrap_or_else(|p| p.into_inner());
        self.0.quiesced.fetch_sub(1, Ordering::SeqCst);
        self.0.cv.notify_all();
    }
}

impl Hooks {
    /// Counts a request in; waits while the node is drained.
    pub fn enter(&self) -> InFlight<'_> {
        loop {
            self.inflight.fetch_add(1, Ordering::SeqCst);
            if self.quiesced.load(Ordering::SeqCst) == 0 {
                return InFlight(self);
            }
            self.leave();
            let mut g = self.wait.lock().unwrap_or_else(|p| p.into_inner());
            while self.quiesced.load(Ordering::SeqCst) > 0 {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Counts a request in without waiting (the asynchronous engine's,
    /// which only starts while the node is neither drained nor hooked).
    pub fn enter_async(&self) -> bool {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        if self.quiesced.load(Ordering::SeqCst) == 0 && !self.any.load(Ordering::SeqCst) {
            return true;
        }
        self.leave();
        false
    }

    /// Counts an asynchronous request out.
    pub fn leave(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.quiesced.load(Ordering::SeqCst) > 0
        {
            let _g = self.wait.lock().unwrap_or_else(|p| p.into_inner());
            self.cv.notify_all();
        }
    }

    /// Drains the node: from now on new requests wait; returns once every
    /// request in flight completed.
    pub fn drain(&self) -> Drained<'_> {
        self.quiesced.fetch_add(1, Ordering::SeqCst);
        let d = Drained(self);
        let mut g = self.wait.lock().unwrap_or_else(|p| p.into_inner());
        while self.inflight.load(Ordering::SeqCst) > 0 {
            let (ng, t) = self
                .cv
                .wait_timeout(g, Duration::from_secs(5))
                .unwrap_or_else(|p| p.into_inner());
            g = ng;
            if t.timed_out() {
                tracing::warn!(
                    "drain: still {} requests in flight",
                    self.inflight.load(Ordering::SeqCst)
                );
            }
        }
        d
    }

    /// Whether a tap or redirect is set (the asynchronous engine then
    /// leaves the node's requests to the synchronous path).
    pub fn hooked(&self) -> bool {
        self.any.load(Ordering::SeqCst)
    }

    /// The tap, if one is set.
    pub fn tap(&self) -> Option<Arc<dyn Tap>> {
        if !self.hooked() {
            return None;
        }
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tap
            .clone()
    }

    /// The node requests go to instead, if the node was pivoted.
    pub fn redirect(&self) -> Option<Arc<Node>> {
        if !self.hooked() {
            return None;
        }
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .redirect
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Set)) {
        let mut s = self.set.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        self.any
            .store(s.tap.is_some() || s.redirect.is_some(), Ordering::SeqCst);
    }

    /// Sets (or clears) the tap. Call it with the node drained, so no
    /// request in flight escapes it.
    pub fn set_tap(&self, tap: Option<Arc<dyn Tap>>) {
        self.update(|s| s.tap = tap);
    }

    /// Sends every later request to `to` (call it drained).
    pub fn set_redirect(&self, to: Option<Arc<Node>>) {
        self.update(|s| s.redirect = to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_waits_for_requests_in_flight_and_holds_new_ones() {
        let h = Arc::new(Hooks::default());
        let req = h.enter();
        let h2 = h.clone();
        let drained = Arc::new(AtomicBool::new(false));
        let d2 = drained.clone();
        let t = std::thread::spawn(move || {
            let _d = h2.drain();
            d2.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !drained.load(Ordering::SeqCst),
            "drain ended with a request in flight"
        );
        drop(req);
        while !drained.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A new request waits for the drained section to end.
        let _r = h.enter();
        t.join().unwrap();
        assert!(!h.enter_async() || !h.hooked());
    }
}
