//! The failure model against the real mock: 401 spikes and the breaker's waste bound, long
//! outages and retry budgets, the key pool, job-level stops, server-requested waits.

use std::time::Duration;

use rstest::rstest;
use runner::Exit;
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

fn count(db: &std::path::Path, state: &str) -> i64 {
    query_i64(
        db,
        &format!("SELECT count(*) FROM requests WHERE state = '{state}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_second_missing_scope_spike_costs_at_most_2c_plus_1_requests_a_second() {
    const CONCURRENCY: u64 = 32;
    let s = Scratch::new();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(20),
        spikes: spike(1_000, 21_000, Fault::MissingScope),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("spike.jsonl", 0..4000);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let args = submit_args(&file, &db, &url, &["--concurrency", "32"]);
    let exit = within("spike run", run(&args, env())).await.expect("runs");
    assert_eq!(
        exit,
        Exit::Success,
        "every request succeeds after the spike"
    );
    assert_eq!(count(&s.db(), "succeeded"), 4000);

    let stats = mock.stats();
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
    assert!(events(&s.db(), "breaker_open") >= 1);
    assert!(events(&s.db(), "breaker_closed") >= 1);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_full_outage_fails_no_request_with_default_settings() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(10),
        spikes: spike(500, 120_500, Fault::MissingScope),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("outage.jsonl", 0..2000);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let args = submit_args(&file, &db, &url, &[]);
    let exit = tokio::time::timeout(Duration::from_secs(200), run(&args, env()))
        .await
        .expect("finishes after the outage")
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(count(&s.db(), "failed"), 0);
    assert_eq!(count(&s.db(), "succeeded"), 2000);
    let wasted = mock.stats().by_status.get(&401).copied().unwrap_or(0);
    assert!(
        wasted < 300,
        "{wasted} requests sent into a 2-minute outage"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denials_are_ridden_out_like_missing_scope() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        spikes: spike(0, 300, Fault::RbacDenied),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("rbac.jsonl", 0..50);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = within("rbac run", run(&submit_args(&file, &db, &url, &[]), env()))
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE error_class = 'auth_transient'"
        ) > 0
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_one_invalid_the_job_completes_on_the_other() {
    let s = Scratch::new();
    let bad = "sk-proj-revoked-aaaaaaaaaaaa";
    let good = "sk-proj-working-bbbbbbbbbbbb";
    let mock = mock(MockConfig {
        invalid_keys: vec![bad.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let keys = s.write("keys.txt", &format!("old={bad}\nnew={good}\n"));
    let input = s.prompts("twokeys.jsonl", 0..200);
    let (file, db, url, keys) = (
        input.display().to_string(),
        s.db_arg(),
        mock.base_url(),
        keys.display().to_string(),
    );
    let args = submit_args(
        &file,
        &db,
        &url,
        &["--keys-file", &keys, "--concurrency", "8"],
    );
    let exit = within(
        "two keys",
        run(&args, runner::engine::config::ApiEnv::default()),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(count(&s.db(), "succeeded"), 200);
    let stats = mock.stats();
    let on_bad: u64 = stats
        .by_key
        .get(&bad[bad.len() - 8..])
        .map_or(0, |m| m.values().sum());
    assert!(
        on_bad <= 8,
        "the bad key is quarantined after its first answers: {on_bad}"
    );
    assert_eq!(events(&s.db(), "key_quarantined"), 1);
    // The journal names keys by label.
    assert!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE key_fingerprint = 'new'"
        ) >= 200
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_key_cools_down_and_traffic_shifts_to_the_other() {
    let s = Scratch::new();
    let flaky = "sk-proj-flapping-cccccccccccc";
    let steady = "sk-proj-steady-dddddddddddd";
    let mock = mock(MockConfig {
        flaky_keys: vec![(flaky.to_owned(), 1.0)],
        ..MockConfig::default()
    })
    .await;
    let keys = s.write("keys.txt", &format!("flaky={flaky}\nsteady={steady}\n"));
    let input = s.prompts("flap.jsonl", 0..600);
    let (file, db, url, keys) = (
        input.display().to_string(),
        s.db_arg(),
        mock.base_url(),
        keys.display().to_string(),
    );
    let args = submit_args(
        &file,
        &db,
        &url,
        &["--keys-file", &keys, "--concurrency", "8"],
    );
    let exit = within(
        "flapping key",
        run(&args, runner::engine::config::ApiEnv::default()),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    let stats = mock.stats();
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
    assert!(events(&s.db(), "key_cooling") >= 1);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_quota_stops_the_job_and_resume_finishes_elsewhere() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        quota_after: Some(30),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("quota.jsonl", 0..200);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--concurrency", "4"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Stopped, "exit 4");
    assert_eq!(count(&s.db(), "succeeded"), 30);
    assert_eq!(count(&s.db(), "failed"), 0);
    assert_eq!(
        count(&s.db(), "pending"),
        170,
        "everything unsent stays pending"
    );
    assert!(
        mock.stats().answers <= 30 + 4,
        "dispatch stopped at the first quota answer"
    );
    let reason: String = rusqlite::Connection::open(s.db())
        .expect("db")
        .query_row("SELECT state_reason FROM jobs", [], |r| r.get(0))
        .expect("reason");
    assert!(reason.contains("out of quota"), "{reason}");

    let topped_up = crate::support::mock(MockConfig::default()).await;
    let url = topped_up.base_url();
    let exit = run(
        &["resume", "--db", &db, "--base-url", &url, "--no-progress"],
        env(),
    )
    .await
    .expect("resumes");
    assert_eq!(exit, Exit::Success);
    assert_eq!(count(&s.db(), "succeeded"), 200);
    assert_eq!(
        topped_up.stats().answers,
        170,
        "only the pending requests were sent"
    );
    mock.shutdown().await;
    topped_up.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_stops_the_job() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let text: String = (0..20)
        .map(|i| format!("{{\"custom_id\":\"f-{i}\",\"prompt\":\"x {i}\",\"mock_status\":403}}\n"))
        .collect();
    let input = s.write("forbidden.jsonl", &text);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--concurrency", "2"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Stopped);
    assert_eq!(count(&s.db(), "pending"), 20);
    assert!(mock.stats().answers <= 2);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_model_not_found_in_a_row_stop_the_job_as_a_configuration_error() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        unknown_models: vec!["test-model".to_owned()],
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("model.jsonl", 0..200);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--concurrency", "4"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Stopped, "exit 4");
    let answers = mock.stats().answers;
    assert!(
        (20..=24).contains(&answers),
        "stopped after 20 (+ in flight): {answers}"
    );
    assert_eq!(
        count(&s.db(), "failed"),
        0,
        "the streak was requeued: its failures were not theirs"
    );
    assert_eq!(count(&s.db(), "pending"), 200);
    let reason: String = rusqlite::Connection::open(s.db())
        .expect("db")
        .query_row("SELECT state_reason FROM jobs", [], |r| r.get(0))
        .expect("reason");
    assert!(
        reason.contains("configuration error") && reason.contains("model_not_found"),
        "{reason}"
    );

    // The model is deployed now: resume finishes.
    let fixed = crate::support::mock(MockConfig::default()).await;
    let url = fixed.base_url();
    let exit = run(
        &["resume", "--db", &db, "--base-url", &url, "--no-progress"],
        env(),
    )
    .await
    .expect("resumes");
    assert_eq!(exit, Exit::Success);
    assert_eq!(count(&s.db(), "succeeded"), 200);
    mock.shutdown().await;
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
    let s = Scratch::new();
    let mock = mock(MockConfig {
        retry_after: Duration::from_millis(1200),
        retry_after_style: style,
        spikes: spike(0, 300, Fault::RateLimited),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("wait.jsonl", 0..5);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = within(
        "retry-after run",
        run(&submit_args(&file, &db, &url, &[]), env()),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    let limited = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts WHERE error_class = 'rate_limited'",
    );
    assert!(limited >= 1, "{style:?}: the 429 was met");
    let early = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts a JOIN attempts b ON a.request_id = b.request_id AND b.number = a.number + 1
         WHERE a.error_class = 'rate_limited' AND b.started_at < a.finished_at + 1200",
    );
    assert_eq!(
        early, 0,
        "{style:?}: a retry went out before the server's time"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_requeues_only_failed_requests_of_the_class_asked() {
    let s = Scratch::new();
    // 500s for the first 300 ms: with one transient attempt allowed, those requests fail.
    let mock = mock(MockConfig {
        spikes: spike(0, 300, Fault::ServerError),
        ..MockConfig::default()
    })
    .await;
    let mut text: String = (0..10).map(|i| format!("{}\n", prompt_line(i))).collect();
    text.push_str("{\"custom_id\":\"bad\",\"prompt\":\"x\",\"mock_status\":400}\n");
    let input = s.write("retry.jsonl", &text);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--max-attempts", "1"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::SomeFailed);
    assert_eq!(count(&s.db(), "failed"), 11);
    wait_until_healthy(&url).await;

    let exit = run(
        &[
            "retry-failed",
            "--db",
            &db,
            "--class",
            "transient",
            "--no-progress",
        ],
        env(),
    )
    .await
    .expect("retries");
    assert_eq!(exit, Exit::SomeFailed, "the 400 is still failed");
    assert_eq!(count(&s.db(), "succeeded"), 10);
    let bad_attempts = query_i64(&s.db(), "SELECT attempts FROM requests WHERE key = 'bad'");
    assert_eq!(bad_attempts, 1, "request_failed requests were not requeued");
    mock.shutdown().await;
}
