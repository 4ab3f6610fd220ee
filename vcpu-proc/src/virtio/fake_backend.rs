//! A scripted vhost-user-blk backend for the frontend's tests: it answers
//! the handshake and records every request, but never touches the rings
//! itself — the test plays its data path (completions in any order) on
//! guest memory directly. It offers VERSION_1, FLUSH and
//! PROTOCOL_FEATURES with only the CONFIG protocol feature: no REPLY_ACK,
//! no MQ and no inflight tracking, like a minimal third-party backend.
//! [`FakeBackend::spawn_scsi`] plays a vhost-user-scsi backend instead:
//! MQ with a queue count, and no CONFIG (such backends serve no
//! GET_CONFIG).
//!
//! Written by hand (a few message codes over a stream) because the
//! point is a backend that does exactly what the test says and nothing
//! else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

/// vhost-user request codes the fake answers or the tests look for.
pub mod req {
    /// GET_FEATURES.
    pub const GET_FEATURES: u32 = 1;
    /// SET_VRING_BASE.
    pub const SET_VRING_BASE: u32 = 10;
    /// GET_VRING_BASE.
    pub const GET_VRING_BASE: u32 = 11;
    /// SET_VRING_KICK.
    pub const SET_VRING_KICK: u32 = 12;
    /// GET_PROTOCOL_FEATURES.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// GET_QUEUE_NUM.
    pub const GET_QUEUE_NUM: u32 = 17;
    /// GET_CONFIG.
    pub const GET_CONFIG: u32 = 24;
}

/// Capacity the fake reports at first (sectors).
pub const CAPACITY: u64 = 2048;

const HEADER: usize = 12;
const VERSION_1: u64 = 1 << 32;
const BLK_FLUSH: u64 = 1 << 9;
const SCSI_HOTPLUG: u64 = 1 << 1;
const SCSI_CHANGE: u64 = 1 << 2;

/// What the fake offers.
#[derive(Clone, Copy)]
struct Offer {
    features: u64,
    protocol: u64,
    queue_num: u64,
}

/// One request as received: code and payload.
pub type Logged = (u32, Vec<u8>);

/// A running fake backend on one connection.
pub struct FakeBackend {
    log: Arc<Mutex<Vec<Logged>>>,
    stalled: Arc<AtomicBool>,
    capacity: Arc<AtomicU64>,
    socket: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Serves `socket` on a thread of its own.
    pub fn spawn(socket: UnixStream) -> Self {
        Self::spawn_offering(
            socket,
            Offer {
                features: VERSION_1 | BLK_FLUSH | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
                protocol: VhostUserProtocolFeatures::CONFIG.bits(),
                queue_num: 1,
            },
        )
    }

    /// A vhost-user-scsi backend serving `queues` virtqueues (MQ, no
    /// CONFIG) with VIRTIO_SCSI_F_HOTPLUG and VIRTIO_SCSI_F_CHANGE.
    pub fn spawn_scsi(socket: UnixStream, queues: u64) -> Self {
        Self::spawn_offering(
            socket,
            Offer {
                features: VERSION_1
                    | SCSI_HOTPLUG
                    | SCSI_CHANGE
                    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
                protocol: VhostUserProtocolFeatures::MQ.bits(),
                queue_num: queues,
            },
        )
    }

    fn spawn_offering(socket: UnixStream, offer: Offer) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(AtomicBool::new(false));
        let capacity = Arc::new(AtomicU64::new(CAPACITY));
        let (l, st, cap) = (log.clone(), stalled.clone(), capacity.clone());
        let s = socket.try_clone().unwrap();
        let thread = std::thread::spawn(move || serve(s, offer, &l, &st, &cap));
        FakeBackend {
            log,
            stalled,
            capacity,
            socket,
            thread: Some(thread),
        }
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

fn serve(
    mut s: UnixStream,
    offer: Offer,
    log: &Mutex<Vec<Logged>>,
    stalled: &AtomicBool,
    capacity: &AtomicU64,
) {
    let Offer {
        features,
        protocol,
        queue_num,
    } = offer;
    let mut bases = std::collections::HashMap::<u32, u32>::new();
    loop {
        let mut hdr = [0u8; HEADER];
        // Attached fds are dropped by a plain read; the fake needs none.
        if s.read_exact(&mut hdr).is_err() {
            return;
        }
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
            req::GET_QUEUE_NUM => reply(&mut s, code, &queue_num.to_le_bytes()),
            req::GET_CONFIG => {
                // VhostUserConfig: offset, size, flags, then the bytes.
                let size = u32_at(&payload, 4) as usize;
                let mut body = payload[..HEADER.min(payload.len())].to_vec();
                let mut config = vec![0u8; size];
                let cap = capacity.load(Ordering::SeqCst).to_le_bytes();
                let n = cap.len().min(size);
                config[..n].copy_from_slice(&cap[..n]);
                body.extend_from_slice(&config);
                reply(&mut s, code, &body)
            }
            req::SET_VRING_BASE => {
                bases.insert(u32_at(&payload, 0), u32_at(&payload, 4));
                Ok(())
            }
            req::GET_VRING_BASE => {
                let q = u32_at(&payload, 0);
                let mut body = q.to_le_bytes().to_vec();
                body.extend_from_slice(&bases.get(&q).copied().unwrap_or(0).to_le_bytes());
                reply(&mut s, code, &body)
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
}
