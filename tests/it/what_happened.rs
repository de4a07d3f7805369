//! "What happened": status while a job runs, the attempts journal, the timeline's spikes against
//! the mock's known fault schedule, and prices.
// Helpers of a test crate: a failed setup panics with its message (clippy's allow-*-in-tests
// covers only #[test] fns and #[cfg(test)] items).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use clap::Parser;
use runner::Exit;
use runner::cli::{Cli, Command};
use runner::engine::shutdown::Shutdown;
use runner::mock::{Fault, MockConfig, Spike};
use runner::util::clock::now_ms;
use serde_json::Value;

use crate::support::*;

/// Parses `args` as the real CLI.
fn command(args: &[&str]) -> Command {
    Cli::try_parse_from(std::iter::once("runner").chain(args.iter().copied()))
        .expect("parses")
        .command
}

/// Runs `runner status ARGS` in-process and returns its stdout.
async fn status(args: &[&str]) -> String {
    let Command::Status(args) = command(&[&["status"][..], args].concat()) else {
        unreachable!("status parses as status")
    };
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        runner::inspect::status::status(&args, &mut out).map(|()| out)
    })
    .await
    .expect("join")
    .expect("status runs");
    String::from_utf8(out).expect("utf-8")
}

/// Runs `runner attempts ARGS` in-process and returns its stdout.
async fn attempts(args: &[&str]) -> String {
    let Command::Attempts(args) = command(&[&["attempts"][..], args].concat()) else {
        unreachable!("attempts parses as attempts")
    };
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        runner::inspect::attempts::attempts(&args, &mut out).map(|_| out)
    })
    .await
    .expect("join")
    .expect("attempts runs");
    String::from_utf8(out).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_a_job_while_it_runs() {
    // A third of the requests hang for a minute: the job cannot finish while status reads it.
    let fx = Fixture::for_job("live")
        .mock(MockConfig {
            hang_rate: 0.3,
            hang: Duration::from_secs(60),
            ..MockConfig::default()
        })
        .prompts(0..200)
        .start()
        .await;
    let shutdown = Shutdown::new();
    let running = fx.spawn_submit(
        &["--concurrency", "8", "--timeout", "90s"],
        shutdown.clone(),
    );
    let (db, db_path) = (fx.db_arg(), fx.db());
    wait_until("journaled successes", || {
        db_path.exists()
            && rusqlite::Connection::open(&db_path)
                .and_then(|c| {
                    c.query_row(
                        "SELECT count(*) FROM attempts WHERE error_class = 'succeeded'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .is_ok_and(|n| n >= 10)
    })
    .await;

    let json: Value =
        serde_json::from_str(&status(&["--db", &db, "--json"]).await).expect("status --json");
    assert_eq!(json["state"], "running");
    assert_eq!(json["requests"]["total"], 200);
    assert!(json["requests"]["succeeded"].as_u64() >= Some(10), "{json}");
    assert!(json["requests"]["in_flight"].as_u64() > Some(0), "{json}");
    assert!(
        json["attempts"]["by_status"]["200"].as_u64() >= Some(10),
        "{json}"
    );
    assert!(
        json["throughput"]["requests_per_second"].as_f64() > Some(0.0),
        "{json}"
    );
    let text = status(&["--db", &db, "--timeline"]).await;
    assert!(text.contains("job       live (running)"), "{text}");
    assert!(text.contains("statuses  200 "), "{text}");
    assert!(text.contains("attempts  "), "{text}");
    assert!(text.contains("error share"), "{text}");

    shutdown.abort();
    let exit = within("aborted run", running)
        .await
        .expect("task")
        .expect("runs");
    assert_eq!(exit, Exit::Interrupted);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_spike_is_found_within_one_bucket_with_its_evidence() {
    let s = Scratch::new();
    let before = now_ms();
    let mock = mock(MockConfig {
        latency: Duration::from_millis(10),
        spikes: vec![Spike {
            start: Duration::from_millis(1000),
            end: Duration::from_millis(3000),
            fault: Fault::MissingScope,
        }],
        ..MockConfig::default()
    })
    .await;
    let after = now_ms();
    // The spike's window in wall-clock time, as far as the test can know when the mock started.
    let (spike_start, spike_end) = ((before + 1000, after + 1000), (before + 3000, after + 3000));
    let input = s.prompts("spike.jsonl", 0..500);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    let args = submit_args(
        &file,
        &db,
        &url,
        &[
            "--concurrency",
            "8",
            "--rpm",
            "6000",
            "--breaker-max-cooldown",
            "1s",
        ],
    );
    let exit = within("spike run", run(&args, env())).await.expect("runs");
    assert_eq!(exit, Exit::Success);

    let json: Value = serde_json::from_str(&{
        let Command::Timeline(args) =
            command(&["timeline", "--db", &db, "--bucket", "1s", "--json"])
        else {
            unreachable!()
        };
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            runner::inspect::status::timeline(&args, &mut out).map(|()| out)
        })
        .await
        .expect("join")
        .expect("timeline runs");
        String::from_utf8(out).expect("utf-8")
    })
    .expect("timeline --json");
    let bucket = json["bucket_ms"].as_i64().expect("bucket");
    assert_eq!(bucket, 1000);
    let spikes = json["spikes"].as_array().expect("spikes");
    assert_eq!(spikes.len(), 1, "exactly the one spike: {spikes:#?}");
    let spike = &spikes[0];
    let start = spike["start_ms"].as_i64().expect("start");
    let end = spike["end_ms"].as_i64().expect("end");
    let recovered = spike["recovered_by"].as_str().map(|_| ());
    assert!(
        start >= spike_start.0 - bucket && start <= spike_start.1 + bucket,
        "starts within one bucket of the real start: {start} vs {spike_start:?}"
    );
    // Requests flow until the breaker trips, then one probe a second (the cool-down): the last
    // failure seen is within a bucket and a cool-down of the real end, and never after it.
    assert!(
        end <= spike_end.1 + bucket && end > spike_end.0 - 2 * bucket,
        "ends within one bucket (plus the breaker's cool-down) of the real end: {end} vs {spike_end:?}"
    );
    assert!(recovered.is_some(), "{spike}");
    assert_eq!(
        spike["classes"].as_object().map(|c| c.len()),
        Some(1),
        "{spike}"
    );
    assert!(
        spike["classes"]["auth_transient"].as_u64() >= Some(5),
        "{spike}"
    );
    assert!(
        spike["scopes"]["model.request"].as_u64() >= Some(5),
        "{spike}"
    );
    assert!(spike["keys"]["sk-…cdef"].as_u64() >= Some(5), "{spike}");
    assert!(spike["peak_error_share"].as_f64() >= Some(0.99), "{spike}");
    let ids: Vec<&str> = spike["request_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!((1..=5).contains(&ids.len()), "{ids:?}");
    for id in &ids {
        let status = query_i64(
            &s.db(),
            &format!("SELECT http_status FROM attempts WHERE x_request_id = '{id}'"),
        );
        assert_eq!(status, 401, "{id} is one of the spike's 401s");
    }
    assert!(
        spike["verdict"]
            .as_str()
            .is_some_and(|v| v.contains("April 2026")),
        "{spike}"
    );

    // The same job through `runner attempts`: the filters agree with the journal.
    let all_401 = query_i64(
        &s.db(),
        "SELECT count(*) FROM attempts WHERE http_status = 401",
    );
    let csv_text = attempts(&["--db", &db, "--status", "401", "--format", "csv"]).await;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, runner::inspect::attempts::ATTEMPT_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("rows");
    assert_eq!(rows.len() as i64, all_401);
    assert!(
        rows.iter()
            .all(|r| &r[7] == "401" && &r[8] == "auth_transient")
    );
    let window = attempts(&[
        "--db",
        &db,
        "--since",
        spike["start"].as_str().expect("start"),
        "--until",
        spike["end"].as_str().expect("end"),
        "--errors",
        "--format",
        "jsonl",
    ])
    .await;
    let lines: Vec<Value> = window
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl line"))
        .collect();
    assert_eq!(
        lines.len() as u64,
        spike["errors"].as_u64().expect("errors")
    );
    assert!(lines.iter().any(|l| l["x_request_id"] == ids[0]));
    let last = attempts(&["--db", &db, "--custom-id", "r-7", "--limit", "1"]).await;
    assert_eq!(last.lines().count(), 2, "header and one row:\n{last}");
    assert!(
        last.lines()
            .nth(1)
            .is_some_and(|l| l.contains("r-7") && l.contains("succeeded"))
    );
    let nothing = attempts(&["--db", &db, "--until", "1h", "--format", "jsonl"]).await;
    assert_eq!(nothing, "", "nothing was sent before an hour ago");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_estimates_cost_with_the_prices_given() {
    let fx = Fixture::for_job("cost").prompts(0..20).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let db = fx.db_arg();
    let plain: Value = serde_json::from_str(&status(&["--db", &db, "--json"]).await).expect("json");
    assert_eq!(
        plain["cost"]["unpriced_models"],
        serde_json::json!(["test-model"])
    );
    assert_eq!(plain["cost"]["estimate_usd"], 0.0);
    assert_eq!(plain["cost"]["is_estimate"], true);
    let prompt = plain["tokens"]["prompt"].as_f64().expect("prompt tokens");
    let completion = plain["tokens"]["completion"]
        .as_f64()
        .expect("completion tokens");
    assert!(prompt > 0.0 && completion > 0.0);

    let prices = fx.scratch.write(
        "prices.csv",
        "model,input,output\ntest-model,1000000,2000000\n",
    );
    let priced: Value = serde_json::from_str(
        &status(&[
            "--db",
            &db,
            "--json",
            "--prices",
            &prices.display().to_string(),
        ])
        .await,
    )
    .expect("json");
    assert_eq!(priced["cost"]["estimate_usd"], prompt + 2.0 * completion);
    let flag: Value = serde_json::from_str(
        &status(&["--db", &db, "--json", "--price", "test-model=1000000,0"]).await,
    )
    .expect("json");
    assert_eq!(flag["cost"]["estimate_usd"], prompt);
    let text = status(&["--db", &db]).await;
    assert!(text.contains("no price for test-model"), "{text}");
    assert!(text.contains("built-in prices of 2025-08-07"), "{text}");

    // Each row's cost in the CSV export: its own usage at the price given; the rows add up to
    // the status total.
    let out = crate::support::bin::output(fx.bin(&[
        "export",
        "--db",
        &db,
        "--price",
        "test-model=1000000,2000000",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0));
    let mut csv = csv::Reader::from_reader(&out.stdout[..]);
    let header = csv.headers().expect("header").clone();
    let at = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (cost, p, c) = (at("cost_usd"), at("prompt_tokens"), at("completion_tokens"));
    let mut sum = 0.0;
    for row in csv.records() {
        let row = row.expect("row");
        let number = |i: usize| row[i].parse::<f64>().expect("a number");
        assert!(
            (number(cost) - (number(p) + 2.0 * number(c))).abs() < 1e-6,
            "{row:?}"
        );
        sum += number(cost);
    }
    assert!((sum - (prompt + 2.0 * completion)).abs() < 1e-6, "{sum}");
    let (_, rows) = fx.export_csv();
    assert!(
        rows.iter().all(|row| row[at("cost_usd")].is_empty()),
        "no price, no cost: an empty cell, never a made-up zero"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let fx = Fixture::for_job("pipe").prompts(0..1500).start().await;
    assert_eq!(fx.submit(&["--concurrency", "64"]).await, Exit::Success);
    let db = fx.db_arg();
    for format in ["csv", "jsonl", "table"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
        cmd.args(["attempts", "--db", &db, "--format", format])
            .env_remove("RUNNER_DB")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = within(
            "attempts into a closed pipe",
            tokio::task::spawn_blocking(move || {
                let mut child = cmd.spawn().expect("spawn");
                let mut first = String::new();
                BufReader::new(child.stdout.take().expect("stdout"))
                    .read_line(&mut first)
                    .expect("read");
                // Dropping the reader closes the pipe with most rows unwritten.
                assert!(!first.is_empty());
                child.wait_with_output().expect("wait")
            }),
        )
        .await
        .expect("join");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}");
        assert!(
            !stderr.contains("panicked") && stderr.is_empty(),
            "{format}: {stderr}"
        );
    }
    fx.shutdown().await;
}
