//! A fault-injecting mock of the OpenAI HTTP API.
//!
//! Used by `runner mock-server`, `runner demo` and the integration tests. It answers the chat,
//! responses, embeddings and completions endpoints with bodies derived from the request (so a test
//! can prove that an output belongs to its input), and injects the failures the runner has to
//! survive: `missing_scope` spikes, RBAC denials, rate limits, server errors, malformed bodies,
//! hangs, revoked keys and an exhausted quota.
//!
//! # Layout
//! - `mod.rs`: the configuration ([`MockConfig`], [`Spike`]) and the [`MockServer`] handle.
//! - `server.rs`: the axum router and the per-request decision (precedence of faults).
//! - `faults.rs`: [`Fault`], the reproducible fault draw and the exact error answers.
//! - `echo.rs`: the success bodies, derived from the request body.
//! - `stream.rs`: streamed chat answers (`"stream": true`): chunks, `include_usage`, `[DONE]`;
//!   `--cut-streams N` cuts the first N attempts of each body half-way, `--stream-errors N` ends
//!   the next N with an error event.
//! - `answer.rs`: an answer before it becomes an HTTP response (status, body, headers), and
//!   padded bodies streamed without being held in memory.
//! - `latency.rs`: how long an answer takes: a median, a lognormal spread, a [`SlowDown`].
//! - `limit.rs`: the server-side rate limits (requests and tokens per minute), one bucket type
//!   weighted by 1 for requests and by token cost for tokens.
//! - `stats.rs`: [`MockStats`] and the counters behind it.
//! - `batch.rs`: the hosted Batch API (`/v1/files`, `/v1/batches`): uploads, batches that move
//!   through their statuses over [`MockConfig::batch_processing`], shuffled output and error
//!   files, and the batch faults ([`BatchFate`], `missing_scope` on upload or create);
//!   `multipart.rs` reads the upload form.
//! - `args.rs`: the `runner mock-server` flags ([`MockArgs`]) and their checks.
//!
//! # Request ids
//! Every answer carries `x-request-id: req_<32 hex>` and `openai-processing-ms`.
//!
//! # Latency
//! Every answer waits [`MockConfig::latency`], or with [`MockConfig::latency_spread`] a lognormal
//! draw whose median it is (bounded to 20 times either way, and to 10 minutes), multiplied by
//! the [`SlowDown`] factor once it has begun. Draws are reproducible from [`MockConfig::seed`]:
//! a request's is keyed by its body and attempt. An answer that waited carries the draw as
//! `x-mock-latency-us`. Rate-limit refusals of the limits below answer at once, as OpenAI's do.
//!
//! # Rate limits
//! [`MockConfig::requests_per_second`] and [`MockConfig::tokens_per_minute`] are enforced as
//! OpenAI enforces them: continuously refilled buckets holding a short share of the minute (a
//! tenth of a second of requests, a second of tokens), so a burst earns 429s while the minute's
//! total is under the limit. A request costs its prompt tokens plus the most output it asks for
//! (times `n`; 256 when it names no maximum), counted at admission. A request bigger than the
//! token bucket waits for it to be full and leaves it in debt; one bigger than the whole
//! minute's limit gets 429 "Request too large". A refusal (429 `rate_limit_exceeded`, type
//! `requests` or `tokens`, "Limit L, Used U, Requested R. Please try again in 120ms.",
//! `retry-after-ms`) takes nothing from either limit. Every POST answer carries
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits that are on; remaining
//! is the minute's limit less what the bucket lacks to be full, reset the time until it is
//! full. [`MockStats::admitted`] and [`MockStats::limited`] measure how much of the allowed rate
//! a client reached.
//!
//! With [`MockConfig::absurd_rate_headers`], every answer instead carries rate-limit and
//! retry headers no API sends (`1e-300`, `-3`, `forever`, `NaN`, …), varied answer by answer.
//!
//! # Forcing a status
//! A request body with `"mock_status": N` gets status `N` on every attempt (see
//! `faults::forced` for the bodies), with `"mock_message": "…"` as its error message if given.
//! This is how tests make one request fail permanently.
//!
//! # Hostile answers
//! A request body can also ask for what a hostile or broken server sends:
//! `"mock_headers": {"retry-after": "1e30"}` adds those headers to every answer to it,
//! `"mock_rate_limited_first": N` answers its first N attempts 429 `rate_limit_exceeded`, and
//! `"mock_body_bytes": N` pads its success body with spaces to N bytes (at most 320,000,000;
//! above 1 MiB the padding is streamed with its `Content-Length`, never held in memory).

mod answer;
mod args;
mod batch;
mod echo;
pub(crate) mod faults;
mod latency;
mod limit;
mod multipart;
mod server;
mod stats;
mod stream;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::tokens::{self, Encoding};

pub use args::{MockArgs, MockArgsError, RetryAfterArg};
pub use batch::{BatchCounts, BatchFate, BatchOp};
pub use faults::Fault;
pub use latency::SlowDown;
pub use stats::{Admitted, BodyCounts, Limited, MockStats};

/// How the mock behaves: latency, fault rates, rate limits and scripted failures.
///
/// [`MockConfig::default`] is a healthy server: no latency, no faults, no limits.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Added to every answer; with [`MockConfig::latency_spread`], the median of the latencies
    /// drawn.
    pub latency: Duration,
    /// Sigma of a lognormal around [`MockConfig::latency`]: 0 (the default) answers after
    /// exactly `latency`, 1 spreads the middle half of the answers over about half to twice it.
    /// Draws are bounded to 20 times the median either way.
    pub latency_spread: f64,
    /// From a moment on, every latency drawn is multiplied by a factor: a model slowing down
    /// mid-job.
    pub slow_down: Option<SlowDown>,
    /// Makes fault and latency draws reproducible: the same seed gives the same faults and
    /// latencies for the same bodies.
    pub seed: u64,
    /// Share of requests answered 401 `missing_scope` (0.0..=1.0).
    pub missing_scope_rate: f64,
    /// Share of requests answered 429 `rate_limit_exceeded`.
    pub rate_limit_rate: f64,
    /// Sent with rate-limit 429s, as `retry-after-ms` and as `retry-after` (seconds, rounded up).
    pub retry_after: Duration,
    /// Share of requests answered 500 `server_error`.
    pub server_error_rate: f64,
    /// Share of requests answered 200 with a body that is not JSON.
    pub malformed_rate: f64,
    /// Share of requests that sleep [`MockConfig::hang`] and then answer 500 (the client usually
    /// times out first).
    pub hang_rate: f64,
    /// How long a hanging request sleeps before it answers.
    pub hang: Duration,
    /// Time windows, measured from server start, where every request gets the spike's fault.
    pub spikes: Vec<Spike>,
    /// Bearer keys answered 401 `invalid_api_key` on every request.
    pub invalid_keys: Vec<String>,
    /// Keys answered 403 `model_not_allowed`-style "project does not have access" on every request.
    pub forbidden_keys: Vec<String>,
    /// After this many successful answers, every request gets 429 `insufficient_quota`.
    pub quota_after: Option<u64>,
    /// Keys that flap: each request presenting one gets 401 `missing_scope` with this
    /// probability, on top of everything else (the "stuck to one key" reports of April 2026).
    pub flaky_keys: Vec<(String, f64)>,
    /// Which wait hints rate-limit 429s carry.
    pub retry_after_style: RetryAfterStyle,
    /// Models this server does not have: requests naming one get 404 `model_not_found`.
    pub unknown_models: Vec<String>,
    /// A server-side limit in requests per second: above it, 429 `rate_limit_exceeded` type
    /// `requests`; every POST answer carries `x-ratelimit-{limit,remaining,reset}-requests`.
    pub requests_per_second: Option<f64>,
    /// A server-side limit in tokens per minute, counted at admission as prompt plus the most
    /// output asked for: above it, 429 `rate_limit_exceeded` type `tokens` ("Request too large"
    /// for a request over the whole minute); every POST answer carries
    /// `x-ratelimit-{limit,remaining,reset}-tokens`.
    pub tokens_per_minute: Option<f64>,
    /// Every answer carries rate-limit and retry headers no API would send, varied answer by
    /// answer (in place of any real ones): a proxy announcing nonsense. Answers are otherwise
    /// as they would be.
    pub absurd_rate_headers: bool,
    /// Requests served at once at most; the rest queue for a slot before their latency
    /// begins, as on llama.cpp or vLLM (latency grows with what is in flight). `None`: no
    /// limit.
    pub slots: Option<usize>,
    /// Streamed answers (`"stream": true`) cut half-way for the first this-many attempts of
    /// each body: the connection drops before `data: [DONE]`.
    pub cut_streams: u64,
    /// After the cut ones, this many streamed attempts of each body stop half-way with an error
    /// event (`server_error`) followed by `data: [DONE]`.
    pub stream_errors: u64,
    /// Answer like Azure OpenAI: 401 without an `api-key` header, 404 without an `api-version`
    /// query parameter.
    pub require_api_key: bool,
    /// How long a hosted batch takes from creation to `completed` (a tenth validating, the rest
    /// answering lines, then a tenth finalizing).
    pub batch_processing: Duration,
    /// The first this-many `POST /v1/files` calls get 401 `missing_scope` (`api.files.write`).
    pub batch_missing_scope_uploads: u64,
    /// The first this-many `POST /v1/batches` calls get 401 `missing_scope` (`api.batch.write`).
    pub batch_missing_scope_creates: u64,
    /// What becomes of the 1st, 2nd, … batch created; later ones complete normally.
    pub batch_fates: Vec<BatchFate>,
    /// Files and Batches calls whose first occurrence does its work, then stalls before
    /// answering (a download sends half the file first): a client killed meanwhile has had
    /// its call done without hearing so.
    pub batch_stalls: Vec<BatchOp>,
    /// How long a stalled call waits.
    pub batch_stall_for: Duration,
    /// Batches that may be unfinished at once; a create beyond them is refused 400
    /// `token_limit_exceeded`, as over a project's enqueued-token limit.
    pub batch_max_open: Option<usize>,
}

/// The wait hints a rate-limit 429 carries, to test every way a server can say "wait".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryAfterStyle {
    /// `retry-after-ms`, `retry-after` (seconds), `x-ratelimit-reset-requests` and the message.
    #[default]
    All,
    /// Only `retry-after-ms`.
    Millis,
    /// Only `retry-after` in whole seconds (rounded up).
    Seconds,
    /// Only `retry-after` as an HTTP date.
    HttpDate,
    /// Only `x-ratelimit-reset-requests` (a Go duration).
    ResetHeader,
    /// Only "Please try again in …" in the message.
    Message,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            latency_spread: 0.0,
            slow_down: None,
            seed: 0,
            missing_scope_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after: Duration::from_secs(1),
            server_error_rate: 0.0,
            malformed_rate: 0.0,
            hang_rate: 0.0,
            hang: Duration::from_secs(30),
            spikes: Vec::new(),
            invalid_keys: Vec::new(),
            forbidden_keys: Vec::new(),
            quota_after: None,
            flaky_keys: Vec::new(),
            retry_after_style: RetryAfterStyle::All,
            unknown_models: Vec::new(),
            requests_per_second: None,
            tokens_per_minute: None,
            absurd_rate_headers: false,
            slots: None,
            cut_streams: 0,
            stream_errors: 0,
            require_api_key: false,
            batch_processing: Duration::from_secs(2),
            batch_missing_scope_uploads: 0,
            batch_missing_scope_creates: 0,
            batch_fates: Vec::new(),
            batch_stalls: Vec::new(),
            batch_stall_for: Duration::from_secs(30),
            batch_max_open: None,
        }
    }
}

/// A time window in which every request gets `fault`.
///
/// The window is half-open, `start <= elapsed < end`, measured from [`MockServer::start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spike {
    /// When the window opens, measured from server start.
    pub start: Duration,
    /// When the window closes (exclusive), measured from server start.
    pub end: Duration,
    /// The fault every request inside the window gets.
    pub fault: Fault,
}

impl Spike {
    /// Whether `elapsed` (time since server start) falls inside the window.
    pub fn contains(&self, elapsed: Duration) -> bool {
        self.start <= elapsed && elapsed < self.end
    }
}

/// A running mock server. Dropping it signals the server to stop; [`MockServer::shutdown`] also
/// waits for it.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockServer {
    /// Binds `addr` (use `127.0.0.1:0` in tests), spawns the server on the current tokio runtime
    /// and returns at once.
    ///
    /// # Errors
    /// Fails when the address cannot be bound (in use, no permission) or its local address cannot
    /// be read.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        {
            // Usage is counted with the tokenizers: load them now, off the runtime's threads,
            // rather than stall the first answer for the time it takes (seconds in a debug
            // build). Once per process.
            let warm = tokio::task::spawn_blocking(|| {
                for encoding in [Encoding::O200k, Encoding::Cl100k] {
                    tokens::count("warm", encoding);
                }
            });
            // A panic in there would panic again in the first request: nothing to add here.
            let _ = warm.await;
        }
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(server::Shared::new(config, Instant::now(), stopped.clone()));
        let app = server::router(Arc::clone(&shared));
        let mut signal = stopped;
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the sender is gone, which also means: stop.
                    let _ = signal.wait_for(|stopping| *stopping).await;
                })
                .await
        });
        tracing::info!(%addr, "mock server listening");
        Ok(MockServer {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give an OpenAI client, e.g. `http://127.0.0.1:8089/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A snapshot of the answer counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Stops accepting connections, cuts hanging requests short, lets in-flight answers finish and
    /// waits for the server task.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(cause = %error, "mock server stopped with an error")
                }
                Err(error) => tracing::warn!(cause = %error, "mock server task failed"),
            }
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Without this a dropped handle would leave the server running until the runtime ends.
        self.stop.send_replace(true);
    }
}

/// Canonical key of a request body: `serde_json::Value::to_string()`.
///
/// serde_json is built without `preserve_order`, so object keys are sorted and two bodies that
/// differ only in key order get the same key.
pub fn body_key(body: &serde_json::Value) -> String {
    body.to_string()
}
