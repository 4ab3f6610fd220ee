//! Finding hung workers. A worker that is alive but does not serve (its
//! IPC loop wedged, or the process stopped) is not seen by the supervisor,
//! which only learns of exits; so the broker pings every worker on its
//! control channel (a request its IPC loop answers at once). A worker that
//! leaves a ping unanswered for the worker timeout is declared hung and
//! SIGKILLed; its exit then takes the crash path of its kind (block-proc
//! restarted and replayed, vcpu-proc a guest crash), with `"reason":
//! "hung"` in `__org.bulkhead_WORKER_EXITED`. A worker stopped for less
//! than the timeout answers the ping late and is left alone, and so is one
//! busy with a set-up request (see [`crate::workers::link::SETUP_EXTRA`]).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ipc_proto::WorkerKind;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{lock, Machine, Worker};
use crate::workers::link::{LinkError, Liveness, WorkerLink};

/// How often each worker is pinged for a worker timeout of `timeout`.
pub fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

type Slot<L> = fn(&Machine) -> &Mutex<Option<Worker<L>>>;

/// Starts one pinger thread per worker slot of `m`.
pub fn start(m: &Arc<Machine>) {
    spawn(m, WorkerKind::Vcpu, |m| &m.vcpu);
    spawn(m, WorkerKind::Block, |m| &m.block);
    spawn(m, WorkerKind::Net, |m| &m.net);
}

fn spawn<R, P, E>(m: &Arc<Machine>, kind: WorkerKind, slot: Slot<WorkerLink<R, P, E>>)
where
    R: Liveness + Serialize + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    let weak = Arc::downgrade(m);
    let started = std::thread::Builder::new()
        .name(format!("{}-liveness", kind.name()))
        .spawn(move || run(&weak, kind, slot));
    if let Err(e) = started {
        tracing::error!(
            "cannot start the {} worker's liveness check: {e}",
            kind.name()
        );
    }
}

fn run<R, P, E>(weak: &Weak<Machine>, kind: WorkerKind, slot: Slot<WorkerLink<R, P, E>>)
where
    R: Liveness + Serialize + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    loop {
        let Some(m) = weak.upgrade() else { return };
        let timeout = m.worker_timeout();
        drop(m);
        std::thread::sleep(ping_interval(timeout));
        let Some(m) = weak.upgrade() else { return };
        if m.is_ending() {
            return;
        }
        let current = lock(slot(&m))
            .as_ref()
            .map(|w| (w.generation, w.link.clone(), w.process.pid));
        let Some((generation, link, pid)) = current else {
            continue;
        };
        let busy = link.setting_up();
        match link.ping(timeout) {
            // An exit is the supervisor's to handle.
            Ok(()) | Err(LinkError::Gone(_)) => {}
            // Busy with a set-up request that has its own deadline; once
            // that has passed, a hung worker fails the next ping.
            Err(_) if busy || link.setting_up() => {}
            Err(e @ (LinkError::NoAnswer(..) | LinkError::Send(..))) => {
                let slot = lock(slot(&m));
                let still_current = slot.as_ref().filter(|w| w.generation == generation);
                if let (Some(w), false) = (still_current, m.is_ending()) {
                    tracing::error!(
                        "{} worker (pid {pid}) is hung ({e}): killing it",
                        kind.name()
                    );
                    m.mark_hung(pid);
                    w.process.signal(libc::SIGKILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_come_several_times_per_timeout_within_bounds() {
        assert_eq!(
            ping_interval(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            ping_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            ping_interval(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
