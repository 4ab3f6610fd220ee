//! Escape-attempt messages, for tests only (feature `test-hooks`, which
//! release builds never enable): what a test asks a sandboxed worker to
//! try through its channel, and what came of it. The attempts themselves
//! are in the `sandbox` crate (`sandbox::escape::attempt`).

use serde::{Deserialize, Serialize};

/// One escape attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Escape {
    /// `open("/etc/passwd")`: a host file.
    OpenHostFile,
    /// `execve("/bin/sh")`: a new program.
    Execve,
    /// `socket(AF_INET)` and `connect` to an outside address.
    InetSocket,
    /// `ptrace(PTRACE_ATTACH)` on the host pid given.
    Ptrace {
        /// A pid as the host sees it (e.g. the broker's).
        pid: i32,
    },
    /// `mount`: a syscall no worker may make.
    ForbiddenSyscall,
}

/// What came of an attempt that returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The sandbox refused it with this errno.
    Blocked(i32),
    /// It worked: the sandbox failed.
    Escaped,
}

/// Start of the error message a worker replies with when an attempt was
/// blocked (on channels whose replies have no variant for an outcome).
const BLOCKED_PREFIX: &str = "escape attempt blocked with errno ";

impl Outcome {
    /// The outcome as a plain reply: `Ok(())` if the attempt worked, else
    /// an error that [`Outcome::from_reply_error`] reads back.
    pub fn into_reply(self) -> std::result::Result<(), crate::FlatError> {
        match self {
            Outcome::Escaped => Ok(()),
            Outcome::Blocked(errno) => Err(crate::FlatError::generic(format!(
                "{BLOCKED_PREFIX}{errno} ({})",
                std::io::Error::from_raw_os_error(errno)
            ))),
        }
    }

    /// Reads back a [`Outcome::Blocked`] from an error message made by
    /// [`Outcome::into_reply`]; `None` for any other error.
    pub fn from_reply_error(desc: &str) -> Option<Self> {
        let rest = desc.strip_prefix(BLOCKED_PREFIX)?;
        let digits: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse().ok().map(Outcome::Blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_outcome_survives_the_plain_reply() {
        let e = Outcome::Blocked(libc::EPERM).into_reply().unwrap_err();
        assert_eq!(
            Outcome::from_reply_error(&e.desc),
            Some(Outcome::Blocked(libc::EPERM))
        );
        assert_eq!(Outcome::Escaped.into_reply(), Ok(()));
        assert_eq!(Outcome::from_reply_error("some other error"), None);
    }
}
