//! A check of the qcow2 header extensions before the image reaches imago.
//!
//! Written by hand because imago 0.2.6 (the newest release) panics on a
//! feature-name-table extension whose length is not a whole number of
//! 48-byte entries (`metadata.rs`, found by `fuzz/` target `qcow2_header`),
//! and a panic would end block-proc. QEMU rejects such images when it opens
//! them; so do we, with an error instead of a crash.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::iobuf::{AlignedBuf, DIRECT_ALIGN};

/// Header extension type: end of the extension area.
const EXT_END: u32 = 0;
/// Header extension type: feature name table.
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Size of one feature-name-table entry.
const FEATURE_ENTRY: u32 = 48;
/// The version 2 header's length (version 3 stores its own).
const V2_HEADER_LEN: usize = 72;
/// Largest cluster QEMU accepts (2 MiB): the extensions lie in cluster 0.
const MAX_CLUSTER_BITS: u32 = 21;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Checks the header extensions in `header` (the image's first cluster, or
/// as much of it as the file holds). Errors are QEMU-style messages.
pub fn check_extensions(header: &[u8]) -> Result<(), String> {
    let version = be32(header, 4).ok_or("Image is not in qcow2 format")?;
    let mut at = match version {
        2 => V2_HEADER_LEN,
        _ => be32(header, 100).ok_or("qcow2 header exceeds cluster size")? as usize,
    };
    // Each extension takes at least 8 bytes, so this bounds the loop.
    while at + 8 <= header.len() {
        let (Some(kind), Some(len)) = (be32(header, at), be32(header, at + 4)) else {
            break;
        };
        if kind == EXT_END {
            return Ok(());
        }
        if kind == EXT_FEATURE_TABLE && len % FEATURE_ENTRY != 0 {
            return Err(format!(
                "Could not open image: invalid feature name table extension \
                 ({len} bytes is not a multiple of {FEATURE_ENTRY})"
            ));
        }
        let padded = (len as usize).div_ceil(8) * 8;
        at = at
            .checked_add(8 + padded)
            .ok_or("Could not open image: invalid header extension length")?;
        if at > header.len() {
            return Err("Could not open image: header extension exceeds the first cluster".into());
        }
    }
    Ok(())
}

/// Reads the first cluster of `file` and checks its header extensions.
pub fn check_file(file: &File) -> Result<(), String> {
    let mut probe = AlignedBuf::new(DIRECT_ALIGN).map_err(|e| e.to_string())?;
    let n = file
        .read_at(probe.as_mut_slice(), 0)
        .map_err(|e| e.to_string())?;
    let head = &probe.as_mut_slice()[..n];
    let cluster_bits = be32(head, 20).ok_or("Image is not in qcow2 format")?;
    if !(9..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(format!("Cluster size must be a power of two between 512 and 2048k (cluster_bits {cluster_bits})"));
    }
    let cluster = 1usize << cluster_bits;
    let len = cluster.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut buf = AlignedBuf::new(len).map_err(|e| e.to_string())?;
    let n = file
        .read_at(buf.as_mut_slice(), 0)
        .map_err(|e| e.to_string())?;
    check_extensions(&buf.as_mut_slice()[..n.min(cluster)])
}

/// Whether `file` holds a version 3 (or later) qcow2 header.
pub fn is_v3(file: &File) -> bool {
    let Ok(mut probe) = AlignedBuf::new(DIRECT_ALIGN) else {
        return false;
    };
    file.read_at(probe.as_mut_slice(), 0).is_ok_and(|n| n >= 8)
        && be32(probe.as_mut_slice(), 4).is_some_and(|v| v >= 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_header(exts: &[(u32, &[u8])]) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        for (kind, data) in exts {
            h.extend_from_slice(&kind.to_be_bytes());
            h.extend_from_slice(&(data.len() as u32).to_be_bytes());
            h.extend_from_slice(data);
            h.resize(h.len().div_ceil(8) * 8, 0);
        }
        h.extend_from_slice(&[0u8; 8]);
        h
    }

    #[test]
    fn whole_feature_table_is_accepted() {
        let h = v3_header(&[(EXT_FEATURE_TABLE, &[0u8; 96])]);
        assert_eq!(check_extensions(&h), Ok(()));
    }

    #[test]
    fn partial_feature_table_entry_is_refused_not_a_panic() {
        let h = v3_header(&[(EXT_FEATURE_TABLE, &[0u8; 49])]);
        assert!(check_extensions(&h)
            .unwrap_err()
            .contains("feature name table"));
    }

    #[test]
    fn extension_running_past_the_cluster_is_refused() {
        let mut h = v3_header(&[]);
        let at = 104;
        h[at..at + 4].copy_from_slice(&0x1234u32.to_be_bytes());
        h[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(check_extensions(&h).is_err());
    }

    #[test]
    fn fuzzer_reproducer_is_refused() {
        let img = include_bytes!(
            "../../../fuzz/regressions/qcow2_header/imago-feature-name-table-len-337"
        );
        assert!(check_extensions(img).is_err());
    }
}
