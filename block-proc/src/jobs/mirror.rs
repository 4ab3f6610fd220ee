//! `blockdev-mirror` in QEMU's default (background) copy mode: the job's
//! tap marks every guest write to the source in the job's dirty bitmap
//! once it completed; the copier takes dirty runs (clearing their bits
//! before it reads the source, so a write racing a copy is copied again)
//! and writes them to the target. The first sweep covers what `sync`
//! asks (the whole disk, the top image's allocation, or nothing); once it
//! is done and nothing is dirty, the job is ready (`BLOCK_JOB_READY`) and
//! keeps copying new writes as they come.
//!
//! Finalize drains the source (the guest's requests wait, those in flight
//! complete), copies what is still dirty, so the target equals the source
//! at that instant, and, when the job was completed (not cancelled),
//! redirects the source's requests to the target: the device now runs on
//! the target without the guest noticing (`Node::hooks`).
//!
//! After a block-proc restart the dirty bitmap is gone: a job resumed from
//! checkpoint C first compares `[0, C)` of source and target (reading
//! both, writing where they differ), while the new bitmap already tracks
//! guest writes, then copies `[C, end)` as its first sweep would have. A
//! mirror that was ready (C = end) compares the whole disk and is ready
//! again.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipc_proto::block_jobs::{JobEvent, JobKind, JobSpec, MirrorSync, OnError};

use super::control::{Control, Gate};
use super::dirty::Dirty;
use super::{buffer, on_io_error, Action, JobError, Reporter};
use crate::block::hooks::Tap;
use crate::block::iobuf::{all_zero, slice_of, AlignedBuf};
use crate::block::qcow2::Allocation;
use crate::block::Node;

/// Marks completed guest writes dirty and wakes the copier.
struct MirrorTap {
    dirty: Arc<Dirty>,
    ctl: Arc<Control>,
}

impl Tap for MirrorTap {
    fn write(
        &self,
        offset: u64,
        len: u64,
        io: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        let r = io();
        self.dirty.set(offset, len);
        self.ctl.kick();
        r
    }
}

/// What the mirror's finalize needs.
pub struct Finish {
    source: Arc<Node>,
    target: Arc<Node>,
    /// The quorum child the target replaces (`replaces`), if not the source.
    replaces: Option<Arc<Node>>,
    dirty: Arc<Dirty>,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    chunk: u64,
}

impl Finish {
    /// The target takes `child`'s place under the source quorum at the
    /// pivot (None: the source's own place).
    pub fn replacing(mut self, child: Option<Arc<Node>>) -> Self {
        self.replaces = child;
        self
    }

    /// Whether the job uses node `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.source.name == name || self.target.name == name
    }

    /// Under a drained source: the last copies when the mirror was ready
    /// (`soft`: not force-cancelled), the tap removed, and with `commit`
    /// the pivot to the target.
    pub fn finalize(self, commit: bool, soft: bool) -> Result<(), String> {
        let _d = self.source.hooks.drain();
        let sync = soft && self.ready.load(Ordering::SeqCst) && !self.failed.load(Ordering::SeqCst);
        if sync {
            let mut buf = buffer(self.chunk as usize).map_err(|e| e.to_string())?;
            while let Some((off, len)) = self.dirty.take(0, self.chunk) {
                let len = len.min(self.source.size().saturating_sub(off));
                copy(&self.source, &self.target, &mut buf, off, len, false)
                    .map_err(|(_, e)| format!("mirror: last copy failed: {e}"))?;
            }
            self.target
                .flush()
                .map_err(|e| format!("mirror: flushing the target failed: {e}"))?;
        }
        self.source.hooks.set_tap(None);
        if commit && sync {
            match &self.replaces {
                Some(child) => {
                    let q =
                        self.source.driver.as_quorum().ok_or_else(|| {
                            format!("mirror: '{}' is not a quorum", self.source.name)
                        })?;
                    q.replace_child(&child.name, self.target.clone())
                        .map_err(|e| e.to_string())?;
                    self.target.acquire();
                    child.release();
                }
                None => {
                    self.target.acquire();
                    self.source.release();
                    self.source.hooks.set_redirect(Some(self.target.clone()));
                }
            }
        }
        Ok(())
    }
}

/// Starts the mirror of `spec` from `source` to `target`.
pub fn start(
    spec: &JobSpec,
    source: Arc<Node>,
    target: Arc<Node>,
    ctl: Arc<Control>,
    mut rep: Reporter,
) -> Result<(JoinHandle<()>, Finish), JobError> {
    let JobKind::Mirror {
        sync,
        granularity,
        buf_size,
        ..
    } = spec.kind
    else {
        return Err(JobError::Invalid("not a mirror".into()));
    };
    if target.size() < source.size() {
        return Err(JobError::Invalid(
            "Source and target image have different sizes".into(),
        ));
    }
    let size = source.size();
    let dirty = Arc::new(Dirty::new(size, granularity));
    let chunk = buf_size.clamp(granularity, 4 << 20) / granularity * granularity;
    let tap = Arc::new(MirrorTap {
        dirty: dirty.clone(),
        ctl: ctl.clone(),
    });
    {
        let _d = source.hooks.drain();
        source.hooks.set_tap(Some(tap));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let job = Job {
        source: source.clone(),
        target: target.clone(),
        dirty: dirty.clone(),
        ctl,
        sync,
        chunk,
        size,
        on_source: spec.on_source_error,
        on_target: spec.on_target_error,
        copied: 0,
        ready: ready.clone(),
    };
    let resume = spec.resume;
    let f2 = failed.clone();
    let thread = std::thread::Builder::new()
        .name(format!("job-{}", spec.id))
        .spawn(move || {
            let mut job = job;
            let end = job.run(&mut rep, resume);
            let (error, cancelled) = match end {
                Ok(c) => (None, c),
                Err(e) => {
                    f2.store(true, Ordering::SeqCst);
                    (Some(e), false)
                }
            };
            job.ctl.mark_finished();
            rep.send(JobEvent::Finished {
                id: rep.id().to_owned(),
                error,
                cancelled,
            });
        })
        .map_err(|e| JobError::Invalid(format!("cannot start the job thread: {e}")))?;
    Ok((
        thread,
        Finish {
            source,
            target,
            replaces: None,
            dirty,
            ready,
            failed,
            chunk,
        },
    ))
}

struct Job {
    source: Arc<Node>,
    target: Arc<Node>,
    dirty: Arc<Dirty>,
    ctl: Arc<Control>,
    sync: MirrorSync,
    chunk: u64,
    size: u64,
    on_source: OnError,
    on_target: OnError,
    copied: u64,
    ready: Arc<AtomicBool>,
}

/// Copies `[off, off + len)` from `src` to `dst` (`compare`: only where
/// they differ); returns the bytes written; the error says which side
/// failed.
fn copy(
    src: &Node,
    dst: &Node,
    buf: &mut AlignedBuf,
    off: u64,
    len: u64,
    compare: bool,
) -> Result<u64, (&'static str, io::Error)> {
    if len == 0 {
        return Ok(0);
    }
    if let Some(q) = src.driver.as_qcow2() {
        if let Ok((Allocation::Unallocated, n)) = q.allocation(off, len) {
            if n >= len && !compare {
                dst.write_zeroes(off, len, false)
                    .map_err(|e| ("write", e))?;
                return Ok(len);
            }
        }
    }
    let b = &mut buf.as_mut_slice()[..len as usize];
    src.driver
        .read(&[slice_of(b)], off)
        .map_err(|e| ("read", e))?;
    if compare {
        let mut other = buffer(len as usize).map_err(|e| ("read", e))?;
        let o = &mut other.as_mut_slice()[..len as usize];
        dst.driver
            .read(&[slice_of(o)], off)
            .map_err(|e| ("read", e))?;
        if o == &*b {
            return Ok(0);
        }
    }
    let s = [slice_of(b)];
    if !compare && all_zero(&s) {
        dst.write_zeroes(off, len, false)
            .map_err(|e| ("write", e))?;
        return Ok(len);
    }
    dst.write(&s, off, len).map_err(|e| ("write", e))?;
    Ok(len)
}

impl Job {
    /// Reports READY once.
    fn mark_ready(&self, rep: &mut Reporter, checkpoint: u64) -> Result<(), String> {
        if !self.ready.swap(true, Ordering::SeqCst) {
            self.target.flush().map_err(|e| e.to_string())?;
            self.progress(rep, checkpoint, true);
            rep.send(JobEvent::Ready {
                id: rep.id().to_owned(),
            });
        }
        Ok(())
    }

    fn progress(&self, rep: &mut Reporter, checkpoint: u64, force: bool) {
        let len = self.copied + self.dirty.dirty_bytes();
        rep.progress(self.copied, len, checkpoint, force);
    }

    /// Handles a copy error; `Err`: the job fails.
    fn error(
        &self,
        rep: &Reporter,
        off: u64,
        len: u64,
        op: &str,
        e: io::Error,
    ) -> Result<(), String> {
        let on = if op == "read" {
            self.on_source
        } else {
            self.on_target
        };
        let a = super::action(on, &e);
        on_io_error(rep, &self.ctl, on, op, e)?;
        if a != Action::Report {
            // Copied again later (ignore) or after the resume (stop).
            self.dirty.set(off, len);
        }
        Ok(())
    }

    /// Marks what the first sweep copies, from `from`.
    fn mark_first_sweep(&self, from: u64) {
        match self.sync {
            MirrorSync::None => {}
            MirrorSync::Full => self.dirty.set(from, self.size - from.min(self.size)),
            MirrorSync::Top => {
                let Some(q) = self.source.driver.as_qcow2() else {
                    return self.dirty.set(from, self.size - from.min(self.size));
                };
                let mut at = from;
                while at < self.size {
                    match q.allocation(at, self.size - at) {
                        Ok((Allocation::Top, n)) => {
                            self.dirty.set(at, n);
                            at += n;
                        }
                        Ok((_, n)) => at += n.max(512),
                        Err(_) => {
                            // Unknown: copy it.
                            self.dirty.set(at, self.size - at);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Runs the job; `Ok(true)`: cancelled (forced, or before ready).
    fn run(
        &mut self,
        rep: &mut Reporter,
        resume: Option<ipc_proto::block_jobs::Resume>,
    ) -> Result<bool, String> {
        let mut buf = buffer(self.chunk as usize).map_err(|e| e.to_string())?;
        let first = match self.sync {
            MirrorSync::None => self.size,
            MirrorSync::Full | MirrorSync::Top => resume.map_or(0, |r| r.offset.min(self.size)),
        };
        let first = if resume.is_some_and(|r| r.ready) {
            self.size
        } else {
            first
        };
        self.mark_first_sweep(first);
        // After a restart: compare what was copied before it.
        let compare_to = if resume.is_some() { first } else { 0 };
        let mut at = 0;
        while at < compare_to {
            if let Gate::Cancel { .. } = self.ctl.gate() {
                return Ok(true);
            }
            let len = self.chunk.min(compare_to - at);
            // Restoring what the crash may have lost: not throttled.
            if let Err((op, e)) = copy(&self.source, &self.target, &mut buf, at, len, true) {
                self.error(rep, at, len, op, e)?;
            }
            at += len;
        }
        self.copied = first.min(self.size);
        // The first sweep, then new writes as they come.
        let mut cursor = first;
        let mut checkpoint = first;
        loop {
            match self.ctl.gate() {
                Gate::Cancel { force } => {
                    return Ok(force || !self.ready.load(Ordering::SeqCst));
                }
                Gate::Go => {}
            }
            let step = self.ctl.step(self.chunk, self.dirty.granularity());
            // In sync once the first sweep is done and what is dirty fits
            // in one step (a busy guest keeps some data dirty all along;
            // finalize copies the rest with the source drained).
            if checkpoint >= self.size && self.dirty.dirty_bytes() <= step {
                self.mark_ready(rep, checkpoint)?;
                if self.ctl.completing() {
                    return Ok(false);
                }
            }
            let from = if checkpoint < self.size { cursor } else { 0 };
            match self.dirty.take(from, step) {
                Some((off, len)) => {
                    let len = len.min(self.size.saturating_sub(off));
                    match copy(&self.source, &self.target, &mut buf, off, len, false) {
                        Ok(_) => self.copied += len,
                        Err((op, e)) => self.error(rep, off, len, op, e)?,
                    }
                    if checkpoint < self.size {
                        cursor = off + len;
                        checkpoint = cursor;
                    }
                    self.ctl.throttle(len);
                    self.progress(rep, checkpoint, false);
                }
                None if checkpoint < self.size => {
                    checkpoint = self.size;
                    self.progress(rep, checkpoint, true);
                }
                None => {
                    if self.ctl.cancelled().is_some() || self.ctl.completing() {
                        continue;
                    }
                    self.ctl.wait_kick(Duration::from_millis(100));
                }
            }
        }
    }
}
