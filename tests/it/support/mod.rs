//! Shared helpers for the integration tests: the real mock server on 127.0.0.1:0, input files,
//! in-process runs of the real command code, CSV and database readers, bounded waits; [`Fixture`]
//! puts the usual ones together (scratch directory, mock, input, `submit` and `resume`).

pub mod bin;
pub mod fixture;

pub use fixture::Fixture;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use runner::Exit;
use runner::cli::Cli;
use runner::engine::config::ApiEnv;
use runner::engine::shutdown::Shutdown;
use runner::http::client::ApiKey;
use runner::mock::{MockConfig, MockServer, MockStats};
use serde_json::{Value, json};

/// Upper bound for any wait in a test: generous for a loaded 2-core CI machine.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A scratch directory with a database path in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db(&self) -> PathBuf {
        self.path("runner.db")
    }

    pub fn db_arg(&self) -> String {
        self.db().display().to_string()
    }

    /// Writes `n` plain prompt lines `{"custom_id":"r-<i>","prompt":"prompt <i>"}` for i in `range`.
    pub fn prompts(&self, name: &str, range: std::ops::Range<usize>) -> PathBuf {
        let text: String = range.map(|i| format!("{}\n", prompt_line(i))).collect();
        self.write(name, &text)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write input");
        path
    }
}

/// One plain input line.
pub fn prompt_line(i: usize) -> String {
    json!({"custom_id": format!("r-{i}"), "prompt": format!("prompt {i}")}).to_string()
}

/// The body the runner sends for [`prompt_line`]`(i)` with `--model test-model`.
pub fn sent_body(i: usize) -> Value {
    json!({"model": "test-model", "messages": [{"role": "user", "content": format!("prompt {i}")}]})
}

/// Starts the mock with `config` on a free loopback port.
pub async fn mock(config: MockConfig) -> MockServer {
    MockServer::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
        .await
        .expect("mock server starts")
}

/// An environment with a test key and nothing else.
pub fn env() -> ApiEnv {
    env_with_key("sk-test-0123456789abcdef")
}

pub fn env_with_key(key: &str) -> ApiEnv {
    ApiEnv {
        api_key: Some(ApiKey::new(key)),
        ..ApiEnv::default()
    }
}

/// Parses `args` as the real CLI and runs the command in-process.
pub async fn run(args: &[impl AsRef<str>], env: ApiEnv) -> anyhow::Result<Exit> {
    run_with(args, env, Shutdown::new()).await
}

pub async fn run_with(
    args: &[impl AsRef<str>],
    env: ApiEnv,
    shutdown: Shutdown,
) -> anyhow::Result<Exit> {
    let args = std::iter::once("runner").chain(args.iter().map(AsRef::as_ref));
    let cli = Cli::try_parse_from(args).map_err(|e| anyhow::anyhow!("usage error: {e}"))?;
    runner::run(cli.command, env, shutdown).await
}

/// Runs `args` in-process on a task of its own, so a test can act while it runs (stop it,
/// start a rival, read the journal).
pub fn spawn_run(
    args: &[impl AsRef<str>],
    env: ApiEnv,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<anyhow::Result<Exit>> {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    tokio::spawn(async move { run_with(&args, env, shutdown).await })
}

/// `submit FILE --db DB --base-url MOCK --model test-model --no-progress` plus `extra`.
pub fn submit_args<'a>(
    file: &'a str,
    db: &'a str,
    base_url: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "submit",
        file,
        "--db",
        db,
        "--base-url",
        base_url,
        "--model",
        "test-model",
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    args
}

/// Polls `check` every 10 ms until it holds; panics after [`WAIT_LIMIT`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future` within [`WAIT_LIMIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Exports a job as Batch-output JSONL (through the real command) and parses each line.
pub fn export_jsonl(db: &Path, job: &str) -> Vec<Value> {
    let out = db.with_file_name(format!("{job}-export.jsonl"));
    let args = runner::cli::ExportArgs {
        job: Some(job.to_owned()),
        db: runner::cli::DbArgs { db: db.to_owned() },
        format: runner::cli::ExportFormat::Jsonl,
        layout: None,
        output: Some(out.clone()),
        no_sanitize: false,
        prices: runner::cli::PriceArgs::default(),
    };
    runner::inspect::export::export(&args).expect("export");
    std::fs::read_to_string(&out)
        .expect("export file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("jsonl line"))
        .collect()
}

/// Input text: each of `lines` (JSON values or strings) on a line of its own.
pub fn jsonl<T: std::fmt::Display>(lines: impl IntoIterator<Item = T>) -> String {
    lines.into_iter().map(|l| format!("{l}\n")).collect()
}

/// Exports a job as CSV (through the real command) and parses it back.
pub fn export_csv(db: &Path, job: &str) -> (Vec<String>, Vec<csv::StringRecord>) {
    let out = db.with_file_name(format!("{job}-export.csv"));
    let args = runner::cli::ExportArgs {
        job: Some(job.to_owned()),
        db: runner::cli::DbArgs { db: db.to_owned() },
        format: runner::cli::ExportFormat::Csv,
        layout: None,
        output: Some(out.clone()),
        no_sanitize: false,
        prices: runner::cli::PriceArgs::default(),
    };
    runner::inspect::export::export(&args).expect("export");
    let mut reader = csv::Reader::from_path(&out).expect("csv opens");
    let header = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .collect::<Result<Vec<_>, _>>()
        .expect("rows parse");
    (header, rows)
}

/// The value of `column` in `row`, by header name.
pub fn cell<'r>(header: &[String], row: &'r csv::StringRecord, column: &str) -> &'r str {
    let index = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    &row[index]
}

/// Reads one integer from the database with `sql`.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    conn.query_row(sql, [], |r| r.get(0)).expect("query")
}

/// How many requests of the database's jobs are in `state` (`pending`, `succeeded`, …).
pub fn requests_in(db: &Path, state: &str) -> i64 {
    query_i64(
        db,
        &format!("SELECT count(*) FROM requests WHERE state = '{state}'"),
    )
}

/// [`requests_in`] for a database that a running binary may still be creating: `None` until
/// the file and its schema exist.
pub fn try_requests_in(db: &Path, state: &str) -> Option<i64> {
    try_query_i64(
        db,
        &format!("SELECT count(*) FROM requests WHERE state = '{state}'"),
    )
}

/// Retries sent before the server's time: attempts that follow a 429 (`rate_limited`) sooner
/// than `wait_ms` after it.
pub fn early_retries(db: &Path, wait_ms: i64) -> i64 {
    query_i64(
        db,
        &format!(
            "SELECT count(*) FROM attempts a JOIN attempts b ON a.request_id = b.request_id AND b.number = a.number + 1
             WHERE a.error_class = 'rate_limited' AND b.started_at < a.finished_at + {wait_ms}"
        ),
    )
}

/// Asserts that the mock answered [`sent_body`]`(i)` with exactly one success for each i in
/// `range`.
#[track_caller]
pub fn assert_succeeded_once(stats: &MockStats, range: std::ops::Range<usize>) {
    for i in range {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
}

/// Custom ids of requests that have an `interrupted` attempt (sent twice is allowed for them).
pub fn interrupted_ids(db: &Path) -> std::collections::HashSet<String> {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let mut stmt = conn
        .prepare(
            "SELECT DISTINCT r.key FROM attempts a JOIN requests r ON r.id = a.request_id
             WHERE a.outcome IN ('interrupted', 'outcome_unknown')",
        )
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Polls the mock with a probe request until it answers 200: a spike window (wall-clock based)
/// has passed. Bounded by [`WAIT_LIMIT`].
pub async fn wait_until_healthy(base_url: &str) {
    let client = reqwest::Client::new();
    let url = format!("{base_url}/chat/completions");
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        let status = client
            .post(&url)
            .json(&json!({"model": "probe", "messages": [{"role": "user", "content": "probe"}]}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok();
        if status == Some(200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mock never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one text value from the database with `sql` (NULL as `None`).
pub fn query_text(db: &Path, sql: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    conn.query_row(sql, [], |r| r.get(0)).expect("query")
}

/// Keys of the requests the journal says succeeded.
pub fn journaled_successes(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let mut stmt = conn
        .prepare("SELECT key FROM requests WHERE state = 'succeeded'")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// `PRAGMA integrity_check` of the database: "ok" when nothing is corrupted.
pub fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// Writes `text` as raw bytes (for input that is not UTF-8).
pub fn write_bytes(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write input");
}

/// [`query_i64`] for a database that a running binary may still be creating: `None` until the
/// file and its schema exist.
pub fn try_query_i64(db: &Path, sql: &str) -> Option<i64> {
    if !db.exists() {
        return None;
    }
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(sql, [], |r| r.get(0)).ok()
}
