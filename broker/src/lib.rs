//! The Bulkhead broker: the only process a user starts.
//!
//! Crate map:
//! - [`cli`]: QEMU-style command line (`-qmp`, `-m`, `-smp`, `-kernel`, ...).
//! - [`qmp`]: the QMP server: sockets, sessions, negotiation, the command
//!   registry and schema, events.
//! - [`commands`]: one type per QMP command, each declared once.
//! - [`machine`]: the VM's desired state and the handle commands use to
//!   reach the workers.
//! - [`process_setup`]: `-daemonize`, `-pidfile`, `-D`, `-msg`, `-name process=`.
//! - [`chardev`]: serial backends the broker serves itself (TCP, stdio
//!   muxed with a human monitor).
//! - [`monitor`]: human monitors (HMP readline) on stdio and Unix sockets.
//! - [`monitor_sockets`]: the QMP monitors' sockets (path, inherited fd, `wait=on`).
//! - [`privileges`]: the capabilities the broker keeps once workers are up.
//! - [`workers`]: spawning, linking (request/reply correlation) and
//!   supervising the worker processes.
//! - [`run`]: start-up and orderly shutdown.
//! - [`trace`]: the broker's trace points.
//! - [`systemd`]: readiness/status/watchdog notifications, socket
//!   activation and journal-friendly logs.

pub mod chardev;
pub mod cli;
pub mod commands;
pub mod machine;
pub mod monitor;
pub mod monitor_sockets;
pub mod privileges;
pub mod process_setup;
pub mod qmp;
pub mod run;
pub mod systemd;
pub mod trace;
pub mod workers;
