//! `runner doctor` against the mock and against tiny servers that answer one fault: the right
//! diagnosis for each, and the exit codes of the real binary.
// Helpers of a test crate: a failed setup panics with its message (clippy's allow-*-in-tests
// covers only #[test] fns and #[cfg(test)] items).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use rstest::rstest;
use runner::cli::DoctorArgs;
use runner::engine::config::ApiEnv;
use runner::inspect::doctor::{Diagnosis, Verdict, diagnose};
use runner::mock::MockConfig;

use crate::support::bin::{output, runner};
use crate::support::*;

const MISSING_SCOPE: &str = r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: api.model.read. Check that you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using a restricted API key, that it has the necessary scopes.","type":"invalid_request_error","param":null,"code":"missing_scope"}}"#;
const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
const PROJECT: &str = r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"mismatched_project"}}"#;

/// A server that answers every request with `status` and `body`; stops when the test ends.
async fn canned(status: u16, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let status = StatusCode::from_u16(status).expect("status");
    let app = Router::new().fallback(move || async move {
        (
            status,
            [
                ("content-type", "application/json"),
                ("x-request-id", "req_canned"),
            ],
            body,
        )
            .into_response()
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

fn args(base_url: &str) -> DoctorArgs {
    DoctorArgs {
        base_url: Some(base_url.to_owned()),
        keys_file: None,
        timeout: Duration::from_secs(10),
    }
}

fn advice(d: &Diagnosis) -> String {
    d.render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_server_and_key_are_ready() {
    let mock = mock(MockConfig::default()).await;
    let d = within(
        "doctor",
        diagnose(
            &args(&mock.base_url()),
            &env_with_key("sk-proj-healthy-0000abcd"),
        ),
    )
    .await;
    let text = advice(&d);
    assert_eq!(d.worst(), Verdict::Ok, "{text}");
    assert!(text.contains("project key (sk-proj-)"), "{text}");
    assert!(text.contains("→ 200"), "{text}");
    assert!(text.contains("ready: a job would run"), "{text}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_would_stop_the_job() {
    let bad = "sk-proj-revoked-000000000000";
    let mock = mock(MockConfig {
        invalid_keys: vec![bad.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let d = within(
        "doctor",
        diagnose(&args(&mock.base_url()), &env_with_key(bad)),
    )
    .await;
    let text = advice(&d);
    assert_eq!(d.worst(), Verdict::Stop, "{text}");
    assert!(text.contains("invalid_api_key"), "{text}");
    assert!(text.contains("wrong, revoked or deleted"), "{text}");
    assert!(!text.contains(bad), "the key is never printed: {text}");
    mock.shutdown().await;
}

#[rstest]
#[case::missing_scope(
    401,
    MISSING_SCOPE,
    Verdict::Warn,
    "missing scope (scopes: api.model.read)"
)]
#[case::quota(429, QUOTA, Verdict::Stop, "out of quota")]
#[case::project_mismatch(401, PROJECT, Verdict::Stop, "project mismatch")]
#[case::server_error(503, "{}", Verdict::Warn, "the server is failing now (503)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_gets_its_diagnosis(
    #[case] status: u16,
    #[case] body: &'static str,
    #[case] verdict: Verdict,
    #[case] says: &str,
) {
    let url = canned(status, body).await;
    let env = ApiEnv {
        project: Some("proj_other".into()),
        ..env_with_key("sk-proj-some-key-0000abcd")
    };
    let d = within("doctor", diagnose(&args(&url), &env)).await;
    let text = advice(&d);
    assert_eq!(d.worst(), verdict, "{text}");
    assert!(text.contains(says), "{text}");
    assert!(text.contains("x-request-id req_canned"), "{text}");
    assert!(text.contains("OpenAI-Project: proj_other"), "{text}");
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_port_is_unusable() {
    let url = format!("http://127.0.0.1:{}/v1", closed_port().await);
    let d = within("doctor", diagnose(&args(&url), &env())).await;
    let text = advice(&d);
    assert_eq!(d.worst(), Verdict::Fail, "{text}");
    assert!(text.contains("cannot connect"), "{text}");
    assert!(
        !text.contains("probe"),
        "no probe once the host is unreachable: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_file_is_checked_key_by_key() {
    let s = Scratch::new();
    let bad = "sk-svcacct-revoked-00000000";
    let mock = mock(MockConfig {
        invalid_keys: vec![bad.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let keys = s.write(
        "keys.txt",
        &format!("good=sk-proj-fine-0000000000\nold={bad}\n"),
    );
    let args = DoctorArgs {
        keys_file: Some(keys),
        ..args(&mock.base_url())
    };
    let d = within("doctor", diagnose(&args, &ApiEnv::default())).await;
    let text = advice(&d);
    assert_eq!(d.worst(), Verdict::Stop, "{text}");
    assert!(text.contains("good: project key"), "{text}");
    assert!(text.contains("old: service-account key"), "{text}");
    assert!(text.contains("with good → 200"), "{text}");
    assert!(text.contains("with old → 401 invalid_api_key"), "{text}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_4_and_1() {
    let s = Scratch::new();
    let bad = "sk-proj-revoked-111111111111";
    let mock = mock(MockConfig {
        invalid_keys: vec![bad.to_owned()],
        ..MockConfig::default()
    })
    .await;
    let closed = format!("http://127.0.0.1:{}/v1", closed_port().await);
    let cases = [
        (mock.base_url(), "sk-proj-good-222222222222", 0),
        (mock.base_url(), bad, 4),
        (closed, "sk-proj-good-222222222222", 1),
    ];
    for (url, key, code) in cases {
        let mut cmd = runner(s.dir.path());
        cmd.args(["doctor", "--base-url", &url])
            .env("OPENAI_API_KEY", key);
        let out = output(cmd).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{url} {key}:\n{stdout}");
        assert!(stdout.contains("probe") || code == 1, "{stdout}");
        assert!(!stdout.contains(key) && !String::from_utf8_lossy(&out.stderr).contains(key));
    }
    mock.shutdown().await;
}
