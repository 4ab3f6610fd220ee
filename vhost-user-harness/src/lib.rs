//! vhost-user-harness: a vhost-user frontend that needs no VM, for testing
//! and benchmarking vhost-user-blk backends (block-proc and
//! qemu-storage-daemon alike).
//!
//! Crate map:
//! - [`error`]: the harness's error type.
//! - [`memory`]: "guest" memory in a memfd, shared with the backend through
//!   SET_MEM_TABLE.
//! - [`ring`]: the driver side of a split virtqueue built by hand: free
//!   descriptor list, avail publication with EVENT_IDX kick suppression,
//!   used-ring harvesting, and raw (malicious) descriptor writes.
//! - [`frontend`]: connection set-up with the `vhost` crate's `Frontend`
//!   (features, protocol features, memory table, inflight region, rings),
//!   also after the backend restarted.
//! - [`blk`]: virtio-blk requests (read, write, flush, discard, write
//!   zeroes, get-id) on top of the frontend, synchronous and pipelined,
//!   one at a time or as a batch published at once.
//! - [`blk_control`]: a live virtio-blk device's session: queues stopped
//!   and started, set-up messages sent again while the queues run, the
//!   inflight region read and replaced.
//! - [`scsi`]: virtio-scsi commands (request queues) and task management
//!   (control queue) on top of the frontend.
//! - [`net`]: virtio-net frames over tx/rx rings (vnet header, merged rx
//!   buffers, raw chains, reconnection).
//! - [`dirty_log`]: the vhost-user dirty log (SET_LOG_BASE, LOG_ALL on a
//!   live device) and the pages it marks.
//! - [`process`]: starting backends (block-proc standalone,
//!   qemu-storage-daemon) and waiting for their socket.
//! - [`worker`]: a worker (block-proc, net-proc) spawned under its IPC
//!   control channel as the broker does, and its request/reply calls.

pub mod blk;
pub mod blk_control;
pub mod dirty_log;
pub mod error;
pub mod frontend;
pub mod memory;
pub mod net;
pub mod process;
pub mod ring;
pub mod scsi;
pub mod worker;

pub use blk::{BlkDevice, BlkOptions, Completion, Request};
pub use error::{HarnessError, Result};
pub use net::{NetDevice, NetOptions};
