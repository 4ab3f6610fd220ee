//! The broker ↔ block-proc channel: block node options in QEMU's
//! `BlockdevOptions` shape, and the request, reply and event enums.
//!
//! [`BlockdevOptions`] deserialises from QEMU's `blockdev-add` JSON exactly
//! (`{"driver":"qcow2","node-name":"disk0","file":{"driver":"file",...}}` or
//! `"file":"existing-node"`), with unknown members rejected, and it also
//! travels over the bincode channel. Both work from one set of types: when
//! the (de)serialiser is human-readable (JSON), the enums use QEMU's
//! internally tagged (`driver`) and untagged (`BlockdevRef`) forms; on the
//! binary wire they use serde's externally tagged form, which bincode can
//! decode.
//!
//! Files: block-proc never opens a path. For every `file` node the broker
//! opens `filename` itself (with `O_DIRECT` when `cache.direct` is true,
//! read-only when the node is read-only) and passes the fd with
//! [`BlockRequest::AddNode`], listed in [`FileFd`] by the same filename. A
//! qcow2 image's backing chain is read from the image headers by the broker
//! itself, opened read-only (under the broker's open policy) and passed
//! with the same first `AddNode`, each file under its resolved name. If
//! block-proc still finds a backing file it has no fd for (the header
//! changed since the broker read it), it answers [`BlockReply::NeedFiles`];
//! the broker never opens a name it did not read itself, so it refuses the
//! request, logs it and fails the `blockdev-add`: a compromised block-proc
//! cannot make the broker open a file for it.
//!
//! Exports: [`BlockRequest::AddExport`] creates an export with no socket at
//! all; nothing can connect to it. Each frontend connection is one end of
//! a socketpair the broker creates: it passes one end (fd 0) with
//! [`BlockRequest::AttachExportConnection`] and the other to the frontend
//! (vcpu-proc). block-proc serves one connection of an export at a time;
//! a connection attached while another is served waits until that one
//! ends (an older waiting one is dropped). So no other local process can
//! reach an export, and no listener exists to take over.
//!
//! Restart: a killed block-proc holds no state worth saving. The broker
//! starts a new one and replays, in creation order, every `AddNode` it
//! recorded (with its files, re-passed) and every `AddExport`, then hands
//! every device a fresh socketpair.
//! The frontend (vcpu-proc) then reconnects and re-sends features, memory
//! table, the inflight region it got once from GET_INFLIGHT_FD (via
//! SET_INFLIGHT_FD, before the rings) and the rings; block-proc resubmits
//! the requests the region shows unfinished. On a virtio device reset the
//! frontend must drop that region and get a fresh one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How discard requests are handled (QEMU `BlockdevDiscardOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscardMode {
    /// Ignore discard requests.
    Ignore,
    /// Pass discard requests down.
    Unmap,
}

/// Zero-write detection (QEMU `BlockdevDetectZeroesOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectZeroes {
    /// No detection.
    Off,
    /// Detect and write zeroes efficiently.
    On,
    /// Detect and unmap when discard is `unmap`.
    Unmap,
}

impl DetectZeroes {
    /// QEMU's name of the mode, as `query-named-block-nodes` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectZeroes::Off => "off",
            DetectZeroes::On => "on",
            DetectZeroes::Unmap => "unmap",
        }
    }
}

/// The `file` driver's I/O engine (QEMU `BlockdevAioOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockdevAio {
    /// A pool of threads doing blocking `preadv`/`pwritev`.
    #[serde(rename = "threads")]
    Threads,
    /// Linux AIO (`io_submit`); QEMU requires `cache.direct=on` for it.
    #[serde(rename = "native")]
    Native,
    /// One io_uring per queue.
    #[serde(rename = "io_uring")]
    IoUring,
}

impl BlockdevAio {
    /// QEMU's name of the engine.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockdevAio::Threads => "threads",
            BlockdevAio::Native => "native",
            BlockdevAio::IoUring => "io_uring",
        }
    }
}

/// QEMU's `OnOffAuto` (the `file` driver's `locking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnOffAuto {
    /// On.
    On,
    /// Off.
    Off,
    /// Decided by the implementation (for `locking`: on).
    Auto,
}

/// Cache options (QEMU `BlockdevCacheOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheOptions {
    /// Bypass the host page cache (`O_DIRECT`).
    #[serde(default)]
    pub direct: Option<bool>,
    /// Ignore flush requests.
    #[serde(default)]
    pub no_flush: Option<bool>,
}

/// Declares a driver's option struct with QEMU's common `BlockdevOptions`
/// members followed by the driver's own.
macro_rules! driver_options {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $name {
            /// Node name (`node-name`).
            #[serde(default)]
            pub node_name: Option<String>,
            /// Discard handling.
            #[serde(default)]
            pub discard: Option<DiscardMode>,
            /// Cache options.
            #[serde(default)]
            pub cache: Option<CacheOptions>,
            /// Open read-only.
            #[serde(default)]
            pub read_only: Option<bool>,
            /// Fall back to read-only if read-write is refused.
            #[serde(default)]
            pub auto_read_only: Option<bool>,
            /// Do not take image locks.
            #[serde(default)]
            pub force_share: Option<bool>,
            /// Zero-write detection.
            #[serde(default)]
            pub detect_zeroes: Option<DetectZeroes>,
            $($(#[$fdoc])* #[serde(default)] pub $field: $ty,)*
        }
    };
}

driver_options!(
    /// Options of the `file` driver (QEMU `BlockdevOptionsFile`).
    FileOptions {
        /// Path of the file; the broker opens it and passes the fd.
        filename: String,
        /// Image locking: QEMU's OFD lock bytes, taken by the broker on
        /// the fd it opens (`auto`, the default, and `on` take them; `off`
        /// does not).
        locking: Option<OnOffAuto>,
        /// I/O engine (`threads`, `native`, `io_uring`); none: io_uring
        /// with `cache.direct=on` when the host has it, else threads.
        aio: Option<BlockdevAio>,
    }
);

driver_options!(
    /// Options of the `raw` driver (QEMU `BlockdevOptionsRaw`).
    RawOptions {
        /// The protocol node below.
        file: Option<BlockdevRef>,
        /// Byte offset of the exposed window.
        offset: Option<u64>,
        /// Byte size of the exposed window.
        size: Option<u64>,
    }
);

driver_options!(
    /// Options of the `qcow2` driver (QEMU `BlockdevOptionsQcow2`).
    Qcow2Options {
        /// The protocol node holding the image.
        file: Option<BlockdevRef>,
        /// Backing image: absent = from the image header, `null` = none.
        backing: Option<Option<BlockdevRef>>,
        /// Accepted and ignored.
        lazy_refcounts: Option<bool>,
        /// Accepted and ignored.
        pass_discard_request: Option<bool>,
        /// Accepted and ignored.
        cache_size: Option<u64>,
    }
);

driver_options!(
    /// Options of the `null-co` driver (QEMU `BlockdevOptionsNull`).
    NullOptions {
        /// Virtual size in bytes (QEMU default 1 GiB).
        size: Option<u64>,
        /// Time every read and write takes, in ns.
        latency_ns: Option<u64>,
        /// Reads return zeroes (always the case here).
        read_zeroes: Option<bool>,
    }
);

/// How a quorum reads (QEMU `QuorumReadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuorumReadPattern {
    /// Read every child and vote on the content.
    Quorum,
    /// Read the children in order; the first that succeeds answers.
    Fifo,
}

driver_options!(
    /// Options of the `quorum` driver (QEMU `BlockdevOptionsQuorum`).
    QuorumOptions {
        /// The children, by reference or inline definition.
        children: Vec<BlockdevRef>,
        /// Children that must agree for a read (or succeed for a write).
        vote_threshold: Option<i64>,
        /// Two children compared on every read (threshold 2).
        blkverify: Option<bool>,
        /// Rewrite the children outvoted on a read.
        rewrite_corrupted: Option<bool>,
        /// `quorum` (default) or `fifo`.
        read_pattern: Option<QuorumReadPattern>,
    }
);

/// Options of one block node (QEMU `BlockdevOptions`, union on `driver`).
#[derive(Debug, Clone, PartialEq)]
pub enum BlockdevOptions {
    /// `file`.
    File(FileOptions),
    /// `raw`.
    Raw(RawOptions),
    /// `qcow2`.
    Qcow2(Qcow2Options),
    /// `null-co`.
    NullCo(NullOptions),
    /// `quorum`.
    Quorum(QuorumOptions),
}

/// A child node: defined inline or referenced by node name (QEMU
/// `BlockdevRef`).
#[derive(Debug, Clone, PartialEq)]
pub enum BlockdevRef {
    /// An inline definition.
    Definition(Box<BlockdevOptions>),
    /// The node name of an existing node.
    Reference(String),
}

/// JSON form: internally tagged on `driver`, kebab-case driver names.
#[derive(Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "kebab-case")]
enum JsonOptions {
    File(FileOptions),
    Raw(RawOptions),
    Qcow2(Qcow2Options),
    NullCo(NullOptions),
    Quorum(QuorumOptions),
}

/// Binary form: externally tagged.
#[derive(Serialize, Deserialize)]
enum WireOptions {
    File(FileOptions),
    Raw(RawOptions),
    Qcow2(Qcow2Options),
    NullCo(NullOptions),
    Quorum(QuorumOptions),
}

impl BlockdevOptions {
    /// The `node-name` member.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            BlockdevOptions::File(o) => o.node_name.as_deref(),
            BlockdevOptions::Raw(o) => o.node_name.as_deref(),
            BlockdevOptions::Qcow2(o) => o.node_name.as_deref(),
            BlockdevOptions::NullCo(o) => o.node_name.as_deref(),
            BlockdevOptions::Quorum(o) => o.node_name.as_deref(),
        }
    }

    /// QEMU's driver name.
    pub fn driver(&self) -> &'static str {
        match self {
            BlockdevOptions::File(_) => "file",
            BlockdevOptions::Raw(_) => "raw",
            BlockdevOptions::Qcow2(_) => "qcow2",
            BlockdevOptions::NullCo(_) => "null-co",
            BlockdevOptions::Quorum(_) => "quorum",
        }
    }

    /// Every `filename` of `file` nodes defined in this tree (the files the
    /// broker must open and pass with [`BlockRequest::AddNode`]).
    pub fn filenames(&self) -> Vec<(String, bool, bool)> {
        let mut out = Vec::new();
        self.collect_files(false, &mut out);
        out
    }

    fn collect_files(&self, parent_ro: bool, out: &mut Vec<(String, bool, bool)>) {
        let child = |r: &Option<BlockdevRef>, ro: bool, out: &mut Vec<(String, bool, bool)>| {
            if let Some(BlockdevRef::Definition(d)) = r {
                d.collect_files(ro, out);
            }
        };
        match self {
            BlockdevOptions::File(o) => out.push((
                o.filename.clone(),
                parent_ro || o.read_only.unwrap_or(false),
                o.cache.and_then(|c| c.direct).unwrap_or(false),
            )),
            BlockdevOptions::Raw(o) => {
                child(&o.file, parent_ro || o.read_only.unwrap_or(false), out)
            }
            BlockdevOptions::Qcow2(o) => {
                let ro = parent_ro || o.read_only.unwrap_or(false);
                child(&o.file, ro, out);
                if let Some(Some(b)) = &o.backing {
                    child(&Some(b.clone()), true, out);
                }
            }
            BlockdevOptions::NullCo(_) => {}
            BlockdevOptions::Quorum(o) => {
                let ro = parent_ro || o.read_only.unwrap_or(false);
                for c in &o.children {
                    child(&Some(c.clone()), ro, out);
                }
            }
        }
    }
}

impl From<JsonOptions> for BlockdevOptions {
    fn from(o: JsonOptions) -> Self {
        match o {
            JsonOptions::File(o) => BlockdevOptions::File(o),
            JsonOptions::Raw(o) => BlockdevOptions::Raw(o),
            JsonOptions::Qcow2(o) => BlockdevOptions::Qcow2(o),
            JsonOptions::NullCo(o) => BlockdevOptions::NullCo(o),
            JsonOptions::Quorum(o) => BlockdevOptions::Quorum(o),
        }
    }
}

impl From<WireOptions> for BlockdevOptions {
    fn from(o: WireOptions) -> Self {
        match o {
            WireOptions::File(o) => BlockdevOptions::File(o),
            WireOptions::Raw(o) => BlockdevOptions::Raw(o),
            WireOptions::Qcow2(o) => BlockdevOptions::Qcow2(o),
            WireOptions::NullCo(o) => BlockdevOptions::NullCo(o),
            WireOptions::Quorum(o) => BlockdevOptions::Quorum(o),
        }
    }
}

impl Serialize for BlockdevOptions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        match (self.clone(), human) {
            (BlockdevOptions::File(o), true) => JsonOptions::File(o).serialize(s),
            (BlockdevOptions::Raw(o), true) => JsonOptions::Raw(o).serialize(s),
            (BlockdevOptions::Qcow2(o), true) => JsonOptions::Qcow2(o).serialize(s),
            (BlockdevOptions::NullCo(o), true) => JsonOptions::NullCo(o).serialize(s),
            (BlockdevOptions::Quorum(o), true) => JsonOptions::Quorum(o).serialize(s),
            (BlockdevOptions::File(o), false) => WireOptions::File(o).serialize(s),
            (BlockdevOptions::Raw(o), false) => WireOptions::Raw(o).serialize(s),
            (BlockdevOptions::Qcow2(o), false) => WireOptions::Qcow2(o).serialize(s),
            (BlockdevOptions::NullCo(o), false) => WireOptions::NullCo(o).serialize(s),
            (BlockdevOptions::Quorum(o), false) => WireOptions::Quorum(o).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BlockdevOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            JsonOptions::deserialize(d).map(Into::into)
        } else {
            WireOptions::deserialize(d).map(Into::into)
        }
    }
}

/// JSON form of a reference: a node name or a definition.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JsonRef {
    Reference(String),
    Definition(Box<BlockdevOptions>),
}

/// Binary form of a reference.
#[derive(Serialize, Deserialize)]
enum WireRef {
    Reference(String),
    Definition(Box<BlockdevOptions>),
}

impl Serialize for BlockdevRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.clone(), s.is_human_readable()) {
            (BlockdevRef::Reference(n), true) => JsonRef::Reference(n).serialize(s),
            (BlockdevRef::Definition(d), true) => JsonRef::Definition(d).serialize(s),
            (BlockdevRef::Reference(n), false) => WireRef::Reference(n).serialize(s),
            (BlockdevRef::Definition(d), false) => WireRef::Definition(d).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BlockdevRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(match JsonRef::deserialize(d)? {
                JsonRef::Reference(n) => BlockdevRef::Reference(n),
                JsonRef::Definition(o) => BlockdevRef::Definition(o),
            })
        } else {
            Ok(match WireRef::deserialize(d)? {
                WireRef::Reference(n) => BlockdevRef::Reference(n),
                WireRef::Definition(o) => BlockdevRef::Definition(o),
            })
        }
    }
}

/// One file the broker opened for a `file` node, matched by `filename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFd {
    /// The `filename` exactly as it appears in the options (or, for backing
    /// files, as resolved against the image's directory).
    pub filename: String,
    /// Index of the fd among the fds attached to the message.
    pub fd_index: u32,
}

/// Requests from the broker to block-proc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlockRequest {
    /// `blockdev-add`: create a node (and its inline children).
    AddNode {
        /// The options as the QMP client gave them.
        options: BlockdevOptions,
        /// The opened files, by filename.
        files: Vec<FileFd>,
    },
    /// `blockdev-del`: remove a node that nothing uses.
    DelNode {
        /// Node name.
        node_name: String,
    },
    /// `query-named-block-nodes`.
    QueryNodes,
    /// `query-blockstats` (per node).
    QueryStats,
    /// The broker's liveness check: answered with [`BlockReply::Done`]
    /// straight from the IPC loop.
    Ping,
    /// Trace points: their states, or the states the broker wants
    /// (with `to_file`, the frame's first fd is the trace file).
    Trace(crate::trace::TraceRequest),
    /// Export a node as a vhost-user-blk device (no fd: connections come
    /// with [`BlockRequest::AttachExportConnection`]).
    AddExport {
        /// Export id.
        id: String,
        /// Node to export.
        node_name: String,
        /// Number of virtqueues.
        num_queues: u16,
        /// Allow writes (the node must be writable too).
        writable: bool,
        /// Serial reported by VIRTIO_BLK_T_GET_ID (at most 20 bytes used).
        serial: String,
        /// Logical block size (512 or 4096).
        logical_block_size: u32,
    },
    /// Remove an export and close its connections.
    DelExport {
        /// Export id.
        id: String,
    },
    /// Serve the connected socket attached as fd 0 (one end of a
    /// socketpair whose other end the broker gives the frontend) as a
    /// frontend connection of export `id`.
    AttachExportConnection {
        /// Export id.
        id: String,
    },
    /// Start a block job (see [`crate::block_jobs`]).
    StartJob(crate::block_jobs::JobSpec),
    /// Control a job block-proc runs.
    JobControl {
        /// Job id.
        id: String,
        /// The verb.
        op: crate::block_jobs::JobOp,
    },
    /// Test hooks only: run an escape attempt inside the sandboxed worker.
    /// Replies [`BlockReply::Done`] if it worked, else the error of
    /// [`crate::escape::Outcome::into_reply`] (or no reply at all:
    /// seccomp kills the worker).
    #[cfg(feature = "test-hooks")]
    TestEscape(crate::escape::Escape),
    /// `block_set_io_throttle`: make export `id` a member of throttle
    /// group `group` and set the group's limits (they apply to every
    /// member); `config: None` takes the export out of its group.
    SetThrottle {
        /// Export id.
        id: String,
        /// Throttle group name.
        group: String,
        /// The group's limits, or None to stop throttling the export.
        config: Option<ThrottleConfig>,
    },
    /// `block-set-write-threshold`: `threshold` 0 disables.
    SetWriteThreshold {
        /// Node name.
        node_name: String,
        /// Offset in bytes on the node.
        threshold: u64,
    },
    /// `block_resize`: set the size of node `node_name` (and of the
    /// file under it); exports show the new capacity at once.
    ResizeNode {
        /// Node name.
        node_name: String,
        /// New size in bytes.
        size: u64,
    },
    /// Dirty bitmaps (`block-dirty-bitmap-*`); attached memory as fd 0.
    Bitmap(crate::bitmaps::BitmapRequest),
    /// Export a virtio-scsi controller as a vhost-user-scsi device.
    AddScsiExport(crate::scsi::ScsiExportSpec),
    /// Change a SCSI drive's medium or tray.
    ScsiMedium {
        /// Export id.
        export_id: String,
        /// The drive's QMP id.
        device_id: String,
        /// The change.
        op: crate::scsi::MediumOp,
    },
    /// `x-blockdev-change`: remove child `child` (`children.N`) of node
    /// `parent`, or add node `node` to it (exactly one of the two).
    ChangeChild {
        /// The parent node.
        parent: String,
        /// The child name to remove.
        child: Option<String>,
        /// The node to add.
        node: Option<String>,
    },
    /// Restore a quorum's child names (`children.N`) and the index of the
    /// next added child, after a replay re-created it with its current
    /// children in order.
    SetChildNames {
        /// The quorum node.
        parent: String,
        /// One name per child, in order.
        names: Vec<String>,
        /// The index the next added child gets.
        next_index: u32,
    },
    /// qcow2 internal snapshots (`blockdev-snapshot-*-internal-sync`).
    Snapshot(crate::snapshots::SnapshotRequest),
    /// Drain and flush every node (a migration's switchover, before the
    /// broker releases the image locks: QEMU's `bdrv_inactivate_all`
    /// flushes first). Replies Done, or the first node's error.
    FlushAll,
}

/// Replies of block-proc to [`BlockRequest`]s (errors travel as the
/// envelope's flat error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlockReply {
    /// The request succeeded and returns nothing.
    Done,
    /// Answer to a `Trace` request: the process's trace points.
    Trace(crate::trace::TraceReply),
    /// `AddNode` needs files it was not given (backing files found in image
    /// headers). The broker has already passed every file of the chain it
    /// read, so it opens nothing for this: it logs the names and fails the
    /// `blockdev-add` with them.
    NeedFiles {
        /// Paths to open, resolved as QEMU would.
        filenames: Vec<String>,
    },
    /// Answer to `QueryNodes`.
    Nodes(Vec<NodeInfo>),
    /// Answer to `QueryStats`.
    Stats(Vec<NodeStats>),
    /// Answer to a [`BlockRequest::Bitmap`].
    Bitmap(crate::bitmaps::BitmapReply),
    /// Answer to a [`BlockRequest::Snapshot`].
    Snapshot(crate::snapshots::SnapshotReply),
}

/// Asynchronous events from block-proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockEvent {
    /// A vhost-user frontend connected to an export.
    ExportConnected {
        /// Export id.
        id: String,
    },
    /// The frontend of an export disconnected.
    ExportDisconnected {
        /// Export id.
        id: String,
    },
    /// An I/O error happened on a node (QEMU `BLOCK_IO_ERROR`).
    IoError {
        /// Node name.
        node_name: String,
        /// `read` or `write` or `flush`.
        operation: String,
        /// errno description.
        reason: String,
    },
    /// A write reached past a node's write threshold, which is now
    /// cleared (QEMU `BLOCK_WRITE_THRESHOLD`).
    WriteThreshold {
        /// Node name.
        node_name: String,
        /// Bytes written past the threshold.
        amount_exceeded: u64,
        /// The threshold that was crossed.
        write_threshold: u64,
    },
    /// A block job's progress, readiness, error or end.
    Job(crate::block_jobs::JobEvent),
    /// The guest changed a SCSI drive's tray or lock.
    Scsi(crate::scsi::ScsiEvent),
    /// A quorum child failed or was outvoted (QEMU `QUORUM_REPORT_BAD`).
    QuorumReportBad(QuorumReportBad),
    /// A quorum could not reach its threshold (QEMU `QUORUM_FAILURE`).
    QuorumFailure {
        /// The quorum's node name.
        reference: String,
        /// First sector of the request.
        sector: u64,
        /// Sectors of the request.
        sectors_count: u64,
    },
}

/// Data of `QUORUM_REPORT_BAD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumReportBad {
    /// `read`, `write` or `flush` (QEMU `QuorumOpType`).
    pub op: String,
    /// strerror text when the child failed (absent: it was outvoted).
    pub error: Option<String>,
    /// The child's node name.
    pub node_name: String,
    /// First sector of the request.
    pub sector: u64,
    /// Sectors of the request.
    pub sectors_count: u64,
}

/// Image information (QEMU `ImageInfo`, the subset bulkhead knows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// File name.
    pub filename: String,
    /// Format (`raw`, `qcow2`, `file`, `null-co`).
    pub format: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Allocated bytes on the host, if known.
    pub actual_size: Option<u64>,
    /// Cluster size (qcow2).
    pub cluster_size: Option<u64>,
    /// Backing file name, if any.
    pub backing_filename: Option<String>,
    /// Backing image, if any.
    pub backing_image: Option<Box<ImageInfo>>,
    /// Driver-specific image data (QEMU `ImageInfoSpecific`).
    pub format_specific: Option<FormatSpecific>,
}

/// One node as `query-named-block-nodes` reports it (QEMU
/// `BlockDeviceInfo`; the throttle members are all zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub node_name: String,
    /// Driver name.
    pub drv: String,
    /// Read-only.
    pub ro: bool,
    /// File name of the node (the image's file name for formats).
    pub file: String,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
    /// Depth of the backing chain.
    pub backing_file_depth: u32,
    /// `off`, `on` or `unmap`.
    pub detect_zeroes: String,
    /// O_DIRECT in use.
    pub cache_direct: bool,
    /// Flushes ignored.
    pub cache_no_flush: bool,
    /// Image description.
    pub image: ImageInfo,
    /// Whether a parent (node or export) holds this node.
    pub in_use: bool,
    /// The node's `file` child (generated names included), if it has one.
    pub file_child: Option<String>,
    /// The image's internal snapshots (a writable qcow2 node's only, as
    /// QEMU lists them).
    pub snapshots: Vec<crate::snapshots::SnapshotInfo>,
}

/// Per-node I/O statistics (QEMU `BlockDeviceStats` subset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStats {
    /// Bytes read.
    pub rd_bytes: u64,
    /// Bytes written.
    pub wr_bytes: u64,
    /// Bytes discarded.
    pub unmap_bytes: u64,
    /// Read operations.
    pub rd_operations: u64,
    /// Write operations.
    pub wr_operations: u64,
    /// Flush operations.
    pub flush_operations: u64,
    /// Discard operations.
    pub unmap_operations: u64,
    /// Time spent reading, ns.
    pub rd_total_time_ns: u64,
    /// Time spent writing, ns.
    pub wr_total_time_ns: u64,
    /// Time spent flushing, ns.
    pub flush_total_time_ns: u64,
    /// Time spent discarding, ns.
    pub unmap_total_time_ns: u64,
    /// Failed reads.
    pub failed_rd_operations: u64,
    /// Failed writes.
    pub failed_wr_operations: u64,
    /// Failed flushes.
    pub failed_flush_operations: u64,
    /// Failed discards.
    pub failed_unmap_operations: u64,
    /// Requests rejected as invalid.
    pub invalid_rd_operations: u64,
    /// Requests rejected as invalid.
    pub invalid_wr_operations: u64,
}

/// Statistics of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node name.
    pub node_name: String,
    /// Highest offset written + 1.
    pub wr_highest_offset: u64,
    /// Counters.
    pub stats: IoStats,
}

/// QEMU's `ImageInfoSpecific`, for the drivers that have one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormatSpecific {
    /// `{"type": "file", "data": {}}`.
    File,
    /// qcow2 header facts.
    Qcow2(Qcow2Specific),
}

/// QEMU's `ImageInfoSpecificQCow2` (what the header says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qcow2Specific {
    /// `0.10` (version 2) or `1.1` (version 3).
    pub compat: String,
    /// Lazy refcounts (version 3 only).
    pub lazy_refcounts: Option<bool>,
    /// Marked corrupt (version 3 only).
    pub corrupt: Option<bool>,
    /// Subclusters (version 3 only).
    pub extended_l2: Option<bool>,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// `zlib` or `zstd`.
    pub compression_type: String,
}

/// One leaky bucket's limits (QEMU `LeakyBucket` configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleBucket {
    /// Sustained rate per second (0: unlimited).
    pub avg: u64,
    /// Burst rate per second (0: none).
    pub max: u64,
    /// Seconds a burst at `max` may last.
    pub burst_length: u64,
}

/// A throttle group's limits: buckets in QEMU's order (bps total, read,
/// write; iops total, read, write) and the I/O size an operation counts
/// as (0: every request is one operation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleConfig {
    /// The six buckets.
    pub buckets: [ThrottleBucket; 6],
    /// `iops_size`.
    pub op_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockdev_options_roundtrip_through_bincode() {
        let opts = BlockdevOptions::Qcow2(Qcow2Options {
            node_name: Some("disk0".into()),
            discard: Some(DiscardMode::Unmap),
            cache: None,
            read_only: Some(false),
            auto_read_only: None,
            force_share: None,
            detect_zeroes: None,
            file: Some(BlockdevRef::Reference("f0".into())),
            backing: Some(None),
            lazy_refcounts: None,
            pass_discard_request: None,
            cache_size: None,
        });
        let req = BlockRequest::AddNode {
            options: opts,
            files: vec![],
        };
        let bytes = bincode::serialize(&req).unwrap();
        let back: BlockRequest = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, req);
    }
}
