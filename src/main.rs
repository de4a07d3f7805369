//! The `runner` binary: parses the command line and hands it to [`runner::run`].

use std::process::ExitCode;

use clap::Parser;
use runner::cli::Cli;
use runner::engine::config::ApiEnv;
use runner::engine::shutdown::{Shutdown, forward_signals};

fn main() -> ExitCode {
    let cli = Cli::parse();
    runner::init_logging();
    let runtime = match runner::runtime_for(&cli.command) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runner: cannot start the async runtime: {e}");
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
