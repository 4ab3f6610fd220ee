//! Repair of the refcounts a SIGKILLed block-proc may leave missing in a
//! qcow2 image, run before imago opens the image for writing.
//!
//! imago 0.2.6 (the newest release) can put a reference to a freshly
//! allocated cluster into the file before that cluster's refcount:
//! `Qcow2::ensure_l2()` writes the new L1 entry straight to the file while
//! the L2 table's refcount is still only in imago's refblock cache (and
//! `ensure_rb()` does the same for reftable entries), and a metadata flush
//! running while another request allocates can write an L2 entry whose data
//! cluster's refcount it wrote back just before that allocation. In a
//! running process this is harmless, but after a SIGKILL the file holds a
//! table pointing at a cluster with refcount 0: the restarted imago
//! allocates that cluster again (e.g. for guest data) and the image is
//! corrupt ("Invalid L2 entry ..., reserved bits set").
//!
//! QEMU solves the same problem for its lazy refcounts by repairing the
//! refcounts when it opens an image that was not closed cleanly. This does
//! the part of that repair such a kill needs, written by hand since imago
//! has no check/repair: every cluster that the L1 table, an L2 table or the
//! refcount table references and whose refcount in the file is 0 gets
//! refcount 1. (A cluster counted but not referenced is only leaked, which
//! is harmless.) It reads the L1 table, every allocated L2 table and the
//! refblocks once.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::iobuf::{AlignedBuf, DIRECT_ALIGN};

/// Errors repairing an image's refcounts.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The file could not be read or written.
    #[error("could not repair qcow2 refcounts: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata is inconsistent in a way this repair does not handle.
    #[error("qcow2 image is corrupt: {0}")]
    Corrupt(String),
}

pub(crate) type Result<T> = std::result::Result<T, RepairError>;

/// Offset bits of L1, L2 and reftable entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry flag: compressed cluster (its host range is not one cluster).
const L2_COMPRESSED: u64 = 1 << 62;
/// Incompatible feature bit: external data file (data is not refcounted).
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

/// Reads `len` bytes at `off` through an aligned buffer (the file may be
/// `O_DIRECT`); bytes past the end of the file read as zero.
pub(crate) fn read_span(file: &File, off: u64, len: usize) -> Result<Vec<u8>> {
    let a = DIRECT_ALIGN as u64;
    let start = off / a * a;
    let end = (off + len as u64).div_ceil(a) * a;
    let mut buf = AlignedBuf::new((end - start) as usize)?;
    let b = buf.as_mut_slice();
    let mut done = 0;
    while done < b.len() {
        match file.read_at(&mut b[done..], start + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    let at = (off - start) as usize;
    Ok(b[at..at + len].to_vec())
}

/// Writes `data` at `off` by read-modify-write of the aligned blocks that
/// hold it.
pub(crate) fn write_span(file: &File, off: u64, data: &[u8]) -> Result<()> {
    let a = DIRECT_ALIGN as u64;
    let start = off / a * a;
    let end = (off + data.len() as u64).div_ceil(a) * a;
    let mut span = read_span(file, start, (end - start) as usize)?;
    let at = (off - start) as usize;
    span[at..at + data.len()].copy_from_slice(data);
    let mut buf = AlignedBuf::new(span.len())?;
    buf.as_mut_slice()[..span.len()].copy_from_slice(&span);
    file.write_all_at(&buf.as_slice()[..span.len()], start)?;
    Ok(())
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

/// The table entries (big-endian u64) of a table of `n` entries at `off`.
fn read_table(file: &File, off: u64, n: usize) -> Result<Vec<u64>> {
    let raw = read_span(file, off, n * 8)?;
    Ok((0..n).map(|i| be64(&raw, i * 8)).collect())
}

/// The image's refcount geometry and refcount table: where a cluster's
/// refcount lives and how an entry is encoded.
struct Refcounts {
    cluster_bits: u32,
    refcount_bits: u32,
    reftable: Vec<u64>,
}

impl Refcounts {
    fn entries_per_block(&self) -> u64 {
        (1u64 << self.cluster_bits) * 8 / u64::from(self.refcount_bits)
    }

    /// The refblock offset and entry index of `cluster`'s refcount.
    fn locate(&self, cluster: u64) -> Result<(u64, u64)> {
        let per = self.entries_per_block();
        let rb = self
            .reftable
            .get((cluster / per) as usize)
            .map(|e| e & OFFSET_MASK)
            .unwrap_or(0);
        if rb == 0 {
            return Err(RepairError::Corrupt(format!(
                "cluster {cluster} is referenced but has no refcount block"
            )));
        }
        Ok((rb, cluster % per))
    }

    /// Byte offset in the refblock, shift and mask of entry `i`.
    fn entry_bits(&self, i: u64) -> (usize, u32, u64) {
        let bits = u64::from(self.refcount_bits);
        if bits >= 8 {
            return ((i * bits / 8) as usize, 0, u64::MAX);
        }
        let per_byte = 8 / bits;
        let shift = ((i % per_byte) * bits) as u32;
        ((i / per_byte) as usize, shift, (1 << bits) - 1)
    }

    fn is_zero(&self, block: &[u8], i: u64) -> bool {
        let (at, shift, mask) = self.entry_bits(i);
        let bytes = (self.refcount_bits as usize).div_ceil(8);
        if self.refcount_bits >= 8 {
            return block[at..at + bytes].iter().all(|&b| b == 0);
        }
        (u64::from(block[at]) >> shift) & mask == 0
    }

    fn set_one(&self, block: &mut [u8], i: u64) {
        let (at, shift, mask) = self.entry_bits(i);
        if self.refcount_bits >= 8 {
            let bytes = self.refcount_bits as usize / 8;
            block[at..at + bytes].fill(0);
            block[at + bytes - 1] = 1;
            return;
        }
        let cleared = u64::from(block[at]) & !(mask << shift);
        block[at] = (cleared | (1 << shift)) as u8;
    }
}

/// Gives every referenced cluster of the qcow2 image in `file` whose
/// refcount is 0 the refcount 1. Returns how many it repaired.
pub fn repair_refcounts(file: &File) -> Result<usize> {
    let head = read_span(file, 0, 104)?;
    if head[..4] != *b"QFI\xfb" {
        return Err(RepairError::Corrupt("not a qcow2 image".into()));
    }
    let version = be32(&head, 4);
    let cluster_bits = be32(&head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(RepairError::Corrupt(format!("cluster_bits {cluster_bits}")));
    }
    let (incompat, refcount_order) = if version >= 3 {
        (be64(&head, 72), be32(&head, 96))
    } else {
        (0, 4)
    };
    if refcount_order > 6 {
        return Err(RepairError::Corrupt(format!(
            "refcount_order {refcount_order}"
        )));
    }
    let cluster = 1u64 << cluster_bits;
    let l1_size = be32(&head, 36) as usize;
    let l1_off = be64(&head, 40);
    let rt_off = be64(&head, 48);
    let rt_clusters = u64::from(be32(&head, 56));
    // Bound what a corrupt header can make this read (QEMU's limits).
    if l1_size > (32 << 20) / 8 || rt_clusters > (8 << 20) / cluster {
        return Err(RepairError::Corrupt("metadata table too large".into()));
    }
    let reftable = read_table(file, rt_off, (rt_clusters * cluster / 8) as usize)?;
    let l1 = read_table(file, l1_off, l1_size)?;

    let mut fix = Fixer {
        rc: Refcounts {
            cluster_bits,
            refcount_bits: 1 << refcount_order,
            reftable,
        },
        file,
        block: None,
        repaired: 0,
    };
    fix.mark(0)?;
    for i in 0..rt_clusters {
        fix.mark(rt_off / cluster + i)?;
    }
    for i in 0..(l1_size as u64 * 8).div_ceil(cluster) {
        fix.mark(l1_off / cluster + i)?;
    }
    let refblocks: Vec<u64> = fix.rc.reftable.iter().map(|e| e & OFFSET_MASK).collect();
    for rb in refblocks.into_iter().filter(|&o| o != 0) {
        fix.mark(rb / cluster)?;
    }
    let data_refcounted = incompat & INCOMPAT_DATA_FILE == 0;
    for l2_off in l1.iter().map(|e| e & OFFSET_MASK).filter(|&o| o != 0) {
        fix.mark(l2_off / cluster)?;
        if !data_refcounted {
            continue;
        }
        for e in read_table(file, l2_off, (cluster / 8) as usize)? {
            // A compressed cluster's refcounts are set when it is written
            // (imago does not write them); skip them.
            if e & L2_COMPRESSED == 0 && e & OFFSET_MASK != 0 {
                fix.mark((e & OFFSET_MASK) / cluster)?;
            }
        }
    }
    fix.write_back()?;
    Ok(fix.repaired)
}

/// Sets refcounts to 1 where they are 0, one refblock in memory at a time
/// (referenced clusters come roughly in file order).
struct Fixer<'a> {
    rc: Refcounts,
    file: &'a File,
    /// The refblock in memory: its offset, contents and whether changed.
    block: Option<(u64, Vec<u8>, bool)>,
    repaired: usize,
}

impl Fixer<'_> {
    /// Gives `cluster` (which the image references) refcount 1 if it has 0.
    fn mark(&mut self, cluster: u64) -> Result<()> {
        let (rb, i) = self.rc.locate(cluster)?;
        if self.block.as_ref().is_none_or(|b| b.0 != rb) {
            self.write_back()?;
            let size = 1usize << self.rc.cluster_bits;
            self.block = Some((rb, read_span(self.file, rb, size)?, false));
        }
        if let Some((_, block, dirty)) = self.block.as_mut() {
            if self.rc.is_zero(block, i) {
                self.rc.set_one(block, i);
                *dirty = true;
                self.repaired += 1;
            }
        }
        Ok(())
    }

    /// Writes the refblock in memory back if it changed.
    fn write_back(&mut self) -> Result<()> {
        if let Some((rb, block, true)) = self.block.take() {
            write_span(self.file, rb, &block)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(order: u32) -> Refcounts {
        Refcounts {
            cluster_bits: 9,
            refcount_bits: 1 << order,
            reftable: vec![0x200],
        }
    }

    #[test]
    fn refcount_entries_of_every_width_are_set_to_one_alone() {
        for order in 0..=6 {
            let r = rc(order);
            let mut block = vec![0u8; 512];
            for i in [0u64, 1, 5, 63] {
                assert!(r.is_zero(&block, i), "order {order} entry {i}");
            }
            r.set_one(&mut block, 5);
            assert!(!r.is_zero(&block, 5), "order {order}");
            assert!(
                r.is_zero(&block, 4) && r.is_zero(&block, 6),
                "order {order}"
            );
            // QEMU's layout: sub-byte entries from the low bits up, wider
            // ones big-endian.
            let bits = 1u64 << order;
            let one_at = ((5 * bits + bits - 1) / 8) as usize;
            let expect = if bits >= 8 {
                1
            } else {
                1u8 << ((5 * bits) % 8)
            };
            assert_eq!(block[one_at], expect, "order {order}");
        }
    }

    #[test]
    fn cluster_without_refblock_is_reported_not_guessed() {
        let r = rc(4);
        assert!(r.locate(3).is_ok());
        let beyond = r.entries_per_block();
        assert!(matches!(r.locate(beyond), Err(RepairError::Corrupt(_))));
    }
}
