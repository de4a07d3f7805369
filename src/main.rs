//! The `runner` binary: parses the command line and hands it to [`runner::run`].

use std::process::ExitCode;

use clap::Parser;
use runner::cli::Cli;
use runner::engine::config::ApiEnv;
use runner::engine::shutdown::{Shutdown, forward_signals};

/// mimalloc instead of the system's malloc: a run allocates and frees a few dozen small
/// objects per request (lines, bodies, answers, statements' values), often on another thread
/// than the one that made them. On the nginx benchmark it takes ~7 µs of CPU off each request
/// (47 → 40 µs). Built without transparent huge pages (`no_thp`): with them, every thread's
/// heap rounded the process up by megabytes (peak RSS before the first request of a 1M-line
/// file 39 MiB instead of 29).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    runner::init_logging();
    let runtime = match runner::runtime_for(&cli.command) {
        Ok(runtime) => runtime,
        Err(e) => {
            runner::say!("runner: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let signals = tokio::spawn(forward_signals(shutdown.clone()));
        let result = runner::run(cli.command, ApiEnv::from_process(), shutdown).await;
        signals.abort();
        result
    });
    runner::exit_code(result)
}
