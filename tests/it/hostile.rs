//! Hostile or broken servers: header values that would overflow a wait or a pace, answers too
//! large to hold. The runner must neither panic nor lose a result, and its waits stay within
//! `--max-wait`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::bin::{output, text};
use crate::support::*;
use rstest::rstest;
use runner::Exit;
use runner::engine::config::ApiEnv;
use runner::mock::MockConfig;
use serde_json::json;

/// Header values no honest server sends, each of which used to reach
/// `Duration::from_secs_f64` (which panics on them) or the pacer.
const HOSTILE: &[(&str, &str)] = &[
    ("retry-after", "1e30"),
    ("retry-after", "inf"),
    ("retry-after", "NaN"),
    ("retry-after", "-5"),
    ("retry-after-ms", "1e300"),
    (
        "retry-after-ms",
        "179769313486231570000000000000000000000000000000000000000000",
    ),
    ("x-ratelimit-reset-requests", "99999999999999999999999h"),
    ("x-ratelimit-reset-tokens", "1e30s"),
    ("x-ratelimit-limit-requests", "1e300"),
    ("x-ratelimit-limit-requests", "-1"),
    ("x-should-retry", "maybe"),
];

fn line(id: &str, extra: serde_json::Value) -> String {
    let mut value = json!({"custom_id": id, "prompt": format!("prompt {id}")});
    if let (Some(object), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    value.to_string()
}

/// For every hostile header: one success carrying it, and one request answered 429 (carrying
/// it) before its success. The job completes, every success is journaled exactly once, and the
/// 429's wait is cut to `--max-wait` instead of a century.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_values_neither_panic_nor_lose_a_result() {
    let mut text = String::new();
    for (i, (name, value)) in HOSTILE.iter().enumerate() {
        let headers = json!({"mock_headers": {*name: *value}});
        text.push_str(&line(&format!("ok-{i}"), headers.clone()));
        text.push('\n');
        let mut limited = headers;
        limited["mock_rate_limited_first"] = json!(1);
        text.push_str(&line(&format!("429-{i}"), limited));
        text.push('\n');
    }
    let fx = Fixture::for_job("hostile")
        .mock(MockConfig {
            latency: Duration::from_millis(1),
            ..MockConfig::default()
        })
        .input(text)
        .start()
        .await;
    let started = Instant::now();
    let exit = fx.submit(&["--max-wait", "200ms"]).await;
    assert_eq!(exit, Exit::Success);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waits are capped by --max-wait: took {:?}",
        started.elapsed()
    );
    let requests = (HOSTILE.len() * 2) as i64;
    assert_eq!(fx.requests_in("succeeded"), requests);
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM attempts WHERE error_class = 'succeeded'"
        ),
        requests,
        "each success journaled once"
    );
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM attempts WHERE error_class = 'rate_limited'"
        ),
        HOSTILE.len() as i64,
        "each 429 journaled and retried"
    );
    let stats = fx.mock.stats();
    assert!(
        stats.per_body.values().all(|counts| counts.successes == 1),
        "{:?}",
        stats.per_body
    );
    assert_eq!(
        stats.per_body.values().map(|c| c.successes).sum::<u64>(),
        requests as u64
    );
}

/// A success announcing a vanishing request limit (1e-300 per minute) is journaled; the pace
/// it sets is floored (see `rate_limit::tests::a_low_announced_limit_is_never_exceeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanishing_announced_limit_does_not_lose_the_success() {
    let fx = Fixture::for_job("tiny")
        .input(jsonl([line(
            "tiny",
            json!({"mock_headers": {"x-ratelimit-limit-requests": "1e-300"}}),
        )]))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    assert_eq!(journaled_successes(&fx.db()), vec!["tiny".to_owned()]);
}

/// An answer over `--max-response-bytes` fails its request at once (a 2xx may already be
/// billed: never retried) with `response_too_large`, a message saying which flag to raise, and
/// no body in the journal; the other requests are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_response_bytes_fails_its_request_once_and_stores_no_body() {
    let fx = Fixture::for_job("big")
        .input(jsonl([
            line("small", json!({})),
            line("huge", json!({"mock_body_bytes": 8 * 1024 * 1024})),
            line("fits", json!({"mock_body_bytes": 64 * 1024})),
        ]))
        .start()
        .await;
    let exit = fx.submit(&["--max-response-bytes", "1000000"]).await;
    assert_eq!(exit, Exit::SomeFailed);
    assert_too_large_once(&fx.db(), "huge");
    assert_eq!(fx.requests_in("succeeded"), 2);
    assert!(
        query_i64(
            &fx.db(),
            "SELECT length(response) FROM requests WHERE key = 'fits'"
        ) >= 64 * 1024
    );
    assert_eq!(fx.mock.stats().answers, 3);
}

/// Request `key` failed as `response_too_large` (`request_failed`, telling to raise the flag)
/// after one attempt, never retried, with nothing of its answer journaled.
fn assert_too_large_once(db: &std::path::Path, key: &str) {
    let sql = |column: &str| format!("SELECT {column} FROM requests WHERE key = '{key}'");
    let text = |column: &str| query_text(db, &sql(column)).unwrap_or_default();
    assert_eq!(
        text("state || ' ' || error_class || ' ' || error_code"),
        "failed request_failed response_too_large",
        "{key}"
    );
    let message = text("error_message");
    assert!(
        message.contains("raise --max-response-bytes"),
        "{key}: {message}"
    );
    assert_eq!(
        query_i64(db, &sql("coalesce(length(response), 0)")),
        0,
        "{key}: nothing of an answer over the limit is journaled"
    );
    assert_eq!(query_i64(db, &sql("attempts")), 1, "{key}: never retried");
}

/// A streamed answer counts against `--max-response-bytes` as its events arrive: one whose
/// stream outgrows the limit stops being read there and fails like a plain answer over it; one
/// under it is assembled and succeeds.
#[tokio::test]
async fn a_streamed_answer_over_max_response_bytes_fails_its_request_once() {
    // The mock echoes the prompt word by word, one event of ~230 bytes a word: ~4.6 MB.
    let long_prompt = "w ".repeat(20_000);
    let fx = Fixture::for_job("bigstream")
        .input(jsonl([
            line("long", json!({"prompt": long_prompt, "stream": true})),
            line("short", json!({"stream": true})),
        ]))
        .start()
        .await;
    let exit = fx.submit(&["--max-response-bytes", "1000000"]).await;
    assert_eq!(exit, Exit::SomeFailed);
    assert_too_large_once(&fx.db(), "long");
    let q = |sql: &str| query_text(&fx.db(), sql);
    assert_eq!(
        q("SELECT state FROM requests WHERE key = 'short'").as_deref(),
        Some("succeeded")
    );
    let short = q("SELECT response FROM requests WHERE key = 'short'").unwrap_or_default();
    assert!(short.contains("echo: prompt short"), "{short}");
}

/// The flag is checked: more than the journal can hold is refused before anything is sent.
#[tokio::test]
async fn max_response_bytes_over_what_the_journal_holds_is_refused() {
    let s = Scratch::new();
    let input = s.prompts("p.jsonl", 0..1);
    let (file, db) = (input.display().to_string(), s.db_arg());
    let args = submit_args(
        &file,
        &db,
        "http://127.0.0.1:9/v1",
        &["--max-response-bytes", "2000000000"],
    );
    let err = run(&args, env()).await.expect_err("refused");
    assert!(
        format!("{err:#}").contains("--max-response-bytes 2000000000"),
        "{err:#}"
    );
}

/// A request id is the server's text: `runner attempts --format csv` neutralises a formula in
/// it exactly as `runner export` does, and JSONL keeps it exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_csv_neutralises_server_text_like_the_export() {
    let formula = "=HYPERLINK(\"http://evil.example\",\"x\")";
    let fx = Fixture::for_job("f")
        .input(jsonl([line(
            "f",
            json!({"mock_headers": {"x-request-id": formula}}),
        )]))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let db = fx.db_arg();
    for (format, expected) in [
        ("csv", format!("'{formula}")),
        ("jsonl", formula.to_owned()),
    ] {
        let out = output(fx.bin(&["attempts", "--db", &db, "--format", format])).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let cell = match format {
            "csv" => {
                let mut reader = csv::Reader::from_reader(stdout.as_bytes());
                let headers = reader.headers().expect("header").clone();
                let row = reader.records().next().expect("a row").expect("parses");
                let at = headers
                    .iter()
                    .position(|h| h == "x_request_id")
                    .expect("column");
                row[at].to_owned()
            }
            _ => {
                let value: serde_json::Value =
                    serde_json::from_str(stdout.lines().next().expect("a line")).expect("json");
                value["x_request_id"].as_str().expect("text").to_owned()
            }
        };
        assert_eq!(cell, expected, "{format}");
    }
}

/// Server text shown on a terminal (the stop line on stderr, `status`) carries no escape
/// sequence: a control character arrives as `\u{1b}`, never as the byte that would act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_reaches_the_terminal_escaped() {
    let evil = "\u{1b}]0;owned\u{7}\u{1b}[2Jgone";
    let fx = Fixture::for_job("esc")
        .input(jsonl([line(
            "e",
            json!({"mock_status": 403, "mock_message": evil}),
        )]))
        .start()
        .await;
    let mut submit = fx.bin_submit(&[]);
    submit.env("OPENAI_API_KEY", "sk-test-0123456789abcdef");
    let out = output(submit).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("\\u{1b}[2Jgone"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
    let db = fx.db_arg();
    let status = output(fx.bin(&["status", "--db", &db])).await;
    let shown = text(&status.stdout);
    assert!(shown.contains("\\u{1b}[2Jgone"), "{shown}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    fx.shutdown().await;
}

/// A server that answers every request, on every connection, with `answer` as raw bytes (what
/// neither axum nor the mock will send: header values the HTTP parser refuses, redirects to
/// elsewhere); returns its base URL and how many requests it has read.
async fn raw_server(answer: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_each(stream, answer.clone(), Arc::clone(&counter)));
        }
    });
    (format!("http://{addr}/v1"), seen)
}

/// Reads request after request (head, then `Content-Length` bytes of body) and writes `answer`
/// to each, until the client closes.
async fn answer_each(mut stream: TcpStream, answer: Vec<u8>, seen: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        buf.drain(..head_end + length);
        seen.fetch_add(1, Ordering::SeqCst);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"test-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// A raw HTTP/1.1 answer: the status line's `status`, the `head` lines (each ending in `\r\n`),
/// a `content-length` and `body`.
fn raw_answer(status: &str, head: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{head}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `submit` of three prompt lines to `url` with `extra` flags, in process; the scratch
/// directory (its database) and the exit.
async fn submit_three(url: &str, extra: &[&str], env: ApiEnv) -> (Scratch, Exit) {
    let s = Scratch::new();
    let input = s.prompts("in.jsonl", 0..3);
    let (input, db) = (input.to_string_lossy().into_owned(), s.db_arg());
    let exit = within("submit", run(&submit_args(&input, &db, url, extra), env))
        .await
        .expect("runs");
    (s, exit)
}

/// A redirect is an answer, never followed: the body, the job's headers and the key (here an
/// Azure `api-key`, which reqwest would have carried along) go only to `--base-url`, and each
/// HTTP attempt is one journal row. A 3xx fails the request, saying where it pointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_an_answer_never_followed() {
    let (elsewhere, elsewhere_seen) = raw_server(raw_answer(
        "200 OK",
        "content-type: application/json\r\n",
        COMPLETION,
    ))
    .await;
    let (url, seen) = raw_server(raw_answer(
        "307 Temporary Redirect",
        &format!("location: {elsewhere}/chat/completions\r\n"),
        "",
    ))
    .await;
    let extra = ["--auth", "azure", "--header", "X-Custom: secret"];
    let (s, exit) = submit_three(&url, &extra, env()).await;
    assert_eq!(exit, Exit::SomeFailed, "a 3xx fails its request");
    assert_eq!(
        elsewhere_seen.load(Ordering::SeqCst),
        0,
        "nothing followed the redirect"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 3, "one request per line");
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE http_status = 307 AND error_class = 'request_failed'
                 AND error_code = 'redirect' AND error_message LIKE '%redirected to%not followed%'"
        ),
        3,
        "each attempt journaled once, with where it pointed"
    );
    assert_eq!(query_i64(&s.db(), "SELECT count(*) FROM attempts"), 3);
    assert_eq!(integrity(&s.db()), "ok");
}

/// A header line the HTTP parser refuses (control characters in a value) is left out of the
/// answer; the answer is kept. Before, each such 200 was a network error, sent again (and
/// billed again) until its budget ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_the_parser_refuses_does_not_lose_the_answer() {
    let (url, seen) = raw_server(raw_answer(
        "200 OK",
        "content-type: application/json\r\nx-request-id: req_\x1b[31mRED\r\nx-foo: a\x07b\r\nx-ok: fine\r\n",
        COMPLETION,
    ))
    .await;
    let (s, exit) = submit_three(&url, &[], env()).await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(seen.load(Ordering::SeqCst), 3, "each request sent once");
    assert_eq!(requests_in(&s.db(), "succeeded"), 3);
    assert_eq!(query_i64(&s.db(), "SELECT count(*) FROM attempts"), 3);
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE x_request_id IS NULL"
        ),
        3,
        "the refused header is left out"
    );
}

/// A server that quotes the key it was sent (`Incorrect API key provided: sk-…`: OpenAI masks
/// it, some proxies do not) puts no key into the journal or the export: the key's fingerprint
/// stands in for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_quotes_the_key_gets_its_fingerprint_into_the_journal() {
    let key = "sk-proj-quoted-by-the-server-0000wxyz";
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
    );
    let (url, seen) = raw_server(raw_answer(
        "401 Unauthorized",
        &format!("content-type: application/json\r\nx-request-id: req_{key}\r\n"),
        &body,
    ))
    .await;
    let (s, exit) = submit_three(&url, &[], env_with_key(key)).await;
    assert_eq!(exit, Exit::Stopped, "a revoked key stops the job");
    assert!(seen.load(Ordering::SeqCst) >= 1);
    let message = query_text(&s.db(), "SELECT error_message FROM attempts LIMIT 1")
        .expect("the 401 is journaled");
    assert!(
        message.starts_with("Incorrect API key provided: sk-") && message.contains("wxyz"),
        "the fingerprint stands in for the key: {message}"
    );
    let (_, rows) = export_csv(&s.db(), "in");
    let mut files = vec![std::fs::read(s.db()).expect("db")];
    if let Ok(wal) = std::fs::read(s.path("runner.db-wal")) {
        files.push(wal);
    }
    files.push(format!("{rows:?}").into_bytes());
    for bytes in files {
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the key was written"
        );
    }
}
