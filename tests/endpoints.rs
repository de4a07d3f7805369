//! Streaming, invalid 2xx bodies, 403s and methods: end to end against the mock over HTTP.

mod support;

use runner::Exit;
use runner::mock::MockConfig;
use serde_json::{Value, json};
use support::bin::{output, runner, text};
use support::*;

/// A streamed chat line with custom id `s-{i}`; with usage asked for when `usage`.
fn stream_line(i: usize, usage: bool) -> String {
    json!({"custom_id": format!("s-{i}"), "model": "test-model", "stream": true,
           "stream_options": {"include_usage": usage},
           "messages": [{"role": "user", "content": format!("streamed {i}")}]})
    .to_string()
}

/// The body the runner sends for [`stream_line`] (custom_id taken out).
fn stream_body(i: usize, usage: bool) -> Value {
    json!({"model": "test-model", "stream": true, "stream_options": {"include_usage": usage},
           "messages": [{"role": "user", "content": format!("streamed {i}")}]})
}

/// Exports a job as Batch-output JSONL (through the real command) and parses each line.
fn export_jsonl(db: &std::path::Path, job: &str) -> Vec<Value> {
    let out = db.with_file_name(format!("{job}-export.jsonl"));
    let args = runner::cli::ExportArgs {
        job: Some(job.to_owned()),
        db: runner::cli::DbArgs { db: db.to_owned() },
        format: runner::cli::ExportFormat::Jsonl,
        output: Some(out.clone()),
        no_sanitize: false,
    };
    runner::inspect::export::export(&args).expect("export");
    std::fs::read_to_string(&out)
        .expect("export file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("jsonl line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lines_are_sent_once_and_export_their_assembled_answer() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let lines: String = (0..6).map(|i| stream_line(i, i % 2 == 0) + "\n").collect();
    let input = s.write("streams.jsonl", &lines);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);

    let stats = mock.stats();
    for i in 0..6 {
        let body = stream_body(i, i % 2 == 0);
        assert_eq!(stats.answers_for(&body), 1, "line {i} is sent once");
        assert_eq!(stats.successes_for(&body), 1, "line {i}");
    }
    let (header, rows) = export_csv(&s.db(), "streams");
    assert_eq!(rows.len(), 6);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(cell(&header, row, "status"), "succeeded");
        assert_eq!(cell(&header, row, "attempts"), "1");
        assert_eq!(cell(&header, row, "output_text"), format!("echo: streamed {i}"));
        // Usage comes only in the last chunk, and only when asked for.
        let usage = cell(&header, row, "total_tokens");
        assert_eq!(!usage.is_empty(), i % 2 == 0, "line {i}: usage {usage:?}");
    }
    for (i, line) in export_jsonl(&s.db(), "streams").iter().enumerate() {
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion", "assembled, not chunks: {line}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("echo: streamed {i}")
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_retried_as_outcome_unknown_and_ends_succeeded() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        cut_streams: 1,
        ..MockConfig::default()
    })
    .await;
    let input = s.write("cut.jsonl", &(stream_line(0, true) + "\n"));
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--backoff-base", "10ms"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    let body = stream_body(0, true);
    assert_eq!(mock.stats().answers_for(&body), 2, "cut once, then whole");
    assert_eq!(mock.stats().successes_for(&body), 1);

    let (header, rows) = export_csv(&s.db(), "cut");
    assert_eq!(cell(&header, &rows[0], "status"), "succeeded");
    assert_eq!(cell(&header, &rows[0], "attempts"), "2");
    assert_eq!(cell(&header, &rows[0], "output_text"), "echo: streamed 0");

    let mut cmd = runner(s.dir.path());
    cmd.args(["attempts", "--db", &db, "--format", "jsonl"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let attempts: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "outcome_unknown", "{}", attempts[0]);
    assert_eq!(attempts[0]["class"], "transient", "{}", attempts[0]);
    assert_eq!(attempts[0]["error_code"], "stream_cut", "{}", attempts[0]);
    assert_eq!(attempts[1]["outcome"], "answered", "{}", attempts[1]);
    assert_eq!(attempts[1]["class"], "succeeded", "{}", attempts[1]);
    mock.shutdown().await;
}

fn count(db: &std::path::Path, state: &str) -> i64 {
    query_i64(
        db,
        &format!("SELECT count(*) FROM requests WHERE state = '{state}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_status_without_json_is_sent_once_more_then_fails_as_invalid_response() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        malformed_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("garbage.jsonl", 0..3);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--backoff-base", "10ms"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::SomeFailed);
    for i in 0..3 {
        assert_eq!(mock.stats().answers_for(&sent_body(i)), 2, "request {i}");
    }
    let (header, rows) = export_csv(&s.db(), "garbage");
    for row in &rows {
        assert_eq!(cell(&header, row, "status"), "failed");
        assert_eq!(cell(&header, row, "attempts"), "2");
        assert_eq!(cell(&header, row, "error_class"), "invalid_response");
        assert_eq!(cell(&header, row, "error_code"), "invalid_json");
        let message = cell(&header, row, "error_message");
        assert!(
            message.contains("chatcmpl-truncated"),
            "the body's first bytes are kept: {message}"
        );
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_on_one_of_two_keys_quarantines_that_key_and_the_job_completes() {
    let s = Scratch::new();
    let denied = "sk-proj-denied-aaaaaaaaaaaa";
    let allowed = "sk-proj-allowed-bbbbbbbbbbbb";
    let mock = mock(MockConfig {
        forbidden_keys: vec![denied.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let keys = s.write("keys.txt", &format!("denied={denied}\nallowed={allowed}\n"));
    let input = s.prompts("forbidden.jsonl", 0..100);
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
        "two keys, one forbidden",
        run(&args, runner::engine::config::ApiEnv::default()),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(count(&s.db(), "succeeded"), 100);
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM events WHERE kind = 'key_quarantined' AND detail LIKE 'denied:%'"
        ),
        1
    );
    assert!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE key_fingerprint = 'denied' AND http_status = 403"
        ) <= 8,
        "the denied key is set aside after its first answers"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_on_the_only_key_stops_the_job_with_everything_pending() {
    let s = Scratch::new();
    let denied = "sk-proj-denied-cccccccccccc";
    let mock = mock(MockConfig {
        forbidden_keys: vec![denied.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("only.jsonl", 0..20);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env_with_key(denied))
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Stopped);
    assert_eq!(count(&s.db(), "succeeded"), 0);
    assert_eq!(count(&s.db(), "failed"), 0);
    assert_eq!(count(&s.db(), "pending"), 20);
    mock.shutdown().await;
}
