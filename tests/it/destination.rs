//! Where the key goes, on the real binary: the host is named at start, plain http:// to another
//! machine is refused while a key is set, and `OPENAI_BASE_URL` wins over a stored base URL,
//! saying so.

use crate::support::bin::{output, runner, text};
use crate::support::*;
use runner::mock::MockConfig;

const KEY: &str = "sk-proj-destination-test-000000000000";

#[tokio::test]
async fn plain_http_to_another_host_with_a_key_is_refused_unless_allowed() {
    let s = Scratch::new();
    let input = s.prompts("p.jsonl", 0..1);
    let mut cmd = runner(s.dir.path());
    cmd.env("OPENAI_API_KEY", KEY).args([
        "submit",
        &input.display().to_string(),
        "--db",
        &s.db_arg(),
        "--base-url",
        "http://192.0.2.1:9/v1",
        "--no-progress",
    ]);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to send the API key over plain http:// to 192.0.2.1:9"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-insecure-http"), "{stderr}");

    // Said explicitly, it goes ahead (and fails to connect: TEST-NET-1 is unroutable).
    let mut cmd = runner(s.dir.path());
    cmd.env("OPENAI_API_KEY", KEY).args([
        "submit",
        &input.display().to_string(),
        "--db",
        &s.db_arg(),
        "--base-url",
        "http://192.0.2.1:9/v1",
        "--allow-insecure-http",
        "--timeout",
        "300ms",
        "--max-attempts",
        "1",
        "--no-progress",
    ]);
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
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.prompts("p.jsonl", 0..3);
    let stored = "http://127.0.0.1:1/v1";
    // First run: nothing listens on port 1, so every request fails and stays in the job.
    let mut cmd = runner(s.dir.path());
    cmd.env("OPENAI_API_KEY", KEY)
        .env("OPENAI_BASE_URL", stored)
        .args([
            "submit",
            &input.display().to_string(),
            "--db",
            &s.db_arg(),
            "--model",
            "test-model",
            "--max-attempts",
            "1",
            "--no-progress",
        ]);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("sending to 127.0.0.1:1 (from OPENAI_BASE_URL"),
        "{stderr}"
    );

    // The environment now names the mock: it is used, said, and stored.
    let mut cmd = runner(s.dir.path());
    cmd.env("OPENAI_API_KEY", KEY)
        .env("OPENAI_BASE_URL", mock.base_url())
        .args(["retry-failed", "--db", &s.db_arg(), "--no-progress"]);
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
