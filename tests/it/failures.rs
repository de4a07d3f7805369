//! The failure model against the real mock: 401 spikes and the breaker's waste bound, long
//! outages and retry budgets, the key pool, job-level stops, server-requested waits.

use std::time::Duration;

use rstest::rstest;
use runner::Exit;
use runner::engine::config::ApiEnv;
use runner::mock::{Fault, MockConfig, RetryAfterStyle, Spike};

use crate::support::*;

fn spike(from_ms: u64, to_ms: u64, fault: Fault) -> Vec<Spike> {
    vec![Spike {
        start: Duration::from_millis(from_ms),
        end: Duration::from_millis(to_ms),
        fault,
    }]
}

fn events(db: &std::path::Path, kind: &str) -> i64 {
    query_i64(
        db,
        &format!("SELECT count(*) FROM events WHERE kind = '{kind}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_second_missing_scope_spike_costs_at_most_2c_plus_1_requests_a_second() {
    const CONCURRENCY: u64 = 32;
    let fx = Fixture::for_job("spike")
        .mock(MockConfig {
            latency: Duration::from_millis(20),
            spikes: spike(1_000, 21_000, Fault::MissingScope),
            ..MockConfig::default()
        })
        .prompts(0..4000)
        .start()
        .await;
    assert_eq!(
        fx.submit(&["--concurrency", "32"]).await,
        Exit::Success,
        "every request succeeds after the spike"
    );
    assert_eq!(requests_in(&fx.db(), "succeeded"), 4000);

    let stats = fx.mock.stats();
    let spike_seconds: Vec<(u64, u64)> = stats
        .by_second
        .iter()
        .map(|(second, statuses)| (*second, statuses.get(&401).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // The trip, then one probe per cool-down (1 s, 2 s, 4 s, 8 s, 10 s…) until the spike ends.
    assert!(
        spike_seconds.len() >= 4,
        "the spike was met and probed: {spike_seconds:?}"
    );
    for (second, sent) in &spike_seconds {
        assert!(
            *sent <= 2 * CONCURRENCY + 1,
            "second {second}: {sent} requests met the spike (bound {})",
            2 * CONCURRENCY + 1
        );
    }
    let wasted: u64 = spike_seconds.iter().map(|(_, n)| n).sum();
    assert!(wasted < 200, "{wasted} requests sent into a 20 s spike");
    assert!(events(&fx.db(), "breaker_open") >= 1);
    assert!(events(&fx.db(), "breaker_closed") >= 1);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_full_outage_fails_no_request_with_default_settings() {
    let fx = Fixture::for_job("outage")
        .mock(MockConfig {
            latency: Duration::from_millis(10),
            spikes: spike(500, 120_500, Fault::MissingScope),
            ..MockConfig::default()
        })
        .prompts(0..2000)
        .start()
        .await;
    // Longer than the usual bound (WAIT_LIMIT): the outage alone lasts two minutes.
    let exit = tokio::time::timeout(Duration::from_secs(200), run(&fx.submit_args(&[]), env()))
        .await
        .expect("finishes after the outage")
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(requests_in(&fx.db(), "failed"), 0);
    assert_eq!(requests_in(&fx.db(), "succeeded"), 2000);
    let wasted = fx.mock.stats().by_status.get(&401).copied().unwrap_or(0);
    assert!(
        wasted < 300,
        "{wasted} requests sent into a 2-minute outage"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denials_are_ridden_out_like_missing_scope() {
    let fx = Fixture::for_job("rbac")
        .mock(MockConfig {
            spikes: spike(0, 1000, Fault::RbacDenied),
            ..MockConfig::default()
        })
        .prompts(0..50)
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    assert!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM attempts WHERE error_class = 'auth_transient'"
        ) > 0
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_one_invalid_the_job_completes_on_the_other() {
    let bad = "sk-proj-revoked-aaaaaaaaaaaa";
    let good = "sk-proj-working-bbbbbbbbbbbb";
    let fx = Fixture::for_job("twokeys")
        .mock(MockConfig {
            invalid_keys: vec![bad.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..200)
        .env(ApiEnv::default())
        .start()
        .await;
    let keys = fx
        .scratch
        .write("keys.txt", &format!("old={bad}\nnew={good}\n"));
    let keys = keys.display().to_string();
    let exit = fx
        .submit(&["--keys-file", &keys, "--concurrency", "8"])
        .await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(requests_in(&fx.db(), "succeeded"), 200);
    let stats = fx.mock.stats();
    let on_bad: u64 = stats
        .by_key
        .get(&bad[bad.len() - 8..])
        .map_or(0, |m| m.values().sum());
    assert!(
        on_bad <= 8,
        "the bad key is quarantined after its first answers: {on_bad}"
    );
    assert_eq!(events(&fx.db(), "key_quarantined"), 1);
    // The journal names keys by label.
    assert!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM attempts WHERE key_fingerprint = 'new'"
        ) >= 200
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_key_cools_down_and_traffic_shifts_to_the_other() {
    let flaky = "sk-proj-flapping-cccccccccccc";
    let steady = "sk-proj-steady-dddddddddddd";
    let fx = Fixture::for_job("flap")
        .mock(MockConfig {
            flaky_keys: vec![(flaky.to_owned(), 1.0)],
            ..MockConfig::default()
        })
        .prompts(0..600)
        .env(ApiEnv::default())
        .start()
        .await;
    let keys = fx
        .scratch
        .write("keys.txt", &format!("flaky={flaky}\nsteady={steady}\n"));
    let keys = keys.display().to_string();
    let exit = fx
        .submit(&["--keys-file", &keys, "--concurrency", "8"])
        .await;
    assert_eq!(exit, Exit::Success);
    let stats = fx.mock.stats();
    let flaky_answers: u64 = stats
        .by_key
        .get(&flaky[flaky.len() - 8..])
        .map_or(0, |m| m.values().sum());
    let steady_ok = stats
        .by_key
        .get(&steady[steady.len() - 8..])
        .and_then(|m| m.get(&200))
        .copied()
        .unwrap_or(0);
    assert_eq!(steady_ok, 600, "every success came through the steady key");
    assert!(
        flaky_answers < 100,
        "traffic left the flapping key: {flaky_answers} answers"
    );
    assert!(events(&fx.db(), "key_cooling") >= 1);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_quota_stops_the_job_and_resume_finishes_elsewhere() {
    let fx = Fixture::for_job("quota")
        .mock(MockConfig {
            quota_after: Some(30),
            ..MockConfig::default()
        })
        .prompts(0..200)
        .start()
        .await;
    assert_eq!(
        fx.submit(&["--concurrency", "4"]).await,
        Exit::Stopped,
        "exit 4"
    );
    assert_eq!(requests_in(&fx.db(), "succeeded"), 30);
    assert_eq!(requests_in(&fx.db(), "failed"), 0);
    assert_eq!(
        requests_in(&fx.db(), "pending"),
        170,
        "everything unsent stays pending"
    );
    assert!(
        fx.mock.stats().answers <= 30 + 4,
        "dispatch stopped at the first quota answer"
    );
    let reason = query_text(&fx.db(), "SELECT state_reason FROM jobs").expect("reason");
    assert!(reason.contains("out of quota"), "{reason}");

    let topped_up = mock(MockConfig::default()).await;
    let exit = fx.resume(&["--base-url", &topped_up.base_url()]).await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(requests_in(&fx.db(), "succeeded"), 200);
    assert_eq!(
        topped_up.stats().answers,
        170,
        "only the pending requests were sent"
    );
    fx.shutdown().await;
    topped_up.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_stops_the_job() {
    let text: String = (0..20)
        .map(|i| format!("{{\"custom_id\":\"f-{i}\",\"prompt\":\"x {i}\",\"mock_status\":403}}\n"))
        .collect();
    let fx = Fixture::for_job("forbidden").input(text).start().await;
    assert_eq!(fx.submit(&["--concurrency", "2"]).await, Exit::Stopped);
    assert_eq!(requests_in(&fx.db(), "pending"), 20);
    assert!(fx.mock.stats().answers <= 2);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_model_not_found_in_a_row_stop_the_job_as_a_configuration_error() {
    let fx = Fixture::for_job("model")
        .mock(MockConfig {
            unknown_models: vec!["test-model".to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..200)
        .start()
        .await;
    assert_eq!(
        fx.submit(&["--concurrency", "4"]).await,
        Exit::Stopped,
        "exit 4"
    );
    let answers = fx.mock.stats().answers;
    assert!(
        (20..=24).contains(&answers),
        "stopped after 20 (+ in flight): {answers}"
    );
    assert_eq!(
        requests_in(&fx.db(), "failed"),
        0,
        "the streak was requeued: its failures were not theirs"
    );
    assert_eq!(requests_in(&fx.db(), "pending"), 200);
    let reason = query_text(&fx.db(), "SELECT state_reason FROM jobs").expect("reason");
    assert!(
        reason.contains("configuration error") && reason.contains("model_not_found"),
        "{reason}"
    );

    // The model is deployed now: resume finishes.
    let fixed = mock(MockConfig::default()).await;
    let exit = fx.resume(&["--base-url", &fixed.base_url()]).await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(requests_in(&fx.db(), "succeeded"), 200);
    fx.shutdown().await;
    fixed.shutdown().await;
}

#[rstest]
#[case::millis(RetryAfterStyle::Millis)]
#[case::seconds(RetryAfterStyle::Seconds)]
#[case::http_date(RetryAfterStyle::HttpDate)]
#[case::reset_header(RetryAfterStyle::ResetHeader)]
#[case::message(RetryAfterStyle::Message)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_retry_after_is_honoured(#[case] style: RetryAfterStyle) {
    let fx = Fixture::for_job("wait")
        .mock(MockConfig {
            retry_after: Duration::from_millis(1200),
            retry_after_style: style,
            spikes: spike(0, 1000, Fault::RateLimited),
            ..MockConfig::default()
        })
        .prompts(0..5)
        .start()
        .await;
    // All five at once, so that each meets the 429 window (a pool that sizes itself would
    // start with one).
    assert_eq!(fx.submit(&["--concurrency", "5"]).await, Exit::Success);
    let limited = query_i64(
        &fx.db(),
        "SELECT count(*) FROM attempts WHERE error_class = 'rate_limited'",
    );
    assert!(limited >= 1, "{style:?}: the 429 was met");
    assert_eq!(
        early_retries(&fx.db(), 1200),
        0,
        "{style:?}: a retry went out before the server's time"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_requeues_only_failed_requests_of_the_class_asked() {
    let mut text: String = (0..10).map(|i| format!("{}\n", prompt_line(i))).collect();
    text.push_str("{\"custom_id\":\"bad\",\"prompt\":\"x\",\"mock_status\":400}\n");
    // 500s for the first second (long enough for a run to start on a loaded machine): with
    // one transient attempt allowed, those requests fail.
    let fx = Fixture::for_job("retry")
        .mock(MockConfig {
            spikes: spike(0, 1000, Fault::ServerError),
            ..MockConfig::default()
        })
        .input(text)
        .start()
        .await;
    // All eleven at once, into the 500s.
    assert_eq!(
        fx.submit(&["--max-attempts", "1", "--concurrency", "16"])
            .await,
        Exit::SomeFailed
    );
    assert_eq!(requests_in(&fx.db(), "failed"), 11);
    wait_until_healthy(&fx.url()).await;

    let exit = run(
        &[
            "retry-failed",
            "--db",
            &fx.db_arg(),
            "--class",
            "transient",
            "--no-progress",
        ],
        env(),
    )
    .await
    .expect("retries");
    assert_eq!(exit, Exit::SomeFailed, "the 400 is still failed");
    assert_eq!(requests_in(&fx.db(), "succeeded"), 10);
    let bad_attempts = query_i64(&fx.db(), "SELECT attempts FROM requests WHERE key = 'bad'");
    assert_eq!(bad_attempts, 1, "request_failed requests were not requeued");
    fx.shutdown().await;
}
