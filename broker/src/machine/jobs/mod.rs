//! Block jobs, the broker's side: each job's desired state (QEMU's status
//! machine in [`status`], parameters, the progress checkpoints block-proc
//! reports), the QMP events, and the restart of every unfinished job in a
//! restarted block-proc from its last checkpoint ([`replay_on`]).
//!
//! block-proc's job events are handled in order on one thread of their
//! own (not the link's reader, since finalizing sends requests); commands
//! and that thread serialise on the table's `ops` mutex.

pub mod status;

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};

use ipc_proto::block::BlockRequest;
use ipc_proto::block_jobs::{JobEvent, JobKind, JobOp, JobSpec, Resume};
use ipc_proto::FlatError;
use serde_json::{json, Value};

use super::{lock, BlockLink, Machine};
pub use status::{verb_error, Status, Verb};

/// One job as the user created it, with where it is.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// What block-proc runs (speed kept current).
    pub spec: JobSpec,
    /// QEMU's status.
    pub status: Status,
    /// Bytes done.
    pub offset: u64,
    /// Bytes in all.
    pub len: u64,
    /// Where a restarted job resumes.
    pub checkpoint: u64,
    /// Paused by the user (or an error with `stop`).
    pub user_paused: bool,
    /// `ok`, `failed` or `nospace`.
    pub io_status: &'static str,
    /// `auto-finalize`.
    pub auto_finalize: bool,
    /// `auto-dismiss`.
    pub auto_dismiss: bool,
    /// A mirror that was ready once.
    pub ready: bool,
    /// `block-job-complete` given.
    pub completing: bool,
    /// `block-job-cancel` given (`force`).
    pub cancel: Option<bool>,
    /// Why the job failed.
    pub error: Option<String>,
    /// block-proc reported the end of its work (this incarnation).
    worker_finished: bool,
    /// block-proc's work ended by a cancel.
    worker_cancelled: bool,
    /// A finalize to run once block-proc's work ends.
    finalize_requested: bool,
    /// The job has let go of its nodes (its end is being reported): a
    /// command sent after its BLOCK_JOB_COMPLETED/_CANCELLED finds them
    /// free, as in QEMU, where the whole end runs before the next command.
    released: bool,
}

impl JobRecord {
    /// QEMU's job type.
    pub fn kind(&self) -> &'static str {
        match self.spec.kind {
            JobKind::Stream { .. } => "stream",
            JobKind::Mirror { .. } => "mirror",
        }
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Whether the job still holds its nodes.
    fn live(&self) -> bool {
        !self.released && !matches!(self.status, Status::Concluded | Status::Null)
    }

    /// Why `blockdev-del` of `node` is refused while this job runs.
    pub fn refuses_del(&self, node: &str) -> Option<String> {
        if !self.live() {
            return None;
        }
        match &self.spec.kind {
            JobKind::Stream { node: n, .. } if n == node => Some(format!(
                "Node '{node}' is busy: block device is in use by block job: stream"
            )),
            JobKind::Mirror { source, .. } if source == node => Some(format!(
                "Node '{node}' is busy: block device is in use by block job: mirror"
            )),
            JobKind::Mirror { target, .. } if target == node => {
                Some(format!("Node {node} is in use"))
            }
            JobKind::Stream { .. } | JobKind::Mirror { .. } => None,
        }
    }
}

/// The jobs of the VM.
#[derive(Default)]
pub struct JobTable {
    jobs: Mutex<Vec<JobRecord>>,
    /// Serialises job commands and event handling.
    ops: Mutex<()>,
    events: Mutex<Option<Sender<JobEvent>>>,
}

impl JobTable {
    /// A copy of every job, in creation order.
    pub fn list(&self) -> Vec<JobRecord> {
        lock(&self.jobs).clone()
    }

    /// Passes a block-proc job event to the job thread.
    pub fn push(&self, ev: JobEvent) {
        match lock(&self.events).as_ref() {
            Some(tx) => {
                let _ = tx.send(ev);
            }
            None => tracing::warn!("job event without a job thread: {ev:?}"),
        }
    }

    /// Why `blockdev-del` of `node` is refused because of a job.
    pub fn refuses_del(&self, node: &str) -> Option<String> {
        lock(&self.jobs).iter().find_map(|j| j.refuses_del(node))
    }

    /// Whether a job with this id exists (in any status but null).
    pub fn exists(&self, id: &str) -> bool {
        lock(&self.jobs).iter().any(|j| j.id() == id)
    }
}

/// Starts the thread that handles block-proc's job events (once).
pub fn start_thread(m: &Arc<Machine>) {
    let mut ev = lock(&m.jobs.events);
    if ev.is_some() {
        return;
    }
    let (tx, rx) = channel::<JobEvent>();
    *ev = Some(tx);
    let weak: Weak<Machine> = Arc::downgrade(m);
    let spawned = std::thread::Builder::new()
        .name("block-jobs".into())
        .spawn(move || {
            for e in rx {
                let Some(m) = weak.upgrade() else { return };
                let ops = lock(&m.jobs.ops);
                on_event(&m, e);
                drop(ops);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the block job thread: {e}");
        *ev = None;
    }
}

fn emit(m: &Machine, name: &str, data: Value) {
    m.events().emit(name, Some(data));
}

/// Moves job `id` to `to`, with its JOB_STATUS_CHANGE.
fn set_status(m: &Machine, id: &str, to: Status) {
    let mut jobs = lock(&m.jobs.jobs);
    let Some(j) = jobs.iter_mut().find(|j| j.id() == id) else {
        return;
    };
    if j.status == to {
        return;
    }
    if !j.status.may_become(to) {
        tracing::warn!("job {id}: {:?} -> {to:?} is not in QEMU's table", j.status);
    }
    j.status = to;
    if to == Status::Null {
        jobs.retain(|j| j.id() != id);
    }
    drop(jobs);
    emit(
        m,
        "JOB_STATUS_CHANGE",
        json!({"id": id, "status": to.as_str()}),
    );
}

/// Runs `f` on job `id`'s record.
fn with_job<T>(m: &Machine, id: &str, f: impl FnOnce(&mut JobRecord) -> T) -> Option<T> {
    lock(&m.jobs.jobs).iter_mut().find(|j| j.id() == id).map(f)
}

/// QEMU's `BlockJobInfo`-style event data (`device`, `len`, `offset`,
/// `speed`, `type`).
fn job_data(j: &JobRecord) -> Value {
    json!({"device": j.id(), "len": j.len, "offset": j.offset,
        "speed": j.spec.speed, "type": j.kind()})
}

fn worker_gone(e: &FlatError) -> bool {
    e.desc.contains("worker is not running")
        || e.desc.contains("cannot reach the")
        || e.desc.contains("is restarting")
        || e.desc.contains("did not answer")
}

/// Sends `op` for job `id` to block-proc. A block-proc that is down or
/// restarting gets the desired state with the replay instead, and one
/// whose job already ended has nothing left to change.
fn send_op(m: &Machine, id: &str, op: JobOp) {
    let req = BlockRequest::JobControl {
        id: id.to_owned(),
        op,
    };
    if let Err(e) = m.block_request(req) {
        tracing::debug!(
            "job {id}: {op:?} not applied by the block worker now: {}",
            e.desc
        );
    }
}

/// Creates and starts a job (the arguments are checked).
pub fn create(
    m: &Machine,
    spec: JobSpec,
    auto_finalize: bool,
    auto_dismiss: bool,
) -> Result<(), FlatError> {
    let _ops = lock(&m.jobs.ops);
    if m.jobs.exists(&spec.id) {
        return Err(FlatError::generic(format!(
            "Job ID '{}' already in use",
            spec.id
        )));
    }
    let id = spec.id.clone();
    lock(&m.jobs.jobs).push(JobRecord {
        spec: spec.clone(),
        status: Status::Created,
        offset: 0,
        len: 0,
        checkpoint: 0,
        user_paused: false,
        io_status: "ok",
        auto_finalize,
        auto_dismiss,
        ready: false,
        completing: false,
        cancel: None,
        error: None,
        worker_finished: false,
        worker_cancelled: false,
        finalize_requested: false,
        released: false,
    });
    let started = m.across_block_restarts(|| {
        crate::machine::expect_done(m.block_request(BlockRequest::StartJob(spec.clone()))?)
    });
    if let Err(e) = started {
        lock(&m.jobs.jobs).retain(|j| j.id() != id);
        return Err(e);
    }
    emit(
        m,
        "JOB_STATUS_CHANGE",
        json!({"id": id, "status": "created"}),
    );
    set_status(m, &id, Status::Running);
    Ok(())
}

fn on_event(m: &Machine, ev: JobEvent) {
    match ev {
        JobEvent::Progress {
            id,
            offset,
            len,
            checkpoint,
        } => {
            tracing::debug!("job {id}: {offset}/{len}, checkpoint {checkpoint}");
            with_job(m, &id, |j| {
                j.offset = offset;
                j.len = len;
                j.checkpoint = checkpoint;
            });
        }
        JobEvent::Ready { id } => {
            let Some((was, status, data)) = with_job(m, &id, |j| {
                let was = j.ready;
                j.ready = true;
                (was, j.status, job_data(j))
            }) else {
                return;
            };
            if was {
                return;
            }
            match status {
                Status::Running => set_status(m, &id, Status::Ready),
                Status::Paused => {
                    // QEMU: ready while paused shows as standby.
                    set_status(m, &id, Status::Running);
                    set_status(m, &id, Status::Ready);
                    set_status(m, &id, Status::Standby);
                }
                Status::Created
                | Status::Ready
                | Status::Standby
                | Status::Waiting
                | Status::Pending
                | Status::Aborting
                | Status::Concluded
                | Status::Null => {}
            }
            emit(m, "BLOCK_JOB_READY", data);
        }
        JobEvent::Error {
            id,
            operation,
            action,
            nospace,
        } => {
            let stop = action == "stop";
            let paused = with_job(m, &id, |j| {
                if stop {
                    j.io_status = if nospace { "nospace" } else { "failed" };
                    let p = !j.user_paused;
                    j.user_paused = true;
                    Some((p, j.status))
                } else {
                    None
                }
            })
            .flatten();
            emit(
                m,
                "BLOCK_JOB_ERROR",
                json!({"device": id, "operation": operation, "action": action}),
            );
            match paused {
                Some((true, Status::Running)) => set_status(m, &id, Status::Paused),
                Some((true, Status::Ready)) => set_status(m, &id, Status::Standby),
                Some(_) | None => {}
            }
        }
        JobEvent::Finished {
            id,
            error,
            cancelled,
        } => {
            let Some(st) = with_job(m, &id, |j| {
                j.worker_finished = true;
                j.worker_cancelled = cancelled;
                if error.is_some() && j.error.is_none() {
                    j.error = error.clone();
                }
                (j.status, j.finalize_requested, j.auto_finalize)
            }) else {
                return;
            };
            match st {
                (Status::Pending, true, _) | (Status::Aborting, _, _) => finalize(m, &id),
                (Status::Pending, false, _) => {}
                (Status::Concluded | Status::Null, _, _) => {}
                (
                    Status::Created
                    | Status::Running
                    | Status::Paused
                    | Status::Ready
                    | Status::Standby
                    | Status::Waiting,
                    _,
                    auto,
                ) => {
                    if error.is_some() || cancelled {
                        set_status(m, &id, Status::Aborting);
                        finalize(m, &id);
                        return;
                    }
                    if matches!(st.0, Status::Paused) {
                        set_status(m, &id, Status::Running);
                    }
                    if matches!(st.0, Status::Standby) {
                        set_status(m, &id, Status::Ready);
                    }
                    set_status(m, &id, Status::Waiting);
                    set_status(m, &id, Status::Pending);
                    if auto {
                        finalize(m, &id);
                    } else if let Some(kind) = with_job(m, &id, |j| j.kind()) {
                        emit(m, "BLOCK_JOB_PENDING", json!({"type": kind, "id": id}));
                    }
                }
            }
        }
    }
}

/// Finalizes job `id` (pending, or aborting): block-proc applies or drops
/// its graph change, then the job concludes with QEMU's events. If
/// block-proc is down, the job runs again after the restart and is
/// finalized when that run ends.
pub fn finalize(m: &Machine, id: &str) {
    let Some(j) = with_job(m, id, |j| {
        j.finalize_requested = true;
        j.clone()
    }) else {
        return;
    };
    if !j.worker_finished {
        return;
    }
    let failed = j.error.is_some() || j.worker_cancelled;
    let commit = !failed
        && j.cancel.is_none()
        && match j.spec.kind {
            JobKind::Stream { .. } => true,
            JobKind::Mirror { .. } => j.completing,
        };
    let req = BlockRequest::JobControl {
        id: id.to_owned(),
        op: JobOp::Finalize { commit },
    };
    let answer = m.across_block_restarts(|| m.block_request(req.clone()));
    let mut error = j.error.clone();
    match answer {
        Ok(_) => {}
        Err(e) if worker_gone(&e) || e.desc.contains("has not finished its work") => {
            // A restarted worker runs the job again; its end finalizes.
            tracing::info!("job {id}: finalize waits for the job's run in the restarted worker");
            with_job(m, id, |r| r.worker_finished = false);
            return;
        }
        Err(e) => error = Some(e.desc),
    }
    if commit && error.is_none() {
        if let JobKind::Mirror {
            source,
            target,
            replaces,
            ..
        } = &j.spec.kind
        {
            match replaces {
                Some(r) => super::quorum_state::replaced_child(m, source, r, target),
                None => {
                    super::devices::repoint_drive(m, source, target);
                    super::block_state::repoint_exports(m, source, target);
                }
            }
        }
    }
    let j = with_job(m, id, |r| {
        r.error = error.clone();
        r.finalize_requested = false;
        r.released = true;
        r.clone()
    })
    .unwrap_or(j);
    if j.status != Status::Aborting && error.is_some() {
        set_status(m, id, Status::Aborting);
    }
    let mut data = job_data(&j);
    if let Some(e) = &error {
        data["error"] = json!(e);
    }
    let cancelled = j.worker_cancelled && j.error.is_none();
    emit(
        m,
        if cancelled {
            "BLOCK_JOB_CANCELLED"
        } else {
            "BLOCK_JOB_COMPLETED"
        },
        data,
    );
    set_status(m, id, Status::Concluded);
    if j.auto_dismiss {
        set_status(m, id, Status::Null);
    }
}

/// A QMP verb on job `id`: checks QEMU's verb table, updates the desired
/// state and tells block-proc.
pub fn verb(m: &Machine, id: &str, verb: Verb, arg: Option<bool>) -> Result<(), FlatError> {
    let _ops = lock(&m.jobs.ops);
    let Some(j) = with_job(m, id, |j| j.clone()) else {
        return Err(FlatError::generic("Job not found"));
    };
    if !j.status.accepts(verb) {
        return Err(FlatError::generic(verb_error(id, j.status, verb)));
    }
    match verb {
        Verb::Pause => {
            if j.user_paused {
                return Err(FlatError::generic("Job is already paused"));
            }
            with_job(m, id, |r| r.user_paused = true);
            send_op(m, id, JobOp::Pause);
            match j.status {
                Status::Running => set_status(m, id, Status::Paused),
                Status::Ready => set_status(m, id, Status::Standby),
                Status::Created
                | Status::Paused
                | Status::Standby
                | Status::Waiting
                | Status::Pending
                | Status::Aborting
                | Status::Concluded
                | Status::Null => {}
            }
        }
        Verb::Resume => {
            if !j.user_paused {
                return Err(FlatError::generic("Can't resume a job that was not paused"));
            }
            with_job(m, id, |r| {
                r.user_paused = false;
                r.io_status = "ok";
            });
            send_op(m, id, JobOp::Resume);
            match j.status {
                Status::Paused => set_status(m, id, Status::Running),
                Status::Standby => set_status(m, id, Status::Ready),
                Status::Created
                | Status::Running
                | Status::Ready
                | Status::Waiting
                | Status::Pending
                | Status::Aborting
                | Status::Concluded
                | Status::Null => {}
            }
        }
        Verb::Cancel => {
            let force = arg.unwrap_or(false);
            with_job(m, id, |r| r.cancel = Some(force));
            if j.worker_finished || matches!(j.status, Status::Waiting | Status::Pending) {
                with_job(m, id, |r| r.worker_cancelled = true);
                set_status(m, id, Status::Aborting);
                finalize(m, id);
            } else {
                send_op(m, id, JobOp::Cancel { force });
            }
        }
        Verb::Complete => {
            with_job(m, id, |r| r.completing = true);
            send_op(m, id, JobOp::Complete);
        }
        Verb::Finalize => finalize(m, id),
        Verb::Dismiss => set_status(m, id, Status::Null),
        Verb::SetSpeed => {}
    }
    Ok(())
}

/// `block-job-set-speed`.
pub fn set_speed(m: &Machine, id: &str, speed: u64) -> Result<(), FlatError> {
    let _ops = lock(&m.jobs.ops);
    let Some(status) = with_job(m, id, |j| j.status) else {
        return Err(FlatError::generic("Job not found"));
    };
    if !status.accepts(Verb::SetSpeed) {
        return Err(FlatError::generic(verb_error(id, status, Verb::SetSpeed)));
    }
    with_job(m, id, |j| j.spec.speed = speed);
    send_op(m, id, JobOp::SetSpeed(speed));
    Ok(())
}

/// Restarts every unfinished job in a restarted block-proc (after its
/// nodes, before its exports: the jobs' taps are in place before the
/// guest's first request), each from its last checkpoint.
pub fn replay_on(m: &Machine, link: &BlockLink) {
    for j in lock(&m.jobs.jobs).iter_mut() {
        if j.status == Status::Aborting {
            // Its end was not seen through: nothing runs in the new
            // worker; conclude it.
            j.worker_finished = true;
            m.jobs.push(JobEvent::Finished {
                id: j.id().to_owned(),
                error: None,
                cancelled: j.worker_cancelled,
            });
        }
    }
    let jobs: Vec<JobRecord> = lock(&m.jobs.jobs)
        .iter_mut()
        .filter(|j| {
            matches!(
                j.status,
                Status::Running
                    | Status::Paused
                    | Status::Ready
                    | Status::Standby
                    | Status::Waiting
                    | Status::Pending
            )
        })
        .map(|j| {
            j.worker_finished = false;
            j.clone()
        })
        .collect();
    for j in jobs {
        let mut spec = j.spec.clone();
        spec.resume = Some(Resume {
            offset: j.checkpoint,
            ready: j.ready,
            completing: j.completing || matches!(j.status, Status::Waiting | Status::Pending),
            paused: j.user_paused,
        });
        if let Some(force) = j.cancel {
            // A cancel not yet seen through: it still applies.
            tracing::info!("job {}: restarted with its cancel (force={force})", j.id());
        }
        match link.request(BlockRequest::StartJob(spec), &[]) {
            Ok(_) => {
                if let Some(force) = j.cancel {
                    let req = BlockRequest::JobControl {
                        id: j.id().to_owned(),
                        op: JobOp::Cancel { force },
                    };
                    let _ = link.request(req, &[]);
                }
                tracing::info!("job {}: resumed at {}", j.id(), j.checkpoint);
            }
            Err(e) => {
                tracing::warn!("job {}: cannot be resumed: {}", j.id(), e.desc);
                m.jobs.push(JobEvent::Finished {
                    id: j.id().to_owned(),
                    error: Some(e.desc),
                    cancelled: false,
                });
            }
        }
    }
}
