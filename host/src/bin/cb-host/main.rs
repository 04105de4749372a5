//! `cb-host`: run the Circuit Breaker host, drive it from the command line,
//! and inspect plugins. `cb-host --help` for the commands.

mod cli;
mod demo;
mod embedded;
mod output;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
