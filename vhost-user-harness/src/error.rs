//! Errors of the harness.

/// Everything that can go wrong while driving a backend.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The vhost-user protocol failed.
    #[error("vhost-user: {0}")]
    VhostUser(#[source] vhost::Error),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A system call failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No descriptors or request slots left.
    #[error("queue {0} is full")]
    QueueFull(usize),
    /// The backend did not answer in time.
    #[error("timed out waiting for the backend")]
    Timeout,
    /// Bad argument to a harness call.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Result of harness operations.
pub type Result<T> = std::result::Result<T, HarnessError>;

impl From<vhost::Error> for HarnessError {
    fn from(e: vhost::Error) -> Self {
        HarnessError::VhostUser(e)
    }
}
