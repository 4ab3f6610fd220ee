//! File descriptor sets, as QEMU's monitor keeps them (`add-fd`,
//! `remove-fd`, `query-fdsets`) and the `/dev/fdset/N` file names that open
//! a copy of one of their fds instead of a path (QEMU's `qemu_open`).
//!
//! A management layer passes already-opened files over QMP, so the broker
//! needs no access to the paths itself. The table is process-wide and
//! shared by every QMP session, as QEMU's `mon_fdsets`: [`FdSets::global`].
//!
//! `-add-fd fd=N,set=M` at start-up fills the sets from fds the broker
//! inherited: [`FdSets::add_inherited`].
//!
//! Differences from QEMU, on purpose: an fd removed with `remove-fd` is
//! closed at once (QEMU defers it while the VM is paused), and a set
//! disappears as soon as its last fd is removed (QEMU keeps an empty set
//! listed while a node still uses a copy of one of its fds); copies already
//! handed out stay valid either way.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{LazyLock, Mutex};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// The prefix that names an fd set instead of a path.
pub const FDSET_PREFIX: &str = "/dev/fdset/";

/// What can go wrong with an fd set; the messages are QEMU's.
#[derive(Debug, thiserror::Error)]
pub enum FdsetError {
    /// `add-fd` with a negative `fdset-id`.
    #[error("Parameter 'fdset-id' expects a non-negative value")]
    NegativeId,
    /// `remove-fd` of a set or fd that does not exist (`what` is
    /// `fdset-id:N` or `fdset-id:N, fd:M`).
    #[error("File descriptor named '{what}' not found")]
    NotFound {
        /// The set (and fd) asked for.
        what: String,
    },
    /// A `/dev/fdset/` name whose rest is not a file descriptor number.
    #[error("Could not parse fdset {path}")]
    BadName {
        /// The whole file name.
        path: String,
    },
    /// A `/dev/fdset/N` name for a set that does not exist.
    #[error("Failed to find fdset /dev/fdset/{id}")]
    NoSuchSet {
        /// The set's id.
        id: i64,
    },
    /// No fd of the set was opened with the access mode asked for.
    #[error("Failed to find file descriptor with matching flags=0x{flags:x}")]
    NoMatchingFd {
        /// The open flags asked for.
        flags: i32,
    },
    /// A `-add-fd` option QEMU refuses (the text is QEMU's).
    #[error("{0}")]
    BadOption(&'static str),
    /// A `-add-fd` fd could not be copied.
    #[error("error duplicating fd")]
    DupInherited(#[source] nix::errno::Errno),
    /// The status flags of an fd of the set could not be read.
    #[error("Failed to read file status flags for fd={fd}")]
    ReadFlags {
        /// The set's fd.
        fd: RawFd,
        /// The system error.
        #[source]
        source: nix::errno::Errno,
    },
    /// The matching fd of the set could not be copied.
    #[error("Failed to dup() given file descriptor fd={fd}")]
    Dup {
        /// The set's fd.
        fd: RawFd,
        /// The system error.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Result of an fd-set operation.
pub type Result<T> = std::result::Result<T, FdsetError>;

/// One fd of a set.
#[derive(Debug)]
struct SetFd {
    fd: OwnedFd,
    opaque: Option<String>,
}

/// What `add-fd` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    /// The set the fd went into.
    pub fdset_id: i64,
    /// The fd's number in the broker.
    pub fd: i64,
}

/// One fd as `query-fdsets` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// The fd's number in the broker.
    pub fd: i64,
    /// The text given with `add-fd`.
    pub opaque: Option<String>,
}

/// One set as `query-fdsets` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    /// The set's id.
    pub fdset_id: i64,
    /// Its fds, oldest first.
    pub fds: Vec<FdInfo>,
}

/// The fd sets.
#[derive(Debug, Default)]
pub struct FdSets {
    /// Sets by id; each set's fds oldest first.
    sets: Mutex<BTreeMap<i64, Vec<SetFd>>>,
}

static GLOBAL: LazyLock<FdSets> = LazyLock::new(FdSets::default);

fn raw_number(fd: &OwnedFd) -> i64 {
    i64::from(fd.as_raw_fd())
}

impl FdSets {
    /// The broker's table, shared by every session.
    pub fn global() -> &'static FdSets {
        &GLOBAL
    }

    fn sets(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Vec<SetFd>>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `add-fd`: puts `fd` into set `fdset_id` (created if needed), or
    /// into a new set with the lowest free id when none is given.
    pub fn add(&self, fd: OwnedFd, fdset_id: Option<i64>, opaque: Option<String>) -> Result<Added> {
        let mut sets = self.sets();
        let id = match fdset_id {
            Some(id) if id < 0 => return Err(FdsetError::NegativeId),
            Some(id) => id,
            None => {
                let mut free = 0;
                while sets.contains_key(&free) {
                    free += 1;
                }
                free
            }
        };
        let number = raw_number(&fd);
        sets.entry(id).or_default().push(SetFd { fd, opaque });
        Ok(Added {
            fdset_id: id,
            fd: number,
        })
    }

    /// `remove-fd`: closes fd `fd` of set `fdset_id`, or all of its fds;
    /// a set left empty disappears.
    pub fn remove(&self, fdset_id: i64, fd: Option<i64>) -> Result<()> {
        let mut sets = self.sets();
        let not_found = || FdsetError::NotFound {
            what: match fd {
                Some(fd) => format!("fdset-id:{fdset_id}, fd:{fd}"),
                None => format!("fdset-id:{fdset_id}"),
            },
        };
        let set = sets.get_mut(&fdset_id).ok_or_else(not_found)?;
        match fd {
            Some(n) => {
                let i = set
                    .iter()
                    .position(|f| raw_number(&f.fd) == n)
                    .ok_or_else(not_found)?;
                set.remove(i);
            }
            None => set.clear(),
        }
        if set.is_empty() {
            sets.remove(&fdset_id);
        }
        Ok(())
    }

    /// `query-fdsets`: every set, highest id first (QEMU's order), each
    /// with its fds oldest first.
    pub fn query(&self) -> Vec<SetInfo> {
        self.sets()
            .iter()
            .rev()
            .map(|(&fdset_id, fds)| SetInfo {
                fdset_id,
                fds: fds
                    .iter()
                    .map(|f| FdInfo {
                        fd: raw_number(&f.fd),
                        opaque: f.opaque.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// A new copy (close-on-exec) of the newest fd of set `fdset_id` whose
    /// access mode is `flags & O_ACCMODE`, with the status flags of `flags`
    /// (e.g. `O_DIRECT`) applied as QEMU's `qemu_dup_flags` does. The
    /// status flags belong to the shared open file description, so they
    /// change for the set's fd too, as in QEMU.
    pub fn dup(&self, fdset_id: i64, flags: OFlag) -> Result<OwnedFd> {
        let sets = self.sets();
        let set = sets
            .get(&fdset_id)
            .ok_or(FdsetError::NoSuchSet { id: fdset_id })?;
        let want = flags & OFlag::O_ACCMODE;
        let mut found = None;
        for f in set.iter().rev() {
            let fl = fcntl(&f.fd, FcntlArg::F_GETFL).map_err(|source| FdsetError::ReadFlags {
                fd: f.fd.as_raw_fd(),
                source,
            })?;
            if OFlag::from_bits_retain(fl) & OFlag::O_ACCMODE == want {
                found = Some(&f.fd);
                break;
            }
        }
        let fd = found.ok_or(FdsetError::NoMatchingFd {
            flags: flags.bits(),
        })?;
        dup_with_flags(fd.as_fd(), flags).map_err(|source| FdsetError::Dup {
            fd: fd.as_raw_fd(),
            source,
        })
    }

    /// Opens `filename` through a set when it is a `/dev/fdset/N` name:
    /// None for any other name.
    pub fn open(&self, filename: &str, read_only: bool, direct: bool) -> Option<Result<OwnedFd>> {
        let rest = filename.strip_prefix(FDSET_PREFIX)?;
        let Some(id) = parse_fd_number(rest) else {
            return Some(Err(FdsetError::BadName {
                path: filename.to_owned(),
            }));
        };
        let mut flags = if read_only {
            OFlag::O_RDONLY
        } else {
            OFlag::O_RDWR
        };
        if direct {
            flags |= OFlag::O_DIRECT;
        }
        Some(self.dup(id, flags))
    }
}

/// One `-add-fd` option: `fd=N,set=M[,opaque=S]` (absent numbers are
/// None; QEMU's messages say they are required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedFd {
    /// The inherited fd's number.
    pub fd: Option<i64>,
    /// The set to put its copy into.
    pub set: Option<i64>,
    /// Free text shown by `query-fdsets`.
    pub opaque: Option<String>,
}

impl InheritedFd {
    /// QEMU's checks of one option, in QEMU's order; the fd's number.
    fn check(&self) -> Result<(RawFd, i64)> {
        let fd = match self.fd {
            Some(fd) if fd >= 0 => fd,
            _ => {
                return Err(FdsetError::BadOption(
                    "fd option is required and must be non-negative",
                ))
            }
        };
        if fd <= i64::from(libc::STDERR_FILENO) {
            return Err(FdsetError::BadOption("fd cannot be a standard I/O stream"));
        }
        const IN_USE: &str = "fd is not valid or already in use";
        let raw = RawFd::try_from(fd).map_err(|_| FdsetError::BadOption(IN_USE))?;
        // SAFETY: F_GETFD only reads the descriptor's flags; any number is
        // acceptable (a closed one gives EBADF).
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        // Fds inherited across exec() have FD_CLOEXEC clear; the broker's
        // own fds have it set.
        if flags == -1 || flags & libc::FD_CLOEXEC != 0 {
            return Err(FdsetError::BadOption(IN_USE));
        }
        match self.set {
            Some(set) if set >= 0 => Ok((raw, set)),
            _ => Err(FdsetError::BadOption(
                "set option is required and must be non-negative",
            )),
        }
    }
}

impl FdSets {
    /// `-add-fd`: checks every option as QEMU does, puts a close-on-exec
    /// copy of each inherited fd into its set, then closes the inherited
    /// fds. On error nothing is added and the inherited fds stay open.
    ///
    /// # Safety
    ///
    /// Each `fd` named must be an fd the broker inherited and that nothing
    /// else in the process uses or will close: this function takes
    /// ownership of it and closes it. Call it at start-up, before anything
    /// else may reuse those numbers.
    pub unsafe fn add_inherited(&self, opts: &[InheritedFd]) -> Result<()> {
        let mut checked = Vec::with_capacity(opts.len());
        for o in opts {
            checked.push(o.check()?);
        }
        let mut owned: BTreeMap<RawFd, OwnedFd> = BTreeMap::new();
        for &(raw, _) in &checked {
            if let Entry::Vacant(slot) = owned.entry(raw) {
                // SAFETY: `raw` is open (checked above) and, by this
                // function's contract, owned by nothing else; it is taken
                // once.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                slot.insert(fd);
            }
        }
        let mut copies = Vec::with_capacity(checked.len());
        for (o, &(raw, set)) in opts.iter().zip(&checked) {
            let Some(fd) = owned.get(&raw) else {
                continue;
            };
            let copy = match fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0)) {
                Ok(c) => c,
                Err(e) => {
                    // Give the inherited fds back to the caller unclosed.
                    for fd in owned.into_values() {
                        let _ = fd.into_raw_fd();
                    }
                    return Err(FdsetError::DupInherited(e));
                }
            };
            // SAFETY: F_DUPFD_CLOEXEC just returned `copy` as a new
            // descriptor that nothing else owns.
            copies.push((unsafe { OwnedFd::from_raw_fd(copy) }, set, o.opaque.clone()));
        }
        for (fd, set, opaque) in copies {
            self.add(fd, Some(set), opaque)?;
        }
        // The inherited fds close here, as QEMU's cleanup_add_fd does.
        drop(owned);
        Ok(())
    }
}

/// `F_DUPFD_CLOEXEC`, then `F_SETFL` with `flags` (which ignores the
/// access mode and creation bits).
fn dup_with_flags(fd: BorrowedFd<'_>, flags: OFlag) -> nix::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned `raw` as a new descriptor that
    // nothing else owns.
    let copy = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(&copy, FcntlArg::F_SETFL(flags & !OFlag::O_ACCMODE))?;
    Ok(copy)
}

/// QEMU's `qemu_parse_fd`: `strtol` base 10 over the whole text (leading
/// white space and a sign allowed), a value from 0 to `i32::MAX`.
pub fn parse_fd_number(text: &str) -> Option<i64> {
    let t = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i64 = digits.parse().ok()?;
    let v = if negative { -v } else { v };
    (0..=i64::from(i32::MAX)).contains(&v).then_some(v)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn file(write: bool) -> OwnedFd {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "bulkhead-fdsets-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        drop(File::create(&path).unwrap());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        OwnedFd::from(f)
    }

    fn access_mode(fd: &OwnedFd) -> OFlag {
        OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).unwrap()) & OFlag::O_ACCMODE
    }

    #[test]
    fn add_without_id_takes_the_lowest_free_id() {
        let s = FdSets::default();
        assert_eq!(s.add(file(true), Some(2), None).unwrap().fdset_id, 2);
        assert_eq!(s.add(file(true), None, None).unwrap().fdset_id, 0);
        assert_eq!(s.add(file(true), None, None).unwrap().fdset_id, 1);
        assert_eq!(s.add(file(true), None, None).unwrap().fdset_id, 3);
    }

    #[test]
    fn add_rejects_a_negative_id_with_qemu_message() {
        let e = FdSets::default()
            .add(file(true), Some(-1), None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Parameter 'fdset-id' expects a non-negative value"
        );
    }

    #[test]
    fn query_lists_sets_highest_first_and_fds_oldest_first() {
        let s = FdSets::default();
        let a = s.add(file(true), Some(1), Some("x".into())).unwrap();
        let b = s.add(file(true), Some(1), None).unwrap();
        let c = s.add(file(true), Some(4), None).unwrap();
        let q = s.query();
        assert_eq!(q.iter().map(|i| i.fdset_id).collect::<Vec<_>>(), [4, 1]);
        assert_eq!(q[0].fds[0].fd, c.fd);
        assert_eq!(
            q[1].fds,
            [
                FdInfo {
                    fd: a.fd,
                    opaque: Some("x".into())
                },
                FdInfo {
                    fd: b.fd,
                    opaque: None
                }
            ]
        );
    }

    #[test]
    fn remove_one_fd_then_the_rest_drops_the_set() {
        let s = FdSets::default();
        let a = s.add(file(true), Some(3), None).unwrap();
        s.add(file(true), Some(3), None).unwrap();
        s.remove(3, Some(a.fd)).unwrap();
        assert_eq!(s.query()[0].fds.len(), 1);
        s.remove(3, None).unwrap();
        assert!(s.query().is_empty());
    }

    #[test]
    fn remove_of_unknown_set_or_fd_gives_qemu_messages() {
        let s = FdSets::default();
        s.add(file(true), Some(0), None).unwrap();
        assert_eq!(
            s.remove(42, None).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:42' not found"
        );
        assert_eq!(
            s.remove(0, Some(99_999)).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:0, fd:99999' not found"
        );
    }

    #[test]
    fn open_dups_the_fd_whose_access_mode_matches() {
        let s = FdSets::default();
        s.add(file(false), Some(5), None).unwrap();
        s.add(file(true), Some(5), None).unwrap();
        let rw = s.open("/dev/fdset/5", false, false).unwrap().unwrap();
        assert_eq!(access_mode(&rw), OFlag::O_RDWR);
        let ro = s.open("/dev/fdset/5", true, false).unwrap().unwrap();
        assert_eq!(access_mode(&ro), OFlag::O_RDONLY);
        let fdflags = fcntl(rw.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(fdflags & libc::FD_CLOEXEC, 0, "copies are close-on-exec");
    }

    #[test]
    fn open_refuses_a_read_only_fd_for_writing() {
        let s = FdSets::default();
        s.add(file(false), Some(7), None).unwrap();
        let e = s.open("/dev/fdset/7", false, false).unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Failed to find file descriptor with matching flags=0x2"
        );
    }

    #[test]
    fn open_of_unknown_or_malformed_set_gives_qemu_messages() {
        let s = FdSets::default();
        assert_eq!(
            s.open("/dev/fdset/009", false, false)
                .unwrap()
                .unwrap_err()
                .to_string(),
            "Failed to find fdset /dev/fdset/9"
        );
        for bad in [
            "/dev/fdset/",
            "/dev/fdset/x",
            "/dev/fdset/7x",
            "/dev/fdset/-1",
        ] {
            assert_eq!(
                s.open(bad, false, false).unwrap().unwrap_err().to_string(),
                format!("Could not parse fdset {bad}")
            );
        }
        assert!(s.open("/tmp/x.img", false, false).is_none());
    }

    #[test]
    fn fd_numbers_parse_as_strtol() {
        assert_eq!(parse_fd_number("7"), Some(7));
        assert_eq!(parse_fd_number(" 7"), Some(7));
        assert_eq!(parse_fd_number("+7"), Some(7));
        assert_eq!(parse_fd_number("-0"), Some(0));
        assert_eq!(parse_fd_number("2147483648"), None);
        assert_eq!(parse_fd_number("99999999999999999999"), None);
        assert_eq!(parse_fd_number("7 "), None);
    }

    /// A descriptor like one inherited across exec(): FD_CLOEXEC clear.
    fn inheritable() -> RawFd {
        let f = file(true);
        // SAFETY: plain dup of an open fd; the copy is the test's.
        let raw = unsafe { libc::dup(f.as_raw_fd()) };
        assert!(raw > 2);
        raw
    }

    fn opt(fd: Option<i64>, set: Option<i64>) -> InheritedFd {
        InheritedFd {
            fd,
            set,
            opaque: None,
        }
    }

    fn add_inherited_err(opts: &[InheritedFd]) -> String {
        // SAFETY: the options name only fds these tests own and give away.
        unsafe { FdSets::default().add_inherited(opts) }
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn add_inherited_checks_options_with_qemu_messages() {
        assert_eq!(
            add_inherited_err(&[opt(None, Some(1))]),
            "fd option is required and must be non-negative"
        );
        assert_eq!(
            add_inherited_err(&[opt(Some(2), Some(1))]),
            "fd cannot be a standard I/O stream"
        );
        let own = file(true);
        assert_eq!(
            add_inherited_err(&[opt(Some(i64::from(own.as_raw_fd())), Some(1))]),
            "fd is not valid or already in use"
        );
        let raw = inheritable();
        assert_eq!(
            add_inherited_err(&[opt(Some(i64::from(raw)), None)]),
            "set option is required and must be non-negative"
        );
        // SAFETY: `raw` is the test's own fd and was not taken on error.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }

    #[test]
    fn add_inherited_puts_copies_in_each_set_and_closes_the_original() {
        let raw = inheritable();
        let s = FdSets::default();
        let opts = [
            opt(Some(i64::from(raw)), Some(1)),
            InheritedFd {
                opaque: Some("o".into()),
                ..opt(Some(i64::from(raw)), Some(2))
            },
        ];
        // SAFETY: `raw` is this test's own fd, given away here.
        unsafe { s.add_inherited(&opts) }.unwrap();
        let q = s.query();
        assert_eq!(q.iter().map(|i| i.fdset_id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(q[0].fds[0].opaque.as_deref(), Some("o"));
        assert!(q.iter().all(|i| i.fds[0].fd != i64::from(raw)));
        // SAFETY: F_GETFD only reads flags; the number may be closed.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        assert!(
            flags == -1 || flags & libc::FD_CLOEXEC != 0,
            "the inherited fd is closed (its number may be reused by a CLOEXEC fd)"
        );
    }
}
