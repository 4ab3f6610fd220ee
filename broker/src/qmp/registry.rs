//! The command registry. Every QMP command is one type implementing
//! [`Command`]: its name, doc, argument and return types, flags and
//! handler, declared once. Dispatch, argument validation, `query-commands`
//! and `query-qmp-schema` are all derived from these declarations, and so
//! are the events ([`Registry::event`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{QmpError, Result};
use super::schema::{validate_args, Introspector, QapiType, SchemaType};
use crate::machine::Machine;

/// Per-session state commands may read or change.
#[derive(Debug, Default)]
pub struct SessionState {
    negotiated: AtomicBool,
    oob: AtomicBool,
    default_cpu: AtomicU32,
    /// File descriptors received with `getfd`, by name.
    named_fds: Mutex<HashMap<String, OwnedFd>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SessionState {
    /// True once `qmp_capabilities` succeeded.
    pub fn negotiated(&self) -> bool {
        self.negotiated.load(Ordering::SeqCst)
    }

    /// True if the session enabled out-of-band execution.
    pub fn oob(&self) -> bool {
        self.oob.load(Ordering::SeqCst)
    }

    /// Leaves negotiation mode, with or without OOB.
    pub fn negotiate(&self, oob: bool) {
        self.oob.store(oob, Ordering::SeqCst);
        self.negotiated.store(true, Ordering::SeqCst);
    }

    /// The session's default CPU (the `cpu` command).
    pub fn default_cpu(&self) -> u32 {
        self.default_cpu.load(Ordering::SeqCst)
    }

    /// Sets the default CPU.
    pub fn set_default_cpu(&self, index: u32) {
        self.default_cpu.store(index, Ordering::SeqCst);
    }

    /// Keeps `fd` under `name` (`getfd`), closing the fd that had the name.
    pub fn put_named_fd(&self, name: &str, fd: OwnedFd) {
        let old = lock(&self.named_fds).insert(name.to_owned(), fd);
        // The replaced fd closes here, outside the lock.
        drop(old);
    }

    /// Takes the fd called `name` out of the session (`closefd` closes it;
    /// a command that consumes a named fd keeps it). None if unknown.
    pub fn take_named_fd(&self, name: &str) -> Option<OwnedFd> {
        lock(&self.named_fds).remove(name)
    }
}

/// The file descriptors that came with the message being executed
/// (SCM_RIGHTS on the QMP socket). A command takes what it needs; the rest
/// are closed when the command is done, as QEMU does.
#[derive(Debug, Default)]
pub struct MessageFds(Mutex<VecDeque<OwnedFd>>);

impl MessageFds {
    /// The fds of one message, in the order they were sent.
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        MessageFds(Mutex::new(fds.into()))
    }

    /// Takes the first fd not taken yet.
    pub fn take(&self) -> Option<OwnedFd> {
        lock(&self.0).pop_front()
    }

    /// How many fds are left.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// True if no fd is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a handler can reach.
pub struct Ctx<'a> {
    /// The VM.
    pub machine: &'a Machine,
    /// The calling session.
    pub session: &'a SessionState,
    /// The registry (for the introspection commands).
    pub registry: &'a Registry,
    /// The fds passed with the message (`getfd`, `add-fd`).
    pub fds: &'a MessageFds,
}

/// One QMP command, declared once.
pub trait Command: 'static {
    /// The wire name.
    const NAME: &'static str;
    /// One-paragraph documentation.
    const DOC: &'static str;
    /// May run out-of-band (`exec-oob`): must be quick and never block.
    const ALLOW_OOB: bool = false;
    /// Available in capabilities-negotiation mode (only `qmp_capabilities`).
    const IN_NEGOTIATION: bool = false;
    /// Answered by the broker from its own state, never waiting for a
    /// worker: runs while the workers are still starting, and may run on
    /// the session's reader thread when nothing else is in progress. Every
    /// other command waits for start-up to end.
    const BROKER_ONLY: bool = false;
    /// The arguments (serde with `deny_unknown_fields`, kebab-case names).
    type Args: DeserializeOwned + QapiType;
    /// The return value.
    type Ret: Serialize + QapiType;
    /// Carries the command out.
    fn run(args: Self::Args, ctx: &Ctx<'_>) -> Result<Self::Ret>;
}

type Handler = fn(Map<String, Value>, &Ctx<'_>) -> Result<Value>;

/// A registered command.
pub struct CommandEntry {
    /// The wire name.
    pub name: &'static str,
    /// Its documentation.
    pub doc: &'static str,
    /// OOB-capable.
    pub allow_oob: bool,
    /// Available before negotiation.
    pub in_negotiation: bool,
    /// Needs no worker (see [`Command::BROKER_ONLY`]).
    pub broker_only: bool,
    /// Argument type.
    pub args: SchemaType,
    /// Return type.
    pub ret: SchemaType,
    handler: Handler,
}

impl CommandEntry {
    /// Validates `args` with QEMU's messages, then runs the handler.
    pub fn call(&self, args: Map<String, Value>, ctx: &Ctx<'_>) -> Result<Value> {
        validate_args(&args, &self.args).map_err(QmpError::generic)?;
        (self.handler)(args, ctx)
    }
}

/// A registered event.
pub struct EventEntry {
    /// The wire name.
    pub name: &'static str,
    /// Its documentation.
    pub doc: &'static str,
    /// The type of its `data`.
    pub data: SchemaType,
}

fn typed_handler<C: Command>(args: Map<String, Value>, ctx: &Ctx<'_>) -> Result<Value> {
    // Validation has already given QEMU's messages for every mismatch the
    // schema can describe; a serde error here means the declaration and
    // the Rust type disagree.
    let a: C::Args = serde_json::from_value(Value::Object(args))
        .map_err(|e| QmpError::generic(format!("internal error: arguments of {}: {e}", C::NAME)))?;
    let ret = C::run(a, ctx)?;
    serde_json::to_value(ret)
        .map_err(|e| QmpError::generic(format!("internal error: reply of {}: {e}", C::NAME)))
}

/// Every command and event the broker knows.
#[derive(Default)]
pub struct Registry {
    commands: Vec<CommandEntry>,
    index: HashMap<&'static str, usize>,
    events: Vec<EventEntry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds command `C`. Panics on a duplicate name (a programming error
    /// caught by the first test that builds the registry).
    pub fn register<C: Command>(&mut self) {
        assert!(
            !self.index.contains_key(C::NAME),
            "command {} declared twice",
            C::NAME
        );
        self.index.insert(C::NAME, self.commands.len());
        self.commands.push(CommandEntry {
            name: C::NAME,
            doc: C::DOC,
            allow_oob: C::ALLOW_OOB,
            in_negotiation: C::IN_NEGOTIATION,
            broker_only: C::BROKER_ONLY,
            args: C::Args::schema(),
            ret: C::Ret::schema(),
            handler: typed_handler::<C>,
        });
    }

    /// Declares event `name` whose data has type `T`.
    pub fn event<T: QapiType>(&mut self, name: &'static str, doc: &'static str) {
        self.events.push(EventEntry {
            name,
            doc,
            data: T::schema(),
        });
    }

    /// The command called `name`.
    pub fn get(&self, name: &str) -> Option<&CommandEntry> {
        self.index.get(name).and_then(|&i| self.commands.get(i))
    }

    /// All commands, in declaration order.
    pub fn commands(&self) -> &[CommandEntry] {
        &self.commands
    }

    /// All events, in declaration order.
    pub fn events(&self) -> &[EventEntry] {
        &self.events
    }

    /// The `query-qmp-schema` entries.
    pub fn introspect(&self) -> Vec<Value> {
        let mut i = Introspector::new();
        for c in &self.commands {
            i.command(c.name, &c.args, &c.ret, c.allow_oob);
        }
        for e in &self.events {
            i.event(e.name, &e.data);
        }
        i.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn fd() -> OwnedFd {
        nix::unistd::pipe().unwrap().0
    }

    #[test]
    fn named_fd_is_replaced_by_a_new_one_of_the_same_name() {
        let s = SessionState::default();
        let (a, b) = (fd(), fd());
        let b_raw = b.as_raw_fd();
        s.put_named_fd("x", a);
        s.put_named_fd("x", b);
        assert_eq!(s.take_named_fd("x").map(|f| f.as_raw_fd()), Some(b_raw));
        assert!(s.take_named_fd("x").is_none());
    }

    #[test]
    fn message_fds_are_taken_in_the_order_sent() {
        let (a, b) = (fd(), fd());
        let (a_raw, b_raw) = (a.as_raw_fd(), b.as_raw_fd());
        let m = MessageFds::new(vec![a, b]);
        assert_eq!(m.take().map(|f| f.as_raw_fd()), Some(a_raw));
        assert_eq!(m.len(), 1);
        assert_eq!(m.take().map(|f| f.as_raw_fd()), Some(b_raw));
        assert!(m.is_empty() && m.take().is_none());
    }
}
