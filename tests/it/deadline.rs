//! `--via auto --deadline`: batches while there is time, then the rest directly, never paid
//! twice, whatever kills the runner around the switch.

use std::time::Duration;

use rstest::rstest;

use runner::domain::Exit;
use runner::mock::{BatchFate, MockConfig};

use crate::batch_jobs::{QUICK_POLLS, assert_each_succeeded_once};
use crate::support::bin::{Running, output, text};
use crate::support::*;

const N: usize = 40;

/// `--via auto` with a deadline `deadline` from now, the switch margin `margin`, a known direct
/// pace (40 requests need 0.4 s at 6,000 a minute), and quick polls.
fn auto<'a>(deadline: &'a str, margin: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--via",
        "auto",
        "--deadline",
        deadline,
        "--switch-margin",
        margin,
        "--rpm",
        "6000",
    ];
    args.extend_from_slice(&QUICK_POLLS);
    args.extend_from_slice(extra);
    args
}

/// A job of `N` prompt lines against a mock whose first batch stalls.
async fn stalled(job: &str) -> Fixture {
    Fixture::for_job(job)
        .mock(MockConfig {
            batch_processing: Duration::from_millis(300),
            batch_fates: vec![BatchFate::Stall],
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await
}

/// Requests that succeeded through a batch, and directly.
fn ways(fx: &Fixture) -> (i64, i64) {
    let by = |batch: &str| {
        query_i64(
            &fx.db(),
            &format!(
                "SELECT count(*) FROM requests r WHERE r.state = 'succeeded' AND EXISTS (
                   SELECT 1 FROM attempts a WHERE a.request_id = r.id AND a.number = r.attempts
                   AND a.batch_id IS {batch} NULL)"
            ),
        )
    };
    (by("NOT"), by(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_complete_in_time_carry_every_line_at_half_the_price() {
    let fx = Fixture::for_job("intime")
        .mock(MockConfig {
            batch_processing: Duration::from_millis(300),
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    let exit = fx
        .submit(&auto("10m", "1m", &["--batch-max-lines", "25"]))
        .await;
    assert_eq!(exit, Exit::Success);
    assert_each_succeeded_once(&fx, N as i64);
    assert_eq!(
        ways(&fx),
        (N as i64, 0),
        "every line by batch, none directly"
    );
    // Half the direct price: what the Batch API saved is what was paid.
    let status = output(fx.bin(&["status", "--json", "--price", "test-model=1,2"])).await;
    let value: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let (paid, saved) = (
        value["cost"]["estimate_usd"].as_f64().expect("paid"),
        value["cost"]["batch_saving_usd"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    assert!(
        paid > 0.0 && (paid - saved).abs() < 1e-12,
        "{paid} paid, {saved} saved"
    );
    let plan = query_text(&fx.db(), "SELECT detail FROM events WHERE kind = 'plan'").expect("plan");
    assert!(plan.contains("batches until"), "{plan}");
    assert_eq!(
        query_i64(
            &fx.db(),
            "SELECT count(*) FROM events WHERE kind = 'switch'"
        ),
        0,
        "no switch was needed"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_batch_is_cancelled_at_the_switch_and_the_rest_goes_directly() {
    let fx = stalled("stalled").await;
    let started = std::time::Instant::now();
    let exit = fx.submit(&auto("8s", "3s", &[])).await;
    assert_eq!(exit, Exit::Success);
    let deadline = query_i64(
        &fx.db(),
        "SELECT json_extract(config, '$.batch.deadline_ms') FROM jobs",
    );
    let last = query_i64(&fx.db(), "SELECT max(finished_at) FROM requests");
    assert!(
        last <= deadline,
        "done {} ms after the deadline",
        last - deadline
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "batches ran until the switch"
    );
    assert_each_succeeded_once(&fx, N as i64);
    let (by_batch, directly) = ways(&fx);
    assert_eq!(
        by_batch,
        N as i64 / 2,
        "the half the stalled batch finished is kept"
    );
    assert_eq!(directly, N as i64 / 2, "the rest went directly");
    let switch = query_text(&fx.db(), "SELECT detail FROM events WHERE kind = 'switch'");
    assert!(switch.is_some_and(|s| s.contains("1 batches open cancelled")));
    let (header, rows) = fx.export_csv();
    let via: Vec<&str> = rows.iter().map(|row| cell(&header, row, "via")).collect();
    assert_eq!(via.iter().filter(|v| **v == "batch").count(), N / 2);
    assert_eq!(via.iter().filter(|v| **v == "direct").count(), N / 2);
    // Seen: status says the plan and what went which way; the report marks the switch.
    let status = text(&output(fx.bin(&["status"])).await.stdout);
    assert!(
        status.contains("(--via auto): 20 succeeded by batch, 20 directly"),
        "{status}"
    );
    assert!(status.contains("plan: deadline "), "{status}");
    let report = fx.scratch.path("report.html");
    let out = output(fx.bin(&["report", "--output", &report.display().to_string()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(&report).expect("report");
    assert!(
        html.contains(r#"<g class="switch">"#),
        "the switch is marked"
    );
    fx.shutdown().await;
}

/// Where the runner is killed: before the switch, while it cancels, after it.
#[rstest]
#[case::before("chunk 1: batch")]
#[case::during("switch time: cancelling")]
#[case::after("chunk 1: journaled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_the_switch_then_resume_answers_each_line_once(#[case] at: &str) {
    let fx = stalled("killed").await;
    let run = Running::spawn(fx.bin_submit(&auto("8s", "3s", &[])));
    run.wait_for_stderr(at).await;
    run.kill_9().await;
    let exit = fx.resume(&[]).await;
    assert_eq!(exit, Exit::Success, "at {at:?}");
    assert_each_succeeded_once(&fx, N as i64);
    let (by_batch, directly) = ways(&fx);
    assert_eq!(by_batch + directly, N as i64);
    assert!(directly > 0, "the stalled batch's rest went directly");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_short_even_for_direct_sending_is_said_and_runs_directly_at_once() {
    let fx = Fixture::for_job("late")
        .mock(MockConfig::default())
        .prompts(0..4)
        .start()
        .await;
    // 4 requests at 120 a minute need 2 s; the deadline is in 1 s.
    let mut cmd = fx.bin_submit(&["--via", "auto", "--deadline", "1s", "--rpm", "120"]);
    cmd.env("OPENAI_API_KEY", "sk-test-0123456789abcdef");
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the deadline cannot be met even directly (the rest needs ≈ 2s)"),
        "{stderr}"
    );
    assert_eq!(fx.mock.stats().batch.batches_created, 0, "no batch");
    assert_eq!(ways(&fx), (0, 4));

    // Without a deadline, auto is refused before anything is sent.
    fx.rewrite_input(&jsonl((10..12).map(prompt_line)));
    let out = output(fx.bin_submit(&["--job", "nodeadline", "--via", "auto"])).await;
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--via auto needs --deadline"), "{stderr}");
    fx.shutdown().await;
}
