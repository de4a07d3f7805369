//! The real binary: help, usage errors, exit codes, stdout hygiene, a closed pipe, secrets,
//! and kill -9 at random moments followed by resume.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use runner::mock::{MockConfig, MockServer};

use crate::support::bin::{output, runner, text};
use crate::support::*;

#[tokio::test]
async fn help_lists_every_command() {
    let s = Scratch::new();
    let mut cmd = runner(s.dir.path());
    cmd.arg("--help");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for command in [
        "submit",
        "resume",
        "status",
        "export",
        "jobs",
        "mock-server",
        "demo",
        "retry-failed",
        "attempts",
        "timeline",
        "report",
        "doctor",
        "completions",
        "man",
    ] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }
    assert!(help.contains("Examples:\n  runner demo"), "{help}");
    let mut cmd = runner(s.dir.path());
    cmd.args(["submit", "--help"]);
    let help = text(&output(cmd).await.stdout);
    for flag in [
        "--job",
        "--db",
        "--base-url",
        "--endpoint",
        "--model",
        "--concurrency",
        "--rpm",
        "--max-attempts",
        "--timeout",
        "--no-progress",
    ] {
        assert!(help.contains(flag), "submit --help lacks {flag}");
    }
    assert!(!help.contains("--api-key"), "keys are never flags");
    // The flags most runs need come first, the rest in groups, then examples.
    let at = |text: &str| {
        help.find(text)
            .unwrap_or_else(|| panic!("no {text}:\n{help}"))
    };
    assert!(
        at("--model") < at("Pacing:") && at("--rpm") < at("Pacing:"),
        "{help}"
    );
    assert!(at("Retries:") < at("--max-attempts"), "{help}");
    assert!(at("Examples:") > at("--delete-batch-files"), "{help}");
    for command in ["resume", "retry-failed"] {
        let mut cmd = runner(s.dir.path());
        cmd.args([command, "--help"]);
        let help = text(&output(cmd).await.stdout);
        for heading in ["Pacing:", "Retries:", "Connection:", "Batch API:"] {
            assert!(help.contains(heading), "{command} --help lacks {heading}");
        }
    }
}

/// `runner ARGS` in a scratch directory: exit code 0, stdout as text.
async fn stdout_of(s: &Scratch, args: &[&str]) -> String {
    let mut cmd = runner(s.dir.path());
    cmd.args(args);
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[tokio::test]
async fn completions_cover_every_shell_and_the_commands() {
    let s = Scratch::new();
    let bash = stdout_of(&s, &["completions", "bash"]).await;
    for word in ["submit", "resume", "--concurrency", "retry-failed"] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let script = stdout_of(&s, &["completions", shell]).await;
        assert!(
            script.contains("resume") && script.contains("concurrency"),
            "{shell} completions lack resume or --concurrency:\n{script}"
        );
    }
    let mut cmd = runner(s.dir.path());
    cmd.args(["completions", "tcsh"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[tokio::test]
async fn man_page_is_roff_listing_the_subcommands() {
    let s = Scratch::new();
    let page = stdout_of(&s, &["man"]).await;
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "not roff:\n{page}"
    );
    assert!(page.contains(".TH runner 1"), "{page}");
    assert!(page.contains("SUBCOMMANDS"), "{page}");
    assert!(page.contains("runner\\-submit(1)"), "{page}");

    let dir = s.dir.path().join("man1");
    let out = stdout_of(&s, &["man", "--dir", "man1"]).await;
    assert!(out.is_empty(), "stdout carries nothing with --dir: {out}");
    for name in [
        "runner.1",
        "runner-submit.1",
        "runner-completions.1",
        "runner-man.1",
    ] {
        let page = std::fs::read_to_string(dir.join(name)).expect(name);
        assert!(page.contains(".TH"), "{name}:\n{page}");
    }
    let submit = std::fs::read_to_string(dir.join("runner-submit.1")).expect("submit page");
    assert!(submit.contains("concurrency"), "{submit}");
    assert!(!dir.join("runner-help.1").exists(), "help has no page");
}

#[tokio::test]
async fn completions_into_a_closed_pipe_end_quietly() {
    let s = Scratch::new();
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let mut cmd = runner(s.dir.path());
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = within(
            "a generator into a closed pipe",
            tokio::task::spawn_blocking(move || {
                let mut child = cmd.spawn().expect("spawn");
                // Closed before the binary has started writing (or, at worst, after it wrote
                // everything into the pipe's buffer): either way it ends with 0 and no panic.
                drop(child.stdout.take());
                child.wait_with_output().expect("wait")
            }),
        )
        .await
        .expect("join");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let s = Scratch::new();
    for args in [
        &["submit"][..],
        &["bogus"][..],
        &["submit", "x.jsonl", "--concurrency", "0"][..],
        &["submit", "x.jsonl", "--timeout", "0s"][..],
        &["resume", "--poll-interval", "0ms"][..],
        &["timeline", "--bucket", "0s"][..],
        &["doctor", "--timeout", "0s"][..],
    ] {
        let mut cmd = runner(s.dir.path());
        cmd.args(args);
        let out = output(cmd).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_1_naming_file_and_line_and_sends_nothing() {
    let fx = Fixture::for_job("bad")
        .input("{\"prompt\":\"fine\"}\n{\"prompt\": oops}\n")
        .start()
        .await;
    let out = output(fx.bin(&[
        "submit",
        "bad.jsonl",
        "--base-url",
        &fx.url(),
        "--no-progress",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.jsonl:2: invalid JSON at column "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("at line 1"),
        "the file's line is the only line named: {stderr}"
    );
    assert!(
        stderr.contains("--skip-invalid"),
        "the way past a bad line is named: {stderr}"
    );
    assert_eq!(fx.mock.stats().answers, 0);
    fx.shutdown().await;
}

/// A keys file that cannot be used is said before the input is read or anything is written:
/// no job is left `running` behind a message about the database.
#[tokio::test]
async fn an_unusable_keys_file_is_refused_before_anything_is_written() {
    let s = Scratch::new();
    s.prompts("p.jsonl", 0..2);
    s.write(
        "keys.txt",
        "a=sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa\na=sk-proj-bbbbbbbbbbbbbbbbbbbbbbbb\n",
    );
    let mut cmd = runner(s.dir.path());
    cmd.args([
        "submit",
        "p.jsonl",
        "--keys-file",
        "keys.txt",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--no-progress",
    ]);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("keys.txt:2") && stderr.contains("label 'a'"),
        "{stderr}"
    );
    assert!(!stderr.contains("database"), "{stderr}");
    if s.db().exists() {
        assert_eq!(query_i64(&s.db(), "SELECT count(*) FROM jobs"), 0);
    }
}

#[tokio::test]
async fn openai_without_a_key_is_a_clear_error() {
    let s = Scratch::new();
    s.prompts("p.jsonl", 0..2);
    let mut cmd = runner(s.dir.path());
    cmd.args(["submit", "p.jsonl", "--no-progress"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("OPENAI_API_KEY is not set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_0_3_4_and_stdout_carries_data_only() {
    let bad_key = "sk-proj-revoked-0000000000000000";
    let fx = Fixture::for_job("ok")
        .mock(MockConfig {
            invalid_keys: vec![bad_key.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..20)
        .start()
        .await;
    let (s, url) = (&fx.scratch, fx.url());
    let out = output(fx.bin(&["submit", "ok.jsonl", "--base-url", &url, "--no-progress"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "submit prints nothing on stdout");
    assert!(
        text(&out.stderr).contains("ok: completed"),
        "{}",
        text(&out.stderr)
    );

    s.write(
        "some-bad.jsonl",
        "{\"prompt\":\"a\"}\n{\"prompt\":\"b\",\"mock_status\":422}\n",
    );
    let cmd = fx.bin(&[
        "submit",
        "some-bad.jsonl",
        "--base-url",
        &url,
        "--no-progress",
    ]);
    assert_eq!(output(cmd).await.status.code(), Some(3));

    s.prompts("stop.jsonl", 0..5);
    let mut cmd = fx.bin(&["submit", "stop.jsonl", "--base-url", &url, "--no-progress"]);
    cmd.env("OPENAI_API_KEY", bad_key);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("set a valid key (OPENAI_API_KEY"),
        "{}",
        text(&out.stderr)
    );

    // Read-only commands write their data to stdout.
    let out = output(fx.bin(&["export", "--job", "ok"])).await;
    assert_eq!(out.status.code(), Some(0));
    let csv = text(&out.stdout);
    assert_eq!(csv.lines().count(), 21, "header + 20 rows");
    assert!(csv.starts_with("custom_id,status,http_status,attempts,output_text,"));

    let out = output(fx.bin(&["status", "--job", "stop", "--json"])).await;
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["requests"]["pending"], 5);

    let jobs = text(&output(fx.bin(&["jobs"])).await.stdout);
    for job in ["ok", "some-bad", "stop"] {
        assert!(jobs.contains(job), "{jobs}");
    }
    fx.shutdown().await;
}

/// `runner submit … 2>&1 | head -1`: once stderr is closed, the run still ends as it would
/// (exit 0, the lease released, every request journaled) instead of panicking (101) at its
/// next line on stderr and skipping the release of its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_stderr_is_closed_still_ends_cleanly() {
    let fx = Fixture::for_job("quiet").prompts(0..50).start().await;
    let mut cmd = fx.bin_submit(&["--concurrency", "8"]);
    cmd.env("OPENAI_API_KEY", "sk-test-closed-stderr-0000");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let status = within(
        "a submit with its stderr closed",
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("spawn");
            // Closed before the binary's first line (its destination) or, at worst, after a
            // few lines went into the pipe's buffer: every later line meets a closed pipe.
            drop(child.stderr.take());
            child.wait().expect("wait")
        }),
    )
    .await
    .expect("join");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(fx.requests_in("succeeded"), 50);
    assert_eq!(
        query_text(
            &fx.db(),
            "SELECT coalesce(lease_owner, 'released') FROM jobs"
        )
        .as_deref(),
        Some("released")
    );
    assert_eq!(
        query_text(&fx.db(), "SELECT state FROM jobs").as_deref(),
        Some("completed")
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_into_a_closed_pipe_ends_quietly() {
    let fx = Fixture::for_job("pipe").prompts(0..3000).start().await;
    let submit = fx.bin(&[
        "submit",
        "pipe.jsonl",
        "--base-url",
        &fx.url(),
        "--no-progress",
        "--concurrency",
        "64",
    ]);
    assert_eq!(output(submit).await.status.code(), Some(0));
    let out = within(
        "export into a closed pipe",
        tokio::task::spawn_blocking({
            let mut cmd = fx.bin(&["export"]);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            move || {
                let mut child = cmd.spawn().expect("spawn");
                let mut first = String::new();
                BufReader::new(child.stdout.take().expect("stdout"))
                    .read_line(&mut first)
                    .expect("read");
                // Dropping the reader closes the pipe with most of the CSV unwritten.
                assert!(first.starts_with("custom_id,"));
                child.wait_with_output().expect("wait")
            }
        }),
    )
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_never_written_anywhere() {
    let key = "sk-proj-DISTINCTIVE-secret-key-4f7c2a9e1b";
    let fx = Fixture::for_job("secret")
        .mock(MockConfig {
            missing_scope_rate: 0.3,
            ..MockConfig::default()
        })
        .prompts(0..50)
        .start()
        .await;
    let s = &fx.scratch;
    let mut cmd = fx.bin(&[
        "submit",
        "secret.jsonl",
        "--base-url",
        &fx.url(),
        "--no-progress",
    ]);
    cmd.env("OPENAI_API_KEY", key).env("RUNNER_LOG", "trace");
    let submit = output(cmd).await;
    assert_eq!(submit.status.code(), Some(0));
    let mut outputs = vec![submit.stdout, submit.stderr];
    for args in [
        &["status"][..],
        &["export"][..],
        &["export", "--format", "jsonl"][..],
        &["export", "--output", "results.csv"][..],
    ] {
        let mut cmd = fx.bin(args);
        cmd.env("OPENAI_API_KEY", key);
        let out = output(cmd).await;
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    for file in std::fs::read_dir(s.dir.path()).expect("dir") {
        outputs.push(std::fs::read(file.expect("entry").path()).expect("read"));
    }
    let secret = key.as_bytes();
    for (i, bytes) in outputs.iter().enumerate() {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the key leaked into output #{i}"
        );
    }
    // What the journal keeps instead: the fingerprint.
    assert!(
        query_i64(
            &s.db(),
            "SELECT count(*) FROM attempts WHERE key_fingerprint = 'sk-proj-…9e1b'"
        ) >= 50
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.db()).expect("db").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the database is private: {mode:o}");
    let mode = std::fs::metadata(s.path("results.csv"))
        .expect("export file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the export file is private: {mode:o}");
    fx.shutdown().await;
}

/// Answers of any status per custom id, per the mock's counters.
fn answers_by_id(mock: &MockServer, n: usize) -> HashMap<String, u64> {
    let stats = mock.stats();
    (0..n)
        .map(|i| (format!("r-{i}"), stats.answers_for(&sent_body(i))))
        .collect()
}

/// Successful answers per custom id, per the mock's counters.
fn successes_by_id(mock: &MockServer, n: usize) -> HashMap<String, u64> {
    let stats = mock.stats();
    (0..n)
        .map(|i| (format!("r-{i}"), stats.successes_for(&sent_body(i))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_then_resume_loses_nothing_and_resends_no_success() {
    const N: usize = 3000;
    const KILLS: usize = 5;
    let fx = Fixture::for_job("crash")
        .mock(MockConfig {
            latency: Duration::from_millis(5),
            missing_scope_rate: 0.05,
            ..MockConfig::default()
        })
        .prompts(0..N)
        .start()
        .await;
    let (s, mock) = (&fx.scratch, &fx.mock);
    let url = mock.base_url();
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    eprintln!("kill schedule seed {seed}");
    // Per request: how often the mock had answered it when the journal first showed it
    // succeeded. Answers, not successes: a resend that drew an error (5% are 401s here) is
    // still a request sent twice.
    let mut frozen: HashMap<String, u64> = HashMap::new();
    for kill in 0..KILLS {
        let mut cmd = runner(s.dir.path());
        if kill == 0 {
            cmd.args([
                "submit",
                "crash.jsonl",
                "--base-url",
                &url,
                "--model",
                "test-model",
            ]);
        } else {
            cmd.arg("resume");
        }
        cmd.args(["--no-progress", "--concurrency", "16"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child: Child = cmd.spawn().expect("spawn");
        let target = mock.stats().successes() + rng.u64(50..400);
        wait_until("progress before the kill", || {
            mock.stats().successes() >= target
        })
        .await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let answers = answers_by_id(mock, N);
        for key in journaled_successes(&s.db()) {
            frozen.entry(key.clone()).or_insert(answers[&key]);
        }
    }
    let mut cmd = runner(s.dir.path());
    cmd.args(["resume", "--no-progress"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let counts = successes_by_id(mock, N);
    let interrupted = interrupted_ids(&s.db());
    assert!(
        !interrupted.is_empty(),
        "the kills landed while requests were in flight"
    );
    for (key, n) in &counts {
        assert!(*n >= 1, "{key} never succeeded");
        assert!(
            *n == 1 || interrupted.contains(key),
            "{key} got {n} successful answers but was never in flight at a kill"
        );
    }
    let answers = answers_by_id(mock, N);
    for (key, at_freeze) in &frozen {
        assert_eq!(
            answers[key], *at_freeze,
            "{key} was sent again after its success was journaled"
        );
    }
    let extra: u64 = counts.values().map(|n| n - 1).sum();
    assert!(
        extra <= (KILLS * 16) as u64,
        "at most the requests in flight at each kill: {extra}"
    );

    let (header, rows) = fx.export_csv();
    assert_eq!(rows.len(), N, "exactly one row per request");
    assert!(
        rows.iter()
            .all(|r| cell(&header, r, "status") == "succeeded")
    );
    assert_eq!(integrity(&fx.db()), "ok");
    fx.shutdown().await;
}

#[tokio::test]
async fn demo_runs_with_no_key_and_no_network() {
    let s = Scratch::new();
    let mut cmd = runner(s.dir.path());
    cmd.args(["demo", "--no-progress"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let csv = std::fs::read_to_string(s.path("demo-results.csv")).expect("demo writes its CSV");
    assert_eq!(csv.lines().count(), 301);
    assert!(
        text(&out.stderr).contains("demo: completed · 300/300 done"),
        "{}",
        text(&out.stderr)
    );
}

/// A mistyped base URL: nothing listens there. The run stops within a minute with the exit
/// code of a job-level stop, naming the URL and "connection refused", instead of retrying
/// for hours; nothing is lost, and a resume against the right URL finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_where_nothing_listens_stops_the_job_with_what_to_check() {
    let fx = Fixture::for_job("nowhere").prompts(0..30).start().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        format!("http://127.0.0.1:{port}/v1")
    };
    let cmd = fx.bin(&[
        "submit",
        "nowhere.jsonl",
        "--base-url",
        &dead,
        "--model",
        "test-model",
        "--no-progress",
    ]);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains(&dead), "names the URL: {stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(stderr.contains("runner resume"), "{stderr}");
    assert_eq!(fx.mock.stats().answers, 0);

    let url = fx.url();
    let out = output(fx.bin(&[
        "resume",
        "--job",
        "nowhere",
        "--base-url",
        &url,
        "--no-progress",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fx.mock.stats().answers, 30, "each line once");
    fx.shutdown().await;
}

/// A job stopped on a wrong `--model` is fixed in place: `resume --model RIGHT` sends every
/// line once with the right model, and a resubmit with it adds no copy of any request. The
/// second half of the lines name a model of their own, which the fix leaves alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_model_is_fixed_in_place_by_resume_model() {
    let lines: String = (0..60)
        .map(|i| match i < 30 {
            true => format!("{{\"prompt\":\"p {i}\"}}\n"),
            false => format!("{{\"prompt\":\"p {i}\",\"model\":\"own-model\"}}\n"),
        })
        .collect();
    let fx = Fixture::for_job("models")
        .mock(MockConfig {
            unknown_models: vec!["wrong-model".to_owned()],
            ..MockConfig::default()
        })
        .input(lines)
        .start()
        .await;
    let url = fx.url();
    let submit = |model: &'static str| {
        fx.bin(&[
            "submit",
            "models.jsonl",
            "--base-url",
            &url,
            "--model",
            model,
            "--no-progress",
            "--concurrency",
            "1",
            "--stop-after-same-error",
            "5",
        ])
    };
    let out = output(submit("wrong-model")).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(fx.requests_in("succeeded") + fx.requests_in("pending"), 60);

    let out = output(fx.bin(&["resume", "--model", "right-model", "--no-progress"])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("had wrong-model from --model: they are sent with right-model"),
        "{stderr}"
    );
    assert_eq!(fx.requests_in("succeeded"), 60);
    let db = fx.db();
    let models = |model: &str| {
        query_i64(
            &db,
            &format!(
                "SELECT count(*) FROM requests WHERE json_extract(body, '$.model') = '{model}'"
            ),
        )
    };
    assert_eq!((models("right-model"), models("own-model")), (30, 30));
    let stats = fx.mock.stats();
    assert_eq!(
        stats.successes(),
        60,
        "every line answered once, none twice"
    );
    for i in 0..60 {
        let model = if i < 30 { "right-model" } else { "own-model" };
        let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": format!("p {i}")}]});
        assert_eq!(stats.successes_for(&body), 1, "line {i}");
    }

    // The file again, with the model that works: nothing new, nothing sent.
    let out = output(submit("right-model")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(query_i64(&fx.db(), "SELECT count(*) FROM requests"), 60);
    assert_eq!(fx.mock.stats().successes(), 60);
    fx.shutdown().await;
}

/// A line that names no model, with no `--model`: refused before anything is sent (or
/// written) where the server needs a model (OpenAI, Azure's v1 API), sent with a warning to a
/// local server, which may have only one model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_without_a_model_is_refused_where_the_server_needs_one() {
    let fx = Fixture::for_job("nomodel")
        .input("{\"prompt\":\"one\",\"model\":\"m\"}\n{\"prompt\":\"two\"}\n")
        .start()
        .await;
    for base_url in [None, Some("https://res.openai.azure.com/openai/v1")] {
        let mut cmd = fx.bin(&["submit", "nomodel.jsonl", "--no-progress"]);
        cmd.env("OPENAI_API_KEY", "sk-test-0123456789abcdef");
        if let Some(url) = base_url {
            cmd.args(["--base-url", url]);
        }
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{base_url:?}: {stderr}");
        assert!(
            stderr.contains("nomodel.jsonl:2: names no model, and the server needs one"),
            "{stderr}"
        );
        assert!(
            !fx.db().exists(),
            "a refused submit leaves no journal behind"
        );
    }
    let out = output(fx.bin(&[
        "submit",
        "nomodel.jsonl",
        "--no-progress",
        "--base-url",
        &fx.url(),
    ]))
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("nomodel.jsonl:2: names no model and no --model was given"),
        "{stderr}"
    );
    assert_eq!(fx.requests_in("succeeded"), 2);
    fx.shutdown().await;
}
