//! The driver side of a split virtqueue, built by hand in guest memory.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{HarnessError, Result};

/// Descriptor continues.
pub const F_NEXT: u16 = 1;
/// Device writes this buffer.
pub const F_WRITE: u16 = 2;

/// One buffer of a chain: address, length, device-writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A raw descriptor as written into the table (for malformed chains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

/// Driver-side ring state.
pub struct DriverRing {
    /// Queue size.
    pub size: u16,
    /// Descriptor table GPA.
    pub desc: u64,
    /// Avail ring GPA.
    pub avail: u64,
    /// Used ring GPA.
    pub used: u64,
    avail_idx: u16,
    last_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    event_idx: bool,
}

fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Bytes a ring of `size` needs starting at a 4 KiB boundary.
pub fn ring_bytes(size: u16) -> u64 {
    let n = u64::from(size);
    let desc = 16 * n;
    let avail = (6 + 2 * n).div_ceil(4096) * 4096;
    desc.div_ceil(4096) * 4096 + avail + (6 + 8 * n).div_ceil(4096) * 4096
}

impl DriverRing {
    /// A ring at `base` (4 KiB aligned, [`ring_bytes`] long, zeroed).
    pub fn new(base: u64, size: u16, event_idx: bool) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = base + (16 * n).div_ceil(4096) * 4096;
        let used = avail + (6 + 2 * n).div_ceil(4096) * 4096;
        DriverRing {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            event_idx,
        }
    }

    /// Avail index published so far (for SET_VRING_BASE).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The descriptor index the next one-buffer [`DriverRing::add`] uses.
    pub fn next_free(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// The device's used index as it stands in memory.
    pub fn used_idx_in_memory(&self, mem: &GuestMemoryMmap<()>) -> Result<u16> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(Self::mem_err)?;
        Ok(u16::from_le(idx))
    }

    /// Descriptors free.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Set whether EVENT_IDX was negotiated.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    fn mem_err(e: impl std::fmt::Display) -> HarnessError {
        HarnessError::Memory(e.to_string())
    }

    fn write_desc(&self, mem: &GuestMemoryMmap<()>, idx: u16, d: RawDesc) -> Result<()> {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..].copy_from_slice(&d.next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(idx)))
            .map_err(Self::mem_err)
    }

    fn publish(&mut self, mem: &GuestMemoryMmap<()>, head: u16) -> Result<()> {
        self.publish_all(mem, &[head])
    }

    /// Puts `heads` on the avail ring, then moves the avail index past
    /// all of them with one store: a device sees none or all of them.
    fn publish_all(&mut self, mem: &GuestMemoryMmap<()>, heads: &[u16]) -> Result<()> {
        for head in heads {
            let slot = u64::from(self.avail_idx % self.size);
            mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
                .map_err(Self::mem_err)?;
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        fence(Ordering::Release);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .map_err(Self::mem_err)
    }

    /// Add a chain of buffers; returns its head (not yet kicked).
    pub fn add(&mut self, mem: &GuestMemoryMmap<()>, bufs: &[Buf]) -> Result<u16> {
        self.add_all(mem, &[bufs])?
            .pop()
            .ok_or(HarnessError::QueueFull(0))
    }

    /// Add several chains and publish them at once (one avail index
    /// update, as a driver adding a batch): a device looking at the ring
    /// meanwhile finds none of them or all. Returns their heads, in
    /// order (not yet kicked).
    pub fn add_all(&mut self, mem: &GuestMemoryMmap<()>, chains: &[&[Buf]]) -> Result<Vec<u16>> {
        let descs: usize = chains.iter().map(|c| c.len()).sum();
        if chains.is_empty() || chains.iter().any(|c| c.is_empty()) || descs > self.free.len() {
            return Err(HarnessError::QueueFull(0));
        }
        let heads = chains
            .iter()
            .map(|bufs| self.write_chain(mem, bufs))
            .collect::<Result<Vec<u16>>>()?;
        self.publish_all(mem, &heads)?;
        Ok(heads)
    }

    /// Writes `bufs` (not empty, enough free descriptors) into the
    /// descriptor table; returns the head.
    fn write_chain(&mut self, mem: &GuestMemoryMmap<()>, bufs: &[Buf]) -> Result<u16> {
        let idx: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let d = RawDesc {
                addr: b.addr,
                len: b.len,
                flags: if b.write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT },
                next: if last { 0 } else { idx[i + 1] },
            };
            self.write_desc(mem, idx[i], d)?;
        }
        let head = idx[0];
        self.chains.insert(head, idx);
        Ok(head)
    }

    /// Write raw descriptors at chosen indexes (taken out of the free list)
    /// and publish `head`: for malformed chains.
    pub fn add_raw(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        descs: &[(u16, RawDesc)],
        head: u16,
    ) -> Result<()> {
        for (i, d) in descs {
            self.free.retain(|f| f != i);
            self.write_desc(mem, *i, *d)?;
        }
        self.chains
            .insert(head, descs.iter().map(|d| d.0).collect());
        self.publish(mem, head)
    }

    /// Publish an arbitrary head index without writing descriptors.
    pub fn publish_head(&mut self, mem: &GuestMemoryMmap<()>, head: u16) -> Result<()> {
        self.publish(mem, head)
    }

    /// Whether the device wants a kick for avail entries added since
    /// `old_avail`.
    pub fn needs_kick(&self, mem: &GuestMemoryMmap<()>, old_avail: u16) -> Result<bool> {
        fence(Ordering::SeqCst);
        if self.event_idx {
            let ev: u16 = mem
                .load(
                    GuestAddress(self.used + 4 + 8 * u64::from(self.size)),
                    Ordering::Acquire,
                )
                .map_err(Self::mem_err)?;
            return Ok(need_event(u16::from_le(ev), self.avail_idx, old_avail));
        }
        let flags: u16 = mem
            .load(GuestAddress(self.used), Ordering::Acquire)
            .map_err(Self::mem_err)?;
        Ok(u16::from_le(flags) & 1 == 0)
    }

    /// Take the next used element, freeing its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap<()>) -> Result<Option<(u16, u32)>> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(Self::mem_err)?;
        if u16::from_le(idx) == self.last_used {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let id: u32 = mem
            .read_obj(GuestAddress(self.used + 4 + 8 * slot))
            .map_err(Self::mem_err)?;
        let len: u32 = mem
            .read_obj(GuestAddress(self.used + 8 + 8 * slot))
            .map_err(Self::mem_err)?;
        self.last_used = self.last_used.wrapping_add(1);
        let head =
            u16::try_from(u32::from_le(id)).map_err(|_| HarnessError::Invalid("used id".into()))?;
        if let Some(chain) = self.chains.remove(&head) {
            self.free.extend(chain);
        }
        Ok(Some((head, u32::from_le(len))))
    }

    /// With EVENT_IDX, ask for an interrupt on the next used element.
    pub fn arm_interrupt(&self, mem: &GuestMemoryMmap<()>) -> Result<()> {
        if self.event_idx {
            mem.store(
                self.last_used.to_le(),
                GuestAddress(self.avail + 4 + 2 * u64::from(self.size)),
                Ordering::Release,
            )
            .map_err(Self::mem_err)?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Used elements not yet harvested exist.
    pub fn has_used(&self, mem: &GuestMemoryMmap<()>) -> Result<bool> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(Self::mem_err)?;
        Ok(u16::from_le(idx) != self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn avail_idx(m: &GuestMemoryMmap<()>, r: &DriverRing) -> u16 {
        m.read_obj(GuestAddress(r.avail + 2)).unwrap()
    }

    fn avail_entry(m: &GuestMemoryMmap<()>, r: &DriverRing, slot: u64) -> u16 {
        m.read_obj(GuestAddress(r.avail + 4 + 2 * slot)).unwrap()
    }

    fn buf(addr: u64, write: bool) -> Buf {
        Buf {
            addr,
            len: 16,
            write,
        }
    }

    #[test]
    fn a_batch_is_published_with_one_avail_index_move() {
        let m = mem();
        let mut r = DriverRing::new(0, 8, false);
        let one = [buf(0x10_0000 - 64, false), buf(0x10_0000 - 32, true)];
        let two = [buf(0x10_0000 - 128, true)];
        r.add(&m, &one).unwrap();
        assert_eq!(avail_idx(&m, &r), 1);
        let heads = r.add_all(&m, &[&one, &two, &one]).unwrap();
        assert_eq!(heads.len(), 3);
        assert_eq!(avail_idx(&m, &r), 4);
        assert_eq!(r.avail_idx(), 4);
        for (slot, head) in (1u64..).zip(&heads) {
            assert_eq!(avail_entry(&m, &r, slot), *head);
        }
        assert_eq!(r.free_count(), 8 - 2 - 5);
    }

    #[test]
    fn a_batch_larger_than_the_free_descriptors_publishes_nothing() {
        let m = mem();
        let mut r = DriverRing::new(0, 4, false);
        let three = [buf(0x8000, false), buf(0x9000, false), buf(0xa000, true)];
        assert!(matches!(
            r.add_all(&m, &[&three, &three]),
            Err(HarnessError::QueueFull(_))
        ));
        assert!(r.add_all(&m, &[&three, &[]]).is_err());
        assert_eq!(
            (avail_idx(&m, &r), r.avail_idx(), r.free_count()),
            (0, 0, 4)
        );
    }
}
