//! qcow2 internal snapshots on the broker ↔ block-proc channel (carried
//! inside [`crate::block::BlockRequest::Snapshot`] and
//! [`crate::block::BlockReply::Snapshot`]).
//!
//! The snapshots live in the image file itself (its snapshot table), so a
//! restarted block-proc finds them there: the broker keeps no state for
//! them and replays nothing.

use serde::{Deserialize, Serialize};

/// One internal snapshot as QEMU's `SnapshotInfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Unique id (decimal, chosen by the image's writer).
    pub id: String,
    /// Name (may be empty in images other tools wrote).
    pub name: String,
    /// Size of the saved VM state (0: disk only).
    pub vm_state_size: u64,
    /// Wall-clock time of creation, seconds.
    pub date_sec: u32,
    /// Wall-clock time of creation, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count at creation, when recorded (`None`: -1 or
    /// absent, which QEMU omits).
    pub icount: Option<u64>,
}

/// Snapshot requests (the broker has resolved `device` to `node`, checked
/// it is a root node and not busy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRequest {
    /// `blockdev-snapshot-internal-sync`.
    Create {
        /// Node name.
        node: String,
        /// `device` as the client gave it (for QEMU's messages).
        device: String,
        /// Snapshot name.
        name: String,
        /// Wall-clock time of the request, seconds and nanoseconds.
        date: (u32, u32),
        /// Guest clock, nanoseconds.
        vm_clock_nsec: u64,
    },
    /// `blockdev-snapshot-delete-internal-sync` (at least one of `id`
    /// and `name`).
    Delete {
        /// Node name.
        node: String,
        /// `device` as the client gave it.
        device: String,
        /// Snapshot id.
        id: Option<String>,
        /// Snapshot name.
        name: Option<String>,
    },
}

/// Replies to [`SnapshotRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotReply {
    /// The snapshot was created.
    Created,
    /// The snapshot that was deleted.
    Deleted(SnapshotInfo),
}
