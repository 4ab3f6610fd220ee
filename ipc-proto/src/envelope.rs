//! The envelope every channel uses: requests carry an id that the reply
//! echoes; events are unsolicited. Errors cross the process boundary flat
//! (a QMP error class and a message), so the broker can answer QMP without
//! knowing the worker's internal error types.

use serde::{Deserialize, Serialize};

/// A message from the broker to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BrokerMsg<R> {
    /// A request the worker must answer with a [`WorkerMsg::Reply`] with the same id.
    Request {
        /// Chosen by the broker, unique per channel.
        id: u64,
        /// The request itself.
        body: R,
    },
}

/// A message from a worker to the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMsg<P, E> {
    /// The answer to the request with the same id.
    Reply {
        /// The id of the request.
        id: u64,
        /// The outcome.
        result: Result<P, FlatError>,
    },
    /// Something happened in the worker (guest reset, I/O error, ...).
    Event(E),
}

/// QMP's error classes (QAPI `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Any error without a more specific class.
    GenericError,
    /// The command does not exist.
    CommandNotFound,
    /// The device does not exist.
    DeviceNotFound,
    /// The device exists but is not active.
    DeviceNotActive,
    /// KVM lacks a capability the command needs.
    KVMMissingCap,
}

impl ErrorClass {
    /// The class name as QMP spells it on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// An error flattened for transport: its QMP class and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{desc}")]
pub struct FlatError {
    /// The QMP error class.
    pub class: ErrorClass,
    /// The message shown to the QMP client.
    pub desc: String,
}

impl FlatError {
    /// A `GenericError` with `desc`.
    pub fn generic(desc: impl Into<String>) -> Self {
        FlatError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// An error of `class` with `desc`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        FlatError {
            class,
            desc: desc.into(),
        }
    }
}

/// Formats an error and its whole `source()` chain on one line, for
/// [`FlatError`] messages and logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
