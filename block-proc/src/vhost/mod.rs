//! The vhost-user-blk backend: an adapter from the vhost-user protocol to
//! the device logic in [`crate::virtio_blk`] and the block layer.
//!
//! Why not `vhost-user-backend`'s `VhostUserHandler`: in 0.24 its
//! `get_inflight_fd`/`set_inflight_fd` are fixed to "unsupported" and its
//! `VhostUserBackend` trait has no hook for them, and it hides the queue
//! state a resubmission needs. So the protocol handler is our own,
//! `vhost-backend-common`'s `VhostBackend` (shared with net-proc; the
//! `vhost` crate still does all message parsing, validation and
//! REPLY_ACK), and block-proc plugs its device half into it.
//!
//! - [`memory`]: guest memory from SET_MEM_TABLE, frontend-VA translation.
//! - [`queue`]: a queue's worker thread (kick → process → used → call),
//!   inflight bookkeeping and resubmission.
//! - [`backend`]: the device half of the protocol handler (inflight
//!   region, queue roles and workers).
//! - [`device`]: what virtio-blk and virtio-scsi plug in.
//! - [`export`]: one export's connection thread and the nodes it holds.
//! - [`log`]: dirty logging of the buffers a request wrote (migration).

pub mod backend;
pub use vhost_backend_common::backend_channel;
pub mod device;
pub mod export;
pub mod log;
pub use vhost_backend_common::memory;
pub mod queue;
