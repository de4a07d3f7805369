//! Copying the WAL back into the database file off the owner thread.
//!
//! SQLite checkpoints on the connection that commits: once the WAL holds 1,000 pages, one of
//! the owner thread's commits also copies them into the database file and syncs it. That takes
//! milliseconds, in which no claim is answered and the pool runs dry (measured on the nginx
//! workload of docs/benchmarks.md: half of the owner thread's time in batches went to the one batch in fifteen
//! that took over 3 ms, most of them checkpoints). The checkpointer is a thread with a
//! connection of its own that copies what has been committed soon after each commit, at most
//! every [`GATHER`], so the owner's automatic checkpoint finds little or nothing left to copy.
//!
//! It is only a speed-up, and never the only checkpoint: when it lags or fails, the owner's
//! automatic checkpoint still bounds the WAL, and a failed checkpoint loses nothing (the WAL
//! keeps every committed page until one succeeds). A `PASSIVE` checkpoint takes no lock a
//! writer or a reader waits for, here or in another process.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::util::sync::lock;

/// The least time between two checkpoints: the pages of many commits are copied together (a
/// page written by many commits is copied once) with one pair of syncs. Measured on the
/// nginx workload of docs/benchmarks.md: 5 ms cost ~2 µs of CPU per request more than 20 ms,
/// at the same throughput; 50 ms left more for the owner's own checkpoint, and throughput fell by ~6%.
const GATHER: Duration = Duration::from_millis(20);

/// The checkpointer thread; it stops, and is waited for, when dropped.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    handle: Option<thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// A commit happened since the last checkpoint began.
    committed: bool,
    stop: bool,
}

impl Checkpointer {
    /// Starts a checkpointer for the database at `path`; `None` (and a debug log) when its
    /// connection or thread cannot be had: the owner's automatic checkpoint does the work then.
    pub(super) fn start(path: &Path) -> Option<Checkpointer> {
        let conn = match Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(%error, "no checkpointer: the commits checkpoint themselves");
                return None;
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let handle = thread::Builder::new()
            .name("runner-checkpoint".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || checkpoint_while_running(&conn, &shared)
            })
            .inspect_err(|error| {
                tracing::debug!(%error, "no checkpointer: the commits checkpoint themselves");
            })
            .ok()?;
        Some(Checkpointer {
            shared,
            handle: Some(handle),
        })
    }

    /// Tells the checkpointer that a transaction has committed. Cheap: called after every batch.
    pub(super) fn committed(&self) {
        let mut state = lock(&self.shared.state);
        if !state.committed {
            state.committed = true;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

/// Waits for a commit, checkpoints, lets [`GATHER`] pass; until stopped.
fn checkpoint_while_running(conn: &Connection, shared: &Shared) {
    loop {
        {
            let mut state = lock(&shared.state);
            while !state.committed && !state.stop {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.stop {
                return;
            }
            state.committed = false;
        }
        // Busy (another checkpoint under way, in this process or another) or failed: the next
        // commit brings another try, and the owner's automatic checkpoint stays in place.
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(%error, "checkpoint failed; the next commit tries again");
        }
        // A stop ends the pause at once: the store's owner waits for this thread as it closes.
        let state = lock(&shared.state);
        drop(
            shared
                .wake
                .wait_timeout_while(state, GATHER, |state| !state.stop),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_writer;

    #[test]
    fn commits_reach_the_database_file_without_waiting_for_the_automatic_checkpoint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let conn = open_writer(&path).expect("opens");
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("table");
        let checkpointer = Checkpointer::start(&path).expect("starts");
        let before = std::fs::metadata(&path).expect("file").len();
        // 50 pages at most, far below the 1,000 of the automatic checkpoint: only the
        // checkpointer copies them into the file.
        for _ in 0..50 {
            conn.execute("INSERT INTO t VALUES (zeroblob(3000))", [])
                .expect("insert");
            checkpointer.committed();
        }
        let grown = (0..500).any(|_| {
            thread::sleep(Duration::from_millis(10));
            std::fs::metadata(&path).expect("file").len() >= before + 50 * 3000
        });
        drop(checkpointer);
        assert!(grown, "the rows reached the database file");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 50);
    }
}
