//! An echo NIC: a minimal vhost-user-net backend, in the test process,
//! that answers the `net` guests' pings (`test-guests/net/src/frame.rs`)
//! itself — a PING taken from the transmitq comes back on the receiveq as
//! a PONG from [`HOST_MAC`], over as many receive buffers as it takes
//! (MRG_RXBUF). It offers VERSION_1 and MRG_RXBUF and no
//! protocol feature at all (no CONFIG, no MQ, no INFLIGHT_SHMFD, no
//! REPLY_ACK), so the frontend builds the config space from `mac=` and
//! resumes the rings from the used index after a crash.
//!
//! Written by hand on the `vhost` crate's request handler: the point is
//! a backend whose every step the test knows. Rings are walked with
//! `vm-memory` directly (split rings, no indirect descriptors).

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

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

#[derive(Default)]
struct Ring {
    size: u16,
    /// Frontend virtual addresses: desc, used, avail.
    addr: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
}

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

struct Handler {
    features: u64,
    regions: Vec<(u64, u64, u64)>,
    mem: Option<GuestMemoryMmap>,
    rings: [Ring; 2],
    worker: Option<Worker>,
    stats: Arc<EchoStats>,
}

struct Worker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<[Live; 2]>,
}

fn refused(what: &'static str) -> VuError {
    VuError::InvalidOperation(what)
}

impl Handler {
    fn gpa(&self, va: u64) -> VuResult<u64> {
        self.regions
            .iter()
            .find(|(uva, _, size)| va >= *uva && va - uva < *size)
            .map(|(uva, gpa, _)| gpa + (va - uva))
            .ok_or(VuError::InvalidParam)
    }

    fn ring(&mut self, index: u32) -> VuResult<&mut Ring> {
        self.rings
            .get_mut(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    fn stop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::SeqCst);
            if let Ok(live) = w.thread.join() {
                for (r, l) in self.rings.iter_mut().zip(live) {
                    r.base = l.next_avail;
                }
            }
        }
    }

    /// Starts serving once both rings are complete and enabled.
    fn maybe_start(&mut self) -> VuResult<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let ready = self
            .rings
            .iter()
            .all(|r| r.enabled && r.addr.is_some() && r.kick.is_some() && r.call.is_some());
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        if !ready {
            return Ok(());
        }
        let mut live = Vec::new();
        let mut kicks = Vec::new();
        let mut call = None;
        for r in &self.rings {
            let (d, u, a) = r.addr.ok_or(VuError::InvalidParam)?;
            let (desc, used, avail) = (self.gpa(d)?, self.gpa(u)?, self.gpa(a)?);
            let next_used: u16 = mem
                .read_obj(GuestAddress(used + 2))
                .map_err(|_| VuError::InvalidParam)?;
            live.push(Live {
                size: r.size,
                desc,
                avail,
                used,
                next_avail: r.base,
                next_used,
            });
            kicks.push(
                r.kick
                    .as_ref()
                    .and_then(|k| k.try_clone().ok())
                    .ok_or(VuError::InvalidParam)?,
            );
            call = r.call.as_ref().and_then(|c| c.try_clone().ok());
        }
        let call = call.ok_or(VuError::InvalidParam)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, stats) = (stop.clone(), self.stats.clone());
        let live = [live[0], live[1]];
        let merge = self.features & MRG_RXBUF != 0;
        let thread = std::thread::spawn(move || serve(mem, merge, live, kicks, call, &s, &stats));
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }
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
    mem: GuestMemoryMmap,
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
        while let Some(head) = pop(&mem, &mut live[TX]) {
            work = true;
            let mut bytes = Vec::new();
            for (addr, len, writable) in read_chain(&mem, &live[TX], head) {
                if !writable {
                    let mut b = vec![0u8; len as usize];
                    let _ = mem.read_slice(&mut b, GuestAddress(addr));
                    bytes.extend_from_slice(&b);
                }
            }
            push_used(&mem, &mut live[TX], &[(head, 0)]);
            let Some(mut reply) = echo_of(&bytes) else {
                continue;
            };
            if deliver(&mem, &mut live[RX], &mut reply, merge) {
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

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> VuResult<()> {
        self.stop();
        Ok(())
    }
    fn reset_device(&mut self) -> VuResult<()> {
        self.stop();
        Ok(())
    }
    fn get_features(&mut self) -> VuResult<u64> {
        Ok(VERSION_1 | MRG_RXBUF | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
    }
    fn set_features(&mut self, features: u64) -> VuResult<()> {
        self.features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.stop();
        let mut mapped = Vec::new();
        self.regions.clear();
        for (r, f) in ctx.iter().zip(files) {
            let m =
                MmapRegion::from_file(FileOffset::new(f, r.mmap_offset), r.memory_size as usize)
                    .map_err(|_| VuError::InvalidParam)?;
            mapped.push(
                GuestRegionMmap::new(m, GuestAddress(r.guest_phys_addr))
                    .ok_or(VuError::InvalidParam)?,
            );
            self.regions
                .push((r.user_addr, r.guest_phys_addr, r.memory_size));
        }
        self.mem = Some(GuestMemoryMmap::from_regions(mapped).map_err(|_| VuError::InvalidParam)?);
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.ring(index)?.size = u16::try_from(num).map_err(|_| VuError::InvalidParam)?;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        self.ring(index)?.addr = Some((descriptor, used, available));
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.ring(index)?.base = base as u16;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.stop();
        let r = self.ring(index)?;
        r.enabled = false;
        Ok(VhostUserVringState::new(index, u32::from(r.base)))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.ring(u32::from(index))?.kick = fd;
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.ring(u32::from(index))?.call = fd;
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::empty())
    }
    fn set_protocol_features(&mut self, _features: u64) -> VuResult<()> {
        Ok(())
    }
    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(2)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        if !enable {
            self.stop();
        }
        self.ring(index)?.enabled = enable;
        self.maybe_start()
    }
    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        Err(refused("no config space"))
    }
    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VuResult<()> {
        Err(refused("no config space"))
    }
    fn set_backend_req_fd(&mut self, _backend: Backend) {}
    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(refused("gpu"))
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(refused("shared objects"))
    }
    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(refused("inflight"))
    }
    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(refused("inflight"))
    }
    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(refused("mem slots"))
    }
    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(refused("mem slots"))
    }
    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(refused("mem slots"))
    }
    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(refused("device state"))
    }
    fn check_device_state(&mut self) -> VuResult<()> {
        Err(refused("device state"))
    }
    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(refused("shared memory"))
    }
    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(refused("dirty log"))
    }
}

/// A running echo NIC on one connection.
pub struct EchoNic {
    socket: UnixStream,
    handler: Arc<Mutex<Handler>>,
    thread: Option<JoinHandle<()>>,
    /// What it counted.
    pub stats: Arc<EchoStats>,
}

impl EchoNic {
    /// Serves `socket` (the frontend's peer) on threads of its own.
    pub fn spawn(socket: UnixStream) -> EchoNic {
        let stats = Arc::new(EchoStats::default());
        let handler = Arc::new(Mutex::new(Handler {
            features: 0,
            regions: Vec::new(),
            mem: None,
            rings: Default::default(),
            worker: None,
            stats: stats.clone(),
        }));
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
        self.handler.lock().unwrap().stop();
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
