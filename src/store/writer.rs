//! The owner thread's loop: drain the queue into a batch, run it in one write transaction
//! (waiting out another writer, checking the fence first), commit, then reply.

use std::thread;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::domain::Completion;

use super::checkpoint::Checkpointer;
use super::{
    BUSY_PATIENCE, Command, Fence, MAX_BATCH, Reply, SETUP_TRIES, WriteFailure, busy_timeout, db,
};

/// How long a batch of journal writes alone (nobody waits for an answer) waits for more before
/// its transaction begins: each commit writes every page the batch touched, so a few writes per
/// commit cost several times as much per write as a few dozen. A crash in the meantime loses
/// only uncommitted completions, which recovery journals as interrupted, as for any crash.
const LINGER: Duration = Duration::from_millis(1);

/// How long a lingering batch sleeps before it looks again.
const LINGER_STEP: Duration = Duration::from_micros(200);

/// A batch this large commits without lingering.
const LINGER_BELOW: usize = 64;

/// The longest pause between two tries for the write lock while a running job waits for it.
const BUSY_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// The owner thread's loop: batch, apply in one transaction, commit, reply.
/// With a [`Checkpointer`], each commit tells it so; it is stopped before the connection closes.
pub(super) fn own_connection(
    conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    checkpointer: Option<Checkpointer>,
) {
    let mut failed: Option<WriteFailure> = None;
    let mut fence: Option<Fence> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Prepared at the first attempt to journal (a store may serve no run at all), then kept.
    let mut journal: Option<db::Journal<'_>> = None;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch);
        linger(&mut rx, &mut batch);
        if let Some(reason) = &failed {
            refuse(&mut batch, reason);
            continue;
        }
        let applied = apply_batch(&conn, &mut journal, &mut batch, &mut fence);
        if let (Ok(()), Some(checkpointer)) = (&applied, &checkpointer) {
            checkpointer.committed();
        }
        if let Err(reason) = applied {
            match &reason.taken_over {
                Some((_, holder)) => tracing::error!(
                    %holder,
                    "another runner took this job over; refusing further writes"
                ),
                None => {
                    tracing::error!(error = %reason, "database write failed; refusing further writes")
                }
            }
            failed = Some(reason);
        }
    }
    // Stopped (and its last checkpoint done) before the connection closes.
    drop(checkpointer);
}

/// Lets a small batch of journal writes nobody waits for gather more, for up to [`LINGER`] in
/// steps of [`LINGER_STEP`]: it stops as soon as the batch is large enough or holds a command
/// someone waits for (a claim must not wait out the whole linger).
fn linger(rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>) {
    let mut waited = Duration::ZERO;
    while waited < LINGER
        && batch.len() < LINGER_BELOW
        && !batch.iter().any(|c| matches!(c, Command::Call(_)))
    {
        thread::sleep(LINGER_STEP);
        waited += LINGER_STEP;
        drain(rx, batch);
    }
}

/// Takes what has queued, up to [`MAX_BATCH`] commands in all.
fn drain(rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(cmd) => batch.push(cmd),
            Err(_) => break,
        }
    }
}

fn refuse(batch: &mut Vec<Command>, reason: &WriteFailure) {
    for cmd in batch.drain(..) {
        match cmd {
            // Lost like any write after a crash: the request stays in_flight and recovery
            // journals it as interrupted.
            Command::Record(..) | Command::Fence(_) => {}
            Command::Call(call) => call.refuse(reason),
        }
    }
}

/// Runs one batch in one transaction. On failure everything in it is rolled back and every
/// caller in it is told; the error is returned so the store stops accepting writes.
fn apply_batch<'conn>(
    conn: &'conn Connection,
    journal: &mut Option<db::Journal<'conn>>,
    batch: &mut Vec<Command>,
    fence: &mut Option<Fence>,
) -> Result<(), WriteFailure> {
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut committed: Vec<super::OnCommit> = Vec::new();
    let patience = match fence {
        Some(_) => BUSY_PATIENCE,
        None => busy_timeout() * SETUP_TRIES,
    };
    let mut result = begin(conn, patience);
    // The write lock is held from BEGIN IMMEDIATE to the end of the batch: no other runner can
    // take the lease in between, so one check here covers every write of the batch.
    if let (Ok(()), Some(fence)) = (&result, fence.as_ref()) {
        result = check_fence(conn, fence);
    }
    for cmd in batch.drain(..) {
        match cmd {
            Command::Record(completion, on_commit) => {
                if result.is_ok() {
                    result = record(conn, journal, &completion);
                }
                committed.extend(on_commit);
            }
            Command::Call(call) => match &result {
                Ok(()) => replies.push(call.run(conn)),
                Err(reason) => call.refuse(reason),
            },
            Command::Fence(new) => {
                if result.is_ok() {
                    result = check_fence(conn, &new);
                }
                *fence = Some(new);
            }
        }
    }
    if result.is_ok() {
        result = run_cached(conn, "COMMIT").map_err(WriteFailure::from);
    }
    if result.is_err() && !conn.is_autocommit() {
        // Best effort: the error that matters is the one already in `result`.
        let _ = conn.execute_batch("ROLLBACK");
    }
    let commit_error = result.as_ref().err();
    if commit_error.is_none() {
        for on_commit in committed {
            on_commit();
        }
    }
    for reply in replies {
        reply(commit_error);
    }
    result
}

/// Journals an attempt with the thread's own prepared statements, preparing them first if need be.
fn record<'conn>(
    conn: &'conn Connection,
    journal: &mut Option<db::Journal<'conn>>,
    completion: &Completion,
) -> Result<(), WriteFailure> {
    let journal = match journal {
        Some(journal) => journal,
        None => journal.insert(db::Journal::new(conn)?),
    };
    Ok(journal.record(completion)?)
}

/// Starts a batch's write transaction. A batch that finds the write lock held past the busy
/// timeout backs off and tries again, until `patience` has passed ([`BUSY_PATIENCE`] once a job
/// is fenced, [`SETUP_TRIES`] busy timeouts before). Safe: nothing of the batch has run yet.
fn begin(conn: &Connection, patience: Duration) -> Result<(), WriteFailure> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match run_cached(conn, "BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && started.elapsed() + pause < patience => {
                tracing::warn!(
                    waited_s = started.elapsed().as_secs(),
                    "the database is busy with another writer; this job waits for it"
                );
                thread::sleep(pause);
                pause = (pause * 2).min(BUSY_BACKOFF_CAP);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs a statement without parameters through the statement cache: a batch begins and commits
/// thousands of times a second, and parsing `BEGIN`/`COMMIT` each time shows in profiles.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Inside the batch's transaction: the job's lease epoch must still be the fence's.
fn check_fence(conn: &Connection, fence: &Fence) -> Result<(), WriteFailure> {
    let (epoch, holder): (i64, Option<String>) = conn
        .prepare_cached("SELECT lease_epoch, lease_owner FROM jobs WHERE id = ?1")?
        .query_row([fence.job.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if epoch == fence.epoch {
        return Ok(());
    }
    Err(WriteFailure {
        code: None,
        message: format!(
            "job '{}' was taken over by another runner (lease epoch {epoch}, ours {})",
            fence.name, fence.epoch
        ),
        taken_over: Some((fence.name.clone(), holder.unwrap_or_default())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;
    use crate::store::CallOf;

    fn fence() -> Command {
        Command::Fence(Fence {
            job: JobId(1),
            name: "j".into(),
            epoch: 1,
        })
    }

    fn call() -> Command {
        let (reply, _) = tokio::sync::oneshot::channel::<Result<(), super::super::StoreError>>();
        Command::Call(Box::new(CallOf {
            f: |_: &Connection| Ok(()),
            reply,
        }))
    }

    #[test]
    fn a_batch_nobody_waits_for_gathers_what_queues_and_one_with_a_call_does_not_wait() {
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..3 {
            tx.try_send(fence()).expect("queued");
        }
        let mut batch = vec![fence()];
        linger(&mut rx, &mut batch);
        assert_eq!(batch.len(), 4, "what queued joins the batch");

        tx.try_send(fence()).expect("queued");
        let mut batch = vec![call()];
        linger(&mut rx, &mut batch);
        assert_eq!(batch.len(), 1, "a batch someone waits for goes at once");
        assert!(rx.try_recv().is_ok(), "and leaves the queue as it was");
    }
}
