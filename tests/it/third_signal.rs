//! A third Ctrl-C exits at once with 130, even while the abort of the second one hangs (here:
//! on a database another process holds locked), and the job resumes afterwards.

use std::time::{Duration, Instant};

use crate::support::bin::{Running, output, runner, text};
use crate::support::*;
use runner::mock::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_sigint_exits_at_once_while_the_abort_hangs() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(200),
        ..MockConfig::default()
    })
    .await;
    s.prompts("third.jsonl", 0..200);
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "third.jsonl",
        "--base-url",
        &mock.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "4",
        "--grace",
        "10m",
    ]);
    let run = Running::spawn(cmd);
    wait_until("some successes", || mock.stats().successes() >= 8).await;
    // Every write of the runner now waits for this lock (up to its 5 s busy timeout).
    let lock = rusqlite::Connection::open(s.db()).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    run.signal("INT");
    run.wait_for_stderr("stopping").await;
    run.signal("INT");
    run.wait_for_stderr("aborting").await;
    let third = Instant::now();
    run.signal("INT");
    let (status, stderr) = run.wait().await;
    let took = third.elapsed();
    drop(lock);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    assert!(stderr.contains("exiting at once"), "{stderr}");

    let mut cmd = runner(s.dir.path());
    cmd.args(["resume", "--no-progress"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'succeeded'"
        ),
        200
    );
}
