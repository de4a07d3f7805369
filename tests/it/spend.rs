//! `--max-cost`: the job stops before it could spend more than the cap, by the journal's own
//! usage, with 64 in flight and retries going on; a resume with a higher cap finishes it
//! without sending a success again.

use std::time::Duration;

use serde_json::{Value, json};

use runner::domain::Exit;
use runner::mock::MockConfig;

use crate::support::bin::{output, text};
use crate::support::*;

/// USD per 1M tokens: a dollar per prompt token and two per answer token, so the sums read as
/// token counts.
const PRICE: &str = "test-model=1000000,2000000";

/// 30 words of prompt and at most 20 of answer each: the mock cuts its echo at `max_tokens`,
/// as the API does.
fn line(i: usize) -> String {
    let words: Vec<String> = (0..30).map(|w| format!("w{i}x{w}")).collect();
    json!({"custom_id": format!("r-{i}"), "prompt": words.join(" "), "max_tokens": 20}).to_string()
}

fn body(i: usize) -> Value {
    let words: Vec<String> = (0..30).map(|w| format!("w{i}x{w}")).collect();
    json!({"model": "test-model", "max_tokens": 20,
           "messages": [{"role": "user", "content": words.join(" ")}]})
}

/// What the job's answers cost by their journaled usage, at [`PRICE`].
fn spent(fx: &Fixture) -> f64 {
    query_i64(
        &fx.db(),
        "SELECT coalesce(sum(prompt_tokens + 2 * completion_tokens), 0) FROM requests WHERE state = 'succeeded'",
    ) as f64
}

/// `runner estimate FILE --json` of the fixture's file, at [`PRICE`].
async fn estimate(fx: &Fixture, file: &str) -> Value {
    let out = output(fx.bin(&[
        "estimate",
        file,
        "--model",
        "test-model",
        "--price",
        PRICE,
        "--json",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_with_64_in_flight_and_a_resume_with_more_finishes() {
    const LINES: usize = 400;
    let text_lines: String = (0..LINES).map(|i| format!("{}\n", line(i))).collect();
    let fx = Fixture::for_job("capped")
        .mock(MockConfig {
            latency: Duration::from_millis(30),
            server_error_rate: 0.2,
            ..MockConfig::default()
        })
        .input(text_lines)
        .start()
        .await;

    let estimate = estimate(&fx, "capped.jsonl").await;
    let expected = estimate["usd_direct"]["expected"].as_f64().expect("priced");
    let cap = (expected * 0.4).round();

    let cap_text = cap.to_string();
    let exit = fx
        .submit(&[
            "--concurrency",
            "64",
            "--max-cost",
            &cap_text,
            "--price",
            PRICE,
        ])
        .await;
    assert_eq!(exit, Exit::BudgetReached, "exit 5");
    assert_eq!(exit.code(), 5);
    let first = spent(&fx);
    assert!(first <= cap, "spent {first} of a cap of {cap}");
    assert!(first > 0.0, "some requests went before the cap");
    let pending = fx.requests_in("pending");
    assert!(pending > 0, "the cap stopped it before the end");
    let reason = query_text(&fx.db(), "SELECT state_reason FROM jobs").expect("reason");
    assert!(reason.contains("spending cap is reached"), "{reason}");
    assert!(reason.contains("runner resume --max-cost"), "{reason}");
    let retried = query_i64(
        &fx.db(),
        "SELECT count(*) FROM attempts WHERE http_status = 500",
    );
    assert!(retried > 0, "retries were going on");
    let status = output(fx.bin(&["status", "--db", &fx.db_arg()])).await;
    let shown = text(&status.stdout);
    let cap_line = format!("cap       --max-cost ${cap:.2}: ≈ ${first:.2} spent");
    assert!(shown.contains(&cap_line), "{shown}");
    assert!(
        shown.contains("estimated at submit: 400 requests"),
        "{shown}"
    );
    // The report draws the spend over time under the cap.
    let report = fx.scratch.path("report.html");
    let out = output(fx.bin(&["report", "--output", &report.display().to_string()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(&report).expect("report");
    assert!(
        html.contains("<h2>Spend over time</h2>"),
        "the spend section"
    );
    assert!(
        html.contains(r#"<path class="line spent""#),
        "the spend line"
    );
    assert!(
        html.contains(&format!("--max-cost ${cap:.2}")),
        "the cap line"
    );

    // A higher cap, stored with the job (the price too): the rest is sent, nothing twice.
    let exit = fx.resume(&["--max-cost", "1000000"]).await;
    assert_eq!(exit, Exit::Success);
    assert_eq!(fx.requests_in("succeeded"), LINES as i64);
    let stats = fx.mock.stats();
    for i in 0..LINES {
        assert_eq!(stats.successes_for(&body(i)), 1, "line {i} answered once");
    }
    assert!(spent(&fx) <= 1_000_000.0);

    // Each exported row costs its usage at the job's own --price, without giving it again.
    let rows = fx.export_jsonl();
    assert_eq!(rows.len(), LINES);
    let exported: f64 = rows
        .iter()
        .map(|row| {
            row["cost_usd"]
                .as_f64()
                .expect("priced by the job's --price")
        })
        .sum();
    assert!(
        (exported - spent(&fx)).abs() < 1e-6,
        "{exported} vs {}",
        spent(&fx)
    );

    // The finished job tells the next estimate how long answers are: 20 tokens each here.
    let like = output(fx.bin(&[
        "estimate",
        "capped.jsonl",
        "--model",
        "test-model",
        "--like",
        "capped",
        "--json",
    ]))
    .await;
    assert_eq!(like.status.code(), Some(0), "{}", text(&like.stderr));
    let like: Value = serde_json::from_slice(&like.stdout).expect("json");
    assert_eq!(
        like["groups"][0]["output_tokens_expected"],
        20 * LINES as u64,
        "{like}"
    );
    assert!(
        like["expectation"]
            .as_str()
            .is_some_and(|e| e.contains("job capped"))
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_that_cannot_be_counted_is_refused_before_anything_is_sent() {
    let fx = Fixture::for_job("nocap")
        .input(format!("{}\n", line(0)))
        .start()
        .await;
    let url = fx.url();
    for (args, code, says) in [
        (&["--max-cost=-3"][..], 2, "is not an amount of USD above 0"),
        (
            &["--max-cost", "ten"][..],
            2,
            "is not an amount of USD above 0",
        ),
        (
            &["--max-cost", "10"][..],
            2,
            "--max-cost needs a price for every model of the job, and test-model has none",
        ),
        (
            &["--max-cost", "10", "--via", "batch"][..],
            2,
            "--max-cost needs a price for every model of the job, and test-model has none",
        ),
    ] {
        let mut cmd = fx.bin(&[
            "submit",
            "nocap.jsonl",
            "--base-url",
            &url,
            "--model",
            "test-model",
            "--no-progress",
        ]);
        cmd.args(args);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(fx.mock.stats().answers, 0, "nothing was sent");
    fx.shutdown().await;
}

/// `--via batch` with `--max-cost`: a chunk is cut only when its worst case at the batch price
/// fits beside what is spent and the open chunks' worst case; the job stops at the cap (exit 5)
/// having spent no more than it, and a resume with more finishes it, nothing answered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_cuts_only_what_fits_under_the_cap() {
    const LINES: usize = 200;
    let text_lines: String = (0..LINES).map(|i| format!("{}\n", line(i))).collect();
    let fx = Fixture::for_job("batchcap")
        .mock(crate::batch_jobs::batch_mock(Duration::from_millis(100)))
        .input(text_lines)
        .start()
        .await;
    let estimate = estimate(&fx, "batchcap.jsonl").await;
    let expected = estimate["usd_batch"]["expected"].as_f64().expect("priced");
    let cap = (expected * 0.4).round();
    let cap_text = cap.to_string();
    let args = crate::batch_jobs::via_batch(&[
        "--batch-max-lines",
        "25",
        "--max-cost",
        &cap_text,
        "--price",
        PRICE,
    ]);
    assert_eq!(fx.submit(&args).await, Exit::BudgetReached);
    // At the batch price: half of the direct one.
    let first = spent(&fx) / 2.0;
    assert!(first <= cap, "spent {first} of a cap of {cap}");
    assert!(first > 0.0, "some batches ran before the cap");
    assert!(
        fx.requests_in("pending") > 0,
        "the cap stopped it before the end"
    );
    let chunks = query_i64(&fx.db(), "SELECT count(*) FROM batch_chunks");
    let held = query_i64(
        &fx.db(),
        "SELECT count(*) FROM batch_chunks WHERE worst_usd > 0",
    );
    assert_eq!(held, chunks, "every chunk was cut with its worst case held");
    let reason = query_text(&fx.db(), "SELECT state_reason FROM jobs").expect("reason");
    assert!(reason.contains("spending cap is reached"), "{reason}");

    assert_eq!(fx.resume(&["--max-cost", "1000000"]).await, Exit::Success);
    assert_eq!(fx.requests_in("succeeded"), LINES as i64);
    let stats = fx.mock.stats();
    for i in 0..LINES {
        assert_eq!(stats.successes_for(&body(i)), 1, "line {i} answered once");
    }
    fx.shutdown().await;
}
