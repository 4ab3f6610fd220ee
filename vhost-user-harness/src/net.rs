//! virtio-net through vhost-user without a VM: tx and rx rings of each
//! queue pair, frames with their 12-byte vnet header, merged rx buffers,
//! raw (malicious) chains, and reconnection over a fresh socket.
//!
//! Buffers: every chain the harness builds is one descriptor whose buffer
//! is the slot of its descriptor index, so a used element's head says
//! where its data is.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::Frontend;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dirty_log::{self, HarnessLog};
use crate::error::{HarnessError, Result};
use crate::frontend::{Connection, RingAddrs, F_EVENT_IDX, F_VERSION_1};
use crate::memory::GuestMem;
use crate::ring::{ring_bytes, Buf, DriverRing, RawDesc};

/// The vnet header length with VIRTIO_F_VERSION_1.
pub const HDR_LEN: usize = 12;
/// `VIRTIO_NET_F_MAC`.
pub const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MTU`.
pub const F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_STATUS`.
pub const F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_F_CSUM` and `GUEST_CSUM`, TSO4/6 both ways.
pub const F_OFFLOADS: u64 = 1 | 2 | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 12);
/// `VIRTIO_NET_F_MQ`.
pub const F_MQ: u64 = 1 << 22;

/// Largest tx frame (with its header) a slot holds.
const TX_SLOT: u64 = 65_536 + 4096;

/// Options of a [`NetDevice`].
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Queue pairs.
    pub queue_pairs: u16,
    /// Size of every ring.
    pub queue_size: u16,
    /// Features wanted (acked when offered).
    pub features: u64,
    /// Size of each rx buffer.
    pub rx_buf_len: u32,
    /// How long waits last.
    pub timeout: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            queue_pairs: 1,
            queue_size: 256,
            features: F_VERSION_1 | F_EVENT_IDX | F_MAC | F_STATUS | F_MRG_RXBUF | F_MTU,
            rx_buf_len: 2048,
            timeout: Duration::from_secs(5),
        }
    }
}

struct Queue {
    ring: DriverRing,
    kick: EventFd,
    call: EventFd,
    kicked_at: u16,
    slots: u64,
    slot_len: u64,
    /// Buffers of a merged rx frame harvested so far.
    partial: Vec<Vec<u8>>,
    /// Buffers of a merged packet [`NetDevice::count_rx`] still skips.
    skip: usize,
    /// Tx: length of the frame every slot holds ([`NetDevice::prefill_tx`]).
    prefilled: usize,
}

/// A virtio-net device driven through vhost-user.
pub struct NetDevice {
    conn: Connection,
    mem: GuestMem,
    queues: Vec<Queue>,
    opts: NetOptions,
}

impl NetDevice {
    /// Set up over `stream`, one end of a socketpair the backend serves.
    pub fn from_stream(stream: UnixStream, opts: NetOptions) -> Result<Self> {
        let nq = usize::from(opts.queue_pairs) * 2;
        let fe = Frontend::from_stream(stream, nq as u64);
        let rb = ring_bytes(opts.queue_size);
        let rings = rb * nq as u64;
        let mut base = rings.div_ceil(1 << 20) * (1 << 20);
        let mut queues = Vec::new();
        for q in 0..nq {
            let slot_len = if q.is_multiple_of(2) {
                u64::from(opts.rx_buf_len).div_ceil(64) * 64
            } else {
                TX_SLOT
            };
            queues.push(Queue {
                ring: DriverRing::new(rb * q as u64, opts.queue_size, false),
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                kicked_at: 0,
                slots: base,
                slot_len,
                partial: Vec::new(),
                skip: 0,
                prefilled: 0,
            });
            base += slot_len * u64::from(opts.queue_size);
        }
        let mem = GuestMem::new(base)?;
        let conn = Connection::negotiate(fe, opts.features)?;
        let mut dev = NetDevice {
            conn,
            mem,
            queues,
            opts,
        };
        dev.setup(false)?;
        Ok(dev)
    }

    fn setup(&mut self, resume: bool) -> Result<()> {
        let event_idx = self.conn.features & F_EVENT_IDX != 0;
        let nq = self.conn.queue_num()?;
        if (self.queues.len() as u64) > nq {
            return Err(HarnessError::Invalid(format!("backend offers {nq} queues")));
        }
        self.conn.set_memory(&self.mem)?;
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.ring.set_event_idx(event_idx);
            let r = RingAddrs {
                size: q.ring.size,
                desc: q.ring.desc,
                avail: q.ring.avail,
                used: q.ring.used,
            };
            // After a backend restart, resume from what the device last
            // completed: buffers it took but never used are offered again.
            let base = if resume {
                q.ring.used_idx_in_memory(&self.mem.mem)?
            } else {
                q.ring.avail_idx()
            };
            self.conn
                .setup_queue(&self.mem, i, r, base, &q.kick, &q.call)?;
            q.kicked_at = q.ring.avail_idx();
        }
        // Tell the backend about buffers it may have missed.
        for q in &self.queues {
            q.kick.write(1)?;
        }
        Ok(())
    }

    /// Reconnect over a fresh `stream` (same memory and rings), as a VMM
    /// does after the backend restarted.
    pub fn reconnect(&mut self, stream: UnixStream) -> Result<()> {
        let nq = self.queues.len() as u64;
        let fe = Frontend::from_stream(stream, nq);
        self.conn = Connection::negotiate(fe, self.opts.features)?;
        self.setup(true)
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

    /// The guest-physical range of queue `q`'s buffers (slots).
    pub fn slots_range(&self, q: usize) -> (u64, u64) {
        let x = &self.queues[q];
        (x.slots, x.slot_len * u64::from(x.ring.size))
    }

    /// Acked virtio features.
    pub fn features(&self) -> u64 {
        self.conn.features
    }

    /// Read `len` bytes of config space.
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>> {
        self.conn.config(len)
    }

    /// Write config space (SET_CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.conn.set_config(offset, data)
    }

    /// The link bit of the config space's `status`.
    pub fn link_up(&mut self) -> Result<bool> {
        let c = self.config(8)?;
        Ok(c.get(6).is_some_and(|s| s & 1 != 0))
    }

    /// Guest memory (for raw chains).
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    fn queue(&mut self, q: usize) -> Result<&mut Queue> {
        self.queues
            .get_mut(q)
            .ok_or_else(|| HarnessError::Invalid(format!("no queue {q}")))
    }

    fn kick(&mut self, q: usize) -> Result<()> {
        let mem = self.mem.mem.clone();
        let queue = self.queue(q)?;
        let need = queue.ring.needs_kick(&mem, queue.kicked_at)?;
        queue.kicked_at = queue.ring.avail_idx();
        if need {
            queue.kick.write(1)?;
        }
        Ok(())
    }

    /// Frees the tx ring's used descriptors; how many.
    pub fn reap_tx(&mut self, pair: usize) -> Result<usize> {
        let mem = self.mem.mem.clone();
        let q = self.queue(pair * 2 + 1)?;
        let mut n = 0;
        while q.ring.pop_used(&mem)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Queues `frame` (the vnet header `hdr` in front) on pair `pair`'s
    /// tx ring without kicking. `QueueFull` when the ring is full.
    pub fn queue_tx(&mut self, pair: usize, hdr: &[u8; HDR_LEN], frame: &[u8]) -> Result<()> {
        let mem = self.mem.mem.clone();
        let q = self.queue(pair * 2 + 1)?;
        let Some(head) = q.ring.next_free() else {
            return Err(HarnessError::QueueFull(pair * 2 + 1));
        };
        let addr = q.slots + q.slot_len * u64::from(head);
        let len = HDR_LEN + frame.len();
        if len as u64 > q.slot_len {
            return Err(HarnessError::Invalid("frame larger than a tx slot".into()));
        }
        // The slot no longer holds the prefilled frame.
        q.prefilled = 0;
        let mem_err = |e: vm_memory::GuestMemoryError| HarnessError::Memory(e.to_string());
        mem.write_slice(hdr, GuestAddress(addr)).map_err(mem_err)?;
        mem.write_slice(frame, GuestAddress(addr + HDR_LEN as u64))
            .map_err(mem_err)?;
        let buf = Buf {
            addr,
            len: len as u32,
            write: false,
        };
        q.ring.add(&mem, &[buf])?;
        Ok(())
    }

    /// Writes `hdr` and `frame` into every tx slot of pair `pair`, for
    /// [`NetDevice::queue_tx_prefilled`]: a sender whose frames are ready
    /// in its memory (a benchmark's, as a guest reusing its buffers).
    pub fn prefill_tx(&mut self, pair: usize, hdr: &[u8; HDR_LEN], frame: &[u8]) -> Result<()> {
        let mem = self.mem.mem.clone();
        let q = self.queue(pair * 2 + 1)?;
        if (HDR_LEN + frame.len()) as u64 > q.slot_len {
            return Err(HarnessError::Invalid("frame larger than a tx slot".into()));
        }
        let mem_err = |e: vm_memory::GuestMemoryError| HarnessError::Memory(e.to_string());
        for i in 0..u64::from(q.ring.size) {
            let addr = q.slots + q.slot_len * i;
            mem.write_slice(hdr, GuestAddress(addr)).map_err(mem_err)?;
            mem.write_slice(frame, GuestAddress(addr + HDR_LEN as u64))
                .map_err(mem_err)?;
        }
        q.prefilled = HDR_LEN + frame.len();
        Ok(())
    }

    /// Queues the next free tx slot of pair `pair` as [`NetDevice::prefill_tx`]
    /// left it, without kicking. `QueueFull` when the ring is full.
    pub fn queue_tx_prefilled(&mut self, pair: usize) -> Result<()> {
        let mem = self.mem.mem.clone();
        let q = self.queue(pair * 2 + 1)?;
        if q.prefilled == 0 {
            return Err(HarnessError::Invalid("tx slots not prefilled".into()));
        }
        let Some(head) = q.ring.next_free() else {
            return Err(HarnessError::QueueFull(pair * 2 + 1));
        };
        let buf = Buf {
            addr: q.slots + q.slot_len * u64::from(head),
            len: q.prefilled as u32,
            write: false,
        };
        q.ring.add(&mem, &[buf])?;
        Ok(())
    }

    /// Sends `frame` with an all-zero header: queue, kick, reaping used
    /// tx buffers first when the ring is full.
    pub fn send(&mut self, pair: usize, frame: &[u8]) -> Result<()> {
        self.send_with(pair, &[0; HDR_LEN], frame)
    }

    /// Sends `frame` behind the header `hdr`.
    pub fn send_with(&mut self, pair: usize, hdr: &[u8; HDR_LEN], frame: &[u8]) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            self.reap_tx(pair)?;
            match self.queue_tx(pair, hdr, frame) {
                Ok(()) => return self.kick(pair * 2 + 1),
                Err(HarnessError::QueueFull(_)) if Instant::now() < deadline => {
                    self.kick(pair * 2 + 1)?;
                    self.wait_call(pair * 2 + 1, Duration::from_millis(10))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops queue `q` (GET_VRING_BASE, as a VMM saving the device does):
    /// the backend's avail position, and the used index in memory once
    /// it answered.
    pub fn stop_queue(&mut self, q: usize) -> Result<(u32, u16)> {
        let base = self.conn.stop_queue(q)?;
        let mem = self.mem.mem.clone();
        let used = self.queue(q)?.ring.used_idx_in_memory(&mem)?;
        Ok((base, used))
    }

    /// Kicks pair `pair`'s tx ring (after [`NetDevice::queue_tx`]s).
    pub fn kick_tx(&mut self, pair: usize) -> Result<()> {
        self.kick(pair * 2 + 1)
    }

    /// Offers every free descriptor of pair `pair`'s rx ring as a buffer.
    pub fn fill_rx(&mut self, pair: usize) -> Result<usize> {
        let mem = self.mem.mem.clone();
        let q = self.queue(pair * 2)?;
        let mut n = 0;
        while let Some(head) = q.ring.next_free() {
            let buf = Buf {
                addr: q.slots + q.slot_len * u64::from(head),
                len: q.slot_len as u32,
                write: true,
            };
            q.ring.add(&mem, &[buf])?;
            n += 1;
        }
        if n > 0 {
            self.kick(pair * 2)?;
        }
        Ok(n)
    }

    /// Waits up to `timeout` for the call eventfd of queue `q`.
    fn wait_call(&mut self, q: usize, timeout: Duration) -> Result<()> {
        let mem = self.mem.mem.clone();
        let queue = self.queue(q)?;
        queue.ring.arm_interrupt(&mem)?;
        if queue.ring.has_used(&mem)? {
            return Ok(());
        }
        let ms = u16::try_from(timeout.as_millis().min(1000)).unwrap_or(1000);
        // SAFETY: the call eventfd is owned by `queue`, alive for this poll.
        let fd = unsafe { BorrowedFd::borrow_raw(queue.call.as_raw_fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(HarnessError::Io(e.into())),
        }
        let _ = queue.call.read();
        Ok(())
    }

    /// Frames received on pair `pair` so far (each with its vnet header),
    /// without waiting; rx buffers are offered again.
    pub fn poll_rx(&mut self, pair: usize) -> Result<Vec<Vec<u8>>> {
        let mem = self.mem.mem.clone();
        let mrg = self.conn.features & F_MRG_RXBUF != 0;
        let mut frames = Vec::new();
        let mem_err = |e: vm_memory::GuestMemoryError| HarnessError::Memory(e.to_string());
        loop {
            let q = self.queue(pair * 2)?;
            let Some((head, len)) = q.ring.pop_used(&mem)? else {
                break;
            };
            let addr = q.slots + q.slot_len * u64::from(head);
            let len = (len as u64).min(q.slot_len) as usize;
            let mut data = vec![0u8; len];
            mem.read_slice(&mut data, GuestAddress(addr))
                .map_err(mem_err)?;
            q.partial.push(data);
            let first = &q.partial[0];
            let want = if mrg && first.len() >= HDR_LEN {
                usize::from(u16::from_le_bytes([first[10], first[11]])).max(1)
            } else {
                1
            };
            if q.partial.len() >= want {
                frames.push(std::mem::take(&mut q.partial).concat());
            }
        }
        self.fill_rx(pair)?;
        Ok(frames)
    }

    /// Counts the frames received on pair `pair` without copying them
    /// (only each packet's `num_buffers` is read), offers the buffers
    /// again and waits up to `timeout` when none came: a benchmark's
    /// consumer, as a guest driver that only counts would be. Frames
    /// split across calls are counted when their first buffer arrives.
    pub fn count_rx(&mut self, pair: usize, timeout: Duration) -> Result<usize> {
        let mem = self.mem.mem.clone();
        let mrg = self.conn.features & F_MRG_RXBUF != 0;
        let mem_err = |e: vm_memory::GuestMemoryError| HarnessError::Memory(e.to_string());
        let mut frames = 0;
        let q = self.queue(pair * 2)?;
        while let Some((head, len)) = q.ring.pop_used(&mem)? {
            if q.skip > 0 {
                q.skip -= 1;
                continue;
            }
            frames += 1;
            if mrg && len as usize >= HDR_LEN {
                let addr = q.slots + q.slot_len * u64::from(head);
                let n: u16 = mem.read_obj(GuestAddress(addr + 10)).map_err(mem_err)?;
                q.skip = usize::from(u16::from_le(n)).saturating_sub(1);
            }
        }
        self.fill_rx(pair)?;
        if frames == 0 {
            self.wait_call(pair * 2, timeout)?;
        }
        Ok(frames)
    }

    /// Waits up to `timeout` for at least one frame on pair `pair`.
    pub fn recv_timeout(&mut self, pair: usize, timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.poll_rx(pair)?;
            if !f.is_empty() {
                return Ok(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout);
            }
            self.wait_call(pair * 2, (deadline - now).min(Duration::from_millis(50)))?;
        }
    }

    /// Waits for at least one frame on pair `pair`.
    pub fn recv(&mut self, pair: usize) -> Result<Vec<Vec<u8>>> {
        self.recv_timeout(pair, self.opts.timeout)
    }

    /// Writes raw descriptors into queue `q` and publishes `head`, then
    /// kicks: for malformed chains.
    pub fn submit_raw(&mut self, q: usize, descs: &[(u16, RawDesc)], head: u16) -> Result<()> {
        let mem = self.mem.mem.clone();
        self.queue(q)?.ring.add_raw(&mem, descs, head)?;
        self.queue(q)?.kick.write(1)?;
        Ok(())
    }

    /// Address of the slot of descriptor `idx` of queue `q`.
    pub fn slot_addr(&self, q: usize, idx: u16) -> u64 {
        self.queues
            .get(q)
            .map_or(0, |x| x.slots + x.slot_len * u64::from(idx))
    }

    /// Takes queue `q`'s used elements (head, length), waiting up to
    /// `timeout` for at least one.
    pub fn used(&mut self, q: usize, timeout: Duration) -> Result<Vec<(u16, u32)>> {
        let deadline = Instant::now() + timeout;
        let mem = self.mem.mem.clone();
        loop {
            let mut out = Vec::new();
            while let Some(u) = self.queue(q)?.ring.pop_used(&mem)? {
                out.push(u);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout);
            }
            self.wait_call(q, (deadline - now).min(Duration::from_millis(50)))?;
        }
    }
}
