//! The vhost-user-net backend: NIC exports served to vhost-user
//! frontends over socketpair ends the broker attaches.
//!
//! - [`memory`]: guest memory from SET_MEM_TABLE, frontend-VA translation.
//! - [`queue`]: a virtqueue's worker thread (tx: ring → port, rx: port →
//!   ring), descriptor validation, drop counting.
//! - [`stats`]: a NIC's counters.
//! - [`backend`]: the protocol handler and the [`backend::Nic`] it serves.
//! - [`backend_channel`]: SET_BACKEND_REQ_FD and CONFIG_CHANGE_MSG.
//! - [`export`]: the connection loop of one NIC.
//! - [`early_enable`]: SET_VRING_ENABLE before PROTOCOL_FEATURES is acked
//!   (QEMU's virtio-net sends it).

pub mod backend;
pub use vhost_backend_common::backend_channel;
pub mod early_enable;
pub mod export;
pub use vhost_backend_common::memory;
pub mod queue;
pub mod stats;
