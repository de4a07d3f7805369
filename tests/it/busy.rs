//! A shared database: another process holding the write lock longer than the busy timeout (a
//! big ingest of another job into the same file, a `sqlite3` shell) makes a running job wait,
//! never fail.

use std::time::Duration;

use crate::support::bin::Running;
use crate::support::*;
use runner::mock::MockConfig;
use runner::store::BUSY_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_busy_timeout_pauses_a_running_job_and_never_fails_it() {
    const REQUESTS: usize = 40;
    let fx = Fixture::for_job("x")
        .mock(MockConfig {
            latency: Duration::from_millis(100),
            ..MockConfig::default()
        })
        .prompts(0..REQUESTS)
        .start()
        .await;
    let x = Running::spawn(fx.bin_submit(&["--concurrency", "2"]));
    let db = fx.db();
    wait_until("job X has journaled a success", || {
        try_requests_in(&db, "succeeded").is_some_and(|n| n > 0)
    })
    .await;

    // Another writer (here a plain connection, standing for a long ingest of another job into
    // the same file) holds the write lock for longer than the busy timeout.
    let holder_db = db.clone();
    let held = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&holder_db).expect("db opens");
        conn.busy_timeout(Duration::from_secs(30)).expect("timeout");
        conn.execute_batch("BEGIN IMMEDIATE").expect("write lock");
        std::thread::sleep(BUSY_TIMEOUT + Duration::from_secs(2));
        conn.execute_batch("COMMIT").expect("commit");
    });
    within("the lock holder", held).await.expect("join");

    let (status, stderr) = x.wait().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_succeeded_once(&fx.mock.stats(), 0..REQUESTS);
    assert_eq!(journaled_successes(&db).len(), REQUESTS);
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}
