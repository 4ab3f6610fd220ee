//! Start-up and orderly shutdown of the broker: parse the command line,
//! start the supervisor, the workers and the QMP server, then wait for a
//! reason to end (quit, guest shutdown, debug exit, signal) and tear down:
//! no worker and no socket file is left behind (every worker is reaped
//! before the broker exits, on every path that started one).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use ipc_proto::envelope::error_chain;

use crate::machine::{policy, vm_setup, ExitRequest, Machine};
use crate::qmp::events::EventBus;
use crate::qmp::server::{QmpListener, QmpServer};
use crate::workers::supervisor::Supervisor;
use crate::{cli, commands, process_setup, systemd};

/// How long pending QMP output may take to flush at exit.
const FLUSH_DEADLINE: Duration = Duration::from_millis(500);

/// Errors that end the broker before it serves.
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    /// Bad command line.
    #[error("bulkhead")]
    Cli(#[from] cli::CliError),
    /// A QMP socket could not be created.
    #[error("bulkhead")]
    QmpSocket(#[from] crate::monitor_sockets::MonitorSocketError),
    /// A worker could not be started.
    #[error("cannot start the VM")]
    Start(#[from] policy::StartError),
    /// Threads, signals or the supervisor could not be set up.
    #[error("cannot set up the broker")]
    Io(#[from] std::io::Error),
    /// `-m` is more than the host can provide (QEMU's message).
    #[error("bulkhead")]
    Memory(#[from] crate::machine::host_memory::TooLarge),
    /// `-daemonize`, `-pidfile`, `-D` failed (QEMU's message).
    #[error("bulkhead")]
    Process(#[from] process_setup::ProcessError),
    /// A `-blockdev` or `-drive` could not be applied (QEMU's message).
    #[error("{}", .0.desc)]
    Blockdev(crate::qmp::error::QmpError),
    /// Dropping capabilities failed.
    #[error("cannot drop privileges")]
    Privileges(#[source] sandbox::SandboxError),
    /// An `-add-fd` is invalid (QEMU's message).
    #[error("-add-fd")]
    AddFd(#[source] crate::machine::fdsets::FdsetError),
    /// The systemd environment is malformed.
    #[error("systemd integration failed")]
    Systemd(#[from] systemd::SystemdError),
}

impl MainError {
    /// The process exit code for this failure class.
    pub fn exit_code(&self) -> u8 {
        match self {
            MainError::Cli(_) => 2,
            MainError::QmpSocket(_) => 3,
            MainError::Start(_) => 4,
            MainError::Io(_) => 5,
            MainError::Blockdev(_) => 1,
            MainError::Memory(_) => 1,
            MainError::Process(_) => 1,
            MainError::Systemd(_) => 6,
            MainError::AddFd(_) => 1,
            MainError::Privileges(_) => 7,
        }
    }
}

/// Entry point: runs the broker with `args` (without the program name).
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = error_chain(&e);
            // A `-daemonize` parent prints it; else it is ours to print.
            if !process_setup::report_failure(e.exit_code(), &msg) {
                eprintln!("{msg}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the broker; returns its exit status.
pub fn run(args: &[String]) -> Result<u8, MainError> {
    // Socket activation edits the environment: before any thread starts.
    let activated = systemd::listen_fds()?;
    let notifier = systemd::Notifier::from_env()?;
    let config = cli::parse(args)?;
    if let Some(text) = &config.print_and_exit {
        print!("{text}");
        return Ok(0);
    }
    crate::machine::host_memory::check(config.mem_size)?;
    // Before any thread: -D, -daemonize (forks), -pidfile, -name process=.
    let _pidfile = process_setup::apply(&config)?;
    ipc_proto::logging::init();
    // SAFETY: the `-add-fd` fds are inherited and nothing else in the
    // broker uses them; no thread has started and no fd was opened since
    // the process began (besides the activated sockets, which are not
    // named by `-add-fd`: the fd-set checks refuse fds already taken).
    unsafe { crate::machine::fdsets::FdSets::global().add_inherited(&config.add_fds) }
        .map_err(MainError::AddFd)?;
    let worker_sandbox = policy::resolve_sandbox(&config)?;
    let (exit_tx, exit_rx) = channel();
    install_signal_handlers(exit_tx.clone())?;
    let mut listeners = crate::monitor_sockets::bind_all(&config.qmp)?;
    listeners.extend(activated.into_iter().map(|a| QmpListener {
        listener: a.listener,
        path: None,
        first: None,
    }));
    let supervisor = Supervisor::start()?;
    let events = Arc::new(EventBus::new());
    let machine = Machine::new(config, worker_sandbox, events, supervisor, exit_tx);
    let mut created_sockets: Vec<PathBuf> = Vec::new();
    let started = policy::start_block(&machine)
        .map_err(MainError::from)
        .and_then(|()| commands::block::apply_config(&machine).map_err(MainError::Blockdev))
        .and_then(|()| policy::start_vcpu(&machine).map_err(MainError::from));
    match started {
        Ok(serial) => created_sockets.extend(serial),
        Err(e) => {
            machine.stop_workers();
            let paths: Vec<PathBuf> = listeners.iter().filter_map(|l| l.path.clone()).collect();
            remove_sockets(&paths);
            return Err(e);
        }
    }
    let serving = (|| {
        crate::privileges::drop_unneeded().map_err(MainError::Privileges)?;
        let server = QmpServer::start(listeners, machine.clone())?;
        for p in &machine.config().qmp {
            tracing::info!("QMP socket: {:?}", p.socket);
        }
        let watchdog = match &notifier {
            Some(n) => start_systemd(n, &machine)?,
            None => None,
        };
        Ok::<_, MainError>((server, watchdog))
    })();
    // A fatal error after the workers started still stops and reaps them.
    let (server, _watchdog) = match serving {
        Ok(s) => s,
        Err(e) => {
            machine.stop_workers();
            remove_sockets(&created_sockets);
            return Err(e);
        }
    };
    process_setup::report_ready();
    // Wait for a reason to end.
    let reason = exit_rx.recv().unwrap_or(ExitRequest::Quit);
    tracing::info!("ending: {reason:?}");
    if let Some(n) = &notifier {
        log_notify_error(n.stopping());
    }
    machine.stop_workers();
    server.shutdown(FLUSH_DEADLINE);
    remove_sockets(&created_sockets);
    Ok(reason.exit_status())
}

/// Tells systemd the broker is ready, keeps STATUS= current and starts the
/// watchdog pings if the unit asked for them.
fn start_systemd(
    n: &systemd::Notifier,
    machine: &Arc<Machine>,
) -> Result<Option<systemd::Watchdog>, MainError> {
    let status = n.try_clone()?;
    machine.set_status_hook(Box::new(move |text: &str| {
        log_notify_error(status.status(text))
    }));
    log_notify_error(n.status(if machine.config().start_paused {
        "prelaunch"
    } else {
        "running"
    }));
    log_notify_error(n.ready());
    let Some(interval) = systemd::watchdog_interval() else {
        return Ok(None);
    };
    let m = Arc::downgrade(machine);
    let health = move || m.upgrade().is_some_and(|m| m.is_responsive());
    Ok(Some(systemd::Watchdog::start(n, interval, health)?))
}

fn log_notify_error(r: Result<(), systemd::SystemdError>) {
    if let Err(e) = r {
        tracing::warn!("systemd notification failed: {}", error_chain(&e));
    }
}

fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        vm_setup::remove_stale_socket(p);
    }
}

/// SIGTERM, SIGINT and SIGHUP end the broker in order: a thread waits for
/// them (they are blocked in every other thread) and sends the exit request.
fn install_signal_handlers(exit_tx: Sender<ExitRequest>) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // Block in this (the main) thread before any other thread starts, so
    // every thread inherits the mask and only the waiter receives them.
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    tracing::info!("received {}", sig.as_str());
                    let _ = exit_tx.send(ExitRequest::Signal(sig as i32));
                }
                Err(e) => tracing::error!("sigwait failed: {e}"),
            }
        })?;
    Ok(())
}
