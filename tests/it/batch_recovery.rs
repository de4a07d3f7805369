//! `--via batch` across interruptions: `kill -9` at every step then resume (no chunk created
//! twice, nothing lost, nothing paid for twice), Ctrl-C leaving batches running on the server,
//! `runner cancel`, and `resume --via sync` of a batch job.

use std::time::Duration;

use rstest::rstest;
use runner::Exit;
use runner::engine::shutdown::Shutdown;
use runner::mock::{BatchOp, MockConfig};

use super::batch_jobs::{assert_each_succeeded_once, batch_mock, via_batch};
use crate::support::bin::{Running, output, text};
use crate::support::*;

/// Where a run is killed: right after the mock did a call whose answer it holds back (upload,
/// create, download), or while the batches are being polled.
#[rstest]
#[case::after_upload(Some(BatchOp::Upload))]
#[case::after_create(Some(BatchOp::Create))]
#[case::during_download(Some(BatchOp::Download))]
#[case::during_polling(None)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_step_then_resume_creates_no_chunk_twice_and_loses_nothing(
    #[case] stall: Option<BatchOp>,
) {
    const N: usize = 300;
    let fx = Fixture::for_job("kill")
        .mock(MockConfig {
            batch_processing: match stall {
                None => Duration::from_secs(5),
                Some(_) => Duration::from_millis(500),
            },
            batch_stalls: stall.into_iter().collect(),
            batch_stall_for: Duration::from_secs(120),
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    let run = Running::spawn(fx.bin_submit(&via_batch(&["--batch-max-lines", "100"])));
    let stats = || fx.mock.stats().batch;
    match stall {
        Some(BatchOp::Upload) => wait_until("an upload", || stats().uploads >= 1).await,
        Some(BatchOp::Create) => wait_until("a create", || stats().batches_created >= 1).await,
        Some(BatchOp::Download) => wait_until("a download", || stats().downloads >= 1).await,
        None => wait_until("polls", || stats().polls >= 6).await,
    }
    // The stalled answer is on its way: the runner has not heard it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    run.signal("KILL");
    let (status, stderr) = run.wait().await;
    assert_eq!(status.code(), None, "killed: {stderr}");

    let out = output(fx.bin(&["resume", "--no-progress"])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        fx.mock.stats().batch.batches_created,
        3,
        "one batch per chunk, even across the kill: {stderr}"
    );
    let calls = fx.mock.stats().batch;
    match stall {
        Some(BatchOp::Upload) => assert_eq!(
            calls.uploads, 4,
            "the file whose upload was not recorded is uploaded again, once"
        ),
        Some(BatchOp::Create) => assert!(
            stderr.contains("that an earlier run created without recording it"),
            "the unrecorded batch was found by its metadata: {stderr}"
        ),
        Some(BatchOp::Download) => assert!(
            calls.downloads > 3,
            "the file whose download was cut is downloaded again ({} downloads)",
            calls.downloads
        ),
        None => assert_eq!(calls.uploads, 3),
    }
    assert_eq!(
        query_i64(&fx.db(), "SELECT count(*) FROM batch_chunks"),
        3,
        "no chunk was cut twice"
    );
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_batches_running_then_resume_via_sync_finishes_without_paying_twice() {
    const N: usize = 300;
    let fx = Fixture::for_job("switch")
        .mock(batch_mock(Duration::from_secs(6)))
        .prompts(0..N)
        .start()
        .await;
    let shutdown = Shutdown::new();
    let task = fx.spawn_submit(&via_batch(&["--batch-max-lines", "150"]), shutdown.clone());
    wait_until("two batches in progress", || {
        try_query_i64(
            &fx.db(),
            "SELECT count(*) FROM batch_chunks WHERE batch_status = 'in_progress'",
        ) == Some(2)
    })
    .await;
    shutdown.stop();
    let exit = within("interrupted submit", task).await.expect("join");
    assert_eq!(exit.expect("submit"), Exit::Interrupted);
    assert_eq!(
        requests_in(&fx.db(), "batched"),
        N as i64,
        "left running on the server"
    );

    assert_eq!(fx.resume(&["--via", "sync"]).await, Exit::Success);
    let db = fx.db();
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM batch_chunks WHERE batch_status = 'cancelled'"
        ),
        2,
        "both batches were cancelled before sending directly"
    );
    let from_batches = query_i64(
        &db,
        "SELECT count(*) FROM attempts WHERE batch_id IS NOT NULL AND http_status = 200",
    );
    let direct = query_i64(
        &db,
        "SELECT count(*) FROM attempts WHERE batch_id IS NULL AND http_status = 200",
    );
    assert_eq!(from_batches + direct, N as i64);
    assert!(direct > 0, "the rest was sent directly");
    // Never paid twice: the mock answered each body once, in a batch or directly.
    assert_succeeded_once(&fx.mock.stats(), 0..N);
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_cancel_cancels_the_batches_a_signal_left_running_and_resume_finishes() {
    const N: usize = 200;
    let fx = Fixture::for_job("cancel")
        .mock(batch_mock(Duration::from_secs(6)))
        .prompts(0..N)
        .start()
        .await;
    let run = Running::spawn(fx.bin_submit(&via_batch(&[])));
    wait_until("a batch in progress", || {
        try_query_i64(
            &fx.db(),
            "SELECT count(*) FROM batch_chunks WHERE batch_status = 'in_progress'",
        ) == Some(1)
    })
    .await;
    run.signal("INT");
    let (status, stderr) = run.wait().await;
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("1 batches may go on running on the server")
            && stderr.contains("`runner cancel --job cancel`"),
        "{stderr}"
    );

    let out = output(fx.bin(&["cancel", "--poll-interval", "100ms"])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("asked for batch"), "{stderr}");
    let db = fx.db();
    assert_eq!(
        query_text(&db, "SELECT batch_status FROM batch_chunks").as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        requests_in(&db, "batched"),
        0,
        "nothing is left in the batch"
    );
    assert_eq!(
        query_text(&db, "SELECT state FROM jobs").as_deref(),
        Some("stopped")
    );

    let out = output(fx.bin(&["resume", "--no-progress"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_job_interrupted_midway_finishes_through_batches_with_resume_via_batch() {
    const N: usize = 400;
    let fx = Fixture::for_job("tobatch")
        .mock(MockConfig {
            latency: Duration::from_millis(50),
            batch_processing: Duration::from_millis(300),
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    let shutdown = Shutdown::new();
    let task = fx.spawn_submit(&["--concurrency", "4"], shutdown.clone());
    wait_until("some direct successes", || {
        fx.mock.stats().successes() >= 20
    })
    .await;
    shutdown.stop();
    let exit = within("interrupted submit", task).await.expect("join");
    assert_eq!(exit.expect("submit"), Exit::Interrupted);
    let direct = requests_in(&fx.db(), "succeeded");
    assert!(direct > 0 && direct < N as i64, "{direct} sent directly");

    assert_eq!(fx.resume(&via_batch(&[])).await, Exit::Success);
    let db = fx.db();
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM attempts WHERE batch_id IS NOT NULL AND error_class = 'succeeded'"
        ),
        N as i64 - direct,
        "the rest went through batches"
    );
    assert!(
        query_text(&db, "SELECT config FROM jobs").is_some_and(|c| c.contains(r#""via":"batch""#)),
        "the job is stored as a batch job now"
    );
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}
