//! runner: a resilient batch request runner for the OpenAI API and OpenAI-compatible servers.
//!
//! `runner submit prompts.jsonl` streams the file into a SQLite journal, sends every request
//! through a rate-limited worker pool, tells transient failures from permanent ones (requeueing
//! the intermittent "401 Missing scopes"), and can be killed at any moment and resumed without
//! re-sending anything that succeeded.
//!
//! # Layout
//!
//! Folders by concern, lowest layer last; every import points down this list (checked by
//! `tests/it/architecture.rs`).
//!
//! - This file: [`run`] (one command), [`runtime_for`] (its async runtime), [`exit_code`],
//!   logging. [`demo`]: `runner demo`.
//! - [`inspect`]: the read-only commands over the journal: [`inspect::status`] (`status`,
//!   `jobs`; [`inspect::summary`], [`inspect::prices`]), [`inspect::attempts`],
//!   [`inspect::timeline`] (buckets, spikes, chart), [`inspect::report`] (HTML),
//!   [`inspect::export`] (CSV, Batch JSONL), [`inspect::doctor`], [`inspect::estimate`] (what a
//!   file would cost and take, before anything is sent).
//! - [`engine`]: running a job. [`engine::job`] orchestrates `submit`, `resume` and
//!   `retry-failed` as a `JobRun`; [`engine::feed`] reads a new job's file into it while the
//!   pool sends its first requests; [`engine::config`] checks settings;
//!   [`engine::destination`] decides which base URL wins and whether a key may go there;
//!   [`engine::pool`] claims
//!   due requests and passes each through the gates (429 pause, [`engine::keys`],
//!   [`engine::breaker`], [`engine::rate_limit`]); [`engine::attempt`] reads, decides
//!   ([`engine::retry`]) and records one attempt; [`engine::context`] is what attempt tasks
//!   share; [`engine::progress`], [`engine::shutdown`];
//!   [`engine::batch`] runs a `--via batch` job through the hosted Batch API (chunks, their
//!   steps on the server, results imported as attempts); [`engine::ending`] says how a run ended;
//!   [`engine::sizing`] sizes the pool, [`engine::pacers`] paces by the announced limits,
//!   [`engine::spend`] holds `--max-cost`; [`engine::outlook`] is the line of tokens and cost
//!   that opens a submit; [`engine::deadline`] plans `--via auto --deadline`.
//! - [`store`]: [`store::JobStore`], the one owner of the SQLite connection (a thread, group
//!   commit; a second thread checkpoints the WAL). Every SQL statement lives here:
//!   [`store::db`] (writes, jobs), [`store::journal`] (read-only queries), [`store::batches`]
//!   (chunks and Files/Batches calls),
//!   [`store::ingest`] (a file into a job, all or nothing; [`store::ingest::direct`] for a new
//!   job's checked file),
//!   [`store::lease`] (one runner per job), [`store::model`] (a new `--model` for the requests
//!   still to send), [`store::migrate`], [`store::fault`].
//! - [`cli`]: the raw command-line flags (clap); [`cli::docs`] generates the shell completions
//!   and man pages from them (`runner completions`, `runner man`).
//! - [`http`]: [`http::client`] sends one attempt; [`http::classify`] is the error taxonomy (one
//!   function); [`http::headers`] checks and merges the headers a request carries;
//!   [`http::response`] reads success bodies; [`http::sse`] assembles streamed
//!   answers; [`http::body`] and [`http::hints`] read bodies and headers with bounds;
//!   [`http::batch`] calls the hosted Batch API (Files and Batches); [`http::key`] is the key and
//!   its fingerprint, [`http::redact`] keeps it out of what servers say.
//! - [`mock`]: the fault-injecting mock of the OpenAI API (`runner mock-server`, the tests),
//!   with the Files and Batches endpoints.
//! - [`input`]: JSONL, CSV/TSV spreadsheets and plain text → [`input::Prompt`], streamed, every
//!   error naming file and line; [`input::check`] reads a whole file first; [`input::tally`]
//!   counts and prices a file's requests.
//! - [`domain`]: the vocabulary: ids, [`domain::JobState`], [`domain::RequestState`],
//!   [`domain::ChunkState`],
//!   [`domain::Class`] with its [`domain::StopCause`], [`domain::AttemptClass`],
//!   [`domain::EventKind`], [`Exit`]; one enum each, text only at the SQL and output boundaries;
//!   [`domain::tokens`] (a request's token cost, as the API counts it), [`domain::price`] (the
//!   dated price table).
//! - [`util`]: the clock, private files, locks, printable text, `say!` (stderr lines that never
//!   panic), [`util::spool`] (the answers' memory budget and their spool files).
//!
//! # Data flow
//!
//! ```text
//! file ─▶ input::check (whole file) ─▶ engine::feed ─▶ store::ingest (requests: pending)
//!                        │
//!     engine::pool: claim due ─▶ gates (429 pause, key, breaker, rpm/tpm, pacer)
//!                        │                                   │
//!                        │     engine::attempt: http::client ─▶ read (classify) ─▶ decide
//!                        ▲                                   │
//!                        └── record: attempt row + new state, group-committed by the store
//! store ─▶ inspect: export (CSV / JSONL), status, attempts, timeline, report
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

pub use crate::domain::Exit;

use crate::cli::{Command, docs};
use crate::engine::config::ApiEnv;
use crate::engine::job;
use crate::engine::shutdown::Shutdown;
use crate::inspect::{attempts, doctor, estimate, export, prices, report, status};

/// Runs one command. `shutdown` is triggered by signals in the binary and by tests directly.
///
/// # Errors
/// Anything that ends the command with exit code 1: bad input or settings, storage faults.
/// Failed requests are not errors: they are journaled and reflected in [`Exit`].
pub async fn run(command: Command, env: ApiEnv, shutdown: Shutdown) -> anyhow::Result<Exit> {
    match command {
        Command::Submit(args) if args.dry_run => {
            let args = cli::EstimateArgs {
                submit: args,
                like: None,
                json: false,
                prices: None,
            };
            blocking(move || estimate::estimate(&args, &env, &mut io::stdout().lock())).await
        }
        Command::Submit(args) => job::submit(args, &env, &shutdown).await,
        Command::Estimate(args) => {
            blocking(move || estimate::estimate(&args, &env, &mut io::stdout().lock())).await
        }
        Command::Prices(args) => {
            blocking(move || prices::list(&args, &mut io::stdout().lock())).await
        }
        Command::Resume(args) => job::resume(args, &env, &shutdown).await,
        Command::RetryFailed(args) => job::retry_failed(args, &env, &shutdown).await,
        Command::Cancel(args) => job::cancel(args, &env, &shutdown).await,
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
        Command::Completions(args) => {
            blocking(move || Ok(docs::print_completions(args.shell)?)).await
        }
        Command::Man(args) => blocking(move || Ok(docs::print_man(args.dir.as_deref())?)).await,
    }
}

/// Runs a read-only command off the async workers (rusqlite blocks).
async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<Exit> {
    tokio::task::spawn_blocking(f).await??;
    Ok(Exit::Success)
}

/// The async runtime a command runs on. A job's async work is waiting on sockets plus a little
/// bookkeeping per request, and its SQLite work runs on the store's own thread: one runtime
/// thread does the rest with far fewer wake-ups and context switches, and less CPU per request,
/// than a pool of workers handing tasks to each other (measured in docs/benchmarks.md).
/// The mock server (and `demo`, which runs one in-process) answers many connections at once
/// and keeps a worker per core.
///
/// # Errors
/// When the runtime cannot be built (the OS refuses a thread, an epoll instance or a timer).
pub fn runtime_for(command: &Command) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = match command {
        Command::MockServer(_) | Command::Demo(_) => tokio::runtime::Builder::new_multi_thread(),
        Command::Submit(_)
        | Command::Estimate(_)
        | Command::Prices(_)
        | Command::Resume(_)
        | Command::RetryFailed(_)
        | Command::Cancel(_)
        | Command::Status(_)
        | Command::Export(_)
        | Command::Jobs(_)
        | Command::Attempts(_)
        | Command::Timeline(_)
        | Command::Report(_)
        | Command::Doctor(_)
        | Command::Completions(_)
        | Command::Man(_) => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build()
}

/// Turns a command's result into the process exit code, printing the error if there is one.
/// Writing into a closed pipe (`runner export | head`) is not an error; a [`cli::UsageError`]
/// exits 2, as clap's own usage errors do.
pub fn exit_code(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // A prices file that is not one is a bad argument too.
        Err(e)
            if e.chain().any(|cause| {
                cause.is::<cli::UsageError>()
                    || cause
                        .downcast_ref::<domain::price::PriceError>()
                        .is_some_and(|p| !matches!(p, domain::price::PriceError::Read { .. }))
            }) =>
        {
            crate::say!("runner: {}", message(&e));
            ExitCode::from(2)
        }
        Err(e) => {
            crate::say!("runner: {}", message(&e));
            if e.chain().any(|cause| {
                cause
                    .downcast_ref::<input::InputError>()
                    .is_some_and(input::InputError::is_invalid_line)
            }) {
                crate::say!(
                    "runner: nothing was sent. Fix the line, or pass --skip-invalid to record each bad line \
                     as a failed request and send the rest"
                );
            }
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, `: `-separated as `{:#}` would print them, leaving out a cause
/// whose text the message already holds: most errors here name their source in their own
/// message (`cannot open database x.db: unable to open database file`), and `{:#}` said it
/// again.
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn an_error_message_says_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let named = anyhow::Error::new(io).context("cannot write x.db: disk on fire");
        assert_eq!(message(&named), "cannot write x.db: disk on fire");
        let unnamed =
            anyhow::Error::new(std::io::Error::other("disk on fire")).context("cannot write x.db");
        assert_eq!(message(&unnamed), "cannot write x.db: disk on fire");
    }
}
