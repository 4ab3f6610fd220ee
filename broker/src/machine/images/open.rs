//! Opening one image file for a VM: non-blocking until its type is known
//! (a FIFO or a device that waits for a peer answers at once), never a
//! FIFO, socket, character device or a file on /proc or /sys, and with
//! the VM's identity when `-run-with user=` gave one.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// Errors of opening an image file; `Display` is QEMU's message.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The open (or a check after it) failed.
    #[error("Could not open '{path}': {reason}")]
    Open {
        /// The name as given.
        path: String,
        /// strerror text or the refusal.
        reason: String,
    },
    /// A `/dev/fdset/N` name could not be served.
    #[error("{0}")]
    Fdset(String),
    /// The VM's identity could not be taken for the open.
    #[error("Could not open '{path}': cannot take the VM's identity (uid {uid}, gid {gid})")]
    Identity {
        /// The name as given.
        path: String,
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
    },
}

/// The identity images are opened with (`-run-with user=`): filesystem
/// permissions are checked against it, as for QEMU run by libvirt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The fsuid.
    pub uid: u32,
    /// The fsgid (and the only supplementary group during the open).
    pub gid: u32,
}

/// What the file is for: user-named files may be block devices (QEMU's
/// `host_device` use of `file`); backing files must be regular files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A `filename` the user wrote.
    Named,
    /// A backing file read from an image header.
    Backing,
}

/// An opened image file.
pub struct Opened {
    /// The fd (blocking mode, `O_CLOEXEC`).
    pub fd: OwnedFd,
    /// The path the kernel resolved (symlinks followed), when there is one.
    pub real_path: Option<PathBuf>,
    /// Device and inode (to find loops in backing chains).
    pub dev_ino: (u64, u64),
}

/// strerror text of an I/O error, as QEMU prints it.
pub fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Restores the calling thread's fsuid, fsgid and groups on drop.
/// `setfsuid`/`setfsgid` and the raw `setgroups` syscall act on the calling
/// thread only, so the rest of the broker keeps its identity.
struct FsIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

/// `setgroups` for the calling thread only (the raw syscall; the libc
/// wrapper changes every thread).
fn thread_setgroups(groups: &[libc::gid_t]) -> bool {
    // SAFETY: the pointer and length describe a live slice for the call.
    unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0 }
}

impl FsIdentity {
    /// Takes `id` on this thread, or `None` if the kernel refused.
    fn take(id: Identity) -> Option<Self> {
        let groups = nix::unistd::getgroups()
            .ok()?
            .into_iter()
            .map(|g| g.as_raw())
            .collect::<Vec<_>>();
        if !thread_setgroups(&[id.gid]) {
            return None;
        }
        // SAFETY: setfsgid/setfsuid only change this thread's credentials;
        // each returns the previous value.
        let (gid, uid) = unsafe { (libc::setfsgid(id.gid), libc::setfsuid(id.uid)) };
        let saved = FsIdentity {
            uid: uid as u32,
            gid: gid as u32,
            groups,
        };
        // setfsuid(-1) fails and returns the current value: the check that
        // the switch happened.
        // SAFETY: as above; -1 changes nothing.
        let (now_uid, now_gid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
        if now_uid as u32 != id.uid || now_gid as u32 != id.gid {
            drop(saved);
            return None;
        }
        Some(saved)
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // SAFETY: restores this thread's previous fs identity.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
        if !thread_setgroups(&self.groups) {
            tracing::error!("cannot restore the broker's supplementary groups");
        }
    }
}

/// Runs `f` (an open) with `identity`'s fsuid/fsgid on this thread, or as
/// the broker when `None`; `None` back if the identity cannot be taken.
pub fn as_identity<T>(identity: Option<Identity>, f: impl FnOnce() -> T) -> Option<T> {
    let _guard = match identity {
        Some(id) => Some(FsIdentity::take(id)?),
        None => None,
    };
    Some(f())
}

/// Opens `path` read-only or read-write (and `O_DIRECT` if `direct`) for
/// `purpose`, as `identity` when given. A `/dev/fdset/N` name opens a copy
/// of an fd passed with `add-fd`.
pub fn open_image(
    path: &str,
    read_only: bool,
    direct: bool,
    purpose: Purpose,
    identity: Option<Identity>,
) -> Result<Opened, OpenError> {
    let fail = |reason: String| OpenError::Open {
        path: path.to_owned(),
        reason,
    };
    let file = match super::super::fdsets::FdSets::global().open(path, read_only, direct) {
        Some(r) => File::from(r.map_err(|e| OpenError::Fdset(e.to_string()))?),
        None => {
            if purpose == Purpose::Backing && is_kernel_path(path) {
                return Err(fail(
                    "backing files are never opened under /proc, /sys or /dev".into(),
                ));
            }
            let mut o = OpenOptions::new();
            o.read(true).write(!read_only);
            let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
            if direct {
                flags |= libc::O_DIRECT;
            }
            o.custom_flags(flags);
            let _guard = match identity {
                Some(id) => Some(FsIdentity::take(id).ok_or(OpenError::Identity {
                    path: path.to_owned(),
                    uid: id.uid,
                    gid: id.gid,
                })?),
                None => None,
            };
            o.open(path).map_err(|e| fail(strerror(&e)))?
        }
    };
    let meta = file.metadata().map_err(|e| fail(strerror(&e)))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(fail("Is a directory".into()));
    }
    let allowed = ft.is_file() || (purpose == Purpose::Named && ft.is_block_device());
    if !allowed {
        return Err(fail(match purpose {
            Purpose::Named => "not a regular file or block device".into(),
            Purpose::Backing => "a backing file must be a regular file".into(),
        }));
    }
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| fail(e.desc().to_owned()))?;
    let kind = fs.filesystem_type();
    if kind == nix::sys::statfs::PROC_SUPER_MAGIC || kind == nix::sys::statfs::SYSFS_MAGIC {
        return Err(fail("files on /proc or /sys are not images".into()));
    }
    let flags = fcntl(file.as_fd(), FcntlArg::F_GETFL).map_err(|e| fail(e.desc().to_owned()))?;
    let blocking = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(file.as_fd(), FcntlArg::F_SETFL(blocking)).map_err(|e| fail(e.desc().to_owned()))?;
    let real_path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok();
    Ok(Opened {
        dev_ino: (meta.dev(), meta.ino()),
        fd: OwnedFd::from(file),
        real_path,
    })
}

/// True for names under the kernel's pseudo-filesystems and /dev (checked
/// on the name, before the open: opening some of them has side effects).
fn is_kernel_path(path: &str) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("bh-open-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let p = tmp("fifo");
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let start = Instant::now();
        let e = open_image(p.to_str().unwrap(), true, false, Purpose::Named, None)
            .err()
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e.to_string(),
            format!(
                "Could not open '{}': not a regular file or block device",
                p.display()
            )
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn proc_and_character_devices_are_refused() {
        let e = open_image("/proc/self/status", true, false, Purpose::Named, None)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "Could not open '/proc/self/status': files on /proc or /sys are not images"
        );
        let e = open_image("/dev/null", true, false, Purpose::Named, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = open_image("/dev/null", true, false, Purpose::Backing, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("never opened under"), "{e}");
    }

    #[test]
    fn the_fd_is_blocking_and_knows_its_real_path() {
        let p = tmp("reg");
        std::fs::write(&p, b"x").unwrap();
        let o = open_image(p.to_str().unwrap(), false, false, Purpose::Backing, None).unwrap();
        let flags = fcntl(o.fd.as_fd(), FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(o.real_path.unwrap(), std::fs::canonicalize(&p).unwrap());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn the_vm_identity_applies_and_is_restored() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let p = tmp("root-only");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let id = Identity {
            uid: 4_000_123,
            gid: 4_000_123,
        };
        let e = open_image(p.to_str().unwrap(), true, false, Purpose::Named, Some(id))
            .err()
            .unwrap();
        assert!(e.to_string().ends_with("Permission denied"), "{e}");
        // The thread is root again.
        assert!(open_image(p.to_str().unwrap(), true, false, Purpose::Named, None).is_ok());
        std::fs::remove_file(&p).unwrap();
    }
}
