//! Cluster allocation and freeing in a closed-for-I/O qcow2 image, for
//! the bitmaps extension's tables, data and directory. Written by hand
//! because imago has no API to allocate metadata clusters for another
//! user; it runs only while no request uses the image (imago's metadata
//! written back), so imago's refcount cache never sees these changes.

use std::collections::BTreeMap;
use std::fs::File;

use crate::block::qcow2_repair::{be64, read_span, write_span};

use super::qcow2_ext::{ExtError, Result};

/// Offset bits of a reftable entry.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// The refcount structures of one image, edited in memory and written
/// back by [`Refcounts::write_back`].
pub struct Refcounts<'a> {
    file: &'a File,
    cluster_bits: u32,
    refcount_bits: u32,
    rt_offset: u64,
    reftable: Vec<u64>,
    /// The reftable as loaded (the refblocks live in the file).
    loaded: Vec<u64>,
    reftable_dirty: bool,
    blocks: BTreeMap<u64, (Vec<u8>, bool)>,
    /// Where the next free-cluster search starts.
    cursor: u64,
    /// Clusters the file holds (and this allocated past it): clusters
    /// after it are free in a consistent image, so a search that finds
    /// none there stops instead of walking a corrupt refcount table.
    end: u64,
}

/// Clusters past the end of the file a search may find in use (refcount
/// blocks this placed) before it calls the refcounts corrupt.
const SLACK: u64 = 64;

impl<'a> Refcounts<'a> {
    /// Reads the refcount table the header (`head`, the first cluster)
    /// names.
    pub fn load(file: &'a File, head: &[u8], cluster_bits: u32) -> Result<Self> {
        let refcount_order = crate::block::qcow2_repair::be32(head, 96);
        if refcount_order > 6 {
            return Err(ExtError::Corrupt(format!(
                "refcount_order {refcount_order}"
            )));
        }
        let cluster = 1u64 << cluster_bits;
        let rt_offset = be64(head, 48);
        let rt_clusters = u64::from(crate::block::qcow2_repair::be32(head, 56));
        if rt_clusters > (8 << 20) / cluster {
            return Err(ExtError::Corrupt("refcount table too large".into()));
        }
        let n = (rt_clusters * cluster / 8) as usize;
        let raw = read_span(file, rt_offset, n * 8)?;
        let reftable: Vec<u64> = (0..n).map(|i| be64(&raw, i * 8)).collect();
        Ok(Refcounts {
            loaded: reftable.clone(),
            file,
            cluster_bits,
            refcount_bits: 1 << refcount_order,
            rt_offset,
            reftable,
            reftable_dirty: false,
            blocks: BTreeMap::new(),
            cursor: 1,
            end: file.metadata()?.len().div_ceil(cluster),
        })
    }

    fn per_block(&self) -> u64 {
        (1u64 << self.cluster_bits) * 8 / u64::from(self.refcount_bits)
    }

    /// The refblock of `cluster` (None: no refblock covers it).
    fn block(&mut self, cluster: u64) -> Result<Option<(u64, u64)>> {
        let per = self.per_block();
        let Some(&e) = self.reftable.get((cluster / per) as usize) else {
            return Ok(None);
        };
        let rb = e & OFFSET_MASK;
        if rb == 0 {
            return Ok(None);
        }
        if let std::collections::btree_map::Entry::Vacant(v) = self.blocks.entry(rb) {
            let data = read_span(self.file, rb, 1usize << self.cluster_bits)?;
            v.insert((data, false));
        }
        Ok(Some((rb, cluster % per)))
    }

    fn entry_at(&self, i: u64) -> (usize, u32, u64) {
        let bits = u64::from(self.refcount_bits);
        if bits >= 8 {
            return ((i * bits / 8) as usize, 0, 0);
        }
        let per_byte = 8 / bits;
        (
            (i / per_byte) as usize,
            ((i % per_byte) * bits) as u32,
            (1 << bits) - 1,
        )
    }

    /// The refcount of `cluster` (0 where no refblock covers it).
    pub fn get(&mut self, cluster: u64) -> Result<u64> {
        let Some((rb, i)) = self.block(cluster)? else {
            return Ok(0);
        };
        let (at, shift, mask) = self.entry_at(i);
        let width = self.refcount_bits as usize;
        let b = &self.blocks[&rb].0;
        if width >= 8 {
            let n = width / 8;
            return Ok(b[at..at + n]
                .iter()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)));
        }
        Ok((u64::from(b[at]) >> shift) & mask)
    }

    /// Sets the refcount of `cluster`, which a refblock must cover.
    pub fn set(&mut self, cluster: u64, value: u64) -> Result<()> {
        let Some((rb, i)) = self.block(cluster)? else {
            return Err(ExtError::Corrupt(format!(
                "cluster {cluster} has no refcount block"
            )));
        };
        let (at, shift, mask) = self.entry_at(i);
        let width = self.refcount_bits as usize;
        let Some((b, dirty)) = self.blocks.get_mut(&rb) else {
            return Err(ExtError::Corrupt("refcount block vanished".into()));
        };
        if width >= 8 {
            let n = width / 8;
            for (k, byte) in b[at..at + n].iter_mut().enumerate() {
                let sh = 8 * (n - 1 - k);
                *byte = if sh >= 64 { 0 } else { (value >> sh) as u8 };
            }
        } else {
            b[at] = ((u64::from(b[at]) & !(mask << shift)) | ((value & mask) << shift)) as u8;
        }
        *dirty = true;
        Ok(())
    }

    /// Drops one reference to the cluster at byte offset `off`.
    pub fn free(&mut self, off: u64) -> Result<()> {
        let c = off >> self.cluster_bits;
        let rc = self.get(c)?;
        if rc > 0 {
            self.set(c, rc - 1)?;
            self.cursor = self.cursor.min(c.max(1));
        }
        Ok(())
    }

    /// Whether `c` is free, giving its range a refblock first if it has
    /// none (placed in the range's first cluster, counting itself). False
    /// for that first cluster then.
    fn is_free(&mut self, c: u64) -> Result<bool> {
        let per = self.per_block();
        let ri = (c / per) as usize;
        if self.reftable.get(ri).is_some_and(|e| e & OFFSET_MASK != 0) {
            return Ok(self.get(c)? == 0);
        }
        if ri >= self.reftable.len() {
            return Err(ExtError::NoSpace);
        }
        let rb_cluster = ri as u64 * per;
        let rb = rb_cluster << self.cluster_bits;
        self.blocks
            .insert(rb, (vec![0u8; 1usize << self.cluster_bits], true));
        self.reftable[ri] = rb;
        self.reftable_dirty = true;
        self.set(rb_cluster, 1)?;
        Ok(c != rb_cluster)
    }

    /// Allocates `n` contiguous clusters (refcount 1); returns the byte
    /// offset of the first.
    pub fn alloc(&mut self, n: u64) -> Result<u64> {
        let mut start = self.cursor;
        'search: loop {
            if start > self.end + SLACK {
                return Err(ExtError::Corrupt(
                    "refcounts claim clusters past the end of the file".into(),
                ));
            }
            for k in 0..n {
                if !self.is_free(start + k)? {
                    start += k + 1;
                    continue 'search;
                }
            }
            break;
        }
        for k in 0..n {
            self.set(start + k, 1)?;
        }
        self.end = self.end.max(start + n);
        if n > 0 && start == self.cursor {
            self.cursor = start + n;
        }
        Ok(start << self.cluster_bits)
    }

    /// Writes changed refblocks, then the refcount table.
    pub fn write_back(&mut self) -> Result<()> {
        for (rb, (data, dirty)) in &mut self.blocks {
            if *dirty {
                write_span(self.file, *rb, data)?;
                *dirty = false;
            }
        }
        if self.reftable_dirty {
            let raw: Vec<u8> = self.reftable.iter().flat_map(|e| e.to_be_bytes()).collect();
            write_span(self.file, self.rt_offset, &raw)?;
            self.reftable_dirty = false;
        }
        Ok(())
    }
}

/// Where [`Refcounts::write_back_shadowed`] put the refcount structures.
pub struct Shadowed {
    /// Offset of the new refcount table.
    pub rt_offset: u64,
    /// Its length in clusters (unchanged).
    pub rt_clusters: u32,
    /// Clusters of the old structures: still referenced by the header
    /// until the caller switches it, then to be freed.
    pub old: Vec<u64>,
}

impl Refcounts<'_> {
    /// Writes every change without touching a live structure: changed
    /// refblocks that the file's refcount table names go to new clusters,
    /// with a new refcount table naming them (for the internal snapshots,
    /// whose commit is one header write switching to them; see
    /// `crate::snapshots`). Until that write the old structures stay
    /// intact; after it, the caller frees `old` and writes back in place.
    pub fn write_back_shadowed(&mut self) -> Result<Shadowed> {
        let cluster = 1u64 << self.cluster_bits;
        let rt_clusters = (self.reftable.len() as u64 * 8).div_ceil(cluster);
        let new_rt = self.alloc(rt_clusters)?;
        let live: std::collections::HashSet<u64> =
            self.loaded.iter().map(|e| e & OFFSET_MASK).collect();
        let mut moved: BTreeMap<u64, u64> = BTreeMap::new();
        // Moving a refblock allocates, which may change another refblock:
        // repeat until every changed live refblock has moved.
        loop {
            let pending: Vec<u64> = self
                .blocks
                .iter()
                .filter(|(rb, (_, dirty))| *dirty && live.contains(rb) && !moved.contains_key(rb))
                .map(|(rb, _)| *rb)
                .collect();
            if pending.is_empty() {
                break;
            }
            for rb in pending {
                let to = self.alloc(1)?;
                moved.insert(rb, to);
            }
        }
        for (from, to) in &moved {
            if let Some(b) = self.blocks.remove(from) {
                self.blocks.insert(*to, (b.0, true));
            }
            for e in self
                .reftable
                .iter_mut()
                .filter(|e| **e & OFFSET_MASK == *from)
            {
                *e = *to;
            }
        }
        let mut old: Vec<u64> = moved.keys().copied().collect();
        old.extend((0..rt_clusters).map(|k| self.rt_offset + k * cluster));
        self.rt_offset = new_rt;
        self.reftable_dirty = true;
        self.write_back()?;
        self.loaded = self.reftable.clone();
        Ok(Shadowed {
            rt_offset: new_rt,
            rt_clusters: rt_clusters as u32,
            old,
        })
    }

    /// Adds `delta` to the refcount of the cluster at byte offset `off`.
    pub fn add(&mut self, off: u64, delta: i64) -> Result<u64> {
        let c = off >> self.cluster_bits;
        let rc = self.get(c)?;
        let max = if self.refcount_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.refcount_bits) - 1
        };
        let new = match rc.checked_add_signed(delta) {
            // The refcount width has no room: QEMU's EINVAL.
            Some(v) if v > max => {
                return Err(ExtError::Io(std::io::Error::from_raw_os_error(
                    libc::EINVAL,
                )))
            }
            Some(v) => v,
            None => {
                return Err(ExtError::Corrupt(format!(
                    "refcount of cluster {c} would be {rc}{delta:+}"
                )))
            }
        };
        self.set(c, new)?;
        if new == 0 {
            self.cursor = self.cursor.min(c.max(1));
        }
        Ok(new)
    }
}
