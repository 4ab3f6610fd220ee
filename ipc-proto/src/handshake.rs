//! The protocol-version handshake. A worker speaks first: it sends
//! [`Hello`] with its kind and protocol version; the broker answers with
//! [`HelloReply`]. A version mismatch ends the connection before any request.

use serde::{Deserialize, Serialize};

/// Version of the broker↔worker protocol; bump on any incompatible change
/// of a message type.
pub const PROTOCOL_VERSION: u32 = 1;

/// The kinds of worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerKind {
    /// vcpu-proc: the KVM VM.
    Vcpu,
    /// block-proc: the block layer and vhost-user-blk backends.
    Block,
    /// net-proc: the vhost-user-net backend.
    Net,
}

impl WorkerKind {
    /// The executable's file name, found beside the broker's.
    pub fn executable(self) -> &'static str {
        match self {
            WorkerKind::Vcpu => "vcpu-proc",
            WorkerKind::Block => "block-proc",
            WorkerKind::Net => "net-proc",
        }
    }

    /// A short lowercase name for events and logs.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Vcpu => "vcpu",
            WorkerKind::Block => "block",
            WorkerKind::Net => "net",
        }
    }
}

/// First message on every control connection, worker → broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The worker's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What the worker is.
    pub kind: WorkerKind,
    /// The worker's pid as it sees itself (may differ in a pid namespace).
    pub pid: u32,
}

/// The broker's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The worker may proceed; requests follow.
    Accepted {
        /// The broker's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// The broker refuses the worker (version or kind mismatch).
    Refused {
        /// Why.
        reason: String,
    },
}

/// Checks a worker's [`Hello`] against what the broker expects.
pub fn check_hello(hello: &Hello, expected: WorkerKind) -> HelloReply {
    if hello.version != PROTOCOL_VERSION {
        HelloReply::Refused {
            reason: format!(
                "protocol version {} is not supported (broker speaks {})",
                hello.version, PROTOCOL_VERSION
            ),
        }
    } else if hello.kind != expected {
        HelloReply::Refused {
            reason: format!(
                "expected a {} worker, got {}",
                expected.name(),
                hello.kind.name()
            ),
        }
    } else {
        HelloReply::Accepted {
            version: PROTOCOL_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_hello_is_accepted() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            kind: WorkerKind::Block,
            pid: 1,
        };
        assert_eq!(
            check_hello(&h, WorkerKind::Block),
            HelloReply::Accepted {
                version: PROTOCOL_VERSION
            }
        );
    }

    #[test]
    fn wrong_version_is_refused() {
        let h = Hello {
            version: PROTOCOL_VERSION + 1,
            kind: WorkerKind::Block,
            pid: 1,
        };
        assert!(matches!(
            check_hello(&h, WorkerKind::Block),
            HelloReply::Refused { .. }
        ));
    }

    #[test]
    fn wrong_kind_is_refused() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            kind: WorkerKind::Net,
            pid: 1,
        };
        assert!(matches!(
            check_hello(&h, WorkerKind::Vcpu),
            HelloReply::Refused { .. }
        ));
    }
}
