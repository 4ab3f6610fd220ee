//! The switches' desired state (`-device rocker`) and the net-proc that
//! runs them: the broker opens each port's TAP once (`/dev/net/tun`,
//! `IFF_TAP|IFF_NO_PI`, it has the authority), keeps the fds for its whole
//! life, brings net-proc up with every switch created, and — net-proc
//! SIGKILLed or crashed — restarts it (the block worker's backoff) and
//! replays every switch with the same fds; learned MACs come back from
//! traffic.
//!
//! Kept apart from the guest NIC's netdev layer; that layer can own the
//! TAPs and the net-proc slot later, this file then keeps the replay.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::rocker::{RockerReply, RockerRequest, SwitchSpec};
use ipc_proto::{trace_point, FlatError, WorkerKind};
use serde_json::json;

use super::policy::{self, Backoff, Cause, StartError};
use super::{event_names, lock, Machine, Worker};
use crate::cli::rocker::DEFAULT_AGEING_SECS;
use crate::trace;
use crate::workers::link::WorkerLink;
use crate::workers::supervisor::{ExitStatus, WorkerExit};

/// The net-proc link.
pub type NetLink = WorkerLink<NetRequest, NetReply, NetEvent>;

/// net-proc and the TAPs of the switches.
#[derive(Default)]
pub struct RockerState {
    pub(crate) net: Mutex<Option<Worker<NetLink>>>,
    /// Each netdev's TAP fd, opened at start.
    taps: Mutex<Vec<(String, OwnedFd)>>,
    restart: Mutex<Backoff>,
    /// Held by the exit handler restarting net-proc, and by the stop.
    owner: Mutex<()>,
}

/// `ioctl(TUNSETIFF)` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as `TUNSETIFF` reads it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (or creates, as QEMU) TAP interface `ifname` without packet
/// information or vnet header: one read or write is one frame.
pub fn open_tap(ifname: &str) -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "invalid interface name",
        ));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is one
    // (40 bytes, C layout) and lives for the call; the fd is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

impl RockerState {
    /// The current net-proc link, if it is up.
    pub fn link(&self) -> Option<Arc<NetLink>> {
        lock(&self.net).as_ref().map(|w| w.link.clone())
    }

    /// Takes the worker out for the broker's stop (the caller closes and
    /// stops it); a restart in progress finishes first.
    pub fn take_worker(&self) -> Option<Worker<NetLink>> {
        let _owner = lock(&self.owner);
        lock(&self.net).take()
    }
}

/// Opens the TAPs and brings net-proc up with every switch, when the
/// command line has switches (otherwise net-proc is not started here).
pub fn start(m: &Arc<Machine>) -> Result<(), StartError> {
    let cfg = &m.config().rocker;
    for n in &cfg.netdevs {
        if !cfg.switches.iter().any(|s| s.ports.contains(&n.id)) {
            // QEMU's warning; such a TAP is not opened (nothing would
            // read or write it).
            eprintln!("bulkhead: warning: netdev {} has no peer", n.id);
        }
    }
    if cfg.switches.is_empty() {
        return Ok(());
    }
    {
        let mut taps = lock(&m.rocker.taps);
        for n in &cfg.netdevs {
            // QEMU's message.
            let fd = open_tap(&n.ifname).map_err(|e| {
                StartError::Device(FlatError::generic(format!(
                    "-netdev tap,id={}: could not configure /dev/net/tun ({}): {e}",
                    n.id, n.ifname
                )))
            })?;
            taps.push((n.id.clone(), fd));
        }
    }
    start_net(m)
}

/// Spawns net-proc, replays every switch into it and publishes it.
fn start_net(m: &Arc<Machine>) -> Result<(), StartError> {
    let (proc, link): (_, Arc<NetLink>) = policy::bring_up(m, WorkerKind::Net, |_m, e| {
        tracing::debug!("net-proc event {e:?}");
    })?;
    replay(m, &link).map_err(|e| StartError::Refused("net", e))?;
    policy::publish(m, &m.rocker.net, proc, link, WorkerKind::Net)
}

/// Creates every switch of the configuration in `link`'s net-proc.
fn replay(m: &Machine, link: &NetLink) -> Result<(), FlatError> {
    let taps = lock(&m.rocker.taps);
    for s in &m.config().rocker.switches {
        let fds: Vec<_> = s
            .ports
            .iter()
            .filter_map(|p| {
                taps.iter()
                    .find(|(id, _)| id == p)
                    .map(|(_, fd)| fd.as_fd())
            })
            .collect();
        let spec = SwitchSpec {
            name: s.name.clone(),
            id: s.id,
            ports: s.ports.clone(),
            ageing_secs: DEFAULT_AGEING_SECS,
        };
        match link.request(NetRequest::Rocker(RockerRequest::Create(spec)), &fds)? {
            NetReply::Rocker(RockerReply::Done) => {}
            other => return Err(super::unexpected_reply(&other)),
        }
    }
    Ok(())
}

/// How long to wait between checks of `ending` during a backoff.
const STEP: Duration = Duration::from_millis(20);

/// net-proc exited: if it is the current one, restart it and replay.
pub fn on_exit(m: &Arc<Machine>, exit: &WorkerExit, generation: u64, data: serde_json::Value) {
    let _owner = lock(&m.rocker.owner);
    if m.is_ending() {
        return;
    }
    let stale = {
        let mut slot = lock(&m.rocker.net);
        if slot.as_ref().map(|w| w.generation) != Some(generation) {
            return;
        }
        slot.take()
    };
    drop(stale);
    m.events().emit(event_names::WORKER_EXITED, Some(data));
    let down_since = Instant::now();
    let mut cause = match exit.status {
        ExitStatus::Signal(libc::SIGKILL) => Cause::Killed,
        ExitStatus::Signal(_) | ExitStatus::Code(_) => Cause::Failed,
    };
    loop {
        let delay = lock(&m.rocker.restart).next_delay(Instant::now(), cause);
        cause = Cause::Failed;
        let until = Instant::now() + delay;
        while Instant::now() < until && !m.is_ending() {
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(STEP));
        }
        if m.is_ending() {
            return;
        }
        match start_net(m) {
            Ok(()) => {
                let pid = lock(&m.rocker.net).as_ref().map_or(0, |w| w.process.pid);
                let restarts = lock(&m.rocker.restart).restarts;
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
                return;
            }
            Err(e) => tracing::error!(
                "restarting the net worker failed: {}",
                ipc_proto::envelope::error_chain(&e)
            ),
        }
    }
}
