//! Block jobs on the broker ↔ block-proc channel. The broker keeps each
//! job's desired state (QEMU's job status machine, parameters, progress
//! checkpoints); block-proc moves the data and reports progress, readiness,
//! errors and the end of its work. After a block-proc restart the broker
//! starts every unfinished job again with [`Resume`] from its last
//! checkpoint.

use serde::{Deserialize, Serialize};

/// QEMU's `BlockdevOnError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail the job.
    Report,
    /// Skip the error and go on.
    Ignore,
    /// Pause the job until it is resumed.
    Stop,
    /// Stop on ENOSPC, report anything else.
    Enospc,
}

/// QEMU's `MirrorSyncMode` (the modes `blockdev-mirror` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorSync {
    /// The whole disk.
    Full,
    /// What the source's top image holds.
    Top,
    /// Only what the guest writes from now on.
    None,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// `block-stream` into qcow2 node `node`.
    Stream {
        /// The top node.
        node: String,
        /// The base image (a path of the chain as the broker resolved it);
        /// none: the whole chain is copied.
        base: Option<String>,
        /// The name written into the header for `base` (`backing-file`).
        backing_file: Option<String>,
        /// `base`'s format.
        base_format: Option<String>,
    },
    /// `blockdev-mirror` from `source` to `target`.
    Mirror {
        /// The device's node.
        source: String,
        /// The target node.
        target: String,
        /// Sync mode.
        sync: MirrorSync,
        /// Dirty tracking granularity in bytes.
        granularity: u64,
        /// Copy buffer size in bytes.
        buf_size: u64,
        /// A child of the quorum `source` the target takes the place of
        /// at completion (`replaces`); none: the source itself.
        replaces: Option<String>,
    },
}

/// Where a restarted job picks up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The last progress checkpoint (bytes of the first pass done).
    pub offset: u64,
    /// The mirror had been ready.
    pub ready: bool,
    /// `block-job-complete` had been given.
    pub completing: bool,
    /// Paused (by the user or an error).
    pub paused: bool,
}

/// A job as block-proc runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job id.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// Bytes per second, 0: unlimited.
    pub speed: u64,
    /// On a read error (of the source).
    pub on_source_error: OnError,
    /// On a write error (of the target).
    pub on_target_error: OnError,
    /// Set when the broker restarts the job after a block-proc restart.
    pub resume: Option<Resume>,
}

/// A control verb for a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOp {
    /// Pause at the next chunk.
    Pause,
    /// Resume.
    Resume,
    /// New speed limit.
    SetSpeed(u64),
    /// Stop copying; `force` or a job that is not ready: the job ends
    /// cancelled.
    Cancel {
        /// `force`.
        force: bool,
    },
    /// A ready mirror: finish the last copies, then end.
    Complete,
    /// After the job's work ended: apply its graph change (stream: the
    /// backing link; mirror: the pivot) when `commit`, then drop the job.
    Finalize {
        /// Apply (false: a cancelled or failed job, only dropped).
        commit: bool,
    },
}

/// What block-proc reports about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    /// Progress (also the checkpoint the broker keeps).
    Progress {
        /// Job id.
        id: String,
        /// Bytes done.
        offset: u64,
        /// Bytes to do in all.
        len: u64,
        /// First-pass position to resume from after a restart.
        checkpoint: u64,
    },
    /// A mirror is in sync.
    Ready {
        /// Job id.
        id: String,
    },
    /// An I/O error, handled by the job's `on-error` action.
    Error {
        /// Job id.
        id: String,
        /// `read` or `write`.
        operation: String,
        /// `report`, `ignore` or `stop`.
        action: String,
        /// ENOSPC.
        nospace: bool,
    },
    /// The job's work ended (it waits for [`JobOp::Finalize`]).
    Finished {
        /// Job id.
        id: String,
        /// Why it failed, if it did.
        error: Option<String>,
        /// Ended by a cancel (not a completion).
        cancelled: bool,
    },
}
