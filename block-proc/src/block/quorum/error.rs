//! The quorum module's errors; `Display` is QEMU's message where QEMU has
//! one (`quorum_open`, `quorum_add_child`, `quorum_del_child`,
//! `bdrv_add_child`, `bdrv_del_child`, `qmp_x_blockdev_change`).

/// Why a quorum option or an `x-blockdev-change` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// No `vote-threshold`.
    #[error("Parameter 'vote-threshold' is missing")]
    ThresholdMissing,
    /// An empty `children`.
    #[error("Number of provided children must be 1 or more")]
    NoChildren,
    /// `vote-threshold` below 1.
    #[error("Parameter 'vote-threshold' expects a value >= 1")]
    ThresholdTooLow,
    /// `vote-threshold` above the number of children.
    #[error("threshold may not exceed children count")]
    ThresholdTooHigh,
    /// `blkverify` without exactly two children and threshold 2.
    #[error("blkverify=on can only be set if there are exactly two files and vote-threshold is 2")]
    BlkverifyShape,
    /// `rewrite-corrupted` with `blkverify`.
    #[error("rewrite-corrupted=on cannot be used with blkverify=on")]
    RewriteWithBlkverify,
    /// `rewrite-corrupted` with `read-pattern=fifo` (QEMU ignores it).
    #[error("rewrite-corrupted=on cannot be used with read-pattern=fifo (fifo reads never vote)")]
    RewriteWithFifo,
    /// `blkverify` with `read-pattern=fifo` (QEMU ignores it).
    #[error("blkverify=on cannot be used with read-pattern=fifo (fifo reads never compare)")]
    BlkverifyWithFifo,
    /// Children of different sizes.
    #[error("Could not refresh total sector count: Input/output error")]
    SizesDiffer,
    /// `rewrite-corrupted` on a read-only quorum.
    #[error("Block node is read-only")]
    ReadOnlyRewrite,
    /// Both `child` and `node`.
    #[error("The parameters child and node are in conflict")]
    ChildAndNode,
    /// Neither `child` nor `node`.
    #[error("Either child or node must be specified")]
    NeitherChildNorNode,
    /// `parent` names no node.
    #[error("Cannot find device='{0}' nor node-name='{0}'")]
    NoParent(String),
    /// `child` names no child of `parent`.
    #[error("Node '{parent}' does not have child '{child}'")]
    NoSuchChild {
        /// The parent node.
        parent: String,
        /// The child name.
        child: String,
    },
    /// `node` names no node.
    #[error("Node '{0}' not found")]
    NoNode(String),
    /// The driver of `parent` cannot add children.
    #[error("The node {0} does not support adding a child")]
    CannotAdd(String),
    /// The driver of `parent` cannot remove children.
    #[error("The node {0} does not support removing a child")]
    CannotRemove(String),
    /// `node` already has a parent (a node or an export).
    #[error("The node {0} already has a parent")]
    HasParent(String),
    /// A quorum in blkverify mode.
    #[error("Cannot add a child to a quorum in blkverify mode")]
    BlkverifyAdd,
    /// `node` is `parent` or above it.
    #[error("Making '{node}' a {child} child of '{parent}' would create a cycle")]
    Cycle {
        /// The node to add.
        node: String,
        /// The name it would get.
        child: String,
        /// The quorum.
        parent: String,
    },
    /// A removal would leave fewer children than the threshold.
    #[error("The number of children cannot be lower than the vote threshold {0}")]
    BelowThreshold(usize),
    /// No more child names.
    #[error("Too many children")]
    TooMany,
    /// A read-only node under a writable quorum.
    #[error("Block node is read-only: '{0}' cannot be used by a writable parent")]
    ReadOnlyChild(String),
    /// A node of another size than the quorum (QEMU takes it and then
    /// fails every length query).
    #[error("Cannot add '{node}' to quorum '{quorum}': its size ({size}) differs from the quorum's ({expected})")]
    ChildSize {
        /// The node to add.
        node: String,
        /// The quorum.
        quorum: String,
        /// The node's size.
        size: u64,
        /// The quorum's size.
        expected: u64,
    },
    /// A replay's names do not match the quorum's children.
    #[error("quorum '{quorum}' has {has} children, not {given}")]
    NamesMismatch {
        /// The quorum.
        quorum: String,
        /// Its children.
        has: usize,
        /// The names given.
        given: usize,
    },
    /// `SetChildNames` for a node that is not a quorum.
    #[error("'{0}' is not a quorum node")]
    NotQuorum(String),
}
