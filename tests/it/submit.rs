//! `submit` / `resume` / `export` behaviour, in-process, against the real mock over HTTP.

use std::time::Duration;

use runner::Exit;
use runner::engine::shutdown::Shutdown;
use runner::inspect::export::CSV_COLUMNS;
use runner::mock::{Fault, MockConfig, Spike};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_exports_one_row_per_request_in_input_order() {
    let fx = Fixture::for_job("happy").prompts(0..50).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);

    let stats = fx.mock.stats();
    assert_eq!(stats.answers, 50);
    assert_succeeded_once(&stats, 0..50);
    let (header, rows) = fx.export_csv();
    assert_eq!(header, CSV_COLUMNS, "the CSV header is a contract");
    assert_eq!(rows.len(), 50);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(cell(&header, row, "custom_id"), format!("r-{i}"));
        assert_eq!(cell(&header, row, "status"), "succeeded");
        assert_eq!(cell(&header, row, "http_status"), "200");
        assert_eq!(cell(&header, row, "attempts"), "1");
        // The mock echoes the prompt: proof that this output belongs to this input.
        assert_eq!(
            cell(&header, row, "output_text"),
            format!("echo: prompt {i}")
        );
        assert_eq!(cell(&header, row, "model"), "test-model");
        assert!(cell(&header, row, "request_id").starts_with("req_"));
        let prompt: i64 = cell(&header, row, "prompt_tokens").parse().expect("number");
        let completion: i64 = cell(&header, row, "completion_tokens")
            .parse()
            .expect("number");
        let total: i64 = cell(&header, row, "total_tokens").parse().expect("number");
        assert_eq!(prompt + completion, total);
        assert!(cell(&header, row, "finished_at").ends_with('Z'));
        assert_eq!(cell(&header, row, "error_code"), "");
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transient_faults_all_end_succeeded() {
    let fx = Fixture::for_job("mixed")
        .mock(MockConfig {
            seed: 11,
            missing_scope_rate: 0.15,
            rate_limit_rate: 0.1,
            retry_after: Duration::from_millis(20),
            server_error_rate: 0.1,
            // No malformed 2xx: that is `invalid_response` now, sent once more then failed
            // (endpoints.rs), not a transient fault this test can expect to heal.
            hang_rate: 0.02,
            hang: Duration::from_secs(5),
            ..MockConfig::default()
        })
        .prompts(0..200)
        .start()
        .await;
    let exit = fx
        .submit(&["--timeout", "300ms", "--max-attempts", "30"])
        .await;
    assert_eq!(exit, Exit::Success);
    let stats = fx.mock.stats();
    assert!(
        stats.answers > 200,
        "faults were injected: {} answers",
        stats.answers
    );
    for i in 0..200 {
        assert_eq!(
            stats.successes_for(&sent_body(i)),
            1,
            "request {i} succeeded exactly once"
        );
    }
    // Every kind of fault shows in the journal under its class.
    for class in ["auth_transient", "rate_limited", "transient"] {
        let n = query_i64(
            &fx.db(),
            &format!("SELECT count(*) FROM attempts WHERE error_class = '{class}'"),
        );
        assert!(n > 0, "no {class} attempts journaled");
    }
    let unknown = query_i64(
        &fx.db(),
        "SELECT count(*) FROM attempts WHERE outcome = 'outcome_unknown'",
    );
    assert!(unknown > 0, "timeouts are journaled as outcome unknown");
    let attempts = query_i64(&fx.db(), "SELECT count(*) FROM attempts");
    let answered = query_i64(
        &fx.db(),
        "SELECT count(*) FROM attempts WHERE outcome = 'answered'",
    );
    assert_eq!(answered + unknown, attempts, "every attempt is journaled");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_without_retry_and_export_as_failed() {
    let mut text = String::new();
    for i in 0..10 {
        let line = if i % 3 == 0 {
            json!({"custom_id": format!("r-{i}"), "messages": [{"role": "user", "content": "x"}], "mock_status": 400})
        } else {
            json!({"custom_id": format!("r-{i}"), "prompt": format!("prompt {i}")})
        };
        text.push_str(&format!("{line}\n"));
    }
    let fx = Fixture::for_job("bad").input(text).start().await;
    let exit = fx.submit(&[]).await;
    assert_eq!(exit, Exit::SomeFailed, "exit 3: finished with failures");
    assert_eq!(fx.mock.stats().answers, 10, "a 400 is never retried");

    let (header, rows) = fx.export_csv();
    assert_eq!(rows.len(), 10);
    for (i, row) in rows.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(cell(&header, row, "status"), "failed");
            assert_eq!(cell(&header, row, "http_status"), "400");
            assert_eq!(cell(&header, row, "error_class"), "request_failed");
            assert_eq!(cell(&header, row, "attempts"), "1");
            assert!(!cell(&header, row, "error_message").is_empty());
            assert_eq!(cell(&header, row, "output_text"), "");
        } else {
            assert_eq!(cell(&header, row, "status"), "succeeded");
        }
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_midway_then_resume_sends_each_request_to_success_once() {
    let fx = Fixture::for_job("stop")
        .mock(MockConfig {
            latency: Duration::from_millis(20),
            ..MockConfig::default()
        })
        .prompts(0..400)
        .start()
        .await;
    let shutdown = Shutdown::new();
    let running = fx.spawn_submit(&["--concurrency", "8"], shutdown.clone());
    wait_until("some successes", || fx.mock.stats().successes() >= 40).await;
    shutdown.stop();
    let exit = within("stopped run", running)
        .await
        .expect("task")
        .expect("runs");
    assert_eq!(exit, Exit::Interrupted);
    let done_before = fx.mock.stats().successes();
    assert!(done_before < 400, "stopped before the end ({done_before})");
    assert_eq!(
        requests_in(&fx.db(), "pending"),
        400 - done_before as i64,
        "in-flight requests finished within the grace period"
    );
    assert_eq!(requests_in(&fx.db(), "in_flight"), 0);

    assert_eq!(fx.resume(&[]).await, Exit::Success);
    let stats = fx.mock.stats();
    assert_eq!(stats.answers, 400, "nothing was sent twice");
    assert_succeeded_once(&stats, 0..400);
    let (_, rows) = fx.export_csv();
    assert_eq!(rows.len(), 400);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_journals_in_flight_requests_as_interrupted() {
    let fx = Fixture::for_job("abort")
        .mock(MockConfig {
            latency: Duration::from_millis(300),
            ..MockConfig::default()
        })
        .prompts(0..40)
        .start()
        .await;
    let shutdown = Shutdown::new();
    let running = fx.spawn_submit(&["--concurrency", "8"], shutdown.clone());
    wait_until("some successes", || fx.mock.stats().successes() >= 8).await;
    // The next requests are in flight (not just the first eight answered), so the abort has
    // something to interrupt even on a loaded machine.
    wait_until("requests in flight after the first answers", || {
        try_query_i64(
            &fx.db(),
            "SELECT (SELECT count(*) FROM requests WHERE state = 'succeeded') >= 8
                AND (SELECT count(*) FROM requests WHERE state = 'in_flight') > 0",
        ) == Some(1)
    })
    .await;
    shutdown.abort();
    let exit = within("aborted run", running)
        .await
        .expect("task")
        .expect("runs");
    assert_eq!(exit, Exit::Interrupted);
    let interrupted = query_i64(
        &fx.db(),
        "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'",
    );
    assert!(
        interrupted > 0,
        "requests in flight at the abort are journaled as interrupted"
    );
    assert_eq!(requests_in(&fx.db(), "in_flight"), 0);

    assert_eq!(fx.resume(&[]).await, Exit::Success);
    let twice = interrupted_ids(&fx.db());
    let stats = fx.mock.stats();
    for i in 0..40 {
        let successes = stats.successes_for(&sent_body(i));
        let key = format!("r-{i}");
        assert!(successes >= 1, "request {i} succeeded");
        assert!(
            successes == 1 || twice.contains(&key),
            "request {i} was answered {successes} times but was never in flight at the abort"
        );
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_with_appended_lines_sends_only_the_new_ones() {
    let fx = Fixture::for_job("grow").prompts(0..30).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    assert_eq!(fx.mock.stats().answers, 30);

    // Same file again: nothing to send.
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    assert_eq!(fx.mock.stats().answers, 30);

    // Reordered, with lines appended: only the new ones go out.
    let mut lines: Vec<String> = (0..45).map(prompt_line).collect();
    lines[..30].reverse();
    fx.rewrite_input(&(lines.join("\n") + "\n"));
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let stats = fx.mock.stats();
    assert_eq!(stats.answers, 45);
    assert_succeeded_once(&stats, 0..45);
    let (header, rows) = fx.export_csv();
    assert_eq!(rows.len(), 45);
    // Export follows the file's current order.
    assert_eq!(cell(&header, &rows[0], "custom_id"), "r-29");
    assert_eq!(cell(&header, &rows[44], "custom_id"), "r-44");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_custom_id_keep_their_identity_across_resubmits() {
    // Two identical lines are two requests; reordering does not make them new.
    let first = "{\"prompt\":\"same\"}\n{\"prompt\":\"same\"}\n{\"prompt\":\"other\"}\n";
    let fx = Fixture::for_job("anon").input(first).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    assert_eq!(fx.mock.stats().answers, 3);
    fx.rewrite_input("{\"prompt\":\"other\"}\n{\"prompt\":\"same\"}\n{\"prompt\":\"same\"}\n{\"prompt\":\"new\"}\n");
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    assert_eq!(
        fx.mock.stats().answers,
        4,
        "only the appended line was sent"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_custom_id_is_refused_before_anything_is_sent() {
    let text = format!(
        "{}\n{}\n{}\n",
        prompt_line(1),
        prompt_line(2),
        prompt_line(1)
    );
    let fx = Fixture::for_job("dup").input(text).start().await;
    let err = fx.try_submit(&[]).await.expect_err("refused");
    let message = format!("{err:#}");
    assert!(message.contains("dup.jsonl:3"), "{message}");
    assert!(
        message.contains("custom_id 'r-1' is already used on line 1"),
        "{message}"
    );
    assert_eq!(fx.mock.stats().answers, 0, "nothing was sent");
    assert!(
        !fx.db().exists(),
        "nothing was stored: the journal this submit made, with no job in it, is gone"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_body_under_a_known_custom_id_is_refused() {
    let fx = Fixture::for_job("change").prompts(0..3).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    fx.rewrite_input(&format!(
        "{}\n{{\"custom_id\":\"r-1\",\"prompt\":\"edited\"}}\n",
        prompt_line(0)
    ));
    let err = fx.try_submit(&[]).await.expect_err("refused");
    let message = format!("{err:#}");
    assert!(
        message
            .contains("change.jsonl:2: custom_id 'r-1' was submitted before with a different body"),
        "{message}"
    );
    assert_eq!(fx.mock.stats().answers, 3);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lines_reach_their_own_endpoints_and_export_as_batch_output() {
    let fx = Fixture::for_job("batch").start().await;
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/batch.jsonl");
    let (db, url) = (fx.db_arg(), fx.url());
    let exit = run(
        &[
            "submit",
            samples,
            "--db",
            &db,
            "--base-url",
            &url,
            "--no-progress",
        ],
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    let (header, rows) = fx.export_csv();
    let texts: Vec<&str> = rows
        .iter()
        .map(|r| cell(&header, r, "output_text"))
        .collect();
    assert_eq!(texts[0], "echo: Name a prime number.");
    assert_eq!(
        texts[2], "echo: Write one sentence about SQLite.",
        "responses API text"
    );
    assert_eq!(texts[3], "", "embeddings have no text");
    assert!(
        !cell(&header, &rows[3], "prompt_tokens").is_empty(),
        "embeddings usage"
    );

    let conn = runner::store::open_read_only(&fx.db()).expect("db");
    let job = runner::store::db::resolve_job(&conn, Some("batch")).expect("job");
    let mut out = Vec::new();
    let n = runner::inspect::export::write_export(
        &conn,
        &job,
        runner::cli::ExportFormat::Jsonl,
        &mut out,
    )
    .expect("export");
    assert_eq!(n, 4);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines[0]["custom_id"], "chat-1");
    assert!(
        lines[0]["id"]
            .as_str()
            .expect("id")
            .starts_with("batch_req_")
    );
    assert_eq!(lines[0]["response"]["status_code"], 200);
    assert!(
        lines[0]["response"]["request_id"]
            .as_str()
            .expect("request id")
            .starts_with("req_")
    );
    assert_eq!(
        lines[0]["response"]["body"]["choices"][0]["message"]["content"],
        "echo: Name a prime number."
    );
    assert!(lines[0]["error"].is_null());
    assert_eq!(lines[3]["response"]["body"]["object"], "list");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_stops_the_job_keeps_requests_pending_and_resume_finishes() {
    let bad = "sk-proj-revoked-key-000000000000";
    let fx = Fixture::for_job("stopkey")
        .mock(MockConfig {
            invalid_keys: vec![bad.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..100)
        .env(env_with_key(bad))
        .start()
        .await;
    let started = std::time::Instant::now();
    let exit = fx.submit(&["--concurrency", "4"]).await;
    assert_eq!(exit, Exit::Stopped, "exit 4");
    assert!(started.elapsed() < Duration::from_secs(5), "stops promptly");
    assert!(
        fx.mock.stats().answers <= 4,
        "no more than the requests already in flight were sent"
    );
    assert_eq!(requests_in(&fx.db(), "pending"), 100);
    let reason = query_text(&fx.db(), "SELECT state_reason FROM jobs").expect("reason");
    assert!(reason.contains("OPENAI_API_KEY"), "{reason}");

    // With a good key.
    let exit = run(&["resume", "--db", &fx.db_arg(), "--no-progress"], env())
        .await
        .expect("resumes");
    assert_eq!(exit, Exit::Success);
    assert_eq!(requests_in(&fx.db(), "succeeded"), 100);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_through_ten_percent_missing_scope_all_succeed() {
    let fx = Fixture::for_job("ten-k")
        .mock(MockConfig {
            seed: 42,
            missing_scope_rate: 0.10,
            ..MockConfig::default()
        })
        .prompts(0..10_000)
        .start()
        .await;
    assert_eq!(fx.submit(&["--concurrency", "64"]).await, Exit::Success);
    let stats = fx.mock.stats();
    assert_eq!(stats.successes(), 10_000);
    assert!(
        stats.by_status.get(&401).copied().unwrap_or(0) > 500,
        "the 401s were injected"
    );
    let (header, rows) = fx.export_csv();
    assert_eq!(rows.len(), 10_000);
    assert!(
        rows.iter()
            .all(|r| cell(&header, r, "status") == "succeeded")
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_the_wait_is_stored() {
    // Every request meets a 429 with retry-after 1.2 s during the first second (long enough
    // for the runner to start on a loaded machine; its retries come after 1.2 s). A pool of
    // five and the latency keep all five in flight before the first 429 pauses the pool.
    let fx = Fixture::for_job("wait")
        .mock(MockConfig {
            latency: Duration::from_millis(200),
            retry_after: Duration::from_millis(1200),
            spikes: vec![Spike {
                start: Duration::ZERO,
                end: Duration::from_millis(1000),
                fault: Fault::RateLimited,
            }],
            ..MockConfig::default()
        })
        .prompts(0..5)
        .start()
        .await;
    assert_eq!(fx.submit(&["--concurrency", "5"]).await, Exit::Success);
    // No second attempt went out before the server's time.
    assert_eq!(early_retries(&fx.db(), 1200), 0);
    assert!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM attempts WHERE error_class = 'rate_limited'"
        ) >= 5
    );
    fx.shutdown().await;
}
