//! The broker IPC loop: receive [`BlockRequest`]s, answer each with a
//! [`BlockReply`] or a flat error, and forward export events as
//! [`BlockEvent`]s. One `match` without a catch-all arm, so a new request
//! does not compile until it is handled here.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;

use ipc_proto::block::{BlockEvent, BlockReply, BlockRequest};
use ipc_proto::envelope::{BrokerMsg, WorkerMsg};
use ipc_proto::worker::WorkerChannel;
use ipc_proto::{trace_point, FlatError};

use crate::block::{Graph, GraphError};
use crate::scsi::ScsiDevice;
use crate::throttle::{Member, Registry};
use crate::trace;
use crate::vhost::export::{Export, ExportEvent, Source};
use crate::virtio_blk::{BlkConfig, BlkDevice};

/// Errors that end the server loop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The control channel failed.
    #[error("control channel failed")]
    Channel(#[source] ipc_proto::ChannelError),
}

/// Result of the server loop.
pub type Result<T> = std::result::Result<T, ServerError>;

/// The channel type block-proc uses.
pub type BlockChannel = WorkerChannel<BlockRequest, BlockReply, BlockEvent>;

/// Block-proc's state: the node graph and the exports.
pub struct Server {
    graph: Graph,
    exports: BTreeMap<String, Export>,
    /// The SCSI controllers among the exports (same ids).
    scsi: HashMap<String, Arc<ScsiDevice>>,
    events: mpsc::Sender<ExportEvent>,
    /// Throttle groups, and each export's membership.
    throttle: Registry,
    throttle_members: HashMap<String, Arc<Member>>,
    jobs: crate::jobs::Jobs,
    job_events: Option<mpsc::Sender<ipc_proto::block_jobs::JobEvent>>,
}

impl From<GraphError> for FlatError {
    fn from(e: GraphError) -> Self {
        FlatError::generic(e.to_string())
    }
}

impl Server {
    /// A server whose export events go to `events`.
    pub fn new(events: mpsc::Sender<ExportEvent>) -> Self {
        let mut graph = Graph::new();
        graph.set_events(events.clone());
        Server {
            graph,
            exports: BTreeMap::new(),
            scsi: HashMap::new(),
            events,
            throttle: Registry::default(),
            throttle_members: HashMap::new(),
            jobs: crate::jobs::Jobs::default(),
            job_events: None,
        }
    }

    /// The broker closed the channel (quit): stops the exports, then
    /// stores every node's persistent bitmaps, as QEMU does at close.
    pub fn close(&mut self) {
        for (_, e) in std::mem::take(&mut self.exports) {
            e.stop();
        }
        self.scsi.clear();
        for n in self.graph.all() {
            if let Err(e) = n.flush() {
                tracing::warn!("flushing '{}' before storing bitmaps: {e}", n.name);
            }
            n.bitmaps.store(&n.name);
        }
    }

    /// Where job events go.
    pub fn with_job_events(mut self, tx: mpsc::Sender<ipc_proto::block_jobs::JobEvent>) -> Self {
        self.job_events = Some(tx);
        self
    }

    /// The node graph.
    pub fn graph(&mut self) -> &mut Graph {
        &mut self.graph
    }

    /// Handle one request with the fds that came with it.
    pub fn handle(
        &mut self,
        req: BlockRequest,
        fds: Vec<OwnedFd>,
    ) -> std::result::Result<BlockReply, FlatError> {
        match req {
            BlockRequest::AddNode { options, files } => {
                let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
                let mut map = HashMap::new();
                for f in files {
                    let fd = usize::try_from(f.fd_index)
                        .ok()
                        .and_then(|i| slots.get_mut(i))
                        .and_then(Option::take)
                        .ok_or_else(|| {
                            FlatError::generic(format!("no fd passed for '{}'", f.filename))
                        })?;
                    map.insert(f.filename, File::from(fd));
                }
                match self.graph.add(&options, map) {
                    Ok(_) => Ok(BlockReply::Done),
                    Err(GraphError::NeedFiles(filenames)) => {
                        Ok(BlockReply::NeedFiles { filenames })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            BlockRequest::DelNode { node_name } => {
                self.graph.del(&node_name)?;
                Ok(BlockReply::Done)
            }
            BlockRequest::QueryNodes => Ok(BlockReply::Nodes(self.graph.query_nodes())),
            BlockRequest::QueryStats => Ok(BlockReply::Stats(self.graph.query_stats())),
            BlockRequest::Ping => Ok(BlockReply::Done),
            BlockRequest::Trace(t) => {
                ipc_proto::trace::serve(crate::trace::POINTS, t, fds).map(BlockReply::Trace)
            }
            BlockRequest::AddExport {
                id,
                node_name,
                num_queues,
                writable,
                serial,
                logical_block_size,
            } => {
                if self.exports.contains_key(&id) {
                    return Err(FlatError::generic(format!(
                        "Block export id '{id}' is already in use"
                    )));
                }
                let node = self
                    .graph
                    .get(&node_name)
                    .ok_or_else(|| FlatError::from(GraphError::NoSuchRef(node_name.clone())))?;
                if writable && node.read_only {
                    return Err(FlatError::generic(format!(
                        "Block node is read-only: '{node_name}' cannot be exported writable"
                    )));
                }
                if !matches!(logical_block_size, 512 | 4096) || num_queues == 0 || num_queues > 64 {
                    return Err(FlatError::generic("Invalid export parameters"));
                }
                let cfg = BlkConfig::new(&node, num_queues, writable, &serial, logical_block_size);
                let member = cfg.throttle.clone();
                let export = Export::start(
                    id.clone(),
                    Source::Attached,
                    Arc::new(BlkDevice::new(node, cfg)),
                    Some(self.events.clone()),
                )
                .map_err(|e| FlatError::generic(format!("Could not start export '{id}': {e}")))?;
                self.throttle_members.insert(id.clone(), member);
                self.exports.insert(id, export);
                Ok(BlockReply::Done)
            }
            BlockRequest::DelExport { id } => {
                let e = self
                    .exports
                    .remove(&id)
                    .ok_or_else(|| FlatError::generic(format!("Export '{id}' is not found")))?;
                e.stop();
                self.scsi.remove(&id);
                if let Some(m) = self.throttle_members.remove(&id) {
                    self.throttle.set(&m, "", None);
                }
                Ok(BlockReply::Done)
            }
            BlockRequest::AttachExportConnection { id } => {
                let export = self
                    .exports
                    .get(&id)
                    .ok_or_else(|| FlatError::generic(format!("Export '{id}' is not found")))?;
                let fd = fds.into_iter().next().ok_or_else(|| {
                    FlatError::generic("no connected socket passed for the export")
                })?;
                let stream = connected_stream(fd).map_err(|e| {
                    FlatError::generic(format!("Export '{id}': bad connection socket: {e}"))
                })?;
                export.attach(stream).map_err(|e| {
                    FlatError::generic(format!("Export '{id}': cannot attach a connection: {e}"))
                })?;
                Ok(BlockReply::Done)
            }
            BlockRequest::SetThrottle { id, group, config } => {
                let member = self
                    .throttle_members
                    .get(&id)
                    .ok_or_else(|| FlatError::generic(format!("Export '{id}' is not found")))?;
                self.throttle.set(member, &group, config);
                Ok(BlockReply::Done)
            }
            BlockRequest::SetWriteThreshold {
                node_name,
                threshold,
            } => {
                let node = self
                    .graph
                    .get(&node_name)
                    .ok_or_else(|| FlatError::from(GraphError::NotFound(node_name.clone())))?;
                node.write_threshold.set(threshold, self.events.clone());
                Ok(BlockReply::Done)
            }
            BlockRequest::ResizeNode { node_name, size } => {
                let node = self
                    .graph
                    .get(&node_name)
                    .ok_or_else(|| FlatError::from(GraphError::NotFound(node_name.clone())))?;
                node.resize(size).map_err(FlatError::generic)?;
                // A spurious notice only makes a frontend re-read the
                // config, so every export hears of it.
                for e in self.exports.values() {
                    e.config_changed();
                }
                for d in self.scsi.values() {
                    d.capacity_changed(&node_name);
                }
                Ok(BlockReply::Done)
            }
            BlockRequest::Bitmap(r) => {
                crate::bitmaps::requests::handle(&self.graph, r, fds).map(BlockReply::Bitmap)
            }
            BlockRequest::AddScsiExport(spec) => {
                if self.exports.contains_key(&spec.id) {
                    return Err(FlatError::generic(format!(
                        "Block export id '{}' is already in use",
                        spec.id
                    )));
                }
                let dev = crate::scsi::spec::build(&spec, &self.graph, Some(self.events.clone()))
                    .map_err(|e| FlatError::generic(e.to_string()))?;
                let dev = Arc::new(dev);
                let export = Export::start(
                    spec.id.clone(),
                    Source::Attached,
                    dev.clone(),
                    Some(self.events.clone()),
                )
                .map_err(|e| {
                    FlatError::generic(format!("Could not start export '{}': {e}", spec.id))
                })?;
                self.scsi.insert(spec.id.clone(), dev);
                self.exports.insert(spec.id, export);
                Ok(BlockReply::Done)
            }
            BlockRequest::ScsiMedium {
                export_id,
                device_id,
                op,
            } => {
                let dev = self.scsi.get(&export_id).ok_or_else(|| {
                    FlatError::generic(format!("Export '{export_id}' is not found"))
                })?;
                let node = match &op {
                    ipc_proto::scsi::MediumOp::Insert { node_name } => {
                        let n = self.graph.get(node_name).ok_or_else(|| {
                            FlatError::from(GraphError::NoSuchRef(node_name.clone()))
                        })?;
                        n.acquire();
                        Some(n)
                    }
                    ipc_proto::scsi::MediumOp::OpenTray
                    | ipc_proto::scsi::MediumOp::CloseTray
                    | ipc_proto::scsi::MediumOp::Remove
                    | ipc_proto::scsi::MediumOp::EjectRequest
                    | ipc_proto::scsi::MediumOp::SetLocked(_) => None,
                };
                dev.medium(&device_id, &op, node)
                    .map_err(|e| FlatError::generic(e.to_string()))?;
                Ok(BlockReply::Done)
            }
            BlockRequest::FlushAll => {
                for node in self.graph.all() {
                    // Wait for the requests in flight, then flush (a flush
                    // inside the drain would wait for the drain itself).
                    drop(node.hooks.drain());
                    node.flush().map_err(|e| {
                        FlatError::generic(format!(
                            "Failed to flush node '{}': {}",
                            node.name,
                            crate::block::graph::strerror(&e)
                        ))
                    })?;
                }
                Ok(BlockReply::Done)
            }
            BlockRequest::Snapshot(r) => {
                crate::snapshots::handle(&self.graph, r).map(BlockReply::Snapshot)
            }
            BlockRequest::StartJob(spec) => {
                let tx = self
                    .job_events
                    .clone()
                    .ok_or_else(|| FlatError::generic("block jobs need the broker's channel"))?;
                self.jobs
                    .start(spec, &self.graph, tx)
                    .map_err(|e| FlatError::generic(e.to_string()))?;
                Ok(BlockReply::Done)
            }
            BlockRequest::JobControl { id, op } => {
                self.jobs
                    .control(&id, op)
                    .map_err(|e| FlatError::generic(e.to_string()))?;
                Ok(BlockReply::Done)
            }
            BlockRequest::ChangeChild {
                parent,
                child,
                node,
            } => {
                self.graph
                    .change_child(&parent, child.as_deref(), node.as_deref())?;
                Ok(BlockReply::Done)
            }
            BlockRequest::SetChildNames {
                parent,
                names,
                next_index,
            } => {
                self.graph.set_child_names(&parent, names, next_index)?;
                Ok(BlockReply::Done)
            }
            #[cfg(feature = "test-hooks")]
            BlockRequest::TestEscape(e) => sandbox::escape::attempt(e)
                .into_reply()
                .map(|()| BlockReply::Done),
        }
    }
}

/// `fd` as a stream socket (anything else is refused here: the vhost-user
/// handler would only fail on it later, less clearly). `fstat` is what
/// the sandbox allows for this.
fn connected_stream(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let st = nix::sys::stat::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other("not a socket"));
    }
    Ok(UnixStream::from(fd))
}

/// Serve the broker until the channel closes.
pub fn run(chan: BlockChannel) -> Result<()> {
    let chan = Arc::new(chan);
    let (tx, rx) = mpsc::channel::<ExportEvent>();
    let ev_chan = chan.clone();
    std::thread::spawn(move || {
        for e in rx {
            let ev = match e {
                ExportEvent::Connected(id) => BlockEvent::ExportConnected { id },
                ExportEvent::Disconnected(id) => BlockEvent::ExportDisconnected { id },
                ExportEvent::IoError {
                    node_name,
                    operation,
                    reason,
                } => BlockEvent::IoError {
                    node_name,
                    operation: operation.to_string(),
                    reason,
                },
                ExportEvent::Block(ev) => ev,
                ExportEvent::Acked(ev, written) => {
                    if ev_chan.send(&WorkerMsg::Event(ev), &[]).is_err() {
                        return;
                    }
                    // The waiter may have given up (its timeout).
                    let _ = written.send(());
                    continue;
                }
            };
            if ev_chan.send(&WorkerMsg::Event(ev), &[]).is_err() {
                return;
            }
        }
    });
    let (jtx, jrx) = mpsc::channel();
    let job_chan = chan.clone();
    std::thread::spawn(move || {
        for e in jrx {
            if job_chan
                .send(&WorkerMsg::Event(BlockEvent::Job(e)), &[])
                .is_err()
            {
                return;
            }
        }
    });
    let mut server = Server::new(tx).with_job_events(jtx);
    loop {
        let (msg, fds) = match chan.recv() {
            Ok(m) => m,
            Err(e) if e.is_closed() => {
                server.close();
                return Ok(());
            }
            Err(e) => return Err(ServerError::Channel(e)),
        };
        match msg {
            BrokerMsg::Request { id, body } => {
                trace_point!(trace::block_ipc_request(id, body));
                let result = server.handle(body, fds);
                trace_point!(trace::block_ipc_reply(id, result.is_ok()));
                chan.send(&WorkerMsg::Reply { id, result }, &[])
                    .map_err(ServerError::Channel)?;
            }
        }
    }
}
