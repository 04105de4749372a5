//! `cb-host`: run the Circuit Breaker host, drive it from the command line,
//! and inspect plugins. `cb-host --help` for the commands.

mod cli;
mod demo;
mod embedded;
mod output;

use std::process::ExitCode;

/// The host allocates and frees many small buffers per write (NATS headers,
/// JSON bodies) across its worker threads; mimalloc took a third off the
/// client CPU per token move against glibc malloc here (its arena locks were
/// contended between the worker that builds a write and the one that sends
/// it). The library leaves the choice to embedders.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::main()
}
