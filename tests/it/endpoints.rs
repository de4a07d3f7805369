//! Streaming, invalid 2xx bodies, 403s and methods: end to end against the mock over HTTP.

use crate::support::bin::{output, runner, text};
use crate::support::*;
use runner::Exit;
use runner::mock::MockConfig;
use serde_json::{Value, json};

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
// A test helper: a failed export fails the test that called it.
#[allow(clippy::expect_used)]
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
        assert_eq!(
            cell(&header, row, "output_text"),
            format!("echo: streamed {i}")
        );
        // Usage comes only in the last chunk, and only when asked for.
        let usage = cell(&header, row, "total_tokens");
        assert_eq!(!usage.is_empty(), i % 2 == 0, "line {i}: usage {usage:?}");
    }
    for (i, line) in export_jsonl(&s.db(), "streams").iter().enumerate() {
        let body = &line["response"]["body"];
        assert_eq!(
            body["object"], "chat.completion",
            "assembled, not chunks: {line}"
        );
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
    let message = attempts[0]["error_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("text so far: \"echo:"),
        "the partial is journaled: {message}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_delete_lines_are_sent_without_a_body_and_exported_like_posts() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.write(
        "methods.jsonl",
        &[
            json!({"custom_id": "get", "method": "GET", "url": "/v1/models/gpt-4o"}),
            json!({"custom_id": "delete", "method": "delete", "url": "/v1/models/ft-1", "body": {}}),
            json!({"custom_id": "post", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"messages": [{"role": "user", "content": "hi"}]}}),
        ]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>(),
    );
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    let routes = mock.stats().routes;
    assert_eq!(routes.get("GET /v1/models/gpt-4o"), Some(&1), "{routes:?}");
    assert_eq!(routes.get("DELETE /v1/models/ft-1"), Some(&1), "{routes:?}");
    assert_eq!(
        routes.get("POST /v1/chat/completions"),
        Some(&1),
        "{routes:?}"
    );
    assert_eq!(
        query_text(
            &s.db(),
            "SELECT method FROM requests WHERE custom_id = 'delete'"
        )
        .as_deref(),
        Some("DELETE")
    );
    let lines = export_jsonl(&s.db(), "methods");
    assert_eq!(lines[0]["response"]["body"]["id"], "gpt-4o");
    assert_eq!(lines[1]["response"]["body"]["deleted"], true);
    assert_eq!(lines[2]["response"]["status_code"], 200);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_kept_and_exported_but_never_sent() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.write(
        "meta.jsonl",
        &[
            json!({"custom_id": "plain", "prompt": "p", "metadata": {"team": "a", "n": 1}}),
            json!({"custom_id": "batch", "method": "POST", "url": "/v1/chat/completions",
                   "metadata": {"team": "b"},
                   "body": {"model": "test-model", "messages": [{"role": "user", "content": "b"}]}}),
            json!({"custom_id": "none", "prompt": "n"}),
        ]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>(),
    );
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    let stats = mock.stats();
    let plain_sent = json!({"model": "test-model", "messages": [{"role": "user", "content": "p"}]});
    assert_eq!(
        stats.successes_for(&plain_sent),
        1,
        "metadata is not in the body sent"
    );
    let batch_sent = json!({"model": "test-model", "messages": [{"role": "user", "content": "b"}]});
    assert_eq!(stats.successes_for(&batch_sent), 1);

    let (header, rows) = export_csv(&s.db(), "meta");
    assert_eq!(header.last().map(String::as_str), Some("metadata"));
    assert_eq!(
        header,
        [
            "custom_id",
            "status",
            "http_status",
            "attempts",
            "output_text",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "model",
            "request_id",
            "error_code",
            "error_message",
            "latency_ms",
            "finished_at",
            "error_class",
            "line",
            "metadata",
        ],
        "the CSV header contract: one column appended"
    );
    let metadata: Vec<Value> = rows
        .iter()
        .map(|row| {
            let cell = cell(&header, row, "metadata");
            if cell.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(cell).expect("metadata cell is JSON")
            }
        })
        .collect();
    assert_eq!(
        metadata,
        [
            json!({"team": "a", "n": 1}),
            json!({"team": "b"}),
            Value::Null
        ]
    );
    let lines = export_jsonl(&s.db(), "meta");
    assert_eq!(lines[0]["metadata"], json!({"team": "a", "n": 1}));
    assert_eq!(lines[1]["metadata"], json!({"team": "b"}));
    assert!(lines[2].get("metadata").is_none(), "{}", lines[2]);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_line_headers_are_sent_and_assistants_paths_get_their_beta_header() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.write(
        "headers.jsonl",
        &[
            json!({"custom_id": "job", "prompt": "a"}),
            json!({"custom_id": "line", "method": "POST", "url": "/v1/chat/completions",
                   "headers": {"X-Team": "line-team"},
                   "body": {"messages": [{"role": "user", "content": "b"}]}}),
            json!({"custom_id": "runs", "method": "GET", "url": "/v1/threads/thread_1/runs"}),
        ]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>(),
    );
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--header", "X-Team: job-team"]),
        env(),
    )
    .await
    .expect("runs");
    // The mock has no threads: that line fails 404, which is not the point here.
    assert_eq!(exit, Exit::SomeFailed);
    let extras = mock.stats().extras;
    assert_eq!(extras.get("x-team: job-team"), Some(&2), "{extras:?}");
    assert_eq!(extras.get("x-team: line-team"), Some(&1), "{extras:?}");
    assert_eq!(
        extras.get("openai-beta: assistants=v2"),
        Some(&1),
        "{extras:?}"
    );
    let stored = query_text(&s.db(), "SELECT config FROM jobs").unwrap_or_default();
    assert!(stored.contains("job-team"), "stored with the job: {stored}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_carrying_a_key_is_refused_with_where_keys_belong() {
    let s = Scratch::new();
    s.write("p.jsonl", &format!("{}\n", prompt_line(0)));
    for flag in ["Authorization: Bearer sk-x", "API-KEY: k"] {
        let mut cmd = runner(s.dir.path());
        cmd.args(["submit", "p.jsonl", "--header", flag]);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("carries the API key"), "{stderr}");
        assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sends_the_key_as_api_key_with_an_api_version() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        require_api_key: true,
        ..MockConfig::default()
    })
    .await;
    let input = s.prompts("azure.jsonl", 0..3);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    // Bearer (the default for a loopback URL): Azure refuses it, the only key is rejected.
    let exit = run(&submit_args(&file, &db, &url, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Stopped);
    let exit = run(
        &[
            "resume",
            "--db",
            &db,
            "--auth",
            "azure",
            "--api-version",
            "2024-10-21",
            "--no-progress",
        ],
        runner::engine::config::ApiEnv {
            azure_api_key: Some(runner::http::client::ApiKey::new("azure-key-0123456789")),
            ..runner::engine::config::ApiEnv::default()
        },
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(mock.stats().successes(), 3);
    assert_eq!(mock.stats().extras.get("api-version=2024-10-21"), Some(&3));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_mid_stream_is_classified_like_that_error_and_retried() {
    let s = Scratch::new();
    let mock = mock(MockConfig {
        stream_errors: 1,
        ..MockConfig::default()
    })
    .await;
    let input = s.write("midstream.jsonl", &(stream_line(0, false) + "\n"));
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let exit = run(
        &submit_args(&file, &db, &url, &["--backoff-base", "10ms"]),
        env(),
    )
    .await
    .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(mock.stats().answers_for(&stream_body(0, false)), 2);
    let first = |column: &str| {
        query_text(
            &s.db(),
            &format!("SELECT {column} FROM attempts WHERE number = 1"),
        )
    };
    assert_eq!(first("outcome").as_deref(), Some("answered"));
    assert_eq!(
        query_i64(&s.db(), "SELECT http_status FROM attempts WHERE number = 1"),
        200
    );
    assert_eq!(
        first("error_class").as_deref(),
        Some("transient"),
        "server_error"
    );
    assert!(
        first("error_message").is_some_and(|m| m.contains("The server had an error")),
        "{:?}",
        first("error_message")
    );
    let (header, rows) = export_csv(&s.db(), "midstream");
    assert_eq!(cell(&header, &rows[0], "output_text"), "echo: streamed 0");
    mock.shutdown().await;
}
