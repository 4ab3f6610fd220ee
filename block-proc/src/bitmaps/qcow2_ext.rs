//! The qcow2 bitmaps extension (QEMU's `docs/interop/qcow2.txt`, "Bitmaps
//! extension"): header extension `0x23852875` naming a bitmap directory;
//! each directory entry names a bitmap table whose entries point at
//! clusters of serialised bitmap data; autoclear feature bit 0 says the
//! extension is valid; an entry's `in_use` flag says its data is stale.
//! Written by hand: imago keeps the extension as an unknown one and has no
//! bitmap support.
//!
//! As QEMU does: the directory is read before imago opens the image (a
//! writable imago open clears every autoclear bit), a writable open then
//! sets `in_use` on every entry and the autoclear bit again, and closing
//! the node ([`ImageDir::store`]) frees the old tables and data, writes
//! every persistent bitmap afresh with `in_use` clear and rewrites the
//! extension.

use std::fs::File;
use std::sync::Arc;

use crate::block::qcow2_repair::{be32, be64, read_span, write_span, RepairError};

use super::bitmap::DirtyBitmap;
use super::refcounts::Refcounts;

/// Header extension type of the bitmaps extension.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Autoclear feature bit: the bitmaps extension is consistent.
const AUTOCLEAR_BITMAPS: u64 = 1;
/// Directory entry flag: the image was open for writing with this bitmap.
pub const FLAG_IN_USE: u32 = 1;
/// Directory entry flag: the bitmap records writes when loaded.
pub const FLAG_AUTO: u32 = 2;
/// The only bitmap type: dirty tracking.
const TYPE_DIRTY: u8 = 1;
/// QEMU's limits (qcow2-bitmap.c).
const MAX_TABLE_SIZE: u32 = 0x800_0000;
/// Largest directory QEMU reads.
const MAX_DIRECTORY_SIZE: u64 = 64 << 20;
/// Most bitmaps QEMU keeps in one image.
pub const MAX_BITMAPS: usize = 65535;
/// Longest name.
pub const MAX_NAME: usize = 1023;
/// Largest bitmap data QEMU keeps in memory (`BME_MAX_PHYS_SIZE`).
pub const MAX_PHYS_SIZE: u64 = 0x2000_0000;
/// Offset bits of a bitmap table entry.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of a bitmap table entry.
const TABLE_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
/// Table entry flag (with offset 0): every bit of the cluster is set.
const TABLE_ALL_ONES: u64 = 1;

/// Errors of the bitmaps extension.
#[derive(Debug, thiserror::Error)]
pub enum ExtError {
    /// Reading or writing the image failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The metadata is not what the specification allows.
    #[error("{0}")]
    Corrupt(String),
    /// The refcount table has no room for another refcount block.
    #[error("no room in the refcount table for the bitmaps")]
    NoSpace,
}

impl From<RepairError> for ExtError {
    fn from(e: RepairError) -> Self {
        match e {
            RepairError::Io(e) => ExtError::Io(e),
            RepairError::Corrupt(m) => ExtError::Corrupt(m),
        }
    }
}

/// Result of extension operations.
pub type Result<T> = std::result::Result<T, ExtError>;

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Bitmap name.
    pub name: String,
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// log2 of the granularity.
    pub granularity_bits: u8,
    /// Offset of the entry in the directory it was read from (its name
    /// may not be UTF-8, so its length is not the name's).
    pub dir_pos: u64,
}

/// The bitmaps of a qcow2 image as found when its node was opened, with
/// the file to load and store them through.
pub struct ImageDir {
    file: File,
    writable: bool,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Image version (bitmaps need 3).
    pub version: u32,
    /// Directory entries, in directory order.
    pub entries: Vec<DirEntry>,
    /// Offset and size of the directory, if the extension is valid.
    directory: Option<(u64, u64)>,
    /// Names of the entries whose `in_use` flag was set at open.
    stale: Vec<String>,
}

fn corrupt(m: impl Into<String>) -> ExtError {
    ExtError::Corrupt(m.into())
}

/// One header extension: type, data offset, data length.
type Ext = (u32, usize, usize);

/// The header extensions of `head` from `start`, and the offset of the
/// end marker.
fn extensions(head: &[u8], start: usize) -> Result<(Vec<Ext>, usize)> {
    let mut at = start;
    let mut out = Vec::new();
    loop {
        if at + 8 > head.len() {
            return Err(corrupt("header extensions exceed the first cluster"));
        }
        let (kind, len) = (be32(head, at), be32(head, at + 4) as usize);
        if kind == 0 {
            return Ok((out, at));
        }
        let next = at + 8 + len.div_ceil(8) * 8;
        if next > head.len() {
            return Err(corrupt("header extension exceeds the first cluster"));
        }
        out.push((kind, at + 8, len));
        at = next;
    }
}

/// The version 3 header's fixed part, which QEMU requires at least.
const V3_HEADER_MIN: usize = 104;

/// The header length a version 3 image states, if it is one QEMU accepts
/// (at least the fixed part, within `head`).
fn header_len(head: &[u8]) -> Option<usize> {
    let n = be32(head, 100) as usize;
    (be32(head, 4) >= 3 && (V3_HEADER_MIN..=head.len()).contains(&n)).then_some(n)
}

impl ImageDir {
    /// Reads the bitmap directory of the qcow2 image in `file` (before
    /// imago opens it). An extension without the autoclear bit was left by
    /// a program without bitmap support: its bitmaps are ignored, as QEMU
    /// does.
    /// A header that is not a valid qcow2 one yields no bitmaps (the
    /// qcow2 driver's open reports it).
    pub fn read(file: File, writable: bool) -> Result<ImageDir> {
        let probe = read_span(&file, 0, 104)?;
        let cluster_bits = be32(&probe, 20);
        let mut dir = ImageDir {
            file,
            writable,
            cluster_bits,
            version: be32(&probe, 4),
            entries: Vec::new(),
            directory: None,
            stale: Vec::new(),
        };
        if probe[..4] != *b"QFI\xfb" || !(9..=21).contains(&cluster_bits) {
            // Not an image this can touch (the qcow2 open refuses it).
            dir.cluster_bits = 16;
            dir.version = 0;
            dir.writable = false;
            return Ok(dir);
        }
        if dir.version < 3 {
            return Ok(dir);
        }
        let head = read_span(&dir.file, 0, 1usize << cluster_bits)?;
        let Some(Ok((exts, _))) = header_len(&head).map(|h| extensions(&head, h)) else {
            return Ok(dir);
        };
        let Some(&(_, at, len)) = exts.iter().find(|e| e.0 == EXT_BITMAPS) else {
            return Ok(dir);
        };
        if be64(&head, 88) & AUTOCLEAR_BITMAPS == 0 {
            tracing::warn!(
                "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
            );
            return Ok(dir);
        }
        if len != 24 {
            return Err(corrupt(format!(
                "bitmaps_ext: Invalid extension length {len}"
            )));
        }
        let nb = be32(&head, at) as usize;
        let (size, offset) = (be64(&head, at + 8), be64(&head, at + 16));
        if nb == 0 || nb > MAX_BITMAPS || size == 0 || size > MAX_DIRECTORY_SIZE {
            return Err(corrupt("bitmaps_ext: invalid directory"));
        }
        if offset % (1 << cluster_bits) != 0 {
            return Err(corrupt("bitmaps_ext: invalid bitmap directory offset"));
        }
        let raw = read_span(&dir.file, offset, size as usize)?;
        dir.entries = parse_directory(&raw, nb, cluster_bits)?;
        dir.stale = dir
            .entries
            .iter()
            .filter(|e| e.flags & FLAG_IN_USE != 0)
            .map(|e| e.name.clone())
            .collect();
        dir.directory = Some((offset, size));
        Ok(dir)
    }

    /// Whether the node can store bitmaps (opened writable).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// After a writable open: sets `in_use` on every entry and the
    /// autoclear bit imago cleared, so a crash leaves the bitmaps marked
    /// stale, as QEMU leaves them.
    pub fn mark_in_use(&mut self) -> Result<()> {
        let Some((offset, _)) = self.directory else {
            return Ok(());
        };
        for e in &mut self.entries {
            e.flags |= FLAG_IN_USE;
            write_span(&self.file, offset + e.dir_pos + 12, &e.flags.to_be_bytes())?;
        }
        let head = read_span(&self.file, 88, 8)?;
        let autoclear = be64(&head, 0) | AUTOCLEAR_BITMAPS;
        write_span(&self.file, 88, &autoclear.to_be_bytes())?;
        Ok(())
    }

    /// Undoes [`ImageDir::mark_in_use`] for an image closed unused: each
    /// entry gets back the `in_use` flag it had at open.
    pub fn restore_flags(&mut self) -> Result<()> {
        let Some((offset, _)) = self.directory else {
            return Ok(());
        };
        if !self.writable {
            return Ok(());
        }
        for i in 0..self.entries.len() {
            let stale = self.in_use_at_open(&self.entries[i].name);
            let e = &mut self.entries[i];
            if !stale {
                e.flags &= !FLAG_IN_USE;
            }
            write_span(&self.file, offset + e.dir_pos + 12, &e.flags.to_be_bytes())?;
        }
        Ok(())
    }

    /// Whether entry `name` was in use when the image was opened (its
    /// data is stale: QEMU's "inconsistent").
    pub fn in_use_at_open(&self, name: &str) -> bool {
        self.stale.iter().any(|n| n == name)
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&DirEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Reads bitmap `name`'s data into `b` (which must be empty).
    pub fn load(&self, name: &str, b: &DirtyBitmap) -> Result<()> {
        let e = self
            .entry(name)
            .ok_or_else(|| corrupt(format!("bitmap '{name}' is not in the image")))?;
        if 1u64 << e.granularity_bits != u64::from(b.granularity) {
            return Err(corrupt("granularity mismatch"));
        }
        let cluster = 1u64 << self.cluster_bits;
        let bytes = b.bits().div_ceil(8);
        let tsize = u64::from(e.table_size);
        if tsize * cluster < bytes || tsize > bytes.div_ceil(cluster) + 1 {
            return Err(corrupt(format!(
                "Could not read bitmap '{name}' from image: Invalid argument"
            )));
        }
        let raw = read_span(&self.file, e.table_offset, e.table_size as usize * 8)?;
        for i in 0..e.table_size as usize {
            let t = be64(&raw, i * 8);
            let off = t & TABLE_OFFSET_MASK;
            if t & TABLE_RESERVED_MASK != 0
                || (off != 0 && (t & TABLE_ALL_ONES != 0 || !off.is_multiple_of(cluster)))
            {
                return Err(corrupt(format!(
                    "Could not read bitmap_table table from image for bitmap '{name}': Invalid argument"
                )));
            }
            let at = i as u64 * cluster;
            let n = bytes.saturating_sub(at).min(cluster) as usize;
            if off != 0 {
                b.or_bytes(at, &read_span(&self.file, off, n)?);
            } else if t & TABLE_ALL_ONES != 0 {
                b.or_bytes(at, &vec![0xff; n]);
            }
        }
        Ok(())
    }

    /// Writes the persistent bitmaps among `bitmaps` into the image,
    /// replacing the extension found at open (an inconsistent bitmap, or
    /// one never attached, keeps its old entry, in use; one in `removed`
    /// is dropped). Call only while nothing else writes the image.
    pub fn store(&mut self, bitmaps: &[Arc<DirtyBitmap>], removed: &[String]) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let cluster = 1u64 << self.cluster_bits;
        let head = read_span(&self.file, 0, cluster as usize)?;
        let file = self.file.try_clone()?;
        let mut rc = Refcounts::load(&file, &head, self.cluster_bits)?;
        // An old entry stays as it is (its clusters kept, in use) when its
        // bitmap is inconsistent, or when it was never attached and not
        // removed: writes went untracked, so its data is stale, as QEMU
        // would mark it; dropping it would lose it.
        let kept = |e: &DirEntry| match bitmaps.iter().find(|b| b.name == e.name) {
            Some(b) => b.persistent && b.inconsistent,
            None => !removed.contains(&e.name),
        };
        for e in self.entries.iter().filter(|e| !kept(e)) {
            let raw = read_span(&self.file, e.table_offset, e.table_size as usize * 8)?;
            for i in 0..e.table_size as usize {
                let off = be64(&raw, i * 8) & TABLE_OFFSET_MASK;
                if off != 0 {
                    rc.free(off)?;
                }
            }
            for k in 0..(u64::from(e.table_size) * 8).div_ceil(cluster) {
                rc.free(e.table_offset + k * cluster)?;
            }
        }
        if let Some((offset, size)) = self.directory {
            for k in 0..size.div_ceil(cluster) {
                rc.free(offset + k * cluster)?;
            }
        }
        let mut entries = Vec::new();
        // QEMU lists a node's newest bitmap first and stores in that order.
        for b in bitmaps.iter().filter(|b| b.persistent) {
            if b.inconsistent {
                if let Some(e) = self.entry(&b.name) {
                    let mut e = e.clone();
                    e.flags |= FLAG_IN_USE;
                    entries.push(e);
                }
                continue;
            }
            entries.push(self.write_bitmap(&mut rc, b)?);
        }
        for e in self.entries.iter().filter(|e| kept(e)) {
            if !bitmaps.iter().any(|b| b.name == e.name) {
                let mut e = e.clone();
                e.flags |= FLAG_IN_USE;
                entries.push(e);
            }
        }
        let mut pos = 0;
        for e in &mut entries {
            e.dir_pos = pos;
            pos += entry_len(&e.name) as u64;
        }
        let dir = serialize_directory(&entries);
        let dir_at = if dir.is_empty() {
            0
        } else {
            let at = rc.alloc((dir.len() as u64).div_ceil(cluster))?;
            write_span(&self.file, at, &dir)?;
            at
        };
        rc.write_back()?;
        self.file.sync_data()?;
        self.write_extension(&head, entries.len(), dir.len() as u64, dir_at)?;
        self.file.sync_data()?;
        self.directory = (!dir.is_empty()).then_some((dir_at, dir.len() as u64));
        self.entries = entries;
        Ok(())
    }

    /// Writes one bitmap's data clusters and table; returns its entry.
    fn write_bitmap(&self, rc: &mut Refcounts<'_>, b: &DirtyBitmap) -> Result<DirEntry> {
        let cluster = 1usize << self.cluster_bits;
        let data = b.to_bytes();
        let n = data.len().div_ceil(cluster).max(1);
        let mut table = Vec::with_capacity(n * 8);
        for i in 0..n {
            let chunk = data
                .get(i * cluster..((i + 1) * cluster).min(data.len()))
                .unwrap_or(&[]);
            let entry = if chunk.iter().all(|&x| x == 0) {
                0
            } else {
                let at = rc.alloc(1)?;
                let mut buf = chunk.to_vec();
                buf.resize(cluster, 0);
                write_span(&self.file, at, &buf)?;
                at
            };
            table.extend_from_slice(&entry.to_be_bytes());
        }
        let table_offset = rc.alloc((table.len() as u64).div_ceil(cluster as u64))?;
        write_span(&self.file, table_offset, &table)?;
        Ok(DirEntry {
            name: b.name.clone(),
            table_offset,
            table_size: n as u32,
            flags: if b.recording() { FLAG_AUTO } else { 0 },
            granularity_bits: b.granularity.trailing_zeros() as u8,
            dir_pos: 0,
        })
    }

    /// Rewrites the header's extension area with the bitmaps extension
    /// (or without it when no bitmap is left) and sets or clears the
    /// autoclear bit; the backing file name moves behind the extensions.
    fn write_extension(&self, head: &[u8], nb: usize, size: u64, offset: u64) -> Result<()> {
        let hlen = header_len(head).ok_or_else(|| corrupt("invalid header length"))?;
        let (exts, end) = extensions(head, hlen)?;
        let backing_off = usize::try_from(be64(head, 8)).unwrap_or(usize::MAX);
        let backing_len = be32(head, 16) as usize;
        let backing_end = backing_off.saturating_add(backing_len);
        let backing = if backing_off != 0 {
            head.get(backing_off..backing_end)
                .ok_or_else(|| corrupt("backing file name outside the first cluster"))?
                .to_vec()
        } else {
            Vec::new()
        };
        let mut out = head[..hlen].to_vec();
        if nb > 0 {
            out.extend_from_slice(&EXT_BITMAPS.to_be_bytes());
            out.extend_from_slice(&24u32.to_be_bytes());
            out.extend_from_slice(&(nb as u32).to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
        }
        for &(kind, at, len) in exts.iter().filter(|e| e.0 != EXT_BITMAPS) {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend_from_slice(&head[at..at + len]);
            out.resize(out.len().div_ceil(8) * 8, 0);
        }
        out.extend_from_slice(&[0u8; 8]);
        if backing_off != 0 {
            let at = out.len() as u64;
            out[8..16].copy_from_slice(&at.to_be_bytes());
            out.extend_from_slice(&backing);
        }
        // What the old extensions and name took, to be zeroed where the
        // new ones are shorter (a backing name lies within `head`).
        let old_end = if backing_off != 0 {
            (end + 8).max(backing_end)
        } else {
            end + 8
        };
        if out.len() > head.len() {
            return Err(corrupt("header extensions exceed the first cluster"));
        }
        if out.len() < old_end {
            out.resize(old_end, 0);
        }
        let autoclear = if nb > 0 {
            be64(head, 88) | AUTOCLEAR_BITMAPS
        } else {
            be64(head, 88) & !AUTOCLEAR_BITMAPS
        };
        out[88..96].copy_from_slice(&autoclear.to_be_bytes());
        write_span(&self.file, 0, &out)?;
        Ok(())
    }
}

fn entry_len(name: &str) -> usize {
    (24 + name.len()).div_ceil(8) * 8
}

/// Parses `nb` directory entries from `raw` with QEMU's checks.
fn parse_directory(raw: &[u8], nb: usize, cluster_bits: u32) -> Result<Vec<DirEntry>> {
    let mut at = 0;
    let mut out = Vec::with_capacity(nb);
    while at < raw.len() {
        if at + 24 > raw.len() {
            return Err(corrupt("Broken bitmap directory"));
        }
        if out.len() == nb {
            return Err(corrupt(
                "More bitmaps found than specified in header extension",
            ));
        }
        let name_size = u16::from_be_bytes([raw[at + 18], raw[at + 19]]) as usize;
        let extra = be32(raw, at + 20) as usize;
        let len = (24 + name_size + extra).div_ceil(8) * 8;
        if at + len > raw.len() {
            return Err(corrupt("Broken bitmap directory"));
        }
        if extra != 0 {
            return Err(corrupt("Bitmap extra data is not supported"));
        }
        let name = String::from_utf8_lossy(&raw[at + 24..at + 24 + name_size]).into_owned();
        let e = DirEntry {
            table_offset: be64(raw, at),
            table_size: be32(raw, at + 8),
            flags: be32(raw, at + 12),
            granularity_bits: raw[at + 17],
            name,
            dir_pos: at as u64,
        };
        let bad = e.table_size == 0
            || e.table_offset == 0
            || e.table_size > MAX_TABLE_SIZE
            || u64::from(e.table_size) << cluster_bits > MAX_PHYS_SIZE
            || !(9..=31).contains(&e.granularity_bits)
            || e.flags & !(FLAG_IN_USE | FLAG_AUTO) != 0
            || name_size > MAX_NAME
            || raw[at + 16] != TYPE_DIRTY;
        if bad {
            return Err(corrupt(format!(
                "Bitmap '{}' doesn't satisfy the constraints",
                e.name
            )));
        }
        out.push(e);
        at += len;
    }
    if out.len() != nb {
        return Err(corrupt(
            "Less bitmaps found than specified in header extension",
        ));
    }
    Ok(out)
}

fn serialize_directory(entries: &[DirEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.table_offset.to_be_bytes());
        out.extend_from_slice(&e.table_size.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
        out.push(TYPE_DIRTY);
        out.push(e.granularity_bits);
        out.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entries_round_trip() {
        let e = vec![
            DirEntry {
                name: "b0".into(),
                table_offset: 0x30000,
                table_size: 1,
                flags: FLAG_AUTO,
                granularity_bits: 16,
                dir_pos: 0,
            },
            DirEntry {
                name: "a-longer-name".into(),
                table_offset: 0x50000,
                table_size: 2,
                flags: FLAG_IN_USE,
                granularity_bits: 9,
                dir_pos: 32,
            },
        ];
        let raw = serialize_directory(&e);
        assert_eq!(raw.len() % 8, 0);
        assert_eq!(parse_directory(&raw, 2, 16).unwrap(), e);
        assert!(parse_directory(&raw, 1, 16).is_err());
        assert!(parse_directory(&raw, 3, 16).is_err());
    }

    #[test]
    fn a_directory_entry_breaking_qemu_constraints_is_refused() {
        let mut raw = serialize_directory(&[DirEntry {
            name: "x".into(),
            table_offset: 0x30000,
            table_size: 1,
            flags: 0,
            granularity_bits: 16,
            dir_pos: 0,
        }]);
        raw[17] = 8;
        assert!(parse_directory(&raw, 1, 16)
            .unwrap_err()
            .to_string()
            .contains("constraints"));
        raw[17] = 16;
        raw[8..12].copy_from_slice(&0x2001u32.to_be_bytes());
        assert!(
            parse_directory(&raw, 1, 16).is_err(),
            "more than 512 MiB of bitmap"
        );
        raw[8..12].copy_from_slice(&1u32.to_be_bytes());
        raw[20..24].copy_from_slice(&5u32.to_be_bytes());
        assert!(parse_directory(&raw, 1, 16).is_err());
    }
}
