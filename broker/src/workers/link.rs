//! A live connection to one worker process: requests get ids, a reader
//! thread matches replies to the waiting callers and hands events to a
//! callback. When the connection breaks, every waiting caller gets an
//! error at once instead of hanging; every request carries a deadline (the
//! worker timeout, `-__org.bulkhead-worker-timeout`), so a hung worker
//! costs a caller at most that long. [`WorkerLink::ping`] is the liveness
//! check the broker runs on each worker's control channel.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ipc_proto::envelope::error_chain;
use ipc_proto::{trace_point, BrokerMsg, Channel, FlatError, WorkerKind, WorkerMsg};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::trace;

/// Why a request got no reply from the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The worker's channel is closed or broken (it exited or was killed).
    #[error("the {0} worker is not running")]
    Gone(&'static str),
    /// The worker did not answer before the deadline.
    #[error("the {0} worker did not answer within {1:?}")]
    NoAnswer(&'static str, Duration),
    /// The request could not be sent.
    #[error("cannot reach the {0} worker: {1}")]
    Send(&'static str, String),
}

impl From<LinkError> for FlatError {
    fn from(e: LinkError) -> Self {
        FlatError::generic(e.to_string())
    }
}

/// A request type with a liveness check: a request each worker answers
/// from its IPC loop without touching anything else, so an answer proves
/// the loop is serving.
pub trait Liveness {
    /// The ping request.
    fn ping() -> Self;
}

impl Liveness for ipc_proto::block::BlockRequest {
    fn ping() -> Self {
        ipc_proto::block::BlockRequest::Ping
    }
}

impl Liveness for ipc_proto::vcpu::VcpuRequest {
    fn ping() -> Self {
        ipc_proto::vcpu::VcpuRequest::Ping
    }
}

impl Liveness for ipc_proto::net::NetRequest {
    fn ping() -> Self {
        ipc_proto::net::NetRequest::Ping
    }
}

/// The waiting callers: the worker's answer, or why there is none.
type Pending<P> = Mutex<HashMap<u64, SyncSender<Result<Result<P, FlatError>, LinkError>>>>;

/// The broker's end of one worker's control channel.
pub struct WorkerLink<R, P, E> {
    kind: WorkerKind,
    pid: u32,
    chan: Arc<Channel<BrokerMsg<R>, WorkerMsg<P, E>>>,
    pending: Arc<Pending<P>>,
    next_id: AtomicU64,
    broken: Arc<AtomicBool>,
    closed: Arc<(Mutex<bool>, Condvar)>,
    timeout: Duration,
    /// Set-up requests in flight (see [`SETUP_EXTRA`]).
    setups: Arc<std::sync::atomic::AtomicUsize>,
}

/// Extra time a set-up request to vcpu-proc gets: one that hands it fds
/// (VM creation, a vhost-user device attached or reconnected). Setting up
/// a vhost-user connection waits for its backend, which the broker bounds
/// separately (and vcpu-proc's own vhost-user replies wait up to 10 s), so
/// such a request may keep its loop busy longer than the worker timeout
/// without it being hung; the liveness check leaves vcpu-proc alone while
/// one is in flight. block-proc and net-proc wait for nothing outside
/// themselves: their requests all get the plain worker timeout.
pub const SETUP_EXTRA: Duration = Duration::from_secs(10);

/// The extra time set-up requests to a `kind` worker get.
fn setup_extra(kind: WorkerKind) -> Duration {
    match kind {
        WorkerKind::Vcpu => SETUP_EXTRA,
        WorkerKind::Block | WorkerKind::Net => Duration::ZERO,
    }
}

impl<R, P, E> WorkerLink<R, P, E>
where
    R: Serialize + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    /// Wraps an accepted channel and starts its reader thread, which calls
    /// `on_event` for every event the worker sends. `timeout` is how long
    /// [`WorkerLink::request`] waits for a reply.
    pub fn start(
        kind: WorkerKind,
        pid: u32,
        chan: Channel<BrokerMsg<R>, WorkerMsg<P, E>>,
        timeout: Duration,
        on_event: impl Fn(E) + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let link = Arc::new(WorkerLink {
            kind,
            pid,
            chan: Arc::new(chan),
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            broken: Arc::new(AtomicBool::new(false)),
            closed: Arc::new((Mutex::new(false), Condvar::new())),
            timeout,
            setups: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        });
        let closed = link.closed.clone();
        let chan = link.chan.clone();
        let pending = link.pending.clone();
        let broken = link.broken.clone();
        std::thread::Builder::new()
            .name(format!("{}-link", kind.name()))
            .spawn(move || {
                let reason = loop {
                    match chan.recv() {
                        Ok((WorkerMsg::Reply { id, result }, _fds)) => {
                            trace_point!(trace::broker_ipc_reply(kind.name(), id, result.is_ok()));
                            let waiter = lock(&pending).remove(&id);
                            match waiter {
                                // The caller may have timed out; nothing to do then.
                                Some(tx) => drop(tx.try_send(Ok(result))),
                                None => tracing::warn!(
                                    "{} worker replied to unknown request {id}",
                                    kind.name()
                                ),
                            }
                        }
                        Ok((WorkerMsg::Event(e), _fds)) => on_event(e),
                        Err(e) if e.is_closed() => break "closed its control channel".to_owned(),
                        Err(e) => break error_chain(&e),
                    }
                };
                tracing::debug!("{} worker link ended: {reason}", kind.name());
                broken.store(true, Ordering::SeqCst);
                chan.shutdown();
                for (_, tx) in lock(&pending).drain() {
                    drop(tx.try_send(Err(LinkError::Gone(kind.name()))));
                }
                *lock(&closed.0) = true;
                closed.1.notify_all();
            })?;
        Ok(link)
    }

    /// Sends `body` with `fds` and waits for the reply, at most the
    /// link's timeout.
    /// A request with fds to vcpu-proc is a set-up request and gets
    /// [`SETUP_EXTRA`] more.
    pub fn request(&self, body: R, fds: &[BorrowedFd<'_>]) -> Result<P, FlatError> {
        let extra = setup_extra(self.kind);
        if fds.is_empty() || extra.is_zero() {
            return self.call(body, fds, Instant::now() + self.timeout)?;
        }
        self.setups.fetch_add(1, Ordering::SeqCst);
        let r = self.call(body, fds, Instant::now() + self.timeout + extra);
        self.setups.fetch_sub(1, Ordering::SeqCst);
        r?
    }

    /// True while a set-up request is in flight: the worker's loop may be
    /// busy with it (bounded by its own deadline) without being hung.
    pub fn setting_up(&self) -> bool {
        self.setups.load(Ordering::SeqCst) > 0
    }

    /// Sends `body` with `fds` and waits for the worker's answer until
    /// `deadline`. The outer error says the worker gave none.
    pub fn call(
        &self,
        body: R,
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> Result<Result<P, FlatError>, LinkError> {
        let name = self.kind.name();
        if self.broken.load(Ordering::SeqCst) {
            return Err(LinkError::Gone(name));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        trace_point!(trace::broker_ipc_request(name, id));
        let (tx, rx) = sync_channel(1);
        lock(&self.pending).insert(id, tx);
        if let Err(e) = self.chan.send(&BrokerMsg::Request { id, body }, fds) {
            lock(&self.pending).remove(&id);
            // A socket that fails to send is a peer that is gone (EPIPE,
            // ECONNRESET), whether or not the reader noticed yet.
            let dead_socket = matches!(
                e,
                ipc_proto::ChannelError::Frame(ipc_proto::frame::FrameError::Io(_))
            );
            if dead_socket {
                // Unusable from now on; the reader fails the waiting callers.
                self.broken.store(true, Ordering::SeqCst);
            }
            if self.broken.load(Ordering::SeqCst) {
                return Err(LinkError::Gone(name));
            }
            return Err(LinkError::Send(name, error_chain(&e)));
        }
        // The reader may have failed every pending request between our
        // insert and now; then our sender is gone and recv fails at once.
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(if self.broken.load(Ordering::SeqCst) {
                    LinkError::Gone(name)
                } else {
                    LinkError::NoAnswer(name, self.timeout)
                })
            }
        }
    }

    /// The deadline every request gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The worker's pid (as the broker sees it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True once the channel has failed or closed.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Waits until the reader has seen the end of the channel (so every
    /// event the worker sent before it exited has been delivered), at most
    /// `timeout`. Returns true if it has.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.closed;
        let guard = lock(m);
        let (done, _) = cv
            .wait_timeout_while(guard, timeout, |closed| !*closed)
            .unwrap_or_else(|p| p.into_inner());
        *done
    }

    /// Closes the channel; the worker sees EOF and exits.
    pub fn close(&self) {
        self.chan.shutdown();
    }
}

impl<R, P, E> WorkerLink<R, P, E>
where
    R: Liveness + Serialize + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    /// The liveness check: Ok once the worker's IPC loop answered a ping
    /// (with anything) within `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<(), LinkError> {
        self.call(R::ping(), &[], Instant::now() + timeout)
            .map(drop)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    type WorkerEnd = Channel<WorkerMsg<String, u32>, BrokerMsg<String>>;

    fn pair() -> (
        Arc<WorkerLink<String, String, u32>>,
        WorkerEnd,
        std::sync::mpsc::Receiver<u32>,
    ) {
        let (a, b) = UnixStream::pair().unwrap();
        let (etx, erx) = std::sync::mpsc::channel();
        let link = WorkerLink::start(
            WorkerKind::Block,
            1,
            Channel::new(a),
            Duration::from_millis(300),
            move |e| etx.send(e).unwrap(),
        )
        .unwrap();
        (link, Channel::new(b), erx)
    }

    #[test]
    fn replies_are_matched_to_their_requests_and_events_delivered() {
        let (link, worker, events) = pair();
        let t = std::thread::spawn(move || {
            let (BrokerMsg::Request { id, body }, _) = worker.recv().unwrap();
            worker.send(&WorkerMsg::Event(5), &[]).unwrap();
            worker
                .send(
                    &WorkerMsg::Reply {
                        id,
                        result: Ok(format!("re:{body}")),
                    },
                    &[],
                )
                .unwrap();
            worker
        });
        assert_eq!(link.request("ping".into(), &[]).unwrap(), "re:ping");
        assert_eq!(events.recv().unwrap(), 5);
        drop(t.join().unwrap());
    }

    #[test]
    fn dead_worker_fails_waiting_request_instead_of_hanging() {
        let (link, worker, _events) = pair();
        let t = std::thread::spawn(move || {
            let _ = worker.recv().unwrap();
            drop(worker);
        });
        let err = link.request("ping".into(), &[]).unwrap_err();
        t.join().unwrap();
        assert_eq!(err.desc, "the block worker is not running");
        assert!(link.is_broken());
    }

    #[test]
    fn silent_worker_fails_the_request_at_its_deadline() {
        let (link, worker, _events) = pair();
        let start = Instant::now();
        let err = link.request("ping".into(), &[]).unwrap_err();
        assert_eq!(err.desc, "the block worker did not answer within 300ms");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(!link.is_broken());
        drop(worker);
    }
}
