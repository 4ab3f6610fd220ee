//! The backing-file link in a qcow2 header: read it (the names of a
//! chain) and rewrite it (`block-stream`'s end: the top image's backing
//! becomes the stream's base, or none), as QEMU's
//! `qcow2_change_backing_file` does: the backing-format extension is
//! dropped or replaced, the name follows the extension area, all within
//! the first cluster. Written by hand: imago 0.2.6 has no API for it (and
//! never rewrites these fields itself, so they stay as written here).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::iobuf::{AlignedBuf, DIRECT_ALIGN};

/// Header extension type: end of the extension area.
const EXT_END: u32 = 0;
/// Header extension type: the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// The version 2 header's length.
const V2_HEADER_LEN: usize = 72;
/// Largest cluster QEMU accepts (2 MiB).
const MAX_CLUSTER_BITS: u32 = 21;

fn be32(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| bad("truncated qcow2 header"))
}

fn be64(b: &[u8], at: usize) -> io::Result<u64> {
    Ok((u64::from(be32(b, at)?) << 32) | u64::from(be32(b, at + 4)?))
}

fn bad(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_string())
}

/// The first cluster of `file` (read through an aligned buffer, so
/// `O_DIRECT` files work too), and its length.
fn first_cluster(file: &File) -> io::Result<(AlignedBuf, usize)> {
    let mut probe = AlignedBuf::new(DIRECT_ALIGN)?;
    file.read_at(probe.as_mut_slice(), 0)?;
    let head = probe.as_mut_slice();
    if head[..4] != *b"QFI\xfb" {
        return Err(bad("not a qcow2 image"));
    }
    let bits = be32(head, 20)?;
    if !(9..=MAX_CLUSTER_BITS).contains(&bits) {
        return Err(bad("bad qcow2 cluster size"));
    }
    let cluster = 1usize << bits;
    let mut buf = AlignedBuf::new(cluster.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN)?;
    let n = file.read_at(buf.as_mut_slice(), 0)?;
    if n < cluster.min(DIRECT_ALIGN) {
        return Err(bad("truncated qcow2 header"));
    }
    Ok((buf, cluster))
}

/// The backing file name a qcow2 header names (as written), if any.
pub fn backing_name(file: &File) -> io::Result<Option<String>> {
    let (mut buf, cluster) = first_cluster(file)?;
    let h = &buf.as_mut_slice()[..cluster];
    let (off, len) = (be64(h, 8)? as usize, be32(h, 16)? as usize);
    if off == 0 || len == 0 {
        return Ok(None);
    }
    let name = h
        .get(off..off.saturating_add(len))
        .ok_or_else(|| bad("backing file name outside the first cluster"))?;
    Ok(Some(String::from_utf8_lossy(name).into_owned()))
}

/// Rewrites the header of the image in `file` so it names `backing`
/// (file name as written into the header, and its format), or no backing
/// file; then makes it durable.
pub fn write_backing(file: &File, backing: Option<(&str, &str)>) -> io::Result<()> {
    let (mut buf, cluster) = first_cluster(file)?;
    let h = &mut buf.as_mut_slice()[..cluster];
    let start = match be32(h, 4)? {
        2 => V2_HEADER_LEN,
        _ => be32(h, 100)? as usize,
    };
    // Keep every extension but the backing format.
    let mut exts = Vec::new();
    let mut at = start;
    loop {
        let kind = be32(h, at)?;
        let len = be32(h, at + 4)? as usize;
        if kind == EXT_END {
            break;
        }
        let padded = len.div_ceil(8) * 8;
        let end = at
            .checked_add(8 + padded)
            .filter(|e| *e <= cluster)
            .ok_or_else(|| bad("header extension exceeds the first cluster"))?;
        if kind != EXT_BACKING_FORMAT {
            exts.extend_from_slice(&h[at..end]);
        }
        at = end;
    }
    let old_end = {
        let (off, len) = (be64(h, 8)? as usize, be32(h, 16)? as usize);
        (at + 8).max(off + len).min(cluster)
    };
    if let Some((_, fmt)) = backing {
        exts.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        exts.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
        exts.extend_from_slice(fmt.as_bytes());
        exts.resize(exts.len().div_ceil(8) * 8, 0);
    }
    exts.extend_from_slice(&[0u8; 8]);
    let name_at = start + exts.len();
    let name = backing.map_or(&[][..], |(n, _)| n.as_bytes());
    if name_at + name.len() > cluster || name.len() > 1023 {
        return Err(bad("backing file name does not fit in the header cluster"));
    }
    let new_end = name_at + name.len();
    h[start..name_at].copy_from_slice(&exts);
    h[name_at..new_end].copy_from_slice(name);
    let clear_to = old_end.max(new_end);
    h[new_end..clear_to].fill(0);
    let (off, len) = if name.is_empty() {
        (0u64, 0u32)
    } else {
        (name_at as u64, name.len() as u32)
    };
    h[8..16].copy_from_slice(&off.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    let write_len = clear_to.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let b = buf.as_mut_slice();
    file.write_all_at(&b[..write_len.min(b.len())], 0)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> String {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn backing_link_is_rewritten_as_qemu_reads_it() {
        let dir = std::env::temp_dir().join(format!("bh-backing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.qcow2");
        let mid = dir.join("mid.qcow2");
        let top = dir.join("top.qcow2");
        let (b, m, t) = (
            base.to_str().unwrap(),
            mid.to_str().unwrap(),
            top.to_str().unwrap(),
        );
        qemu_img(&["create", "-q", "-f", "qcow2", b, "1M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", m]);
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", m, "-F", "qcow2", t]);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&top)
            .unwrap();
        assert_eq!(backing_name(&f).unwrap().as_deref(), Some(m));
        write_backing(&f, Some((b, "qcow2"))).unwrap();
        assert_eq!(backing_name(&f).unwrap().as_deref(), Some(b));
        let info = qemu_img(&["info", "-U", "--output=json", t]);
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["backing-filename"], b);
        assert_eq!(v["backing-filename-format"], "qcow2");
        write_backing(&f, None).unwrap();
        let info = qemu_img(&["info", "-U", "--output=json", t]);
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert!(v.get("backing-filename").is_none(), "{v}");
        qemu_img(&["check", "-q", t]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
