//! virtio-scsi requests over the harness frontend: command requests
//! (`virtio_scsi_cmd_req`/`_resp` with a 32-byte CDB and 96 bytes of
//! sense) on the request queues, task management on the control queue.
//!
//! Queues: 0 control, 1 event (set up, never given buffers), 2.. request
//! queues. Memory layout: the rings first, then per queue `slots` slots
//! of `slot_size + 4096` bytes: the request header at 0, the response at
//! 256, a TMF request at 512 and its response at 600, data at 4096.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// `struct virtio_scsi_cmd_req` length (32-byte CDB).
pub const REQ_LEN: u32 = 51;
/// `struct virtio_scsi_cmd_resp` length (96 bytes of sense).
pub const RESP_LEN: u32 = 108;
/// Response VIRTIO_SCSI_S_OK.
pub const S_OK: u8 = 0;
/// Response VIRTIO_SCSI_S_OVERRUN.
pub const S_OVERRUN: u8 = 1;
/// Response VIRTIO_SCSI_S_BAD_TARGET.
pub const S_BAD_TARGET: u8 = 3;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 2;

const RESP_OFF: u64 = 256;
const TMF_OFF: u64 = 512;
const TMF_RESP_OFF: u64 = 600;
const DATA_OFF: u64 = 4096;

/// Harness device options.
#[derive(Debug, Clone)]
pub struct ScsiOptions {
    /// Request queues to set up (the control and event queues come on top).
    pub request_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Request slots per queue.
    pub slots: u16,
    /// Max data bytes per request.
    pub slot_size: u32,
    /// How long to wait for a completion.
    pub timeout: Duration,
}

impl Default for ScsiOptions {
    fn default() -> Self {
        ScsiOptions {
            request_queues: 1,
            queue_size: 128,
            slots: 32,
            slot_size: 1 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The data phase of a command.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// No data.
    None,
    /// The device writes up to this many bytes.
    In(u32),
    /// The device reads these bytes.
    Out(&'a [u8]),
}

/// A finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    /// virtio-scsi response code.
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    /// Sense data (`sense_len` bytes).
    pub sense: Vec<u8>,
    /// Residual.
    pub resid: u32,
    /// Used length the device reported.
    pub used_len: u32,
    /// The data-in buffer (as long as asked for).
    pub data: Vec<u8>,
}

impl ScsiResult {
    /// (key, ASC, ASCQ) of fixed-format sense, or zeros.
    pub fn sense_key(&self) -> (u8, u8, u8) {
        let b = |i: usize| self.sense.get(i).copied().unwrap_or(0);
        (b(2) & 0x0f, b(12), b(13))
    }
}

/// A used element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Queue.
    pub queue: usize,
    /// Head.
    pub head: u16,
    /// Slot, None for raw chains.
    pub slot: Option<u16>,
    /// Used length.
    pub used_len: u32,
}

struct Queue {
    ring: DriverRing,
    kick: EventFd,
    call: EventFd,
    free_slots: Vec<u16>,
    head_slot: HashMap<u16, (Option<u16>, u32)>,
    kicked_at: u16,
}

/// A virtio-scsi controller driven through vhost-user.
pub struct ScsiDevice {
    conn: Connection,
    mem: GuestMem,
    queues: Vec<Queue>,
    opts: ScsiOptions,
    inflight: Option<(VhostUserInflight, File)>,
    data_base: u64,
    stride: u64,
    socket: Option<PathBuf>,
}

fn me(e: vm_memory::GuestMemoryError) -> HarnessError {
    HarnessError::Memory(e.to_string())
}

fn queue_of(queues: &mut [Queue], q: usize) -> Result<&mut Queue> {
    queues
        .get_mut(q)
        .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))
}

/// The virtio-scsi LUN field of (target, lun).
pub fn lun_field(target: u8, lun: u16) -> [u8; 8] {
    let mut l = [0u8; 8];
    l[0] = 1;
    l[1] = target;
    l[2] = 0x40 | ((lun >> 8) as u8 & 0x3f);
    l[3] = (lun & 0xff) as u8;
    l
}

impl ScsiDevice {
    /// Connect to the backend at `socket` and set everything up.
    pub fn connect(socket: &Path, opts: ScsiOptions) -> Result<Self> {
        let fe = connect_retry(socket, u64::from(opts.request_queues) + 2, opts.timeout)?;
        Self::over(fe, Some(socket.to_path_buf()), opts)
    }

    /// Set everything up over `stream` (one end of a socketpair).
    pub fn from_stream(stream: UnixStream, opts: ScsiOptions) -> Result<Self> {
        let fe = Frontend::from_stream(stream, u64::from(opts.request_queues) + 2);
        Self::over(fe, None, opts)
    }

    fn over(fe: Frontend, socket: Option<PathBuf>, opts: ScsiOptions) -> Result<Self> {
        let nq = opts.request_queues + 2;
        let rb = ring_bytes(opts.queue_size);
        let data_base = (rb * u64::from(nq)).div_ceil(1 << 20) * (1 << 20);
        let stride = u64::from(opts.slot_size) + 4096;
        let total = data_base + stride * u64::from(opts.slots) * u64::from(nq);
        let mem = GuestMem::new(total)?;
        let mut queues = Vec::new();
        for q in 0..nq {
            queues.push(Queue {
                ring: DriverRing::new(rb * u64::from(q), opts.queue_size, false),
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                free_slots: (0..opts.slots).rev().collect(),
                head_slot: HashMap::new(),
                kicked_at: 0,
            });
        }
        let conn = Connection::negotiate(fe, F_EVENT_IDX | F_VERSION_1)?;
        let mut dev = ScsiDevice {
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
        let nq = self.opts.request_queues + 2;
        let avail = self.conn.queue_num()?;
        if u64::from(nq) > avail {
            return Err(HarnessError::Invalid(format!(
                "backend offers {avail} queues"
            )));
        }
        self.conn.set_memory(&self.mem)?;
        let saved = self.inflight.take();
        self.inflight = self.conn.set_inflight(saved, nq, self.opts.queue_size)?;
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

    /// Reconnect (same memory, rings, inflight region) to a backend
    /// restarted on the same socket path.
    pub fn reconnect(&mut self) -> Result<()> {
        let Some(socket) = self.socket.clone() else {
            return Err(HarnessError::Invalid("connected over a socketpair".into()));
        };
        let nq = u64::from(self.opts.request_queues) + 2;
        let fe = connect_retry(&socket, nq, self.opts.timeout)?;
        self.reconnect_over(fe)
    }

    /// Reconnect over `stream` (a fresh socketpair end, as the broker
    /// hands out after a block-proc restart).
    pub fn reconnect_stream(&mut self, stream: UnixStream) -> Result<()> {
        let nq = u64::from(self.opts.request_queues) + 2;
        self.reconnect_over(Frontend::from_stream(stream, nq))
    }

    fn reconnect_over(&mut self, fe: Frontend) -> Result<()> {
        self.conn = Connection::negotiate(fe, F_EVENT_IDX | F_VERSION_1)?;
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

    /// The guest memory.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The config space (first `len` bytes).
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>> {
        self.conn.config(len)
    }

    /// SET_CONFIG.
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.conn.set_config(offset, data)
    }

    /// Whether an inflight region is in use.
    pub fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    fn slot_base(&self, q: usize, slot: u16) -> u64 {
        self.data_base + self.stride * (q as u64 * u64::from(self.opts.slots) + u64::from(slot))
    }

    fn queue(&mut self, q: usize) -> Result<&mut Queue> {
        queue_of(&mut self.queues, q)
    }

    /// Put a command in a fresh slot of request queue `q` (2..) on the
    /// avail ring, no kick; returns (head, slot).
    pub fn submit(
        &mut self,
        q: usize,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data: Data<'_>,
    ) -> Result<(u16, u16)> {
        if cdb.len() > 32 {
            return Err(HarnessError::Invalid("CDB longer than 32 bytes".into()));
        }
        let slot = self
            .queue(q)?
            .free_slots
            .pop()
            .ok_or(HarnessError::QueueFull(q))?;
        let base = self.slot_base(q, slot);
        let m = &self.mem.mem;
        let mut hdr = [0u8; REQ_LEN as usize];
        hdr[..8].copy_from_slice(&lun_field(target, lun));
        hdr[8..16].copy_from_slice(&u64::from(slot).to_le_bytes());
        hdr[19..19 + cdb.len()].copy_from_slice(cdb);
        m.write_slice(&hdr, GuestAddress(base)).map_err(me)?;
        m.write_slice(&[0xffu8; RESP_LEN as usize], GuestAddress(base + RESP_OFF))
            .map_err(me)?;
        let h = Buf {
            addr: base,
            len: REQ_LEN,
            write: false,
        };
        let r = Buf {
            addr: base + RESP_OFF,
            len: RESP_LEN,
            write: true,
        };
        let (bufs, in_len) = match data {
            Data::None => (vec![h, r], 0),
            Data::In(len) => {
                if len > self.opts.slot_size {
                    return Err(HarnessError::Invalid("larger than a slot".into()));
                }
                (
                    vec![
                        h,
                        r,
                        Buf {
                            addr: base + DATA_OFF,
                            len,
                            write: true,
                        },
                    ],
                    len,
                )
            }
            Data::Out(d) => {
                let len = u32::try_from(d.len()).unwrap_or(u32::MAX);
                if len > self.opts.slot_size {
                    return Err(HarnessError::Invalid("larger than a slot".into()));
                }
                m.write_slice(d, GuestAddress(base + DATA_OFF))
                    .map_err(me)?;
                (
                    vec![
                        h,
                        Buf {
                            addr: base + DATA_OFF,
                            len,
                            write: false,
                        },
                        r,
                    ],
                    0,
                )
            }
        };
        let queue = queue_of(&mut self.queues, q)?;
        let head = queue.ring.add(&self.mem.mem, &bufs)?;
        queue.head_slot.insert(head, (Some(slot), in_len));
        Ok((head, slot))
    }

    /// Write raw descriptors and publish `head` (malformed chains).
    pub fn submit_raw(&mut self, q: usize, descs: &[(u16, RawDesc)], head: u16) -> Result<()> {
        let queue = queue_of(&mut self.queues, q)?;
        queue.ring.add_raw(&self.mem.mem, descs, head)?;
        queue.head_slot.insert(head, (None, 0));
        Ok(())
    }

    /// Guest address of slot `slot` of queue `q` (header at 0, response
    /// at 256, data at 4096), for raw chains.
    pub fn slot_addr(&self, q: usize, slot: u16) -> u64 {
        self.slot_base(q, slot)
    }

    /// Write `bytes` at guest address `addr`.
    pub fn poke(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.mem
            .mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(me)
    }

    /// Kick queue `q` if the device asked for it.
    pub fn kick(&mut self, q: usize) -> Result<()> {
        let mem = &self.mem.mem;
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        let need = queue.ring.needs_kick(mem, queue.kicked_at)?;
        queue.kicked_at = queue.ring.avail_idx();
        if need {
            queue.kick.write(1)?;
        }
        Ok(())
    }

    /// Commands submitted on `q` and not completed.
    pub fn pending(&self, q: usize) -> usize {
        self.queues.get(q).map_or(0, |x| x.head_slot.len())
    }

    fn harvest(&mut self, q: usize, out: &mut Vec<Used>) -> Result<()> {
        let mem = &self.mem.mem;
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
        while let Some((head, used_len)) = queue.ring.pop_used(mem)? {
            let slot = queue.head_slot.remove(&head).and_then(|(s, _)| s);
            out.push(Used {
                queue: q,
                head,
                slot,
                used_len,
            });
        }
        Ok(())
    }

    /// Stops queue `q` (GET_VRING_BASE, as a VMM saving the device does)
    /// and returns the backend's avail position.
    pub fn stop_queue(&mut self, q: usize) -> Result<u32> {
        self.conn.stop_queue(q)
    }

    /// Wait for at least one completion on `q`.
    pub fn wait(&mut self, q: usize) -> Result<Vec<Used>> {
        self.wait_timeout(q, self.opts.timeout)
    }

    /// Wait for at least one completion on `q`, at most `timeout`.
    pub fn wait_timeout(&mut self, q: usize, timeout: Duration) -> Result<Vec<Used>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            self.harvest(q, &mut out)?;
            if !out.is_empty() {
                return Ok(out);
            }
            let mem = &self.mem.mem;
            let queue = self
                .queues
                .get_mut(q)
                .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))?;
            queue.ring.arm_interrupt(mem)?;
            if queue.ring.has_used(mem)? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout);
            }
            let ms = u16::try_from((deadline - now).as_millis().min(100)).unwrap_or(100);
            // SAFETY: the call eventfd is owned by `queue`, which outlives
            // the poll below.
            let fd = unsafe { BorrowedFd::borrow_raw(queue.call.as_raw_fd()) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(HarnessError::Io(e.into())),
            }
            let _ = queue.call.read();
        }
    }

    /// The result of a completed command in `slot` of `q` (its slot is
    /// free again after this).
    pub fn result(&mut self, u: &Used, in_len: u32) -> Result<ScsiResult> {
        let slot = u
            .slot
            .ok_or_else(|| HarnessError::Invalid("raw chain".into()))?;
        let base = self.slot_base(u.queue, slot);
        let mut r = [0u8; RESP_LEN as usize];
        self.mem
            .mem
            .read_slice(&mut r, GuestAddress(base + RESP_OFF))
            .map_err(me)?;
        let sense_len = (u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize).min(96);
        let mut data = vec![0u8; in_len as usize];
        self.mem
            .mem
            .read_slice(&mut data, GuestAddress(base + DATA_OFF))
            .map_err(me)?;
        self.queue(u.queue)?.free_slots.push(slot);
        Ok(ScsiResult {
            response: r[11],
            status: r[10],
            sense: r[12..12 + sense_len].to_vec(),
            resid: u32::from_le_bytes([r[4], r[5], r[6], r[7]]),
            used_len: u.used_len,
            data,
        })
    }

    /// Free the slot of a completion without reading it.
    pub fn release(&mut self, u: &Used) -> Result<()> {
        if let Some(s) = u.slot {
            self.queue(u.queue)?.free_slots.push(s);
        }
        Ok(())
    }

    /// Submit, kick and wait for one command on request queue 2.
    pub fn command(
        &mut self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data: Data<'_>,
    ) -> Result<ScsiResult> {
        let q = 2;
        let in_len = match data {
            Data::In(n) => n,
            Data::None | Data::Out(_) => 0,
        };
        let (head, _) = self.submit(q, target, lun, cdb, data)?;
        self.kick(q)?;
        loop {
            for u in self.wait(q)? {
                if u.head == head {
                    return self.result(&u, in_len);
                }
                self.release(&u)?;
            }
        }
    }

    /// READ(10) of `blocks` blocks of `block_size` at `lba` (target 0, LUN 0).
    pub fn read10(&mut self, lba: u32, blocks: u16, block_size: u32) -> Result<ScsiResult> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.command(0, 0, &cdb, Data::In(u32::from(blocks) * block_size))
    }

    /// A task management function on the control queue; the response.
    pub fn tmf(&mut self, subtype: u32, target: u8, lun: u16) -> Result<u8> {
        let base = self.slot_base(0, 0);
        let mut req = [0u8; 24];
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8..16].copy_from_slice(&lun_field(target, lun));
        self.mem
            .mem
            .write_slice(&req, GuestAddress(base + TMF_OFF))
            .map_err(me)?;
        self.mem
            .mem
            .write_obj(0xffu8, GuestAddress(base + TMF_RESP_OFF))
            .map_err(me)?;
        let bufs = [
            Buf {
                addr: base + TMF_OFF,
                len: 24,
                write: false,
            },
            Buf {
                addr: base + TMF_RESP_OFF,
                len: 1,
                write: true,
            },
        ];
        let queue = queue_of(&mut self.queues, 0)?;
        let head = queue.ring.add(&self.mem.mem, &bufs)?;
        queue.head_slot.insert(head, (None, 0));
        self.kick(0)?;
        loop {
            if self.wait(0)?.iter().any(|u| u.head == head) {
                return self
                    .mem
                    .mem
                    .read_obj::<u8>(GuestAddress(base + TMF_RESP_OFF))
                    .map_err(me);
            }
        }
    }
}
