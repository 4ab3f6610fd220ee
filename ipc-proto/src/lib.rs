//! The one crate every Bulkhead process shares: typed messages between the
//! broker and its workers, their framing, fd passing and the version
//! handshake.
//!
//! Crate map:
//! - [`codec`]: bincode (pinned `=1.3.3`) behind one function pair, with a size
//!   limit and trailing-byte rejection.
//! - [`frame`]: length-prefixed frames over a Unix stream socket, with file
//!   descriptors attached through `SCM_RIGHTS`.
//! - [`channel`]: a typed, blocking channel built on frames.
//! - [`envelope`]: the request/reply/event envelope every channel uses, and
//!   the flat error that crosses process boundaries.
//! - [`handshake`]: the protocol-version handshake a worker performs when it
//!   connects.
//! - [`worker`]: the worker side of start-up (control fd from the command
//!   line, parent-death signal, handshake).
//! - [`escape`] (feature `test-hooks`): the escape-attempt messages of the
//!   sandbox tests (the sandbox itself is the `sandbox` crate).
//! - [`bitmaps`]: dirty-bitmap requests (inside the block channel's enums).
//! - [`scsi`]: vhost-user-scsi exports, media and trays (inside the block
//!   channel's enums).
//! - [`ratelimit`]: rate-limited logging of guest-triggered conditions.
//! - [`trace`]: trace points (declared once per process), their state and
//!   the trace messages every channel carries.
//! - [`vmstate`]: the versioned VM-state file (header, sections, CRC-32C).
//! - [`migstream`]: the live-migration stream (RAM layout, pages, device
//!   state) and its checked reader.
//! - [`vcpu`], [`block`], [`net`]: one module per channel, each with its own
//!   request, reply and event enums (one channel per capability).

pub mod bitmaps;
pub mod block;
pub mod block_jobs;
pub mod channel;
pub mod codec;
pub mod cpu_topology;
pub mod envelope;
#[cfg(feature = "test-hooks")]
pub mod escape;
pub mod frame;
pub mod handshake;
pub mod logging;
pub mod migration;
pub mod migstream;
pub mod net;
pub mod ratelimit;
pub mod rocker;
pub mod scsi;
pub mod snapshots;
pub mod trace;
pub mod vcpu;
pub mod vmstate;
pub mod worker;

pub use channel::{Channel, ChannelError};
pub use envelope::{BrokerMsg, ErrorClass, FlatError, WorkerMsg};
pub use handshake::{WorkerKind, PROTOCOL_VERSION};
