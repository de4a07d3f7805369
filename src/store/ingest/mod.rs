//! Reading a whole input file into a job: new requests queued, known ones kept, all or nothing,
//! in short transactions.
//!
//! A big file (a million lines take seconds to read) must not hold the database's write lock
//! all that time: other processes share the file (another job running, another submit), and a
//! writer that waits longer than the busy timeout fails. So the file is read in chunks of at
//! most [`CHUNK_LINES`] lines or [`CHUNK_TIME`], each in its own transaction and
//! [`CHUNK_PAUSE`] apart, into
//! `ingest_staging` (migration 0007), which no query over `requests` reads: claims, counts,
//! `status` and `export` see nothing of a half-read file. Once the whole file is read and
//! checked, [`Staging::publish`] turns the staged lines into requests in one transaction (plain
//! SQL copies, no parsing or hashing: a small fraction of the reading time), and the staged rows
//! are deleted, again in short transactions.
//!
//! A bad line anywhere (or a repeated custom_id, or a changed body) stops the ingest before the
//! publish: the staged rows are deleted and the job's requests are as they were. A runner that
//! dies mid-ingest leaves staged rows; the next submit or resume of the job deletes them
//! ([`discard_unfinished`]) before it does anything else. The runner holds the job's lease (and
//! its fence) through all of it, renewing it at every chunk, so no other runner touches the
//! job's rows in between.
//!
//! A job without any request takes a file that [`crate::input::check`] found good another way,
//! without staging, while its first requests are sent: see [`direct`].

pub mod direct;
mod stage;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use rusqlite::Connection;

use self::stage::{Action, Invalid, Known};
use super::db::{Job, atomically};
use super::lease::{self, LeaseError, LeaseOwner, Renewal};
use super::{JobStore, StoreError, invalid};
use crate::domain::JobId;
use crate::input::{InputError, InputReader, Prompt, TableLayout};
use crate::util::clock::now_ms;

/// Lines read in one transaction at most. [`CHUNK_TIME`] is what keeps a transaction short
/// (the write lock is released five times a second); this only bounds a chunk of very short
/// lines, large enough that the pauses between chunks do not dominate the reading.
pub const CHUNK_LINES: usize = 50_000;

/// Staged rows deleted in one transaction at most (after an ingest, or after a dead one).
pub const DISCARD_ROWS: usize = 5_000;

/// How long one transaction of an ingest reads at most (long lines, a slow disk): another
/// writer sharing the database waits about this long for the lock, far below the busy timeout.
pub const CHUNK_TIME: Duration = Duration::from_millis(200);

/// How long an ingest leaves the write lock free between two chunks: long enough for a writer
/// waiting for it (which looks again every couple of milliseconds) to get in first.
pub const CHUNK_PAUSE: Duration = Duration::from_millis(15);

/// What an ingest did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Requests read from the file.
    pub read: u64,
    /// Of those, new to the job (queued).
    pub added: u64,
    /// Of those, already in the job (left as they are).
    pub known: u64,
    /// Lines that are not valid requests, recorded as failed (`--skip-invalid`); not in `read`.
    pub invalid: u64,
}

/// An ingest in progress: the reader, and what the lines staged so far add up to.
///
/// New requests are queued, known ones (same key, same body) are left as they are, so a
/// resubmitted file resumes its job. When the reader skips invalid lines
/// ([`InputReader::skip_invalid`]), a line that cannot become a request is recorded as a failed
/// request instead (see `store::invalid`); a duplicate custom_id and a changed body still stop
/// the ingest.
pub struct Staging {
    job: JobId,
    reader: InputReader,
    report: IngestReport,
    /// Bad lines left out with a warning (their custom_id holds a request): not an empty file.
    kept_invalid: u64,
    chunk_lines: usize,
    /// Whether the job had requests when the ingest began; `None` until the first chunk looks.
    /// A job without any has no request a line could match, so its lines skip that lookup (the
    /// runner holds the job's lease: nobody adds requests to it meanwhile).
    had_requests: Option<bool>,
}

impl Staging {
    /// Starts an ingest of `reader` into `job`. The job must have no staged lines (see
    /// [`discard_unfinished`]).
    pub fn new(job: JobId, reader: InputReader) -> Staging {
        Staging {
            job,
            reader,
            report: IngestReport::default(),
            kept_invalid: 0,
            chunk_lines: CHUNK_LINES,
            had_requests: None,
        }
    }

    /// Stages the next chunk of lines (at most [`CHUNK_LINES`], for at most [`CHUNK_TIME`]),
    /// all of them or none; returns `true` once the file is read to its end.
    ///
    /// # Errors
    /// [`StoreError::Input`] for bad input, including a duplicate custom_id (with both lines) and
    /// a known custom_id whose body changed; database errors.
    pub fn stage_chunk(&mut self, conn: &Connection) -> Result<bool, StoreError> {
        if self.had_requests.is_none() {
            self.had_requests = Some(stage::has_requests(conn, self.job)?);
        }
        atomically(conn, |conn| {
            let started = Instant::now();
            for _ in 0..self.chunk_lines {
                match self.reader.next() {
                    None => return Ok(true),
                    Some(Ok(prompt)) => self.stage_prompt(conn, &prompt)?,
                    Some(Err(e)) if self.reader.skips_invalid() && e.is_invalid_line() => {
                        self.stage_invalid(conn, &e)?;
                    }
                    Some(Err(e)) => return Err(e.into()),
                }
                if started.elapsed() >= CHUNK_TIME {
                    break;
                }
            }
            Ok(false)
        })
    }

    /// Makes every staged line visible at once: requests queued, moved, fixed, markers recorded
    /// and stale ones dropped, the job's input fingerprint set. Call it once the file is read.
    ///
    /// # Errors
    /// [`InputError::Empty`] for a file without a request; database errors.
    pub fn publish(&self, conn: &Connection) -> Result<IngestReport, StoreError> {
        if self.report.read + self.report.invalid + self.kept_invalid == 0 {
            return Err(InputError::Empty {
                path: self.reader.path().to_owned(),
            }
            .into());
        }
        atomically(conn, |conn| {
            stage::publish_new(conn, self.job)?;
            stage::publish_moves(conn, self.job)?;
            invalid::publish_fixed(conn, self.job)?;
            invalid::publish_markers(conn, self.job, now_ms())?;
            invalid::drop_stale(conn, self.job)?;
            let layout = self.reader.layout().map(TableLayout::to_json);
            conn.execute(
                "UPDATE jobs SET input_fingerprint = ?2, reading_input = 0, input_layout = ?3
                 WHERE id = ?1",
                rusqlite::params![self.job.0, self.reader.fingerprint(), layout],
            )?;
            Ok(self.report)
        })
    }

    fn stage_prompt(&mut self, conn: &Connection, prompt: &Prompt) -> Result<(), StoreError> {
        let action = match &prompt.custom_id {
            // A repeated custom_id is found by the insert (the key is unique among the staged
            // lines), not by a lookup before it: one index search per line instead of two.
            Some(id) => {
                let action = self.action_for(conn, id, prompt)?;
                if !stage::stage_prompt(conn, self.job, id, action, prompt)? {
                    self.refuse_repeat(conn, id, prompt.line)?;
                    return Err(StoreError::Corrupt(format!(
                        "custom_id '{id}' of line {} is staged twice yet was never read before",
                        prompt.line
                    )));
                }
                action
            }
            None => {
                let key = self.derived_key(conn, prompt)?;
                let action = self.action_for(conn, &key, prompt)?;
                if !stage::stage_prompt(conn, self.job, &key, action, prompt)? {
                    return Err(StoreError::Corrupt(format!(
                        "the derived key '{key}' of line {} is staged twice",
                        prompt.line
                    )));
                }
                action
            }
        };
        self.report.read += 1;
        match action {
            Action::Keep => self.report.known += 1,
            Action::Add | Action::Replace | Action::Invalid | Action::KeptInvalid => {
                self.report.added += 1;
            }
        }
        Ok(())
    }

    /// What the publish does with a line under `key`: add it, keep the known request, or replace
    /// the marker of a line that was invalid before. A known key with another body is refused,
    /// unless the line repeats a custom_id of this file, which is the error to show.
    fn action_for(
        &self,
        conn: &Connection,
        key: &str,
        prompt: &Prompt,
    ) -> Result<Action, StoreError> {
        if self.had_requests == Some(false) {
            return Ok(Action::Add);
        }
        match stage::known(conn, self.job, key)? {
            None => Ok(Action::Add),
            Some(Known { body_hash, .. }) if body_hash == prompt.body_hash => Ok(Action::Keep),
            // The line was invalid at an earlier submit and is fixed now.
            Some(Known {
                is_marker: true, ..
            }) => Ok(Action::Replace),
            Some(Known { .. }) => {
                self.refuse_repeat(conn, key, prompt.line)?;
                Err(InputError::ChangedBody {
                    path: self.reader.path().to_owned(),
                    custom_id: key.to_owned(),
                    line: prompt.line,
                }
                .into())
            }
        }
    }

    fn stage_invalid(&mut self, conn: &Connection, e: &InputError) -> Result<(), StoreError> {
        // Every invalid-line error names its line.
        let line = e.line().unwrap_or(0);
        let custom_id = self.reader.salvaged_custom_id();
        let metadata = self.reader.salvaged_metadata();
        let key = invalid::key_for(custom_id.as_deref(), line);
        self.refuse_repeat(conn, &key, line)?;
        let action = match stage::known(conn, self.job, &key)? {
            Some(Known {
                is_marker: false, ..
            }) => {
                self.kept_invalid += 1;
                tracing::warn!(
                    "{e} (skipped: custom_id '{key}' keeps the request and result it already has)"
                );
                Action::KeptInvalid
            }
            Some(_) | None => {
                self.report.invalid += 1;
                Action::Invalid
            }
        };
        let line = Invalid {
            key: &key,
            custom_id: custom_id.as_deref(),
            metadata: metadata.as_deref(),
        };
        stage::stage_invalid(conn, self.job, &line, action, e)
    }

    /// The key of a line without custom_id: derived from its body, numbered past the equal
    /// bodies read before it.
    fn derived_key(&self, conn: &Connection, prompt: &Prompt) -> Result<String, StoreError> {
        // Ends: every occurrence taken is a line of this file staged before.
        let mut occurrence = 1;
        loop {
            let key = prompt.derived_key(occurrence);
            if stage::first_line(conn, self.job, &key)?.is_none() {
                return Ok(key);
            }
            occurrence += 1;
        }
    }

    /// Refuses a custom_id an earlier line of the file already had.
    fn refuse_repeat(&self, conn: &Connection, key: &str, line: u64) -> Result<(), StoreError> {
        match stage::first_line(conn, self.job, key)? {
            None => Ok(()),
            Some(first_line) => Err(InputError::DuplicateCustomId {
                path: self.reader.path().to_owned(),
                custom_id: key.to_owned(),
                first_line,
                line,
            }
            .into()),
        }
    }
}

/// Reads the whole input into the job on one connection, chunk after chunk, and publishes it
/// (tests, benchmarks; the runner uses [`ingest_leased`]). All or nothing.
///
/// # Errors
/// As [`Staging::stage_chunk`] and [`Staging::publish`].
pub fn ingest(
    conn: &Connection,
    job: JobId,
    reader: InputReader,
) -> Result<IngestReport, StoreError> {
    let mut staging = Staging::new(job, reader);
    let result = (|| {
        while !staging.stage_chunk(conn)? {}
        staging.publish(conn)
    })();
    while stage::discard(conn, job, DISCARD_ROWS)? as usize == DISCARD_ROWS {}
    result
}

/// Whether an insert added its row: `false` when a row under the same unique key (a job's
/// request or staged line under a key) is there already, which is the caller's to report.
fn inserted(result: rusqlite::Result<usize>) -> Result<bool, StoreError> {
    match result {
        Ok(_) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The job whose lease this runner holds while it ingests.
pub struct Leased<'a> {
    /// The job.
    pub job: &'a Job,
    /// This runner.
    pub owner: &'a LeaseOwner,
}

/// Reads the whole input into a job whose lease this runner holds, through the store: one short
/// transaction per chunk (renewing the lease), then the publish, with `finish` in the publish's
/// transaction (the job's settings, say: they change only if the file is taken). All or
/// nothing: on an error the staged lines are deleted and the job is as it was.
///
/// # Errors
/// As [`Staging::stage_chunk`] and [`Staging::publish`]; [`LeaseError::Lost`] when another
/// runner took the job over meanwhile.
pub async fn ingest_leased(
    store: &JobStore,
    leased: Leased<'_>,
    reader: InputReader,
    finish: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
) -> Result<IngestReport, StoreError> {
    let job = leased.job.id;
    discard_unfinished(store, job).await?;
    let result = stage_and_publish(store, &leased, Staging::new(job, reader), finish).await;
    // After a publish the staged rows are spent; after an error they are dropped. Either way a
    // failure here leaves them for the next submit or resume to delete.
    if let Err(e) = discard_unfinished(store, job).await {
        tracing::warn!(error = %e, "cannot delete the staged lines of this ingest yet");
    }
    result
}

async fn stage_and_publish(
    store: &JobStore,
    leased: &Leased<'_>,
    mut staging: Staging,
    finish: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
) -> Result<IngestReport, StoreError> {
    loop {
        let renew = renewal(leased);
        let (back, done) = store
            .call(move |c| {
                let done = staging.stage_chunk(c)?;
                renew(c)?;
                Ok((staging, done))
            })
            .await?;
        staging = back;
        if done {
            break;
        }
        // Not a polling loop: a gap in which another process's writer takes the lock.
        tokio::time::sleep(CHUNK_PAUSE).await;
    }
    let renew = renewal(leased);
    store
        .call(move |c| {
            atomically(c, |c| {
                let report = staging.publish(c)?;
                finish(c)?;
                // A long ingest must not start the run on a lapsed lease.
                renew(c)?;
                Ok(report)
            })
        })
        .await
}

/// Renews the job's lease, inside a chunk's transaction.
fn renewal(
    leased: &Leased<'_>,
) -> impl FnOnce(&Connection) -> Result<(), StoreError> + Send + use<> {
    let (job, name, owner) = (leased.job.id, leased.job.name.clone(), leased.owner.clone());
    move |conn| match lease::renew(conn, job, &owner, now_ms())? {
        Renewal::Renewed => Ok(()),
        Renewal::Lost(holder) => Err(LeaseError::Lost { job: name, holder }.into()),
    }
}

/// Deletes the staged lines an earlier ingest of the job left (a runner that died mid-ingest),
/// one short transaction per [`DISCARD_ROWS`] rows; returns how many. Call it holding the job's
/// lease.
///
/// # Errors
/// Database errors.
pub async fn discard_unfinished(store: &JobStore, job: JobId) -> Result<u64, StoreError> {
    let mut discarded = 0;
    loop {
        let n = store
            .call(move |c| stage::discard(c, job, DISCARD_ROWS))
            .await?;
        discarded += n;
        if (n as usize) < DISCARD_ROWS {
            return Ok(discarded);
        }
    }
}
