//! Bringing workers up and applying each one's policy when it exits:
//! block-proc and net-proc restart with capped backoff and are brought back
//! to the desired state; a dead vcpu-proc is a guest crash (status
//! `internal-error`) while the broker keeps answering QMP.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ipc_proto::envelope::error_chain;
use ipc_proto::vcpu::VcpuRequest;
use ipc_proto::{trace_point, FlatError, WorkerKind};
use serde_json::{json, Value};

use super::{devices, event_names, lock, vm_setup, BlockLink, Machine, VcpuLink, Worker};
use crate::trace;
use crate::workers::link::WorkerLink;
use crate::workers::spawn::{
    default_worker_dir, spawn_worker, SandboxIdentity, SpawnedWorker, WorkerSandbox,
};
use crate::workers::supervisor::{ExitStatus, WorkerExit};

/// Why a worker is being restarted, for the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Killed from outside (SIGKILL: an operator, a chaos test, the OOM
    /// killer): not the worker's fault, restart at once.
    Killed,
    /// It failed by itself (exit status, crash signal, SIGSYS) or could not
    /// be started: the sign of a crash loop.
    Failed,
}

/// Restart pacing. A killed worker is restarted at once — its downtime is
/// guest I/O downtime — unless kills come faster than
/// [`Backoff::BURST`] per [`Backoff::STABLE`]; a worker that fails by
/// itself is restarted at once the first time, then with a delay that
/// doubles from 20 ms up to [`Backoff::MAX`] while it keeps failing within
/// [`Backoff::STABLE`] of its previous restart.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Duration,
    last: Option<Instant>,
    recent: std::collections::VecDeque<Instant>,
    /// Restarts so far.
    pub restarts: u64,
}

impl Backoff {
    /// The longest delay between restarts.
    pub const MAX: Duration = Duration::from_secs(2);
    /// Uptime after which a failure counts as the first again.
    pub const STABLE: Duration = Duration::from_secs(10);
    /// Immediate restarts of killed workers allowed per [`Backoff::STABLE`].
    pub const BURST: usize = 100;
    const FIRST: Duration = Duration::from_millis(20);

    /// The delay before the next restart, at `now`, for a worker that
    /// ended because of `cause`.
    pub fn next_delay(&mut self, now: Instant, cause: Cause) -> Duration {
        let recent = self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::STABLE);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Self::STABLE)
        {
            self.recent.pop_front();
        }
        let flooded = self.recent.len() >= Self::BURST;
        self.delay = match (cause, recent, flooded, self.delay.is_zero()) {
            (Cause::Killed, _, false, _) | (Cause::Failed, false, _, _) => Duration::ZERO,
            (_, _, _, true) => Self::FIRST,
            (_, _, _, false) => (self.delay * 2).min(Self::MAX),
        };
        self.last = Some(now);
        self.recent.push_back(now);
        self.restarts += 1;
        self.delay
    }
}

/// Errors of bringing a worker up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be spawned.
    #[error("cannot spawn the {0} worker")]
    Spawn(&'static str, #[source] crate::workers::spawn::SpawnError),
    /// The handshake failed.
    #[error("the {0} worker failed its handshake")]
    Handshake(&'static str, #[source] ipc_proto::worker::StartupError),
    /// Resources could not be prepared.
    #[error("cannot prepare the VM")]
    Setup(#[from] vm_setup::SetupError),
    /// The worker refused the configuration.
    #[error("the {0} worker refused its configuration: {1}")]
    Refused(&'static str, FlatError),
    /// A `-device` could not be created or connected.
    #[error("{}", .0.desc)]
    Device(FlatError),
    /// `-run-with user=` names no usable identity.
    #[error("-run-with: {0}")]
    Identity(String),
    /// Thread or pidfd creation failed.
    #[error("cannot supervise the {0} worker")]
    Io(&'static str, #[source] std::io::Error),
}

fn worker_dir(m: &Machine) -> PathBuf {
    m.config()
        .worker_dir
        .clone()
        .unwrap_or_else(|| default_worker_dir().unwrap_or_default())
}

/// Where uids of VMs without `-run-with user=` start: the broker's pid is
/// added, so VMs running at the same time never share an identity.
pub const AUTO_UID_BASE: u32 = 1_000_000;

/// How this VM's workers are sandboxed: off, as `-run-with user=`'s
/// identity (a name from the user database or `UID[:GID]`), or as an
/// identity unique to this broker.
pub fn resolve_sandbox(cfg: &crate::cli::Config) -> Result<WorkerSandbox, StartError> {
    if !cfg.sandbox {
        return Ok(WorkerSandbox::Off);
    }
    let id = match cfg.run_with_user.as_deref() {
        None => {
            let uid = AUTO_UID_BASE + std::process::id();
            SandboxIdentity { uid, gid: uid }
        }
        Some(spec) => parse_identity(spec)?,
    };
    if id.uid == 0 || id.gid == 0 {
        return Err(StartError::Identity(format!(
            "'{}' is root; workers must not run as root",
            cfg.run_with_user.as_deref().unwrap_or_default()
        )));
    }
    Ok(WorkerSandbox::On(id))
}

fn parse_identity(spec: &str) -> Result<SandboxIdentity, StartError> {
    let (u, g) = spec
        .split_once(':')
        .map_or((spec, None), |(u, g)| (u, Some(g)));
    if let Ok(uid) = u.parse::<u32>() {
        let gid = match g {
            Some(g) => g
                .parse::<u32>()
                .map_err(|_| StartError::Identity(format!("invalid gid '{g}'")))?,
            None => uid,
        };
        return Ok(SandboxIdentity { uid, gid });
    }
    match nix::unistd::User::from_name(u) {
        Ok(Some(user)) => Ok(SandboxIdentity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }),
        Ok(None) => Err(StartError::Identity(format!("user '{u}' not found"))),
        Err(e) => Err(StartError::Identity(format!(
            "cannot look up user '{u}': {e}"
        ))),
    }
}

/// A just-started worker: its process guard and its link.
type LiveWorker<R, P, E> = (SpawnedWorker, Arc<WorkerLink<R, P, E>>);

/// Spawns `kind`, completes the handshake and starts its link.
pub(crate) fn bring_up<R, P, E>(
    m: &Arc<Machine>,
    kind: WorkerKind,
    on_event: impl Fn(&Arc<Machine>, E) + Send + 'static,
) -> Result<LiveWorker<R, P, E>, StartError>
where
    R: serde::Serialize + Send + 'static,
    P: serde::de::DeserializeOwned + Send + 'static,
    E: serde::de::DeserializeOwned + Send + 'static,
{
    let mut proc = spawn_worker(kind, &worker_dir(m), m.worker_sandbox())
        .map_err(|e| StartError::Spawn(kind.name(), e))?;
    let sock = proc.control.take().ok_or_else(|| {
        StartError::Io(
            kind.name(),
            std::io::Error::other("control socket already taken"),
        )
    })?;
    // A worker that never says hello is hung like any other: the
    // handshake gets the same deadline as every request.
    let timeout = m.config().worker_timeout;
    sock.set_read_timeout(Some(timeout))
        .and_then(|()| sock.set_write_timeout(Some(timeout)))
        .map_err(|e| StartError::Io(kind.name(), e))?;
    let handshake = sock
        .try_clone()
        .map_err(|e| StartError::Io(kind.name(), e))?;
    let (chan, _hello) = ipc_proto::worker::accept::<R, P, E>(sock, kind)
        .map_err(|e| StartError::Handshake(kind.name(), e))?;
    // From here on the link's reader waits for as long as the worker lives;
    // each request carries its own deadline.
    handshake
        .set_read_timeout(None)
        .and_then(|()| handshake.set_write_timeout(None))
        .map_err(|e| StartError::Io(kind.name(), e))?;
    drop(handshake);
    let weak: Weak<Machine> = Arc::downgrade(m);
    let link = WorkerLink::start(kind, proc.pid, chan, timeout, move |e| {
        if let Some(m) = weak.upgrade() {
            on_event(&m, e);
        }
    })
    .map_err(|e| StartError::Io(kind.name(), e))?;
    Ok((proc, link))
}

/// A spawned vcpu-proc that completed its handshake, not yet given a VM.
pub type SpawnedVcpu = (SpawnedWorker, Arc<VcpuLink>);

/// Spawns vcpu-proc and completes its handshake: the part of its start
/// that needs nothing from block-proc, so it runs while block-proc starts.
pub fn spawn_vcpu(m: &Arc<Machine>) -> Result<SpawnedVcpu, StartError> {
    bring_up(m, WorkerKind::Vcpu, |m: &Arc<Machine>, e| {
        m.on_vcpu_event(e)
    })
}

/// Creates the VM in `spawned` (from [`spawn_vcpu`]), with the `-device`
/// devices (attached at creation, or before the first `cont` with `-S`).
/// Configuration errors come before spawn errors. Returns the serial
/// socket path to remove at exit, if the broker created one.
pub fn start_vcpu(
    m: &Arc<Machine>,
    spawned: Result<SpawnedVcpu, StartError>,
) -> Result<Option<PathBuf>, StartError> {
    devices::apply_config(m).map_err(StartError::Device)?;
    let prepared = vm_setup::prepare(m.config())?;
    let (proc, link) = spawned?;
    // Before the VM exists, so its first exits are traced already.
    super::trace_state::replay_vcpu(m, &link);
    // Devices join at the first `cont` of a `-S` VM; an incoming VM's
    // must be there for its saved state to be loaded.
    let start_paused = prepared.config.start_paused && !prepared.config.incoming;
    let pending = if start_paused {
        Vec::new()
    } else {
        devices::connect_pending(m, prepared.fds.len()).map_err(StartError::Device)?
    };
    let mut fds: Vec<_> = prepared.fds.iter().map(|f| f.as_fd()).collect();
    fds.extend(pending.iter().map(|(_, s)| s.as_fd()));
    let ids: Vec<String> = pending.iter().map(|(c, _)| c.id.clone()).collect();
    let req = if pending.is_empty() {
        VcpuRequest::CreateVm(prepared.config.clone())
    } else {
        VcpuRequest::CreateVmWithDevices {
            config: prepared.config.clone(),
            devices: pending.iter().map(|(c, _)| c.clone()).collect(),
        }
    };
    let sockets: Vec<&std::os::unix::net::UnixStream> = pending.iter().map(|(_, s)| s).collect();
    let reply = devices::bounded(&sockets, || link.request(req, &fds));
    if let Err(e) = reply.and_then(super::expect_vcpu_done) {
        return Err(StartError::Refused("vcpu", e));
    }
    drop(fds);
    drop(pending);
    devices::mark_attached(m, &ids);
    if !start_paused {
        devices::mark_launched(m);
    }
    publish(m, &m.vcpu, proc, link, WorkerKind::Vcpu)?;
    Ok(prepared.serial_socket)
}

/// Starts block-proc (and replays the desired block state into it).
pub fn start_block(m: &Arc<Machine>) -> Result<(), StartError> {
    super::jobs::start_thread(m);
    let (proc, link): (SpawnedWorker, Arc<BlockLink>) =
        bring_up(m, WorkerKind::Block, |m: &Arc<Machine>, e| {
            m.on_block_event(e)
        })?;
    // Replay before publishing the link, so no QMP command reaches a
    // half-restored worker. A worker that fails it is dropped here (killed
    // and reaped) and was never watched: its exit starts nothing.
    super::block_state::replay_on(m, &link).map_err(|e| StartError::Refused("block", e))?;
    publish(m, &m.block, proc, link.clone(), WorkerKind::Block)?;
    // After publishing, under the trace state's lock: a trace-event-set-state
    // that ran meanwhile found this worker or is replayed here.
    super::trace_state::replay_block(m, &link);
    Ok(())
}

/// Makes a brought-up worker the current one of its slot, with a new
/// generation, wakes the callers waiting for it, and only then watches it:
/// the supervisor reports exits of published workers only.
pub(crate) fn publish<L: Send + Sync + 'static>(
    m: &Arc<Machine>,
    slot: &std::sync::Mutex<Option<Worker<L>>>,
    process: SpawnedWorker,
    link: Arc<L>,
    kind: WorkerKind,
) -> Result<(), StartError> {
    let generation = m.next_generation();
    let pid = process.pid;
    let pidfd = process
        .pidfd
        .try_clone()
        .map_err(|e| StartError::Io(kind.name(), e))?;
    *lock(slot) = Some(Worker {
        process,
        link,
        generation,
    });
    m.worker_published();
    let weak = Arc::downgrade(m);
    let watched = m.supervisor().watch(kind, pid, &pidfd, move |exit| {
        if let Some(m) = weak.upgrade() {
            on_exit(&m, exit, generation);
        }
    });
    if let Err(e) = watched {
        // Unwatched it must not serve: take it back (dropping kills it).
        let stale = lock(slot).take();
        drop(stale);
        return Err(StartError::Io(kind.name(), e));
    }
    Ok(())
}

/// The longest uninterrupted sleep of a restart's backoff.
const STEP: Duration = Duration::from_millis(20);

/// How long to wait for a dead worker's last events.
const LAST_EVENTS: Duration = Duration::from_millis(500);

pub(crate) fn exit_data(
    exit: &WorkerExit,
    action: &str,
    note: Option<sandbox::DeathNote>,
    hung: bool,
) -> Value {
    let mut data = json!({"worker": exit.kind.name(), "pid": exit.pid, "action": action});
    if let Some(map) = data.as_object_mut() {
        if hung {
            map.insert("reason".into(), json!("hung"));
        }
        if let Some(n) = note {
            tracing::error!("{} worker killed: {n}", exit.kind.name());
            map.insert(
                "syscall".into(),
                json!(n
                    .name()
                    .map_or_else(|| n.syscall.to_string(), str::to_owned)),
            );
        }
        match exit.status {
            ExitStatus::Code(c) => map.insert("exit-code".into(), json!(c)),
            ExitStatus::Signal(s) => map.insert("signal".into(), json!(ExitStatus::signal_name(s))),
        };
    }
    data
}

/// The forbidden syscall that killed `proc`, if that is how it died.
fn death_note(proc: Option<&SpawnedWorker>) -> Option<sandbox::DeathNote> {
    proc.and_then(|p| p.death_note.as_ref())
        .and_then(sandbox::death_note::read_note)
}

/// The link of the worker in `slot` if it is still generation `generation`.
fn current_link<L>(slot: &std::sync::Mutex<Option<Worker<L>>>, generation: u64) -> Option<Arc<L>> {
    lock(slot)
        .as_ref()
        .filter(|w| w.generation == generation)
        .map(|w| w.link.clone())
}

/// Applies the exited worker's policy. `generation` is the one the worker
/// was published with: the exit of a worker that is no longer the current
/// one (already replaced, or stopped by the broker) changes nothing.
fn on_exit(m: &Arc<Machine>, exit: WorkerExit, generation: u64) {
    // Let the link deliver the worker's last events (a guest shutdown or
    // debug exit) before judging the exit.
    let link_closed = match exit.kind {
        WorkerKind::Vcpu => current_link(&m.vcpu, generation).map(|l| l.wait_closed(LAST_EVENTS)),
        WorkerKind::Block => current_link(&m.block, generation).map(|l| l.wait_closed(LAST_EVENTS)),
        WorkerKind::Net => current_link(&m.net, generation).map(|l| l.wait_closed(LAST_EVENTS)),
    };
    let Some(link_closed) = link_closed else {
        tracing::debug!(
            "{} worker (pid {}) exited after it was replaced or stopped",
            exit.kind.name(),
            exit.pid
        );
        return;
    };
    tracing::debug!(
        "{} link closed after exit: {link_closed:?}",
        exit.kind.name()
    );
    if m.is_ending() {
        return;
    }
    let hung = m.take_hung(exit.pid);
    trace_point!(trace::worker_exit(exit.kind.name(), exit.pid, exit.status));
    tracing::warn!(
        "{} worker (pid {}) exited{}: {:?}",
        exit.kind.name(),
        exit.pid,
        if hung { " (killed as hung)" } else { "" },
        exit.status
    );
    match exit.kind {
        WorkerKind::Vcpu => {
            let dead = {
                let mut slot = lock(&m.vcpu);
                if slot.as_ref().map(|w| w.generation) != Some(generation) {
                    return;
                }
                slot.take()
            };
            m.mark_vcpu_crashed();
            m.dump.worker_died(m.events());
            let note = death_note(dead.as_ref().map(|w| &w.process));
            drop(dead);
            m.events().emit(
                event_names::WORKER_EXITED,
                Some(exit_data(&exit, "guest-crashed", note, hung)),
            );
            if hung {
                m.events().emit(
                    event_names::GUEST_CRASHED,
                    Some(json!({"detail": "the vCPU worker hung and was killed"})),
                );
            }
            m.events().emit("STOP", None);
        }
        WorkerKind::Block => {
            // The one restart owner: a restart in progress finishes (its
            // worker published and watched) before this exit is judged.
            let _owner = lock(&m.restart_owner);
            if m.is_ending() {
                return;
            }
            let note = {
                let slot = lock(&m.block);
                if slot.as_ref().map(|w| w.generation) != Some(generation) {
                    return;
                }
                death_note(slot.as_ref().map(|w| &w.process))
            };
            m.events().emit(
                event_names::WORKER_EXITED,
                Some(exit_data(&exit, "restart", note, hung)),
            );
            let down_since = Instant::now();
            devices::on_block_exit(m);
            let stale = lock(&m.block).take();
            drop(stale);
            let cause = match exit.status {
                ExitStatus::Signal(libc::SIGKILL) if !hung => Cause::Killed,
                ExitStatus::Signal(_) | ExitStatus::Code(_) => Cause::Failed,
            };
            restart_block(m, down_since, cause);
        }
        WorkerKind::Net => {
            let note = death_note(lock(&m.net).as_ref().map(|w| &w.process));
            super::netdevs::worker::on_exit(m, &exit, generation, hung, note);
        }
    }
}

/// Brings block-proc back; runs on the exit handler that owns the restart
/// until a worker is published (or the broker ends).
fn restart_block(m: &Arc<Machine>, down_since: Instant, cause: Cause) {
    let mut cause = cause;
    loop {
        let delay = lock(&m.restart).next_delay(Instant::now(), cause);
        // A restart that itself fails is the worker's (or the host's) fault.
        cause = Cause::Failed;
        // In steps, so an ending broker does not wait out the backoff.
        let until = Instant::now() + delay;
        while Instant::now() < until && !m.is_ending() {
            std::thread::sleep(until.saturating_duration_since(Instant::now()).min(STEP));
        }
        if m.is_ending() {
            return;
        }
        match start_block(m) {
            Ok(()) => {
                let pid = lock(&m.block).as_ref().map(|w| w.process.pid).unwrap_or(0);
                let restarts = lock(&m.restart).restarts;
                trace_point!(trace::worker_restart("block", pid, restarts));
                m.events().emit(
                    event_names::WORKER_RESTARTED,
                    Some(json!({
                        "worker": "block",
                        "pid": pid,
                        "restarts": restarts,
                        "downtime-ms": down_since.elapsed().as_millis() as u64,
                    })),
                );
                devices::reconnect_exports(m);
                return;
            }
            Err(e) => tracing::error!("restarting the block worker failed: {}", error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zombie children of this process whose command is `comm`.
    fn zombie_children(comm: &str) -> usize {
        let mut n = 0;
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for pid in list.split_whitespace() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                if stat.contains(&format!("({comm})")) && state == Some("Z") {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn fifty_failed_bring_ups_leave_no_zombie() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bulkhead-handshake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("block-proc");
        // Exits before its handshake: the broker's accept fails.
        std::fs::write(&exe, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = crate::cli::Config {
            worker_dir: Some(dir.clone()),
            sandbox: false,
            ..Default::default()
        };
        let (tx, _rx) = std::sync::mpsc::channel();
        let m = Machine::new(
            cfg,
            WorkerSandbox::Off,
            Arc::new(crate::qmp::events::EventBus::new()),
            crate::workers::supervisor::Supervisor::start().unwrap(),
            tx,
        );
        for i in 0..50 {
            let r = start_block(&m);
            assert!(matches!(r, Err(StartError::Handshake(..))), "{i}: {r:?}");
        }
        assert_eq!(zombie_children("block-proc"), 0);
        assert!(lock(&m.block).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numeric_identity_parses_with_and_without_gid() {
        assert_eq!(
            parse_identity("4000").unwrap(),
            SandboxIdentity {
                uid: 4000,
                gid: 4000
            }
        );
        assert_eq!(
            parse_identity("4000:5000").unwrap(),
            SandboxIdentity {
                uid: 4000,
                gid: 5000
            }
        );
        assert!(parse_identity("4000:x").is_err());
        assert!(parse_identity("no-such-user-bulkhead").is_err());
    }

    #[test]
    fn named_identity_comes_from_the_user_database() {
        assert_eq!(parse_identity("nobody").unwrap().uid, 65534);
    }

    #[test]
    fn root_identity_and_sandbox_off_are_resolved() {
        let mut cfg = crate::cli::Config {
            run_with_user: Some("0".into()),
            ..Default::default()
        };
        assert!(resolve_sandbox(&cfg).is_err());
        cfg.run_with_user = None;
        let WorkerSandbox::On(id) = resolve_sandbox(&cfg).unwrap() else {
            panic!("sandbox off")
        };
        assert_eq!(id.uid, AUTO_UID_BASE + std::process::id());
        cfg.sandbox = false;
        assert_eq!(resolve_sandbox(&cfg).unwrap(), WorkerSandbox::Off);
    }

    #[test]
    fn failing_worker_restarts_at_once_then_doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let t = Instant::now();
        assert_eq!(b.next_delay(t, Cause::Failed), Duration::ZERO);
        assert_eq!(b.next_delay(t, Cause::Failed), Duration::from_millis(20));
        assert_eq!(b.next_delay(t, Cause::Failed), Duration::from_millis(40));
        for _ in 0..20 {
            b.next_delay(t, Cause::Failed);
        }
        assert_eq!(b.next_delay(t, Cause::Failed), Backoff::MAX);
        assert_eq!(
            b.next_delay(t + Backoff::STABLE * 2, Cause::Failed),
            Duration::ZERO
        );
    }

    #[test]
    fn killed_worker_restarts_at_once_until_kills_flood() {
        let mut b = Backoff::default();
        let t = Instant::now();
        for _ in 0..Backoff::BURST {
            assert_eq!(b.next_delay(t, Cause::Killed), Duration::ZERO);
        }
        assert_eq!(b.next_delay(t, Cause::Killed), Duration::from_millis(20));
        assert_eq!(
            b.next_delay(t + Backoff::STABLE * 2, Cause::Killed),
            Duration::ZERO
        );
    }
}
