//! `runner export` on the real binary: cells a spreadsheet would run are neutralised in CSV (and
//! only there), and export files are private.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::support::bin::{output, text};
use crate::support::*;

/// custom ids a spreadsheet would evaluate, and one it would not.
const IDS: [&str; 7] = [
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "\rCR",
    "plain-id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_neutralises_formulas_by_default_and_no_sanitize_and_jsonl_keep_them_exact() {
    let text_in: String = IDS
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{}\n", json!({"custom_id": id, "prompt": format!("p {i}")})))
        .collect();
    let fx = Fixture::for_job("formulas").input(text_in).start().await;
    let out = output(fx.bin(&[
        "submit",
        "formulas.jsonl",
        "--base-url",
        &fx.url(),
        "--no-progress",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let export = |extra: &[&str]| {
        let mut cmd = fx.bin(&["export"]);
        cmd.args(extra);
        cmd
    };
    let custom_ids = |csv: &[u8]| -> Vec<String> {
        let mut reader = csv::Reader::from_reader(csv);
        reader
            .records()
            .map(|r| r.expect("row parses")[0].to_owned())
            .collect()
    };

    let sanitized = output(export(&[])).await;
    assert_eq!(sanitized.status.code(), Some(0));
    let expected: Vec<String> = IDS
        .iter()
        .map(|id| {
            if id.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{id}")
            } else {
                (*id).to_owned()
            }
        })
        .collect();
    assert_eq!(custom_ids(&sanitized.stdout), expected);

    let raw = output(export(&["--no-sanitize"])).await;
    assert_eq!(raw.status.code(), Some(0));
    assert_eq!(custom_ids(&raw.stdout), IDS, "--no-sanitize: as stored");

    let jsonl = output(export(&["--format", "jsonl"])).await;
    assert_eq!(jsonl.status.code(), Some(0));
    let ids: Vec<String> = text(&jsonl.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["custom_id"].as_str().expect("custom_id").to_owned()
        })
        .collect();
    assert_eq!(ids, IDS, "JSONL is never altered");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_files_are_private_even_over_an_older_file() {
    let fx = Fixture::for_job("private").prompts(0..3).start().await;
    let s = &fx.scratch;
    let submit = fx.bin(&[
        "submit",
        "private.jsonl",
        "--base-url",
        &fx.url(),
        "--no-progress",
    ]);
    assert_eq!(output(submit).await.status.code(), Some(0));
    // Left by someone else, world-readable: the export must not inherit that.
    for old in ["results.csv", "results.csv.partial"] {
        std::fs::write(s.path(old), "old").expect("write");
        std::fs::set_permissions(s.path(old), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    for format in ["csv", "jsonl"] {
        let out = output(fx.bin(&["export", "--format", format, "--output", "results.csv"])).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let mode = std::fs::metadata(s.path("results.csv"))
            .expect("export written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{format} export is private: {mode:o}");
        assert!(
            !s.path("results.csv.partial").exists(),
            "renamed into place"
        );
    }
    fx.shutdown().await;
}
