//! `--via batch` end to end on the mock's Files and Batches endpoints: chunks, results journaled
//! as attempts, expired and refused batches, the failure model of the Files and Batches calls,
//! the enqueued-token limit, what status, timeline, report and export show. Interruptions are
//! in `batch_recovery.rs`.

use std::collections::HashSet;
use std::time::Duration;

use runner::Exit;
use runner::mock::{BatchFate, MockConfig};

use crate::support::bin::{output, text};
use crate::support::*;

/// Polls every 100 ms and a short backoff: a batch test's pace.
pub(crate) const QUICK_POLLS: [&str; 6] = [
    "--poll-interval",
    "100ms",
    "--backoff-base",
    "50ms",
    "--backoff-cap",
    "200ms",
];

/// `--via batch` with [`QUICK_POLLS`], plus `extra`.
pub(crate) fn via_batch<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--via", "batch"];
    args.extend_from_slice(&QUICK_POLLS);
    args.extend_from_slice(extra);
    args
}

pub(crate) fn batch_mock(processing: Duration) -> MockConfig {
    MockConfig {
        batch_processing: processing,
        ..MockConfig::default()
    }
}

/// [`batch_mock`] whose first batch meets `fate`; the later ones complete.
fn first_batch(fate: BatchFate, processing: Duration) -> MockConfig {
    MockConfig {
        batch_fates: vec![fate],
        ..batch_mock(processing)
    }
}

/// Every request succeeded, once: one succeeded attempt each, and as many requests as `n`.
pub(crate) fn assert_each_succeeded_once(fx: &Fixture, n: i64) {
    let db = fx.db();
    assert_eq!(requests_in(&db, "succeeded"), n, "every request succeeded");
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM attempts WHERE error_class = 'succeeded' AND outcome = 'answered'"
        ),
        n,
        "one successful attempt each"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM (SELECT request_id FROM attempts WHERE http_status = 200 GROUP BY request_id HAVING count(*) > 1)"
        ),
        0,
        "no request has two successes"
    );
    assert_eq!(integrity(&db), "ok");
    // Never paid twice: the mock answered each body successfully once, in whatever batch.
    assert_succeeded_once(&fx.mock.stats(), 0..n as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_120000_line_job_runs_in_three_chunks_with_one_success_per_line() {
    const N: usize = 120_000;
    let fx = Fixture::for_job("big")
        .mock(batch_mock(Duration::from_millis(500)))
        .prompts(0..N)
        .start()
        .await;
    // Bounded, with room for a loaded machine: 120,000 lines in and out of a debug build.
    let exit = tokio::time::timeout(
        Duration::from_secs(300),
        run(&fx.submit_args(&via_batch(&[])), env()),
    )
    .await
    .expect("the job ends within 5 minutes")
    .expect("submit");
    assert_eq!(exit, Exit::Success);
    let db = fx.db();
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM batch_chunks WHERE state = 'imported'"
        ),
        3
    );
    assert_eq!(
        query_text(
            &db,
            "SELECT group_concat(lines) FROM (SELECT lines FROM batch_chunks ORDER BY seq)"
        )
        .as_deref(),
        Some("50000,50000,20000"),
        "50,000 lines per file at most"
    );
    let stats = fx.mock.stats();
    assert_eq!(stats.batch.batches_created, 3, "one batch per chunk");
    assert_eq!(stats.batch.uploads, 3);
    assert_each_succeeded_once(&fx, N as i64);
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM attempts WHERE batch_id IS NULL"),
        0,
        "every attempt names its batch"
    );
    let (_, rows) = fx.export_csv();
    assert_eq!(rows.len(), N);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_sends_its_missing_lines_in_a_later_chunk() {
    const N: usize = 200;
    let fx = Fixture::for_job("expiry")
        .mock(first_batch(BatchFate::Expire, Duration::from_millis(400)))
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(fx.submit(&via_batch(&[])).await, Exit::Success);
    let db = fx.db();
    let expired = query_i64(
        &db,
        "SELECT count(*) FROM attempts WHERE error_code = 'batch_expired' AND outcome = 'not_sent'",
    );
    assert!(expired > 0 && expired < N as i64, "{expired} lines expired");
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM batch_chunks WHERE seq = 2"),
        1
    );
    assert_eq!(
        query_i64(&db, "SELECT lines FROM batch_chunks WHERE seq = 2"),
        expired,
        "exactly the missing lines went into the second chunk"
    );
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

/// An output file that answers a line twice, a 500 first and then the success (a server
/// reporting a retry it made): the success is journaled after the 500, and the line is not
/// sent in another batch. Before, the first line won, the success was skipped, and the line
/// went into batch after batch, answered (and billed) each time, until its budget ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_after_an_error_for_the_same_line_is_journaled_not_sent_again() {
    const N: usize = 20;
    let fx = Fixture::for_job("retried")
        .mock(first_batch(
            BatchFate::ErrorThenSuccess,
            Duration::from_millis(300),
        ))
        .prompts(0..N)
        .start()
        .await;
    let out = output(fx.bin_submit(&via_batch(&[]))).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let db = fx.db();
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM batch_chunks"),
        1,
        "no line went into a second batch"
    );
    assert_each_succeeded_once(&fx, N as i64);
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM attempts WHERE http_status = 500 AND number = 1"
        ),
        N as i64,
        "the 500 is journaled first"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM attempts WHERE http_status = 200 AND number = 2"
        ),
        N as i64,
        "then the success"
    );
    let stats = fx.mock.stats();
    for i in 0..N {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_output_file_is_gone_sends_its_lines_again_and_says_so() {
    // The first batch completes, but its output file answers 404 (deleted, or past its
    // expiry): its answers can never be read, so its lines go into a second batch.
    const N: usize = 60;
    let fx = Fixture::for_job("gone")
        .mock(first_batch(
            BatchFate::OutputGone,
            Duration::from_millis(300),
        ))
        .prompts(0..N)
        .start()
        .await;
    let out = output(fx.bin_submit(&via_batch(&[]))).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("is gone from the server (HTTP 404, 10 times)")
            && stderr.contains("billed twice"),
        "{stderr}"
    );
    let db = fx.db();
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM attempts WHERE error_code = 'batch_file_gone' \
             AND outcome = 'outcome_unknown' AND error_class = 'transient'"
        ),
        N as i64,
        "every line of the first batch has an attempt saying its answer is lost"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM batch_calls WHERE operation = 'download' AND http_status = 404"
        ),
        10,
        "the download is tried again within the transient budget (10 attempts), each journaled"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM batch_calls WHERE operation = 'download' AND result LIKE '%: gone'"
        ),
        1,
        "then the file is taken as gone"
    );
    assert_eq!(
        query_text(
            &db,
            "SELECT group_concat(lines) FROM (SELECT lines FROM batch_chunks ORDER BY seq)"
        )
        .as_deref(),
        Some("60,60"),
        "the lines went again in a second chunk"
    );
    assert_eq!(requests_in(&db, "succeeded"), N as i64);
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM (SELECT request_id FROM attempts WHERE http_status = 200 \
             GROUP BY request_id HAVING count(*) = 1)"
        ),
        N as i64,
        "one journaled success each"
    );
    // The price of a lost file: the server answered every line twice, once in each batch.
    let stats = fx.mock.stats();
    for i in 0..N {
        assert_eq!(stats.successes_for(&sent_body(i)), 2, "request {i}");
    }
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_by_validation_fails_the_line_it_names_and_sends_the_others_again() {
    const N: usize = 50;
    let fx = Fixture::for_job("refused")
        .mock(first_batch(
            BatchFate::FailValidation,
            Duration::from_millis(300),
        ))
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(fx.submit(&via_batch(&[])).await, Exit::SomeFailed);
    let db = fx.db();
    assert_eq!(requests_in(&db, "failed"), 1);
    assert_eq!(
        query_text(&db, "SELECT key FROM requests WHERE state = 'failed'").as_deref(),
        Some("r-0"),
        "line 1 of the file is the one named"
    );
    assert_eq!(requests_in(&db, "succeeded"), N as i64 - 1);
    assert_eq!(fx.mock.stats().batch.batches_created, 2);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_scope_on_upload_and_create_is_retried_with_backoff() {
    const N: usize = 20;
    let fx = Fixture::for_job("scopes")
        .mock(MockConfig {
            batch_processing: Duration::from_millis(200),
            batch_missing_scope_uploads: 2,
            batch_missing_scope_creates: 2,
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(fx.submit(&via_batch(&[])).await, Exit::Success);
    let db = fx.db();
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM batch_calls WHERE error_class = 'auth_transient' AND http_status = 401"
        ),
        4,
        "each refused call is journaled as auth_transient"
    );
    assert_eq!(fx.mock.stats().batch.batches_created, 1);
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_on_the_files_api_stops_the_job_with_exit_4_and_loses_nothing() {
    const N: usize = 20;
    let bad = "sk-revoked-0000000000000000";
    let fx = Fixture::for_job("badkey")
        .mock(MockConfig {
            batch_processing: Duration::from_millis(200),
            invalid_keys: vec![bad.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..N)
        .env(env_with_key(bad))
        .start()
        .await;
    assert_eq!(fx.submit(&via_batch(&[])).await, Exit::Stopped);
    let db = fx.db();
    assert_eq!(requests_in(&db, "succeeded"), 0);
    let reason = query_text(&db, "SELECT state_reason FROM jobs");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("invalid_api_key")),
        "{reason:?}"
    );
    assert_eq!(fx.mock.stats().batch.uploads, 0);
    // With a good key, the same job finishes.
    let good = env();
    let db_arg = fx.db_arg();
    let exit = within(
        "resume",
        run(&["resume", "--db", &db_arg, "--no-progress"], good),
    )
    .await
    .expect("resume");
    assert_eq!(exit, Exit::Success);
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_exports_in_the_same_format_as_a_sync_job() {
    const N: usize = 30;
    let sync = Fixture::for_job("same").prompts(0..N).start().await;
    assert_eq!(sync.submit(&[]).await, Exit::Success);
    let batch = Fixture::for_job("same")
        .mock(batch_mock(Duration::from_millis(200)))
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(batch.submit(&via_batch(&[])).await, Exit::Success);

    let (sync_header, sync_rows) = sync.export_csv();
    let (batch_header, batch_rows) = batch.export_csv();
    assert_eq!(sync_header, batch_header);
    let column = |header: &[String], rows: &[csv::StringRecord], name: &str| -> Vec<String> {
        rows.iter()
            .map(|row| cell(header, row, name).to_owned())
            .collect()
    };
    for name in ["custom_id", "status", "http_status"] {
        assert_eq!(
            column(&sync_header, &sync_rows, name),
            column(&batch_header, &batch_rows, name),
            "column {name}"
        );
    }

    let shape = |value: &serde_json::Value| -> HashSet<String> {
        fn walk(prefix: &str, value: &serde_json::Value, out: &mut HashSet<String>) {
            if let serde_json::Value::Object(map) = value {
                for (key, inner) in map {
                    let path = format!("{prefix}/{key}");
                    out.insert(path.clone());
                    walk(&path, inner, out);
                }
            }
        }
        let mut out = HashSet::new();
        walk("", value, &mut out);
        out
    };
    let (sync_lines, batch_lines) = (sync.export_jsonl(), batch.export_jsonl());
    assert_eq!(sync_lines.len(), N);
    assert_eq!(batch_lines.len(), N);
    for (s, b) in sync_lines.iter().zip(&batch_lines) {
        assert_eq!(s["custom_id"], b["custom_id"]);
        assert_eq!(shape(s), shape(b), "same fields in {s} and {b}");
    }
    sync.shutdown().await;
    batch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_demo_runs_on_the_mock_and_writes_every_result() {
    let scratch = Scratch::new();
    let mut cmd = crate::support::bin::runner(scratch.dir.path());
    cmd.args(["demo", "--via", "batch", "--no-progress"]);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("expired"),
        "the demo shows an expired batch: {stderr}"
    );
    assert!(
        stderr.contains("missing_scope"),
        "and a refused create: {stderr}"
    );
    let db = scratch.path("runner-demo.db");
    assert_eq!(requests_in(&db, "succeeded"), 300);
    let (_, rows) = export_csv(&db, "demo");
    assert_eq!(rows.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_over_the_enqueued_token_limit_wait_for_the_jobs_running_batches() {
    const N: usize = 90;
    let fx = Fixture::for_job("queued")
        .mock(MockConfig {
            batch_processing: Duration::from_millis(400),
            batch_max_open: Some(1),
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(
        fx.submit(&via_batch(&["--batch-max-lines", "30"])).await,
        Exit::Success
    );
    let db = fx.db();
    assert!(
        query_i64(
            &db,
            "SELECT count(*) FROM batch_calls WHERE operation = 'create' AND error_code = 'token_limit_exceeded'"
        ) > 0,
        "creates were refused while a batch ran"
    );
    assert_eq!(
        query_i64(
            &db,
            "SELECT max(transient_calls + auth_calls + rate_limited_calls) FROM batch_chunks"
        ),
        0,
        "waiting for the job's own batches spends no budget"
    );
    assert_eq!(fx.mock.stats().batch.batches_created, 3);
    assert_each_succeeded_once(&fx, N as i64);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_timeline_and_report_show_each_batch_and_price_it_at_half() {
    const N: usize = 40;
    let fx = Fixture::for_job("shown")
        .mock(batch_mock(Duration::from_millis(300)))
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(
        fx.submit(&via_batch(&["--batch-max-lines", "25"])).await,
        Exit::Success
    );
    let batch_ids: Vec<String> = (1..=2)
        .map(|seq| {
            query_text(
                &fx.db(),
                &format!("SELECT batch_id FROM batch_chunks WHERE seq = {seq}"),
            )
            .expect("a batch id")
        })
        .collect();

    let status = output(fx.bin(&["status", "--price", "test-model=1,2"])).await;
    let stdout = text(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    assert!(
        stdout.contains("batches   2 chunks · 0 open · 2 imported"),
        "{stdout}"
    );
    for id in &batch_ids {
        assert!(stdout.contains(id.as_str()), "{id} in {stdout}");
    }
    assert!(stdout.contains("(batch, half price)"), "{stdout}");
    assert!(stdout.contains("the Batch API saved"), "{stdout}");

    let json = output(fx.bin(&["status", "--json", "--price", "test-model=1,2"])).await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(value["batches"].as_array().map(Vec::len), Some(2));
    let cost = &value["cost"];
    let usd = cost["estimate_usd"].as_f64().expect("a cost");
    let (prompt, completion) = (
        value["tokens"]["prompt"].as_f64().expect("prompt tokens"),
        value["tokens"]["completion"]
            .as_f64()
            .expect("completion tokens"),
    );
    let direct = (prompt * 1.0 + completion * 2.0) / 1_000_000.0;
    assert!(
        (usd - direct / 2.0).abs() < 1e-12,
        "{usd} is half of {direct}"
    );

    // Each exported row at the batch rate: half its usage at the price given.
    let exported =
        output(fx.bin(&["export", "--format", "jsonl", "--price", "test-model=1,2"])).await;
    let mut rows = 0;
    for line in text(&exported.stdout).lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("a JSONL line");
        let usage = &line["response"]["body"]["usage"];
        let (p, c) = (
            usage["prompt_tokens"].as_f64(),
            usage["completion_tokens"].as_f64(),
        );
        let direct = (p.expect("prompt") + 2.0 * c.expect("completion")) / 1_000_000.0;
        let cost = line["cost_usd"].as_f64().expect("cost_usd");
        assert!((cost - direct / 2.0).abs() < 1e-12, "{line}");
        rows += 1;
    }
    assert_eq!(rows, N);

    let timeline = output(fx.bin(&["timeline"])).await;
    let stdout = text(&timeline.stdout);
    for id in &batch_ids {
        assert!(stdout.contains(id.as_str()), "{id} in {stdout}");
    }
    let report = fx.scratch.path("report.html");
    let out = output(fx.bin(&["report", "--output", &report.display().to_string()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(&report).expect("report");
    assert!(
        html.contains("<h2>Batches (2)</h2>"),
        "the report lists the batches"
    );
    for id in &batch_ids {
        assert!(html.contains(id.as_str()));
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_files_are_deleted_from_the_server_only_when_asked() {
    const N: usize = 20;
    let kept = Fixture::for_job("kept")
        .mock(batch_mock(Duration::from_millis(200)))
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(kept.submit(&via_batch(&[])).await, Exit::Success);
    assert_eq!(
        kept.mock.stats().batch.deletes,
        0,
        "nothing deleted unless asked"
    );

    let deleted = Fixture::for_job("deleted")
        .mock(batch_mock(Duration::from_millis(200)))
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(
        deleted.submit(&via_batch(&["--delete-batch-files"])).await,
        Exit::Success
    );
    // The input file and the output file (no line failed: no error file).
    assert_eq!(deleted.mock.stats().batch.deletes, 2);
    assert_eq!(
        query_i64(
            &deleted.db(),
            "SELECT count(*) FROM batch_calls WHERE operation = 'delete' AND http_status = 200"
        ),
        2
    );
    kept.shutdown().await;
    deleted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_every_line_fails_the_same_way_stops_the_job_as_a_configuration_error() {
    const N: usize = 30;
    let fx = Fixture::for_job("wrongmodel")
        .mock(MockConfig {
            batch_processing: Duration::from_millis(200),
            unknown_models: vec!["test-model".to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    assert_eq!(fx.submit(&via_batch(&[])).await, Exit::Stopped);
    let db = fx.db();
    assert_eq!(requests_in(&db, "failed"), 0, "none is left failed");
    assert_eq!(
        requests_in(&db, "pending"),
        N as i64,
        "all are pending again"
    );
    let reason = query_text(&db, "SELECT state_reason FROM jobs");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("configuration error") && r.contains("404")),
        "{reason:?}"
    );
    fx.shutdown().await;
}
