//! The control block a job thread shares with the IPC loop: pause,
//! cancel, complete and the speed limit (QEMU's `ratelimit`: bytes per
//! second over the time since the limit was set).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Ctl {
    paused: bool,
    cancel: Option<bool>,
    complete: bool,
    speed: u64,
    window: (Instant, u64),
    kicked: bool,
}

/// What the job should do at its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go on.
    Go,
    /// Stop: cancelled (`force` as given).
    Cancel {
        /// `force`.
        force: bool,
    },
}

/// Shared between a job's thread and the requests that control it.
#[derive(Debug)]
pub struct Control {
    st: Mutex<Ctl>,
    cv: Condvar,
    finished: std::sync::atomic::AtomicBool,
}

impl Control {
    /// A control block with `speed` bytes/s (0: unlimited).
    pub fn new(speed: u64, paused: bool) -> Self {
        Control {
            st: Mutex::new(Ctl {
                paused,
                cancel: None,
                complete: false,
                speed,
                window: (Instant::now(), 0),
                kicked: false,
            }),
            cv: Condvar::new(),
            finished: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Called by the job thread just before it reports its end.
    pub fn mark_finished(&self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the job thread reported its end.
    pub fn finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses (or resumes) the job at its next step.
    pub fn set_paused(&self, p: bool) {
        self.lock().paused = p;
        self.cv.notify_all();
    }

    /// Asks the job to stop.
    pub fn cancel(&self, force: bool) {
        self.lock().cancel = Some(force);
        self.cv.notify_all();
    }

    /// The cancel asked, if any (`Some(force)`).
    pub fn cancelled(&self) -> Option<bool> {
        self.lock().cancel
    }

    /// Asks a ready mirror to end.
    pub fn complete(&self) {
        self.lock().complete = true;
        self.cv.notify_all();
    }

    /// Whether completion was asked.
    pub fn completing(&self) -> bool {
        self.lock().complete
    }

    /// A new speed limit (restarts the accounting window).
    pub fn set_speed(&self, speed: u64) {
        let mut s = self.lock();
        s.speed = speed;
        s.window = (Instant::now(), 0);
        drop(s);
        self.cv.notify_all();
    }

    /// Wakes a job waiting for work (new dirty data).
    pub fn kick(&self) {
        self.lock().kicked = true;
        self.cv.notify_all();
    }

    /// Waits up to `t` for a kick or a control change.
    pub fn wait_kick(&self, t: Duration) {
        let mut s = self.lock();
        if !s.kicked && s.cancel.is_none() && !s.complete {
            s = self
                .cv
                .wait_timeout(s, t)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.kicked = false;
    }

    /// Waits while paused; tells whether to go on.
    pub fn gate(&self) -> Gate {
        let mut s = self.lock();
        loop {
            if let Some(force) = s.cancel {
                return Gate::Cancel { force };
            }
            if !s.paused {
                return Gate::Go;
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// How much to copy in one step: `max`, or less under a speed limit
    /// (a tenth of a second's worth, in whole `unit`s), so the limit holds
    /// from the first step on.
    pub fn step(&self, max: u64, unit: u64) -> u64 {
        let speed = self.lock().speed;
        if speed == 0 {
            return max;
        }
        (speed / 10 / unit * unit).clamp(unit, max.max(unit))
    }

    /// Accounts `bytes` copied and sleeps as long as the speed limit
    /// asks (woken early by a control change).
    pub fn throttle(&self, bytes: u64) {
        let mut s = self.lock();
        s.window.1 += bytes;
        loop {
            if s.speed == 0 || s.cancel.is_some() || s.paused {
                return;
            }
            let due = Duration::from_secs_f64(s.window.1 as f64 / s.speed as f64);
            let spent = s.window.0.elapsed();
            if spent >= due {
                return;
            }
            s = self
                .cv
                .wait_timeout(s, due - spent)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_holds_copies_to_the_speed() {
        let c = Control::new(10 << 20, false);
        let t = Instant::now();
        for _ in 0..4 {
            c.throttle(1 << 20);
        }
        // 4 MiB at 10 MiB/s: at least 0.4 s.
        assert!(t.elapsed() >= Duration::from_millis(390));
        c.set_speed(0);
        let t = Instant::now();
        c.throttle(1 << 30);
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_paused_job_waits_and_cancel_wins() {
        let c = std::sync::Arc::new(Control::new(0, true));
        let c2 = c.clone();
        let h = std::thread::spawn(move || c2.gate());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.is_finished());
        c.cancel(true);
        assert_eq!(h.join().unwrap(), Gate::Cancel { force: true });
    }
}
