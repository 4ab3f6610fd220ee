//! The death note: how a worker killed by seccomp tells the broker which
//! syscall it made.
//!
//! The broker creates a pipe per worker, keeps the read end (close-on-exec)
//! and passes the write end as `--death-note-fd N`. The worker's SIGSYS
//! handler writes one fixed-size [`DeathNote`] record there (a single
//! `write` of 16 bytes, atomic on a pipe) before dying with SIGSYS. After
//! the worker's exit the broker calls [`read_note`] on the read end and
//! names the syscall in its worker-exit event.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};

use super::syscall_names;

/// The command-line flag naming the death-note fd.
pub const DEATH_NOTE_FD_FLAG: &str = "--death-note-fd";

/// Size of one record on the pipe.
pub const RECORD_LEN: usize = 16;

const MAGIC: [u8; 4] = *b"BHDN";

/// A forbidden syscall that killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeathNote {
    /// Its number.
    pub syscall: u32,
    /// The audit architecture it was made with (`AUDIT_ARCH_X86_64`).
    pub arch: u32,
}

impl DeathNote {
    /// The syscall's name, if the table knows the number.
    pub fn name(&self) -> Option<&'static str> {
        syscall_names::name(self.syscall)
    }

    /// The record as written to the pipe (async-signal-safe: no allocation).
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.syscall.to_le_bytes());
        out[8..12].copy_from_slice(&self.arch.to_le_bytes());
        out
    }

    /// Parses a record; `None` for anything that is not one.
    pub fn decode(rec: &[u8]) -> Option<Self> {
        if rec.len() != RECORD_LEN || rec[..4] != MAGIC {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&rec[i..i + 4]);
            u32::from_le_bytes(b)
        };
        Some(DeathNote {
            syscall: word(4),
            arch: word(8),
        })
    }
}

impl std::fmt::Display for DeathNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "forbidden syscall {} ({n})", self.syscall),
            None => write!(f, "forbidden syscall {}", self.syscall),
        }
    }
}

/// Reads the first record from the read end of a death-note pipe without
/// blocking; `None` if the worker left none (it died another way).
pub fn read_note(pipe: impl AsFd) -> Option<DeathNote> {
    let fd = pipe.as_fd();
    // SAFETY: fcntl on a borrowed, open fd with integer arguments.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl >= 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    }
    let mut file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let mut rec = [0u8; RECORD_LEN];
    file.read_exact(&mut rec).ok()?;
    DeathNote::decode(&rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn record_round_trips() {
        let n = DeathNote {
            syscall: 165,
            arch: 0xc000_003e,
        };
        assert_eq!(DeathNote::decode(&n.encode()), Some(n));
        assert_eq!(n.to_string(), "forbidden syscall 165 (mount)");
    }

    #[test]
    fn garbage_is_not_a_note() {
        assert_eq!(DeathNote::decode(&[0u8; RECORD_LEN]), None);
        assert_eq!(DeathNote::decode(b"BHDN"), None);
    }

    #[test]
    fn read_note_returns_none_on_an_empty_pipe_without_blocking() {
        let (r, w) = nix::unistd::pipe()
            .map(|(r, w)| (r, std::fs::File::from(w)))
            .unwrap();
        assert_eq!(read_note(&r), None);
        drop(w);
    }

    #[test]
    fn read_note_reads_the_written_record() {
        let (r, mut w) = nix::unistd::pipe()
            .map(|(r, w)| (r, std::fs::File::from(w)))
            .unwrap();
        let n = DeathNote {
            syscall: 59,
            arch: 0xc000_003e,
        };
        w.write_all(&n.encode()).unwrap();
        drop(w);
        assert_eq!(read_note(&r).map(|n| n.name()), Some(Some("execve")));
    }
}
