//! QEMU's image locks: OFD byte-range locks on the image file, so
//! bulkhead, `qemu-system-*`, `qemu-storage-daemon` and `qemu-img` see each
//! other (QEMU `block/file-posix.c`, `raw_apply_lock_bytes` and
//! `raw_check_lock_bytes`; written here from that protocol, no crate does
//! it).
//!
//! For every permission bit `i` a user *holds*, it takes a shared lock on
//! byte `100 + i`; for every bit it does *not share* with others, a shared
//! lock on byte `200 + i`. It may hold permission `i` if nobody locks byte
//! `200 + i`, and may refuse to share `i` if nobody locks byte `100 + i`.
//! The locks belong to the open file description, which the broker keeps:
//! they survive block-proc restarts and go when the last fd closes.

use std::os::fd::{AsRawFd, BorrowedFd};

/// QEMU's `BLK_PERM_CONSISTENT_READ`.
pub const CONSISTENT_READ: u8 = 0x01;
/// QEMU's `BLK_PERM_WRITE`.
pub const WRITE: u8 = 0x02;
/// QEMU's `BLK_PERM_WRITE_UNCHANGED`.
pub const WRITE_UNCHANGED: u8 = 0x04;
/// QEMU's `BLK_PERM_RESIZE`.
pub const RESIZE: u8 = 0x08;
/// Every permission (QEMU `BLK_PERM_ALL`).
pub const ALL: u8 = 0x0f;

/// QEMU's `RAW_LOCK_PERM_BASE`.
const PERM_BASE: i64 = 100;
/// QEMU's `RAW_LOCK_SHARED_BASE`.
const SHARED_BASE: i64 = 200;

/// Errors of taking the locks; `Display` is QEMU's message.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another user holds a permission we need not to be shared.
    #[error("Failed to get \"{0}\" lock")]
    Perm(&'static str),
    /// Another user does not share a permission we hold.
    #[error("Failed to get shared \"{0}\" lock")]
    Shared(&'static str),
    /// fcntl failed.
    #[error("Failed to lock byte {0}: {1}")]
    Io(i64, String),
}

/// What one user of an image holds and shares (QEMU's `perm` and
/// `shared_perm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// Held permissions.
    pub perm: u8,
    /// Permissions others may hold too.
    pub shared: u8,
}

impl Perms {
    /// A writable image: QEMU's format node on its file, and a writable
    /// device: consistent read, write and resize, sharing neither write nor
    /// resize.
    pub const WRITER: Perms = Perms {
        perm: CONSISTENT_READ | WRITE | RESIZE,
        shared: ALL & !(WRITE | RESIZE),
    };
    /// A read-only image under a guest: consistent read, and nobody else
    /// writes.
    pub const READER: Perms = Perms {
        perm: CONSISTENT_READ,
        shared: ALL & !(WRITE | RESIZE),
    };
    /// A read-only image with `force-share=on`: consistent read, sharing
    /// everything.
    pub const SHARED_READER: Perms = Perms {
        perm: CONSISTENT_READ,
        shared: ALL,
    };
    /// A backing file: consistent read, writes by others allowed (QEMU's
    /// `bdrv_default_perms_for_cow` for a parent that shares write).
    pub const BACKING: Perms = Perms {
        perm: CONSISTENT_READ,
        shared: ALL,
    };
}

/// QEMU's name of one permission bit.
pub fn perm_name(bit: u8) -> &'static str {
    match bit {
        CONSISTENT_READ => "consistent read",
        WRITE => "write",
        WRITE_UNCHANGED => "write unchanged",
        RESIZE => "resize",
        _ => "unknown",
    }
}

fn bits() -> impl Iterator<Item = (i64, u8)> {
    (0..4).map(|i| (i64::from(i), 1u8 << i))
}

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// Takes (`F_RDLCK`) or drops (`F_UNLCK`) the OFD lock on `byte`.
fn set(fd: BorrowedFd<'_>, kind: libc::c_int, byte: i64) -> Result<(), LockError> {
    let fl = flock(kind, byte);
    // SAFETY: fd is open for the call; fl is a valid flock.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(LockError::Io(byte, super::open::strerror(&e)))
    }
}

/// Whether another open file description locks `byte`.
fn taken(fd: BorrowedFd<'_>, byte: i64) -> Result<bool, LockError> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: fd is open for the call; fl is a valid, writable flock.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(LockError::Io(byte, super::open::strerror(&e)));
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Drops every lock byte of `fd`.
pub fn unlock_all(fd: BorrowedFd<'_>) {
    for (i, _) in bits() {
        for byte in [PERM_BASE + i, SHARED_BASE + i] {
            if let Err(e) = set(fd, libc::F_UNLCK, byte) {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Takes QEMU's locks for `p` on `fd` and checks nobody else's conflict
/// (QEMU's order: lock, then check). On error nothing stays locked.
pub fn lock_image(fd: BorrowedFd<'_>, p: Perms) -> Result<(), LockError> {
    let r = apply(fd, p).and_then(|()| check(fd, p));
    if r.is_err() {
        unlock_all(fd);
    }
    r
}

fn apply(fd: BorrowedFd<'_>, p: Perms) -> Result<(), LockError> {
    for (i, bit) in bits() {
        if p.perm & bit != 0 {
            set(fd, libc::F_RDLCK, PERM_BASE + i)?;
        }
    }
    for (i, bit) in bits() {
        if p.shared & bit == 0 {
            set(fd, libc::F_RDLCK, SHARED_BASE + i)?;
        }
    }
    Ok(())
}

fn check(fd: BorrowedFd<'_>, p: Perms) -> Result<(), LockError> {
    for (i, bit) in bits() {
        if p.perm & bit != 0 && taken(fd, SHARED_BASE + i)? {
            return Err(LockError::Perm(perm_name(bit)));
        }
    }
    for (i, bit) in bits() {
        if p.shared & bit == 0 && taken(fd, PERM_BASE + i)? {
            return Err(LockError::Shared(perm_name(bit)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn file(name: &str) -> (std::path::PathBuf, std::fs::File) {
        let p = std::env::temp_dir().join(format!("bh-lock-{}-{name}", std::process::id()));
        std::fs::write(&p, b"").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (p, f)
    }

    fn reopen(p: &std::path::Path) -> std::fs::File {
        std::fs::File::open(p).unwrap()
    }

    /// Locks `f` once the closed descriptions' locks are gone: a child
    /// another test forks keeps a copy of every open fd until it execs, so
    /// a lock may outlive its close by that long.
    fn lock_after_close(f: &std::fs::File, perms: Perms) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Err(e) = lock_image(f.as_fd(), perms) {
            assert!(std::time::Instant::now() < deadline, "{e}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_writer_excludes_writers_and_readers_but_not_backing_users() {
        let (p, w) = file("w");
        lock_image(w.as_fd(), Perms::WRITER).unwrap();
        let other = reopen(&p);
        let e = lock_image(other.as_fd(), Perms::WRITER).unwrap_err();
        assert_eq!(e.to_string(), "Failed to get \"write\" lock");
        let e = lock_image(other.as_fd(), Perms::READER).unwrap_err();
        assert_eq!(e.to_string(), "Failed to get shared \"write\" lock");
        lock_image(other.as_fd(), Perms::BACKING).unwrap();
        drop(other);
        // Closing the writer's description frees the image.
        drop(w);
        let again = reopen(&p);
        lock_after_close(&again, Perms::READER);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn readers_share_and_a_failed_lock_leaves_nothing_behind() {
        let (p, r1) = file("r");
        lock_image(r1.as_fd(), Perms::READER).unwrap();
        let r2 = reopen(&p);
        lock_image(r2.as_fd(), Perms::READER).unwrap();
        let w = reopen(&p);
        assert!(lock_image(w.as_fd(), Perms::WRITER).is_err());
        drop((r1, r2));
        // w's failed attempt released its bytes: another writer gets in.
        let w2 = reopen(&p);
        lock_after_close(&w2, Perms::WRITER);
        drop(w);
        std::fs::remove_file(&p).unwrap();
    }
}
