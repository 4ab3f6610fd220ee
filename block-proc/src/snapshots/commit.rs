//! Creating and deleting a snapshot in the image file, as one atomic
//! switch of the header.
//!
//! qemu-img check calls an image corrupt when an active L1 or L2 entry's
//! COPIED flag disagrees with its cluster's refcount being 1, and those
//! live in different clusters: no order of in-place writes takes an image
//! from "no snapshot" to "snapshot" without such a state in between. So
//! nothing live is written in place before the switch: the new snapshot
//! table, a copy of the active L1 table, copies of the active L2 tables
//! whose COPIED flags change, and the changed refblocks with a new refcount
//! table (`Refcounts::write_back_shadowed`) all go to free clusters; then
//! one write of header bytes 36..72 (L1 table, refcount table, snapshot
//! count and table) switches the image to them. Before that write the old
//! image is untouched (a kill leaks the new clusters); after it, the old
//! structures are freed in place (a kill leaks them). Refcounts that must
//! reach 0 are only lowered after the switch, so no cluster the old image
//! uses can be allocated before it.

use std::collections::HashMap;
use std::fs::File;

use crate::bitmaps::refcounts::Refcounts;
use crate::block::qcow2_repair::{be32, be64, read_span, write_span};

use super::table::{self, Snapshot};
use super::{Result, SnapshotError};

/// Offset bits of L1 and standard L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The entry's cluster has refcount 1 (writable in place).
const COPIED: u64 = 1 << 63;
/// L2 entry flag: compressed cluster.
const COMPRESSED: u64 = 1 << 62;
/// Incompatible features this cannot handle: external data file,
/// extended L2 entries.
const INCOMPAT_UNSUPPORTED: u64 = (1 << 2) | (1 << 4);

/// QEMU's largest L1 table (`QCOW_MAX_L1_SIZE`, 32 MiB), in entries.
const MAX_L1_ENTRIES: u32 = (32 << 20) / 8;

/// Where a kill is simulated in tests: each step's name, in order.
pub type Checkpoint<'a> = &'a mut dyn FnMut(&'static str) -> Result<()>;

/// The header fields this reads and switches.
#[derive(Debug, Clone)]
pub struct Header {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size.
    pub size: u64,
    /// Entries of the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_offset: u64,
    /// Number of snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    head: Vec<u8>,
}

impl Header {
    /// Reads the header (the first cluster) of `file`.
    pub fn read(file: &File) -> Result<Header> {
        let probe = read_span(file, 0, 104)?;
        if probe[..4] != *b"QFI\xfb" {
            return Err(SnapshotError::Corrupt("not a qcow2 image".into()));
        }
        let cluster_bits = be32(&probe, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(SnapshotError::Corrupt("bad cluster size".into()));
        }
        let head = read_span(file, 0, 1 << cluster_bits)?;
        if be32(&head, 4) >= 3 && be64(&head, 72) & INCOMPAT_UNSUPPORTED != 0 {
            return Err(SnapshotError::Failed(
                "images with an external data file or extended L2 entries are not supported".into(),
            ));
        }
        Ok(Header {
            cluster_bits,
            size: be64(&head, 24),
            l1_size: be32(&head, 36),
            l1_offset: be64(&head, 40) & OFFSET_MASK,
            nb_snapshots: be32(&head, 60),
            snapshots_offset: be64(&head, 64),
            head,
        })
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// The snapshot table of `file` and its size in bytes.
pub fn read_table(file: &File, h: &Header) -> Result<(Vec<Snapshot>, usize)> {
    let n = h.nb_snapshots as usize;
    if n > table::MAX_SNAPSHOTS {
        return Err(SnapshotError::Corrupt("too many snapshots".into()));
    }
    let mut raw = Vec::new();
    for _ in 0..n {
        let at = h.snapshots_offset + raw.len() as u64;
        let fixed = read_span(file, at, 40)?;
        let len = 40
            + be32(&fixed, 36) as usize
            + usize::from(u16::from_be_bytes([fixed[12], fixed[13]]))
            + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if raw.len() + len > table::MAX_TABLE_SIZE {
            return Err(SnapshotError::Corrupt("snapshot table too large".into()));
        }
        raw.extend_from_slice(&read_span(file, at, len.div_ceil(8) * 8)?);
    }
    let size = raw.len();
    Ok((table::parse(&raw, n)?, size))
}

fn read_l1(file: &File, off: u64, n: u32) -> Result<Vec<u64>> {
    if n > MAX_L1_ENTRIES {
        return Err(SnapshotError::Corrupt(format!("L1 table of {n} entries")));
    }
    read_u64s(file, off & OFFSET_MASK, n as usize)
}

fn read_u64s(file: &File, off: u64, n: usize) -> Result<Vec<u64>> {
    let raw = read_span(file, off, n * 8)?;
    Ok((0..n).map(|i| be64(&raw, i * 8)).collect())
}

fn to_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// The host clusters an L2 entry references, and whether its COPIED flag
/// means anything (standard and preallocated-zero clusters).
fn l2_refs(e: u64, cluster_bits: u32) -> (Vec<u64>, bool) {
    if e & COMPRESSED != 0 {
        let shift = 62 - (cluster_bits - 8);
        let off = e & ((1u64 << shift) - 1);
        let sectors = ((e >> shift) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        let end = (off & !511) + sectors * 512 - 1;
        let first = off >> cluster_bits;
        let last = end >> cluster_bits;
        return ((first..=last).map(|c| c << cluster_bits).collect(), false);
    }
    match e & OFFSET_MASK {
        0 => (Vec::new(), false),
        off => (vec![off], true),
    }
}

/// One image opened for a snapshot transaction.
struct Txn<'a> {
    file: &'a File,
    h: Header,
    rc: Refcounts<'a>,
    /// Refcount changes still to apply, by cluster offset.
    deltas: HashMap<u64, i64>,
    /// L2 tables read, by offset.
    l2: HashMap<u64, Vec<u64>>,
    active_l1: Vec<u64>,
    /// The snapshot table as found, and its size in bytes.
    entries: Vec<Snapshot>,
    table_size: usize,
}

impl<'a> Txn<'a> {
    fn open(file: &'a File) -> Result<Self> {
        let h = Header::read(file)?;
        let rc = Refcounts::load(file, &h.head, h.cluster_bits)?;
        let active_l1 = read_l1(file, h.l1_offset, h.l1_size)?;
        let (entries, table_size) = read_table(file, &h)?;
        Ok(Txn {
            entries,
            table_size,
            file,
            h,
            rc,
            deltas: HashMap::new(),
            l2: HashMap::new(),
            active_l1,
        })
    }

    fn l2(&mut self, off: u64) -> Result<&Vec<u64>> {
        if !self.l2.contains_key(&off) {
            // Only tables inside the file: memory stays within its size.
            if off.saturating_add(self.h.cluster()) > self.file.metadata()?.len() {
                return Err(SnapshotError::Corrupt(format!(
                    "L2 table at {off:#x} is past the end of the file"
                )));
            }
            let n = (self.h.cluster() / 8) as usize;
            let t = read_u64s(self.file, off, n)?;
            self.l2.insert(off, t);
        }
        Ok(&self.l2[&off])
    }

    fn delta(&mut self, off: u64, d: i64) {
        *self.deltas.entry(off).or_insert(0) += d;
    }

    /// Counts (`d` = 1) or uncounts (-1) every reference of an L1 table.
    fn count_tree(&mut self, l1: &[u64], d: i64) -> Result<()> {
        let cb = self.h.cluster_bits;
        for &e in l1 {
            let t = e & OFFSET_MASK;
            if t == 0 {
                continue;
            }
            self.delta(t, d);
            let entries = self.l2(t)?.clone();
            for le in entries {
                for c in l2_refs(le, cb).0 {
                    self.delta(c, d);
                }
            }
        }
        Ok(())
    }

    fn final_rc(&mut self, off: u64) -> Result<i64> {
        let now = self.rc.get(off >> self.h.cluster_bits)? as i64;
        Ok(now + self.deltas.get(&off).copied().unwrap_or(0))
    }

    fn clusters(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.h.cluster())
    }

    fn alloc_bytes(&mut self, bytes: u64) -> Result<u64> {
        Ok(self.rc.alloc(self.clusters(bytes))?)
    }

    fn free_range(&mut self, off: u64, bytes: u64) -> Result<()> {
        for k in 0..self.clusters(bytes) {
            self.rc.add(off + k * self.h.cluster(), -1)?;
        }
        Ok(())
    }

    /// Builds the new active tables for the counted changes, writes
    /// `snapshots` as the new table and switches the header to it all;
    /// then frees what the old image used.
    fn commit(mut self, snapshots: &[Snapshot], hook: Checkpoint<'_>) -> Result<()> {
        let cb = self.h.cluster_bits;
        // The active L2 tables, with COPIED as the final refcounts say.
        let mut new_l1 = self.active_l1.clone();
        let mut copies: Vec<(usize, Vec<u64>)> = Vec::new();
        for (i, &e) in self.active_l1.clone().iter().enumerate() {
            let t = e & OFFSET_MASK;
            if t == 0 {
                continue;
            }
            let old = self.l2(t)?.clone();
            let mut want = old.clone();
            for le in want.iter_mut() {
                let (refs, flagged) = l2_refs(*le, cb);
                if flagged {
                    let one = self.final_rc(refs[0])? == 1;
                    *le = if one { *le | COPIED } else { *le & !COPIED };
                }
            }
            if want != old {
                self.delta(t, -1);
                copies.push((i, want));
            } else {
                let one = self.final_rc(t)? == 1;
                new_l1[i] = if one { t | COPIED } else { t };
            }
        }
        // Lower nothing to 0 before the switch (see the module comment).
        let mut after = Vec::new();
        let mut deltas: Vec<(u64, i64)> = self.deltas.drain().collect();
        deltas.sort_unstable();
        for (off, d) in deltas {
            let f = self.final_rc(off)? + d;
            if f < 0 {
                return Err(SnapshotError::Corrupt(format!(
                    "cluster {off:#x} is referenced more often than counted"
                )));
            }
            if d == 0 {
                continue;
            }
            if f == 0 {
                after.push((off, d));
            } else {
                self.rc.add(off, d)?;
            }
        }
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, t) in copies {
            let at = self.rc.alloc(1)?;
            new_l1[i] = at | COPIED;
            writes.push((at, to_bytes(&t)));
        }
        let l1_bytes = u64::from(self.h.l1_size) * 8;
        let l1_at = if l1_bytes == 0 {
            self.h.l1_offset
        } else {
            let at = self.alloc_bytes(l1_bytes)?;
            writes.push((at, to_bytes(&new_l1)));
            at
        };
        let raw = table::serialize(snapshots)?;
        let table_at = if raw.is_empty() {
            0
        } else {
            let at = self.alloc_bytes(raw.len() as u64)?;
            writes.push((at, raw));
            at
        };
        hook("allocated")?;
        for (at, data) in &writes {
            write_span(self.file, *at, data)?;
        }
        hook("tables written")?;
        let shadow = self.rc.write_back_shadowed()?;
        self.file.sync_data()?;
        hook("refcounts written")?;
        // The switch: one write of the header's bytes 36..72.
        let mut sw = Vec::with_capacity(36);
        sw.extend_from_slice(&self.h.l1_size.to_be_bytes());
        sw.extend_from_slice(&l1_at.to_be_bytes());
        sw.extend_from_slice(&shadow.rt_offset.to_be_bytes());
        sw.extend_from_slice(&shadow.rt_clusters.to_be_bytes());
        sw.extend_from_slice(&(snapshots.len() as u32).to_be_bytes());
        sw.extend_from_slice(&table_at.to_be_bytes());
        write_span(self.file, 36, &sw)?;
        self.file.sync_data()?;
        hook("switched")?;
        // Free what only the old image used (a kill leaks it).
        if l1_bytes != 0 {
            self.free_range(self.h.l1_offset, l1_bytes)?;
        }
        if self.table_size > 0 {
            self.free_range(self.h.snapshots_offset, self.table_size as u64)?;
        }
        for off in shadow.old {
            self.rc.add(off, -1)?;
        }
        for (off, d) in after {
            self.rc.add(off, d)?;
        }
        hook("freeing")?;
        // Not synced: a host crash before the next flush only leaks them.
        self.rc.write_back()?;
        Ok(())
    }
}

/// Creates snapshot `sn` (its id and L1 fields are filled in here) of
/// the image in `file`. The caller checked the name is free.
pub fn create(file: &File, mut sn: Snapshot, hook: Checkpoint<'_>) -> Result<Snapshot> {
    let mut t = Txn::open(file)?;
    let mut entries = std::mem::take(&mut t.entries);
    if entries.len() >= table::MAX_SNAPSHOTS {
        return Err(SnapshotError::Failed("too many snapshots".into()));
    }
    sn.id = table::new_id(&entries);
    sn.l1_size = t.h.l1_size;
    sn.disk_size = Some(t.h.size);
    let l1 = t.active_l1.clone();
    let bytes = u64::from(t.h.l1_size) * 8;
    sn.l1_offset = if bytes == 0 { 0 } else { t.alloc_bytes(bytes)? };
    t.count_tree(&l1, 1)?;
    if bytes != 0 {
        let copy: Vec<u64> = l1.iter().map(|e| e & !COPIED).collect();
        write_span(file, sn.l1_offset, &to_bytes(&copy))?;
    }
    entries.push(sn.clone());
    t.commit(&entries, hook)?;
    Ok(sn)
}

/// Deletes entry `index` of the snapshot table; returns it.
pub fn delete(file: &File, index: usize, hook: Checkpoint<'_>) -> Result<Snapshot> {
    let mut t = Txn::open(file)?;
    let mut entries = std::mem::take(&mut t.entries);
    if index >= entries.len() {
        return Err(SnapshotError::Failed("snapshot vanished".into()));
    }
    let sn = entries.remove(index);
    let l1 = read_l1(file, sn.l1_offset, sn.l1_size)?;
    t.count_tree(&l1, -1)?;
    let bytes = u64::from(sn.l1_size) * 8;
    for k in 0..t.clusters(bytes) {
        t.delta((sn.l1_offset & OFFSET_MASK) + k * t.h.cluster(), -1);
    }
    t.commit(&entries, hook)?;
    Ok(sn)
}
