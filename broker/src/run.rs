//! Start-up and orderly shutdown of the broker: parse the command line,
//! bind the QMP sockets (waiting for the first client of each `wait=on`
//! one, as QEMU: nothing of the VM exists before it connected), start
//! the supervisor and the QMP server (clients are greeted at once;
//! commands that need the VM wait for its start gate), then the workers
//! (vcpu-proc's spawn overlaps block-proc's start), then wait for a
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
    /// A serial backend the broker serves (TCP) could not be opened
    /// (QEMU's message).
    #[error("bulkhead")]
    Chardev(#[from] crate::chardev::ChardevError),
    /// The systemd environment is malformed.
    #[error("systemd integration failed")]
    Systemd(#[from] systemd::SystemdError),
    /// `-trace file=` cannot be opened (QEMU's message).
    #[error("bulkhead")]
    Trace(#[from] crate::machine::trace_state::TraceStateError),
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
            MainError::Trace(_) => 1,
            MainError::Chardev(_) => 1,
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
    let trace_file = crate::machine::trace_state::TraceState::open_file(&config.trace)?;
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
    // Serial backends the broker serves are opened before the monitors,
    // as QEMU's chardevs: `query-chardev` names the pty from the start.
    match &config.serial {
        cli::SerialSpec::Tcp(t) => crate::chardev::tcp::open(t)?,
        cli::SerialSpec::Pty(label) => {
            drop(crate::machine::serial_pty::master(label).map_err(|e| {
                MainError::Start(policy::StartError::from(vm_setup::SetupError::from(e)))
            })?)
        }
        _ => {}
    }
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
    if let Some(f) = trace_file {
        machine.trace().set_file(f);
    }
    // Greet as soon as the monitor can answer: commands that need the VM
    // wait for the start gate while the workers come up.
    let mut qmp_paths: Vec<PathBuf> = listeners.iter().filter_map(|l| l.path.clone()).collect();
    // Human monitors: on stdio (alone or muxed with the serial port; the
    // guard restores the terminal at exit) and on Unix sockets.
    let human = crate::chardev::mux::start(&machine)
        .map_err(MainError::from)
        .and_then(|t| Ok((t, crate::monitor::serve_sockets(&machine)?)));
    let (_terminal, hmp_paths) = match human {
        Ok(h) => h,
        Err(e) => {
            remove_sockets(&qmp_paths);
            return Err(e);
        }
    };
    qmp_paths.extend(hmp_paths.iter().cloned());
    let server = match QmpServer::start(listeners, machine.clone()) {
        Ok(s) => s,
        Err(e) => {
            remove_sockets(&qmp_paths);
            return Err(e.into());
        }
    };
    let started = start_workers(&machine).and_then(|serial| {
        crate::privileges::drop_unneeded()
            .map(|()| serial)
            .map_err(MainError::Privileges)
    });
    let created_sockets: Vec<PathBuf> = match started {
        Ok(serial) => serial.into_iter().chain(hmp_paths).collect(),
        Err(e) => {
            machine.start_gate().fail(error_chain(&e));
            machine.stop_workers();
            server.shutdown(FLUSH_DEADLINE);
            remove_sockets(&hmp_paths);
            return Err(e);
        }
    };
    machine.start_gate().open();
    for (origin, name) in machine.trace().unknown_startup_names() {
        eprintln!("bulkhead: {origin}: warning: trace event '{name}' does not exist");
    }
    for p in &machine.config().qmp {
        tracing::info!("QMP socket: {:?}", p.socket);
    }
    let _watchdog = match notifier.as_ref().map(|n| start_systemd(n, &machine)) {
        Some(Ok(w)) => w,
        None => None,
        // A fatal error after the workers started still stops and reaps them.
        Some(Err(e)) => {
            machine.stop_workers();
            server.shutdown(FLUSH_DEADLINE);
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

/// Brings the workers up: vcpu-proc is spawned and completes its handshake
/// on a second thread while block-proc starts and the `-blockdev`s are
/// applied on this one; then the VM is created in vcpu-proc (its devices
/// connect to block-proc's exports). Errors come in the order of a
/// sequential start: block-proc's, the `-blockdev`s', then vcpu-proc's.
fn start_workers(machine: &Arc<Machine>) -> Result<Option<PathBuf>, MainError> {
    // `-machine none`: no guest, so no vcpu-proc (see `no_vm`).
    let has_vm = machine.config().machine != cli::MachineType::None;
    let vcpu = if has_vm {
        let m = machine.clone();
        Some(
            std::thread::Builder::new()
                .name("vcpu-start".into())
                .spawn(move || policy::spawn_vcpu(&m))?,
        )
    } else {
        None
    };
    let block = policy::start_block(machine)
        .map_err(MainError::from)
        .and_then(|()| commands::block::apply_config(machine).map_err(MainError::Blockdev));
    let vcpu = match vcpu {
        Some(t) => Some(
            t.join()
                .map_err(|_| std::io::Error::other("the vcpu start-up thread panicked"))?,
        ),
        None => None,
    };
    block?;
    // The netdevs (and the switches on them) before the NICs on them.
    crate::machine::netdevs::apply_config(machine)
        .map_err(|e| MainError::from(policy::StartError::Device(e)))?;
    match vcpu {
        Some(v) => Ok(policy::start_vcpu(machine, v)?),
        None => Ok(None),
    }
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
    log_notify_error(n.status(if machine.config().incoming.is_some() {
        "inmigrate"
    } else if machine.config().start_paused {
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
