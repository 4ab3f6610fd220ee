//! The QMP server.
//!
//! - [`json_lexer`], [`json_stream`]: the incremental JSON splitter and
//!   parser (QEMU's rules and error messages).
//! - [`wire`]: what goes over the socket: greeting, replies, errors, and
//!   the checks on a request's top-level members.
//! - [`schema`]: QAPI-style type descriptions, argument validation with
//!   QEMU's messages, and `query-qmp-schema`.
//! - [`registry`]: the [`registry::Command`] trait every command implements
//!   and the registry that dispatches them.
//! - [`session`]: one client: negotiation, in-order dispatch, out-of-band
//!   execution.
//! - [`server`]: listening sockets, per-session writer threads, shutdown.
//! - [`events`]: fan-out of events to sessions through bounded queues.
//! - [`event_throttle`]: QEMU's rate limit of chatty events.

pub mod error;
pub mod event_throttle;
pub mod events;
pub mod json_lexer;
pub mod json_stream;
pub mod registry;
pub mod schema;
pub mod server;
pub mod session;
pub mod wire;
