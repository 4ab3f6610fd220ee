//! Whether the VM's workers are up yet. The QMP server greets clients as
//! soon as the broker can answer, before the workers are started; commands
//! that need the VM wait here (within a deadline) until start-up ends, and
//! fail with its error if it failed.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ipc_proto::FlatError;

/// How long a command that arrived during start-up waits for the workers.
pub const START_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Starting,
    Up,
    Failed(String),
}

/// Start-up progress, shared by the main thread (which ends it) and the QMP
/// dispatchers (which wait for it).
#[derive(Debug)]
pub struct StartGate {
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Default for StartGate {
    fn default() -> Self {
        StartGate {
            phase: Mutex::new(Phase::Starting),
            changed: Condvar::new(),
        }
    }
}

impl StartGate {
    /// Start-up succeeded: every waiter proceeds.
    pub fn open(&self) {
        self.set(Phase::Up);
    }

    /// Start-up failed with `why`: every waiter fails with it.
    pub fn fail(&self, why: String) {
        self.set(Phase::Failed(why));
    }

    fn set(&self, p: Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if *phase == Phase::Starting {
            *phase = p;
        }
        self.changed.notify_all();
    }

    /// Waits until start-up ends, at most `limit`.
    pub fn wait(&self, limit: Duration) -> Result<(), FlatError> {
        let until = Instant::now() + limit;
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*phase {
                Phase::Up => return Ok(()),
                Phase::Failed(why) => {
                    return Err(FlatError::generic(format!(
                        "the VM could not be started: {why}"
                    )))
                }
                Phase::Starting => {}
            }
            let now = Instant::now();
            if now >= until {
                return Err(FlatError::generic(format!(
                    "the VM is still starting after {} s; try again",
                    limit.as_secs()
                )));
            }
            phase = self
                .changed
                .wait_timeout(phase, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn waiter_proceeds_when_start_up_ends_and_not_before() {
        let g = Arc::new(StartGate::default());
        assert!(g.wait(Duration::from_millis(10)).is_err());
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        g.open();
        assert!(t.join().unwrap().is_ok());
        // Once up, a later failure report changes nothing.
        g.fail("late".into());
        assert!(g.wait(Duration::ZERO).is_ok());
    }

    #[test]
    fn waiter_gets_the_start_up_error() {
        let g = StartGate::default();
        g.fail("cannot spawn the block worker".into());
        let e = g.wait(Duration::from_secs(1)).unwrap_err();
        assert!(e.desc.contains("cannot spawn the block worker"), "{e:?}");
        // Once failed, a later success report changes nothing.
        g.open();
        assert!(g.wait(Duration::ZERO).is_err());
    }
}
