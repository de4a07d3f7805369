//! Answers far larger than the memory budget (`util::spool`). The real binary reads four
//! answers of ~300 MB at once, spools them and journals them in pieces, and its peak memory is
//! measured; an answer over `--max-response-bytes` fails as `response_too_large` without being
//! held; an answer spooled past the per-answer limit exports as one in memory does.
//!
//! The answers come from a raw HTTP/1.1 server of this file ([`BigServer`]), which writes each
//! body from one small buffer: the test process never holds an answer either.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runner::Exit;
use runner::util::spool::MAX_HELD_ANSWER;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::bin::{BIN, clean_env, text};
use crate::support::*;

/// The answers' size: what `--max-response-bytes` allows at most, give or take.
const BIG: usize = 300_000_000;

/// The bound on the runner's peak resident memory reading four of them. Measured: 44-49 MB (a
/// debug build; 2,022 MB before answers were spooled). The margin leaves room for the
/// allocator and SQLite's page cache, while one answer held whole would pass it.
const PEAK_RSS_LIMIT_KB: u64 = 200 * 1024;

/// How long a run of the binary on ~1.2 GB may take before the test gives up: a debug build on
/// a loaded 2-core machine writes the journal at some 30 MB/s. Not a timing assertion: a bound.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Bytes written per `write_all`.
const PIECE: usize = 1 << 20;

/// What the server sends.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// `Content-Length`, then the body.
    Length,
    /// Chunked transfer encoding, no length announced.
    Chunked,
}

/// A raw HTTP/1.1 server on 127.0.0.1:0 that answers every request on every connection (kept
/// alive) with a chat completion of `size` bytes: the JSON object, then spaces up to the size.
/// Counts the requests it read.
struct BigServer {
    url: String,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The answer's JSON without its last `}`: the padding goes between it and the brace.
const HEAD: &str = r#"{"id":"chatcmpl-big","object":"chat.completion","model":"big-model","choices":[{"index":0,"message":{"role":"assistant","content":"a big answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}"#;

impl BigServer {
    async fn start(size: usize, framing: Framing) -> BigServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                connections.spawn(async move {
                    // Errors writing are expected: a client that hangs up (over its limit) ends
                    // the connection.
                    let _ = serve(stream, size, framing, &counter).await;
                });
            }
        });
        BigServer {
            url: format!("http://{addr}/v1"),
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for BigServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads each request (head and `Content-Length` body) and answers it.
async fn serve(
    mut stream: TcpStream,
    size: usize,
    framing: Framing,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut piece).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&piece[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("content-length"));
        while buf.len() < head_end + length {
            let n = stream.read(&mut piece).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&piece[..n]);
        }
        buf.drain(..head_end + length);
        requests.fetch_add(1, Ordering::SeqCst);
        answer(&mut stream, size, framing).await?;
    }
}

/// Writes one answer of `size` bytes, [`PIECE`] at a time from one buffer of spaces.
async fn answer(stream: &mut TcpStream, size: usize, framing: Framing) -> std::io::Result<()> {
    let head = match framing {
        Framing::Length => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
        ),
        Framing::Chunked => {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_owned()
        }
    };
    stream.write_all(head.as_bytes()).await?;
    let spaces = vec![b' '; PIECE];
    let mut parts: Vec<&[u8]> = vec![HEAD.as_bytes()];
    let mut left = size - HEAD.len() - 1;
    let mut body_parts = Vec::new();
    while left > 0 {
        let n = left.min(PIECE);
        body_parts.push(n);
        left -= n;
    }
    for n in body_parts {
        parts.push(&spaces[..n]);
    }
    parts.push(b"}");
    for part in parts {
        if let Framing::Chunked = framing {
            stream
                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await?;
        }
        stream.write_all(part).await?;
        if let Framing::Chunked = framing {
            stream.write_all(b"\r\n").await?;
        }
    }
    if let Framing::Chunked = framing {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    stream.flush().await
}

/// The real binary under `/usr/bin/time -v` (which reports the peak resident memory, from the
/// kernel's own count, once the process is reaped), or alone when there is no such program.
fn measured(dir: &Path) -> (Command, bool) {
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut cmd = Command::new(time);
        cmd.arg("-v").arg(BIN);
        cmd
    } else {
        Command::new(BIN)
    };
    cmd.current_dir(dir);
    clean_env(&mut cmd);
    (cmd, time.exists())
}

/// `Maximum resident set size (kbytes): N` of `/usr/bin/time -v`'s report.
fn peak_rss_kb(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("Maximum resident set size (kbytes):")
        })
        .map(|kb| kb.trim().parse().expect("a number"))
        .unwrap_or_else(|| panic!("no peak memory in the report:\n{stderr}"))
}

/// Runs `cmd` to its end within [`RUN_LIMIT`]; with no `/usr/bin/time`, polls the child's
/// `VmHWM` (its peak so far) meanwhile and returns the last value read.
async fn run_measured(mut cmd: Command, timed: bool) -> (std::process::Output, Option<u64>) {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("the binary runs");
    let pid = child.id();
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    let mut hwm = None;
    let polled = async {
        loop {
            if !timed
                && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                hwm = Some(kb);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let output = tokio::time::timeout(RUN_LIMIT, async {
        tokio::select! {
            output = waited => output,
            () = polled => unreachable!("polls forever"),
        }
    })
    .await
    .expect("the run ends in time")
    .expect("join")
    .expect("output");
    let stderr = text(&output.stderr);
    let peak = if timed {
        Some(peak_rss_kb(&stderr))
    } else {
        hwm
    };
    (output, peak)
}

fn spool_files_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("spool dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The acceptance case: four answers of ~300 MB at `--concurrency 4` end succeeded, journaled
/// whole and sound, with the process's peak memory under 200 MB and no spool file left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_answers_of_300_mb_at_once_are_journaled_whole_in_under_200_mb() {
    let server = BigServer::start(BIG, Framing::Length).await;
    let s = Scratch::new();
    s.prompts("big.jsonl", 0..4);
    let spool = s.path("spool");
    std::fs::create_dir(&spool).expect("spool dir");
    let (mut cmd, timed) = measured(s.dir.path());
    cmd.args(submit_args(
        "big.jsonl",
        &s.db_arg(),
        &server.url,
        &["--concurrency", "4", "--max-response-bytes", "300000000"],
    ))
    // Long enough to be looked for in answers (and redacted from spooled ones).
    .env("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    .env("TMPDIR", &spool);
    let started = std::time::Instant::now();
    let (output, peak) = run_measured(cmd, timed).await;
    eprintln!("the run took {:?}", started.elapsed());
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(server.requests(), 4, "each answer read once, none retried");

    let db = s.db();
    assert_eq!(requests_in(&db, "succeeded"), 4);
    assert_eq!(
        query_text(&db, "PRAGMA integrity_check").as_deref(),
        Some("ok")
    );
    // Each answer whole, once: in `spilled_responses`, its request's `response` empty.
    assert_eq!(
        query_i64(
            &db,
            &format!(
                "SELECT count(*) FROM spilled_responses JOIN requests ON requests.id = request_id
                 WHERE length(spilled_responses.body) = {BIG} AND response IS NULL
                       AND model = 'big-model' AND total_tokens = 8"
            )
        ),
        4
    );
    // Their text starts and ends as sent: read in pieces, as the runner wrote it.
    let conn = rusqlite::Connection::open(&db).expect("db opens");
    let ids: Vec<i64> = conn
        .prepare("SELECT request_id FROM spilled_responses")
        .expect("select")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("ids");
    for id in ids {
        let blob = conn
            .blob_open(rusqlite::MAIN_DB, c"spilled_responses", c"body", id, true)
            .expect("blob");
        let mut start = vec![0u8; HEAD.len()];
        blob.read_at_exact(&mut start, 0).expect("start");
        let mut end = [0u8; 10];
        blob.read_at_exact(&mut end, BIG - 10).expect("end");
        assert_eq!(start, HEAD.as_bytes());
        assert_eq!(&end, b"         }");
    }
    assert_eq!(spool_files_left(&spool), Vec::<String>::new());

    let peak = peak.expect("the peak was read");
    eprintln!("peak resident memory: {peak} kB");
    // The margin: 44-49 MB measured against 200 MB allowed (see PEAK_RSS_LIMIT_KB); one answer
    // held whole would be 300 MB.
    assert!(
        peak <= PEAK_RSS_LIMIT_KB,
        "peak resident memory {peak} kB is over {PEAK_RSS_LIMIT_KB} kB"
    );
}

/// An answer over `--max-response-bytes`, sent without a length, is read up to the limit (into a
/// spool file, past the budget), then refused: the request fails as `response_too_large`,
/// memory never grows with it, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_limit_fails_as_response_too_large_without_being_held() {
    let server = BigServer::start(BIG, Framing::Chunked).await;
    let s = Scratch::new();
    s.prompts("over.jsonl", 0..1);
    let spool = s.path("spool");
    std::fs::create_dir(&spool).expect("spool dir");
    let (mut cmd, timed) = measured(s.dir.path());
    cmd.args(submit_args(
        "over.jsonl",
        &s.db_arg(),
        &server.url,
        &["--max-response-bytes", "100000000"],
    ))
    .env("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    .env("TMPDIR", &spool);
    let (output, peak) = run_measured(cmd, timed).await;
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(Exit::SomeFailed.code())),
        "{stderr}"
    );
    assert_eq!(server.requests(), 1, "never retried");
    let db = s.db();
    assert_eq!(
        query_text(&db, "SELECT state || ' ' || error_code FROM requests").as_deref(),
        Some("failed response_too_large")
    );
    assert_eq!(query_i64(&db, "SELECT count(*) FROM spilled_responses"), 0);
    assert_eq!(spool_files_left(&spool), Vec::<String>::new());
    let peak = peak.expect("the peak was read");
    eprintln!("peak resident memory: {peak} kB");
    // 100 MB were read: held whole they would show here; spooled, the process stays near its
    // resting size (measured: 61 MB, of which up to 8 MiB is the body before it spills).
    assert!(peak < 100 * 1024, "peak resident memory {peak} kB");
}

/// An answer larger than one answer may hold in memory is spooled; it exports (CSV and JSONL)
/// exactly as an answer in memory does, and the journal reads it as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_answer_exports_as_an_answer_in_memory_does() {
    let size = MAX_HELD_ANSWER + 1_000_000;
    let big = BigServer::start(size, Framing::Chunked).await;
    let small = BigServer::start(HEAD.len() + 10, Framing::Length).await;
    let mut exports = Vec::new();
    for server in [&big, &small] {
        let s = Scratch::new();
        let input = s.prompts("one.jsonl", 0..1);
        let db = s.db_arg();
        let args = submit_args(input.to_str().expect("utf-8 path"), &db, &server.url, &[]);
        assert_eq!(run(&args, env()).await.expect("runs"), Exit::Success);
        let jsonl = export_jsonl(&s.db(), "one");
        let (header, rows) = export_csv(&s.db(), "one");
        let spilled = query_i64(&s.db(), "SELECT count(*) FROM spilled_responses");
        exports.push((jsonl, header, rows, spilled));
    }
    let (big_jsonl, big_header, big_rows, big_spilled) = &exports[0];
    let (small_jsonl, small_header, small_rows, small_spilled) = &exports[1];
    assert_eq!(
        (*big_spilled, *small_spilled),
        (1, 0),
        "one spooled, one not"
    );
    let expected: Value = serde_json::from_str(&format!("{HEAD}}}")).expect("json");
    for jsonl in [big_jsonl, small_jsonl] {
        assert_eq!(jsonl.len(), 1);
        assert_eq!(jsonl[0]["response"]["body"], expected);
        assert_eq!(jsonl[0]["response"]["status_code"], 200);
    }
    assert_eq!(big_header, small_header);
    for column in ["status", "output_text", "model", "total_tokens"] {
        assert_eq!(
            cell(big_header, &big_rows[0], column),
            cell(small_header, &small_rows[0], column),
            "{column}"
        );
    }
    assert_eq!(
        cell(big_header, &big_rows[0], "output_text"),
        "a big answer"
    );
}
