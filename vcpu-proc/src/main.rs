//! vcpu-proc's entry point: logging, then [`vcpu_proc::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match vcpu_proc::run(std::env::args().collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vcpu-proc: {}", ipc_proto::envelope::error_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
