//! `block-stream`: copies into a qcow2 top image every range the top does
//! not hold from the images of its chain above the base, while the guest
//! keeps reading and writing; at the end (finalize) the top's backing link
//! is rewritten to the base, or to none.
//!
//! A copy never overwrites what the guest wrote: the job's tap makes every
//! guest write to the top hold a byte-range lock on guest offsets, and the
//! job checks a range's allocation and copies it under the same lock, so a
//! range the guest allocated in the top in the meantime is seen as
//! allocated and left alone. Restarting from any checkpoint is safe for
//! the same reason (only unallocated ranges are copied).

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use ipc_proto::block_jobs::{JobEvent, JobKind, JobSpec, OnError};

use super::control::{Control, Gate};
use super::{buffer, on_io_error, JobError, Reporter};
use crate::block::hooks::Tap;
use crate::block::iobuf::slice_of;
use crate::block::qcow2::{resolve_backing, Allocation};
use crate::block::range_lock::RangeLock;
use crate::block::Node;

/// Bytes looked at per step.
const CHUNK: u64 = 8 << 20;

/// Serialises guest writes against the job's copies.
struct StreamTap {
    lock: RangeLock,
}

impl Tap for StreamTap {
    fn write(
        &self,
        offset: u64,
        len: u64,
        io: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        let _g = self.lock.lock(offset, offset.saturating_add(len.max(1)));
        io()
    }
}

/// What the stream's finalize needs.
pub struct Finish {
    top: Arc<Node>,
    /// (name written into the header, resolved path, format).
    base: Option<(String, String, String)>,
    qcow2: bool,
}

impl Finish {
    /// Whether the job uses node `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.top.name == name
    }

    /// Removes the tap; with `commit`, rewrites the backing link.
    pub fn finalize(self, commit: bool) -> Result<(), String> {
        {
            let _d = self.top.hooks.drain();
            self.top.hooks.set_tap(None);
        }
        if !commit || !self.qcow2 {
            return Ok(());
        }
        let Some(q) = self.top.driver.as_qcow2() else {
            return Ok(());
        };
        let base = self
            .base
            .as_ref()
            .map(|(n, p, f)| (n.as_str(), p.as_str(), f.as_str()));
        q.set_backing_file(base).map_err(|e| {
            format!(
                "Could not change the backing file of '{}': {e}",
                self.top.name
            )
        })
    }
}

fn base_format(path: &str, q: &crate::block::qcow2::Qcow2Driver) -> String {
    // The format the chain was opened with: a qcow2 image names its own
    // backing, a raw one does not; probe like QEMU.
    if q.chain_is_qcow2(path) {
        "qcow2".into()
    } else {
        "raw".into()
    }
}

/// Starts the stream of `spec` on `top`.
pub fn start(
    spec: &JobSpec,
    top: Arc<Node>,
    ctl: Arc<Control>,
    mut rep: Reporter,
) -> Result<(JoinHandle<()>, Finish), JobError> {
    let JobKind::Stream {
        base, backing_file, ..
    } = &spec.kind
    else {
        return Err(JobError::Invalid("not a stream".into()));
    };
    let resume = spec.resume;
    let (limit, finish_base, qcow2) = match top.driver.as_qcow2() {
        None => (0, None, false),
        Some(q) => {
            let chain = q.chain();
            let fname = top.driver.image_info().filename;
            match base {
                None => (chain.len(), None, true),
                Some(b) => {
                    let resolved = resolve_backing(&fname, b);
                    match chain.iter().position(|p| *p == *b || *p == resolved) {
                        Some(i) => {
                            let path = chain[i].clone();
                            let name = backing_file.clone().unwrap_or_else(|| path.clone());
                            let fmt = base_format(&path, q);
                            (i, Some((name, path, fmt)), true)
                        }
                        // Finalized before a restart: nothing left to do.
                        None if resume.is_some() => (0, None, false),
                        None => {
                            return Err(JobError::Invalid(format!(
                                "Can't find '{b}' in the backing chain"
                            )))
                        }
                    }
                }
            }
        }
    };
    let tap = Arc::new(StreamTap {
        lock: RangeLock::default(),
    });
    {
        let _d = top.hooks.drain();
        top.hooks.set_tap(Some(tap.clone()));
    }
    let on_error = spec.on_source_error;
    let start = resume.map_or(0, |r| r.offset / CHUNK * CHUNK);
    let t = top.clone();
    let thread = std::thread::Builder::new()
        .name(format!("job-{}", spec.id))
        .spawn(move || {
            let end = run(&t, &tap, &ctl, &mut rep, start, limit, on_error);
            let (error, cancelled) = match end {
                Ok(true) => (None, true),
                Ok(false) => (t.flush().err().map(|e| e.to_string()), false),
                Err(e) => (Some(e), false),
            };
            ctl.mark_finished();
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
            top,
            base: finish_base,
            qcow2,
        },
    ))
}

/// Copies; `Ok(true)`: cancelled.
fn run(
    top: &Node,
    tap: &StreamTap,
    ctl: &Control,
    rep: &mut Reporter,
    start: u64,
    limit: usize,
    on_error: OnError,
) -> Result<bool, String> {
    let size = top.size();
    let mut buf = buffer(CHUNK as usize).map_err(|e| e.to_string())?;
    let mut off = start;
    // The first error `ignore` skipped: the job ends with it (so the
    // backing link, still needed for the skipped ranges, is kept), and
    // checkpoints stay before it (a restarted job copies it again).
    let mut ignored: Option<(u64, String)> = None;
    let checkpoint = |off: u64, ignored: &Option<(u64, String)>| {
        ignored.as_ref().map_or(off, |(at, _)| off.min(*at))
    };
    rep.progress(off, size, off, true);
    while off < size && limit > 0 {
        if let Gate::Cancel { .. } = ctl.gate() {
            return Ok(true);
        }
        let end = (off + ctl.step(CHUNK, 64 << 10)).min(size);
        let copied = {
            let _g = tap.lock.lock(off, end);
            copy_chunk(top, &mut buf, off, end, limit)
        };
        match copied {
            Ok(n) => {
                off = end;
                ctl.throttle(n);
            }
            Err(e) => {
                let ignore = super::action(on_error, &e) == super::Action::Ignore;
                let msg = crate::block::graph::strerror(&e);
                // QEMU's stream reports every error as a read: the copy
                // is one copy-on-read request.
                on_io_error(rep, ctl, on_error, "read", e)?;
                // ignore: skip the chunk; stop: retried after the resume.
                if ignore {
                    ignored.get_or_insert((off, msg));
                    off = end;
                }
            }
        }
        rep.progress(off, size, checkpoint(off, &ignored), false);
    }
    rep.progress(size, size, checkpoint(size, &ignored), true);
    match ignored {
        Some((_, e)) => Err(e),
        None => Ok(false),
    }
}

/// Copies the ranges of `[off, end)` the top lacks and an image above the
/// base holds; returns the bytes copied.
fn copy_chunk(
    top: &Node,
    buf: &mut crate::block::iobuf::AlignedBuf,
    off: u64,
    end: u64,
    limit: usize,
) -> Result<u64, io::Error> {
    let Some(q) = top.driver.as_qcow2() else {
        return Ok(0);
    };
    let mut at = off;
    let mut copied = 0;
    while at < end {
        let (a, n) = q.allocation(at, end - at)?;
        let n = n.min(end - at);
        if let Allocation::Backing(d) = a {
            if d <= limit {
                let b = &mut buf.as_mut_slice()[..n as usize];
                let s = [slice_of(b)];
                top.driver.read(&s, at)?;
                top.write_untapped(&s, at, n)?;
                copied += n;
            }
        }
        at += n;
    }
    Ok(copied)
}
