//! virtio-blk requests over the harness frontend.
//!
//! Memory layout: the rings of all queues first, then per queue `slots`
//! request slots, each `slot_size + 4096` bytes: the 16-byte request
//! header at offset 0, a 16-byte discard/write-zeroes segment at 16, the
//! status byte at 32, and the data buffer at 4096 (page aligned, so an
//! `O_DIRECT` backend can use it directly).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::Frontend;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dirty_log::{self, HarnessLog};
use crate::error::{HarnessError, Result};
use crate::frontend::{connect_retry, Connection, RingAddrs, F_EVENT_IDX, F_VERSION_1};
use crate::memory::GuestMem;
use crate::ring::{ring_bytes, Buf, DriverRing, RawDesc};

/// virtio-blk request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Get id.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status OK.
pub const S_OK: u8 = 0;
/// Status I/O error.
pub const S_IOERR: u8 = 1;
/// Status unsupported.
pub const S_UNSUPP: u8 = 2;

/// virtio-blk feature bits the harness asks for.
pub const BLK_FEATURES: u64 =
    (1 << 1) | (1 << 2) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 12) | (1 << 13) | (1 << 14);
/// VIRTIO_BLK_F_RO.
pub const F_RO: u64 = 1 << 5;

/// Harness device options.
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// Queues to set up.
    pub num_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Request slots per queue (max requests in flight per queue).
    pub slots: u16,
    /// Max data bytes per request.
    pub slot_size: u32,
    /// Virtio features to ask for.
    pub features: u64,
    /// How long to wait for a completion.
    pub timeout: Duration,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            num_queues: 1,
            queue_size: 128,
            slots: 32,
            slot_size: 1 << 20,
            features: BLK_FEATURES | F_EVENT_IDX | F_VERSION_1,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// Read `len` bytes at `sector`.
    Read {
        /// Start sector.
        sector: u64,
        /// Bytes.
        len: u32,
    },
    /// Write `data` at `sector`.
    Write {
        /// Start sector.
        sector: u64,
        /// Data.
        data: &'a [u8],
    },
    /// Write the slot's current data buffer (no copy) at `sector`.
    WriteInPlace {
        /// Start sector.
        sector: u64,
        /// Bytes.
        len: u32,
    },
    /// Flush.
    Flush,
    /// Device id.
    GetId,
    /// Discard sectors.
    Discard {
        /// Start sector.
        sector: u64,
        /// Sectors.
        num: u32,
    },
    /// Write zeroes to sectors.
    WriteZeroes {
        /// Start sector.
        sector: u64,
        /// Sectors.
        num: u32,
        /// Allow unmapping.
        unmap: bool,
    },
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Queue.
    pub queue: usize,
    /// Descriptor head.
    pub head: u16,
    /// Request slot (None for raw submissions).
    pub slot: Option<u16>,
    /// Status byte (None for raw submissions).
    pub status: Option<u8>,
    /// Used length reported by the device.
    pub used_len: u32,
}

pub(crate) struct Queue {
    pub(crate) ring: DriverRing,
    pub(crate) kick: EventFd,
    pub(crate) call: EventFd,
    free_slots: Vec<u16>,
    head_slot: HashMap<u16, Option<u16>>,
    pub(crate) kicked_at: u16,
}

/// A virtio-blk device driven through vhost-user.
pub struct BlkDevice {
    pub(crate) conn: Connection,
    pub(crate) mem: GuestMem,
    pub(crate) queues: Vec<Queue>,
    pub(crate) opts: BlkOptions,
    pub(crate) inflight: Option<(VhostUserInflight, File)>,
    data_base: u64,
    stride: u64,
    /// The socket path, when connected by path (for [`BlkDevice::reconnect`]).
    socket: Option<PathBuf>,
}

impl BlkDevice {
    /// Connect to the backend at `socket` and set everything up.
    pub fn connect(socket: &Path, opts: BlkOptions) -> Result<Self> {
        let fe = connect_retry(socket, u64::from(opts.num_queues), opts.timeout)?;
        Self::over(fe, Some(socket.to_path_buf()), opts)
    }

    /// Set everything up over `stream`, an already connected socket (one
    /// end of a socketpair whose other end the backend serves).
    pub fn from_stream(stream: UnixStream, opts: BlkOptions) -> Result<Self> {
        let fe = Frontend::from_stream(stream, u64::from(opts.num_queues));
        Self::over(fe, None, opts)
    }

    fn over(fe: Frontend, socket: Option<PathBuf>, opts: BlkOptions) -> Result<Self> {
        let rb = ring_bytes(opts.queue_size);
        let rings = rb * u64::from(opts.num_queues);
        let data_base = rings.div_ceil(1 << 20) * (1 << 20);
        let stride = u64::from(opts.slot_size) + 4096;
        let total = data_base + stride * u64::from(opts.slots) * u64::from(opts.num_queues);
        let mem = GuestMem::new(total)?;
        let mut queues = Vec::new();
        for q in 0..opts.num_queues {
            queues.push(Queue {
                ring: DriverRing::new(rb * u64::from(q), opts.queue_size, false),
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                free_slots: (0..opts.slots).rev().collect(),
                head_slot: HashMap::new(),
                kicked_at: 0,
            });
        }
        let conn = Connection::negotiate(fe, opts.features)?;
        let mut dev = BlkDevice {
            conn,
            mem,
            queues,
            opts,
            inflight: None,
            data_base,
            stride,
            socket,
        };
        dev.setup()?;
        Ok(dev)
    }

    fn setup(&mut self) -> Result<()> {
        let event_idx = self.conn.features & F_EVENT_IDX != 0;
        let avail = self.conn.queue_num()?;
        if u64::from(self.opts.num_queues) > avail {
            return Err(HarnessError::Invalid(format!(
                "backend offers {avail} queues"
            )));
        }
        self.conn.set_memory(&self.mem)?;
        let saved = self.inflight.take();
        self.inflight =
            self.conn
                .set_inflight(saved, self.opts.num_queues, self.opts.queue_size)?;
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.ring.set_event_idx(event_idx);
            let r = RingAddrs {
                size: q.ring.size,
                desc: q.ring.desc,
                avail: q.ring.avail,
                used: q.ring.used,
            };
            let base = q.ring.avail_idx();
            self.conn
                .setup_queue(&self.mem, i, r, base, &q.kick, &q.call)?;
            q.kicked_at = base;
        }
        Ok(())
    }

    /// Reconnect (same memory, rings and inflight region) to a backend that
    /// was restarted on the same socket path.
    pub fn reconnect(&mut self) -> Result<()> {
        let Some(socket) = &self.socket else {
            return Err(HarnessError::Invalid(
                "connected over a socketpair: no path to reconnect to".into(),
            ));
        };
        let fe = connect_retry(socket, u64::from(self.opts.num_queues), self.opts.timeout)?;
        self.conn = Connection::negotiate(fe, self.opts.features)?;
        self.setup()
    }

    /// Hands `log` to the backend (SET_LOG_BASE) and turns logging on
    /// (`on`) or off on every queue (see [`crate::dirty_log`]).
    pub fn set_dirty_log(&mut self, log: Option<&HarnessLog>, on: bool) -> Result<()> {
        let rings = self.queues.iter().map(|q| &q.ring);
        dirty_log::set_dirty_log(&mut self.conn, &self.mem, rings, log, on)
    }

    /// Where queue `q`'s rings are.
    pub fn ring_addrs(&self, q: usize) -> RingAddrs {
        dirty_log::ring_addrs(&self.queues[q].ring)
    }

    /// Acked virtio features.
    pub fn features(&self) -> u64 {
        self.conn.features
    }

    /// Whether an inflight region is in use.
    pub fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    /// The virtio-blk config space (first `len` bytes).
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>> {
        self.conn.config(len)
    }

    /// Capacity in sectors, from config space.
    pub fn capacity(&mut self) -> Result<u64> {
        let c = self.config(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[..8]);
        Ok(u64::from_le_bytes(b))
    }

    /// SET_CONFIG: write `data` at `offset` of the config space.
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.conn.set_config(offset, data)
    }

    /// The guest memory.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// Options in use.
    pub fn options(&self) -> &BlkOptions {
        &self.opts
    }

    fn slot_base(&self, q: usize, slot: u16) -> u64 {
        self.data_base + self.stride * (q as u64 * u64::from(self.opts.slots) + u64::from(slot))
    }

    /// Guest address of a slot's request header (status byte at +32, data
    /// at +4096).
    pub fn slot_addr(&self, q: usize, slot: u16) -> u64 {
        self.slot_base(q, slot)
    }

    /// Guest address of a slot's data buffer.
    pub fn slot_data_addr(&self, q: usize, slot: u16) -> u64 {
        self.slot_base(q, slot) + 4096
    }

    /// Copy bytes out of a slot's data buffer.
    pub fn slot_data(&self, q: usize, slot: u16, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem
            .mem
            .read_slice(&mut v, GuestAddress(self.slot_data_addr(q, slot)))
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        Ok(v)
    }

    /// Fill a slot's data buffer.
    pub fn fill_slot(&self, q: usize, slot: u16, data: &[u8]) -> Result<()> {
        self.mem
            .mem
            .write_slice(data, GuestAddress(self.slot_data_addr(q, slot)))
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }

    fn queue(&mut self, q: usize) -> Result<&mut Queue> {
        self.queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))
    }

    /// Put a request in slot `slot` of queue `q` on the avail ring (no
    /// kick). The slot must be free (see [`BlkDevice::take_slot`]).
    pub fn submit_in(&mut self, q: usize, slot: u16, r: Request<'_>) -> Result<u16> {
        let bufs = self.prepare(q, slot, r)?;
        let heads = self.publish(q, &[bufs], &[slot])?;
        heads.first().map(|h| h.0).ok_or(HarnessError::QueueFull(q))
    }

    /// Put `reqs` on queue `q`'s avail ring at once, each in a fresh slot,
    /// moving the avail index once (no kick): a backend looking at the
    /// ring meanwhile finds none of them or all, as a driver's batch.
    /// Returns (head, slot) of each, in order.
    pub fn submit_all(&mut self, q: usize, reqs: &[Request<'_>]) -> Result<Vec<(u16, u16)>> {
        let mut slots = Vec::with_capacity(reqs.len());
        let mut chains = Vec::with_capacity(reqs.len());
        let mut put = || {
            for r in reqs {
                let slot = self.take_slot(q)?;
                slots.push(slot);
                chains.push(self.prepare(q, slot, *r)?);
            }
            self.publish(q, &chains, &slots)
        };
        let done = put();
        if done.is_err() {
            self.queue(q)?.free_slots.extend(slots.into_iter().rev());
        }
        done
    }

    /// Adds the prepared `chains` (of `slots`) to queue `q`'s ring, all
    /// published at once.
    fn publish(&mut self, q: usize, chains: &[Vec<Buf>], slots: &[u16]) -> Result<Vec<(u16, u16)>> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        let chains: Vec<&[Buf]> = chains.iter().map(Vec::as_slice).collect();
        let heads = queue.ring.add_all(&self.mem.mem, &chains)?;
        for (head, slot) in heads.iter().zip(slots) {
            queue.head_slot.insert(*head, Some(*slot));
        }
        Ok(heads.into_iter().zip(slots.iter().copied()).collect())
    }

    /// Write request `r` into slot `slot` of queue `q` (header, data,
    /// status byte); returns its chain's buffers.
    fn prepare(&self, q: usize, slot: u16, r: Request<'_>) -> Result<Vec<Buf>> {
        let base = self.slot_base(q, slot);
        let data = base + 4096;
        let m = &self.mem.mem;
        let me = |e: vm_memory::GuestMemoryError| HarnessError::Memory(e.to_string());
        let (ty, sector) = match r {
            Request::Read { sector, .. } => (req::IN, sector),
            Request::Write { sector, .. } | Request::WriteInPlace { sector, .. } => {
                (req::OUT, sector)
            }
            Request::Flush => (req::FLUSH, 0),
            Request::GetId => (req::GET_ID, 0),
            Request::Discard { .. } => (req::DISCARD, 0),
            Request::WriteZeroes { .. } => (req::WRITE_ZEROES, 0),
        };
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&ty.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(base)).map_err(me)?;
        m.write_obj(0xffu8, GuestAddress(base + 32)).map_err(me)?;
        let h = Buf {
            addr: base,
            len: 16,
            write: false,
        };
        let st = Buf {
            addr: base + 32,
            len: 1,
            write: true,
        };
        let bufs: Vec<Buf> = match r {
            Request::Read { len, .. } => vec![
                h,
                Buf {
                    addr: data,
                    len,
                    write: true,
                },
                st,
            ],
            Request::Write { data: d, .. } => {
                let len =
                    u32::try_from(d.len()).map_err(|_| HarnessError::Invalid("too long".into()))?;
                if len > self.opts.slot_size {
                    return Err(HarnessError::Invalid("request larger than a slot".into()));
                }
                m.write_slice(d, GuestAddress(data)).map_err(me)?;
                vec![
                    h,
                    Buf {
                        addr: data,
                        len,
                        write: false,
                    },
                    st,
                ]
            }
            Request::WriteInPlace { len, .. } => vec![
                h,
                Buf {
                    addr: data,
                    len,
                    write: false,
                },
                st,
            ],
            Request::Flush => vec![h, st],
            Request::GetId => vec![
                h,
                Buf {
                    addr: data,
                    len: 20,
                    write: true,
                },
                st,
            ],
            Request::Discard { sector, num } | Request::WriteZeroes { sector, num, .. } => {
                let flags = u32::from(matches!(r, Request::WriteZeroes { unmap: true, .. }));
                let mut seg = [0u8; 16];
                seg[..8].copy_from_slice(&sector.to_le_bytes());
                seg[8..12].copy_from_slice(&num.to_le_bytes());
                seg[12..].copy_from_slice(&flags.to_le_bytes());
                m.write_slice(&seg, GuestAddress(base + 16)).map_err(me)?;
                vec![
                    h,
                    Buf {
                        addr: base + 16,
                        len: 16,
                        write: false,
                    },
                    st,
                ]
            }
        };
        Ok(bufs)
    }

    /// Take a free request slot of queue `q`.
    pub fn take_slot(&mut self, q: usize) -> Result<u16> {
        self.queue(q)?
            .free_slots
            .pop()
            .ok_or(HarnessError::QueueFull(q))
    }

    /// Submit a request in a fresh slot (no kick).
    pub fn submit(&mut self, q: usize, r: Request<'_>) -> Result<(u16, u16)> {
        let slot = self.take_slot(q)?;
        match self.submit_in(q, slot, r) {
            Ok(head) => Ok((head, slot)),
            Err(e) => {
                self.queue(q)?.free_slots.push(slot);
                Err(e)
            }
        }
    }

    /// Write raw descriptors and publish `head` (malformed chains).
    pub fn submit_raw(&mut self, q: usize, descs: &[(u16, RawDesc)], head: u16) -> Result<()> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        queue.ring.add_raw(&self.mem.mem, descs, head)?;
        queue.head_slot.insert(head, None);
        Ok(())
    }

    /// Publish a head index as is (e.g. out of range).
    pub fn publish_raw_head(&mut self, q: usize, head: u16) -> Result<()> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        queue.ring.publish_head(&self.mem.mem, head)
    }

    /// Kick queue `q` if the device asked for it.
    pub fn kick(&mut self, q: usize) -> Result<()> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        let need = queue.ring.needs_kick(&self.mem.mem, queue.kicked_at)?;
        queue.kicked_at = queue.ring.avail_idx();
        if need {
            queue.kick.write(1)?;
        }
        Ok(())
    }

    /// Kick queue `q` unconditionally.
    pub fn kick_now(&mut self, q: usize) -> Result<()> {
        let queue = self.queue(q)?;
        queue.kicked_at = queue.ring.avail_idx();
        queue.kick.write(1)?;
        Ok(())
    }

    /// Requests submitted on `q` and not completed.
    pub fn pending(&self, q: usize) -> usize {
        self.queues.get(q).map_or(0, |x| x.head_slot.len())
    }

    fn harvest(&mut self, q: usize, out: &mut Vec<Completion>) -> Result<()> {
        loop {
            let queue = self
                .queues
                .get_mut(q)
                .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
            let Some((head, used_len)) = queue.ring.pop_used(&self.mem.mem)? else {
                return Ok(());
            };
            let slot = queue.head_slot.remove(&head).flatten();
            if let Some(s) = slot {
                queue.free_slots.push(s);
            }
            let status = match slot {
                Some(s) => Some(
                    self.mem
                        .mem
                        .read_obj::<u8>(GuestAddress(self.slot_base(q, s) + 32))
                        .map_err(|e| HarnessError::Memory(e.to_string()))?,
                ),
                None => None,
            };
            out.push(Completion {
                queue: q,
                head,
                slot,
                status,
                used_len,
            });
        }
    }

    /// Wait for at least one completion on `q` (or `timeout`).
    pub fn wait_timeout(&mut self, q: usize, timeout: Duration) -> Result<Vec<Completion>> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.harvest(q, &mut out)?;
            if !out.is_empty() {
                return Ok(out);
            }
            let queue = self
                .queues
                .get_mut(q)
                .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
            queue.ring.arm_interrupt(&self.mem.mem)?;
            if queue.ring.has_used(&self.mem.mem)? {
                continue;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout);
            }
            let ms = u16::try_from((deadline - now).as_millis().min(100)).unwrap_or(100);
            let raw = queue.call.as_raw_fd();
            // SAFETY: `raw` is the call eventfd owned by `queue`, which outlives
            // this borrow (the poll below).
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(HarnessError::Io(e.into())),
            }
            let _ = queue.call.read();
        }
    }

    /// Wait for at least one completion on `q`.
    pub fn wait(&mut self, q: usize) -> Result<Vec<Completion>> {
        self.wait_timeout(q, self.opts.timeout)
    }

    /// Submit, kick and wait for this one request.
    pub fn run(&mut self, q: usize, r: Request<'_>) -> Result<Completion> {
        let (head, _) = self.submit(q, r)?;
        self.kick(q)?;
        loop {
            for c in self.wait(q)? {
                if c.head == head {
                    return Ok(c);
                }
            }
        }
    }

    /// Read; returns status and data.
    pub fn read(&mut self, q: usize, sector: u64, len: u32) -> Result<(u8, Vec<u8>)> {
        let c = self.run(q, Request::Read { sector, len })?;
        let slot = c
            .slot
            .ok_or_else(|| HarnessError::Invalid("no slot".into()))?;
        Ok((
            c.status.unwrap_or(0xff),
            self.slot_data(q, slot, len as usize)?,
        ))
    }

    /// Write; returns status.
    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> Result<u8> {
        Ok(self
            .run(q, Request::Write { sector, data })?
            .status
            .unwrap_or(0xff))
    }

    /// Flush; returns status.
    pub fn flush(&mut self, q: usize) -> Result<u8> {
        Ok(self.run(q, Request::Flush)?.status.unwrap_or(0xff))
    }

    /// GET_ID; returns status and the 20 id bytes.
    pub fn get_id(&mut self, q: usize) -> Result<(u8, Vec<u8>)> {
        let c = self.run(q, Request::GetId)?;
        let slot = c
            .slot
            .ok_or_else(|| HarnessError::Invalid("no slot".into()))?;
        Ok((c.status.unwrap_or(0xff), self.slot_data(q, slot, 20)?))
    }
}
