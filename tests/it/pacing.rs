//! Spending the user's rate limits exactly: `--tpm`, `--rpm`, and pacing learned from the
//! server's rate-limit headers. Verdicts are counts (429s, requests sent), or lower bounds on
//! time that a slow machine cannot break; speed itself is measured in the benchmarks.

use std::time::{Duration, Instant};

use runner::Exit;
use runner::mock::MockConfig;
use serde_json::json;

use crate::support::*;

fn refused(mock: &runner::mock::MockServer) -> u64 {
    mock.stats().by_status.get(&429).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_tpm_budget_fails_at_once_and_the_rest_are_paced() {
    let mut text: String = (0..20).map(|i| format!("{}\n", prompt_line(i))).collect();
    let huge = "word ".repeat(7000);
    text.push_str(&format!(
        "{}\n",
        json!({"custom_id": "huge", "prompt": huge})
    ));
    let fx = Fixture::for_job("tpm").input(text).start().await;
    let started = Instant::now();
    let exit = fx
        .submit(&["--tpm", "6000", "--default-output-tokens", "4"])
        .await;
    assert_eq!(
        exit,
        Exit::SomeFailed,
        "the huge request failed, the rest succeeded"
    );
    assert_eq!(
        query_text(
            &fx.db(),
            "SELECT error_code FROM requests WHERE key = 'huge'"
        )
        .as_deref(),
        Some("exceeds_tpm")
    );
    assert_eq!(
        query_text(&fx.db(), "SELECT a.outcome FROM attempts a JOIN requests r ON r.id = a.request_id WHERE r.key = 'huge'")
            .as_deref(),
        Some("not_sent"),
        "it was never sent"
    );
    assert_eq!(fx.mock.stats().answers, 20);
    // 20 requests of ~12 tokens at 100 tokens/s with a burst of 10: at least ~2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the token ceiling held: {:?}",
        started.elapsed()
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_at_the_servers_limit_earns_next_to_no_429s() {
    let fx = Fixture::for_job("rpm")
        .mock(MockConfig {
            requests_per_second: Some(100.0),
            ..MockConfig::default()
        })
        .prompts(0..300)
        .start()
        .await;
    assert_eq!(fx.submit(&["--rpm", "6000"]).await, Exit::Success);
    let refused = refused(&fx.mock);
    assert!(
        refused <= 6,
        "{refused} of 300 requests earned a 429 at exactly the server's rate"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_limit_configured_the_pace_follows_the_servers_headers() {
    let fx = Fixture::for_job("paced")
        .mock(MockConfig {
            requests_per_second: Some(100.0),
            ..MockConfig::default()
        })
        .prompts(0..500)
        .start()
        .await;
    assert_eq!(fx.submit(&["--concurrency", "32"]).await, Exit::Success);
    let refused = refused(&fx.mock);
    // Before the first answer nothing is known, so up to a pool's worth can be refused; after
    // that the announced limit paces the pool.
    assert!(refused <= 32 + 25, "{refused} of 500 requests earned a 429");
    fx.shutdown().await;
}

/// The `pacing` event the run journaled at its end: what bound it, the limits, the pool.
fn pacing(fx: &Fixture) -> String {
    query_text(
        &fx.db(),
        "SELECT detail FROM events WHERE kind = 'pacing' ORDER BY id DESC LIMIT 1",
    )
    .expect("the run journaled its pacing")
}

/// The most requests the run had in flight at once, from its `pacing` event.
fn peak_in_flight(fx: &Fixture) -> u64 {
    let detail = pacing(fx);
    let (_, after) = detail.split_once("in flight at most ").expect("the peak");
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn each_body_succeeded_once(mock: &runner::mock::MockServer, lines: usize) {
    let stats = mock.stats();
    assert_eq!(stats.per_body.len(), lines);
    assert!(
        stats.per_body.values().all(|c| c.successes == 1),
        "no request was answered twice"
    );
}

/// No flags: 100 requests/s announced, answers after 400 ms. The old fixed pool of 32 would
/// hold the pace at 80/s; the pool sizes itself past it (rate × latency with headroom) and the
/// announced limit, not the pool, paces the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_flags_the_pool_grows_to_what_the_announced_limit_and_latency_need() {
    let fx = Fixture::for_job("self-sized")
        .mock(MockConfig {
            requests_per_second: Some(100.0),
            latency: Duration::from_millis(400),
            ..MockConfig::default()
        })
        .prompts(0..600)
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let refused = refused(&fx.mock);
    assert!(refused <= 6, "{refused} of 600 requests earned a 429");
    each_body_succeeded_once(&fx.mock, 600);
    let peak = peak_in_flight(&fx);
    assert!(
        peak > 32,
        "the pool grew past the old fixed size: {}",
        pacing(&fx)
    );
    assert!(
        pacing(&fx).contains("limits announced: requests 6000/min"),
        "{}",
        pacing(&fx)
    );
    fx.shutdown().await;
}

/// A token limit announced in headers, and nothing given: each request's prompt plus its
/// max_tokens is paced against it, so next to no request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_token_limit_paces_the_job_without_a_flag() {
    let lines: String = (0..90)
        .map(|i| {
            format!(
                "{}\n",
                json!({"custom_id": format!("t-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": {"max_tokens": 100,
                    "messages": [{"role": "user", "content": format!("count the tokens of line {i}")}]}})
            )
        })
        .collect();
    let fx = Fixture::for_job("tokens")
        .mock(MockConfig {
            tokens_per_minute: Some(120_000.0),
            latency: Duration::from_millis(100),
            ..MockConfig::default()
        })
        .input(lines)
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let limited = fx.mock.stats().limited;
    assert!(
        limited.tokens <= 2,
        "{} of 90 requests refused on tokens",
        limited.tokens
    );
    each_body_succeeded_once(&fx.mock, 90);
    let detail = pacing(&fx);
    assert!(detail.starts_with("bound by tokens"), "{detail}");
    assert!(detail.contains("tokens 120000/min"), "{detail}");
    fx.shutdown().await;
}

/// A proxy announcing nonsense (`1e-300` requests a minute, `NaN`, `forever`, …): no value is
/// taken for a limit, each header is noted once, and the job runs at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_rate_limit_headers_are_ignored_and_noted_once() {
    let fx = Fixture::for_job("absurd")
        .mock(MockConfig {
            absurd_rate_headers: true,
            ..MockConfig::default()
        })
        .prompts(0..500)
        .start()
        .await;
    let run = tokio::time::timeout(Duration::from_secs(120), fx.submit(&[]));
    assert_eq!(run.await.expect("done in time"), Exit::Success);
    let noted = query_i64(
        &fx.db(),
        "SELECT count(*) FROM events WHERE kind = 'header_ignored'",
    );
    let distinct = query_i64(
        &fx.db(),
        "SELECT count(DISTINCT substr(detail, 1, instr(detail, ':'))) FROM events WHERE kind = 'header_ignored'",
    );
    assert!(noted >= 1, "the nonsense was noted");
    assert_eq!(noted, distinct, "each header once");
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM events WHERE kind = 'limits'"
        ),
        0,
        "no limit was taken from them"
    );
    fx.shutdown().await;
}

/// A server that serves two requests at a time and queues the rest (llama.cpp, vLLM): no
/// headers, so the pool finds the capacity from the latency and stays near it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_headers_the_pool_stays_near_what_the_server_can_serve() {
    let fx = Fixture::for_job("slots")
        .mock(MockConfig {
            slots: Some(2),
            latency: Duration::from_millis(300),
            ..MockConfig::default()
        })
        .prompts(0..40)
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let peak = peak_in_flight(&fx);
    assert!(
        peak <= 8,
        "{peak} in flight on a 2-slot server: {}",
        pacing(&fx)
    );
    each_body_succeeded_once(&fx.mock, 40);
    fx.shutdown().await;
}
