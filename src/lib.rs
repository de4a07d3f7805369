//! runner: a resilient batch request runner for the OpenAI API and OpenAI-compatible servers.
//!
//! `runner submit prompts.jsonl` streams the file into a SQLite journal, sends every request
//! through a rate-limited worker pool, tells transient failures from permanent ones (requeueing
//! the intermittent "401 Missing scopes"), and can be killed at any moment and resumed without
//! re-sending anything that succeeded.
//!
//! # Layout
//!
//! - [`cli`]: the raw command-line flags (clap); [`engine::config`]: checked settings, the
//!   `OPENAI_*` and `AZURE_OPENAI_*` environment, defaults.
//! - [`input`]: JSONL → [`input::Prompt`], streamed, every error naming file and line;
//!   [`store::ingest`] reads a whole file into a job, all or nothing.
//! - [`store`]: [`store::JobStore`], the one owner of the SQLite connection (a thread, group
//!   commit); [`store::db`] holds the SQL, [`store::migrate`] the schema versions,
//!   [`store::lease`] the one-runner-per-job lease, [`store::fault`] storage faults in words a
//!   user can act on.
//! - [`domain`]: the vocabulary: ids, the request state machine, the taxonomy's classes, events.
//! - [`engine`]: a job's run: [`engine::job`] (submit, resume, retry-failed), [`engine::pool`]
//!   (claims due requests, passes each through the gates: a 429's pause, the [`engine::keys`]
//!   pool, the [`engine::breaker`], the [`engine::rate_limit`] ceilings and pacer),
//!   [`engine::attempt`] (one attempt: read, decide, record), [`engine::retry`] (what follows an
//!   attempt), [`engine::tokens`] (token estimates for `--tpm`), [`engine::progress`] (the bar
//!   or summary lines on stderr), [`engine::shutdown`] (two-stage Ctrl-C handling).
//! - [`http`]: [`http::client`] sends one attempt (with [`http::headers`]); [`http::sse`]
//!   assembles streamed answers; [`http::classify`] is the error taxonomy (one enum, one
//!   function); [`http::response`] reads usage and output text of success bodies.
//! - [`inspect`]: showing what happened: [`inspect::export`] (CSV and Batch-output JSONL),
//!   [`inspect::status`], [`inspect::summary`] and [`inspect::prices`] (counts, cost estimate,
//!   throughput), [`inspect::timeline`], [`inspect::attempts`], [`inspect::report`] (the HTML
//!   report), [`inspect::doctor`].
//! - [`mock`]: the fault-injecting mock of the OpenAI API (`runner mock-server`, tests);
//!   [`demo`]: `runner demo`.
//!
//! # Data flow
//!
//! ```text
//! file ─▶ input ─▶ store::ingest (requests: pending, one transaction)
//!                        │
//!           worker: claim due ─▶ gates (429 pause, key, breaker, rpm/tpm, pacer)
//!                        │                                   │
//!                        │             attempt: http ─▶ classify ─▶ retry policy
//!                        ▲                                   │
//!                        └── attempt row + new state, group-committed by the store thread
//! store ─▶ export (CSV / JSONL), status, attempts, timeline, report
//! ```

pub mod cli;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod http;
pub mod input;
pub mod inspect;
pub mod mock;
pub mod store;
pub mod util;

use std::io;
use std::process::ExitCode;

use crate::cli::Command;
use crate::engine::config::ApiEnv;
use crate::engine::job;
use crate::engine::shutdown::Shutdown;
use crate::inspect::{attempts, doctor, export, report, status};

/// How a command ended, as the process exit code (see README "Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: every request succeeded (or the command had nothing to send).
    Success,
    /// 3: the job finished and some requests failed permanently.
    SomeFailed,
    /// 4: a job-level condition (bad key, quota, …) stopped it; requests are pending.
    Stopped,
    /// 130: interrupted by a signal; resumable.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::SomeFailed => 3,
            Exit::Stopped => 4,
            Exit::Interrupted => 130,
        }
    }
}

/// Runs one command. `shutdown` is triggered by signals in the binary and by tests directly.
///
/// # Errors
/// Anything that ends the command with exit code 1: bad input or settings, storage faults.
/// Failed requests are not errors: they are journaled and reflected in [`Exit`].
pub async fn run(command: Command, env: ApiEnv, shutdown: Shutdown) -> anyhow::Result<Exit> {
    match command {
        Command::Submit(args) => job::submit(args, &env, &shutdown).await,
        Command::Resume(args) => job::resume(args, &env, &shutdown).await,
        Command::RetryFailed(args) => job::retry_failed(args, &env, &shutdown).await,
        Command::Status(args) => blocking(move || status::status(&args, io::stdout().lock())).await,
        Command::Jobs(args) => blocking(move || status::jobs(&args, io::stdout().lock())).await,
        Command::Export(args) => blocking(move || export::export(&args).map(drop)).await,
        Command::MockServer(args) => demo::mock_server(&args, &shutdown)
            .await
            .map(|()| Exit::Success),
        Command::Demo(args) => demo::demo(args, &shutdown).await,
        Command::Attempts(args) => {
            blocking(move || attempts::attempts(&args, io::stdout().lock()).map(drop)).await
        }
        Command::Timeline(args) => {
            blocking(move || status::timeline(&args, io::stdout().lock())).await
        }
        Command::Report(args) => blocking(move || report::report(&args)).await,
        Command::Doctor(args) => doctor::doctor(&args, &env).await,
    }
}

/// Runs a read-only command off the async workers (rusqlite blocks).
async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<Exit> {
    tokio::task::spawn_blocking(f).await??;
    Ok(Exit::Success)
}

/// Turns a command's result into the process exit code, printing the error if there is one.
/// Writing into a closed pipe (`runner export | head`) is not an error.
pub fn exit_code(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runner: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<export::ExportError>()
                .is_some_and(|e| matches!(e, export::ExportError::Io(io) if io.kind() == io::ErrorKind::BrokenPipe))
    })
}

/// Sets up logging to stderr; `RUNNER_LOG` takes a filter such as `debug` or `runner=trace`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false)
        .init();
}
