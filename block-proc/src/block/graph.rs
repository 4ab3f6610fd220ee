//! The named node graph: `blockdev-add` (with inline children), node-name
//! uniqueness, reference counting, `blockdev-del` and the queries. Error
//! messages are QEMU's, word for word.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;

use ipc_proto::block::{
    BlockdevOptions, BlockdevRef, DetectZeroes, DiscardMode, NodeInfo, NodeStats,
};

use super::aio::Engine;
use super::file::FileDriver;
use super::null::NullDriver;
use super::qcow2::{BackingSource, Qcow2Driver, Qcow2Error};
use super::raw::{check_window, RawDriver};
use super::{Driver, Node};

/// Errors of graph operations; `Display` is QEMU's `desc`.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// `node-name` already taken.
    #[error("Duplicate nodes with node-name='{0}'")]
    Duplicate(String),
    /// A reference names no node.
    #[error("Cannot find device='{0}' nor node-name='{0}'")]
    NoSuchRef(String),
    /// `blockdev-del` of an unknown node.
    #[error("Failed to find node with node-name='{0}'")]
    NotFound(String),
    /// The node has parents.
    #[error("Block device {0} is in use")]
    InUse(String),
    /// The file could not be used.
    #[error("Could not open '{filename}': {reason}")]
    Open {
        /// File name.
        filename: String,
        /// strerror text.
        reason: String,
    },
    /// Files the broker must open and pass before the node can be added.
    #[error("missing files: {0:?}")]
    NeedFiles(Vec<String>),
    /// Any other option error (QEMU wording where one exists).
    #[error("{0}")]
    Invalid(String),
    /// A quorum option or `x-blockdev-change` was refused.
    #[error(transparent)]
    Quorum(#[from] super::quorum::QuorumError),
}

/// Result of graph operations.
pub type Result<T> = std::result::Result<T, GraphError>;

/// strerror text of an io::Error, as QEMU prints it (the C library's
/// wording, without Rust's " (os error N)" suffix).
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match (e.raw_os_error(), s.rfind(" (os error ")) {
        (Some(_), Some(i)) => s[..i].to_string(),
        _ => s,
    }
}

/// The block graph of one block-proc.
#[derive(Default)]
pub struct Graph {
    nodes: BTreeMap<String, Arc<Node>>,
    next_auto: u32,
    /// Where nodes send their events (quorum reports).
    events: Option<std::sync::mpsc::Sender<crate::vhost::export::ExportEvent>>,
}

struct Common {
    read_only: bool,
    discard_unmap: bool,
    detect_zeroes: DetectZeroes,
    direct: bool,
    no_flush: bool,
}

fn common(o: &BlockdevOptions, parent_ro: bool) -> Common {
    macro_rules! c {
        ($x:expr) => {
            Common {
                read_only: parent_ro || $x.read_only.unwrap_or(false),
                discard_unmap: $x.discard == Some(DiscardMode::Unmap),
                detect_zeroes: $x.detect_zeroes.unwrap_or(DetectZeroes::Off),
                direct: $x.cache.and_then(|c| c.direct).unwrap_or(false),
                no_flush: $x.cache.and_then(|c| c.no_flush).unwrap_or(false),
            }
        };
    }
    match o {
        BlockdevOptions::File(x) => c!(x),
        BlockdevOptions::Raw(x) => c!(x),
        BlockdevOptions::Qcow2(x) => c!(x),
        BlockdevOptions::NullCo(x) => c!(x),
        BlockdevOptions::Quorum(x) => c!(x),
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Send node events (quorum reports) to `events`.
    pub fn set_events(
        &mut self,
        events: std::sync::mpsc::Sender<crate::vhost::export::ExportEvent>,
    ) {
        self.events = Some(events);
    }

    /// `x-blockdev-change` (see [`super::quorum::change`]).
    pub fn change_child(
        &mut self,
        parent: &str,
        child: Option<&str>,
        node: Option<&str>,
    ) -> Result<()> {
        let removed = super::quorum::change::change_child(&self.nodes, parent, child, node)?;
        // A removed implicit child nothing else holds goes, as in QEMU.
        if let Some(n) = removed.filter(|n| n.starts_with('#')) {
            if self.nodes.get(&n).is_some_and(|c| !c.in_use()) {
                self.del(&n)?;
            }
        }
        Ok(())
    }

    /// Restores a quorum's child names after a replay.
    pub fn set_child_names(&mut self, parent: &str, names: Vec<String>, next: u32) -> Result<()> {
        let node = self
            .nodes
            .get(parent)
            .ok_or_else(|| GraphError::NotFound(parent.to_string()))?;
        let q = node
            .driver
            .as_quorum()
            .ok_or_else(|| super::quorum::QuorumError::NotQuorum(parent.to_string()))?;
        Ok(q.set_child_names(names, next)?)
    }

    /// Every node, by name.
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.values().cloned().collect()
    }

    /// Look a node up.
    pub fn get(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(name).cloned()
    }

    /// Add a node (and its inline children) from `blockdev-add` options.
    /// `files` holds the fds the broker opened, by file name. On error
    /// nothing is added.
    pub fn add(
        &mut self,
        options: &BlockdevOptions,
        mut files: HashMap<String, File>,
    ) -> Result<String> {
        let Some(name) = options.node_name() else {
            return Err(GraphError::Invalid(
                "An explicit node-name is required for blockdev-add".into(),
            ));
        };
        if self.nodes.contains_key(name) {
            return Err(GraphError::Duplicate(name.to_string()));
        }
        let mut created = Vec::new();
        match self.build(options, false, &mut files, &mut created) {
            Ok(node) => Ok(node.name.clone()),
            Err(e) => {
                for n in created.iter().rev() {
                    if let Some(node) = self.nodes.remove(n) {
                        node.bitmaps.abandon(n);
                        for c in node.driver.children() {
                            if let Some(cn) = self.nodes.get(&c) {
                                cn.release();
                            }
                        }
                    }
                }
                Err(e)
            }
        }
    }

    fn child(
        &mut self,
        r: &Option<BlockdevRef>,
        parent_ro: bool,
        files: &mut HashMap<String, File>,
        created: &mut Vec<String>,
    ) -> Result<Arc<Node>> {
        let node = match r {
            None => {
                return Err(GraphError::Invalid(
                    "A block device must be specified for \"file\"".into(),
                ))
            }
            Some(BlockdevRef::Reference(n)) => self
                .nodes
                .get(n)
                .cloned()
                .ok_or_else(|| GraphError::NoSuchRef(n.clone()))?,
            Some(BlockdevRef::Definition(d)) => self.build(d, parent_ro, files, created)?,
        };
        if !parent_ro && node.read_only {
            return Err(GraphError::Invalid(format!(
                "Block node is read-only: '{}' cannot be used by a writable parent",
                node.name
            )));
        }
        Ok(node)
    }

    fn build(
        &mut self,
        o: &BlockdevOptions,
        parent_ro: bool,
        files: &mut HashMap<String, File>,
        created: &mut Vec<String>,
    ) -> Result<Arc<Node>> {
        let name = match o.node_name() {
            Some(n) => {
                if self.nodes.contains_key(n) {
                    return Err(GraphError::Duplicate(n.to_string()));
                }
                n.to_string()
            }
            None => {
                self.next_auto += 1;
                format!("#block{:03}", self.next_auto)
            }
        };
        let c = common(o, parent_ro);
        let (mut image_bitmaps, mut lower) = (None, None);
        let driver: Box<dyn Driver> = match o {
            BlockdevOptions::File(f) => {
                let file = files.remove(&f.filename).ok_or_else(|| GraphError::Open {
                    filename: f.filename.clone(),
                    reason: "No such file or directory".into(),
                })?;
                let engine = Engine::resolve(f.aio, c.direct)
                    .map_err(|e| GraphError::Invalid(e.to_string()))?;
                let d = FileDriver::new(file, f.filename.clone(), c.direct).map_err(|e| {
                    GraphError::Open {
                        filename: f.filename.clone(),
                        reason: strerror(&e),
                    }
                })?;
                Box::new(d.with_engine(engine))
            }
            BlockdevOptions::Raw(r) => {
                let child = self.child(&r.file, c.read_only, files, created)?;
                let size = check_window(r.offset.unwrap_or(0), r.size, child.size())
                    .map_err(GraphError::Invalid)?;
                child.acquire();
                lower = Some((child.clone(), Some(r.offset.unwrap_or(0))));
                Box::new(RawDriver::new(
                    child,
                    r.offset.unwrap_or(0),
                    size,
                    r.size.is_some(),
                ))
            }
            BlockdevOptions::Qcow2(q) => {
                let child = self.child(&q.file, c.read_only, files, created)?;
                if child
                    .driver
                    .aio()
                    .is_some_and(|a| a.engine == Engine::IoUring)
                {
                    tracing::info!(
                        "qcow2 node '{name}': image I/O runs on the thread pool (the qcow2 driver is synchronous); io_uring serves raw and file exports"
                    );
                }
                let (file, fname, direct) = {
                    let info = child.driver.image_info();
                    let fd = dup_child_file(&child)?;
                    (fd, info.filename, child.cache_direct)
                };
                let backing = match &q.backing {
                    None => BackingSource::Header,
                    Some(None) => BackingSource::None,
                    Some(Some(BlockdevRef::Definition(d))) => BackingSource::Inline(d),
                    Some(Some(BlockdevRef::Reference(_))) => {
                        return Err(GraphError::Invalid(
                            "Backing nodes given by reference are not supported; define the backing image inline".into(),
                        ))
                    }
                };
                let mut bitmap_dir = crate::bitmaps::qcow2_ext::ImageDir::read(
                    dup_child_file(&child)?,
                    !c.read_only,
                )
                .map_err(|e| GraphError::Invalid(format!("Could not open '{fname}': {e}")))?;
                let d = Qcow2Driver::open(
                    child.clone(),
                    file,
                    &fname,
                    !c.read_only,
                    direct,
                    backing,
                    files,
                )
                .map_err(|e| match e {
                    Qcow2Error::NeedFiles(f) => GraphError::NeedFiles(f),
                    Qcow2Error::Open(m) => GraphError::Invalid(m),
                })?;
                if !c.read_only {
                    bitmap_dir.mark_in_use().map_err(|e| {
                        GraphError::Invalid(format!("Could not open '{fname}': {e}"))
                    })?;
                }
                image_bitmaps = Some(bitmap_dir);
                lower = Some((child.clone(), None));
                child.acquire();
                Box::new(d)
            }
            BlockdevOptions::Quorum(q) => {
                let cfg = super::quorum::Config::check(q)?;
                let mut kids = Vec::with_capacity(q.children.len());
                for r in &q.children {
                    kids.push(self.child(&Some(r.clone()), c.read_only, files, created)?);
                }
                if c.read_only && cfg.rewrite_corrupted {
                    // Rewriting needs write access to the children.
                    return Err(super::quorum::QuorumError::ReadOnlyRewrite.into());
                }
                let size = kids.first().map(|k| k.size()).unwrap_or(0);
                if kids.iter().any(|k| k.size() != size) {
                    // QEMU's quorum_co_getlength: children of different
                    // sizes make the length an I/O error.
                    return Err(super::quorum::QuorumError::SizesDiffer.into());
                }
                for k in &kids {
                    k.acquire();
                }
                Box::new(super::quorum::QuorumDriver::new(
                    name.clone(),
                    q,
                    cfg,
                    kids,
                    size,
                    self.events.clone(),
                ))
            }
            BlockdevOptions::NullCo(n) => Box::new(
                NullDriver::new(n.size.unwrap_or(NullDriver::DEFAULT_SIZE))
                    .with_latency_ns(n.latency_ns.unwrap_or(0)),
            ),
        };
        let mut node = Node::new(name.clone(), driver, c.read_only);
        node.discard_unmap = c.discard_unmap;
        node.detect_zeroes = c.detect_zeroes;
        node.cache_direct = c.direct;
        node.cache_no_flush = c.no_flush;
        if let Some(d) = image_bitmaps {
            node.bitmaps.set_image(d);
        }
        if let Some((child, shift)) = lower {
            node.bitmaps.set_lower(child, shift);
        }
        let node = Arc::new(node);
        self.nodes.insert(name.clone(), node.clone());
        created.push(name);
        Ok(node)
    }

    /// `blockdev-del`: remove a node nothing uses, and its implicit
    /// (auto-named) children that become unused.
    pub fn del(&mut self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| GraphError::NotFound(name.to_string()))?;
        if node.in_use() {
            return Err(GraphError::InUse(name.to_string()));
        }
        node.bitmaps.store(name);
        self.nodes.remove(name);
        for c in node.driver.children() {
            if let Some(cn) = self.nodes.get(&c).cloned() {
                cn.release();
                if c.starts_with('#') && !cn.in_use() {
                    self.del(&c)?;
                }
            }
        }
        Ok(())
    }

    /// `query-named-block-nodes`.
    pub fn query_nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| {
                let image = n.driver.image_info();
                NodeInfo {
                    node_name: n.name.clone(),
                    drv: n.driver.drv().to_string(),
                    ro: n.read_only,
                    file: image.filename.clone(),
                    backing_file: image.backing_filename.clone(),
                    backing_file_depth: u32::from(image.backing_filename.is_some()),
                    detect_zeroes: n.detect_zeroes.as_str().to_string(),
                    cache_direct: n.cache_direct,
                    cache_no_flush: n.cache_no_flush,
                    image,
                    in_use: n.in_use(),
                    // A quorum's children are `children.N`, not `file`.
                    file_child: match n.driver.as_quorum() {
                        Some(_) => None,
                        None => n.driver.children().into_iter().next(),
                    },
                    snapshots: crate::snapshots::list(n),
                }
            })
            .collect()
    }

    /// `query-blockstats` for every node.
    pub fn query_stats(&self) -> Vec<NodeStats> {
        self.nodes
            .values()
            .map(|n| NodeStats {
                node_name: n.name.clone(),
                wr_highest_offset: n.stats.wr_highest_offset(),
                stats: n.stats.snapshot(),
            })
            .collect()
    }
}

fn dup_child_file(child: &Node) -> Result<File> {
    let info = child.driver.image_info();
    let fd = child.driver.as_file().ok_or_else(|| {
        GraphError::Invalid(format!(
            "'{}' must be a file node to hold an image",
            child.name
        ))
    })?;
    fd.try_clone().map_err(|e| GraphError::Open {
        filename: info.filename,
        reason: strerror(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_uses_the_c_library_wording() {
        let e = std::io::Error::from_raw_os_error(libc::EBADF);
        assert_eq!(strerror(&e), "Bad file descriptor");
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(strerror(&e), "No such file or directory");
    }
}
