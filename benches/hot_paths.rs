//! Micro-benchmarks of the per-request hot paths: reading a line, hashing it, classifying an
//! answer, journaling an attempt, estimating tokens. `cargo bench --bench hot_paths`.
//! Numbers live in the README, never in tests.
// Benchmarks are not shipped: the `[lints]` ban on unwrap, expect and panic is for `src/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::io::Cursor;

use runner::domain::{AttemptOutcome, Completion, Disposition, JobId, Usage};
use runner::http::classify::{ApiError, Class, Observation, Payload, classify};
use runner::http::response::parse_success;
use runner::input::{CHAT_ENDPOINT, InputOptions, InputReader, content_hash};
use runner::store::{db, migrate};

fn main() {
    divan::main();
}

fn lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"custom_id\":\"r-{i}\",\"prompt\":\"Summarise item number {i} in one sentence.\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Parsing and normalising input lines (per 1,000 lines).
#[divan::bench]
fn parse_1000_lines(bencher: divan::Bencher) {
    let input = lines(1000);
    bencher.bench(|| {
        let reader = InputReader::new(
            "bench.jsonl".into(),
            Box::new(Cursor::new(input.clone())),
            InputOptions {
                endpoint: CHAT_ENDPOINT.into(),
                model: Some("gpt-4o-mini".into()),
                max_line_bytes: 1 << 20,
                ..InputOptions::default()
            },
        );
        reader.map(|p| p.map(|p| p.line).unwrap_or(0)).sum::<u64>()
    });
}

/// The content fingerprint of one request.
#[divan::bench]
fn fingerprint_request() -> String {
    content_hash(
        black_box("POST"),
        black_box("/v1/chat/completions"),
        black_box(
            r#"{"messages":[{"content":"Summarise item number 12345 in one sentence.","role":"user"}],"model":"gpt-4o-mini"}"#,
        ),
    )
}

const SUCCESS: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"echo: Summarise item number 12345 in one sentence."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23}}"#;
const MISSING_SCOPE: &str = r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: model.request.","type":"invalid_request_error","param":null,"code":"missing_scope"}}"#;

/// Reading a success body and classifying it.
#[divan::bench]
fn classify_success() -> Class {
    let usage = parse_success(black_box(SUCCESS.as_bytes()));
    let error = ApiError::default();
    classify(Observation::Answer {
        status: 200,
        error: &error,
        payload: if usage.is_some() {
            Payload::Whole
        } else {
            Payload::Invalid
        },
        should_retry: None,
    })
}

/// Reading an error body and classifying it.
#[divan::bench]
fn classify_missing_scope() -> Class {
    let error = ApiError::parse(black_box(MISSING_SCOPE.as_bytes()));
    classify(Observation::Answer {
        status: 401,
        error: &error,
        payload: Payload::Whole,
        should_retry: None,
    })
}

/// Journaling 1,000 attempts (insert + request update each) in one transaction, as the store
/// thread's group commit does.
#[divan::bench(sample_count = 20)]
fn journal_1000_attempts(bencher: divan::Bencher) {
    bencher
        .with_inputs(|| {
            let mut conn = rusqlite::Connection::open_in_memory().expect("memory db");
            migrate::migrate(&mut conn).expect("migrate");
            let job = db::upsert_job(&conn, "bench", "bench.jsonl", "{}", 0).expect("job");
            let reader = InputReader::new(
                "bench.jsonl".into(),
                Box::new(Cursor::new(lines(1000))),
                InputOptions {
                    endpoint: CHAT_ENDPOINT.into(),
                    model: Some("gpt-4o-mini".into()),
                    max_line_bytes: 1 << 20,
                    ..InputOptions::default()
                },
            );
            runner::store::ingest::ingest(&conn, job.id, reader).expect("ingest");
            let claimed = db::claim_due(&conn, job.id, 1, 1000).expect("claim");
            (conn, job.id, claimed)
        })
        .bench_values(
            |(conn, job, claimed): (rusqlite::Connection, JobId, Vec<_>)| {
                conn.execute_batch("BEGIN").expect("begin");
                for c in claimed {
                    db::record_attempt(
                        &conn,
                        &Completion {
                            request: c.id,
                            job,
                            number: 1,
                            started_at: 1,
                            finished_at: 2,
                            outcome: AttemptOutcome::Answered,
                            http_status: Some(200),
                            class: Class::Succeeded,
                            error_code: None,
                            error_message: None,
                            x_request_id: Some("req_0123456789abcdef0123456789abcdef".into()),
                            key_fingerprint: Some("sk-proj-…abcd".into()),
                            response: Some(SUCCESS.into()),
                            usage: Usage::default(),
                            disposition: Disposition::Succeeded,
                        },
                    )
                    .expect("record");
                }
                conn.execute_batch("COMMIT").expect("commit");
            },
        );
}

/// Estimating one chat request's tokens for `--tpm`.
#[divan::bench]
fn estimate_tokens() -> u64 {
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "Summarise item number 12345 in one sentence."}]});
    runner::domain::tokens::estimate("/v1/chat/completions", black_box(&body), 256)
}
