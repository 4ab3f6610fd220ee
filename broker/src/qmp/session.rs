//! One QMP client. Its reader thread splits the byte stream into messages;
//! out-of-band requests (`exec-oob`, once the session enabled "oob") run
//! right there, every other message goes in order to the session's
//! dispatcher thread, which checks it, runs it and queues the reply. Both
//! write into the session's output queue, which the server's writer thread
//! drains together with the events.
//!
//! File descriptors passed with SCM_RIGHTS travel with the message they
//! came with ([`MessageFds`]): `getfd` and `add-fd` executed from that
//! message take them, the rest are closed once it has been answered.
//!
//! Commands that need the VM wait for start-up to end (the greeting goes
//! out before the workers are up); broker-only commands
//! ([`super::registry::Command::BROKER_ONLY`]) never wait, and when the
//! dispatcher is idle the reader answers them itself, saving a thread
//! hand-off per round trip while keeping replies in order.
//!
//! Negotiation follows QEMU: until `qmp_capabilities` succeeds, only it is
//! available and everything else answers `CommandNotFound` "Expecting
//! capabilities negotiation with 'qmp_capabilities'"; events start
//! flowing once negotiation is done.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use ipc_proto::trace_point;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::Value;

use super::error::QmpError;
use super::json_stream::{Item, JsonStream};
use super::registry::{Ctx, MessageFds, Registry, SessionState};
use super::wire::{self, Request};
use crate::machine::start_gate::START_WAIT;
use crate::machine::Machine;
use crate::trace;

/// How many in-band requests may wait for the dispatcher before the reader
/// stops reading (back-pressure on a client that pipelines without limit).
pub const REQUEST_QUEUE_DEPTH: usize = 64;

/// The most fds one read may carry (QEMU's `TCP_MAX_FDS`), and the most
/// the reader keeps waiting for a message to complete; older ones beyond
/// it are closed.
pub const MAX_FDS: usize = 16;

/// The marker the session puts in its output queue after its last reply:
/// the writer flushes and closes when it sees it. (No real message is empty.)
pub const CLOSE: &str = "";

/// One connected client.
pub struct Session {
    state: SessionState,
    machine: Arc<Machine>,
    registry: Arc<Registry>,
    out: SyncSender<Arc<str>>,
    stream: UnixStream,
    closing: AtomicBool,
    /// In-band messages handed to the dispatcher and not answered yet.
    in_dispatch: AtomicUsize,
}

/// What the reader hands the dispatcher.
pub enum Work {
    /// A parsed message and the fds that came with it.
    Message(Value, Vec<OwnedFd>),
    /// A JSON error, answered without id.
    JsonError(String),
}

impl Session {
    /// A session on `stream` whose output goes to `out`.
    pub fn new(
        stream: UnixStream,
        machine: Arc<Machine>,
        registry: Arc<Registry>,
        out: SyncSender<Arc<str>>,
    ) -> Self {
        Session {
            state: SessionState::default(),
            machine,
            registry,
            out,
            stream,
            closing: AtomicBool::new(false),
            in_dispatch: AtomicUsize::new(0),
        }
    }

    /// The session's negotiation state and settings.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Stops the session: no further request runs, reading ends; the
    /// dispatcher then queues [`CLOSE`] after the reply in progress.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Fails only if the peer is already gone; then reading ends anyway.
        let _ = self.stream.shutdown(std::net::Shutdown::Read);
    }

    /// Ends the connection at once (both directions).
    pub fn abort(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn send(&self, line: String) -> bool {
        self.queue(line.into())
    }

    /// Queues `line` for the writer; false once the writer is gone.
    pub fn queue(&self, line: Arc<str>) -> bool {
        self.out.send(line).is_ok()
    }

    /// The reader loop: runs until EOF or error, then drops `work` so the
    /// dispatcher finishes.
    ///
    /// Which message fds belong to: Linux ends a read on a stream socket
    /// right after the data sent together with fds, so the fds of a read
    /// go to the last message completed by it; if it completed none, they
    /// wait for the next message to complete. Both ways clients send fds
    /// work: with the message in one `sendmsg` (libvirt), or with a lone
    /// space just before it (QEMU's `qemu.qmp`). A client that pipelines
    /// a message without fds right before a lone space with fds may see
    /// them attached to the earlier message; QEMU's attachment is just as
    /// timing-dependent there.
    pub fn read_loop(self: &Arc<Self>, input: UnixStream, work: SyncSender<Work>) {
        let mut stream = JsonStream::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut items: Vec<Item> = Vec::new();
        let mut pending: Vec<OwnedFd> = Vec::new();
        loop {
            let (n, fresh) = match read_with_fds(&input, &mut buf) {
                Ok((0, _)) => return,
                Ok(r) => r,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!("QMP session read failed: {e}");
                    return;
                }
            };
            stream.feed(&buf[..n], &mut items);
            let last = items.len().checked_sub(1);
            let mut fresh = Some(fresh);
            for (i, item) in items.drain(..).enumerate() {
                let mut fds = std::mem::take(&mut pending);
                if Some(i) == last {
                    fds.extend(fresh.take().unwrap_or_default());
                }
                let w = match item {
                    Ok(v) if self.state.oob() && wire::is_oob(&v) => {
                        if !self.answer(v, fds) {
                            return;
                        }
                        continue;
                    }
                    // Nothing in progress: replies stay in order when
                    // the reader answers a quick command itself. Only
                    // the reader adds to `in_dispatch`, so 0 stays 0.
                    Ok(v)
                        if self.in_dispatch.load(Ordering::SeqCst) == 0
                            && self.is_broker_only(&v) =>
                    {
                        if !self.answer(v, fds) {
                            return;
                        }
                        continue;
                    }
                    Ok(v) => Work::Message(v, fds),
                    // fds sent with malformed JSON are closed here.
                    Err(desc) => Work::JsonError(desc),
                };
                self.in_dispatch.fetch_add(1, Ordering::SeqCst);
                if work.send(w).is_err() || self.closing.load(Ordering::SeqCst) {
                    return;
                }
            }
            pending.extend(fresh.unwrap_or_default());
            if pending.len() > MAX_FDS {
                let excess = pending.len() - MAX_FDS;
                tracing::warn!("QMP client sent fds without a message: closing {excess}");
                pending.drain(..excess);
            }
        }
    }

    /// The dispatcher loop: answers each message in order; ends when the
    /// reader is done, queueing [`CLOSE`] last.
    pub fn dispatch_loop(self: &Arc<Self>, work: Receiver<Work>) {
        for w in work {
            if self.closing.load(Ordering::SeqCst) {
                break;
            }
            let sent = match w {
                Work::Message(v, fds) => self.answer(v, fds),
                Work::JsonError(desc) => self.send(wire::reply_err(&QmpError::generic(desc), None)),
            };
            // After the reply is queued: the reader may answer the next
            // message itself once this reaches 0.
            self.in_dispatch.fetch_sub(1, Ordering::SeqCst);
            if !sent {
                return;
            }
        }
        let _ = self.out.send(CLOSE.into());
    }

    /// Answers one message and queues the reply; subscribes the session
    /// to events when the message completed negotiation. `fds` came with
    /// the message; those the command does not take are closed. False once
    /// the output queue is gone (the connection ended).
    pub fn answer(self: &Arc<Self>, v: Value, fds: Vec<OwnedFd>) -> bool {
        let was_negotiated = self.state.negotiated();
        let fds = MessageFds::new(fds);
        let line = match wire::parse_request(v, self.state.oob()) {
            Ok(req) => {
                let id = req.id.clone();
                trace_point!(trace::qmp_command_in(req.name, id));
                let name = trace::qmp_command_done::POINT
                    .is_enabled()
                    .then(|| req.name.clone());
                let reply = self.dispatch(req, &fds);
                trace_point!(trace::qmp_command_done(
                    name.unwrap_or_default(),
                    reply.is_ok()
                ));
                match reply {
                    Ok(ret) => wire::reply_ok(&ret, id.as_ref()),
                    Err(e) => wire::reply_err(&e, id.as_ref()),
                }
            }
            Err((id, e)) => wire::reply_err(&e, id.as_ref()),
        };
        if !fds.is_empty() {
            tracing::debug!("closing {} fds the command did not use", fds.len());
        }
        drop(fds);
        if !was_negotiated && self.state.negotiated() {
            // Subscribe before the reply leaves: once the client has the
            // reply, it must not miss any event (as in QEMU, an event may
            // then come before the reply).
            let me = Arc::downgrade(self);
            self.machine.events().subscribe_sender(
                self.out.clone(),
                Box::new(move || {
                    if let Some(s) = me.upgrade() {
                        tracing::warn!(
                            "QMP client too slow: its event queue overflowed; disconnecting it"
                        );
                        s.abort();
                    }
                }),
            );
        }
        self.send(line)
    }

    /// True if `v` executes a command that never waits for a worker.
    fn is_broker_only(&self, v: &Value) -> bool {
        v.get("execute")
            .and_then(Value::as_str)
            .and_then(|name| self.registry.get(name))
            .is_some_and(|e| e.broker_only)
    }

    fn dispatch(&self, req: Request, fds: &MessageFds) -> Result<Value, QmpError> {
        let entry = self.registry.get(&req.name);
        let ctx = Ctx {
            machine: &self.machine,
            session: &self.state,
            registry: &self.registry,
            fds,
        };
        if !self.state.negotiated() {
            return match entry {
                Some(e) if e.in_negotiation => e.call(req.args, &ctx).map_err(negotiation_error),
                Some(_) | None => Err(negotiation_error(QmpError::command_not_found(""))),
            };
        }
        let Some(entry) = entry else {
            return Err(QmpError::command_not_found(format!(
                "The command {} has not been found",
                req.name
            )));
        };
        if req.oob && !entry.allow_oob {
            return Err(QmpError::generic(format!(
                "The command {} does not support OOB",
                req.name
            )));
        }
        if !entry.broker_only {
            self.machine
                .start_gate()
                .wait(START_WAIT)
                .map_err(QmpError::from)?;
        }
        entry.call(req.args, &ctx)
    }
}

/// One `recvmsg`: the bytes read into `buf` and the fds that came with
/// them (close-on-exec).
fn read_with_fds(input: &UnixStream, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        input.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed `r` in this process for
                // this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        tracing::warn!("QMP client sent more than {MAX_FDS} fds at once; the rest were closed");
    }
    Ok((msg.bytes, fds))
}

/// QEMU replaces every CommandNotFound in negotiation mode with a hint.
fn negotiation_error(e: QmpError) -> QmpError {
    match e.class {
        ipc_proto::ErrorClass::CommandNotFound => QmpError::command_not_found(
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ),
        ipc_proto::ErrorClass::GenericError
        | ipc_proto::ErrorClass::DeviceNotFound
        | ipc_proto::ErrorClass::DeviceNotActive
        | ipc_proto::ErrorClass::KVMMissingCap => e,
    }
}
