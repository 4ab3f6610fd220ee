//! The desired block state: every node the user created (`blockdev-add`,
//! `-blockdev`, `-drive`) in creation order, with the files the broker
//! opened for it, and every vhost-user export. block-proc never opens a
//! path: the broker opens each `filename` itself and the backing chain it
//! reads from the image headers ([`super::images`]: what may be opened, as
//! whom, with which locks) and passes the fds with
//! [`BlockRequest::AddNode`]. The fds stay open here (and with them the
//! image locks), so a restarted block-proc is brought back by [`replay_on`]
//! without reopening anything.
//!
//! Locking: the state's mutex is held only to read or change the records,
//! never across a file open or a worker request, so queries stay
//! responsive while a worker is slow. Graph changes (add, delete, replay)
//! are serialised by a second mutex ([`BlockState`]'s `ops`), which
//! readers never take.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipc_proto::block::{BlockReply, BlockRequest, BlockdevOptions, BlockdevRef, FileFd, OnOffAuto};
use ipc_proto::FlatError;

use super::images::files::{ExistingFile, Opener};
use super::images::open::Identity;
use super::images::policy::ImageDirs;
use super::{lock, unexpected_reply, BlockLink, Machine};

/// The longest node name QEMU accepts.
const MAX_NODE_NAME: usize = 31;

/// One top-level node as the user created it.
pub struct NodeRecord {
    /// The options exactly as given (inline children included).
    pub options: BlockdevOptions,
    /// Opened files by filename (backing files included).
    files: Vec<(String, OwnedFd)>,
    /// The backing file names the broker read from the headers.
    chain: Vec<String>,
    /// Real paths of the files the user named.
    named: Vec<PathBuf>,
}

impl NodeRecord {
    /// A copy sharing the same open file descriptions (for a replay that
    /// runs without the state lock).
    fn share(&self) -> Result<NodeRecord, FlatError> {
        let mut files = Vec::with_capacity(self.files.len());
        for (n, fd) in &self.files {
            let fd = fd.try_clone().map_err(|e| {
                FlatError::generic(format!("cannot pass '{n}' again: {}", strerror(&e)))
            })?;
            files.push((n.clone(), fd));
        }
        Ok(NodeRecord {
            options: self.options.clone(),
            files,
            chain: self.chain.clone(),
            named: self.named.clone(),
        })
    }
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
    /// Held by add, delete and replay from before their worker request
    /// until the record is updated: serialises graph changes without
    /// blocking readers of the state.
    ops: Arc<Mutex<()>>,
    /// Throttling and write thresholds ([`super::block_limits`]).
    pub limits: super::block_limits::Limits,
    /// The dirty bitmaps and their memory.
    pub(super) bitmaps: super::bitmaps::Bitmaps,
    /// Quorum child names after `x-blockdev-change`.
    pub(super) quorum: super::quorum_state::Layouts,
}

impl BlockState {
    /// The lock serialising graph changes (and bitmap changes with them).
    pub(super) fn ops(&self) -> Arc<Mutex<()>> {
        self.ops.clone()
    }
}

/// The desired block state, shared by the commands and the restart path.
pub type Shared = Arc<Mutex<BlockState>>;

/// The desired block state of `m`.
pub fn state(m: &Machine) -> Shared {
    m.block_state.clone()
}

/// A `blockdev-add` error with QEMU's hint line (printed after the message
/// on the command line; QMP replies carry only the message, as QEMU's).
#[derive(Debug)]
pub struct AddError {
    /// The error.
    pub error: FlatError,
    /// QEMU's hint, if it has one for this error.
    pub hint: Option<String>,
}

impl From<FlatError> for AddError {
    fn from(error: FlatError) -> Self {
        AddError { error, hint: None }
    }
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

/// The identity images are opened with: `-run-with user=`'s (with or
/// without `-sandbox off`, as QEMU's `-run-with user=` applies to every
/// open). Without `-run-with user=` the broker opens as itself: the per-VM
/// automatic uid owns no files, so file permissions checked against it
/// would refuse every image.
pub(crate) fn identity(m: &Machine) -> Result<Option<Identity>, FlatError> {
    if m.config().run_with_user.is_none() {
        return Ok(None);
    }
    let id = match m.worker_sandbox() {
        crate::workers::spawn::WorkerSandbox::On(id) => id,
        crate::workers::spawn::WorkerSandbox::Off => {
            // The same resolution as the workers' (name or UID[:GID]).
            let mut cfg = m.config().clone();
            cfg.sandbox = true;
            match super::policy::resolve_sandbox(&cfg) {
                Ok(crate::workers::spawn::WorkerSandbox::On(id)) => id,
                Ok(crate::workers::spawn::WorkerSandbox::Off) => return Ok(None),
                Err(e) => return Err(FlatError::generic(e.to_string())),
            }
        }
    };
    Ok(Some(Identity {
        uid: id.uid,
        gid: id.gid,
    }))
}

/// Walks `o` and its inline children in creation order (children first),
/// calling `f` on each definition.
pub fn walk_post_order<'a, E>(
    o: &'a BlockdevOptions,
    f: &mut dyn FnMut(&'a BlockdevOptions) -> Result<(), E>,
) -> Result<(), E> {
    for c in children(o) {
        match c {
            BlockdevRef::Definition(d) => walk_post_order(d, f)?,
            BlockdevRef::Reference(_) => {}
        }
    }
    f(o)
}

pub(super) fn children(o: &BlockdevOptions) -> Vec<&BlockdevRef> {
    match o {
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) => Vec::new(),
        BlockdevOptions::Raw(r) => r.file.iter().collect(),
        BlockdevOptions::Qcow2(q) => q
            .file
            .iter()
            .chain(q.backing.as_ref().and_then(Option::as_ref))
            .collect(),
        BlockdevOptions::Quorum(q) => q.children.iter().collect(),
    }
}

/// Whether `o` or one of its inline children refers to node `name`.
fn refers_to(o: &BlockdevOptions, name: &str) -> bool {
    children(o).into_iter().any(|c| match c {
        BlockdevRef::Reference(n) => n == name,
        BlockdevRef::Definition(d) => refers_to(d, name),
    })
}

/// The node name of `o`'s `file` child, when it has a name the broker knows.
pub fn file_child_name(o: &BlockdevOptions) -> Option<&str> {
    let r = match o {
        BlockdevOptions::Raw(r) => r.file.as_ref(),
        BlockdevOptions::Qcow2(q) => q.file.as_ref(),
        BlockdevOptions::File(_) | BlockdevOptions::NullCo(_) | BlockdevOptions::Quorum(_) => None,
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
    super::images::open::strerror(e)
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
        self.find_with_record(name).map(|(o, _)| o)
    }

    fn find_with_record(&self, name: &str) -> Option<(&BlockdevOptions, &NodeRecord)> {
        let mut found = None;
        for r in &self.nodes {
            let _ = walk_post_order::<()>(&r.options, &mut |o| {
                if o.node_name() == Some(name) {
                    found = Some((o, r));
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

    /// QEMU's `bdrv_is_root_node`: a top-level node no node uses as a
    /// child.
    pub fn is_root(&self, name: &str) -> bool {
        self.is_top_level(name) && !self.nodes.iter().any(|r| refers_to(&r.options, name))
    }

    /// Every image file the broker holds, each with the locks an active
    /// node takes on it (`None`: `locking=off`), for migration's
    /// inactivation and activation: user-named files by their options,
    /// backing files as backing users. The fds are copies sharing the open
    /// file descriptions, which the locks belong to.
    pub(crate) fn image_locks(&self) -> Vec<(String, OwnedFd, Option<super::images::lock::Perms>)> {
        let mut out = Vec::new();
        for r in &self.nodes {
            let uses = super::images::tree::file_uses(&r.options).unwrap_or_default();
            let locking = uses.iter().any(|u| u.locks.is_some());
            for (name, fd) in &r.files {
                let perms = match uses.iter().find(|u| u.filename == *name) {
                    Some(u) => u.locks,
                    None => locking.then_some(super::images::lock::Perms::BACKING),
                };
                match fd.try_clone() {
                    Ok(fd) => out.push((name.clone(), fd, perms)),
                    Err(e) => tracing::warn!("image '{name}': cannot copy its fd: {e}"),
                }
            }
        }
        out
    }

    /// The top-level records, in creation order.
    pub fn nodes(&self) -> &[NodeRecord] {
        &self.nodes
    }

    /// The top-level records, to change (`x-blockdev-change`).
    pub(super) fn nodes_mut(&mut self) -> &mut [NodeRecord] {
        &mut self.nodes
    }

    /// The exports, in creation order.
    pub fn exports(&self) -> &[ExportRecord] {
        &self.exports
    }

    /// Checks the node names of a new tree: well-formed and unique (QEMU's
    /// order: children first).
    fn check_names(&self, options: &BlockdevOptions) -> Result<(), FlatError> {
        let mut taken: HashSet<String> = self.node_names().into_iter().collect();
        walk_post_order(options, &mut |o| {
            if let Some(n) = o.node_name() {
                check_node_name(n)?;
                if !taken.insert(n.to_owned()) {
                    return Err(FlatError::generic(format!(
                        "Duplicate nodes with node-name='{n}'"
                    )));
                }
            }
            Ok(())
        })
    }

    /// [`BlockState::check_names`], or for a node a device opens itself
    /// (`own`) only that its name is free.
    fn check_new_names(&self, options: &BlockdevOptions, own: bool) -> Result<(), FlatError> {
        if !own {
            return self.check_names(options);
        }
        match options.node_name() {
            Some(n) if self.node_names().iter().any(|x| x == n) => Err(FlatError::generic(
                format!("Duplicate nodes with node-name='{n}'"),
            )),
            Some(_) | None => Ok(()),
        }
    }

    /// The existing file nodes `options` refers to as the image of a qcow2
    /// node whose backing chain the broker must read.
    fn referenced_files(&self, options: &BlockdevOptions) -> HashMap<String, ExistingFile> {
        let mut out = HashMap::new();
        for top in super::images::tree::chain_tops(options) {
            let super::images::tree::ChainTop::Node(name) = top else {
                continue;
            };
            let Some((BlockdevOptions::File(f), rec)) = self.find_with_record(&name) else {
                continue;
            };
            let fd = rec
                .files
                .iter()
                .find(|(n, _)| *n == f.filename)
                .and_then(|(_, fd)| fd.try_clone().ok());
            if let Some(fd) = fd {
                let locking = f.locking != Some(OnOffAuto::Off);
                let filename = f.filename.clone();
                out.insert(
                    name,
                    ExistingFile {
                        filename,
                        fd,
                        locking,
                    },
                );
            }
        }
        out
    }

    /// The VM's image directories: `-x-bulkhead-image-dir` and those of
    /// every image the user named for an existing node.
    fn image_dirs(&self, trees: &[PathBuf]) -> ImageDirs {
        let mut dirs = ImageDirs::with_trees(trees);
        for p in self.nodes.iter().flat_map(|r| &r.named) {
            dirs.allow_dir_of(p);
        }
        dirs
    }

    /// Whether an export serves node `name`.
    pub(super) fn exported(&self, name: &str) -> bool {
        self.exports
            .iter()
            .any(|e| e.id_and_node().is_some_and(|(_, n)| n == name))
    }

    /// Whether another node or an export uses top-level node `name`.
    fn in_use(&self, name: &str) -> bool {
        self.nodes
            .iter()
            .filter(|r| r.options.node_name() != Some(name))
            .any(|r| refers_to(&r.options, name))
            || self
                .exports
                .iter()
                .any(|e| e.id_and_node().is_some_and(|(_, n)| n == name))
    }
}

/// How a request reaches block-proc (the machine's link or a new one).
type SendFn<'s> = dyn Fn(BlockRequest, &[BorrowedFd<'_>]) -> Result<BlockReply, FlatError> + 's;

/// Sends `AddNode` for `rec` with its files. block-proc has every file of
/// the chain the broker read; if it asks for another, the broker refuses
/// (and logs it): it opens nothing a worker names.
fn send_add(send: &SendFn<'_>, rec: &NodeRecord) -> Result<(), FlatError> {
    let slots: Vec<FileFd> = rec
        .files
        .iter()
        .enumerate()
        .map(|(i, (name, _))| FileFd {
            filename: name.clone(),
            fd_index: u32::try_from(i).unwrap_or(u32::MAX),
        })
        .collect();
    let fds: Vec<BorrowedFd<'_>> = rec.files.iter().map(|(_, fd)| fd.as_fd()).collect();
    let req = BlockRequest::AddNode {
        options: rec.options.clone(),
        files: slots,
    };
    match send(req, &fds)? {
        BlockReply::Done => Ok(()),
        BlockReply::NeedFiles { filenames } => {
            let node = rec.options.node_name().unwrap_or_default();
            for name in &filenames {
                if rec.chain.contains(name) {
                    return Err(FlatError::generic(format!(
                        "internal error: the block worker asked again for '{name}'"
                    )));
                }
                tracing::warn!(
                    "block worker asked for '{name}' (node '{node}'), which is not in the \
                     backing chain the broker read from the image headers; refused"
                );
            }
            Err(FlatError::generic(format!(
                "Could not open backing file: '{}' is not in the backing chain read from the \
                 image header",
                filenames.join("', '")
            )))
        }
        other @ (BlockReply::Nodes(_)
        | BlockReply::Stats(_)
        | BlockReply::Trace(_)
        | BlockReply::Bitmap(_)
        | BlockReply::Snapshot(_)) => Err(unexpected_reply(&other)),
    }
}

/// The error [`crate::workers::link::WorkerLink::request`] gives when the
/// worker is alive but did not answer in time: the request may still be
/// carried out later.
fn timed_out(e: &FlatError) -> bool {
    // The text of `workers::link::LinkError::Timeout` for block-proc.
    e.desc.starts_with("the block worker did not answer")
}

/// `blockdev-add` of an already validated tree whose top-level node has a
/// name: checks names, opens the files (as the VM's identity, under the
/// open policy, with QEMU's locks), creates the nodes in block-proc and
/// records them.
pub fn add_node(m: &Machine, options: BlockdevOptions) -> Result<(), AddError> {
    add_checked_node(m, options, false)
}

/// [`add_node`] of a node a device opens itself (`blockdev-change-medium`):
/// its name is the device's own `#...`, which users cannot give.
pub fn add_own_node(m: &Machine, options: BlockdevOptions) -> Result<(), AddError> {
    add_checked_node(m, options, true)
}

fn add_checked_node(m: &Machine, options: BlockdevOptions, own: bool) -> Result<(), AddError> {
    let shared = state(m);
    let (ops, dirs, existing) = {
        let st = lock(&shared);
        st.check_new_names(&options, own)?;
        let dirs = st.image_dirs(&m.config().image_dirs);
        (st.ops.clone(), dirs, st.referenced_files(&options))
    };
    let opener = Opener {
        identity: identity(m)?,
        dirs,
        existing: &existing,
        inactive: m.migration.disks_inactive(),
    };
    let tree = opener.open_tree(&options).map_err(|e| AddError {
        error: FlatError::generic(e.to_string()),
        hint: e.hint(),
    })?;
    let _ops = lock(&ops);
    // Another add may have taken a name while the files were opened.
    lock(&shared).check_new_names(&options, own)?;
    let rec = NodeRecord {
        options,
        files: tree.files,
        chain: tree.chain,
        named: tree.named,
    };
    match send_add(&|r, f| m.block_request_with_fds(r, f), &rec) {
        Ok(()) => {
            let options = rec.options.clone();
            lock(&shared).nodes.push(rec);
            super::bitmaps::load_image_bitmaps(m, &options);
            Ok(())
        }
        Err(e) => {
            if timed_out(&e) {
                undo_add(&|r, f| m.block_request_with_fds(r, f), &rec.options);
            }
            Err(e.into())
        }
    }
}

/// After an `AddNode` that got no answer: deletes whatever the worker may
/// still create, so the worker converges on the desired state (which does
/// not have the node). Requests are handled in order, so these follow it.
fn undo_add(send: &SendFn<'_>, options: &BlockdevOptions) {
    let mut names = Vec::new();
    let _ = walk_post_order::<()>(options, &mut |o| {
        names.extend(o.node_name().map(String::from));
        Ok(())
    });
    for n in names.iter().rev() {
        let req = BlockRequest::DelNode {
            node_name: n.clone(),
        };
        match send(req, &[]) {
            Ok(_) => {}
            Err(e) if timed_out(&e) => {
                tracing::warn!("block worker still silent; node '{n}' is deleted when it answers");
                return;
            }
            Err(e) => tracing::debug!("undoing node '{n}': {}", e.desc),
        }
    }
}

/// `blockdev-del`: removes a top-level node nothing uses. If block-proc
/// does not answer in time, the node is removed from the desired state all
/// the same (the deletion is queued in the worker, and a restarted worker
/// never gets the node back).
pub fn del_node(m: &Machine, name: &str) -> Result<(), FlatError> {
    let shared = state(m);
    let ops = lock(&shared).ops.clone();
    let _ops = lock(&ops);
    let (top, in_use) = {
        let st = lock(&shared);
        (st.is_top_level(name), st.in_use(name))
    };
    if !top {
        let exists = match m.block_request(BlockRequest::QueryNodes)? {
            BlockReply::Nodes(n) => n.iter().any(|i| i.node_name == name),
            other @ (BlockReply::Done
            | BlockReply::NeedFiles { .. }
            | BlockReply::Stats(_)
            | BlockReply::Trace(_)
            | BlockReply::Bitmap(_)
            | BlockReply::Snapshot(_)) => return Err(unexpected_reply(&other)),
        };
        return Err(FlatError::generic(if exists {
            format!("Node {name} is not owned by the monitor")
        } else {
            format!("Failed to find node with node-name='{name}'")
        }));
    }
    if let Some(refusal) = m.jobs.refuses_del(name) {
        return Err(FlatError::generic(refusal));
    }
    if lock(&m.media).user_of(name).is_some() {
        return Err(FlatError::generic(format!("Node {name} is in use")));
    }
    if in_use {
        return Err(FlatError::generic(format!("Block device {name} is in use")));
    }
    let answer = m.block_request(BlockRequest::DelNode {
        node_name: name.to_owned(),
    });
    match answer {
        Ok(reply) => super::expect_done(reply)?,
        Err(e) if timed_out(&e) => {
            tracing::warn!("block worker did not answer blockdev-del of '{name}'; node forgotten");
            forget_node(m, name);
            return Err(FlatError::generic(format!(
                "{}; node '{name}' is deleted once it does",
                e.desc
            )));
        }
        Err(e) => return Err(e),
    }
    for child in forget_node(m, name) {
        let req = BlockRequest::DelNode {
            node_name: child.clone(),
        };
        if let Err(e) = m.block_request(req) {
            tracing::debug!("inline child {child} of {name} stays: {}", e.desc);
        }
    }
    Ok(())
}

/// Drops top-level node `name` from the desired state (closing its files
/// and so its locks) and returns its named inline children, parents
/// before children: QEMU frees them with it unless another node uses them.
fn forget_node(m: &Machine, name: &str) -> Vec<String> {
    let rec = {
        let shared = state(m);
        let mut st = lock(&shared);
        match st
            .nodes
            .iter()
            .position(|r| r.options.node_name() == Some(name))
        {
            Some(pos) => st.nodes.remove(pos),
            None => return Vec::new(),
        }
    };
    let mut inline = Vec::new();
    let _ = walk_post_order::<()>(&rec.options, &mut |o| {
        inline.extend(o.node_name().filter(|n| *n != name).map(String::from));
        Ok(())
    });
    inline.reverse();
    lock(&state(m)).limits.forget_nodes(name, &inline);
    let mut gone = inline.clone();
    gone.push(name.to_owned());
    lock(&state(m)).bitmaps.forget_nodes(&gone);
    lock(&state(m)).quorum.forget(&gone);
    inline
}

impl ExportRecord {
    /// The export's id and node (`None` if the record holds another
    /// request, which the device helper never records).
    fn id_and_node(&self) -> Option<(&str, &str)> {
        match &self.request {
            BlockRequest::AddExport { id, node_name, .. } => Some((id, node_name)),
            BlockRequest::AddNode { .. }
            | BlockRequest::DelNode { .. }
            | BlockRequest::QueryNodes
            | BlockRequest::QueryStats
            | BlockRequest::Ping
            | BlockRequest::Trace(_)
            | BlockRequest::DelExport { .. }
            | BlockRequest::AttachExportConnection { .. }
            | BlockRequest::SetThrottle { .. }
            | BlockRequest::SetWriteThreshold { .. }
            | BlockRequest::ResizeNode { .. }
            | BlockRequest::Bitmap(_)
            | BlockRequest::Snapshot(_)
            | BlockRequest::FlushAll
            | BlockRequest::AddScsiExport(_)
            | BlockRequest::ScsiMedium { .. }
            | BlockRequest::ChangeChild { .. }
            | BlockRequest::SetChildNames { .. }
            | BlockRequest::StartJob(_)
            | BlockRequest::JobControl { .. } => None,
            #[cfg(feature = "test-hooks")]
            BlockRequest::TestEscape(_) => None,
        }
    }
}

/// Records an export created in block-proc (for the device helper: call it
/// after `AddExport` succeeded).
pub fn record_export(m: &Machine, request: BlockRequest) {
    lock(&state(m)).exports.push(ExportRecord { request });
}

/// Records the `AddScsiExport` of `spec.id`, replacing the one recorded
/// (the SCSI media helper keeps it equal to the drives' desired state).
pub fn record_scsi_export(m: &Machine, spec: ipc_proto::scsi::ScsiExportSpec) {
    let shared = state(m);
    let mut st = lock(&shared);
    let old = st
        .exports
        .iter_mut()
        .find(|e| matches!(&e.request, BlockRequest::AddScsiExport(s) if s.id == spec.id));
    match old {
        Some(e) => e.request = BlockRequest::AddScsiExport(spec),
        None => st.exports.push(ExportRecord {
            request: BlockRequest::AddScsiExport(spec),
        }),
    }
}

/// Points every export of node `from` at node `to` (a mirror's pivot:
/// block-proc already redirected `from`'s requests; a restarted one
/// exports `to`).
pub fn repoint_exports(m: &Machine, from: &str, to: &str) {
    for e in lock(&state(m)).exports.iter_mut() {
        if let BlockRequest::AddExport { node_name, .. } = &mut e.request {
            if node_name == from {
                *node_name = to.to_owned();
            }
        }
    }
}

/// Forgets export `id` (after `DelExport` succeeded).
pub fn forget_export(m: &Machine, id: &str) {
    let shared = state(m);
    let mut st = lock(&shared);
    st.exports
        .retain(|e| e.id_and_node().is_none_or(|(i, _)| i != id));
    if let Some(device) = id.strip_prefix("device.") {
        st.limits.forget_device(device);
    }
}

/// Brings a freshly restarted block-proc, reached through `link`, back to
/// the desired state: every node, then every export, in creation order.
/// Call it before the new link is published in `Machine::block`, so no QMP
/// command reaches the worker half-replayed. The state lock is held only
/// to copy the records (their fds share the same open file descriptions,
/// so the image locks stay as they are).
pub fn replay_on(m: &Machine, link: &BlockLink) -> Result<(), FlatError> {
    let shared = state(m);
    let ops = lock(&shared).ops.clone();
    let _ops = lock(&ops);
    let (nodes, exports) = {
        let st = lock(&shared);
        let nodes = st
            .nodes
            .iter()
            .map(NodeRecord::share)
            .collect::<Result<Vec<_>, _>>()?;
        let exports: Vec<BlockRequest> = st.exports.iter().map(|e| e.request.clone()).collect();
        (nodes, exports)
    };
    let send = |r: BlockRequest, f: &[BorrowedFd<'_>]| link.request(r, f);
    for rec in super::quorum_state::replay_order(&nodes)
        .into_iter()
        .filter_map(|i| nodes.get(i))
    {
        let name = rec.options.node_name().unwrap_or_default().to_owned();
        send_add(&send, rec).map_err(|e| {
            FlatError::generic(format!("cannot restore block node '{name}': {}", e.desc))
        })?;
    }
    super::quorum_state::replay_on(m, link)?;
    super::bitmaps::replay_on(m, link)?;
    super::jobs::replay_on(m, link);
    for request in exports {
        crate::machine::expect_done(link.request(request, &[])?)?;
    }
    super::block_limits::replay_on(m, link)
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
    fn duplicate_names_within_one_tree_are_refused() {
        let st = BlockState::default();
        let o = opts(serde_json::json!({"driver": "raw", "node-name": "a",
            "file": {"driver": "null-co", "node-name": "a"}}));
        assert_eq!(
            st.check_names(&o).unwrap_err().desc,
            "Duplicate nodes with node-name='a'"
        );
    }

    /// A log writer into a shared buffer.
    struct LogSink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(chain: &[&str]) -> NodeRecord {
        NodeRecord {
            options: opts(serde_json::json!({"driver": "null-co", "node-name": "n"})),
            files: Vec::new(),
            chain: chain.iter().map(|s| s.to_string()).collect(),
            named: Vec::new(),
        }
    }

    #[test]
    fn a_worker_asking_for_a_file_outside_the_chain_is_refused_and_logged() {
        let opened = std::cell::Cell::new(0);
        let send = |_: BlockRequest, _: &[BorrowedFd<'_>]| {
            opened.set(opened.get() + 1);
            Ok(BlockReply::NeedFiles {
                filenames: vec!["/etc/shadow".into()],
            })
        };
        let log = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        let e = tracing::subscriber::with_default(subscriber, || {
            send_add(&send, &record(&["/img/base.raw"])).unwrap_err()
        });
        let text = String::from_utf8(lock(&log).clone()).unwrap();
        assert!(
            text.contains("WARN") && text.contains("asked for '/etc/shadow'"),
            "log: {text}"
        );
        assert_eq!(
            e.desc,
            "Could not open backing file: '/etc/shadow' is not in the backing chain read \
             from the image header"
        );
        // Asked once, answered with a refusal: nothing was opened or re-sent.
        assert_eq!(opened.get(), 1);
    }

    #[test]
    fn an_unanswered_add_is_undone_top_node_first() {
        let sent = std::cell::RefCell::new(Vec::new());
        let send = |r: BlockRequest, _: &[BorrowedFd<'_>]| {
            if let BlockRequest::DelNode { node_name } = r {
                sent.borrow_mut().push(node_name);
            }
            Ok(BlockReply::Done)
        };
        let o = opts(serde_json::json!({"driver": "qcow2", "node-name": "q",
            "file": {"driver": "file", "node-name": "f", "filename": "/x"}}));
        undo_add(&send, &o);
        assert_eq!(*sent.borrow(), ["q", "f"]);
        // A worker still silent: the first DelNode is queued, no more sent.
        sent.borrow_mut().clear();
        let silent = |r: BlockRequest, _: &[BorrowedFd<'_>]| {
            if let BlockRequest::DelNode { node_name } = r {
                sent.borrow_mut().push(node_name);
            }
            Err(FlatError::generic("the block worker did not answer"))
        };
        undo_add(&silent, &o);
        assert_eq!(*sent.borrow(), ["q"]);
    }

    #[test]
    fn a_node_used_by_another_or_by_an_export_is_in_use() {
        let mut st = BlockState::default();
        st.nodes.push(record(&[]));
        assert!(!st.in_use("n"));
        let mut r = record(&[]);
        r.options = opts(serde_json::json!({"driver": "raw", "node-name": "r", "file": "n"}));
        st.nodes.push(r);
        assert!(st.in_use("n"));
        assert!(!st.in_use("r"));
    }
}
