//! A new job's file: checked whole, then read into the job chunk after chunk while the first
//! requests are already sent (`store::ingest::direct`, `engine::feed`). The pool does not end
//! before the last chunk; a run stopped mid-read (a job-level stop, Ctrl-C) leaves the job
//! marked as reading its file, and `resume` reads the rest: every line is sent, none twice.

use std::time::Duration;

use crate::support::*;
use runner::Exit;
use runner::engine::feed::FEED_CHUNK_LINES;
use runner::engine::shutdown::Shutdown;
use runner::mock::MockConfig;

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

/// Opens the FIFO at `path` for writing (once a reader has opened it) and writes `lines`;
/// hands back the open end, so that the reader sees no end of file until it is dropped.
fn write_fifo(
    path: std::path::PathBuf,
    lines: Vec<String>,
) -> tokio::task::JoinHandle<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("the FIFO opens for writing");
        append(&mut fifo, lines);
        fifo
    })
}

fn append(fifo: &mut std::fs::File, lines: Vec<String>) {
    use std::io::Write;
    for line in lines {
        writeln!(fifo, "{line}").expect("write to the FIFO");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_waits_for_the_rest_of_a_file_that_is_slow_to_read() {
    // The file is a FIFO this test writes: whole for the check, then only its first chunk for
    // the second read, until every request of that chunk is answered and journaled.
    let n = 2 * FEED_CHUNK_LINES + 3;
    let fx = Fixture::for_job("slow").start().await;
    let made = std::process::Command::new("mkfifo")
        .arg(&fx.input)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let lines: Vec<String> = (0..n).map(prompt_line).collect();
    let db = fx.db();

    let submit = fx.spawn_submit(&[], Shutdown::new());
    let whole = write_fifo(fx.input.clone(), lines.clone());
    drop(
        within("the check reads the file", whole)
            .await
            .expect("written"),
    );
    // The job is made once the check has read to the end: a writer opening the FIFO before
    // that would be read as more of the same file.
    wait_until("the check is done", || {
        try_query_i64(&db, "SELECT count(*) FROM jobs") == Some(1)
    })
    .await;
    let rest = lines[FEED_CHUNK_LINES..].to_vec();
    let first = lines[..FEED_CHUNK_LINES].to_vec();
    let mut fifo = within(
        "the first chunk is read",
        write_fifo(fx.input.clone(), first),
    )
    .await
    .expect("written");
    wait_until("the first chunk is answered and journaled", || {
        try_requests_in(&db, "succeeded") == Some(FEED_CHUNK_LINES as i64)
    })
    .await;
    // Nothing is left to send, but the file is not read to its end: the run goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!submit.is_finished(), "the run ended before the file did");
    assert_eq!(reading_input(&db), 1);

    tokio::task::spawn_blocking(move || append(&mut fifo, rest))
        .await
        .expect("written");
    let exit = within("the submit", submit)
        .await
        .expect("joined")
        .expect("submit");
    assert_eq!(exit, Exit::Success);
    assert_eq!(fx.requests_in("succeeded"), n as i64);
    assert_eq!(reading_input(&db), 0);
    assert_succeeded_once(&fx.mock.stats(), 0..n);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changed_after_its_check_stops_the_job_naming_the_line() {
    // The check reads a good file; the second read finds a broken line after the first chunk.
    let n = FEED_CHUNK_LINES + 10;
    let fx = Fixture::for_job("changed").start().await;
    let made = std::process::Command::new("mkfifo")
        .arg(&fx.input)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let lines: Vec<String> = (0..n).map(prompt_line).collect();
    let db = fx.db();
    let submit = fx.spawn_submit(&[], Shutdown::new());
    let whole = write_fifo(fx.input.clone(), lines.clone());
    drop(
        within("the check reads the file", whole)
            .await
            .expect("written"),
    );
    wait_until("the check is done", || {
        try_query_i64(&db, "SELECT count(*) FROM jobs") == Some(1)
    })
    .await;
    let mut changed = lines.clone();
    changed[FEED_CHUNK_LINES + 1] = "{not json".to_owned();
    let second = write_fifo(fx.input.clone(), changed);
    drop(within("the second read", second).await.expect("written"));

    let exit = within("the submit", submit)
        .await
        .expect("joined")
        .expect("submit");
    assert_eq!(exit, Exit::Stopped);
    let reason = query_text(&db, "SELECT state_reason FROM jobs").unwrap_or_default();
    let line = format!("changed.jsonl:{}:", FEED_CHUNK_LINES + 2);
    assert!(reason.contains(&line), "{reason}");
    assert!(
        reason.contains("`runner resume` reads the rest"),
        "{reason}"
    );
    assert_eq!(reading_input(&db), 1);
    assert_eq!(
        requests(&db),
        FEED_CHUNK_LINES as i64,
        "the first chunk is in"
    );
    // The stop halts dispatch: what was answered is journaled, the rest waits for a resume.
    let stats = fx.mock.stats();
    let answered: u64 = (0..FEED_CHUNK_LINES)
        .map(|i| stats.successes_for(&sent_body(i)))
        .inspect(|&n| assert!(n <= 1))
        .sum();
    assert_eq!(fx.requests_in("succeeded"), answered as i64);
    assert_eq!(integrity(&db), "ok");
    fx.shutdown().await;
}
