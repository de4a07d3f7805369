//! What the HTTP stack alone can do against a server, for the benchmarks' nginx scenario
//! (`scripts/bench.py`): `N` POSTs of one body, `C` at a time, on one runtime thread as the
//! runner's, each answer read whole and parsed as JSON, and nothing journaled. It is the
//! ceiling of any runner built on that stack on the same machine: the runner's own rate is
//! measured against it and against wrk.
//!
//! ```text
//! cargo build --release --example http_ceiling
//! target/release/examples/http_ceiling reqwest|hyper URL BODY_FILE N C
//! ```
//!
//! `reqwest` is the runner's client, built as `http::client` builds it (no retry of its own, a
//! timeout, default headers); `hyper` is the HTTP/1.1 client underneath it, without reqwest's
//! layers. Prints one line: `R requests/s`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What every request carries besides its body.
const KEY: &str = "Bearer sk-ceiling-0000000000000000";

#[expect(
    clippy::large_enum_variant,
    reason = "one per process, shared by the tasks behind an Arc"
)]
enum Client {
    Reqwest(reqwest::Client, reqwest::Url),
    Hyper(
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<bytes::Bytes>,
        >,
        hyper::Uri,
    ),
}

impl Client {
    fn new(kind: &str, url: &str) -> anyhow::Result<Client> {
        Ok(match kind {
            "reqwest" => {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(reqwest::header::AUTHORIZATION, KEY.parse()?);
                let client = reqwest::Client::builder()
                    .retry(reqwest::retry::never().max_retries_per_request(0))
                    .default_headers(headers)
                    .user_agent("runner-http-ceiling")
                    .timeout(Duration::from_secs(600))
                    .connect_timeout(Duration::from_secs(10))
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build()?;
                Client::Reqwest(client, url.parse()?)
            }
            "hyper" => {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http();
                Client::Hyper(client, url.parse()?)
            }
            other => bail!("unknown client '{other}': reqwest or hyper"),
        })
    }

    /// One POST; the answer's body, read whole.
    async fn post(&self, body: bytes::Bytes) -> anyhow::Result<bytes::Bytes> {
        match self {
            Client::Reqwest(client, url) => {
                let answer = client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(answer.bytes().await?)
            }
            Client::Hyper(client, uri) => {
                use http_body_util::BodyExt;
                let request = hyper::Request::post(uri.clone())
                    .header(hyper::header::AUTHORIZATION, KEY)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header(hyper::header::USER_AGENT, "runner-http-ceiling")
                    .body(http_body_util::Full::new(body))?;
                let answer = client.request(request).await?;
                if !answer.status().is_success() {
                    bail!("HTTP {}", answer.status());
                }
                Ok(answer.into_body().collect().await?.to_bytes())
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            runner::say!("http_ceiling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, url, body_file, n, c] = args.as_slice() else {
        bail!("usage: http_ceiling reqwest|hyper URL BODY_FILE N C");
    };
    let body = bytes::Bytes::from(
        std::fs::read(body_file).with_context(|| format!("reading {body_file}"))?,
    );
    let n: u64 = n.parse().context("N")?;
    let c: usize = c.parse().context("C")?;
    let client = Arc::new(Client::new(kind, url)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(send_all(client, body, n, c))?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    writeln!(std::io::stdout(), "{rate:.0} requests/s")?;
    Ok(())
}

/// `n` POSTs, at most `c` at a time, each answer parsed as JSON (as the runner reads usage).
async fn send_all(client: Arc<Client>, body: bytes::Bytes, n: u64, c: usize) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(c));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let (client, body) = (Arc::clone(&client), body.clone());
        tasks.spawn(async move {
            let answer = client.post(body).await?;
            let json: serde_json::Value = serde_json::from_slice(&answer)?;
            drop(slot);
            anyhow::ensure!(json.get("usage").is_some(), "an answer without usage");
            Ok(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
