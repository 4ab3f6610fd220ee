//! The broker's own reading of a qcow2 backing chain: the backing file
//! name and format from each image header, resolved as QEMU does (relative
//! names against the directory of the image naming them).
//!
//! Written by hand (a few fields of the header, no I/O beyond the first
//! cluster) so the broker needs no image library: it only learns which
//! files block-proc will need, it never interprets guest data.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

/// qcow2 magic.
const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Header extension: end.
const EXT_END: u32 = 0;
/// Header extension: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU's limit on backing file names.
const MAX_BACKING_NAME: u32 = 1023;
/// QEMU's cluster size limits (bits).
const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster (2 MiB): the backing name lies in cluster 0.
const MAX_CLUSTER_BITS: u32 = 21;
/// The version 2 header's length.
const V2_HEADER_LEN: usize = 72;
/// Longest chain the broker follows.
pub const MAX_DEPTH: usize = 64;
/// Alignment for reads through `O_DIRECT` fds.
const ALIGN: usize = 4096;

/// Errors of reading a chain; `Display` is QEMU's message where it has one.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Reading the header failed.
    #[error("Could not read qcow2 header: {0}")]
    Read(String),
    /// A header field is invalid.
    #[error("{0}")]
    Header(String),
    /// The chain goes round.
    #[error("Backing file '{0}' creates a loop in the backing chain")]
    Loop(String),
    /// The chain is longer than [`MAX_DEPTH`].
    #[error("Backing chain is longer than {MAX_DEPTH} images")]
    TooDeep,
    /// A backing file name bulkhead does not open (protocol or JSON names).
    #[error("Could not open backing file: '{0}' is not a plain file name")]
    NotAFile(String),
    /// Opening a backing file failed (the message already says which).
    #[error("Could not open backing file: {0}")]
    Open(String),
}

/// A backing file reference read from a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingRef {
    /// The name as stored in the header.
    pub name: String,
    /// The format from the header extension, if any.
    pub format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some((u64::from(be32(b, at)?) << 32) | u64::from(be32(b, at + 4)?))
}

/// Reads up to `len` bytes from offset 0 of `fd` through an aligned buffer
/// (so `O_DIRECT` fds work too).
fn read_start(fd: BorrowedFd<'_>, len: usize) -> Result<Vec<u8>, ChainError> {
    let want = len.div_ceil(ALIGN) * ALIGN;
    let mut raw = vec![0u8; want + ALIGN];
    let skip = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[skip..skip + want];
    let mut done = 0;
    while done < want {
        match nix::sys::uio::pread(fd, &mut buf[done..], done as i64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ChainError::Read(e.desc().to_owned())),
        }
        if done % ALIGN != 0 {
            break;
        }
    }
    let mut out = buf[..done.min(len)].to_vec();
    out.truncate(len);
    Ok(out)
}

/// The backing file named in the header of the image on `fd`, or `None`
/// if it is not a qcow2 image or names none.
pub fn read_backing(fd: BorrowedFd<'_>) -> Result<Option<BackingRef>, ChainError> {
    let head = read_start(fd, 104)?;
    if head.len() < 4 || head[..4] != *MAGIC {
        return Ok(None);
    }
    let bad = |m: &str| ChainError::Header(m.to_owned());
    let version = be32(&head, 4).ok_or_else(|| bad("Image is not in qcow2 format"))?;
    if !(2..=3).contains(&version) {
        return Err(ChainError::Header(format!(
            "Unsupported qcow2 version {version}"
        )));
    }
    let (Some(offset), Some(size), Some(cluster_bits)) =
        (be64(&head, 8), be32(&head, 16), be32(&head, 20))
    else {
        return Err(bad("Image is not in qcow2 format"));
    };
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(ChainError::Header(format!(
            "Unsupported cluster size: 2^{cluster_bits}"
        )));
    }
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    let cluster = 1usize << cluster_bits;
    if size > MAX_BACKING_NAME {
        return Err(bad("Backing file name too long"));
    }
    if offset > cluster as u64 - u64::from(size) {
        return Err(bad("Invalid backing file offset"));
    }
    let c0 = read_start(fd, cluster)?;
    let (start, end) = (offset as usize, offset as usize + size as usize);
    let name = c0
        .get(start..end)
        .ok_or_else(|| bad("Could not read backing file name"))?;
    let name = String::from_utf8(name.to_vec())
        .map_err(|_| bad("Backing file name is not valid UTF-8"))?;
    let header_len = match version {
        2 => V2_HEADER_LEN,
        _ => be32(&c0, 100).ok_or_else(|| bad("Image is not in qcow2 format"))? as usize,
    };
    Ok(Some(BackingRef {
        name,
        format: backing_format(&c0, header_len, start),
    }))
}

/// The backing format extension in the extension area `[from, until)`.
fn backing_format(c0: &[u8], from: usize, until: usize) -> Option<String> {
    let mut at = from;
    while at + 8 <= until.min(c0.len()) {
        let (kind, len) = (be32(c0, at)?, be32(c0, at + 4)? as usize);
        if kind == EXT_END {
            return None;
        }
        let data = c0.get(at + 8..(at + 8).checked_add(len)?)?;
        if kind == EXT_BACKING_FORMAT {
            return String::from_utf8(data.to_vec()).ok();
        }
        at = at.checked_add(8 + len.div_ceil(8) * 8)?;
    }
    None
}

/// Resolves a backing name as QEMU (and block-proc) do: relative to the
/// directory of the image that names it. Must stay identical to
/// block-proc's `resolve_backing`: files are matched by this string.
pub fn resolve(image: &str, backing: &str) -> String {
    if backing.starts_with('/') {
        return backing.to_string();
    }
    match Path::new(image).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(backing).display().to_string(),
        _ => backing.to_string(),
    }
}

/// One backing file of a chain, opened.
pub struct Link {
    /// Its resolved name (what block-proc asks for).
    pub name: String,
    /// The fd.
    pub fd: OwnedFd,
}

/// Opens one backing file by resolved name: its fd and (device, inode), or
/// the whole error message.
pub type OpenBacking<'a> = dyn FnMut(&str) -> Result<(OwnedFd, (u64, u64)), String> + 'a;

/// Walks the chain below the image `top` (open on `top_fd`): reads each
/// header, resolves the name and calls `open` (which applies the policy
/// and returns the fd with its device and inode). A backing file whose
/// header names a format other than qcow2 ends the chain, as in
/// block-proc.
pub fn walk(
    top: &str,
    top_fd: BorrowedFd<'_>,
    top_dev_ino: (u64, u64),
    open: &mut OpenBacking<'_>,
) -> Result<Vec<Link>, ChainError> {
    let mut links: Vec<Link> = Vec::new();
    let mut seen = vec![top_dev_ino];
    let mut next = read_backing(top_fd)?.map(|b| (top.to_owned(), b));
    while let Some((parent, b)) = next.take() {
        if b.name.starts_with("json:") || b.name.contains("://") {
            return Err(ChainError::NotAFile(b.name));
        }
        let name = resolve(&parent, &b.name);
        if links.len() >= MAX_DEPTH {
            return Err(ChainError::TooDeep);
        }
        let (fd, id) = open(&name).map_err(ChainError::Open)?;
        if seen.contains(&id) {
            return Err(ChainError::Loop(name));
        }
        seen.push(id);
        let follow = matches!(b.format.as_deref(), None | Some("qcow2"));
        if follow {
            next = read_backing(std::os::fd::AsFd::as_fd(&fd))?.map(|b| (name.clone(), b));
        }
        links.push(Link { name, fd });
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let st = Command::new("qemu-img").args(args).status().unwrap();
        assert!(st.success());
    }

    #[test]
    fn backing_names_resolve_like_qemu() {
        assert_eq!(resolve("/img/top.qcow2", "base.raw"), "/img/base.raw");
        assert_eq!(resolve("/img/top.qcow2", "/abs/b"), "/abs/b");
        assert_eq!(resolve("top.qcow2", "b"), "b");
        assert_eq!(resolve("/img/top.qcow2", "../x/b"), "/img/../x/b");
    }

    #[test]
    fn headers_made_by_qemu_img_are_read() {
        let dir = std::env::temp_dir().join(format!("bh-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = |n: &str| dir.join(n).display().to_string();
        std::fs::File::create(d("base.raw"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &d("mid.qcow2"),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &d("mid.qcow2"),
            "-F",
            "qcow2",
            &d("top.qcow2"),
        ]);
        let top = std::fs::File::open(d("top.qcow2")).unwrap();
        assert_eq!(
            read_backing(top.as_fd()).unwrap(),
            Some(BackingRef {
                name: d("mid.qcow2"),
                format: Some("qcow2".into())
            })
        );
        let mut opened = Vec::new();
        let links = walk(&d("top.qcow2"), top.as_fd(), (0, 0), &mut |n| {
            opened.push(n.to_owned());
            let f = std::fs::File::open(n).map_err(|e| e.to_string())?;
            let m = f.metadata().unwrap();
            Ok((f.into(), (std::os::unix::fs::MetadataExt::ino(&m), 1)))
        })
        .unwrap();
        let names: Vec<_> = links.iter().map(|l| l.name.clone()).collect();
        assert_eq!(names, [d("mid.qcow2"), d("base.raw")]);
        assert_eq!(opened, names);
        let raw = std::fs::File::open(d("base.raw")).unwrap();
        assert_eq!(read_backing(raw.as_fd()).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(MAGIC);
        h[7] = 3;
        h[16..20].copy_from_slice(&5u32.to_be_bytes());
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        let p = std::env::temp_dir().join(format!("bh-chain-bad-{}", std::process::id()));
        std::fs::write(&p, &h).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(
            read_backing(f.as_fd()).unwrap_err().to_string(),
            "Invalid backing file offset"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
