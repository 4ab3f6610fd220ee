//! The error a QMP command answers with: a class and a message, as QEMU's
//! `{"error": {"class": ..., "desc": ...}}`.

use ipc_proto::{ErrorClass, FlatError};

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    /// The QMP error class.
    pub class: ErrorClass,
    /// The message.
    pub desc: String,
}

/// Result of a command.
pub type Result<T> = std::result::Result<T, QmpError>;

impl QmpError {
    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound` error.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

impl From<FlatError> for QmpError {
    fn from(e: FlatError) -> Self {
        QmpError {
            class: e.class,
            desc: e.desc,
        }
    }
}
