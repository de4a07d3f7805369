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
