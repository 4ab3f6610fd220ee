//! net-proc: Bulkhead's network worker. It connects to the broker over its
//! control channel and serves the net channel's requests until the broker
//! closes the channel.
//!
//! Crate map:
//! - [`announce`]: a NIC's MAC announced after a migration (QEMU's RARP).
//! - [`serve`]: the request loop (one exhaustive match per request).
//! - [`nics`]: the netdevs and NIC exports net-proc holds.
//! - [`port`]: what a NIC's queues exchange frames with (a TAP today, a
//!   switch port later).
//! - [`tap`]: TAP netdevs (fds from the broker, offloads, vnet header).
//! - [`virtio_net`]: the virtio-net device model (features, config space).
//! - [`vhost`]: the vhost-user-net backend (protocol, queues, exports).
//! - [`trace`]: net-proc's trace points.
//! - [`rocker`]: learning L2 switches over an OF-DPA pipeline.
//! - [`standalone`]: `--standalone` mode (one NIC on a listening socket).

pub mod announce;
pub mod nics;
pub mod port;
pub mod rocker;
pub mod serve;
pub mod standalone;
pub mod tap;
pub mod trace;
pub mod vhost;
pub mod virtio_net;

use std::process::ExitCode;

use ipc_proto::envelope::error_chain;
use ipc_proto::net::{NetEvent, NetReply, NetRequest};
use ipc_proto::worker::{connect, control_fd_from_args};
use ipc_proto::WorkerKind;
use sandbox::Sandbox;

/// Runs the worker with the process's arguments.
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    ipc_proto::logging::init();
    tracing::debug!("net-proc starting");
    if args.iter().any(|a| a == "--standalone") {
        return match standalone::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("net-proc: {}", error_chain(&e));
                ExitCode::from(2)
            }
        };
    }
    let sandbox = match Sandbox::from_args(WorkerKind::Net, &args) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("net-proc: {}", error_chain(&e));
            return ExitCode::from(3);
        }
    };
    let result = control_fd_from_args(args.into_iter().skip(1))
        .and_then(|fd| connect::<NetRequest, NetReply, NetEvent>(WorkerKind::Net, fd));
    let result = result
        .map_err(|e| error_chain(&e))
        .and_then(|chan| match sandbox.enter() {
            Ok(Some(report)) => {
                if let Some(w) = report.landlock.warning() {
                    tracing::warn!("net-proc: {w}");
                }
                Ok(chan)
            }
            Ok(None) => Ok(chan),
            Err(e) => Err(error_chain(&e)),
        });
    match result {
        Ok(chan) => match serve::serve(chan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("net-proc: {}", error_chain(&e));
                ExitCode::from(1)
            }
        },
        Err(e) => {
            tracing::error!("net-proc: {e}");
            ExitCode::from(2)
        }
    }
}
