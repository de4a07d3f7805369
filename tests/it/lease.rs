//! One runner per job: a second `submit` or `resume` of a running job is refused, read-only
//! commands keep working, and the lease of a runner that was killed does not block `resume`.

use std::time::Duration;

use runner::Exit;
use runner::engine::shutdown::Shutdown;
use runner::mock::MockConfig;

use crate::support::bin::{Running, output, runner, text};
use crate::support::*;

/// A mock whose answers take ten minutes: requests stay in flight for as long as a test needs.
fn hanging() -> MockConfig {
    MockConfig {
        latency: Duration::from_secs(600),
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_submit_or_resume_of_a_running_job_is_refused_and_read_only_commands_work() {
    let fx = Fixture::for_job("busy")
        .mock(hanging())
        .prompts(0..20)
        .start()
        .await;
    let submit = |base_url: &str| {
        fx.bin(&[
            "submit",
            "busy.jsonl",
            "--base-url",
            base_url,
            "--model",
            "test-model",
            "--no-progress",
            "--concurrency",
            "4",
        ])
    };
    let first = Running::spawn(submit(&fx.url()));
    let db = fx.db();
    wait_until("the first runner's requests in flight", || {
        try_query_i64(
            &db,
            "SELECT count(*) FROM requests WHERE state = 'in_flight'",
        ) == Some(4)
    })
    .await;
    let holder = format!(
        "job 'busy' is already running in pid {} on host ",
        first.pid()
    );

    let fast = mock(MockConfig::default()).await;
    let second = output(submit(&fast.base_url())).await;
    assert_eq!(second.status.code(), Some(1));
    let stderr = text(&second.stderr);
    assert!(stderr.starts_with(&format!("runner: {holder}")), "{stderr}");
    assert!(
        stderr.contains(&format!("`kill -INT {}`", first.pid())),
        "{stderr}"
    );
    let resumed = output(fx.bin(&[
        "resume",
        "--job",
        "busy",
        "--base-url",
        &fast.base_url(),
        "--no-progress",
    ]))
    .await;
    assert_eq!(resumed.status.code(), Some(1));
    assert!(
        text(&resumed.stderr).contains(&holder),
        "{}",
        text(&resumed.stderr)
    );
    assert_eq!(fast.stats().answers, 0, "the refused runners sent nothing");

    // Read-only commands work while the job runs.
    for (args, expected) in [
        (&["status"][..], "job       busy (running)"),
        (&["export"][..], "r-19,pending,"),
        (&["jobs"][..], "busy"),
    ] {
        let out = output(fx.bin(args)).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(stdout.contains(expected), "{args:?}: {stdout}");
    }
    let status = text(&output(fx.bin(&["status"])).await.stdout);
    assert!(
        status.contains(&format!("runner    pid {} on host", first.pid())),
        "status names the runner: {status}"
    );
    assert_eq!(
        requests_in(&fx.db(), "in_flight"),
        4,
        "the refused runners left the running job alone"
    );

    first.signal("INT");
    first
        .wait_for_stderr("stopping: waiting for requests in flight")
        .await;
    first.signal("INT");
    let (status, stderr) = first.wait().await;
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_eq!(
        query_text(&fx.db(), "SELECT lease_owner FROM jobs"),
        None,
        "released at the end"
    );
    let s = fx.shutdown().await;

    let mut cmd = runner(s.dir.path());
    cmd.args(["resume", "--no-progress", "--base-url", &fast.base_url()]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fast.stats().successes(), 20);
    fast.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_submits_started_together_exactly_one_runs() {
    let fx = Fixture::for_job("race")
        .mock(hanging())
        .prompts(0..10)
        .start()
        .await;
    let shutdown = Shutdown::new();
    let start = |shutdown: Shutdown| fx.spawn_submit(&["--concurrency", "2"], shutdown);
    let (a, b) = (start(shutdown.clone()), start(shutdown.clone()));
    // The loser ends at once; the winner runs until it is aborted.
    let loser = within("one submit is refused", async {
        loop {
            if a.is_finished() {
                break (a, b);
            }
            if b.is_finished() {
                break (b, a);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (refused, winner) = loser;
    let err = refused
        .await
        .expect("task")
        .expect_err("the second runner is refused");
    assert!(
        format!("{err:#}").starts_with("job 'race' is already running in pid "),
        "{err:#}"
    );
    shutdown.abort();
    let exit = within("the aborted winner", winner)
        .await
        .expect("task")
        .expect("runs");
    assert_eq!(exit, Exit::Interrupted);
    assert_eq!(
        query_i64(&fx.db(), "SELECT count(*) FROM requests"),
        10,
        "the file was ingested once"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_killed_runner_does_not_block_resume() {
    let fx = Fixture::for_job("killed")
        .mock(MockConfig {
            latency: Duration::from_millis(20),
            ..MockConfig::default()
        })
        .prompts(0..400)
        .start()
        .await;
    let run = Running::spawn(fx.bin_submit(&["--concurrency", "2"]));
    wait_until("some successes", || fx.mock.stats().successes() >= 10).await;
    let pid = run.pid();
    run.kill_9().await;
    let left = query_text(&fx.db(), "SELECT lease_owner FROM jobs").expect("the lease is left");
    assert!(left.starts_with(&format!("pid {pid} on host ")), "{left}");

    let out = output(fx.bin(&["resume", "--no-progress"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    // Taken over because the holder is gone, not because its lease ran out (30 s).
    assert!(
        stderr.contains(&format!(
            "killed: took over the job from {left}, which is no longer running"
        )),
        "{stderr}"
    );
    let twice = interrupted_ids(&fx.db());
    let stats = fx.mock.stats();
    for i in 0..400 {
        let n = stats.successes_for(&sent_body(i));
        assert!(
            n == 1 || (n == 2 && twice.contains(&format!("r-{i}"))),
            "request {i} succeeded {n} times"
        );
    }
    assert_eq!(query_text(&fx.db(), "SELECT lease_owner FROM jobs"), None);
    fx.shutdown().await;
}
