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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_lines_are_sent_once_and_export_their_assembled_answer() {
    let fx = Fixture::for_job("streams")
        .input(jsonl((0..6).map(|i| stream_line(i, i % 2 == 0))))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);

    let stats = fx.mock.stats();
    for i in 0..6 {
        let body = stream_body(i, i % 2 == 0);
        assert_eq!(stats.answers_for(&body), 1, "line {i} is sent once");
        assert_eq!(stats.successes_for(&body), 1, "line {i}");
    }
    let (header, rows) = fx.export_csv();
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
    for (i, line) in fx.export_jsonl().iter().enumerate() {
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
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_retried_as_outcome_unknown_and_ends_succeeded() {
    let fx = Fixture::for_job("cut")
        .mock(MockConfig {
            cut_streams: 1,
            ..MockConfig::default()
        })
        .input(jsonl([stream_line(0, true)]))
        .start()
        .await;
    let exit = fx.submit(&["--backoff-base", "10ms"]).await;
    assert_eq!(exit, Exit::Success);
    let body = stream_body(0, true);
    assert_eq!(
        fx.mock.stats().answers_for(&body),
        2,
        "cut once, then whole"
    );
    assert_eq!(fx.mock.stats().successes_for(&body), 1);

    let (header, rows) = fx.export_csv();
    assert_eq!(cell(&header, &rows[0], "status"), "succeeded");
    assert_eq!(cell(&header, &rows[0], "attempts"), "2");
    assert_eq!(cell(&header, &rows[0], "output_text"), "echo: streamed 0");

    let db = fx.db_arg();
    let out = output(fx.bin(&["attempts", "--db", &db, "--format", "jsonl"])).await;
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
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_status_without_json_is_sent_once_more_then_fails_as_invalid_response() {
    let fx = Fixture::for_job("garbage")
        .mock(MockConfig {
            malformed_rate: 1.0,
            ..MockConfig::default()
        })
        .prompts(0..3)
        .start()
        .await;
    let exit = fx.submit(&["--backoff-base", "10ms"]).await;
    assert_eq!(exit, Exit::SomeFailed);
    for i in 0..3 {
        assert_eq!(fx.mock.stats().answers_for(&sent_body(i)), 2, "request {i}");
    }
    let (header, rows) = fx.export_csv();
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
    // The Batch output format says it failed too: its 200 alone would read as a success.
    let lines = fx.export_jsonl();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert_eq!(line["error"]["code"], "invalid_json", "{line}");
        assert!(line["error"]["message"].is_string(), "{line}");
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_on_one_of_two_keys_quarantines_that_key_and_the_job_completes() {
    let denied = "sk-proj-denied-aaaaaaaaaaaa";
    let allowed = "sk-proj-allowed-bbbbbbbbbbbb";
    let fx = Fixture::for_job("forbidden")
        .mock(MockConfig {
            forbidden_keys: vec![denied.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..100)
        .env(runner::engine::config::ApiEnv::default())
        .start()
        .await;
    let keys = fx
        .scratch
        .write("keys.txt", &format!("denied={denied}\nallowed={allowed}\n"));
    let keys = keys.display().to_string();
    let exit = fx
        .submit(&["--keys-file", &keys, "--concurrency", "8"])
        .await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(fx.requests_in("succeeded"), 100);
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM events WHERE kind = 'key_quarantined' AND detail LIKE 'denied:%'"
        ),
        1
    );
    assert!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM attempts WHERE key_fingerprint = 'denied' AND http_status = 403"
        ) <= 8,
        "the denied key is set aside after its first answers"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_on_the_only_key_stops_the_job_with_everything_pending() {
    let denied = "sk-proj-denied-cccccccccccc";
    let fx = Fixture::for_job("only")
        .mock(MockConfig {
            forbidden_keys: vec![denied.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..20)
        .env(env_with_key(denied))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Stopped);
    assert_eq!(fx.requests_in("succeeded"), 0);
    assert_eq!(fx.requests_in("failed"), 0);
    assert_eq!(fx.requests_in("pending"), 20);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_delete_lines_are_sent_without_a_body_and_exported_like_posts() {
    let fx = Fixture::for_job("methods")
        .input(jsonl([
            json!({"custom_id": "get", "method": "GET", "url": "/v1/models/gpt-4o"}),
            json!({"custom_id": "delete", "method": "delete", "url": "/v1/models/ft-1", "body": {}}),
            json!({"custom_id": "post", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"messages": [{"role": "user", "content": "hi"}]}}),
        ]))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let routes = fx.mock.stats().routes;
    assert_eq!(routes.get("GET /v1/models/gpt-4o"), Some(&1), "{routes:?}");
    assert_eq!(routes.get("DELETE /v1/models/ft-1"), Some(&1), "{routes:?}");
    assert_eq!(
        routes.get("POST /v1/chat/completions"),
        Some(&1),
        "{routes:?}"
    );
    assert_eq!(
        query_text(
            &fx.db(),
            "SELECT method FROM requests WHERE custom_id = 'delete'"
        )
        .as_deref(),
        Some("DELETE")
    );
    let lines = fx.export_jsonl();
    assert_eq!(lines[0]["response"]["body"]["id"], "gpt-4o");
    assert_eq!(lines[1]["response"]["body"]["deleted"], true);
    assert_eq!(lines[2]["response"]["status_code"], 200);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_kept_and_exported_but_never_sent() {
    let fx = Fixture::for_job("meta")
        .input(jsonl([
            json!({"custom_id": "plain", "prompt": "p", "metadata": {"team": "a", "n": 1}}),
            json!({"custom_id": "batch", "method": "POST", "url": "/v1/chat/completions",
                   "metadata": {"team": "b"},
                   "body": {"model": "test-model", "messages": [{"role": "user", "content": "b"}]}}),
            json!({"custom_id": "none", "prompt": "n"}),
        ]))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let stats = fx.mock.stats();
    let plain_sent = json!({"model": "test-model", "messages": [{"role": "user", "content": "p"}]});
    assert_eq!(
        stats.successes_for(&plain_sent),
        1,
        "metadata is not in the body sent"
    );
    let batch_sent = json!({"model": "test-model", "messages": [{"role": "user", "content": "b"}]});
    assert_eq!(stats.successes_for(&batch_sent), 1);

    let (header, rows) = fx.export_csv();
    assert_eq!(header.last().map(String::as_str), Some("via"));
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
            "prompt",
            "cost_usd",
            "via",
        ],
        "the CSV header contract: columns appended, never moved"
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
    let lines = fx.export_jsonl();
    assert_eq!(lines[0]["metadata"], json!({"team": "a", "n": 1}));
    assert_eq!(lines[1]["metadata"], json!({"team": "b"}));
    assert!(lines[2].get("metadata").is_none(), "{}", lines[2]);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmit_takes_the_files_metadata_and_headers_for_the_requests_it_keeps() {
    // Same requests (method, url, body), new metadata and headers: nothing is sent again, and
    // the job keeps what the file says now (headers go with any send still to come).
    let line = |id: &str, prompt: &str, team: &str, tag: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "metadata": {"team": team}, "headers": {"x-tag": tag},
               "body": {"model": "test-model", "messages": [{"role": "user", "content": prompt}]}})
    };
    let fx = Fixture::for_job("refile")
        .input(jsonl([
            line("a", "pa", "old", "t1"),
            line("b", "pb", "old", "t1"),
        ]))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success, "first submit");
    fx.rewrite_input(&jsonl([
        line("a", "pa", "new", "t2"),
        line("b", "pb", "new", "t2"),
        json!({"custom_id": "c", "prompt": "pc"}),
    ]));
    assert_eq!(fx.submit(&[]).await, Exit::Success, "resubmit");
    let stats = fx.mock.stats();
    for prompt in ["pa", "pb", "pc"] {
        let sent =
            json!({"model": "test-model", "messages": [{"role": "user", "content": prompt}]});
        assert_eq!(stats.successes_for(&sent), 1, "{prompt} answered once");
    }
    let lines = fx.export_jsonl();
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["custom_id"] == id)
            .unwrap_or_else(|| panic!("{id} exported"))
            .clone()
    };
    assert_eq!(by_id("a")["metadata"], json!({"team": "new"}));
    assert_eq!(by_id("b")["metadata"], json!({"team": "new"}));
    assert!(by_id("c").get("metadata").is_none());
    let db = fx.db();
    assert_eq!(
        query_text(&db, "SELECT group_concat(headers, '|') FROM (SELECT headers FROM requests WHERE key IN ('a', 'b') ORDER BY key)").as_deref(),
        Some(r#"{"x-tag":"t2"}|{"x-tag":"t2"}"#),
        "the stored headers are the file's"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_line_headers_are_sent_and_assistants_paths_get_their_beta_header() {
    let fx = Fixture::for_job("headers")
        .input(jsonl([
            json!({"custom_id": "job", "prompt": "a"}),
            json!({"custom_id": "line", "method": "POST", "url": "/v1/chat/completions",
                   "headers": {"X-Team": "line-team"},
                   "body": {"messages": [{"role": "user", "content": "b"}]}}),
            json!({"custom_id": "runs", "method": "GET", "url": "/v1/threads/thread_1/runs"}),
        ]))
        .start()
        .await;
    let exit = fx.submit(&["--header", "X-Team: job-team"]).await;
    // The mock has no threads: that line fails 404, which is not the point here.
    assert_eq!(exit, Exit::SomeFailed);
    let extras = fx.mock.stats().extras;
    assert_eq!(extras.get("x-team: job-team"), Some(&2), "{extras:?}");
    assert_eq!(extras.get("x-team: line-team"), Some(&1), "{extras:?}");
    assert_eq!(
        extras.get("openai-beta: assistants=v2"),
        Some(&1),
        "{extras:?}"
    );
    let stored = query_text(&fx.db(), "SELECT config FROM jobs").unwrap_or_default();
    assert!(stored.contains("job-team"), "stored with the job: {stored}");
    fx.shutdown().await;
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
    let fx = Fixture::for_job("azure")
        .mock(MockConfig {
            require_api_key: true,
            ..MockConfig::default()
        })
        .prompts(0..3)
        .start()
        .await;
    // Bearer (the default for a loopback URL): Azure refuses it, the only key is rejected.
    assert_eq!(fx.submit(&[]).await, Exit::Stopped);
    let db = fx.db_arg();
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
    assert_eq!(fx.mock.stats().successes(), 3);
    assert_eq!(
        fx.mock.stats().extras.get("api-version=2024-10-21"),
        Some(&3)
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_mid_stream_is_classified_like_that_error_and_retried() {
    let fx = Fixture::for_job("midstream")
        .mock(MockConfig {
            stream_errors: 1,
            ..MockConfig::default()
        })
        .input(jsonl([stream_line(0, false)]))
        .start()
        .await;
    let exit = fx.submit(&["--backoff-base", "10ms"]).await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(fx.mock.stats().answers_for(&stream_body(0, false)), 2);
    let first = |column: &str| {
        query_text(
            &fx.db(),
            &format!("SELECT {column} FROM attempts WHERE number = 1"),
        )
    };
    assert_eq!(first("outcome").as_deref(), Some("answered"));
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT http_status FROM attempts WHERE number = 1"
        ),
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
    let (header, rows) = fx.export_csv();
    assert_eq!(cell(&header, &rows[0], "output_text"), "echo: streamed 0");
    fx.shutdown().await;
}

/// A base URL with a query (an Azure-style `…/v1?api-version=…`) keeps it after the joined
/// path; before, the path went inside the query and every request missed its endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_with_a_query_keeps_it_after_the_path() {
    let fx = Fixture::for_job("query").prompts(0..3).start().await;
    let base = format!("{}?api-version=2024-10-21", fx.url());
    let (input, db) = (fx.scratch.path("query.jsonl"), fx.db_arg());
    let input = input.to_string_lossy().into_owned();
    let exit = run(&submit_args(&input, &db, &base, &[]), env())
        .await
        .expect("runs");
    assert_eq!(exit, Exit::Success);
    assert_eq!(fx.requests_in("succeeded"), 3);
    assert_succeeded_once(&fx.mock.stats(), 0..3);
    fx.shutdown().await;
}
