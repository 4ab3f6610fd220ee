//! block-proc: Bulkhead's block worker.
//!
//! Crate map:
//! - [`bitmaps`]: dirty bitmaps (in broker-owned memory) and the qcow2
//!   bitmaps extension.
//! - [`block`]: the block layer (nodes, drivers `file`/`raw`/`qcow2`/`null-co`,
//!   the node graph, statistics). No virtio, no vhost-user.
//! - [`virtio_blk`]: virtio-blk request parsing and execution on a node,
//!   config space and feature bits (device logic, transport-independent).
//! - [`vring`]: the backend side of a split virtqueue over guest memory, with
//!   every guest-written field validated.
//! - [`inflight`]: vhost-user inflight I/O tracking (split layout) and the
//!   resubmission order after a reconnect.
//! - [`vhost`]: the vhost-user backend (virtio-blk and virtio-scsi): protocol handler, guest memory
//!   map, one worker thread per queue, the export listener.
//! - [`scsi`]: virtio-scsi: SCSI/MMC emulation (CD-ROM, disk) of the
//!   vhost-user-scsi exports.
//! - [`server`]: the broker IPC loop (`BlockRequest` → `BlockReply`).
//! - [`standalone`]: `--standalone` mode for tests and benchmarks.
//! - [`throttle`]: I/O throttle groups (leaky buckets) and the queues' gate.
//! - [`trace`]: block-proc's trace points.

pub mod bitmaps;
pub mod block;
pub mod inflight;
pub mod jobs;
pub mod scsi;
pub mod server;
pub mod snapshots;
pub mod standalone;
pub mod throttle;
pub mod trace;
pub mod vhost;
pub mod virtio_blk;
pub mod vring;
