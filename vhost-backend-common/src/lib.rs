//! What Bulkhead's vhost-user backends share (workers never depend on
//! each other, so block-proc and net-proc both take these from here):
//! - [`memory`]: guest memory as the frontend shares it (SET_MEM_TABLE),
//!   every region checked against its file before it is mapped.
//! - [`backend_channel`]: the backend→frontend channel
//!   (`VHOST_USER_PROTOCOL_F_BACKEND_REQ`) and CONFIG_CHANGE_MSG.
//! - [`poll`]: an export thread's wait for its sockets or its stop.
//! - [`log`]: the vhost-user dirty log (LOG_ALL, SET_LOG_BASE) the
//!   backends mark every page they write into guest RAM in.

pub mod backend_channel;
pub mod log;
pub mod memory;
pub mod poll;
