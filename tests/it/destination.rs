//! Where the key goes, on the real binary: the host is named at start, plain http:// to another
//! machine is refused while a key is set, and `OPENAI_BASE_URL` wins over a stored base URL,
//! saying so.

use std::process::Command;

use crate::support::bin::{output, runner, text};
use crate::support::*;

const KEY: &str = "sk-proj-destination-test-000000000000";

/// The real binary in `s` with `args`, `OPENAI_API_KEY` set.
fn keyed(s: &Scratch, args: &[&str]) -> Command {
    let mut cmd = runner(s.dir.path());
    cmd.env("OPENAI_API_KEY", KEY).args(args);
    cmd
}

/// `submit p.jsonl` to a plain-http address on another machine (TEST-NET-1, unroutable), with
/// `extra` before `--no-progress`.
fn submit_elsewhere(s: &Scratch, extra: &[&str]) -> Command {
    let (input, db) = (s.path("p.jsonl").display().to_string(), s.db_arg());
    let mut cmd = keyed(
        s,
        &[
            "submit",
            &input,
            "--db",
            &db,
            "--base-url",
            "http://192.0.2.1:9/v1",
        ],
    );
    cmd.args(extra).arg("--no-progress");
    cmd
}

#[tokio::test]
async fn plain_http_to_another_host_with_a_key_is_refused_unless_allowed() {
    let s = Scratch::new();
    s.prompts("p.jsonl", 0..1);
    let out = output(submit_elsewhere(&s, &[])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to send the API key over plain http:// to 192.0.2.1:9"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-insecure-http"), "{stderr}");

    // Said explicitly, it goes ahead (and fails to connect: TEST-NET-1 is unroutable).
    let cmd = submit_elsewhere(
        &s,
        &[
            "--allow-insecure-http",
            "--timeout",
            "300ms",
            "--max-attempts",
            "1",
        ],
    );
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("refusing"), "{stderr}");
    assert!(
        stderr.contains("sending to 192.0.2.1:9 (from --base-url"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_environments_base_url_wins_over_the_stored_one_and_says_so() {
    let fx = Fixture::for_job("p").prompts(0..3).start().await;
    let (s, mock, db) = (&fx.scratch, &fx.mock, fx.db_arg());
    let input = fx.input.display().to_string();
    let stored = "http://127.0.0.1:1/v1";
    // First run: nothing listens on port 1, so every request fails and stays in the job.
    let mut cmd = keyed(
        s,
        &[
            "submit",
            &input,
            "--db",
            &db,
            "--model",
            "test-model",
            "--max-attempts",
            "1",
            "--no-progress",
        ],
    );
    cmd.env("OPENAI_BASE_URL", stored);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("sending to 127.0.0.1:1 (from OPENAI_BASE_URL"),
        "{stderr}"
    );

    // The environment now names the mock: it is used, said, and stored.
    let mut cmd = keyed(s, &["retry-failed", "--db", &db, "--no-progress"]);
    cmd.env("OPENAI_BASE_URL", mock.base_url());
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("the job was stored with base URL {stored}")),
        "{stderr}"
    );
    let host = mock.base_url().replace("http://", "").replace("/v1", "");
    assert!(
        stderr.contains(&format!("sending to {host} (from OPENAI_BASE_URL")),
        "{stderr}"
    );
    assert_eq!(mock.stats().answers, 3);
    let config = query_text(&s.db(), "SELECT config FROM jobs").unwrap_or_default();
    assert!(config.contains(&mock.base_url()), "{config}");
}
