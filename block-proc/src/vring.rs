//! The backend side of a split virtqueue, over guest memory.
//!
//! Written here rather than taken from `virtio-queue` because inflight
//! recovery must rebuild a descriptor chain from a head index recorded
//! before a crash, and `virtio-queue` 0.18 can only produce chains by
//! popping the avail ring (`DescriptorChain::new` is crate-private). Every
//! field the guest writes is validated: ring and descriptor indexes against
//! the queue size, chain length against the queue size (which catches
//! loops), addresses through [`GuestMemory`] lookups (done by the caller
//! when it maps buffers). Indirect descriptors are not offered.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vhost_backend_common::log::QueueLog;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory as block-proc maps it.
pub type Mem = GuestMemoryMmap<()>;

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor points at an indirect table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Errors that make a queue unusable (the guest broke the ring protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VringError {
    /// A ring or descriptor table address is not guest memory.
    #[error("ring access at {0:#x} is outside guest memory")]
    BadRingAddress(u64),
    /// The avail ring offers a head index not below the queue size.
    #[error("descriptor index {0} out of range")]
    BadIndex(u16),
    /// The chain is longer than the queue (a loop).
    #[error("descriptor chain longer than the queue (loop?)")]
    ChainTooLong,
    /// Indirect descriptors were not negotiated.
    #[error("indirect descriptor not supported")]
    Indirect,
    /// The avail index moved by more than the queue size.
    #[error("avail index jumped by {0}")]
    AvailJump(u16),
}

/// Result of ring operations.
pub type Result<T> = std::result::Result<T, VringError>;

/// One descriptor, as read from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Desc {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*`.
    pub flags: u16,
    /// Next index when `F_NEXT`.
    pub next: u16,
}

impl Desc {
    /// Device-writable.
    pub fn is_write(&self) -> bool {
        self.flags & VRING_DESC_F_WRITE != 0
    }
}

/// Ring addresses and size, as set by the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VringConfig {
    /// Queue size (power of two, ≤ 32768).
    pub size: u16,
    /// Descriptor table GPA.
    pub desc: u64,
    /// Avail ring GPA.
    pub avail: u64,
    /// Used ring GPA.
    pub used: u64,
}

/// Backend state of one split virtqueue.
#[derive(Debug)]
pub struct Vring {
    cfg: VringConfig,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    event_idx: bool,
    signalled_used: Option<Wrapping<u16>>,
    /// While dirty logging is on: where the used-ring writes are logged.
    log: Option<QueueLog>,
}

impl VringConfig {
    /// Read the chain starting at `head` into `out` (cleared first). Needs
    /// no ring state, so an I/O thread can read its request's chain
    /// without the queue's lock.
    pub fn read_chain(&self, mem: &Mem, head: u16, out: &mut Vec<Desc>) -> Result<()> {
        out.clear();
        let mut idx = head;
        loop {
            if idx >= self.size {
                return Err(VringError::BadIndex(idx));
            }
            if out.len() >= usize::from(self.size) {
                return Err(VringError::ChainTooLong);
            }
            let a = self.desc + 16 * u64::from(idx);
            let mut raw = [0u8; 16];
            mem.read_slice(&mut raw, GuestAddress(a))
                .map_err(|_| VringError::BadRingAddress(a))?;
            let d = Desc {
                addr: u64::from_le_bytes([
                    raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
                ]),
                len: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
                flags: u16::from_le_bytes([raw[12], raw[13]]),
                next: u16::from_le_bytes([raw[14], raw[15]]),
            };
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                return Err(VringError::Indirect);
            }
            out.push(d);
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = d.next;
        }
    }
}

fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Vring {
    /// A ring at `cfg` starting at `next_avail` (from SET_VRING_BASE).
    pub fn new(cfg: VringConfig, next_avail: u16, event_idx: bool) -> Self {
        Vring {
            cfg,
            next_avail: Wrapping(next_avail),
            next_used: Wrapping(next_avail),
            event_idx,
            signalled_used: None,
            log: None,
        }
    }

    /// The ring logging its used-ring writes in `log` (dirty logging on).
    pub fn with_log(mut self, log: Option<QueueLog>) -> Self {
        self.log = log;
        self
    }

    /// Logs a write of `len` bytes at `offset` of the used ring.
    fn log_used(&self, offset: u64, len: u64) {
        if let Some(l) = &self.log {
            l.used(offset, len);
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.cfg.size
    }

    /// Next avail index to consume.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// Set the next avail index (inflight recovery).
    pub fn set_next_avail(&mut self, v: u16) {
        self.next_avail = Wrapping(v);
    }

    /// Next used index to produce.
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Check that all three rings are inside guest memory.
    pub fn validate(&self, mem: &Mem) -> Result<()> {
        let n = u64::from(self.cfg.size);
        for (addr, len) in [
            (self.cfg.desc, 16 * n),
            (self.cfg.avail, 6 + 2 * n),
            (self.cfg.used, 6 + 8 * n),
        ] {
            let Ok(l) = usize::try_from(len) else {
                return Err(VringError::BadRingAddress(addr));
            };
            if mem.get_slice(GuestAddress(addr), l).is_err() {
                return Err(VringError::BadRingAddress(addr));
            }
        }
        Ok(())
    }

    fn load_u16(mem: &Mem, addr: u64) -> Result<u16> {
        mem.load::<u16>(GuestAddress(addr), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| VringError::BadRingAddress(addr))
    }

    fn store_u16(mem: &Mem, addr: u64, v: u16) -> Result<()> {
        mem.store(v.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| VringError::BadRingAddress(addr))
    }

    /// The avail ring's `idx`, as the driver last published it.
    pub fn avail_idx(&self, mem: &Mem) -> Result<u16> {
        Self::load_u16(mem, self.cfg.avail + 2)
    }

    /// Whether the driver published requests not taken yet.
    pub fn has_avail(&self, mem: &Mem) -> Result<bool> {
        Ok(self.avail_idx(mem)? != self.next_avail.0)
    }

    /// The used ring's `idx` as it is in guest memory.
    pub fn used_idx_in_memory(&self, mem: &Mem) -> Result<u16> {
        Self::load_u16(mem, self.cfg.used + 2)
    }

    /// Set the next used index (inflight recovery from the ring in memory).
    pub fn set_next_used(&mut self, v: u16) {
        self.next_used = Wrapping(v);
    }

    /// Take the next head index from the avail ring, if any.
    pub fn pop(&mut self, mem: &Mem) -> Result<Option<u16>> {
        let avail = Wrapping(self.avail_idx(mem)?);
        let pending = (avail - self.next_avail).0;
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.cfg.size {
            return Err(VringError::AvailJump(pending));
        }
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail.0 % self.cfg.size);
        let head = Self::load_u16(mem, self.cfg.avail + 4 + 2 * slot)?;
        if head >= self.cfg.size {
            return Err(VringError::BadIndex(head));
        }
        self.next_avail += 1;
        Ok(Some(head))
    }

    /// Read the chain starting at `head` into `out` (cleared first).
    pub fn chain(&self, mem: &Mem, head: u16, out: &mut Vec<Desc>) -> Result<()> {
        self.cfg.read_chain(mem, head, out)
    }

    /// The ring's addresses and size.
    pub fn config(&self) -> VringConfig {
        self.cfg
    }

    /// Write a used element and publish the new used index.
    pub fn add_used(&mut self, mem: &Mem, head: u16, len: u32) -> Result<()> {
        let slot = u64::from(self.next_used.0 % self.cfg.size);
        let a = self.cfg.used + 4 + 8 * slot;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(a))
            .map_err(|_| VringError::BadRingAddress(a))?;
        self.log_used(4 + 8 * slot, 8);
        self.next_used += 1;
        fence(Ordering::Release);
        Self::store_u16(mem, self.cfg.used + 2, self.next_used.0)?;
        self.log_used(2, 2);
        Ok(())
    }

    /// With EVENT_IDX, ask to be kicked when the avail index passes the
    /// current position. Returns whether new buffers arrived meanwhile.
    pub fn enable_notification(&self, mem: &Mem) -> Result<bool> {
        if self.event_idx {
            let off = 4 + 8 * u64::from(self.cfg.size);
            Self::store_u16(mem, self.cfg.used + off, self.next_avail.0)?;
            self.log_used(off, 2);
        } else {
            // Clear VRING_USED_F_NO_NOTIFY.
            Self::store_u16(mem, self.cfg.used, 0)?;
            self.log_used(0, 2);
        }
        fence(Ordering::SeqCst);
        Ok(self.avail_idx(mem)? != self.next_avail.0)
    }

    /// Whether the driver wants an interrupt for what was used since the
    /// last one.
    pub fn needs_notification(&mut self, mem: &Mem) -> Result<bool> {
        fence(Ordering::SeqCst);
        let new = self.next_used;
        if !self.event_idx {
            let flags = Self::load_u16(mem, self.cfg.avail)?;
            return Ok(flags & 1 == 0);
        }
        let old = self.signalled_used.replace(new);
        let Some(old) = old else {
            return Ok(true);
        };
        let ev = Self::load_u16(mem, self.cfg.avail + 4 + 2 * u64::from(self.cfg.size))?;
        Ok(need_event(ev, new.0, old.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use vm_memory::Address;

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn write_desc(m: &Mem, base: u64, i: u16, d: Desc) {
        let a = GuestAddress(base + 16 * u64::from(i));
        m.write_obj(d.addr, a).unwrap();
        m.write_obj(d.len, a.unchecked_add(8)).unwrap();
        m.write_obj(d.flags, a.unchecked_add(12)).unwrap();
        m.write_obj(d.next, a.unchecked_add(14)).unwrap();
    }

    fn ring() -> Vring {
        Vring::new(
            VringConfig {
                size: 8,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
            },
            0,
            true,
        )
    }

    #[test]
    fn chain_with_loop_is_rejected() {
        let m = mem();
        let r = ring();
        write_desc(
            &m,
            0x1000,
            0,
            Desc {
                addr: 0x8000,
                len: 16,
                flags: VRING_DESC_F_NEXT,
                next: 1,
            },
        );
        write_desc(
            &m,
            0x1000,
            1,
            Desc {
                addr: 0x8000,
                len: 16,
                flags: VRING_DESC_F_NEXT,
                next: 0,
            },
        );
        let mut v = Vec::new();
        assert_eq!(r.chain(&m, 0, &mut v), Err(VringError::ChainTooLong));
    }

    #[test]
    fn chain_with_out_of_range_next_is_rejected() {
        let m = mem();
        let r = ring();
        write_desc(
            &m,
            0x1000,
            0,
            Desc {
                addr: 0x8000,
                len: 16,
                flags: VRING_DESC_F_NEXT,
                next: 99,
            },
        );
        let mut v = Vec::new();
        assert_eq!(r.chain(&m, 0, &mut v), Err(VringError::BadIndex(99)));
    }

    #[test]
    fn pop_rejects_head_out_of_range_and_avail_jumps() {
        let m = mem();
        let mut r = ring();
        m.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        m.write_obj(42u16, GuestAddress(0x2004)).unwrap();
        assert_eq!(r.pop(&m), Err(VringError::BadIndex(42)));
        let mut r = ring();
        m.write_obj(100u16, GuestAddress(0x2002)).unwrap();
        assert_eq!(r.pop(&m), Err(VringError::AvailJump(100)));
    }

    #[test]
    fn add_used_publishes_element_and_index() {
        let m = mem();
        let mut r = ring();
        r.add_used(&m, 3, 513).unwrap();
        assert_eq!(m.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x3004)).unwrap(), 3);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x3008)).unwrap(), 513);
    }

    #[test]
    fn with_a_log_used_ring_writes_are_logged_at_the_log_address() {
        use vhost_backend_common::log::{DirtyLog, LOG_ALL};
        let f = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"l", nix::sys::memfd::MFdFlags::empty()).unwrap(),
        );
        f.set_len(4096).unwrap();
        let log = std::sync::Arc::new(DirtyLog::map(f.try_clone().unwrap(), 0, 64).unwrap());
        let m = mem();
        // The frontend's log address for the used ring: page 0x30 (the
        // ring's own address is not used for logging).
        let q = QueueLog::new(LOG_ALL, Some(&log), Some(0x30_000));
        let mut r = ring().with_log(q);
        r.add_used(&m, 3, 513).unwrap();
        let mut raw = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut raw, 0).unwrap();
        assert_eq!(raw, [0, 0, 0, 0, 0, 0, 1, 0], "page 0x30 only");
        // Without a log nothing is marked.
        let f2 = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"l", nix::sys::memfd::MFdFlags::empty()).unwrap(),
        );
        f2.set_len(4096).unwrap();
        let log2 = std::sync::Arc::new(DirtyLog::map(f2.try_clone().unwrap(), 0, 64).unwrap());
        let mut r = ring().with_log(QueueLog::new(0, Some(&log2), Some(0x30_000)));
        r.add_used(&m, 3, 513).unwrap();
        r.enable_notification(&m).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f2, &mut raw, 0).unwrap();
        assert_eq!(raw, [0; 8]);
    }

    #[test]
    fn event_idx_notification_follows_used_event() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 2));
    }

    #[test]
    fn random_rings_never_panic() {
        let m = mem();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::new();
        for _ in 0..2_000 {
            for _ in 0..64 {
                let _ = m.write_obj(rnd(), GuestAddress((0x1000 + (rnd() % 0x3000)) & !7));
            }
            let mut r = ring();
            for _ in 0..16 {
                match r.pop(&m) {
                    Ok(Some(h)) => {
                        if r.chain(&m, h, &mut out).is_ok() {
                            assert!(out.len() <= 8);
                            let _ = r.add_used(&m, h, 1);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = r.needs_notification(&m);
            let _ = r.enable_notification(&m);
        }
    }
}
