//! The trace state as the broker wants it (desired state): which trace
//! points of which process are enabled, on which vCPUs, and the trace file.
//! The broker learns each process's points (its catalog) from the process
//! itself when it starts, applies the command line's `-trace` patterns to
//! them, and sets the state in every process with `TraceRequest::Apply`;
//! a restarted block-proc or net-proc gets the same state again. The
//! `trace-event-*` commands are answered from here (the rules in
//! [`query`]), with the states the live workers report.

pub mod query;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipc_proto::block::{BlockReply, BlockRequest};
use ipc_proto::net::{NetReply, NetRequest};
use ipc_proto::trace::{EnabledPoint, PointState, TraceReply, TraceRequest, VcpuMask};
use ipc_proto::vcpu::{VcpuReply, VcpuRequest};
use ipc_proto::FlatError;

use super::{lock, unexpected_reply, BlockLink, Machine, NetLink, VcpuLink};
use crate::cli::trace_opt::{TraceOp, TraceOptions};

/// Errors of the trace set-up.
#[derive(Debug, thiserror::Error)]
pub enum TraceStateError {
    /// `-trace file=` cannot be opened (QEMU's message).
    #[error("Error opening logfile {}: {reason}", .path.display())]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// Why (`strerror`'s text, as QEMU prints it).
        reason: String,
    },
}

/// The processes that have trace points, in the order their points are
/// listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Process {
    /// The broker itself.
    Broker,
    /// vcpu-proc.
    Vcpu,
    /// block-proc.
    Block,
    /// net-proc (its points are known once it first started: a VM without
    /// a netdev runs none).
    Net,
}

/// A point as the broker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointDesc {
    /// Its name.
    pub name: String,
    /// Per-vCPU.
    pub per_vcpu: bool,
}

#[derive(Default)]
struct Inner {
    /// The command line's operations, applied to each catalog once learned.
    startup: Vec<TraceOp>,
    /// Each process's points, once learned.
    catalogs: BTreeMap<Process, Vec<PointDesc>>,
    /// Enabled points and their vCPUs (absent: disabled).
    desired: BTreeMap<String, VcpuMask>,
    /// `-trace file=`, passed to every worker.
    file: Option<Arc<File>>,
}

/// The broker's trace state (see the module doc).
pub struct TraceState {
    inner: Mutex<Inner>,
}

impl TraceState {
    /// The state of `opts`: the broker's own points are set at once.
    pub fn new(opts: &TraceOptions) -> Self {
        let state = TraceState {
            inner: Mutex::new(Inner {
                startup: opts.ops.clone(),
                ..Inner::default()
            }),
        };
        let mut inner = lock(&state.inner);
        let own = ipc_proto::trace::states(crate::trace::POINTS);
        learn(&mut inner, Process::Broker, &own);
        apply_own(&inner);
        drop(inner);
        state
    }

    /// Opens `-trace file=` (before the process daemonizes, as QEMU).
    pub fn open_file(opts: &TraceOptions) -> Result<Option<File>, TraceStateError> {
        let Some(path) = &opts.file else {
            return Ok(None);
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Some)
            .map_err(|e| TraceStateError::OpenFile {
                path: path.clone(),
                reason: crate::cli::trace_opt::io_reason(&e),
            })
    }

    /// Makes `file` the trace file of the broker and of every worker
    /// started from now on.
    pub fn set_file(&self, file: File) {
        let mut inner = lock(&self.inner);
        match file.try_clone() {
            Ok(own) => ipc_proto::trace::sink::set_file(own),
            Err(e) => tracing::warn!("the broker's trace lines stay in the log: {e}"),
        }
        inner.file = Some(Arc::new(file));
    }

    /// Sets a worker's trace state: its catalog is asked for the first
    /// time (and the command line's patterns applied to it), then the
    /// desired state (and the trace file) sent. Holds the lock throughout,
    /// so a concurrent `trace-event-set-state` comes entirely before or
    /// after.
    fn replay(&self, process: Process, call: &Call<'_>) -> Result<(), FlatError> {
        let mut inner = lock(&self.inner);
        if !inner.catalogs.contains_key(&process) {
            let TraceReply::Points(points) = call(TraceRequest::Query, &[])?;
            learn(&mut inner, process, &points);
        }
        send(&inner, process, call, true)
    }

    /// The names of the command line's non-pattern points that no known
    /// process has, with where they were given (QEMU warns about them).
    pub fn unknown_startup_names(&self) -> Vec<(String, String)> {
        let inner = lock(&self.inner);
        inner
            .startup
            .iter()
            .filter(|op| !ipc_proto::trace::pattern::is_pattern(&op.pattern))
            .filter(|op| {
                !inner
                    .catalogs
                    .values()
                    .flatten()
                    .any(|p| p.name == op.pattern)
            })
            .map(|op| (op.origin.clone(), op.pattern.clone()))
            .collect()
    }
}

/// A trace request to one worker.
type Call<'a> = dyn Fn(TraceRequest, &[BorrowedFd<'_>]) -> Result<TraceReply, FlatError> + 'a;

/// Adds `process`'s points and applies the command line's operations to them.
fn learn(inner: &mut Inner, process: Process, points: &[PointState]) {
    let descs: Vec<PointDesc> = points
        .iter()
        .map(|p| PointDesc {
            name: p.name.clone(),
            per_vcpu: p.per_vcpu,
        })
        .collect();
    for op in inner.startup.clone() {
        for d in &descs {
            if ipc_proto::trace::pattern::matches(&op.pattern, &d.name) {
                set_desired(
                    &mut inner.desired,
                    &d.name,
                    op.enable.then_some(VcpuMask::ALL),
                );
            }
        }
    }
    inner.catalogs.insert(process, descs);
}

fn set_desired(desired: &mut BTreeMap<String, VcpuMask>, name: &str, mask: Option<VcpuMask>) {
    match mask.filter(|m| !m.is_empty()) {
        Some(m) => {
            desired.insert(name.to_owned(), m);
        }
        None => {
            desired.remove(name);
        }
    }
}

/// The desired state of `process`'s points.
fn enabled_of(inner: &Inner, process: Process) -> Vec<EnabledPoint> {
    inner
        .catalogs
        .get(&process)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            inner.desired.get(&d.name).map(|m| EnabledPoint {
                name: d.name.clone(),
                vcpus: *m,
            })
        })
        .collect()
}

fn apply_own(inner: &Inner) {
    let enabled = enabled_of(inner, Process::Broker);
    if let Err(e) = ipc_proto::trace::apply(crate::trace::POINTS, &enabled) {
        tracing::error!("the broker's own trace points: {e}");
    }
}

/// Sends `process` its desired state (with the trace file if `with_file`).
fn send(
    inner: &Inner,
    process: Process,
    call: &Call<'_>,
    with_file: bool,
) -> Result<(), FlatError> {
    let enabled = enabled_of(inner, process);
    let file = inner.file.as_ref().filter(|_| with_file);
    let fds: Vec<BorrowedFd<'_>> = file.iter().map(|f| f.as_fd()).collect();
    call(
        TraceRequest::Apply {
            enabled,
            to_file: file.is_some(),
        },
        &fds,
    )
    .map(drop)
}

fn vcpu_call(
    link: &VcpuLink,
) -> impl Fn(TraceRequest, &[BorrowedFd<'_>]) -> Result<TraceReply, FlatError> + '_ {
    move |req, fds| match link.request(VcpuRequest::Trace(req), fds)? {
        VcpuReply::Trace(r) => Ok(r),
        other => Err(unexpected_reply(&other)),
    }
}

fn block_call(
    link: &BlockLink,
) -> impl Fn(TraceRequest, &[BorrowedFd<'_>]) -> Result<TraceReply, FlatError> + '_ {
    move |req, fds| match link.request(BlockRequest::Trace(req), fds)? {
        BlockReply::Trace(r) => Ok(r),
        other => Err(unexpected_reply(&other)),
    }
}

fn net_call(
    link: &NetLink,
) -> impl Fn(TraceRequest, &[BorrowedFd<'_>]) -> Result<TraceReply, FlatError> + '_ {
    move |req, fds| match link.request(NetRequest::Trace(req), fds)? {
        NetReply::Trace(r) => Ok(r),
        other => Err(unexpected_reply(&other)),
    }
}

/// Sets vcpu-proc's trace state (before its VM is created). A failure
/// only loses trace lines: it is logged.
pub fn replay_vcpu(m: &Machine, link: &VcpuLink) {
    if let Err(e) = m.trace.replay(Process::Vcpu, &vcpu_call(link)) {
        tracing::warn!("cannot set vcpu-proc's trace points: {}", e.desc);
    }
}

/// Sets a (re)started block-proc's trace state. A failure only loses
/// trace lines (a worker that fails is restarted and replayed anyway).
pub fn replay_block(m: &Machine, link: &BlockLink) {
    if let Err(e) = m.trace.replay(Process::Block, &block_call(link)) {
        tracing::warn!("cannot set block-proc's trace points: {}", e.desc);
    }
}

/// Sets a (re)started net-proc's trace state, before it serves anything
/// else. A failure only loses trace lines.
pub fn replay_net(m: &Machine, link: &NetLink) {
    if let Err(e) = m.trace.replay(Process::Net, &net_call(link)) {
        tracing::warn!("cannot set net-proc's trace points: {}", e.desc);
    }
}

impl Machine {
    /// The trace state.
    pub fn trace(&self) -> &TraceState {
        &self.trace
    }

    /// The points of every process with their current states: the live
    /// workers are asked (one request each); a worker that cannot answer
    /// (restarting, crashed) is described by the desired state.
    pub fn trace_points(&self) -> Vec<(PointDesc, VcpuMask)> {
        let (catalogs, desired) = {
            let inner = lock(&self.trace.inner);
            (inner.catalogs.clone(), inner.desired.clone())
        };
        let mut out = Vec::new();
        for (process, descs) in &catalogs {
            let live = match process {
                Process::Broker => Some(ipc_proto::trace::states(crate::trace::POINTS)),
                Process::Vcpu => self.live_vcpu().and_then(|l| query(&vcpu_call(&l))),
                Process::Block => self.live_block().and_then(|l| query(&block_call(&l))),
                Process::Net => self.live_net().and_then(|l| query(&net_call(&l))),
            };
            match live {
                Some(states) => out.extend(states.into_iter().map(|s| {
                    (
                        PointDesc {
                            name: s.name,
                            per_vcpu: s.per_vcpu,
                        },
                        s.vcpus,
                    )
                })),
                None => out.extend(
                    descs
                        .iter()
                        .map(|d| (d.clone(), desired.get(&d.name).copied().unwrap_or_default())),
                ),
            }
        }
        out
    }

    /// `trace-event-set-state`: checks, changes the desired state, and
    /// sends each process whose points changed its new state.
    pub fn trace_set(&self, name: &str, enable: bool, vcpu: Option<i64>) -> Result<(), FlatError> {
        let mut inner = lock(&self.trace.inner);
        let points: Vec<PointDesc> = inner.catalogs.values().flatten().cloned().collect();
        let vcpu = query::check(&points, name, vcpu, self.cpu_count())?;
        let mut changed = Vec::new();
        for (process, descs) in inner.catalogs.clone() {
            for d in descs.iter().filter(|d| query::selects(d, name, vcpu)) {
                let mut mask = inner.desired.get(&d.name).copied().unwrap_or_default();
                match vcpu {
                    Some(v) => mask.set(v, enable),
                    None if enable => mask = VcpuMask::ALL,
                    None => mask = VcpuMask::NONE,
                }
                set_desired(&mut inner.desired, &d.name, Some(mask));
                if !changed.contains(&process) {
                    changed.push(process);
                }
            }
        }
        for process in changed {
            let sent = match process {
                Process::Broker => {
                    apply_own(&inner);
                    Ok(())
                }
                Process::Vcpu => match self.live_vcpu() {
                    Some(l) => send(&inner, process, &vcpu_call(&l), false),
                    None => Ok(()),
                },
                // A restarting block-proc gets the new state in its replay.
                Process::Block => match self.live_block() {
                    Some(l) => send(&inner, process, &block_call(&l), false),
                    None => Ok(()),
                },
                // Likewise a restarting net-proc.
                Process::Net => match self.live_net() {
                    Some(l) => send(&inner, process, &net_call(&l), false),
                    None => Ok(()),
                },
            };
            if let Err(e) = sent {
                tracing::info!("trace state of {process:?} not sent now: {}", e.desc);
            }
        }
        Ok(())
    }

    fn live_vcpu(&self) -> Option<Arc<VcpuLink>> {
        lock(&self.vcpu)
            .as_ref()
            .filter(|w| !w.link.is_broken())
            .map(|w| w.link.clone())
    }

    fn live_block(&self) -> Option<Arc<BlockLink>> {
        lock(&self.block)
            .as_ref()
            .filter(|w| !w.link.is_broken())
            .map(|w| w.link.clone())
    }

    fn live_net(&self) -> Option<Arc<NetLink>> {
        lock(&self.net)
            .as_ref()
            .filter(|w| !w.link.is_broken())
            .map(|w| w.link.clone())
    }
}

fn query(call: &Call<'_>) -> Option<Vec<PointState>> {
    match call(TraceRequest::Query, &[]) {
        Ok(TraceReply::Points(p)) => Some(p),
        Err(e) => {
            tracing::info!("trace query answered from the desired state: {}", e.desc);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(pattern: &str, enable: bool) -> TraceOp {
        TraceOp {
            pattern: pattern.into(),
            enable,
            origin: "test".into(),
        }
    }

    fn point(name: &str) -> PointState {
        PointState {
            name: name.into(),
            per_vcpu: false,
            vcpus: VcpuMask::NONE,
        }
    }

    #[test]
    fn command_line_operations_apply_in_order_to_each_learned_catalog() {
        let mut inner = Inner {
            startup: vec![op("virtio_*", true), op("virtio_mmio_read", false)],
            ..Inner::default()
        };
        learn(
            &mut inner,
            Process::Vcpu,
            &[
                point("virtio_mmio_read"),
                point("virtio_mmio_write"),
                point("kvm_exit_io_in"),
            ],
        );
        learn(&mut inner, Process::Block, &[point("virtio_blk_request")]);
        let names =
            |p| -> Vec<String> { enabled_of(&inner, p).into_iter().map(|e| e.name).collect() };
        assert_eq!(names(Process::Vcpu), ["virtio_mmio_write"]);
        assert_eq!(names(Process::Block), ["virtio_blk_request"]);
    }
}
