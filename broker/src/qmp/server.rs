//! The QMP server: one accept thread per listening socket, three threads
//! per session (reader, dispatcher, writer; see [`super::session`]), and an
//! orderly shutdown that flushes what sessions still have queued.
//!
//! Each session's output queue is bounded and shared by its replies and
//! its events: the writer drains it to the socket, so a client that stops
//! reading stalls only its own session, and once the queue is full the
//! event bus disconnects it.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::events::SESSION_QUEUE_DEPTH;
use super::registry::Registry;
use super::session::{Session, Work, CLOSE, REQUEST_QUEUE_DEPTH};
use super::wire;
use crate::machine::Machine;

/// A listening QMP socket.
pub struct QmpListener {
    /// The socket.
    pub listener: UnixListener,
    /// Its path, removed at shutdown if the broker created it.
    pub path: Option<PathBuf>,
    /// A client accepted before the server started (`wait=on`).
    pub first: Option<UnixStream>,
}

struct Live {
    session: Arc<Session>,
}

struct Shared {
    machine: Arc<Machine>,
    registry: Arc<Registry>,
    stopping: AtomicBool,
    sessions: Mutex<HashMap<u64, Live>>,
    /// Signalled whenever a session's writer ends.
    ended: Condvar,
    next_id: AtomicU64,
}

/// The running QMP server.
pub struct QmpServer {
    shared: Arc<Shared>,
    paths: Vec<PathBuf>,
    /// Closing the write end wakes every accept thread.
    wake: Mutex<Option<OwnedFd>>,
    accept_threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QmpServer {
    /// Starts serving `listeners`; returns once the accept threads run.
    pub fn start(listeners: Vec<QmpListener>, machine: Arc<Machine>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            machine,
            registry: Arc::new(crate::commands::registry()),
            stopping: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            ended: Condvar::new(),
            next_id: AtomicU64::new(1),
        });
        let (wake_rx, wake_tx) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        let wake_rx = Arc::new(wake_rx);
        let mut threads = Vec::new();
        let mut paths = Vec::new();
        for mut l in listeners {
            paths.extend(l.path.clone());
            if let Some(first) = l.first.take() {
                start_session(&shared, first)?;
            }
            l.listener.set_nonblocking(true)?;
            let shared = shared.clone();
            let wake_rx = wake_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("qmp-accept".into())
                    .spawn(move || accept_loop(&shared, &l.listener, &wake_rx))?,
            );
        }
        Ok(QmpServer {
            shared,
            paths,
            wake: Mutex::new(Some(wake_tx)),
            accept_threads: Mutex::new(threads),
        })
    }

    /// Stops accepting, lets every session flush what it has queued for at
    /// most `deadline`, then closes the remaining connections and removes
    /// the socket files.
    pub fn shutdown(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(lock(&self.wake).take());
        for t in lock(&self.accept_threads).drain(..) {
            if t.join().is_err() {
                tracing::error!("QMP accept thread panicked");
            }
        }
        for p in &self.paths {
            if let Err(e) = std::fs::remove_file(p) {
                tracing::debug!("cannot remove {}: {e}", p.display());
            }
        }
        let mut sessions = lock(&self.shared.sessions);
        for live in sessions.values() {
            live.session.close();
        }
        while !sessions.is_empty() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            sessions = self
                .shared
                .ended
                .wait_timeout(sessions, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        for live in sessions.values() {
            live.session.abort();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener, wake: &OwnedFd) {
    // Capabilities are per thread and this one starts before the main
    // thread drops its own (the server greets while the workers start):
    // drop them here too, so the session threads spawned from here never
    // run a command with more than the running broker keeps.
    if let Err(e) = crate::privileges::drop_unneeded() {
        tracing::error!(
            "QMP: cannot drop privileges, not serving: {}",
            ipc_proto::envelope::error_chain(&e)
        );
        return;
    }
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("QMP accept poll failed: {e}");
                return;
            }
        }
        let woken = fds[1].revents().is_some_and(|r| !r.is_empty());
        if woken || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = start_session(shared, stream) {
                    tracing::warn!("cannot start a QMP session: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!("QMP accept on fd {} failed: {e}", listener.as_raw_fd());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn start_session(shared: &Arc<Shared>, stream: UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (out_tx, out_rx) = sync_channel::<Arc<str>>(SESSION_QUEUE_DEPTH);
    let (work_tx, work_rx) = sync_channel::<Work>(REQUEST_QUEUE_DEPTH);
    let reader_stream = stream.try_clone()?;
    let writer_stream = stream.try_clone()?;
    let session = Arc::new(Session::new(
        stream,
        shared.machine.clone(),
        shared.registry.clone(),
        out_tx,
    ));
    // The greeting is the first thing in the queue.
    let greeting: Arc<str> = wire::greeting().into();
    if !session.queue(greeting) {
        return Ok(());
    }
    lock(&shared.sessions).insert(
        id,
        Live {
            session: session.clone(),
        },
    );
    let spawn =
        |name: String, f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().name(name).spawn(f);
    let s = session.clone();
    let sh = shared.clone();
    let writer = spawn(
        format!("qmp-wr-{id}"),
        Box::new(move || {
            write_loop(&s, writer_stream, out_rx);
            lock(&sh.sessions).remove(&id);
            sh.ended.notify_all();
        }),
    );
    if let Err(e) = writer {
        lock(&shared.sessions).remove(&id);
        return Err(e);
    }
    let s = session.clone();
    if let Err(e) = spawn(
        format!("qmp-disp-{id}"),
        Box::new(move || s.dispatch_loop(work_rx)),
    ) {
        session.abort();
        return Err(e);
    }
    let s = session.clone();
    if let Err(e) = spawn(
        format!("qmp-rd-{id}"),
        Box::new(move || s.read_loop(reader_stream, work_tx)),
    ) {
        session.abort();
        return Err(e);
    }
    Ok(())
}

/// Drains the session's output queue to the socket until [`CLOSE`], a
/// write error, or the queue's end.
fn write_loop(session: &Session, stream: UnixStream, rx: Receiver<Arc<str>>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stream);
    let mut buf_lines = 0usize;
    loop {
        let line = match rx.try_recv() {
            Ok(l) => l,
            Err(_) => {
                // Nothing more queued right now: flush, then wait.
                if buf_lines > 0 {
                    if w.flush().is_err() {
                        break;
                    }
                    buf_lines = 0;
                }
                match rx.recv() {
                    Ok(l) => l,
                    Err(_) => break,
                }
            }
        };
        if &*line == CLOSE {
            let _ = w.flush();
            break;
        }
        if w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
        buf_lines += 1;
    }
    session.abort();
}
