//! A shared database: another process holding the write lock longer than the busy timeout (a
//! big ingest of another job into the same file, a `sqlite3` shell) makes a running job wait,
//! never fail.

use std::time::Duration;

use crate::support::bin::{Running, runner};
use crate::support::*;
use runner::mock::MockConfig;
use runner::store::BUSY_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_busy_timeout_pauses_a_running_job_and_never_fails_it() {
    const REQUESTS: usize = 40;
    let s = Scratch::new();
    let server = mock(MockConfig {
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    s.prompts("x.jsonl", 0..REQUESTS);
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "x.jsonl",
        "--base-url",
        &server.base_url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "2",
    ]);
    let x = Running::spawn(cmd);
    let db = s.db();
    wait_until("job X has journaled a success", || {
        try_query_i64(
            &db,
            "SELECT count(*) FROM requests WHERE state = 'succeeded'",
        )
        .is_some_and(|n| n > 0)
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
    let stats = server.stats();
    for i in 0..REQUESTS {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    assert_eq!(journaled_successes(&db).len(), REQUESTS);
    assert_eq!(integrity(&db), "ok");
    server.shutdown().await;
}
