//! Bad input on the real binary: every kind of bad line is refused with `FILE:LINE:` and exit 1,
//! leaving the job as it was and sending nothing; with `--skip-invalid` a bad line becomes a
//! failed request (error class `invalid_input`) and the rest runs.
// Helpers of a test crate: a failed setup panics with its message (clippy's allow-*-in-tests
// covers only #[test] fns and #[cfg(test)] items).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use rstest::rstest;
use serde_json::json;

use crate::support::bin::{output, text};
use crate::support::*;

/// Line 1 of most cases: a good request.
const GOOD_1: &str = r#"{"custom_id":"r-1","prompt":"one"}"#;
/// Line 3 of some cases: another good request.
const GOOD_3: &str = r#"{"custom_id":"r-3","prompt":"three"}"#;

/// What `--skip-invalid` does with a case.
#[derive(Clone, Copy, Debug)]
enum Skipped {
    /// The bad line is stored as a failed request under this key, with this error code.
    Recorded {
        key: &'static str,
        code: &'static str,
    },
    /// Still refused: the flag does not cover this problem.
    Refused,
}

fn lines(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

fn too_long_line() -> String {
    json!({"custom_id": "r-2", "prompt": "x".repeat(300)}).to_string()
}

/// `runner submit bad.jsonl` to the fixture's mock, with `extra` flags.
async fn submit(fx: &Fixture, extra: &[&str]) -> std::process::Output {
    output(fx.bin_submit(extra)).await
}

/// Every row of `jobs` and `requests`, as text: what must not change when a submit is refused.
fn snapshot(db: &std::path::Path) -> Vec<String> {
    if !db.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let mut rows = Vec::new();
    for sql in [
        "SELECT name || '|' || config || '|' || state || '|' || coalesce(input_fingerprint, '') FROM jobs ORDER BY id",
        "SELECT key || '|' || line || '|' || body_hash || '|' || state || '|' || attempts FROM requests ORDER BY id",
    ] {
        let mut stmt = conn.prepare(sql).expect("prepare");
        rows.extend(
            stmt.query_map([], |r| r.get::<_, String>(0))
                .expect("query")
                .map(|r| r.expect("row")),
        );
    }
    rows
}

#[rstest]
#[case::malformed_json(
    None,
    lines(&[GOOD_1, r#"{"custom_id":"r-2","prompt": oops}"#, GOOD_3]),
    &[],
    "bad.jsonl:2: invalid JSON at column 30: expected value",
    Skipped::Recorded { key: "r-2", code: "malformed_json" }
)]
#[case::not_an_object(
    None,
    lines(&[GOOD_1, "[1, 2]", GOOD_3]),
    &[],
    "bad.jsonl:2: expected a JSON object, found an array",
    Skipped::Recorded { key: "line-2", code: "invalid_request" }
)]
#[case::batch_line_without_method(
    None,
    lines(&[GOOD_1, r#"{"custom_id":"r-2","url":"/v1/chat/completions","body":{"messages":[]}}"#]),
    &[],
    "bad.jsonl:2: batch line has no \"method\": add \"method\": \"POST\"",
    Skipped::Recorded { key: "r-2", code: "invalid_request" }
)]
#[case::batch_line_with_put(
    None,
    lines(&[GOOD_1, r#"{"custom_id":"r-2","method":"PUT","url":"/v1/models","body":{}}"#]),
    &[],
    "bad.jsonl:2: method 'PUT' is not supported: use POST, GET or DELETE",
    Skipped::Recorded { key: "r-2", code: "invalid_request" }
)]
#[case::batch_line_without_url(
    None,
    lines(&[GOOD_1, r#"{"custom_id":"r-2","method":"POST","body":{"messages":[]}}"#]),
    &[],
    "bad.jsonl:2: batch line has no \"url\"",
    Skipped::Recorded { key: "r-2", code: "invalid_request" }
)]
#[case::batch_line_without_body(
    None,
    lines(&[GOOD_1, r#"{"custom_id":"r-2","method":"POST","url":"/v1/chat/completions"}"#]),
    &[],
    "bad.jsonl:2: batch line has no \"body\"",
    Skipped::Recorded { key: "r-2", code: "invalid_request" }
)]
#[case::invalid_utf8(
    None,
    [lines(&[GOOD_1]), b"{\"custom_id\":\"r-2\",\"prompt\":\"caf\xe9\"}\n".to_vec()].concat(),
    &[],
    "bad.jsonl:2: line is not valid UTF-8: save the file as UTF-8",
    Skipped::Recorded { key: "r-2", code: "invalid_utf8" }
)]
#[case::line_over_the_size_limit(
    None,
    lines(&[GOOD_1, &too_long_line(), GOOD_3]),
    &["--max-line-bytes", "100"],
    "bad.jsonl:2: line is longer than 100 bytes: raise --max-line-bytes or shorten it",
    Skipped::Recorded { key: "r-2", code: "line_too_long" }
)]
#[case::duplicate_custom_id(
    None,
    lines(&[GOOD_1, GOOD_3, r#"{"custom_id":"r-1","prompt":"again"}"#]),
    &[],
    "bad.jsonl:3: custom_id 'r-1' is already used on line 1: custom_id must be unique within a job",
    Skipped::Refused
)]
#[case::empty_file(None, Vec::new(), &[], "bad.jsonl: no requests in file", Skipped::Refused)]
#[case::only_blank_lines(
    None,
    b"\n   \r\n\t\n".to_vec(),
    &[],
    "bad.jsonl: no requests in file",
    Skipped::Refused
)]
#[case::changed_body_of_a_known_custom_id(
    Some(lines(&[GOOD_1, GOOD_3])),
    lines(&[GOOD_1, r#"{"custom_id":"r-3","prompt":"edited"}"#]),
    &[],
    "bad.jsonl:2: custom_id 'r-3' was submitted before with a different body: give the changed request a new custom_id, or use a new --job",
    Skipped::Refused
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_file_and_line_and_stores_and_sends_nothing(
    #[case] previous: Option<Vec<u8>>,
    #[case] input: Vec<u8>,
    #[case] extra: &[&str],
    #[case] message: &str,
    #[case] skipped: Skipped,
) {
    for skip_invalid in [false, true] {
        let fx = Fixture::for_job("bad").start().await;
        if let Some(previous) = &previous {
            write_bytes(&fx.input, previous);
            let out = submit(&fx, extra).await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }
        let before = (snapshot(&fx.db()), fx.mock.stats().answers);
        write_bytes(&fx.input, &input);
        let mut flags = extra.to_vec();
        if skip_invalid {
            flags.push("--skip-invalid");
        }
        let out = submit(&fx, &flags).await;
        let stderr = text(&out.stderr);
        match (skip_invalid, skipped) {
            (false, _) | (true, Skipped::Refused) => {
                assert_eq!(out.status.code(), Some(1), "skip {skip_invalid}: {stderr}");
                assert!(
                    stderr.starts_with(&format!("runner: {message}")),
                    "skip {skip_invalid}: {stderr}"
                );
                assert_eq!(
                    (snapshot(&fx.db()), fx.mock.stats().answers),
                    before,
                    "skip {skip_invalid}: nothing stored, nothing sent"
                );
            }
            (true, Skipped::Recorded { key, code }) => {
                assert_eq!(out.status.code(), Some(3), "failed requests: {stderr}");
                assert!(
                    stderr.contains("1 invalid lines recorded as failed requests"),
                    "{stderr}"
                );
                let (header, rows) = fx.export_csv();
                let bad = rows
                    .iter()
                    .find(|r| cell(&header, r, "custom_id") == key)
                    .unwrap_or_else(|| panic!("no row for {key}"));
                assert_eq!(cell(&header, bad, "status"), "failed");
                assert_eq!(cell(&header, bad, "error_class"), "invalid_input");
                assert_eq!(cell(&header, bad, "error_code"), code);
                assert!(
                    cell(&header, bad, "error_message").starts_with(message),
                    "{}",
                    cell(&header, bad, "error_message")
                );
                assert_eq!(cell(&header, bad, "line"), "2");
                assert_eq!(cell(&header, bad, "attempts"), "0", "never sent");
                let good: Vec<&csv::StringRecord> = rows
                    .iter()
                    .filter(|r| cell(&header, r, "custom_id") != key)
                    .collect();
                assert!(
                    good.iter()
                        .all(|r| cell(&header, r, "status") == "succeeded"),
                    "the other lines ran"
                );
                assert_eq!(
                    fx.mock.stats().answers,
                    good.len() as u64,
                    "each good line was sent once, the bad one never"
                );
            }
        }
        fx.shutdown().await;
    }
}

#[rstest]
#[case::blank_lines_are_skipped(b"{\"prompt\":\"a\"}\n\n   \n{\"prompt\":\"b\"}\n".to_vec(), [1, 4])]
#[case::crlf_is_accepted(b"{\"prompt\":\"a\"}\r\n{\"prompt\":\"b\"}\r\n".to_vec(), [1, 2])]
#[case::bom_and_crlf(b"\xEF\xBB\xBF{\"prompt\":\"a\"}\r\n\r\n{\"prompt\":\"b\"}".to_vec(), [1, 3])]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_crlf_and_a_bom_are_accepted(#[case] input: Vec<u8>, #[case] at: [i64; 2]) {
    let fx = Fixture::for_job("bad").start().await;
    write_bytes(&fx.input, &input);
    let out = submit(&fx, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fx.mock.stats().answers, 2);
    for (prompt, line) in ["a", "b"].iter().zip(at) {
        let body =
            json!({"model": "test-model", "messages": [{"role": "user", "content": prompt}]});
        assert_eq!(fx.mock.stats().successes_for(&body), 1, "{prompt}");
        let sql = format!(
            "SELECT line FROM requests WHERE body = '{}'",
            body.to_string().replace('\'', "''")
        );
        assert_eq!(query_i64(&fx.db(), &sql), line, "{prompt}");
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_invalid_keeps_going_past_every_bad_line_and_exports_each_with_its_error() {
    let fx = Fixture::for_job("bad").start().await;
    // A 2 MiB line with a 1 KiB limit: read past, never kept.
    let huge = json!({"custom_id": "huge", "prompt": "x".repeat(2 << 20)}).to_string();
    let input = [
        lines(&[
            GOOD_1,
            r#"{"custom_id":"cut","prompt":"trunc"#,
            "[1, 2]",
            &huge,
            r#"{"method":"PUT","url":"/v1/models","body":{}}"#,
        ]),
        b"{\"prompt\":\"\xff\"}\n".to_vec(),
        lines(&[GOOD_3]),
    ]
    .concat();
    write_bytes(&fx.input, &input);
    let out = submit(&fx, &["--skip-invalid", "--max-line-bytes", "1024"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("bad: 5 invalid lines recorded as failed requests (--skip-invalid)"),
        "{stderr}"
    );
    assert_eq!(
        fx.mock.stats().answers,
        2,
        "only the two good lines were sent"
    );

    let (header, rows) = fx.export_csv();
    let summary: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                cell(&header, r, "custom_id").to_owned(),
                cell(&header, r, "line").to_owned(),
                cell(&header, r, "status").to_owned(),
                cell(&header, r, "error_code").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("r-1", "1", "succeeded", ""),
        ("cut", "2", "failed", "malformed_json"),
        ("line-3", "3", "failed", "invalid_request"),
        ("huge", "4", "failed", "line_too_long"),
        ("line-5", "5", "failed", "invalid_request"),
        ("line-6", "6", "failed", "invalid_utf8"),
        ("r-3", "7", "succeeded", ""),
    ]
    .map(|(a, b, c, d)| (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned()));
    assert_eq!(summary, expected);

    // The Batch output reports them as errors without an HTTP answer.
    let export = output(fx.bin(&["export", "--format", "jsonl"])).await;
    let jsonl = text(&export.stdout);
    let cut: serde_json::Value = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|v| v["custom_id"] == "cut")
        .expect("cut is exported");
    assert!(cut["response"].is_null());
    assert_eq!(cut["error"]["code"], "malformed_json");
    assert!(
        cut["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("bad.jsonl:2: invalid JSON"),
        "{cut}"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_line_replaces_its_failed_row_on_the_next_submit() {
    let fx = Fixture::for_job("bad").start().await;
    let broken = lines(&[
        GOOD_1,
        r#"{"custom_id":"r-2","prompt": oops}"#,
        "{nope",
        GOOD_3,
    ]);
    write_bytes(&fx.input, &broken);
    let out = submit(&fx, &["--skip-invalid"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM requests WHERE error_class = 'invalid_input'"
        ),
        2
    );

    // Both lines fixed: the one with a custom_id takes over its row; the other's row ("line-3")
    // is dropped, its request now has a content key.
    let fixed = lines(&[
        GOOD_1,
        r#"{"custom_id":"r-2","prompt":"two"}"#,
        r#"{"prompt":"no id"}"#,
        GOOD_3,
    ]);
    write_bytes(&fx.input, &fixed);
    let out = submit(&fx, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (header, rows) = fx.export_csv();
    assert_eq!(rows.len(), 4, "no row left over from the broken lines");
    assert!(
        rows.iter()
            .all(|r| cell(&header, r, "status") == "succeeded")
    );
    assert_eq!(cell(&header, &rows[1], "custom_id"), "r-2");
    assert!(cell(&header, &rows[2], "custom_id").starts_with("auto-"));
    assert_eq!(fx.mock.stats().answers, 4, "each request sent once");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_breaks_later_keeps_its_earlier_result() {
    let fx = Fixture::for_job("bad").start().await;
    write_bytes(&fx.input, &lines(&[GOOD_1, GOOD_3]));
    assert_eq!(submit(&fx, &[]).await.status.code(), Some(0));
    write_bytes(
        &fx.input,
        &lines(&[GOOD_1, r#"{"custom_id":"r-3","prompt": broken"#]),
    );
    let out = submit(&fx, &["--skip-invalid"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl:2: invalid JSON")
            && stderr.contains("custom_id 'r-3' keeps the request and result it already has"),
        "{stderr}"
    );
    assert!(!stderr.contains("recorded as failed"), "{stderr}");
    assert_eq!(
        query_text(&fx.db(), "SELECT state FROM requests WHERE key = 'r-3'").as_deref(),
        Some("succeeded"),
        "a success is never overwritten by a bad line"
    );
    assert_eq!(fx.mock.stats().answers, 2);
    fx.shutdown().await;
}
