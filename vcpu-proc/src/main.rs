//! vcpu-proc's entry point: logging, then [`vcpu_proc::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    ipc_proto::logging::init();
    tracing::debug!("vcpu-proc starting");
    match vcpu_proc::run(std::env::args().collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("vcpu-proc: {}", ipc_proto::envelope::error_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
