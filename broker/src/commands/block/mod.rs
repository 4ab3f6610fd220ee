//! Block-graph commands, with QEMU's semantics and messages. The nodes live
//! in block-proc; the broker validates, opens the files and keeps the desired
//! state ([`crate::machine::block_state`]).
//!
//! - [`options`] — `BlockdevOptions` (blockdev-add's arguments) and their checks.
//! - [`nodes`] — `blockdev-add`, `blockdev-del`, `x-blockdev-del`.
//! - [`info`] — `query-named-block-nodes` and the node/image info types.
//! - [`stats`] — `query-blockstats`.
//! - [`query_block`] — `query-block`.
//! - [`throttle`] — `block_set_io_throttle`, `-drive throttling.*`.
//! - [`write_threshold`] — `block-set-write-threshold`.
//! - [`bitmaps`] — `block-dirty-bitmap-*` and the queries' `dirty-bitmaps`.
//! - [`resize`] — `block_resize`.
//! - [`jobs`] — block-stream, blockdev-mirror, the job verbs and queries.
//! - [`quorum`] — `x-blockdev-change`, `QUORUM_REPORT_BAD`, `QUORUM_FAILURE`.
//! - [`media`] — the tray and medium commands, `eject`, `DEVICE_TRAY_MOVED`.

pub mod bitmaps;
pub mod info;
pub mod jobs;
pub mod media;
pub mod nodes;
pub mod options;
pub mod query_block;
pub mod quorum;
pub mod resize;
pub mod snapshots_internal;
pub mod stats;
pub mod throttle;
pub mod write_threshold;

pub use bitmaps::*;
pub use info::*;
pub use nodes::*;
pub use options::*;
pub use query_block::*;
pub use resize::*;
pub use snapshots_internal::{BlockdevSnapshotDeleteInternalSync, BlockdevSnapshotInternalSync};
pub use stats::*;
pub use throttle::*;
pub use write_threshold::*;
