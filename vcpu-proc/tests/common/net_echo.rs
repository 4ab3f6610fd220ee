//! An echo NIC: a minimal vhost-user-net backend, in the test process,
//! that answers the `net` guests' pings (`test-guests/net/src/frame.rs`)
//! itself — a PING taken from the transmitq comes back on the receiveq as
//! a PONG from [`HOST_MAC`], over as many receive buffers as it takes
//! (MRG_RXBUF). It offers VERSION_1 and MRG_RXBUF and no
//! protocol feature at all (no CONFIG, no MQ, no INFLIGHT_SHMFD, no
//! REPLY_ACK), so the frontend builds the config space from `mac=` and
//! resumes the rings from the used index after a crash.
//!
//! The protocol bookkeeping is the backends' own
//! (`vhost_backend_common::backend`, a dev-dependency: no worker crate);
//! the echo is only its device half, written by hand so that the test
//! knows its every step: one thread serves both rings once both started,
//! walking them with `vm-memory` directly (split rings, no indirect
//! descriptors).

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ipc_proto::trace::TracePoint;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{BackendReqHandler, Error as VuError, Result as VuResult};
use vhost_backend_common::backend::{BackendDevice, ReadyQueue, RunningQueue, VhostBackend};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The guests' test frames.
#[path = "../../../test-guests/net/src/frame.rs"]
pub mod frame;

/// The echo's MAC.
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const VERSION_1: u64 = 1 << 32;
const MRG_RXBUF: u64 = 1 << 15;
const HDR_LEN: usize = 12;
const RX: usize = 0;
const TX: usize = 1;

/// A ring being served: guest addresses and positions.
#[derive(Clone, Copy)]
struct Live {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

/// What the echo counted.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Pings answered.
    pub echoed: AtomicU64,
    /// Pings dropped for want of a receive buffer.
    pub dropped: AtomicU64,
}

/// A started ring: where it is, its fds, the memory it lives in.
struct Started {
    live: Live,
    kick: File,
    call: Option<File>,
    mem: Arc<GuestMemoryMmap>,
}

/// The rings the handler started, and the thread serving both once both
/// are (it hands their positions back when it stops).
#[derive(Default)]
struct Rings {
    started: [Option<Started>; 2],
    worker: Option<Worker>,
}

struct Worker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<[Live; 2]>,
}

impl Rings {
    fn stop_worker(&mut self) {
        let Some(w) = self.worker.take() else { return };
        w.stop.store(true, Ordering::SeqCst);
        if let Ok(live) = w.thread.join() {
            for (s, l) in self.started.iter_mut().zip(live) {
                if let Some(s) = s {
                    s.live = l;
                }
            }
        }
    }

    /// Starts serving once both rings started, each with a call fd.
    fn maybe_spawn(&mut self, merge: bool, stats: &Arc<EchoStats>) -> std::io::Result<()> {
        let [Some(rx), Some(tx)] = &self.started else {
            return Ok(());
        };
        let (Some(_), Some(call)) = (&rx.call, &tx.call) else {
            return Ok(());
        };
        if self.worker.is_some() {
            return Ok(());
        }
        let live = [rx.live, tx.live];
        let kicks = vec![rx.kick.try_clone()?, tx.kick.try_clone()?];
        let (call, mem) = (call.try_clone()?, tx.mem.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, stats) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || serve(&mem, merge, live, kicks, call, &s, &stats));
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }
}

/// One ring as the handler holds it while it runs.
struct EchoQueue {
    index: usize,
    rings: Arc<Mutex<Rings>>,
}

impl RunningQueue for EchoQueue {
    fn stop(self) -> u16 {
        let mut rings = self.rings.lock().unwrap();
        rings.stop_worker();
        rings.started[self.index]
            .take()
            .map_or(0, |s| s.live.next_avail)
    }
}

/// The handler's trace point for the echo's messages (never enabled).
static MSG_POINT: TracePoint =
    TracePoint::new("net-echo", "echo_msg", &["nic", "request", "arg"], false);

/// The echo's device half.
struct Echo {
    rings: Arc<Mutex<Rings>>,
    stats: Arc<EchoStats>,
}

fn read_chain(mem: &GuestMemoryMmap, r: &Live, head: u16) -> Vec<(u64, u32, bool)> {
    let mut out = Vec::new();
    let mut id = head;
    for _ in 0..r.size {
        let d = r.desc + 16 * u64::from(id % r.size);
        let addr: u64 = mem.read_obj(GuestAddress(d)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(d + 8)).unwrap_or(0);
        let flags: u16 = mem.read_obj(GuestAddress(d + 12)).unwrap_or(0);
        let next: u16 = mem.read_obj(GuestAddress(d + 14)).unwrap_or(0);
        out.push((addr, len, flags & 2 != 0));
        if flags & 1 == 0 {
            break;
        }
        id = next;
    }
    out
}

/// The next available chain's head, if any.
fn pop(mem: &GuestMemoryMmap, r: &mut Live) -> Option<u16> {
    let idx: u16 = mem.read_obj(GuestAddress(r.avail + 2)).ok()?;
    if idx == r.next_avail {
        return None;
    }
    fence(Ordering::Acquire);
    let slot = u64::from(r.next_avail % r.size);
    let head: u16 = mem.read_obj(GuestAddress(r.avail + 4 + 2 * slot)).ok()?;
    r.next_avail = r.next_avail.wrapping_add(1);
    Some(head)
}

/// Publishes the completions `done` (head, bytes written) at once.
fn push_used(mem: &GuestMemoryMmap, r: &mut Live, done: &[(u16, u32)]) {
    for (head, len) in done {
        let e = r.used + 4 + 8 * u64::from(r.next_used % r.size);
        let _ = mem.write_obj(u32::from(*head), GuestAddress(e));
        let _ = mem.write_obj(*len, GuestAddress(e + 4));
        r.next_used = r.next_used.wrapping_add(1);
    }
    fence(Ordering::Release);
    let _ = mem.write_obj(r.next_used, GuestAddress(r.used + 2));
}

/// Writes `reply` (header included) into receive chains: as many as it
/// takes with MRG_RXBUF (`num_buffers` says how many), else one. False
/// (nothing published) when the buffers run out.
fn deliver(mem: &GuestMemoryMmap, rx: &mut Live, reply: &mut [u8], merge: bool) -> bool {
    let start = rx.next_avail;
    let mut done = Vec::new();
    let mut off = 0;
    while off < reply.len() && (merge || done.is_empty()) {
        let Some(head) = pop(mem, rx) else {
            rx.next_avail = start;
            return false;
        };
        for (addr, len, writable) in read_chain(mem, rx, head) {
            if writable && off < reply.len() {
                let n = (len as usize).min(reply.len() - off);
                done.push((head, addr, off, n));
                off += n;
            }
        }
    }
    if off < reply.len() {
        rx.next_avail = start;
        return false;
    }
    let mut heads: Vec<(u16, u32)> = Vec::new();
    for (head, _, _, n) in &done {
        match heads.last_mut() {
            Some((h, len)) if h == head => *len += *n as u32,
            _ => heads.push((*head, *n as u32)),
        }
    }
    reply[10..12].copy_from_slice(&(heads.len() as u16).to_le_bytes());
    for (_, addr, at, n) in &done {
        let _ = mem.write_slice(&reply[*at..at + n], GuestAddress(*addr));
    }
    push_used(mem, rx, &heads);
    true
}

fn echo_of(bytes: &[u8]) -> Option<Vec<u8>> {
    let f = match frame::parse(bytes.get(HDR_LEN..)?) {
        frame::Parsed::Test(f) if f.kind == frame::PING => f,
        _ => return None,
    };
    // num_buffers is set when the reply is placed.
    let mut out = vec![0u8; HDR_LEN + 2048];
    let n = frame::build_with(
        &mut out[HDR_LEN..],
        f.src,
        HOST_MAC,
        frame::PONG,
        f.seq,
        f.data,
    )?;
    out.truncate(HDR_LEN + n);
    Some(out)
}

/// The worker: transmitted pings come back as pongs.
fn serve(
    mem: &GuestMemoryMmap,
    merge: bool,
    mut live: [Live; 2],
    kicks: Vec<File>,
    call: File,
    stop: &AtomicBool,
    stats: &EchoStats,
) -> [Live; 2] {
    let signal = || {
        let _ = nix::unistd::write(call.as_fd(), &1u64.to_ne_bytes());
    };
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<libc::pollfd> = kicks
            .iter()
            .map(|k| libc::pollfd {
                fd: k.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll on our own fds, array length as given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        for k in &kicks {
            let mut b = [0u8; 8];
            let _ = nix::unistd::read(k.as_fd(), &mut b);
        }
        let mut work = false;
        while let Some(head) = pop(mem, &mut live[TX]) {
            work = true;
            let mut bytes = Vec::new();
            for (addr, len, writable) in read_chain(mem, &live[TX], head) {
                if !writable {
                    let mut b = vec![0u8; len as usize];
                    let _ = mem.read_slice(&mut b, GuestAddress(addr));
                    bytes.extend_from_slice(&b);
                }
            }
            push_used(mem, &mut live[TX], &[(head, 0)]);
            let Some(mut reply) = echo_of(&bytes) else {
                continue;
            };
            if deliver(mem, &mut live[RX], &mut reply, merge) {
                stats.echoed.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if work {
            signal();
        }
    }
    live
}

impl BackendDevice for Echo {
    type Queue = EchoQueue;
    type StartError = std::io::Error;

    fn name(&self) -> &str {
        "echo"
    }

    fn label(&self) -> String {
        "echo NIC".into()
    }

    fn msg_point(&self) -> &'static TracePoint {
        &MSG_POINT
    }

    fn features(&self) -> u64 {
        VERSION_1 | MRG_RXBUF | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn num_queues(&self) -> u16 {
        2
    }

    fn max_queue_size(&self) -> u16 {
        1 << 15
    }

    fn features_acked(&mut self, _features: u64) -> VuResult<()> {
        Ok(())
    }

    fn config_space(&self) -> Vec<u8> {
        Vec::new()
    }

    fn set_config(&mut self, _offset: u32, _buf: &[u8]) -> VuResult<()> {
        Err(VuError::InvalidOperation("no config space"))
    }

    fn start_queue(&mut self, q: ReadyQueue) -> std::io::Result<EchoQueue> {
        let index = usize::from(q.index);
        let next_used: u16 = q
            .mem
            .read_obj(GuestAddress(q.used + 2))
            .map_err(std::io::Error::other)?;
        let live = Live {
            size: q.size,
            desc: q.desc,
            avail: q.avail,
            used: q.used,
            next_avail: q.base,
            next_used,
        };
        let merge = q.acked_features & MRG_RXBUF != 0;
        let mut rings = self.rings.lock().unwrap();
        rings.started[index] = Some(Started {
            live,
            kick: q.kick,
            call: q.call,
            mem: q.mem,
        });
        rings.maybe_spawn(merge, &self.stats)?;
        Ok(EchoQueue {
            index,
            rings: self.rings.clone(),
        })
    }
}

/// A running echo NIC on one connection.
pub struct EchoNic {
    socket: UnixStream,
    handler: Arc<Mutex<VhostBackend<Echo>>>,
    thread: Option<JoinHandle<()>>,
    /// What it counted.
    pub stats: Arc<EchoStats>,
}

impl EchoNic {
    /// Serves `socket` (the frontend's peer) on threads of its own.
    pub fn spawn(socket: UnixStream) -> EchoNic {
        let stats = Arc::new(EchoStats::default());
        let handler = Arc::new(Mutex::new(VhostBackend::new(Echo {
            rings: Arc::default(),
            stats: stats.clone(),
        })));
        let h = handler.clone();
        let s = socket.try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            let mut req = BackendReqHandler::from_stream(s, h);
            while req.handle_request().is_ok() {}
        });
        EchoNic {
            socket,
            handler,
            thread: Some(thread),
            stats,
        }
    }

    /// Dies as a SIGKILLed backend does: the connection closes, the rings
    /// are served no more (whatever it had taken stays unanswered).
    pub fn crash(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.handler.lock().unwrap().disconnect();
    }

    /// Waits until `n` pings were answered.
    pub fn wait_echoed(&self, n: u64, limit: Duration) {
        let start = std::time::Instant::now();
        while self.stats.echoed.load(Ordering::Relaxed) < n {
            assert!(start.elapsed() < limit, "only {:?} echoed", self.stats);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EchoNic {
    fn drop(&mut self) {
        self.end();
    }
}
