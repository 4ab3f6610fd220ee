//! What `query-block` shows of a qcow2 image beyond its size: the cluster
//! size and QEMU's `format-specific` data, read from the header (a few
//! fields at fixed offsets, so by hand rather than through imago, which
//! does not expose them).

use std::fs::File;
use std::os::unix::fs::FileExt;

use ipc_proto::block::Qcow2Specific;

use super::iobuf::{AlignedBuf, DIRECT_ALIGN};

/// Incompatible feature bits.
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature bit: lazy refcounts.
const COMPAT_LAZY_REFCOUNTS: u64 = 1;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Cluster size and format-specific data of a header (its first bytes).
pub fn parse(h: &[u8]) -> Option<(u64, Qcow2Specific)> {
    if h.get(..4)? != b"QFI\xfb" {
        return None;
    }
    let version = be32(h, 4)?;
    let cluster = 1u64.checked_shl(be32(h, 20)?)?;
    if version == 2 {
        return Some((
            cluster,
            Qcow2Specific {
                compat: "0.10".into(),
                lazy_refcounts: None,
                corrupt: None,
                extended_l2: None,
                refcount_bits: 16,
                compression_type: "zlib".into(),
            },
        ));
    }
    let incompat = be64(h, 72)?;
    let compat = be64(h, 80)?;
    let refcount_bits = 1u32.checked_shl(be32(h, 96)?)?;
    let header_len = be32(h, 100)?;
    let zstd = incompat & INCOMPAT_COMPRESSION != 0 && header_len > 104 && h.get(104) == Some(&1);
    Some((
        cluster,
        Qcow2Specific {
            compat: "1.1".into(),
            lazy_refcounts: Some(compat & COMPAT_LAZY_REFCOUNTS != 0),
            corrupt: Some(incompat & INCOMPAT_CORRUPT != 0),
            extended_l2: Some(incompat & INCOMPAT_EXTL2 != 0),
            refcount_bits,
            compression_type: if zstd { "zstd" } else { "zlib" }.into(),
        },
    ))
}

/// Reads the header of the image in `file` (through an aligned buffer, so
/// an `O_DIRECT` file works too).
pub fn read(file: &File) -> Option<(u64, Qcow2Specific)> {
    let mut buf = AlignedBuf::new(DIRECT_ALIGN).ok()?;
    let n = file.read_at(buf.as_mut_slice(), 0).ok()?;
    parse(&buf.as_mut_slice()[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_header_facts_are_read_as_qemu_reports_them() {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[72..80].copy_from_slice(&(INCOMPAT_EXTL2 | INCOMPAT_COMPRESSION).to_be_bytes());
        h[80..88].copy_from_slice(&1u64.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h[104] = 1;
        let (c, s) = parse(&h).unwrap();
        assert_eq!(c, 65536);
        assert_eq!(s.compat, "1.1");
        assert_eq!(s.lazy_refcounts, Some(true));
        assert_eq!(s.corrupt, Some(false));
        assert_eq!(s.extended_l2, Some(true));
        assert_eq!(s.refcount_bits, 16);
        assert_eq!(s.compression_type, "zstd");
        assert!(parse(b"QFI").is_none());
    }
}
