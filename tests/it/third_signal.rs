//! A third Ctrl-C exits at once with 130, even while the abort of the second one hangs (here:
//! on a database another process holds locked), and the job resumes afterwards.

use std::time::{Duration, Instant};

use crate::support::bin::{Running, output, text};
use crate::support::*;
use runner::mock::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_sigint_exits_at_once_while_the_abort_hangs() {
    let fx = Fixture::for_job("third")
        .mock(MockConfig {
            latency: Duration::from_millis(200),
            ..MockConfig::default()
        })
        .prompts(0..200)
        .start()
        .await;
    let run = Running::spawn(fx.bin_submit(&["--concurrency", "4", "--grace", "10m"]));
    wait_until("some successes", || fx.mock.stats().successes() >= 8).await;
    // Every write of the runner now waits for this lock (up to its 5 s busy timeout).
    let lock = rusqlite::Connection::open(fx.db()).expect("open");
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

    let out = output(fx.bin(&["resume", "--no-progress"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fx.requests_in("succeeded"), 200);
}
