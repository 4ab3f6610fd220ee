//! `net-proc`: the network worker. Thin: see the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    net_proc::main_with_args(std::env::args().collect())
}
