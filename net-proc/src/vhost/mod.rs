//! The vhost-user-net backend: NIC exports served to vhost-user
//! frontends over socketpair ends the broker attaches.
//!
//! - [`memory`]: guest memory from SET_MEM_TABLE, frontend-VA translation.
//! - [`body`]: a frame's bytes in a buffer or in a guest's tx chain, and
//!   their copy into rx buffers (guest to guest in one copy).
//! - [`ring`]: one virtqueue: checked chains, used elements, dirty log,
//!   notification, the delivery of a frame into rx buffers.
//! - [`queue`]: a virtqueue's worker (tx: ring → netdev, rx: TAP → ring;
//!   a switch port's rx ring is filled by the switch, ring to ring).
//! - [`stats`]: a NIC's counters.
//! - [`backend`]: the device half of the protocol handler (shared with
//!   block-proc in `vhost-backend-common`) and the [`backend::Nic`] it
//!   serves.
//! - [`backend_channel`]: SET_BACKEND_REQ_FD and CONFIG_CHANGE_MSG.
//! - [`export`]: the connection thread of one NIC (SET_VRING_ENABLE
//!   before PROTOCOL_FEATURES is acked, as QEMU's virtio-net sends it, is
//!   applied there: `vhost_backend_common::early_enable`).

pub mod backend;
pub mod body;
pub use vhost_backend_common::backend_channel;
pub mod export;
pub use vhost_backend_common::memory;
pub mod queue;
pub mod ring;
pub mod stats;
