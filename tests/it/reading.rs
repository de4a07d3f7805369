//! A new job's file: checked whole, then read into the job chunk after chunk while the first
//! requests are already sent (`store::ingest::direct`, `engine::feed`). The pool does not end
//! before the last chunk; a run stopped mid-read (a job-level stop, Ctrl-C) leaves the job
//! marked as reading its file, and `resume` reads the rest: every line is sent, none twice.
//! Where the order of events matters (a file slow to arrive, a file that changed), the pool and
//! the feed are run through the library over a pipe this test writes.

use std::io::{BufReader, PipeWriter, Write};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use runner::Exit;
use runner::domain::Counts;
use runner::engine::config::JobSettings;
use runner::engine::feed::{FEED_CHUNK_LINES, Feeder};
use runner::engine::keys::KeyPool;
use runner::engine::pool::{PoolExit, PoolSettings, WorkerPool};
use runner::engine::progress::Tally;
use runner::engine::rate_limit::RequestLimiter;
use runner::engine::shutdown::Shutdown;
use runner::input::{Checked, DEFAULT_MAX_LINE_BYTES, InputReader};
use runner::mock::MockConfig;
use runner::store::JobStore;
use runner::store::StoreThread;
use runner::store::db::{self, Job};
use runner::util::clock::now_ms;

fn reading_input(db: &std::path::Path) -> i64 {
    query_i64(db, "SELECT reading_input FROM jobs")
}

fn requests(db: &std::path::Path) -> i64 {
    query_i64(db, "SELECT count(*) FROM requests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_chunks_is_sent_whole_in_file_order_each_line_once() {
    let n = 3 * FEED_CHUNK_LINES + 7;
    let fx = Fixture::for_job("chunks").prompts(0..n).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let db = fx.db();
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    assert_succeeded_once(&fx.mock.stats(), 0..n);
    assert_eq!(reading_input(&db), 0, "the whole file is in");
    let fingerprint = blake3::hash(&std::fs::read(&fx.input).expect("input"))
        .to_hex()
        .to_string();
    assert_eq!(
        query_text(&db, "SELECT input_fingerprint FROM jobs").as_deref(),
        Some(fingerprint.as_str())
    );
    // Request ids follow the file, as the staged way makes them.
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM requests a JOIN requests b ON b.id = a.id + 1 WHERE b.line < a.line"
        ),
        0
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_custom_id_get_numbered_keys_across_chunks() {
    // The same body on the first and the last line of a file of several chunks, and twice more
    // in between: four requests, four answers.
    let n = FEED_CHUNK_LINES + 10;
    let same = r#"{"prompt":"the same"}"#;
    let mut lines: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"prompt":"prompt {i}"}}"#))
        .collect();
    for at in [0, 5, FEED_CHUNK_LINES + 1, n - 1] {
        lines[at] = same.to_owned();
    }
    let fx = Fixture::for_job("derived")
        .input(jsonl(&lines))
        .start()
        .await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let db = fx.db();
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    assert_eq!(
        query_i64(
            &db,
            "SELECT count(*) FROM requests WHERE key LIKE 'auto-%#%'"
        ),
        3,
        "the second to fourth copies are numbered"
    );
    let body = serde_json::json!({"model": "test-model", "messages": [{"role": "user", "content": "the same"}]});
    assert_eq!(fx.mock.stats().successes_for(&body), 4);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_while_its_file_is_read_is_finished_by_resume_each_line_once() {
    // An invalid key stops the job at its first answer, long before 10 chunks are in.
    let n = 10 * FEED_CHUNK_LINES;
    let bad = "sk-revoked-0000000000000000";
    let fx = Fixture::for_job("stopped")
        .mock(MockConfig {
            invalid_keys: vec![bad.to_owned()],
            ..MockConfig::default()
        })
        .prompts(0..n)
        .env(env_with_key(bad))
        .start()
        .await;
    let mut submit = fx.bin_submit(&[]);
    submit.env("OPENAI_API_KEY", bad);
    let out = bin::output(submit).await;
    let stderr = bin::text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(
            "is not read to its end yet: `runner resume --job stopped` reads the rest first"
        ),
        "{stderr}"
    );
    let db = fx.db();
    assert_eq!(reading_input(&db), 1, "stopped mid-read");
    let read = requests(&db);
    assert!(read > 0 && read < n as i64, "{read} of {n} requests read");
    assert_eq!(fx.requests_in("succeeded"), 0);
    let db_arg = fx.db_arg();
    let status = bin::output(fx.bin(&["status", "--db", &db_arg])).await;
    let shown = bin::text(&status.stdout);
    assert!(
        shown.contains("not read to its end: `runner resume` reads the rest"),
        "{shown}"
    );

    let exit = within(
        "resume",
        run(&["resume", "--db", &db_arg, "--no-progress"], env()),
    )
    .await
    .expect("resume");
    assert_eq!(exit, Exit::Success);
    assert_eq!(reading_input(&db), 0);
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    assert_succeeded_once(&fx.mock.stats(), 0..n);
    assert_eq!(
        query_i64(&db, "SELECT count(DISTINCT key) FROM requests"),
        n as i64
    );
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reads_the_rest_of_a_file_with_the_limit_on_line_length_the_submit_had() {
    // The last line is longer than the default limit, which the submit raised; the job stops at
    // its first answer (an invalid key), long before that line is read in. Resume must read it
    // with the submit's limit, not refuse the file.
    let n = 10 * FEED_CHUNK_LINES;
    let bad = "sk-revoked-0000000000000000";
    let mut text: String = (0..n).map(|i| format!("{}\n", prompt_line(i))).collect();
    let long = "x".repeat(DEFAULT_MAX_LINE_BYTES);
    text.push_str(&serde_json::json!({"custom_id": "long", "prompt": long}).to_string());
    text.push('\n');
    let fx = Fixture::for_job("long")
        .mock(MockConfig {
            invalid_keys: vec![bad.to_owned()],
            ..MockConfig::default()
        })
        .input(text)
        .env(env_with_key(bad))
        .start()
        .await;
    let limit = (2 * DEFAULT_MAX_LINE_BYTES).to_string();
    let mut submit = fx.bin_submit(&["--max-line-bytes", &limit]);
    submit.env("OPENAI_API_KEY", bad);
    let out = bin::output(submit).await;
    assert_eq!(out.status.code(), Some(4), "{}", bin::text(&out.stderr));
    let db = fx.db();
    assert_eq!(reading_input(&db), 1, "stopped mid-read");
    assert!(requests(&db) < n as i64 + 1);

    // The resume reads the rest before it sends anything; with the same revoked key it then
    // stops at its first answer again, so what this test costs is the reading, not 20,000 sends
    // (other tests here send a resumed job to its end).
    let db_arg = fx.db_arg();
    let resumed = within(
        "resume",
        run(
            &["resume", "--db", &db_arg, "--no-progress"],
            env_with_key(bad),
        ),
    )
    .await;
    assert!(
        matches!(resumed, Ok(Exit::Stopped)),
        "resume read the whole file, then met the revoked key: {resumed:?}"
    );
    assert_eq!(reading_input(&db), 0);
    assert_eq!(requests(&db), n as i64 + 1, "every line is in the job");
    assert_eq!(
        query_i64(&db, "SELECT count(*) FROM requests WHERE key = 'long'"),
        1
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_file_is_read_then_resume_sends_the_rest_once() {
    let n = 10 * FEED_CHUNK_LINES;
    let fx = Fixture::for_job("signal")
        .mock(MockConfig {
            latency: Duration::from_millis(20),
            ..MockConfig::default()
        })
        .prompts(0..n)
        .start()
        .await;
    let db = fx.db();
    let shutdown = Shutdown::new();
    let run = fx.spawn_submit(&[], shutdown.clone());
    wait_until("a first success is journaled", || {
        try_requests_in(&db, "succeeded").is_some_and(|n| n > 0)
    })
    .await;
    shutdown.stop();
    let exit = within("the stopped submit", run)
        .await
        .expect("joined")
        .expect("submit");
    assert_eq!(exit, Exit::Interrupted);
    assert_eq!(reading_input(&db), 1, "stopped mid-read");
    assert!(requests(&db) < n as i64);

    assert_eq!(fx.resume(&[]).await, Exit::Success);
    assert_eq!(reading_input(&db), 0);
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    let stats = fx.mock.stats();
    let twice = interrupted_ids(&db);
    for i in 0..n {
        let answered = stats.successes_for(&sent_body(i));
        if twice.contains(&format!("r-{i}")) {
            assert!((1..=2).contains(&answered), "request {i}: {answered}");
        } else {
            assert_eq!(answered, 1, "request {i}");
        }
    }
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}

/// A job `name` made through the library, with the settings a submit to `fx`'s mock stores.
struct Direct {
    store: JobStore,
    thread: StoreThread,
    job: Job,
    settings: JobSettings,
}

impl Direct {
    async fn new(fx: &Fixture, name: &str) -> Direct {
        let (store, thread) = JobStore::open(&fx.db()).expect("store opens");
        let mut settings = JobSettings::defaults(&env());
        settings.base_url = fx.url();
        settings.model = Some("test-model".into());
        let (name, config) = (name.to_owned(), settings.to_json());
        let (job, _) = store
            .call(move |c| db::find_or_create_job(c, &name, "slow.jsonl", &config, now_ms()))
            .await
            .expect("job");
        Direct {
            store,
            thread,
            job,
            settings,
        }
    }

    /// The pool a run of this job would make.
    fn pool(&self) -> WorkerPool {
        let env = env();
        let s = &self.settings;
        let keys =
            KeyPool::new(s.keys(&env).expect("keys"), s.client_settings(&env)).expect("keys");
        WorkerPool::new(
            self.job.id,
            self.store.clone(),
            keys,
            RequestLimiter::per_minute(s.rpm()),
            PoolSettings {
                concurrency: s.concurrency().map(NonZeroUsize::get),
                max_in_flight: runner::engine::sizing::DEFAULT_MAX_IN_FLIGHT,
                known_limits: Default::default(),
                rpm: s.rpm(),
                grace: Duration::from_secs(5),
                policy: s.retry_policy(),
                breaker: s.breaker(),
                stop_after_same_error: s.stop_after_same_error,
                tpm: s.tpm(),
                default_output_tokens: 100,
                spend: None,
            },
            Arc::new(Tally::from_counts(&Counts::default())),
        )
    }

    /// A feeder reading from a pipe whose writing end the test holds: the check read `checked`.
    fn feeder(&self, checked: &str) -> (Feeder, PipeWriter) {
        let (read, write) = std::io::pipe().expect("pipe");
        let reader = InputReader::new(
            "slow.jsonl".into(),
            Box::new(BufReader::new(read)),
            self.settings.input_options(),
        );
        let checked = Checked {
            requests: checked.lines().count() as u64,
            direct: true,
            fingerprint: blake3::hash(checked.as_bytes()).to_hex().to_string(),
            layout: None,
        };
        (Feeder::start(self.job.id, reader, &checked), write)
    }

    async fn close(self) {
        drop(self.store);
        self.thread.join().await;
    }
}

/// Writes `text` into the pipe on a thread of its own (a pipe holds 64 KiB); hands the writing
/// end back, so that the reader sees no end of file until it is dropped.
async fn write(mut pipe: PipeWriter, text: String) -> PipeWriter {
    tokio::task::spawn_blocking(move || {
        pipe.write_all(text.as_bytes()).expect("write to the pipe");
        pipe
    })
    .await
    .expect("written")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_waits_for_the_rest_of_a_file_that_is_slow_to_read() {
    // The file arrives through a pipe: its first chunk, then nothing until every request of
    // that chunk is answered and journaled, then the rest.
    let n = 2 * FEED_CHUNK_LINES + 3;
    let fx = Fixture::for_job("slow").start().await;
    let lines: Vec<String> = (0..n).map(prompt_line).collect();
    let whole = jsonl(&lines);
    let direct = Direct::new(&fx, "slow").await;
    let (mut feeder, pipe) = direct.feeder(&whole);
    let pipe = tokio::spawn(write(pipe, jsonl(&lines[..FEED_CHUNK_LINES])));
    let all_in = within(
        "the first chunk",
        feeder.first_chunk(&direct.store, |_| Ok(())),
    )
    .await
    .expect("first chunk");
    assert!(!all_in);
    let pipe = pipe.await.expect("written");
    let shutdown = Shutdown::new();
    let run = tokio::spawn({
        let (pool, shutdown) = (direct.pool(), shutdown.clone());
        async move { pool.run_feeding(feeder, &shutdown).await }
    });
    let db = fx.db();
    wait_until("the first chunk is answered and journaled", || {
        try_requests_in(&db, "succeeded") == Some(FEED_CHUNK_LINES as i64)
    })
    .await;
    // Nothing is left to send, but the file is not read to its end: the run goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "the run ended before the file did");
    assert_eq!(reading_input(&db), 1);

    drop(write(pipe, jsonl(&lines[FEED_CHUNK_LINES..])).await);
    let exit = within("the run", run).await.expect("joined").expect("run");
    assert_eq!(exit, PoolExit::Drained);
    direct.close().await;
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    assert_eq!(reading_input(&db), 0);
    assert_succeeded_once(&fx.mock.stats(), 0..n);
    fx.shutdown().await;
}

#[rstest::rstest]
#[case::a_broken_line(Some("{not json"))]
#[case::a_line_more(None)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changed_after_its_check_stops_the_job_and_says_why(
    #[case] broken: Option<&str>,
) {
    // The check read `n` good lines; the second read finds the second line of its second
    // chunk broken, or a line more.
    let n = FEED_CHUNK_LINES + 10;
    let fx = Fixture::for_job("changed").start().await;
    let lines: Vec<String> = (0..n).map(prompt_line).collect();
    let mut read = lines.clone();
    let said = match broken {
        Some(broken) => {
            read[FEED_CHUNK_LINES + 1] = broken.to_owned();
            format!("slow.jsonl:{}:", FEED_CHUNK_LINES + 2)
        }
        None => {
            read.push(prompt_line(n));
            "the file changed while it was being read".to_owned()
        }
    };
    let direct = Direct::new(&fx, "changed").await;
    let (mut feeder, pipe) = direct.feeder(&jsonl(&lines));
    let pipe = tokio::spawn(async move { drop(write(pipe, jsonl(&read)).await) });
    within(
        "the first chunk",
        feeder.first_chunk(&direct.store, |_| Ok(())),
    )
    .await
    .expect("first chunk");
    let exit = within(
        "the run",
        direct.pool().run_feeding(feeder, &Shutdown::new()),
    )
    .await
    .expect("run");
    pipe.await.expect("written");
    let PoolExit::Stopped(reason) = exit else {
        panic!("{exit:?}")
    };
    assert!(reason.contains(&said), "{reason}");
    assert!(
        reason.contains("`runner resume` reads the rest"),
        "{reason}"
    );
    // Closed first: the last attempts' journal writes are committed when the store closes.
    direct.close().await;
    let db = fx.db();
    assert_eq!(reading_input(&db), 1);
    // The stop halts dispatch: what was answered is journaled, the rest waits for a resume.
    let stats = fx.mock.stats();
    let answered: u64 = (0..n)
        .map(|i| stats.successes_for(&sent_body(i)))
        .inspect(|&n| assert!(n <= 1))
        .sum();
    assert_eq!(fx.requests_in("succeeded"), answered as i64);
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_a_pipe_is_read_once_and_sent_whole() {
    // `cat FILE | runner submit /dev/stdin`: a pipe cannot be read twice, so it is read the
    // staged way.
    let n = FEED_CHUNK_LINES + 5;
    let fx = Fixture::for_job("piped").prompts(0..n).start().await;
    let url = fx.url();
    let mut submit = fx.bin(&[
        "submit",
        "/dev/stdin",
        "--job",
        "piped",
        "--base-url",
        &url,
        "--model",
        "test-model",
        "--no-progress",
    ]);
    let mut cat = std::process::Command::new("cat")
        .arg(&fx.input)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cat runs");
    submit.stdin(cat.stdout.take().expect("cat's output"));
    submit.env("OPENAI_API_KEY", "sk-test-0123456789abcdef");
    let out = bin::output(submit).await;
    let stderr = bin::text(&out.stderr);
    assert!(cat.wait().expect("cat ends").success());
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("read {n} requests from /dev/stdin: {n} new")),
        "{stderr}"
    );
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    assert_succeeded_once(&fx.mock.stats(), 0..n);
    fx.shutdown().await;
}
