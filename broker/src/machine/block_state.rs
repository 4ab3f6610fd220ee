//! The desired block state: every node the user created (`blockdev-add`,
//! `-blockdev`, `-drive`) in creation order, with the files the broker
//! opened for it, and every vhost-user export. block-proc never opens a
//! path: the broker opens each `filename` itself (`O_RDONLY` or `O_RDWR`
//! from `read-only`, `O_DIRECT` from `cache.direct`) and passes the fds
//! with [`BlockRequest::AddNode`]. The fds stay open here, so a restarted
//! block-proc is brought back by [`replay`] without reopening anything.
//!
//! The state lives beside the [`Machine`] (a process-wide table keyed by
//! the machine's address) because `Machine` has no field for it yet; see
//! [`state`].

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use ipc_proto::block::{BlockReply, BlockRequest, BlockdevOptions, BlockdevRef, FileFd};
use ipc_proto::FlatError;

use super::{lock, unexpected_reply, BlockLink, Machine};

/// The longest node name QEMU accepts.
const MAX_NODE_NAME: usize = 31;

/// One top-level node as the user created it.
pub struct NodeRecord {
    /// The options exactly as given (inline children included).
    pub options: BlockdevOptions,
    /// Opened files by filename (backing files included).
    files: Vec<(String, OwnedFd)>,
}

/// One vhost-user export: the request that created it (its connections
/// are socketpairs the device helper hands over, fresh after a restart).
pub struct ExportRecord {
    /// The `AddExport` request.
    pub request: BlockRequest,
}

/// The broker's desired block state.
#[derive(Default)]
pub struct BlockState {
    nodes: Vec<NodeRecord>,
    exports: Vec<ExportRecord>,
}

/// The desired block state, shared by the commands and the restart path.
pub type Shared = Arc<Mutex<BlockState>>;

/// The desired block state of `m`.
pub fn state(m: &Machine) -> Shared {
    m.block_state.clone()
}

impl Machine {
    /// Sends `req` with `fds` attached to block-proc and waits for its reply.
    pub fn block_request_with_fds(
        &self,
        req: BlockRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<BlockReply, FlatError> {
        let link = lock(&self.block).as_ref().map(|w| w.link.clone());
        match link {
            Some(l) => l.request(req, fds),
            None => Err(FlatError::generic(
                "the block worker is restarting; try again",
            )),
        }
    }
}

/// Walks `o` and its inline children in creation order (children first),
/// calling `f` on each definition.
pub fn walk_post_order<'a, E>(
    o: &'a BlockdevOptions,
    f: &mut dyn FnMut(&'a BlockdevOptions) -> Result<(), E>,
) -> Result<(), E> {
    let children: [Option<&'a BlockdevRef>; 2] = match o {
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) => [None, None],
        BlockdevOptions::Raw(r) => [r.file.as_ref(), None],
        BlockdevOptions::Qcow2(q) => [q.file.as_ref(), q.backing.as_ref().and_then(Option::as_ref)],
    };
    for c in children.into_iter().flatten() {
        match c {
            BlockdevRef::Definition(d) => walk_post_order(d, f)?,
            BlockdevRef::Reference(_) => {}
        }
    }
    f(o)
}

/// The node name of `o`'s `file` child, when it has a name the broker knows.
pub fn file_child_name(o: &BlockdevOptions) -> Option<&str> {
    let r = match o {
        BlockdevOptions::Raw(r) => r.file.as_ref(),
        BlockdevOptions::Qcow2(q) => q.file.as_ref(),
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) => None,
    }?;
    match r {
        BlockdevRef::Reference(n) => Some(n),
        BlockdevRef::Definition(d) => d.node_name(),
    }
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
pub fn check_node_name(name: &str) -> Result<(), FlatError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err(FlatError::generic(format!("Invalid node-name: '{name}'")));
    }
    if name.len() > MAX_NODE_NAME {
        return Err(FlatError::generic("Node name too long"));
    }
    Ok(())
}

/// QEMU's strerror text for an I/O error.
fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Opens `filename` as QEMU's `file` driver would; a `/dev/fdset/N` name
/// opens a copy of an fd passed with `add-fd` ([`super::fdsets`]).
pub fn open_file(filename: &str, read_only: bool, direct: bool) -> Result<OwnedFd, FlatError> {
    let fail =
        |reason: String| FlatError::generic(format!("Could not open '{filename}': {reason}"));
    let mut o = OpenOptions::new();
    o.read(true).write(!read_only);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = match super::fdsets::FdSets::global().open(filename, read_only, direct) {
        Some(r) => std::fs::File::from(r.map_err(|e| FlatError::generic(e.to_string()))?),
        None => o.open(filename).map_err(|e| fail(strerror(&e)))?,
    };
    let ft = f.metadata().map_err(|e| fail(strerror(&e)))?.file_type();
    if ft.is_dir() {
        return Err(fail("Is a directory".into()));
    }
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(fail("not a regular file or block device".into()));
    }
    Ok(OwnedFd::from(f))
}

impl BlockState {
    /// Every named node, in creation order (inline children before their
    /// parent, as QEMU creates them).
    pub fn node_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.nodes {
            let _ = walk_post_order::<()>(&r.options, &mut |o| {
                out.extend(o.node_name().map(String::from));
                Ok(())
            });
        }
        out
    }

    /// The options of the named node `name` (top-level or inline).
    pub fn find(&self, name: &str) -> Option<&BlockdevOptions> {
        let mut found = None;
        for r in &self.nodes {
            let _ = walk_post_order::<()>(&r.options, &mut |o| {
                if o.node_name() == Some(name) {
                    found = Some(o);
                }
                Ok(())
            });
        }
        found
    }

    /// True if `name` is a node the user created at the top level (the
    /// only kind `blockdev-del` removes).
    pub fn is_top_level(&self, name: &str) -> bool {
        self.nodes
            .iter()
            .any(|r| r.options.node_name() == Some(name))
    }

    /// The top-level records, in creation order.
    pub fn nodes(&self) -> &[NodeRecord] {
        &self.nodes
    }

    /// The exports, in creation order.
    pub fn exports(&self) -> &[ExportRecord] {
        &self.exports
    }

    /// Checks node names (well-formed, unique) and opens the files of a new
    /// tree, in QEMU's order: children first, each node's name before its
    /// file.
    fn prepare(&self, options: &BlockdevOptions) -> Result<Vec<(String, OwnedFd)>, FlatError> {
        let mut taken: HashSet<String> = self.node_names().into_iter().collect();
        // Read-only and O_DIRECT as inherited from the parents.
        let modes: HashMap<String, (bool, bool)> = options
            .filenames()
            .into_iter()
            .map(|(name, ro, direct)| (name, (ro, direct)))
            .collect();
        let mut files: Vec<(String, OwnedFd)> = Vec::new();
        walk_post_order(options, &mut |o| {
            if let Some(n) = o.node_name() {
                check_node_name(n)?;
                if !taken.insert(n.to_owned()) {
                    return Err(FlatError::generic(format!(
                        "Duplicate nodes with node-name='{n}'"
                    )));
                }
            }
            if let BlockdevOptions::File(f) = o {
                if !files.iter().any(|(name, _)| *name == f.filename) {
                    let (ro, direct) = modes.get(&f.filename).copied().unwrap_or((false, false));
                    files.push((f.filename.clone(), open_file(&f.filename, ro, direct)?));
                }
            }
            Ok(())
        })?;
        Ok(files)
    }
}

/// How a request reaches block-proc (the machine's link or a new one).
type SendFn<'s> = dyn Fn(BlockRequest, &[BorrowedFd<'_>]) -> Result<BlockReply, FlatError> + 's;

/// Sends `AddNode` for `options` with `files`, opening the backing files
/// block-proc asks for (read-only) until it is satisfied.
fn send_add(
    send: &SendFn<'_>,
    options: &BlockdevOptions,
    files: &mut Vec<(String, OwnedFd)>,
) -> Result<(), FlatError> {
    loop {
        let slots: Vec<FileFd> = files
            .iter()
            .enumerate()
            .map(|(i, (name, _))| FileFd {
                filename: name.clone(),
                fd_index: u32::try_from(i).unwrap_or(u32::MAX),
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|(_, fd)| fd.as_fd()).collect();
        let req = BlockRequest::AddNode {
            options: options.clone(),
            files: slots,
        };
        match send(req, &fds)? {
            BlockReply::Done => return Ok(()),
            BlockReply::NeedFiles { filenames } => {
                let fresh: Vec<String> = filenames
                    .into_iter()
                    .filter(|n| !files.iter().any(|(f, _)| f == n))
                    .collect();
                if fresh.is_empty() {
                    return Err(FlatError::generic(
                        "internal error: the block worker asked again for files it was given",
                    ));
                }
                drop(fds);
                for name in fresh {
                    let fd = open_file(&name, true, false).map_err(|e| {
                        FlatError::generic(format!("Could not open backing file: {}", e.desc))
                    })?;
                    files.push((name, fd));
                }
            }
            other @ (BlockReply::Nodes(_) | BlockReply::Stats(_)) => {
                return Err(unexpected_reply(&other))
            }
        }
    }
}

/// `blockdev-add` of an already validated tree whose top-level node has a
/// name: checks names, opens the files, creates the nodes in block-proc and
/// records them.
pub fn add_node(m: &Machine, options: BlockdevOptions) -> Result<(), FlatError> {
    let shared = state(m);
    let mut st = lock(&shared);
    let mut files = st.prepare(&options)?;
    send_add(&|r, f| m.block_request_with_fds(r, f), &options, &mut files)?;
    st.nodes.push(NodeRecord { options, files });
    Ok(())
}

/// `blockdev-del`: removes a top-level node nothing uses.
pub fn del_node(m: &Machine, name: &str) -> Result<(), FlatError> {
    let shared = state(m);
    let mut st = lock(&shared);
    if !st.is_top_level(name) {
        let exists = match m.block_request(BlockRequest::QueryNodes)? {
            BlockReply::Nodes(n) => n.iter().any(|i| i.node_name == name),
            other @ (BlockReply::Done | BlockReply::NeedFiles { .. } | BlockReply::Stats(_)) => {
                return Err(unexpected_reply(&other))
            }
        };
        return Err(FlatError::generic(if exists {
            format!("Node {name} is not owned by the monitor")
        } else {
            format!("Failed to find node with node-name='{name}'")
        }));
    }
    match m.block_request(BlockRequest::DelNode {
        node_name: name.to_owned(),
    })? {
        BlockReply::Done => {}
        other @ (BlockReply::NeedFiles { .. } | BlockReply::Nodes(_) | BlockReply::Stats(_)) => {
            return Err(unexpected_reply(&other))
        }
    }
    // QEMU frees a deleted node's inline children with it (named ones
    // too) unless another node uses them; parents before children.
    if let Some(pos) = st
        .nodes
        .iter()
        .position(|r| r.options.node_name() == Some(name))
    {
        let rec = st.nodes.remove(pos);
        let mut inline = Vec::new();
        let _ = walk_post_order::<()>(&rec.options, &mut |o| {
            inline.extend(o.node_name().filter(|n| *n != name).map(String::from));
            Ok(())
        });
        for child in inline.iter().rev() {
            let req = BlockRequest::DelNode {
                node_name: child.clone(),
            };
            if let Err(e) = m.block_request(req) {
                tracing::debug!("inline child {child} of {name} stays: {}", e.desc);
            }
        }
    }
    Ok(())
}

/// Records an export created in block-proc (for the device helper: call it
/// after `AddExport` succeeded).
pub fn record_export(m: &Machine, request: BlockRequest) {
    lock(&state(m)).exports.push(ExportRecord { request });
}

/// Forgets export `id` (after `DelExport` succeeded).
pub fn forget_export(m: &Machine, id: &str) {
    lock(&state(m)).exports.retain(|e| match &e.request {
        BlockRequest::AddExport { id: i, .. } => i != id,
        BlockRequest::AddNode { .. }
        | BlockRequest::DelNode { .. }
        | BlockRequest::QueryNodes
        | BlockRequest::QueryStats
        | BlockRequest::DelExport { .. }
        | BlockRequest::AttachExportConnection { .. } => true,
        #[cfg(feature = "test-hooks")]
        BlockRequest::TestEscape(_) => true,
    });
}

/// Brings a freshly restarted block-proc, reached through `link`, back to
/// the desired state: every node, then every export, in creation order.
/// Call it before the new link is published in `Machine::block`, so no QMP
/// command reaches the worker half-replayed.
pub fn replay_on(m: &Machine, link: &BlockLink) -> Result<(), FlatError> {
    let shared = state(m);
    let mut st = lock(&shared);
    let send = |r: BlockRequest, f: &[BorrowedFd<'_>]| link.request(r, f);
    for rec in st.nodes.iter_mut() {
        let name = rec.options.node_name().unwrap_or_default().to_owned();
        send_add(&send, &rec.options, &mut rec.files).map_err(|e| {
            FlatError::generic(format!("cannot restore block node '{name}': {}", e.desc))
        })?;
    }
    for e in &st.exports {
        match link.request(e.request.clone(), &[])? {
            BlockReply::Done => {}
            other
            @ (BlockReply::NeedFiles { .. } | BlockReply::Nodes(_) | BlockReply::Stats(_)) => {
                return Err(unexpected_reply(&other))
            }
        }
    }
    Ok(())
}

/// [`replay_on`] through the link currently in `m` (for a restart path that
/// publishes the link first).
pub fn replay(m: &Machine) -> Result<(), FlatError> {
    let link = lock(&m.block).as_ref().map(|w| w.link.clone());
    match link {
        Some(l) => replay_on(m, &l),
        None => Err(FlatError::generic("the block worker is not running")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: serde_json::Value) -> BlockdevOptions {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn node_names_follow_qemu_rules() {
        assert!(check_node_name("disk0").is_ok());
        assert!(check_node_name("a-b.c_d").is_ok());
        assert_eq!(
            check_node_name("").unwrap_err().desc,
            "Invalid node-name: ''"
        );
        assert_eq!(
            check_node_name("#x").unwrap_err().desc,
            "Invalid node-name: '#x'"
        );
        assert_eq!(
            check_node_name("0a").unwrap_err().desc,
            "Invalid node-name: '0a'"
        );
        assert_eq!(
            check_node_name(&"a".repeat(32)).unwrap_err().desc,
            "Node name too long"
        );
    }

    #[test]
    fn walk_visits_children_before_parents() {
        let o = opts(serde_json::json!({"driver": "qcow2", "node-name": "q",
            "file": {"driver": "file", "node-name": "f", "filename": "/x"}}));
        let mut seen = Vec::new();
        walk_post_order::<()>(&o, &mut |x| {
            seen.push(x.node_name().unwrap().to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["f", "q"]);
        assert_eq!(file_child_name(&o), Some("f"));
    }

    #[test]
    fn prepare_rejects_duplicates_within_one_tree() {
        let st = BlockState::default();
        let o = opts(serde_json::json!({"driver": "raw", "node-name": "a",
            "file": {"driver": "null-co", "node-name": "a"}}));
        assert_eq!(
            st.prepare(&o).unwrap_err().desc,
            "Duplicate nodes with node-name='a'"
        );
    }

    #[test]
    fn missing_file_gives_qemu_message() {
        let e = open_file("/nonexistent/x.img", false, false).unwrap_err();
        assert_eq!(
            e.desc,
            "Could not open '/nonexistent/x.img': No such file or directory"
        );
    }

    #[test]
    fn read_only_open_gives_a_read_only_fd() {
        let dir = std::env::temp_dir().join(format!("bq-ro-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        let fd = open_file(dir.to_str().unwrap(), true, false).unwrap();
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        let fd = open_file(dir.to_str().unwrap(), false, false).unwrap();
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
        std::fs::remove_file(&dir).unwrap();
    }
}
