//! The qcow2 snapshot table (QEMU's `docs/interop/qcow2.txt`, "Snapshots"):
//! `nb_snapshots` entries from `snapshots_offset`, each a 40-byte header,
//! extra data (`vm_state_size_large`, `disk_size`, `icount`, …), the id
//! and the name, padded to 8 bytes. Written by hand: imago does not read
//! or write snapshots.

use ipc_proto::snapshots::SnapshotInfo;

use super::{Result, SnapshotError};

/// QEMU's limit on the number of snapshots (`QCOW_MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: usize = 65536;
/// QEMU's limit on the table size (`QCOW_MAX_SNAPSHOTS_SIZE`).
pub const MAX_TABLE_SIZE: usize = 64 << 20;
/// Most extra data QEMU keeps (`QCOW_MAX_SNAPSHOT_EXTRA_DATA`).
const MAX_EXTRA: usize = 1024;
/// Fixed part of an entry.
const FIXED: usize = 40;

/// One snapshot table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table.
    pub l1_offset: u64,
    /// Entries of that L1 table.
    pub l1_size: u32,
    /// Unique id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, seconds.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock, nanoseconds.
    pub vm_clock_nsec: u64,
    /// VM state size (the 64-bit extra field when present).
    pub vm_state_size: u64,
    /// Virtual disk size at creation (extra data; 0 when absent).
    pub disk_size: Option<u64>,
    /// Instruction count (extra data; `u64::MAX`: none).
    pub icount: Option<u64>,
    /// Extra data past the fields this knows, kept as found.
    pub extra_rest: Vec<u8>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn corrupt(m: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(m.into())
}

impl Snapshot {
    /// QEMU's `SnapshotInfo` of this entry.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            vm_state_size: self.vm_state_size,
            date_sec: self.date_sec,
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            icount: self.icount.filter(|i| *i != u64::MAX),
        }
    }

    fn extra(&self) -> Vec<u8> {
        let mut e = Vec::with_capacity(24 + self.extra_rest.len());
        e.extend_from_slice(&self.vm_state_size.to_be_bytes());
        e.extend_from_slice(&self.disk_size.unwrap_or(0).to_be_bytes());
        if self.icount.is_some() || !self.extra_rest.is_empty() {
            e.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        }
        e.extend_from_slice(&self.extra_rest);
        e
    }

    /// Appends the entry's on-disk form to `out`.
    fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let extra = self.extra();
        out.extend_from_slice(&self.l1_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        let small = u32::try_from(self.vm_state_size).unwrap_or(0);
        out.extend_from_slice(&small.to_be_bytes());
        out.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
        let len = out.len() - start;
        out.resize(start + len.div_ceil(8) * 8, 0);
    }
}

/// Parses `n` entries from `raw` (the table's bytes).
pub fn parse(raw: &[u8], n: usize) -> Result<Vec<Snapshot>> {
    if n > MAX_SNAPSHOTS {
        return Err(corrupt("snapshot table too large"));
    }
    let mut at = 0usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let short = || corrupt(format!("snapshot table truncated at entry {i}"));
        let fixed = raw.get(at..at + FIXED).ok_or_else(short)?;
        let id_len = usize::from(u16::from_be_bytes([fixed[12], fixed[13]]));
        let name_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        let extra_len = be32(fixed, 36) as usize;
        if extra_len > MAX_EXTRA {
            return Err(corrupt(format!("snapshot {i}: too much extra data")));
        }
        let end = at + FIXED + extra_len + id_len + name_len;
        let rest = raw.get(at + FIXED..end).ok_or_else(short)?;
        let extra = &rest[..extra_len];
        let field = |k: usize| (extra.len() >= (k + 1) * 8).then(|| be64(extra, k * 8));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let small = u64::from(be32(fixed, 32));
        out.push(Snapshot {
            l1_offset: be64(fixed, 0),
            l1_size: be32(fixed, 8),
            id: text(&rest[extra_len..extra_len + id_len]),
            name: text(&rest[extra_len + id_len..]),
            date_sec: be32(fixed, 16),
            date_nsec: be32(fixed, 20),
            vm_clock_nsec: be64(fixed, 24),
            vm_state_size: field(0).unwrap_or(small),
            disk_size: field(1),
            icount: field(2),
            extra_rest: extra.get(24..).unwrap_or_default().to_vec(),
        });
        at = end.div_ceil(8) * 8;
    }
    Ok(out)
}

/// The table's on-disk form.
pub fn serialize(entries: &[Snapshot]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        if e.id.len() > usize::from(u16::MAX) || e.name.len() > usize::from(u16::MAX) {
            return Err(SnapshotError::Failed("snapshot name too long".into()));
        }
        e.write(&mut out);
    }
    if out.len() > MAX_TABLE_SIZE {
        return Err(SnapshotError::Failed("snapshot table too large".into()));
    }
    Ok(out)
}

/// QEMU's `find_new_snapshot_id`: one more than the largest numeric id.
pub fn new_id(entries: &[Snapshot]) -> String {
    let max = entries
        .iter()
        .map(|e| e.id.parse::<u64>().unwrap_or(0))
        .max()
        .unwrap_or(0);
    (max + 1).to_string()
}

/// QEMU's `bdrv_snapshot_find_by_id_and_name`: both must match when both
/// are given.
pub fn find(entries: &[Snapshot], id: Option<&str>, name: Option<&str>) -> Option<usize> {
    entries.iter().position(|e| {
        id.is_none_or(|i| e.id == i)
            && name.is_none_or(|n| e.name == n)
            && (id.is_some() || name.is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str) -> Snapshot {
        Snapshot {
            l1_offset: 0x30000,
            l1_size: 1,
            id: id.into(),
            name: name.into(),
            date_sec: 1_700_000_000,
            date_nsec: 5,
            vm_clock_nsec: 123_456_789_012,
            vm_state_size: 0,
            disk_size: Some(64 << 20),
            icount: Some(u64::MAX),
            extra_rest: Vec::new(),
        }
    }

    #[test]
    fn entries_round_trip_through_the_table_format() {
        let t = vec![entry("1", "first"), entry("2", "a longer name, odd")];
        let raw = serialize(&t).unwrap();
        assert_eq!(raw.len() % 8, 0);
        assert_eq!(parse(&raw, 2).unwrap(), t);
    }

    #[test]
    fn entry_layout_is_qemus() {
        let raw = serialize(&[entry("1", "s")]).unwrap();
        // 40 fixed + 24 extra + "1" + "s" = 66, padded to 72.
        assert_eq!(raw.len(), 72);
        assert_eq!(be32(&raw, 36), 24);
        assert_eq!(&raw[64..66], b"1s");
        assert_eq!(be64(&raw, 48), 64 << 20);
        assert_eq!(be64(&raw, 56), u64::MAX);
    }

    #[test]
    fn truncated_table_is_an_error_not_a_panic() {
        let raw = serialize(&[entry("1", "s")]).unwrap();
        for cut in 0..raw.len() - 6 {
            assert!(parse(&raw[..cut], 1).is_err(), "cut {cut}");
        }
        assert!(parse(&raw, 2).is_err());
    }

    #[test]
    fn no_icount_is_not_reported() {
        assert_eq!(entry("1", "s").info().icount, None);
        let mut e = entry("1", "s");
        e.icount = Some(0);
        assert_eq!(e.info().icount, Some(0));
    }

    #[test]
    fn lookup_by_id_name_or_both() {
        let t = vec![entry("1", "a"), entry("2", "b")];
        assert_eq!(find(&t, Some("2"), None), Some(1));
        assert_eq!(find(&t, None, Some("a")), Some(0));
        assert_eq!(find(&t, Some("1"), Some("b")), None);
        assert_eq!(find(&t, None, None), None);
        assert_eq!(new_id(&t), "3");
    }
}
