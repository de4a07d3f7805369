//! A database written by the first released schema (tests/fixtures/v1-schema.db, see
//! tests/fixtures/README.md) opens with the current code: status, export and resume work, the
//! schema is upgraded, and every row is kept.
// Helpers of a test crate: a failed setup panics with its message (clippy's allow-*-in-tests
// covers only #[test] fns and #[cfg(test)] items).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use runner::Exit;
use runner::mock::MockConfig;

use crate::support::bin::{output, runner, text};
use crate::support::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-schema.db");

/// Every column of schema 1, row by row: what an upgrade must keep.
fn v1_rows(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let mut rows = Vec::new();
    for (table, columns) in [
        (
            "jobs",
            "id, name, input_path, input_fingerprint, config, state, state_reason, created_at, updated_at",
        ),
        (
            "requests",
            "id, job_id, key, custom_id, line, method, url, body, body_hash, state, attempts, next_attempt_at,
             in_flight_since, http_status, error_class, error_code, error_message, x_request_id, response, model,
             prompt_tokens, completion_tokens, total_tokens, latency_ms, finished_at",
        ),
        (
            "attempts",
            "id, request_id, job_id, number, started_at, finished_at, latency_ms, outcome, http_status,
             error_class, error_code, error_message, x_request_id, key_fingerprint",
        ),
        ("events", "id, job_id, at, kind, detail"),
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT {columns} FROM {table} ORDER BY id"))
            .expect("prepare");
        let width = stmt.column_count();
        let mut query = stmt.query([]).expect("query");
        while let Some(row) = query.next().expect("row") {
            let cells: Vec<String> = (0..width)
                .map(|i| format!("{:?}", row.get_ref(i).expect("cell")))
                .collect();
            rows.push(format!("{table}: {}", cells.join(" | ")));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_database_upgrades_and_its_job_resumes_with_every_row_intact() {
    let s = Scratch::new();
    std::fs::copy(FIXTURE, s.db()).expect("copy the fixture");
    assert_eq!(query_i64(&s.db(), "PRAGMA user_version"), 1);
    let original = v1_rows(&s.db());
    assert_eq!(
        query_i64(&s.db(), "SELECT count(*) FROM requests"),
        7,
        "the fixture as described in tests/fixtures/README.md"
    );

    // Read-only commands first: they upgrade the file on the way.
    let mut cmd = runner(s.dir.path());
    cmd.args(["status", "--job", "v1"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("requests  7 total · 3 succeeded · 1 failed · 3 pending (1 awaiting retry)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        query_i64(&s.db(), "PRAGMA user_version"),
        i64::from(runner::store::migrate::SCHEMA_VERSION)
    );
    assert_eq!(v1_rows(&s.db()), original, "the upgrade kept every row");
    // Migration 0003 filled the per-class budget counters from the journal it found.
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM requests r WHERE r.transient_attempts + r.auth_attempts + r.rate_limited_attempts
             != (SELECT count(*) FROM attempts a WHERE a.request_id = r.id
                 AND a.error_class IN ('transient', 'auth_transient', 'rate_limited'))"
        ),
        0
    );
    assert_eq!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM jobs WHERE lease_owner IS NULL"
        ),
        1,
        "the new columns exist, empty"
    );

    let (header, rows) = export_csv(&s.db(), "v1");
    let states: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                cell(&header, r, "custom_id"),
                cell(&header, r, "status"),
                cell(&header, r, "output_text"),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("r-0", "succeeded", "echo: prompt 0"),
            ("r-1", "succeeded", "echo: prompt 1"),
            ("r-2", "failed", ""),
            ("r-3", "succeeded", "echo: prompt 3"),
            ("r-4", "pending", ""),
            ("r-5", "pending", ""),
            ("r-6", "pending", ""),
        ]
    );

    let mock = mock(MockConfig::default()).await;
    let (db, url) = (s.db_arg(), mock.base_url());
    let exit = run(
        &["resume", "--db", &db, "--base-url", &url, "--no-progress"],
        env(),
    )
    .await
    .expect("resumes");
    assert_eq!(exit, Exit::SomeFailed, "r-2 failed for good in v1");
    let stats = mock.stats();
    assert_eq!(stats.answers, 3, "only the pending requests were sent");
    assert_succeeded_once(&stats, 4..7);
    let after = v1_rows(&s.db());
    for row in original.iter().filter(|r| r.starts_with("attempts: ")) {
        assert!(after.contains(row), "attempt kept: {row}");
    }
    assert_eq!(requests_in(&s.db(), "succeeded"), 6);
    assert_eq!(query_text(&s.db(), "SELECT lease_owner FROM jobs"), None);
    assert_eq!(integrity(&s.db()), "ok");
    mock.shutdown().await;
}
