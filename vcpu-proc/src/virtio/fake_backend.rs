//! A scripted vhost-user backend for the frontend's tests: it answers
//! the handshake and records every request, but never touches the rings
//! itself — the test plays its data path (completions in any order) on
//! guest memory directly. By default a vhost-user-blk backend offering
//! VERSION_1, FLUSH and PROTOCOL_FEATURES with only the CONFIG protocol
//! feature: no REPLY_ACK, no MQ and no inflight tracking, like a minimal
//! third-party backend; [`FakeBackend::spawn_offering`] offers other
//! features (a net backend without CONFIG, ...).
//! [`FakeBackend::spawn_with_backend_req`] also offers BACKEND_REQ, keeps
//! the channel the frontend hands over and sends CONFIG_CHANGE_MSG on it
//! when the test says so.
//!
//! Written by hand (a few message codes over a stream) because the
//! point is a backend that does exactly what the test says and nothing
//! else.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

/// vhost-user request codes the fake answers or the tests look for.
pub mod req {
    /// GET_FEATURES.
    pub const GET_FEATURES: u32 = 1;
    /// SET_FEATURES.
    pub const SET_FEATURES: u32 = 2;
    /// SET_LOG_BASE (answered: the fake marks page 0 in the log it got).
    pub const SET_LOG_BASE: u32 = 6;
    /// SET_VRING_ADDR.
    pub const SET_VRING_ADDR: u32 = 9;
    /// SET_VRING_BASE.
    pub const SET_VRING_BASE: u32 = 10;
    /// GET_VRING_BASE.
    pub const GET_VRING_BASE: u32 = 11;
    /// SET_VRING_KICK.
    pub const SET_VRING_KICK: u32 = 12;
    /// GET_PROTOCOL_FEATURES.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// SET_VRING_ENABLE.
    pub const SET_VRING_ENABLE: u32 = 18;
    /// GET_QUEUE_NUM.
    pub const GET_QUEUE_NUM: u32 = 17;
    /// SET_BACKEND_REQ_FD.
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    /// GET_CONFIG.
    pub const GET_CONFIG: u32 = 24;
}

/// The backend request channel, once the frontend handed it over.
type Channel = Arc<Mutex<Option<UnixStream>>>;

/// Each queue's avail position (SET_VRING_BASE, or what the test says
/// the backend took), which GET_VRING_BASE answers.
type Positions = Arc<Mutex<std::collections::HashMap<u32, u32>>>;

/// Capacity the fake reports at first (sectors).
pub const CAPACITY: u64 = 2048;

const HEADER: usize = 12;
const VERSION_1: u64 = 1 << 32;
const BLK_FLUSH: u64 = 1 << 9;

/// What the fake offers in the handshake.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// Virtio features (PROTOCOL_FEATURES is added).
    pub features: u64,
    /// Protocol features (with MQ, GET_QUEUE_NUM answers the queue count
    /// given to [`FakeBackend::spawn_scsi`], else 1).
    pub protocol: VhostUserProtocolFeatures,
    /// The first bytes of the config space GET_CONFIG answers (a NIC's
    /// mac and status); None: the capacity of a disk.
    pub config: Option<[u8; 8]>,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            features: VERSION_1 | BLK_FLUSH,
            protocol: VhostUserProtocolFeatures::CONFIG,
            config: None,
        }
    }
}

/// One request as received: code and payload.
pub type Logged = (u32, Vec<u8>);

/// A running fake backend on one connection.
pub struct FakeBackend {
    log: Arc<Mutex<Vec<Logged>>>,
    stalled: Arc<AtomicBool>,
    capacity: Arc<AtomicU64>,
    channel: Channel,
    positions: Positions,
    socket: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Serves `socket` on a thread of its own.
    pub fn spawn(socket: UnixStream) -> Self {
        Self::spawn_offering(socket, Offer::default())
    }

    /// Like [`FakeBackend::spawn`], offering BACKEND_REQ too.
    pub fn spawn_with_backend_req(socket: UnixStream) -> Self {
        let mut offer = Offer::default();
        offer.protocol |= VhostUserProtocolFeatures::BACKEND_REQ;
        Self::spawn_offering(socket, offer)
    }

    /// Serves `socket` on a thread of its own, offering `offer`.
    pub fn spawn_offering(socket: UnixStream, offer: Offer) -> Self {
        Self::spawn_serving(socket, offer, 1)
    }

    /// A vhost-user-scsi backend serving `queues` virtqueues (MQ, no
    /// CONFIG) with VIRTIO_SCSI_F_HOTPLUG and VIRTIO_SCSI_F_CHANGE.
    pub fn spawn_scsi(socket: UnixStream, queues: u64) -> Self {
        let offer = Offer {
            features: VERSION_1 | (1 << 1) | (1 << 2),
            protocol: VhostUserProtocolFeatures::MQ,
            config: None,
        };
        Self::spawn_serving(socket, offer, queues)
    }

    /// Serves `socket` offering `offer` and, with MQ, `queues` queues.
    fn spawn_serving(socket: UnixStream, offer: Offer, queues: u64) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(AtomicBool::new(false));
        let capacity = Arc::new(AtomicU64::new(CAPACITY));
        let channel: Channel = Arc::default();
        let positions: Positions = Arc::default();
        let fake = Fake {
            log: log.clone(),
            stalled: stalled.clone(),
            capacity: capacity.clone(),
            channel: channel.clone(),
            positions: positions.clone(),
            queues,
        };
        let s = socket.try_clone().unwrap();
        let thread = std::thread::spawn(move || serve(s, offer, &fake));
        FakeBackend {
            log,
            stalled,
            capacity,
            channel,
            positions,
            socket,
            thread: Some(thread),
        }
    }

    /// The backend took the buffers of `queue` up to avail index `avail`
    /// (what GET_VRING_BASE answers from now on).
    pub fn took(&self, queue: u32, avail: u16) {
        self.positions
            .lock()
            .unwrap()
            .insert(queue, u32::from(avail));
    }

    /// Sends CONFIG_CHANGE_MSG on the backend request channel (which the
    /// frontend must have handed over); with `need_reply`, waits for the
    /// frontend's REPLY_ACK and returns its value.
    pub fn announce_config_change(&self, need_reply: bool) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ch = loop {
            if let Some(c) = self.channel.lock().unwrap().as_ref() {
                break c.try_clone().unwrap();
            }
            assert!(Instant::now() < deadline, "no channel: {:?}", self.codes());
            std::thread::sleep(Duration::from_millis(5));
        };
        let flags: u32 = if need_reply { 0x1 | 0x8 } else { 0x1 };
        let mut msg = 2u32.to_le_bytes().to_vec();
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        ch.write_all(&msg).unwrap();
        if !need_reply {
            return None;
        }
        ch.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut ack = [0u8; HEADER + 8];
        ch.read_exact(&mut ack).ok()?;
        assert_eq!((u32_at(&ack, 0), u32_at(&ack, 4) & 0x4), (2, 0x4));
        Some(u64::from_le_bytes(ack[HEADER..].try_into().ok()?))
    }

    /// From now on, reads and answers nothing (a hung backend): the next
    /// request that waits for a reply waits forever.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// The capacity GET_CONFIG reports from now on (a resized disk).
    pub fn set_capacity(&self, sectors: u64) {
        self.capacity.store(sectors, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// The value of every SET_FEATURES so far.
    pub fn set_features(&self) -> Vec<u64> {
        self.log()
            .iter()
            .filter(|(r, _)| *r == req::SET_FEATURES)
            .map(|(_, p)| u64::from(u32_at(p, 0)) | u64::from(u32_at(p, 4)) << 32)
            .collect()
    }

    /// The value of every SET_VRING_BASE so far (queue, base).
    pub fn vring_bases(&self) -> Vec<(u32, u32)> {
        self.log()
            .iter()
            .filter(|(r, _)| *r == req::SET_VRING_BASE)
            .map(|(_, p)| (u32_at(p, 0), u32_at(p, 4)))
            .collect()
    }

    /// Waits until `count` SET_VRING_KICKs have arrived (a start is
    /// complete).
    pub fn wait_started(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .log()
            .iter()
            .filter(|(r, _)| *r == req::SET_VRING_KICK)
            .count()
            < count
        {
            assert!(Instant::now() < deadline, "no start: {:?}", self.codes());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The request codes so far.
    pub fn codes(&self) -> Vec<u32> {
        self.log().iter().map(|(r, _)| *r).collect()
    }

    /// Closes the connection (the fake stays for its log).
    pub fn hang_up(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Dies as a crashed backend does: the connection closes.
    pub fn crash(mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap_or([0; 4])))
}

fn reply(s: &mut UnixStream, code: u32, body: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(HEADER + body.len());
    msg.extend_from_slice(&code.to_le_bytes());
    // Version 1, reply.
    msg.extend_from_slice(&0x5u32.to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg)
}

/// What the serving thread shares with the test.
struct Fake {
    log: Arc<Mutex<Vec<Logged>>>,
    stalled: Arc<AtomicBool>,
    capacity: Arc<AtomicU64>,
    channel: Channel,
    positions: Positions,
    /// GET_QUEUE_NUM's answer.
    queues: u64,
}

/// Reads a message header and the fds sent with it.
fn recv_header(s: &mut UnixStream) -> Option<([u8; HEADER], Vec<OwnedFd>)> {
    let mut hdr = [0u8; HEADER];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut hdr)];
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).ok()?;
    let n = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS gave us these fds; nothing else owns them.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    if n == 0 {
        return None;
    }
    s.read_exact(&mut hdr[n..]).ok()?;
    Some((hdr, fds))
}

fn serve(mut s: UnixStream, offer: Offer, f: &Fake) {
    let (log, stalled, capacity) = (&f.log, &f.stalled, &f.capacity);
    let features = offer.features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let protocol = offer.protocol.bits();
    let bases = &f.positions;
    loop {
        let Some((hdr, mut fds)) = recv_header(&mut s) else {
            return;
        };
        if stalled.load(Ordering::SeqCst) {
            // Hung: wait for the frontend to hang up.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            return;
        }
        let code = u32_at(&hdr, 0);
        let mut payload = vec![0u8; u32_at(&hdr, 8) as usize];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        log.lock().unwrap().push((code, payload.clone()));
        let r = match code {
            req::GET_FEATURES => reply(&mut s, code, &features.to_le_bytes()),
            req::GET_PROTOCOL_FEATURES => reply(&mut s, code, &protocol.to_le_bytes()),
            req::GET_QUEUE_NUM => reply(&mut s, code, &f.queues.to_le_bytes()),
            req::GET_CONFIG => {
                // VhostUserConfig: offset, size, flags, then the bytes.
                let size = u32_at(&payload, 4) as usize;
                let mut body = payload[..HEADER.min(payload.len())].to_vec();
                let mut config = vec![0u8; size];
                let cap = offer
                    .config
                    .unwrap_or(capacity.load(Ordering::SeqCst).to_le_bytes());
                let n = cap.len().min(size);
                config[..n].copy_from_slice(&cap[..n]);
                body.extend_from_slice(&config);
                reply(&mut s, code, &body)
            }
            req::SET_BACKEND_REQ_FD => {
                if let Some(fd) = fds.pop() {
                    *f.channel.lock().unwrap() = Some(UnixStream::from(fd));
                }
                Ok(())
            }
            req::SET_LOG_BASE => {
                // Proves the fd is the frontend's log: page 0 marked.
                if let Some(fd) = fds.pop() {
                    let _ = std::os::unix::fs::FileExt::write_at(&std::fs::File::from(fd), &[1], 0);
                }
                reply(&mut s, code, &payload)
            }
            req::SET_VRING_BASE => {
                bases
                    .lock()
                    .unwrap()
                    .insert(u32_at(&payload, 0), u32_at(&payload, 4));
                Ok(())
            }
            req::GET_VRING_BASE => {
                let q = u32_at(&payload, 0);
                let mut body = q.to_le_bytes().to_vec();
                let base = bases.lock().unwrap().get(&q).copied().unwrap_or(0);
                body.extend_from_slice(&base.to_le_bytes());
                reply(&mut s, code, &body)
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
}
