//! net-proc's life in the broker: started when the first TAP netdev is
//! added (a VM without one runs no net-proc), restarted with the
//! supervisor's backoff when it exits, and rebuilt from the desired state
//! before it serves: every TAP netdev (the broker keeps the fds) and NIC
//! replayed in creation order, then each NIC's device reconnected.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::{trace_point, FlatError, WorkerKind};
use serde_json::json;

use crate::machine::policy::{self, Cause, StartError};
use crate::machine::{devices, event_names, lock, Machine, NetLink};
use crate::trace;
use crate::workers::supervisor::{ExitStatus, WorkerExit};

/// The longest uninterrupted sleep of a restart's backoff.
const STEP: Duration = Duration::from_millis(20);

/// The live net-proc's link, starting net-proc first if none runs.
pub fn link(m: &Machine) -> Result<Arc<NetLink>, FlatError> {
    if let Some(l) = current(m) {
        return Ok(l);
    }
    let me = m
        .arc()
        .ok_or_else(|| FlatError::generic("the VM is shutting down"))?;
    let _start = lock(&me.net_start);
    if let Some(l) = current(&me) {
        return Ok(l);
    }
    start(&me).map_err(|e| {
        FlatError::generic(format!(
            "cannot start the network worker: {}",
            ipc_proto::envelope::error_chain(&e)
        ))
    })?;
    current(&me).ok_or_else(|| FlatError::generic("the network worker exited at once"))
}

fn current(m: &Machine) -> Option<Arc<NetLink>> {
    lock(&m.net)
        .as_ref()
        .filter(|w| !w.link.is_broken())
        .map(|w| w.link.clone())
}

/// Sends `req` (with `fds`) to net-proc, starting it if needed.
pub fn request(
    m: &Machine,
    req: NetRequest,
    fds: &[BorrowedFd<'_>],
) -> Result<NetReply, FlatError> {
    link(m)?.request(req, fds)
}

/// Sends `req` to net-proc only if it runs (None otherwise).
pub fn request_if_running(m: &Machine, req: NetRequest) -> Option<Result<NetReply, FlatError>> {
    current(m).map(|l| l.request(req, &[]))
}

/// Spawns net-proc, replays the desired state into it and publishes it.
fn start(m: &Arc<Machine>) -> Result<(), StartError> {
    let (proc, link) = policy::bring_up(m, WorkerKind::Net, |m: &Arc<Machine>, e| on_event(m, e))?;
    crate::machine::trace_state::replay_net(m, &link);
    super::replay_on(m, &link).map_err(|e| StartError::Refused("net", e))?;
    policy::publish(m, &m.net, proc, link, WorkerKind::Net)
}

fn on_event(m: &Arc<Machine>, e: NetEvent) {
    match e {
        NetEvent::LinkChanged { id, up } => {
            tracing::info!("NIC {id}: link {}", if up { "up" } else { "down" })
        }
        NetEvent::MacChanged { id, mac } => super::mac_changed(m, &id, mac),
        NetEvent::NicConnected { id } => tracing::info!("NIC {id}: frontend connected"),
        NetEvent::NicDisconnected { id } => tracing::info!("NIC {id}: frontend disconnected"),
    }
}

/// net-proc `generation` exited: restart it (with the block worker's
/// backoff rules) and reconnect the NICs.
pub fn on_exit(
    m: &Arc<Machine>,
    exit: &WorkerExit,
    generation: u64,
    hung: bool,
    note: Option<sandbox::DeathNote>,
) {
    let _owner = lock(&m.net_start);
    if m.is_ending() {
        return;
    }
    {
        let mut slot = lock(&m.net);
        if slot.as_ref().map(|w| w.generation) != Some(generation) {
            return;
        }
        let stale = slot.take();
        drop(slot);
        drop(stale);
    }
    m.events().emit(
        event_names::WORKER_EXITED,
        Some(policy::exit_data(exit, "restart", note, hung)),
    );
    let down_since = Instant::now();
    let mut cause = match exit.status {
        ExitStatus::Signal(libc::SIGKILL) if !hung => Cause::Killed,
        ExitStatus::Signal(_) | ExitStatus::Code(_) => Cause::Failed,
    };
    loop {
        let delay = lock(&m.netdevs).restart.next_delay(Instant::now(), cause);
        cause = Cause::Failed;
        let until = Instant::now() + delay;
        while Instant::now() < until && !m.is_ending() {
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(STEP));
        }
        if m.is_ending() {
            return;
        }
        match start(m) {
            Ok(()) => break,
            Err(e) => tracing::error!(
                "restarting the net worker failed: {}",
                ipc_proto::envelope::error_chain(&e)
            ),
        }
    }
    let pid = lock(&m.net).as_ref().map(|w| w.process.pid).unwrap_or(0);
    let restarts = lock(&m.netdevs).restart.restarts;
    trace_point!(trace::worker_restart("net", pid, restarts));
    m.events().emit(
        event_names::WORKER_RESTARTED,
        Some(json!({
            "worker": "net",
            "pid": pid,
            "restarts": restarts,
            "downtime-ms": down_since.elapsed().as_millis() as u64,
        })),
    );
    devices::reconnect_nics(m);
}
