//! Importing an ended batch: its output and error files are streamed (never whole in memory,
//! never on disk) line by line into the journal, each line an attempt of the request whose
//! `custom_id` it carries; then every request the files did not answer gets its own attempt
//! (expired, cancelled, refused by validation, or missing) and goes back to pending within its
//! budget. Importing again after a crash skips what was journaled: a request leaves `batched`
//! in the same transaction as its attempt.
//!
//! A file the server does not serve (404) is asked for again, with backoff, within the chunk's
//! budget for transient failures: a server may serve a file a moment after its batch ended.
//! Past the budget it is gone (deleted, or past its expiry) and can never be read: the lines it
//! answered are settled as unanswered with an unknown outcome and sent again. They ran and may
//! be billed twice, as a request in flight at a crash may; waiting would wait forever.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::BatchRun;
use crate::domain::JobId;
use crate::domain::{AttemptOutcome, Class, Disposition, RequestState};
use crate::engine::attempt::Reading;
use crate::engine::attempt::batched::{FromBatch, judge, read_result, unanswered};
use crate::engine::retry::RetryPolicy;
use crate::http::batch::{BatchApiError, BatchErrors, BatchResult};
use crate::store::StoreError;
use crate::store::batches::{self, ChunkRow, Waiting};
use crate::util::clock::now_ms;
use crate::util::text::printable;

/// Results journaled per store call.
const GROUP: usize = 500;
/// Bytes of the pipe between the download and the import.
const PIPE_BYTES: usize = 256 * 1024;
/// Room beyond `--max-response-bytes` for the rest of an output line.
const LINE_OVERHEAD: usize = 64 * 1024;

/// What an import journaled.
#[derive(Debug, Default, Clone, Copy)]
struct Imported {
    succeeded: u64,
    failed: u64,
    again: u64,
    /// Lines whose `custom_id` is not waiting in the chunk (journaled before, or unknown).
    skipped: u64,
    /// Lines that could not be read.
    unreadable: u64,
}

impl Imported {
    fn add(&mut self, other: Imported) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.again += other.again;
        self.skipped += other.skipped;
        self.unreadable += other.unreadable;
    }
}

impl BatchRun<'_> {
    /// Journals an ended batch's results and settles the lines it did not answer.
    pub(super) async fn import(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let mut total = Imported::default();
        let mut gone: Option<String> = None;
        let files = [
            ("output", chunk.output_file_id.clone()),
            ("error", chunk.error_file_id.clone()),
        ];
        for (which, file) in files {
            let Some(file) = file else { continue };
            let mut call = self.call(chunk, "download");
            let (mut writer, reader) = tokio::io::duplex(PIPE_BYTES);
            let download = async {
                let result = self.client.download_file(&file, &mut writer).await;
                drop(writer);
                result
            };
            let (downloaded, imported) = tokio::join!(download, self.import_lines(chunk, reader));
            let (imported, stop) = imported?;
            total.add(imported);
            if let Some(stop) = stop {
                self.stop.get_or_insert(stop);
            }
            call.finished_at = now_ms();
            match downloaded {
                Ok(bytes) => {
                    call.http_status = Some(200);
                    call.result = Some(format!("{which} file {file}: {bytes} bytes"));
                    self.store
                        .call(move |c| batches::record_call(c, &call))
                        .await?;
                }
                Err(e) if not_served(&e) => {
                    let spent = chunk.spent.of(Class::Transient) + 1;
                    let again = self
                        .policy
                        .retry_delay(Class::Transient, spent, None, 0.0)
                        .is_some();
                    if again {
                        let transient = Some(Class::Transient);
                        return self.call_failed_as(chunk, call, &e, transient).await;
                    }
                    super::note_failure(&mut call, &e, Some(Class::RequestFailed));
                    let what = format!(
                        "the {which} file {file} of batch {} is gone from the server (HTTP {}, \
                         {spent} times)",
                        chunk.batch_id.as_deref().unwrap_or("-"),
                        call.http_status.unwrap_or_default(),
                    );
                    crate::say!(
                        "{}: chunk {}: {what}: the lines it answered are sent again, and may be \
                         billed twice",
                        self.job.name,
                        chunk.seq
                    );
                    call.result = Some(format!("{which} file {file}: gone"));
                    self.store
                        .call(move |c| batches::record_call(c, &call))
                        .await?;
                    gone.get_or_insert(what);
                }
                Err(e) => {
                    // What was read is journaled; the rest comes with the next download.
                    return self.call_failed(chunk, call, &e).await;
                }
            }
        }
        let rest = self.settle_unanswered(chunk, gone).await?;
        total.add(rest);
        self.tell_imported(chunk, total);
        self.stop_on_configuration_error(chunk).await?;
        if self.settings.delete_files {
            self.delete_files(chunk).await?;
        }
        Ok(())
    }

    /// Reads result lines from `reader` and journals them, a group at a time.
    async fn import_lines(
        &self,
        chunk: &ChunkRow,
        reader: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(Imported, Option<String>), StoreError> {
        let mut reader = tokio::io::BufReader::new(reader);
        let mut stop = None;
        let cap = self.client.max_body_bytes().saturating_add(LINE_OVERHEAD);
        let mut total = Imported::default();
        let mut group: Vec<BatchResult> = Vec::with_capacity(GROUP);
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            let read = read_line_capped(&mut reader, &mut line, cap).await;
            let Ok(read) = read else {
                // The download broke off: it reports why; the lines so far are journaled.
                break;
            };
            let Some(whole) = read else { break };
            number += 1;
            let parsed = match whole {
                true => std::str::from_utf8(&line)
                    .ok()
                    .map(str::trim)
                    .filter(|text| !text.is_empty())
                    .map(|text| BatchResult::parse(text, number)),
                false => None,
            };
            match parsed {
                Some(Ok(result)) => group.push(result),
                Some(Err(e)) => {
                    let error = e.to_string();
                    tracing::warn!(error = %printable(&error), "skipping a batch result line");
                    total.unreadable += 1;
                }
                None if whole => {}
                None => total.unreadable += 1,
            }
            if group.len() >= GROUP {
                let (imported, stops) = self.journal(chunk, std::mem::take(&mut group)).await?;
                total.add(imported);
                stop = stop.or(stops);
            }
        }
        if !group.is_empty() {
            let (imported, stops) = self.journal(chunk, group).await?;
            total.add(imported);
            stop = stop.or(stops);
        }
        Ok((total, stop))
    }

    /// Journals a group of result lines in one store call.
    async fn journal(
        &self,
        chunk: &ChunkRow,
        results: Vec<BatchResult>,
    ) -> Result<(Imported, Option<String>), StoreError> {
        let (job, chunk_id) = (self.job.id, chunk.id);
        let mut journal = self.results_of(chunk);
        let (imported, stop) = self
            .store
            .call(move |c| {
                for result in results {
                    let success = result.status_code.is_some_and(|s| (200..300).contains(&s));
                    let waiting = match batches::in_chunk(c, job, chunk_id, &result.custom_id)? {
                        Some((waiting, RequestState::Batched)) => Some(waiting),
                        // Two lines for one request, a failure first: a success after it says
                        // the work was done (and billed), so it is journaled, not sent again.
                        Some((waiting, RequestState::Pending | RequestState::Failed))
                            if success =>
                        {
                            Some(waiting)
                        }
                        // Journaled already (a download imported again), or not this chunk's.
                        Some(_) | None => None,
                    };
                    let Some(waiting) = waiting else {
                        journal.imported.skipped += 1;
                        continue;
                    };
                    let reading = read_result(result, journal.policy.max_server_wait);
                    journal.record(c, &waiting, reading)?;
                }
                Ok((journal.imported, journal.stop))
            })
            .await?;
        self.count_progress(imported);
        Ok((imported, stop))
    }

    /// Gives every request still waiting in the chunk its attempt (the batch ended without an
    /// answer for it) and marks the chunk imported, in one transaction.
    /// `gone` names a file of the batch the server no longer has: the lines it did not
    /// answer are then sent again, whatever the batch's status.
    async fn settle_unanswered(
        &mut self,
        chunk: &ChunkRow,
        gone: Option<String>,
    ) -> Result<Imported, StoreError> {
        let chunk_id = chunk.id;
        let mut journal = self.results_of(chunk);
        let status = chunk.batch_status.clone().unwrap_or_default();
        let errors: BatchErrors = chunk
            .errors
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or_default();
        let (imported, stop) = self
            .store
            .call(move |c| {
                let waiting = batches::all_waiting(c, chunk_id)?;
                // Validation errors name input lines (1-based, in file order).
                let lines = match errors.data.iter().any(|e| e.line.is_some()) {
                    true => batches::file_lines(c, chunk_id)?,
                    false => std::collections::HashMap::new(),
                };
                for w in &waiting {
                    let line = lines.get(&w.id).copied();
                    let reading = match errors
                        .data
                        .iter()
                        .find(|e| e.line.is_some() && e.line == line)
                    {
                        Some(e) => unanswered(
                            AttemptOutcome::NotSent,
                            Class::RequestFailed,
                            e.code.as_deref().unwrap_or("batch_validation_failed"),
                            format!(
                                "the batch refused this line: {}",
                                e.message.as_deref().unwrap_or("no message")
                            ),
                        ),
                        None => match &gone {
                            Some(what) => file_gone(what),
                            None => unanswered_reading(&status, &errors),
                        },
                    };
                    journal.record(c, w, reading)?;
                }
                batches::imported(c, chunk_id, now_ms())?;
                Ok((journal.imported, journal.stop))
            })
            .await?;
        self.count_progress(imported);
        if let Some(stop) = stop {
            self.stop.get_or_insert(stop);
        }
        Ok(imported)
    }

    /// What journals the results of `chunk`'s batch, on the store thread.
    fn results_of(&self, chunk: &ChunkRow) -> Results {
        let (started_at, finished_at) = times(chunk);
        Results {
            job: self.job.id,
            batch_id: chunk.batch_id.clone().unwrap_or_default(),
            policy: self.policy,
            key_fingerprint: self.client.key_fingerprint().map(str::to_owned),
            started_at,
            finished_at,
            imported: Imported::default(),
            stop: None,
        }
    }

    /// A batch whose results all failed the same permanent way (a wrong model name, an
    /// endpoint the model does not serve) shows a configuration error, as a streak does in sync
    /// mode: those requests go back to pending with fresh budgets, and the job stops.
    async fn stop_on_configuration_error(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let Some(batch_id) = chunk.batch_id.clone() else {
            return Ok(());
        };
        let min = self.stop_after_same_error;
        let found = self
            .store
            .call(move |c| {
                let Some(same) = batches::same_error_everywhere(c, &batch_id, min)? else {
                    return Ok(None);
                };
                let requeued = crate::store::db::requeue(c, &same.requests)?;
                Ok(Some((requeued, same.status, same.code)))
            })
            .await?;
        if let Some((requeued, status, code)) = found {
            self.tally.unfail(requeued);
            self.stop.get_or_insert(format!(
                "every result of chunk {}'s batch failed with HTTP {} {}: this looks like a configuration error \
                 (e.g. a wrong model name or endpoint); fix it, then run `runner resume` (those {requeued} requests were requeued)",
                chunk.seq,
                status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                code.as_deref().unwrap_or("(no code)"),
            ));
        }
        Ok(())
    }

    /// Deletes the chunk's files from the server (`--delete-batch-files`); a failure is
    /// journaled and said, never retried: the files expire on their own.
    async fn delete_files(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let files = [
            chunk.input_file_id.clone(),
            chunk.output_file_id.clone(),
            chunk.error_file_id.clone(),
        ];
        for file in files.into_iter().flatten() {
            let mut call = self.call(chunk, "delete");
            let result = self.client.delete_file(&file).await;
            call.finished_at = now_ms();
            call.result = Some(file.clone());
            if let Err(e) = &result {
                super::note_failure(&mut call, e, e.class());
                crate::say!("{}: cannot delete file {file}: {e}", self.job.name);
            } else {
                call.http_status = Some(200);
            }
            self.store
                .call(move |c| batches::record_call(c, &call))
                .await?;
        }
        Ok(())
    }

    /// Counts results and their attempts for the progress display.
    fn count_progress(&self, imported: Imported) {
        self.tally
            .attempts_journaled(imported.succeeded + imported.failed + imported.again);
        for _ in 0..imported.succeeded {
            self.tally.succeeded();
        }
        for _ in 0..imported.failed {
            self.tally.failed();
        }
        for _ in 0..imported.again {
            self.tally.retry_scheduled();
        }
    }

    fn tell_imported(&self, chunk: &ChunkRow, total: Imported) {
        let mut line = format!(
            "{}: chunk {}: journaled {} succeeded, {} failed, {} to send again",
            self.job.name, chunk.seq, total.succeeded, total.failed, total.again
        );
        if total.skipped > 0 {
            line.push_str(&format!(
                ", {} lines already journaled or unknown",
                total.skipped
            ));
        }
        if total.unreadable > 0 {
            line.push_str(&format!(", {} unreadable lines", total.unreadable));
        }
        crate::say!("{line}");
    }
}

/// Journals a batch's results (a line of its files, or none) as attempts of their requests,
/// counting them and keeping the first job-level stop one of them calls for.
struct Results {
    job: JobId,
    batch_id: String,
    policy: RetryPolicy,
    key_fingerprint: Option<String>,
    started_at: i64,
    finished_at: i64,
    imported: Imported,
    stop: Option<String>,
}

impl Results {
    /// Decides `waiting`'s fate from `reading` and journals it, in the caller's transaction.
    fn record(
        &mut self,
        c: &rusqlite::Connection,
        waiting: &Waiting,
        reading: Reading,
    ) -> Result<(), StoreError> {
        let from = FromBatch {
            request: waiting.id,
            job: self.job,
            attempts: waiting.attempts,
            spent: waiting.spent,
            key_fingerprint: self.key_fingerprint.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
        };
        let (completion, stop) = judge(reading, from, &self.policy);
        count(&mut self.imported, completion.disposition);
        batches::record_result(c, &completion, &self.batch_id)?;
        if self.stop.is_none() {
            self.stop = stop;
        }
        Ok(())
    }
}

/// When a chunk's batch ran: from its creation to when it was seen ended.
fn times(chunk: &ChunkRow) -> (i64, i64) {
    let started = chunk.submitted_at.unwrap_or(chunk.cut_at);
    let finished = chunk.ended_at.unwrap_or_else(now_ms);
    (started, finished.max(started))
}

fn count(imported: &mut Imported, disposition: Disposition) {
    match disposition {
        Disposition::Succeeded => imported.succeeded += 1,
        Disposition::Failed => imported.failed += 1,
        Disposition::RetryAt(_) | Disposition::Requeue => imported.again += 1,
    }
}

/// The attempt of a line that a batch ended without answering, by how the batch ended.
fn unanswered_reading(status: &str, errors: &BatchErrors) -> Reading {
    let first = errors.data.first();
    match status {
        "expired" => unanswered(
            AttemptOutcome::NotSent,
            Class::Transient,
            "batch_expired",
            "the batch expired before this line was run".to_owned(),
        ),
        "cancelled" => unanswered(
            AttemptOutcome::NotSent,
            Class::Transient,
            "batch_cancelled",
            "the batch was cancelled before this line was run".to_owned(),
        ),
        // Over the project's enqueued-token limit: a wait, not a fault of the lines.
        "failed" if first.and_then(|e| e.code.as_deref()) == Some("token_limit_exceeded") => {
            unanswered(
                AttemptOutcome::NotSent,
                Class::RateLimited,
                "token_limit_exceeded",
                format!(
                    "the batch was refused over the enqueued-token limit: {}",
                    first
                        .and_then(|e| e.message.as_deref())
                        .unwrap_or("no message")
                ),
            )
        }
        "failed" => unanswered(
            AttemptOutcome::NotSent,
            Class::Transient,
            first
                .and_then(|e| e.code.as_deref())
                .unwrap_or("batch_failed"),
            format!(
                "the batch failed validation: {}",
                first
                    .and_then(|e| e.message.as_deref())
                    .unwrap_or("no reason given")
            ),
        ),
        _ => unanswered(
            AttemptOutcome::OutcomeUnknown,
            Class::Transient,
            "missing_from_batch_output",
            format!("the batch ended {status} without a result for this line"),
        ),
    }
}

/// A line of a file the server no longer has: it ran, its answer cannot be read.
fn file_gone(what: &str) -> Reading {
    unanswered(
        AttemptOutcome::OutcomeUnknown,
        Class::Transient,
        "batch_file_gone",
        format!("{what}: this line's answer cannot be read, so it is sent again"),
    )
}

/// A download refused because the server does not have the file (yet, or any more).
fn not_served(error: &BatchApiError) -> bool {
    matches!(
        error,
        BatchApiError::Api {
            status: 404 | 410,
            ..
        }
    )
}

/// Reads one line (without its `\n`) into `line`, keeping at most `cap` bytes: `Some(true)` for
/// a whole line, `Some(false)` for one cut at the cap (its rest is skipped), `None` at the end.
async fn read_line_capped(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut whole = true;
    let mut any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (end, true),
            None => (available.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        if take > room {
            whole = false;
        }
        line.extend_from_slice(&available[..take.min(room)]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(whole));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_or_marked_cut_at_the_cap() {
        let data = b"short\n0123456789abcdef\n\nlast-without-newline".to_vec();
        let mut reader = tokio::io::BufReader::with_capacity(4, &data[..]);
        let mut line = Vec::new();
        let mut seen = Vec::new();
        while let Some(whole) = read_line_capped(&mut reader, &mut line, 10).await.unwrap() {
            seen.push((String::from_utf8(line.clone()).unwrap(), whole));
        }
        assert_eq!(
            seen,
            [
                ("short".to_owned(), true),
                ("0123456789".to_owned(), false),
                (String::new(), true),
                ("last-witho".to_owned(), false),
            ]
        );
    }
}
