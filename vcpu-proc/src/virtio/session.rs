//! One vhost-user connection on a thread of its own.
//!
//! Nothing that waits for a backend runs on a vCPU thread or under the
//! transport lock for longer than [`REQUEST_DEADLINE`]: a [`Session`] owns
//! the connection on its own thread, runs the requests posted to it in
//! order, and hands results back through one-shot channels. A request is
//! bounded by the connection's watcher (`reconnect.rs`): when the session
//! thread has waited for one reply longer than the deadline, the watcher
//! shuts the socket down, the blocked request fails, the following ones
//! fail at once, and the device is reported disconnected (the reconnection
//! path then brings a new backend in).
//!
//! A deadline of our own is needed because the `vhost` crate's frontend
//! blocks in `recvmsg` and retries on EAGAIN, so a socket receive timeout
//! never ends a request; shutting the socket down does.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_proto::warn_limited;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::backend_req::{BackendChannel, BackendReqError, ConfigSink};
use super::reconnect::{WatchParams, Watcher};
use super::vhost_user::{Connection, VhostUserError};

/// How long one vhost-user request may wait for its reply. Shorter than
/// the controller's pause limit, so that a vCPU waiting for a device reset
/// still parks in time.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

/// What the session thread is waiting for, shared with the watcher that
/// enforces the deadline.
#[derive(Debug)]
pub struct Busy {
    since: Mutex<Option<(Instant, &'static str)>>,
    wake: EventFd,
}

impl Busy {
    /// Idle.
    pub fn new() -> std::io::Result<Self> {
        Ok(Busy {
            since: Mutex::new(None),
            wake: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        })
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Instant, &'static str)>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Request `op` starts now.
    pub fn begin(&self, op: &'static str) {
        *self.slot() = Some((Instant::now(), op));
        let _ = self.wake.write(1);
    }

    /// The request ended.
    pub fn end(&self) {
        *self.slot() = None;
    }

    /// Time left to the current request (None when idle), or the name of
    /// the request that is past its deadline.
    pub fn remaining(&self) -> Result<Option<Duration>, &'static str> {
        match *self.slot() {
            None => Ok(None),
            Some((t, op)) => match REQUEST_DEADLINE.checked_sub(t.elapsed()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(op),
            },
        }
    }

    /// Readable when a request began (the watcher recomputes its timeout).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Consumes the wake-up.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }
}

/// A request for the session thread: what it is (for the deadline's
/// log line) and what to do.
struct Job {
    op: &'static str,
    run: Box<dyn FnOnce(&mut Connection) + Send>,
}

/// The session's request queue: shared with its backend request channel,
/// and emptied (None) when the session ends so that the thread ends too.
type Jobs = Arc<Mutex<Option<Sender<Job>>>>;

fn send_job(jobs: &Jobs, job: Job) {
    if let Some(tx) = jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        let _ = tx.send(job);
    }
}

/// A result the session thread will deliver.
#[derive(Debug)]
pub struct Pending<T>(Receiver<T>);

impl<T> Pending<T> {
    /// Waits for the result; None if the session ended without running
    /// the request. Bounded: the watcher ends a request at its deadline
    /// and the requests queued behind it then fail at once.
    pub fn wait(self) -> Option<T> {
        // The margin covers the watcher's wake-up and the queued requests
        // failing on the shut-down socket.
        self.0.recv_timeout(REQUEST_DEADLINE * 2).ok()
    }
}

/// What the session found when it set itself up.
#[derive(Debug)]
pub struct Opened {
    /// The backend's virtio features (without PROTOCOL_FEATURES).
    pub device_features: u64,
    /// Queues the backend serves.
    pub queue_num: u16,
    /// The backend tracks inflight I/O (INFLIGHT_SHMFD negotiated).
    pub inflight: bool,
    /// The negotiated vhost-user protocol features (saved with a live
    /// device's vrings, `suspend.rs`).
    pub protocol: u64,
    /// The device config space, if the backend serves one
    /// (VHOST_USER_PROTOCOL_F_CONFIG).
    pub config: Option<Vec<u8>>,
}

/// Errors of opening a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A thread or eventfd could not be created.
    #[error("cannot start the vhost-user session")]
    Start(#[source] std::io::Error),
    /// The handshake failed (or hit the deadline).
    #[error("vhost-user handshake")]
    Handshake(#[source] VhostUserError),
    /// The backend request channel could not be set up.
    #[error("vhost-user handshake")]
    BackendReq(#[source] BackendReqError),
    /// The session thread ended without an answer.
    #[error("the vhost-user session thread ended during the handshake")]
    Gone,
}

/// A vhost-user connection served by its own thread.
#[derive(Debug)]
pub struct Session {
    jobs: Jobs,
    config: Arc<ConfigSink>,
    socket: UnixStream,
    watcher: Option<Watcher>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts the session thread and its watcher on `stream` and runs the
    /// handshake and GET_CONFIG (`config_len` bytes, when the backend
    /// serves a config space) there, waiting at
    /// most about [`REQUEST_DEADLINE`] per request.
    pub fn open(
        stream: UnixStream,
        max_queues: u16,
        config_len: u32,
        watch: impl FnOnce(Arc<Busy>) -> WatchParams,
    ) -> Result<(Session, Opened), SessionError> {
        let busy = Arc::new(Busy::new().map_err(SessionError::Start)?);
        let socket = stream.try_clone().map_err(SessionError::Start)?;
        let watched = stream.try_clone().map_err(SessionError::Start)?;
        let params = watch(busy.clone());
        let id = params.id.clone();
        let watcher = Watcher::start(watched, params).map_err(SessionError::Start)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let jobs: Jobs = Arc::new(Mutex::new(Some(tx)));
        let config = Arc::new(ConfigSink::default());
        let on_change = config_refresher(&jobs, &config, config_len, &id);
        let (opened_tx, opened_rx) = mpsc::channel();
        let name = id.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vu-session-{id}"))
            .spawn(move || {
                busy.begin("the handshake");
                let r = handshake(stream, max_queues, config_len, &name, on_change);
                busy.end();
                let (mut conn, _channel) = match r {
                    Ok((conn, opened, channel)) => {
                        let _ = opened_tx.send(Ok(opened));
                        (conn, channel)
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    busy.begin(job.op);
                    (job.run)(&mut conn);
                    busy.end();
                }
                conn.shutdown();
            })
            .map_err(SessionError::Start)?;
        let session = Session {
            jobs,
            config,
            socket,
            watcher: Some(watcher),
            thread: Some(thread),
        };
        match opened_rx.recv_timeout(REQUEST_DEADLINE * 2) {
            Ok(Ok(opened)) => Ok((session, opened)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                session.shutdown();
                Err(SessionError::Gone)
            }
        }
    }

    /// Queues `f` (named `op` in logs) on the session thread; its result
    /// comes back through the returned [`Pending`] (which may be dropped:
    /// the request still runs, in order with the others).
    pub fn post<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = mpsc::channel();
        send_job(
            &self.jobs,
            Job {
                op,
                run: Box::new(move |c: &mut Connection| {
                    let _ = tx.send(f(c));
                }),
            },
        );
        Pending(rx)
    }

    /// Where the config spaces the backend announces (CONFIG_CHANGE_MSG
    /// on the backend request channel) are delivered.
    pub fn config_sink(&self) -> &ConfigSink {
        &self.config
    }

    /// Hangs the connection up: the current request fails, the watcher
    /// reports the loss.
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// What a CONFIG_CHANGE_MSG does: queue a GET_CONFIG on the session
/// thread and deliver its result to `sink`.
fn config_refresher(
    jobs: &Jobs,
    sink: &Arc<ConfigSink>,
    config_len: u32,
    id: &str,
) -> impl Fn() + Send + Sync + 'static {
    let (jobs, sink, id) = (jobs.clone(), sink.clone(), id.to_string());
    move || {
        if config_len == 0 {
            // The frontend provides this config space: nothing to fetch.
            return;
        }
        let (sink, id) = (sink.clone(), id.clone());
        send_job(
            &jobs,
            Job {
                op: "GET_CONFIG after a config change",
                run: Box::new(
                    move |conn: &mut Connection| match conn.get_config(config_len) {
                        Ok(fresh) => sink.deliver(fresh),
                        Err(e) => {
                            warn_limited!(
                                "vhost-user device {id}: {}",
                                super::device::error_chain(&e)
                            );
                            if e.connection_lost() {
                                conn.shutdown();
                            }
                        }
                    },
                ),
            },
        );
    }
}

/// The session set-up: the vhost-user handshake, the backend request
/// channel if the backend offers one (before GET_CONFIG, so no change
/// after the first read is missed), and the config space.
fn handshake(
    stream: UnixStream,
    max_queues: u16,
    config_len: u32,
    id: &str,
    on_config_change: impl Fn() + Send + Sync + 'static,
) -> Result<(Connection, Opened, Option<BackendChannel>), SessionError> {
    let mut conn = Connection::handshake(stream, max_queues).map_err(SessionError::Handshake)?;
    let channel = if conn.has_backend_req() {
        match BackendChannel::open(&mut conn, id, on_config_change) {
            Ok(c) => Some(c),
            Err(e) => {
                conn.shutdown();
                return Err(SessionError::BackendReq(e));
            }
        }
    } else {
        None
    };
    // config_len 0: the frontend provides the config (`DeviceKind`).
    let config = if conn.serves_config() && config_len > 0 {
        match conn.get_config(config_len) {
            Ok(c) => Some(c),
            Err(e) => {
                conn.shutdown();
                return Err(SessionError::Handshake(e));
            }
        }
    } else {
        None
    };
    let opened = Opened {
        device_features: conn.device_features(),
        queue_num: conn.queue_num(),
        inflight: conn.tracks_inflight(),
        protocol: conn.protocol().bits(),
        config,
    };
    Ok((conn, opened, channel))
}

impl Drop for Session {
    /// Ends the session without reporting a loss: the watcher stops
    /// first, then the socket is shut down and the thread joined (its
    /// current request fails at once on the shut-down socket).
    fn drop(&mut self) {
        self.watcher = None;
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
