//! The second read of a new job's file: its requests inserted into the job chunk after chunk
//! (see [`crate::store::ingest::direct`]) while the pool already sends the first ones.
//!
//! A thread parses the file ([`FEED_CHUNK_LINES`] lines at a time, a couple of chunks ahead);
//! the [`Feeder`] hands each chunk to the store, one short transaction each, and tells the pool
//! through a [`FeedWatch`] that more requests are there, and at the end whether the whole file
//! is in. The pool does not end while the file is still being read: a request of the file not
//! yet inserted is a request not yet done. The feed stops at a chunk's end when the run stops
//! (a signal, a job-level stop); the job then stays marked as reading its file, and `resume`
//! reads the rest.

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::JobId;
use crate::input::{Checked, InputError, InputReader, Prompt};
use crate::store::db::atomically;
use crate::store::ingest::direct;
use crate::store::{JobStore, StoreError};

/// Lines inserted in one transaction at most: a couple of milliseconds of the store's thread,
/// which the pool's claims and journal writes wait out meanwhile (2,000 lines held claims up
/// long enough to empty the pool against a fast server), and few enough that the first chunk is
/// in (and its first request out) a moment after the check.
pub const FEED_CHUNK_LINES: usize = 500;

/// Bytes of requests (bodies, metadata, headers) in one chunk at most: long lines make short
/// chunks, so the chunks waiting for the store stay small in memory whatever the lines.
pub const FEED_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Parsed chunks waiting for the store at most: the parser's lead, bounded in memory.
const CHUNKS_AHEAD: usize = 2;

/// Where the reading of the file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// More chunks are coming.
    Going,
    /// Every line is in the job.
    Done,
    /// Reading stopped on an error; the message says what happened and what to do.
    Failed(String),
    /// The run stopped before the end of the file.
    Stopped,
}

/// What the pool sees of the feed: it waits for a change instead of ending while it is
/// [`Reading::Going`].
#[derive(Clone, Debug)]
pub struct FeedWatch(watch::Receiver<Reading>);

impl FeedWatch {
    /// Where the reading is now.
    pub fn now(&self) -> Reading {
        self.0.borrow().clone()
    }

    /// Completes when the reading moved on since this watch last looked (a chunk is in, or it
    /// ended); never, once it has ended.
    pub async fn moved(&mut self) {
        if self.0.changed().await.is_err() {
            // The feeder is gone: nothing will move any more.
            std::future::pending::<()>().await;
        }
    }
}

/// What the parsing thread hands over.
enum Parsed {
    Lines(Vec<Prompt>),
    End { fingerprint: String },
    Failed(InputError),
}

/// The second read of a checked file into a job that has no requests (see the module docs).
pub struct Feeder {
    job: JobId,
    requests: u64,
    /// The fingerprint of the file the check read: the second read must read the same bytes.
    fingerprint: String,
    /// The spreadsheet layout the check read, recorded with the first chunk.
    layout: Option<String>,
    path: PathBuf,
    parsed: mpsc::Receiver<Parsed>,
    status: watch::Sender<Reading>,
}

impl Feeder {
    /// Starts parsing `reader` on a thread of its own: the file that [`crate::input::check`]
    /// found good, with what it found. Nothing is written before [`Feeder::first_chunk`].
    pub fn start(job: JobId, reader: InputReader, checked: &Checked) -> Feeder {
        let path = reader.path().to_owned();
        let (tx, parsed) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || parse(reader, &tx));
        Feeder {
            job,
            requests: checked.requests,
            fingerprint: checked.fingerprint.clone(),
            layout: checked.layout.clone(),
            path,
            parsed,
            status: watch::channel(Reading::Going).0,
        }
    }

    /// Inserts the first chunk and marks the job as reading its file, with `then` (the job's
    /// settings, say) in the same transaction: all of it or nothing. Returns whether the file
    /// is all in.
    ///
    /// # Errors
    /// Database errors; an input error when the file changed since its check.
    pub async fn first_chunk(
        &mut self,
        store: &JobStore,
        then: impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<bool, StoreError> {
        let job = self.job;
        let parsed = self.recv().await?;
        let path = self.path.clone();
        let layout = self.layout.clone();
        store
            .call(move |c| {
                atomically(c, |c| {
                    direct::begin(c, job, layout.as_deref())?;
                    then(c)?;
                    write(c, job, &path, parsed)
                })
            })
            .await
    }

    /// Reads the rest of the file into the job, stopping at a chunk's end once `stop` is
    /// cancelled; says how it ended to every [`FeedWatch`] (and returns it).
    pub async fn rest(mut self, store: &JobStore, stop: &CancellationToken) -> Reading {
        let ended = loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break Reading::Stopped,
                next = self.next_chunk(store) => match next {
                    Ok(false) => {
                        self.status.send_replace(Reading::Going);
                    }
                    Ok(true) => break Reading::Done,
                    Err(e) => break Reading::Failed(self.failure(&e)),
                },
            }
        };
        self.status.send_replace(ended.clone());
        ended
    }

    /// The requests of the file, as its check counted them.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// A watch of this feed for the pool.
    pub fn watch(&self) -> FeedWatch {
        FeedWatch(self.status.subscribe())
    }

    /// Inserts the next parsed chunk, or records the end of the file; `true` at its end.
    async fn next_chunk(&mut self, store: &JobStore) -> Result<bool, StoreError> {
        let parsed = self.recv().await?;
        let (job, path) = (self.job, self.path.clone());
        store.call(move |c| write(c, job, &path, parsed)).await
    }

    /// The next chunk from the parsing thread.
    async fn recv(&mut self) -> Result<Parsed, StoreError> {
        match self.parsed.recv().await {
            Some(Parsed::Failed(e)) => Err(e.into()),
            Some(Parsed::End { fingerprint }) if fingerprint != self.fingerprint => {
                Err(InputError::Changed {
                    path: self.path.clone(),
                }
                .into())
            }
            Some(parsed) => Ok(parsed),
            None => Err(StoreError::Failed(format!(
                "{}: the thread reading the file ended early",
                self.path.display()
            ))),
        }
    }

    /// The stop reason for a feed that failed: the error, and what `resume` does about it.
    fn failure(&self, e: &StoreError) -> String {
        format!(
            "reading {} stopped: {e}; the requests read so far are in the job, and `runner resume` \
             reads the rest once that is fixed",
            self.path.display()
        )
    }
}

/// Writes a parsed chunk, or the end of the file; `true` at its end.
fn write(
    conn: &rusqlite::Connection,
    job: JobId,
    path: &Path,
    parsed: Parsed,
) -> Result<bool, StoreError> {
    match parsed {
        Parsed::Lines(prompts) => direct::insert(conn, job, path, &prompts).map(|()| false),
        Parsed::End { fingerprint } => direct::finish(conn, job, &fingerprint).map(|()| true),
        Parsed::Failed(e) => Err(e.into()),
    }
}

/// Parses `reader` into chunks of [`FEED_CHUNK_LINES`] lines or [`FEED_CHUNK_BYTES`] bytes and
/// sends them, then the file's fingerprint; ends early when the feeder is gone.
fn parse(mut reader: InputReader, tx: &mpsc::Sender<Parsed>) {
    let mut chunk = Vec::with_capacity(FEED_CHUNK_LINES);
    let mut bytes = 0;
    loop {
        match reader.next() {
            Some(Ok(prompt)) => {
                bytes += prompt.body.len()
                    + prompt.metadata.as_ref().map_or(0, String::len)
                    + prompt.headers.as_ref().map_or(0, String::len);
                chunk.push(prompt);
                if chunk.len() < FEED_CHUNK_LINES && bytes < FEED_CHUNK_BYTES {
                    continue;
                }
                bytes = 0;
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(FEED_CHUNK_LINES));
                if tx.blocking_send(Parsed::Lines(full)).is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                // The check read this file whole without an error: it changed since.
                let _ = tx.blocking_send(Parsed::Failed(e));
                return;
            }
            None => {
                if !chunk.is_empty() && tx.blocking_send(Parsed::Lines(chunk)).is_err() {
                    return;
                }
                let fingerprint = reader.fingerprint();
                let _ = tx.blocking_send(Parsed::End { fingerprint });
                return;
            }
        }
    }
}
