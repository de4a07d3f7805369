//! Storage faults on the real binary: an unusable `--db` path, a full disk, a database locked by
//! another process. Each ends with a message that names the database and says what to do, exit
//! code 1, nothing corrupted (`PRAGMA integrity_check`), and once the fault is gone the job
//! finishes without sending a journaled success again.
//!
//! The tests run as root, so permission bits would not stop a write: unusable paths are a path
//! under a regular file, a missing directory and a directory.
// Helpers of a test crate: a failed setup panics with its message (clippy's allow-*-in-tests
// covers only #[test] fns and #[cfg(test)] items).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rstest::rstest;
use runner::mock::MockServer;

use crate::support::bin::{BIN, clean_env, output, runner, text};
use crate::support::*;

#[rstest]
#[case::under_a_regular_file("a-file/runner.db")]
#[case::in_a_missing_directory("no-such-dir/runner.db")]
#[case::a_directory("a-dir")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_db_path_is_a_clear_error(#[case] db: &str) {
    let fx = Fixture::for_job("p").prompts(0..3).start().await;
    fx.scratch.write("a-file", "not a directory");
    std::fs::create_dir(fx.scratch.path("a-dir")).expect("mkdir");
    let out = output(fx.bin(&[
        "submit",
        "p.jsonl",
        "--db",
        db,
        "--base-url",
        &fx.url(),
        "--no-progress",
    ]))
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("runner: cannot use {db} as the database (")),
        "{stderr}"
    );
    assert!(
        stderr.contains("--db must name a file in a directory this user can write"),
        "{stderr}"
    );
    assert_eq!(fx.mock.stats().answers, 0);
    assert_eq!(
        std::fs::read_to_string(fx.scratch.path("a-file")).expect("read"),
        "not a directory",
        "nothing was written over the file"
    );
    fx.shutdown().await;
}

/// A database locked by another process: a test connection holds a write transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_a_clear_error_and_loses_nothing() {
    let fx = Fixture::for_job("locked").prompts(0..10).start().await;
    assert_eq!(output(fx.bin_submit(&[])).await.status.code(), Some(0));

    let holder = rusqlite::Connection::open(fx.db()).expect("open");
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    fx.scratch.prompts("locked.jsonl", 0..20);
    // Tries for the write lock SETUP_TRIES busy timeouts (here of 1 s), then gives up.
    let mut locked_out = fx.bin_submit(&[]);
    locked_out.env(runner::store::BUSY_TIMEOUT_ENV, "1000");
    let started = std::time::Instant::now();
    let out = output(locked_out).await;
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "it waited for the lock a while: {:?}",
        started.elapsed()
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\nrunner: database runner.db is locked by another process ("),
        "{stderr}"
    );
    assert!(
        stderr.contains("then run the same command again"),
        "{stderr}"
    );
    // Readers are not blocked by a writer (WAL).
    let status = output(fx.bin(&["status"])).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("10 total · 10 succeeded"));
    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);

    assert_eq!(fx.mock.stats().answers, 10, "nothing was sent while locked");
    assert_eq!(integrity(&fx.db()), "ok");
    assert_eq!(query_i64(&fx.db(), "SELECT count(*) FROM requests"), 10);
    let out = output(fx.bin_submit(&[])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_succeeded_once(&fx.mock.stats(), 0..20);
    fx.shutdown().await;
}

/// How a test fills the disk under the runner.
#[derive(Clone, Copy, Debug)]
enum DiskFault {
    /// The database on a 1 MiB tmpfs: a real ENOSPC, SQLite's SQLITE_FULL. Needs
    /// CAP_SYS_ADMIN (the tests run as root); skipped, saying so, where `mount` is refused.
    Tmpfs,
    /// RLIMIT_FSIZE of 1 MiB on the runner (`prlimit`, with SIGXFSZ ignored so the write fails
    /// instead of killing the process): the OS refuses to grow the file, SQLite reports
    /// SQLITE_FULL or SQLITE_IOERR. Works without privileges.
    FileSizeLimit,
}

/// The limit either fault sets. The ingest of [`N`] requests writes about 500 KiB (one
/// transaction in the WAL), so it always fits; the run needs several MiB, so it never does.
const LIMIT_BYTES: u64 = 1 << 20;
const N: usize = 1500;

/// A tmpfs mounted for the test, unmounted when dropped (lazily, even after a failed assert).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={LIMIT_BYTES}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        Ok(Tmpfs(dir.to_owned()))
    }

    fn grow(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Successful answers per custom id, per the mock.
fn successes(mock: &MockServer) -> HashMap<String, u64> {
    let stats = mock.stats();
    (0..N)
        .map(|i| (format!("r-{i}"), stats.successes_for(&sent_body(i))))
        .collect()
}

#[rstest]
#[case::tmpfs(DiskFault::Tmpfs)]
#[case::file_size_limit(DiskFault::FileSizeLimit)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_cleanly_and_resume_finishes_once_there_is_space(
    #[case] fault: DiskFault,
) {
    let fx = Fixture::for_job("full").prompts(0..N).start().await;
    let s = &fx.scratch;
    let (db, tmpfs) = match fault {
        DiskFault::Tmpfs => match Tmpfs::mount(&s.path("disk")) {
            Ok(tmpfs) => (s.path("disk/runner.db"), Some(tmpfs)),
            Err(why) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here ({why}); the file size case still runs"
                );
                return;
            }
        },
        DiskFault::FileSizeLimit => {
            if Command::new("prlimit").arg("--version").output().is_err() {
                eprintln!("skipped: prlimit (util-linux) is not installed");
                return;
            }
            (s.db(), None)
        }
    };
    let db_arg = db.display().to_string();
    let args = [
        "submit",
        "full.jsonl",
        "--db",
        &db_arg,
        "--base-url",
        &fx.url(),
        "--model",
        "test-model",
        "--no-progress",
        "--concurrency",
        "16",
    ];
    let cmd = match fault {
        DiskFault::Tmpfs => {
            let mut cmd = runner(s.dir.path());
            cmd.args(args);
            cmd
        }
        DiskFault::FileSizeLimit => {
            let mut cmd = Command::new("sh");
            cmd.current_dir(s.dir.path())
                .arg("-c")
                .arg(format!(
                    "trap '' XFSZ; exec prlimit --fsize={LIMIT_BYTES} -- \"$@\""
                ))
                .arg("sh")
                .arg(BIN)
                .args(args);
            clean_env(&mut cmd);
            cmd
        }
    };
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("runner: database {db_arg}: ")),
        "names the database: {stderr}"
    );
    assert!(
        stderr.contains(
            "then run the same command again (it resumes the job; nothing journaled is lost)"
        ),
        "{stderr}"
    );
    if matches!(fault, DiskFault::Tmpfs) {
        assert!(stderr.contains(": the disk is full ("), "{stderr}");
    }
    assert!(
        fx.mock.stats().successes() < N as u64,
        "the fault stopped the run"
    );

    // Remove the fault.
    if let Some(tmpfs) = &tmpfs {
        tmpfs.grow();
    }
    assert_eq!(integrity(&db), "ok", "nothing corrupted");
    let journaled = journaled_successes(&db);
    let before = successes(&fx.mock);

    let mut cmd = runner(s.dir.path());
    cmd.args(["resume", "--db", &db_arg, "--no-progress"]);
    let out = output(cmd).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("which is no longer running"),
        "the failed runner's lease does not block: {stderr}"
    );
    let after = successes(&fx.mock);
    for key in &journaled {
        assert_eq!(
            after[key], before[key],
            "{key} was sent again after its success was journaled"
        );
    }
    let twice = interrupted_ids(&db);
    for (key, n) in &after {
        assert!(
            *n == 1 || (*n == 2 && twice.contains(key)),
            "{key} succeeded {n} times"
        );
    }
    assert_eq!(requests_in(&db, "succeeded"), N as i64);
    assert_eq!(integrity(&db), "ok");
    drop(tmpfs); // unmounted before the scratch directory is removed
    fx.shutdown().await;
}
