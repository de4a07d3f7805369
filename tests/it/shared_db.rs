//! Two runners, one database: a `submit` ingesting a big file into the default database while
//! another job runs there and a third small `submit` starts. The big ingest commits in short
//! transactions, so neither of the others waits long for the write lock; its lines stay
//! invisible until they are all read; a `kill -9` mid-ingest leaves nothing visible, and the next
//! resume or submit of the job clears what it staged.
//!
//! The big job's file is mostly requests that already succeeded (seeded through the library, as
//! a finished earlier run of the same file would leave them): its `submit` reads every line, yet
//! sends only the few new ones, so the test takes seconds, not a run of 300,000 requests.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::bin::{Running, output, output_within, runner, text};
use crate::support::*;
use runner::input::{CHAT_ENDPOINT, DEFAULT_MAX_LINE_BYTES, InputOptions, InputReader};
use runner::mock::{MockConfig, MockServer};
use runner::store::BUSY_TIMEOUT_ENV;

/// The busy timeout of every process in these tests: far less than one transaction reading the
/// whole big file takes, so a single-transaction ingest would make the others fail.
const BUSY_TIMEOUT_MS: &str = "1000";

/// The bound on one run that reads the whole big file: about 40 s alone in a debug build here,
/// and more beside the rest of the suite. Not a speed goal (benchmarks hold those): a bound.
const BIG_RUN_LIMIT: Duration = Duration::from_secs(240);

/// The big job's requests: `BIG.start..BIG.end`, of which the last [`NEW`] are new to it.
const BIG: std::ops::Range<usize> = 1_000_000..1_300_000;
const NEW: usize = 10;

/// `runner submit FILE --job JOB` against the mock, with the short busy timeout.
fn submit(dir: &Path, file: &str, job: &str, server: &MockServer) -> std::process::Command {
    let mut cmd = runner(dir);
    cmd.args([
        "submit",
        file,
        "--job",
        job,
        "--base-url",
        &server.base_url(),
        "--model",
        "test-model",
        "--no-progress",
    ])
    .env(BUSY_TIMEOUT_ENV, BUSY_TIMEOUT_MS);
    cmd
}

/// Creates job `big` holding every request of `BIG` but the last [`NEW`], all succeeded, and
/// writes `big.jsonl` with all of `BIG`.
async fn seed_big_job(s: &Scratch, server: &MockServer) {
    s.prompts("seed.jsonl", BIG.start..BIG.start + 1);
    let out = output(submit(s.dir.path(), "seed.jsonl", "big", server)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    s.prompts("known.jsonl", BIG.start..BIG.end - NEW);
    s.prompts("big.jsonl", BIG);
    let conn = runner::store::open_writer(&s.db()).expect("db opens");
    let job = runner::store::db::find_job(&conn, "big")
        .expect("query")
        .expect("job big");
    let options = InputOptions {
        endpoint: CHAT_ENDPOINT.into(),
        model: Some("test-model".into()),
        max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        ..InputOptions::default()
    };
    let reader = InputReader::open(&s.path("known.jsonl"), options).expect("input");
    runner::store::ingest::ingest(&conn, job.id, reader).expect("seed");
    conn.execute(
        "UPDATE requests SET state = 'succeeded', attempts = 1, finished_at = 1
         WHERE job_id = ?1 AND state = 'pending'",
        [job.id.0],
    )
    .expect("succeeded");
}

fn big_requests(db: &Path) -> i64 {
    query_i64(
        db,
        "SELECT count(*) FROM requests JOIN jobs ON jobs.id = job_id WHERE jobs.name = 'big'",
    )
}

fn staged(db: &Path) -> i64 {
    try_query_i64(db, "SELECT count(*) FROM ingest_staging").unwrap_or(0)
}

/// Waits (bounded in time) until `big`'s submit has committed some staged lines, checking at
/// every look that none of its file is visible yet.
async fn wait_until_staging(db: &Path, big: &mut Running) {
    let visible_before = (BIG.len() - NEW) as i64;
    wait_until("the big ingest has staged lines", || {
        assert!(
            big.try_status().is_none(),
            "the big submit ended before it was seen staging:\n{}",
            big.stderr()
        );
        assert_eq!(
            big_requests(db),
            visible_before,
            "a half-read file is invisible"
        );
        staged(db) > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_ingest_neither_fails_a_running_job_nor_a_second_submit_and_shows_nothing_half_read()
{
    const RUNNING: usize = 60;
    const SMALL: std::ops::Range<usize> = 2_000_000..2_000_003;
    let s = Scratch::new();
    let server = mock(MockConfig {
        latency: Duration::from_millis(150),
        ..MockConfig::default()
    })
    .await;
    seed_big_job(&s, &server).await;
    let db = s.db();

    // Job `running` sends its requests, two at a time, for several seconds.
    s.prompts("running.jsonl", 0..RUNNING);
    let mut running_cmd = submit(s.dir.path(), "running.jsonl", "running", &server);
    running_cmd.args(["--concurrency", "2"]);
    let running = Running::spawn(running_cmd);
    wait_until("job running has journaled a success", || {
        try_query_i64(
            &db,
            "SELECT count(*) FROM requests WHERE state = 'succeeded' AND key = 'r-0'",
        )
        .is_some_and(|n| n > 0)
    })
    .await;

    // Job `big` reads its 300,000 lines into the same file.
    let ingest_started = Instant::now();
    let mut big = Running::spawn(submit(s.dir.path(), "big.jsonl", "big", &server));
    wait_until_staging(&db, &mut big).await;

    // A third job is submitted meanwhile.
    s.prompts("small.jsonl", SMALL);
    let small = output(submit(s.dir.path(), "small.jsonl", "small", &server)).await;
    assert_eq!(small.status.code(), Some(0), "{}", text(&small.stderr));

    // Until the publish, `big` shows none of its file (bounded: the ingest ends in WAIT_LIMIT).
    let visible_before = (BIG.len() - NEW) as i64;
    while staged(&db) > 0 && ingest_started.elapsed() < WAIT_LIMIT {
        let n = big_requests(&db);
        assert!(
            n == visible_before || n == BIG.len() as i64,
            "{n} requests visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, stderr) = big.wait().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "read {} requests from big.jsonl: {NEW} new, {} already in the job",
            BIG.len(),
            BIG.len() - NEW
        )),
        "{stderr}"
    );
    let (status, stderr) = running.wait().await;
    assert_eq!(status.code(), Some(0), "{stderr}");

    let stats = server.stats();
    for i in (0..RUNNING).chain(BIG.end - NEW..BIG.end).chain(SMALL) {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    let one_success_each = "SELECT count(*) FROM requests r JOIN jobs j ON j.id = r.job_id
                            WHERE j.name = 'running' AND r.state = 'succeeded'
                              AND (SELECT count(*) FROM attempts a
                                   WHERE a.request_id = r.id AND a.http_status = 200) = 1";
    assert_eq!(query_i64(&db, one_success_each), RUNNING as i64);
    assert_eq!(big_requests(&db), BIG.len() as i64);
    assert_eq!(staged(&db), 0, "no staged line is left");
    assert_eq!(integrity(&db), "ok");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_killed_mid_ingest_leaves_nothing_visible_and_the_next_run_clears_it() {
    let s = Scratch::new();
    let server = mock(MockConfig::default()).await;
    seed_big_job(&s, &server).await;
    let db = s.db();
    let before = big_requests(&db);

    let mut big = Running::spawn(submit(s.dir.path(), "big.jsonl", "big", &server));
    wait_until_staging(&db, &mut big).await;
    big.kill_9().await;
    assert!(staged(&db) > 0, "the dead ingest left staged lines");
    assert_eq!(big_requests(&db), before, "none of them visible");

    // A resume clears them, says so, and runs what was there before.
    let mut resume = runner(s.dir.path());
    resume
        .args(["resume", "--job", "big", "--no-progress"])
        .env(BUSY_TIMEOUT_ENV, BUSY_TIMEOUT_MS);
    let out = output_within(resume, BIG_RUN_LIMIT).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("lines of a submit that stopped while reading its file"),
        "{stderr}"
    );
    assert_eq!(staged(&db), 0);
    assert_eq!(big_requests(&db), before);

    // Killed again, then submitted again: every line once, the new ones sent once.
    let mut big = Running::spawn(submit(s.dir.path(), "big.jsonl", "big", &server));
    wait_until_staging(&db, &mut big).await;
    big.kill_9().await;
    let out = output_within(
        submit(s.dir.path(), "big.jsonl", "big", &server),
        BIG_RUN_LIMIT,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(big_requests(&db), BIG.len() as i64);
    assert_eq!(
        query_i64(&db, "SELECT count(DISTINCT key) FROM requests"),
        BIG.len() as i64,
        "no duplicates"
    );
    assert_eq!(staged(&db), 0, "no leftovers");
    let stats = server.stats();
    for i in BIG.end - NEW..BIG.end {
        assert_eq!(stats.successes_for(&sent_body(i)), 1, "request {i}");
    }
    assert_eq!(integrity(&db), "ok");
    server.shutdown().await;
}
