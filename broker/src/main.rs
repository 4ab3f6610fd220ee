//! `bulkhead`: parses the command line and runs the broker.

use std::process::ExitCode;

fn main() -> ExitCode {
    broker::run::main_with_args(std::env::args().skip(1).collect())
}
