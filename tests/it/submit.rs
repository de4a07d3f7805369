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
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.prompts("happy.jsonl", 0..50);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);

    let stats = mock.stats();
    assert_eq!(stats.answers, 50);
    for i in 0..50 {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    let (header, rows) = export_csv(&s.db(), "happy");
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
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transient_faults_all_end_succeeded() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        seed: 11,
        missing_scope_rate: 0.15,
        rate_limit_rate: 0.1,
        retry_after: Duration::from_millis(20),
        server_error_rate: 0.1,
        malformed_rate: 0.05,
        hang_rate: 0.02,
        hang: Duration::from_secs(5),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("mixed.jsonl", 0..200);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let args = submit_args(
        &file,
        &db,
        &url,
        &["--timeout", "300ms", "--max-attempts", "30"],
    );
    let exit = within("mixed run", run(&args, env())).await.expect("runs");
    assert_eq!(exit, Exit::Success);
    let stats = mock.stats();
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
            &s.db(),
            &format!("SELECT count(*) FROM attempts WHERE error_class = '{class}'"),
        );
        assert!(n > 0, "no {class} attempts journaled");
    }
    let unknown = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts WHERE outcome = 'outcome_unknown'",
    );
    assert!(unknown > 0, "timeouts are journaled as outcome unknown");
    let attempts = query_i64(&s.db(), "SELECT count(*) FROM attempts");
    let answered = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts WHERE outcome = 'answered'",
    );
    assert_eq!(answered + unknown, attempts, "every attempt is journaled");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_without_retry_and_export_as_failed() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let mut text = String::new();
    for i in 0..10 {
        let line = if i % 3 == 0 {
            json!({"custom_id": format!("r-{i}"), "messages": [{"role": "user", "content": "x"}], "mock_status": 400})
        } else {
            json!({"custom_id": format!("r-{i}"), "prompt": format!("prompt {i}")})
        };
        text.push_str(&format!("{line}\n"));
    }
    let input = s.write("bad.jsonl", &text);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::SomeFailed, "exit 3: finished with failures");
    assert_eq!(mock.stats().answers, 10, "a 400 is never retried");

    let (header, rows) = export_csv(&s.db(), "bad");
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
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_midway_then_resume_sends_each_request_to_success_once() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("stop.jsonl", 0..400);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let shutdown = Shutdown::new();
    let args = submit_args(&file, &db, &url, &["--concurrency", "8"]);
    let running = spawn_run(&args, env(), shutdown.clone());
    wait_until("some successes", || mock.stats().successes() >= 40).await;
    shutdown.stop();
    let exit = within("stopped run", running)
        .await
        .expect("task")
        .expect("runs");
    assert_eq!(exit, Exit::Interrupted);
    let done_before = mock.stats().successes();
    assert!(done_before < 400, "stopped before the end ({done_before})");
    let pending = query_i64(
        &s.db(),
        "SELECT count(*) FROM requests WHERE state = 'pending'",
    );
    assert_eq!(
        pending,
        400 - done_before as i64,
        "in-flight requests finished within the grace period"
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'in_flight'"
        ),
        0
    );

    let exit = run(&["resume", "--db", &db, "--no-progress"], env())
        .await
        .expect("resumes");
    assert_eq!(exit, Exit::Success);
    let stats = mock.stats();
    assert_eq!(stats.answers, 400, "nothing was sent twice");
    for i in 0..400 {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    let (_, rows) = export_csv(&s.db(), "stop");
    assert_eq!(rows.len(), 400);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_journals_in_flight_requests_as_interrupted() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("abort.jsonl", 0..40);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let shutdown = Shutdown::new();
    let args = submit_args(&file, &db, &url, &["--concurrency", "8"]);
    let running = spawn_run(&args, env(), shutdown.clone());
    wait_until("some successes", || mock.stats().successes() >= 8).await;
    shutdown.abort();
    let exit = within("aborted run", running)
        .await
        .expect("task")
        .expect("runs");
    assert_eq!(exit, Exit::Interrupted);
    let interrupted = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'",
    );
    assert!(
        interrupted > 0,
        "requests in flight at the abort are journaled as interrupted"
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'in_flight'"
        ),
        0
    );

    let exit = run(&["resume", "--db", &db, "--no-progress"], env())
        .await
        .expect("resumes");
    assert_eq!(exit, Exit::Success);
    let twice = interrupted_ids(&s.db());
    let stats = mock.stats();
    for i in 0..40 {
        let successes = stats.successes_for(&sent_body(i));
        let key = format!("r-{i}");
        assert!(successes >= 1, "request {i} succeeded");
        assert!(
            successes == 1 || twice.contains(&key),
            "request {i} was answered {successes} times but was never in flight at the abort"
        );
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_with_appended_lines_sends_only_the_new_ones() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.prompts("grow.jsonl", 0..30);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    assert_eq!(mock.stats().answers, 30);

    // Same file again: nothing to send.
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    assert_eq!(mock.stats().answers, 30);

    // Reordered, with lines appended: only the new ones go out.
    let mut lines: Vec<String> = (0..45).map(prompt_line).collect();
    lines[..30].reverse();
    s.write("grow.jsonl", &(lines.join("\n") + "\n"));
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    let stats = mock.stats();
    assert_eq!(stats.answers, 45);
    for i in 0..45 {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    let (header, rows) = export_csv(&s.db(), "grow");
    assert_eq!(rows.len(), 45);
    // Export follows the file's current order.
    assert_eq!(cell(&header, &rows[0], "custom_id"), "r-29");
    assert_eq!(cell(&header, &rows[44], "custom_id"), "r-44");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_custom_id_keep_their_identity_across_resubmits() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    // Two identical lines are two requests; reordering does not make them new.
    let first = "{\"prompt\":\"same\"}\n{\"prompt\":\"same\"}\n{\"prompt\":\"other\"}\n";
    let input = s.write("anon.jsonl", first);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    assert_eq!(mock.stats().answers, 3);
    s.write("anon.jsonl", "{\"prompt\":\"other\"}\n{\"prompt\":\"same\"}\n{\"prompt\":\"same\"}\n{\"prompt\":\"new\"}\n");
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    assert_eq!(mock.stats().answers, 4, "only the appended line was sent");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_custom_id_is_refused_before_anything_is_sent() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let text = format!(
        "{}\n{}\n{}\n",
        prompt_line(1),
        prompt_line(2),
        prompt_line(1)
    );
    let input = s.write("dup.jsonl", &text);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let err = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect_err("refused");
    let message = format!("{err:#}");
    assert!(message.contains("dup.jsonl:3"), "{message}");
    assert!(
        message.contains("custom_id 'r-1' is already used on line 1"),
        "{message}"
    );
    assert_eq!(mock.stats().answers, 0, "nothing was sent");
    assert_eq!(
        query_i64(&s.db(), "SELECT count(*) FROM requests"),
        0,
        "nothing was stored"
    );
    assert_eq!(
        query_i64(&s.db(), "SELECT count(*) FROM jobs"),
        0,
        "no half-made job"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_body_under_a_known_custom_id_is_refused() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.prompts("change.jsonl", 0..3);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    s.write(
        "change.jsonl",
        &format!(
            "{}\n{{\"custom_id\":\"r-1\",\"prompt\":\"edited\"}}\n",
            prompt_line(0)
        ),
    );
    let err = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect_err("refused");
    let message = format!("{err:#}");
    assert!(
        message
            .contains("change.jsonl:2: custom_id 'r-1' was submitted before with a different body"),
        "{message}"
    );
    assert_eq!(mock.stats().answers, 3);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lines_reach_their_own_endpoints_and_export_as_batch_output() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/batch.jsonl");
    let (db, url) = (s.db_arg(), mock.base_url());
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
    let (header, rows) = export_csv(&s.db(), "batch");
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

    let conn = runner::store::open_read_only(&s.db()).expect("db");
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
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_stops_the_job_keeps_requests_pending_and_resume_finishes() {
    let s = Scratch::new();
    let bad = "sk-proj-revoked-key-000000000000";
    let mock = mock(MockConfig {
        invalid_keys: vec![bad.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("stopkey.jsonl", 0..100);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let started = std::time::Instant::now();
    let exit = run(
        &submit_args(&file, &db, &url, &["--concurrency", "4"]),
        env_with_key(bad),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Stopped, "exit 4");
    assert!(started.elapsed() < Duration::from_secs(5), "stops promptly");
    assert!(
        mock.stats().answers <= 4,
        "no more than the requests already in flight were sent"
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'pending'"
        ),
        100
    );
    let reason: String = rusqlite::Connection::open(s.db())
        .expect("db")
        .query_row("SELECT state_reason FROM jobs", [], |r| r.get(0))
        .expect("reason");
    assert!(reason.contains("OPENAI_API_KEY"), "{reason}");

    let exit = run(&["resume", "--db", &db, "--no-progress"], env())
        .await
        .expect("resumes");
    assert_eq!(exit, Exit::Success);
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests WHERE state = 'succeeded'"
        ),
        100
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_through_ten_percent_missing_scope_all_succeed() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        seed: 42,
        missing_scope_rate: 0.10,
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("ten-k.jsonl", 0..10_000);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let args = submit_args(&file, &db, &url, &["--concurrency", "64"]);
    let exit = within("10k run", run(&args, env())).await.expect("runs");
    assert_eq!(exit, Exit::Success);
    let stats = mock.stats();
    assert_eq!(stats.successes(), 10_000);
    assert!(
        stats.by_status.get(&401).copied().unwrap_or(0) > 500,
        "the 401s were injected"
    );
    let (header, rows) = export_csv(&s.db(), "ten-k");
    assert_eq!(rows.len(), 10_000);
    assert!(
        rows.iter()
            .all(|r| cell(&header, r, "status") == "succeeded")
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_the_wait_is_stored() {
    let s = Scratch::new();
    // Every request meets a 429 with retry-after 1.2 s during the first 300 ms.
    let mock = mock(MockConfig {
        retry_after: Duration::from_millis(1200),
        spikes: vec![Spike {
            start: Duration::ZERO,
            end: Duration::from_millis(300),
            fault: Fault::RateLimited,
        }],
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("wait.jsonl", 0..5);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    // No second attempt went out before the server's time.
    let early = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts a JOIN attempts b ON a.request_id = b.request_id AND b.number = a.number + 1
         WHERE a.error_class = 'rate_limited' AND b.started_at < a.finished_at + 1200",
    );
    assert_eq!(early, 0);
    assert!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE error_class = 'rate_limited'"
        ) >= 5
    );
    mock.shutdown().await;
}
