//! What Bulkhead's vhost-user backends share (workers never depend on
//! each other, so block-proc and net-proc both take these from here):
//! - [`backend`]: the vhost-user protocol handler, generic over the
//!   device half each worker implements ([`backend::BackendDevice`]:
//!   features, config space, queue start, inflight region).
//! - [`export`]: an export's thread, serving one frontend connection at a
//!   time.
//! - [`memory`]: guest memory as the frontend shares it (SET_MEM_TABLE),
//!   every region checked against its file before it is mapped.
//! - [`backend_channel`]: the backend→frontend channel
//!   (`VHOST_USER_PROTOCOL_F_BACKEND_REQ`) and CONFIG_CHANGE_MSG.
//! - [`early_enable`]: SET_VRING_ENABLE before PROTOCOL_FEATURES is acked
//!   (QEMU's virtio-net sends it).
//! - [`poll`]: an export thread's wait for its sockets or its stop.
//! - [`log`]: the vhost-user dirty log (LOG_ALL, SET_LOG_BASE) the
//!   backends mark every page they write into guest RAM in.

pub mod backend;
pub mod backend_channel;
pub mod early_enable;
pub mod export;
pub mod log;
pub mod memory;
pub mod poll;
