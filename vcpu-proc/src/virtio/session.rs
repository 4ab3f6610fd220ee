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

use nix::sys::eventfd::{EfdFlags, EventFd};

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
    /// The device config space.
    pub config: Vec<u8>,
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
    /// The session thread ended without an answer.
    #[error("the vhost-user session thread ended during the handshake")]
    Gone,
}

/// A vhost-user connection served by its own thread.
#[derive(Debug)]
pub struct Session {
    jobs: Option<Sender<Job>>,
    socket: UnixStream,
    watcher: Option<Watcher>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts the session thread and its watcher on `stream` and runs the
    /// handshake and GET_CONFIG (`config_len` bytes) there, waiting at
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
        let (jobs, rx) = mpsc::channel::<Job>();
        let (opened_tx, opened_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("vu-session-{id}"))
            .spawn(move || {
                busy.begin("the handshake");
                let r = handshake(stream, max_queues, config_len);
                busy.end();
                let mut conn = match r {
                    Ok((conn, opened)) => {
                        let _ = opened_tx.send(Ok(opened));
                        conn
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
            jobs: Some(jobs),
            socket,
            watcher: Some(watcher),
            thread: Some(thread),
        };
        match opened_rx.recv_timeout(REQUEST_DEADLINE * 2) {
            Ok(Ok(opened)) => Ok((session, opened)),
            Ok(Err(e)) => Err(SessionError::Handshake(e)),
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
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job {
                op,
                run: Box::new(move |c: &mut Connection| {
                    let _ = tx.send(f(c));
                }),
            });
        }
        Pending(rx)
    }

    /// Hangs the connection up: the current request fails, the watcher
    /// reports the loss.
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

fn handshake(
    stream: UnixStream,
    max_queues: u16,
    config_len: u32,
) -> Result<(Connection, Opened), VhostUserError> {
    let mut conn = Connection::handshake(stream, max_queues)?;
    // 0: the frontend provides the config space (see `DeviceKind`).
    let config = match config_len {
        0 => Vec::new(),
        len => match conn.get_config(len) {
            Ok(c) => c,
            Err(e) => {
                conn.shutdown();
                return Err(e);
            }
        },
    };
    let opened = Opened {
        device_features: conn.device_features(),
        queue_num: conn.queue_num(),
        inflight: conn.tracks_inflight(),
        config,
    };
    Ok((conn, opened))
}

impl Drop for Session {
    /// Ends the session without reporting a loss: the watcher stops
    /// first, then the socket is shut down and the thread joined (its
    /// current request fails at once on the shut-down socket).
    fn drop(&mut self) {
        self.watcher = None;
        self.jobs = None;
        self.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
