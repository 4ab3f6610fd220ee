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
    /// A worker's handshake on its control channel failed.
    #[error("worker handshake")]
    Handshake(#[source] ipc_proto::worker::StartupError),
    /// A worker answered out of turn (another request's reply, another
    /// process's handshake).
    #[error("unexpected worker answer: {0}")]
    WorkerAnswer(String),
    /// A worker's control channel failed.
    #[error("worker control channel")]
    Control(#[source] ipc_proto::ChannelError),
}

/// Result of harness operations.
pub type Result<T> = std::result::Result<T, HarnessError>;

impl From<vhost::Error> for HarnessError {
    fn from(e: vhost::Error) -> Self {
        HarnessError::VhostUser(e)
    }
}
