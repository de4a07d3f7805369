//! Signals on the real binary: one SIGINT/SIGTERM stops dispatch and lets requests in flight
//! finish; a second aborts them (journaled as interrupted). Either way: exit 130, nothing left
//! in flight, and `resume` finishes the job.

use std::time::Duration;

use rstest::rstest;
use runner::mock::MockConfig;

use crate::support::bin::{Running, output, runner, text};
use crate::support::*;

/// With 4 requests of 200 ms at a time the first run would need 50 s: the signal, sent after
/// 16 answers, always lands long before the end.
const N: usize = 1000;

#[rstest]
#[case::sigint("INT")]
#[case::sigterm("TERM")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signal_lets_requests_in_flight_finish_and_exits_130(#[case] signal: &str) {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(200),
        ..MockConfig::default()
    })
    .await;
    s.prompts("sig.jsonl", 0..N);
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "sig.jsonl",
        "--base-url",
        &mock.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "4",
        // Far beyond any wait of this test: requests in flight always finish within the grace,
        // so none may end interrupted.
        "--grace",
        "10m",
    ]);
    let run = Running::spawn(cmd);
    wait_until("some successes", || mock.stats().successes() >= 16).await;
    run.signal(signal);
    let (status, stderr) = run.wait().await;
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("sig: interrupted with") && stderr.contains("`runner resume --job sig`"),
        "{stderr}"
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'in_flight'"
        ),
        0,
        "nothing is left in flight"
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'"
        ),
        0,
        "requests in flight finished within the grace period"
    );
    let answered = mock.stats().successes();
    assert!(answered < N as u64, "stopped before the end");
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'succeeded'"
        ),
        answered as i64,
        "every answer the mock gave is journaled"
    );
    assert_eq!(
        query_text(&s.db(), "SELECT lease_owner FROM jobs"),
        None,
        "the lease is released"
    );

    let mut cmd = runner(s.dir.path());
    cmd.args(["resume", "--no-progress", "--concurrency", "100"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stats = mock.stats();
    for i in 0..N {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_aborts_requests_in_flight_and_resume_finishes() {
    let s = Scratch::new();
    // Every answer takes ten minutes: only the abort can end this run within the test's limit
    // (the grace is ten minutes too), and every request in flight at the abort must be
    // journaled as interrupted. Longer than the issue's ~2 s on purpose: with 2 s a slow
    // machine could let the requests finish between the two signals, and the verdict would
    // depend on timing.
    let slow = mock(MockConfig {
        latency: Duration::from_secs(600),
        ..MockConfig::default()
    })
    .await;
    s.prompts("abort.jsonl", 0..40);
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "abort.jsonl",
        "--base-url",
        &slow.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "4",
        "--grace",
        "10m",
    ]);
    let run = Running::spawn(cmd);
    let db = s.db();
    wait_until("requests in flight", || {
        try_query_i64(
            &db,
            "SELECT count(*) FROM requests WHERE state = 'in_flight'",
        ) == Some(4)
    })
    .await;
    run.signal("INT");
    run.wait_for_stderr("stopping: waiting for requests in flight")
        .await;
    run.signal("INT");
    let (status, stderr) = run.wait().await;
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("aborting"), "{stderr}");
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'"
        ),
        4,
        "the four requests in flight are journaled as interrupted"
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'in_flight'"
        ),
        0
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'pending'"
        ),
        40,
        "every request is still to do"
    );
    assert_eq!(query_text(&s.db(), "SELECT lease_owner FROM jobs"), None);
    slow.shutdown().await;

    let fast = mock(MockConfig::default()).await;
    let mut cmd = runner(s.dir.path());
    cmd.args(["resume", "--no-progress", "--base-url", &fast.base_url()]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stats = fast.stats();
    for i in 0..40 {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    assert_eq!(integrity(&s.db()), "ok");
    fast.shutdown().await;
}
