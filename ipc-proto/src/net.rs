//! The broker ↔ net-proc channel.
//!
//! net-proc serves vhost-user-net backends; until its devices land, its
//! channel carries the liveness check the supervisor uses.

use serde::{Deserialize, Serialize};

/// Requests the broker sends to net-proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetRequest {
    /// Answer with [`NetReply::Alive`] (supervisor health check).
    Ping,
    /// Trace points: their states, or the states the broker wants
    /// (with `to_file`, the frame's first fd is the trace file).
    Trace(crate::trace::TraceRequest),
    /// A switch request (see [`crate::rocker`]). Before the test-only
    /// variants: their presence must not shift the indices.
    Rocker(crate::rocker::RockerRequest),
    /// Test hooks only: run an escape attempt inside the sandboxed worker
    /// (answered by [`NetReply::EscapeOutcome`], or not at all: seccomp
    /// kills the worker).
    #[cfg(feature = "test-hooks")]
    TestEscape(crate::escape::Escape),
}

/// Replies of net-proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetReply {
    /// net-proc is alive and serving.
    Alive,
    /// Answer to a `Trace` request: the process's trace points.
    Trace(crate::trace::TraceReply),
    /// Answer to [`NetRequest::Rocker`].
    Rocker(crate::rocker::RockerReply),
    /// Answer to [`NetRequest::TestEscape`].
    #[cfg(feature = "test-hooks")]
    EscapeOutcome(crate::escape::Outcome),
}

/// Events net-proc reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetEvent {
    /// A backend's link changed state.
    LinkChanged {
        /// The netdev id.
        id: String,
        /// True when up.
        up: bool,
    },
}
