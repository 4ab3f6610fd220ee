//! net-proc: Bulkhead's network worker. It connects to the broker over its
//! control channel and serves the net channel's requests until the broker
//! closes the channel.
//!
//! Crate map:
//! - [`serve`]: the request loop (one exhaustive match per request).

pub mod serve;

use std::process::ExitCode;

use ipc_proto::envelope::error_chain;
use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::worker::{connect, control_fd_from_args};
use ipc_proto::WorkerKind;

/// Runs the worker with the process's arguments.
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    let result = control_fd_from_args(args.into_iter().skip(1))
        .and_then(|fd| connect::<NetRequest, NetReply, NetEvent>(WorkerKind::Net, fd));
    match result {
        Ok(chan) => match serve::serve(&chan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("net-proc: {}", error_chain(&e));
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("net-proc: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}
