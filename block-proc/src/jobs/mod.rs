//! Block jobs (QEMU's job model, the data side): `block-stream` and
//! `blockdev-mirror` run on a thread each, report progress checkpoints,
//! readiness, errors and their end to the broker, which keeps the job's
//! status machine and desired state (`broker/src/machine/jobs.rs`) and
//! restarts an unfinished job from its checkpoint after a block-proc
//! restart.
//!
//! - [`control`]: pause, cancel, complete, speed limit.
//! - [`dirty`]: the mirror's dirty bitmap.
//! - [`stream`], [`mirror`]: the jobs.

pub mod control;
pub mod dirty;
pub mod mirror;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::block_jobs::{JobEvent, JobKind, JobOp, JobSpec, OnError};

use crate::block::{Graph, Node};
use control::Control;

/// Errors of job requests; `Display` is the message the broker passes on.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such job in this block-proc.
    #[error("Job '{0}' is not running in the block worker")]
    NotFound(String),
    /// A job with this id runs already.
    #[error("Job ID '{0}' already in use")]
    Duplicate(String),
    /// A node is missing or unsuitable.
    #[error("{0}")]
    Invalid(String),
    /// Finalize before the job's work ended (after a restart it runs
    /// again first).
    #[error("Job '{0}' has not finished its work yet")]
    NotFinished(String),
    /// The job's final graph change failed.
    #[error("{0}")]
    Finalize(String),
}

/// How often (bytes) a job reports a progress checkpoint at least.
const CHECKPOINT_BYTES: u64 = 4 << 20;
/// How often (time) a job reports progress at least.
const CHECKPOINT_TIME: Duration = Duration::from_millis(50);

/// Sends a job's events, progress at most every [`CHECKPOINT_TIME`] or
/// [`CHECKPOINT_BYTES`].
pub struct Reporter {
    id: String,
    tx: Sender<JobEvent>,
    last: (Instant, u64),
}

impl Reporter {
    fn new(id: &str, tx: Sender<JobEvent>) -> Self {
        Reporter {
            id: id.to_owned(),
            tx,
            last: (Instant::now(), 0),
        }
    }

    /// Progress: `offset` of `len` done, resume point `checkpoint`.
    pub fn progress(&mut self, offset: u64, len: u64, checkpoint: u64, force: bool) {
        if !force
            && self.last.0.elapsed() < CHECKPOINT_TIME
            && offset.abs_diff(self.last.1) < CHECKPOINT_BYTES
        {
            return;
        }
        self.last = (Instant::now(), offset);
        let _ = self.tx.send(JobEvent::Progress {
            id: self.id.clone(),
            offset,
            len,
            checkpoint,
        });
    }

    /// Any other event.
    pub fn send(&self, ev: JobEvent) {
        let _ = self.tx.send(ev);
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What a job does on an I/O error (QEMU's `block_job_error_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail the job.
    Report,
    /// Go on.
    Ignore,
    /// Pause until resumed.
    Stop,
}

/// The action `on` asks for error `e`.
pub fn action(on: OnError, e: &std::io::Error) -> Action {
    match on {
        OnError::Report => Action::Report,
        OnError::Ignore => Action::Ignore,
        OnError::Stop => Action::Stop,
        OnError::Enospc if e.raw_os_error() == Some(libc::ENOSPC) => Action::Stop,
        OnError::Enospc => Action::Report,
    }
}

/// Reports an I/O error of `operation` and applies `on`: returns the
/// error when the job must fail; pauses it on `stop`.
pub fn on_io_error(
    r: &Reporter,
    ctl: &Control,
    on: OnError,
    operation: &str,
    e: std::io::Error,
) -> Result<(), String> {
    let a = action(on, &e);
    if a == Action::Stop {
        // Paused before the event goes out: a resume sent as soon as the
        // client sees the pause must find the job paused, or it is lost
        // and the job stays paused.
        ctl.set_paused(true);
    }
    r.send(JobEvent::Error {
        id: r.id().to_owned(),
        operation: operation.to_owned(),
        action: match a {
            Action::Report => "report",
            Action::Ignore => "ignore",
            Action::Stop => "stop",
        }
        .to_owned(),
        nospace: e.raw_os_error() == Some(libc::ENOSPC),
    });
    match a {
        Action::Report => Err(crate::block::graph::strerror(&e)),
        Action::Ignore | Action::Stop => Ok(()),
    }
}

/// The state a job's final step needs.
pub enum Finish {
    /// A stream: rewrite the top's backing link.
    Stream(stream::Finish),
    /// A mirror: last copies, then the pivot.
    Mirror(mirror::Finish),
}

struct Running {
    ctl: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    finish: Finish,
}

/// The jobs of this block-proc.
#[derive(Default)]
pub struct Jobs {
    jobs: BTreeMap<String, Running>,
}

/// A buffer for one copy of `len` bytes.
pub(crate) fn buffer(len: usize) -> std::io::Result<crate::block::iobuf::AlignedBuf> {
    crate::block::iobuf::AlignedBuf::new(len.div_ceil(4096) * 4096)
}

fn node(graph: &Graph, name: &str) -> Result<Arc<Node>, JobError> {
    graph.get(name).ok_or_else(|| {
        JobError::Invalid(format!(
            "Cannot find device='{name}' nor node-name='{name}'"
        ))
    })
}

impl Jobs {
    /// Starts `spec` on the nodes of `graph`; its events go to `tx`.
    pub fn start(
        &mut self,
        spec: JobSpec,
        graph: &Graph,
        tx: Sender<JobEvent>,
    ) -> Result<(), JobError> {
        if self.jobs.contains_key(&spec.id) {
            return Err(JobError::Duplicate(spec.id));
        }
        let paused = spec.resume.is_some_and(|r| r.paused);
        let ctl = Arc::new(Control::new(spec.speed, paused));
        if spec.resume.is_some_and(|r| r.completing) {
            ctl.complete();
        }
        let rep = Reporter::new(&spec.id, tx);
        let (thread, finish) = match &spec.kind {
            JobKind::Stream { node: n, .. } => {
                let top = node(graph, n)?;
                let (t, f) = stream::start(&spec, top, ctl.clone(), rep)?;
                (t, Finish::Stream(f))
            }
            JobKind::Mirror {
                source,
                target,
                replaces,
                ..
            } => {
                let s = node(graph, source)?;
                let t = node(graph, target)?;
                let r = replaces.as_ref().map(|r| node(graph, r)).transpose()?;
                let (t, f) = mirror::start(&spec, s, t, ctl.clone(), rep)?;
                (t, Finish::Mirror(f.replacing(r)))
            }
        };
        self.jobs.insert(
            spec.id.clone(),
            Running {
                ctl,
                thread: Some(thread),
                finish,
            },
        );
        Ok(())
    }

    /// Applies `op` to job `id`.
    pub fn control(&mut self, id: &str, op: JobOp) -> Result<(), JobError> {
        if op == (JobOp::Finalize { commit: false }) && !self.jobs.contains_key(id) {
            // Dropping a job this worker never ran (it was restarted).
            return Ok(());
        }
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        match op {
            JobOp::Pause => job.ctl.set_paused(true),
            JobOp::Resume => job.ctl.set_paused(false),
            JobOp::SetSpeed(s) => job.ctl.set_speed(s),
            JobOp::Cancel { force } => job.ctl.cancel(force),
            JobOp::Complete => job.ctl.complete(),
            JobOp::Finalize { commit } => {
                if !job.ctl.finished() {
                    return Err(JobError::NotFinished(id.to_owned()));
                }
                // The thread has sent `Finished`: it ends right after.
                if let Some(t) = job.thread.take() {
                    let _ = t.join();
                }
                let Some(job) = self.jobs.remove(id) else {
                    return Err(JobError::NotFound(id.to_owned()));
                };
                let soft = job.ctl.cancelled() != Some(true);
                return match job.finish {
                    Finish::Stream(f) => f.finalize(commit),
                    Finish::Mirror(f) => f.finalize(commit, soft),
                }
                .map_err(JobError::Finalize);
            }
        }
        Ok(())
    }

    /// Whether a job uses node `name` (it may not be deleted then).
    pub fn uses(&self, name: &str) -> Option<&'static str> {
        self.jobs.values().find_map(|j| match &j.finish {
            Finish::Stream(f) if f.uses(name) => Some("stream"),
            Finish::Mirror(f) if f.uses(name) => Some("mirror"),
            Finish::Stream(_) | Finish::Mirror(_) => None,
        })
    }
}
