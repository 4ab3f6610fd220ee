//! block-proc entry point: `--control-fd N` (spawned by the broker) or
//! `--standalone ...` (tests and benchmarks).

use std::process::ExitCode;

use ipc_proto::WorkerKind;

/// Why block-proc stopped.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("start-up failed")]
    Startup(#[from] ipc_proto::worker::StartupError),
    #[error("serving the broker failed")]
    Server(#[from] block_proc::server::ServerError),
    #[error("standalone mode failed")]
    Standalone(#[from] block_proc::standalone::StandaloneError),
    #[error("cannot enter the sandbox")]
    Sandbox(#[from] sandbox::SandboxError),
}

fn run() -> Result<(), MainError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--standalone") {
        return Ok(block_proc::standalone::run(&args)?);
    }
    // The seccomp filter is compiled before the handshake, the sandbox
    // entered right after it: before any guest-controlled data arrives.
    let sandbox = sandbox::Sandbox::from_args(WorkerKind::Block, &args)?;
    let fd = ipc_proto::worker::control_fd_from_args(args)?;
    let chan = ipc_proto::worker::connect(WorkerKind::Block, fd)?;
    if let Some(report) = sandbox.enter()? {
        if let Some(w) = report.landlock.warning() {
            tracing::warn!("{w}");
        }
    }
    Ok(block_proc::server::run(chan)?)
}

fn main() -> ExitCode {
    ipc_proto::logging::init();
    tracing::debug!("block-proc starting");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("block-proc: {}", ipc_proto::envelope::error_chain(&e));
            match e {
                MainError::Startup(_) => ExitCode::from(2),
                MainError::Server(_) => ExitCode::from(3),
                MainError::Standalone(_) => ExitCode::from(4),
                MainError::Sandbox(_) => ExitCode::from(5),
            }
        }
    }
}
