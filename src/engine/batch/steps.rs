//! The steps of a chunk on the server: upload its file, create its batch (or find the one a
//! crash left unrecorded), poll it, cancel it. Each is journaled before the call (the chunk's
//! state) and after it (the call's row and what it gave).

use std::collections::BTreeMap;

use super::cut::file_stream;
use super::{BatchRun, Mode};
use crate::domain::{ChunkState, EventKind};
use crate::http::batch::{Batch, BatchApiError, BatchStatus};
use crate::store::StoreError;
use crate::store::batches::{self, BatchSeen, ChunkRow};
use crate::store::db;
use crate::util::clock::now_ms;

/// Pages of the batch list read, at most, when looking for a batch whose creation was not
/// recorded (100 batches each, newest first).
const FIND_PAGES: usize = 20;

impl BatchRun<'_> {
    /// Uploads the chunk's input file.
    pub(super) async fn upload(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let id = chunk.id;
        self.store
            .call(move |c| batches::set_state(c, id, ChunkState::Uploading))
            .await?;
        let mut call = self.call(chunk, "upload");
        let filename = format!("{}-chunk-{}.jsonl", file_safe(&self.job.name), chunk.seq);
        let file = file_stream(self.store.clone(), id, chunk.hash.clone());
        let len = u64::try_from(chunk.bytes).unwrap_or(0);
        match self.client.upload_batch_stream(file, len, &filename).await {
            Ok(file) => {
                call.finished_at = now_ms();
                call.http_status = Some(200);
                call.result = Some(file.id.clone());
                self.store
                    .call(move |c| {
                        batches::record_call(c, &call)?;
                        batches::uploaded(c, id, &file.id)
                    })
                    .await
            }
            Err(e) => {
                call.finished_at = now_ms();
                self.call_failed(chunk, call, &e).await
            }
        }
    }

    /// Creates the chunk's batch. The chunk is `creating` from before the call until its batch
    /// is recorded: a failed or unanswered create stays so, and the next step looks for the
    /// batch before creating one.
    pub(super) async fn create(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let Some(file_id) = chunk.input_file_id.clone() else {
            return Err(StoreError::Corrupt(format!(
                "batch chunk {} is uploaded without a file id",
                chunk.seq
            )));
        };
        let id = chunk.id;
        self.store
            .call(move |c| batches::set_state(c, id, ChunkState::Creating))
            .await?;
        let mut call = self.call(chunk, "create");
        let metadata = self.metadata(chunk);
        match self
            .client
            .create_batch(&file_id, &chunk.endpoint, &metadata)
            .await
        {
            Ok(batch) => {
                call.finished_at = now_ms();
                call.http_status = Some(200);
                call.result = Some(batch.id.clone());
                self.record_seen(chunk, &batch, call).await
            }
            Err(e) => {
                call.finished_at = now_ms();
                self.call_failed(chunk, call, &e).await
            }
        }
    }

    /// A chunk left `creating`: its batch may exist. Looks for it in the batch list (by the
    /// token in its metadata); creates it only when it is not there. When settling, a chunk
    /// without a batch goes back to pending instead.
    pub(super) async fn find_or_create(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let mut call = self.call(chunk, "find");
        let mut after: Option<String> = None;
        let oldest = chunk.cut_at / 1000 - 3600;
        for _ in 0..FIND_PAGES {
            match self.client.list_batches(100, after.as_deref()).await {
                Ok(page) => {
                    if let Some(batch) = page.data.iter().find(|b| is_ours(chunk, b)) {
                        call.finished_at = now_ms();
                        call.http_status = Some(200);
                        call.result = Some(batch.id.clone());
                        crate::say!(
                            "{}: chunk {}: found batch {} that an earlier run created without recording it",
                            self.job.name,
                            chunk.seq,
                            batch.id
                        );
                        return self.record_seen(chunk, batch, call).await;
                    }
                    let older = page.data.last().is_none_or(|b| b.created_at < oldest);
                    if !page.has_more || older {
                        break;
                    }
                    after = page
                        .last_id
                        .or_else(|| page.data.last().map(|b| b.id.clone()));
                }
                // No batch list at all: no batch can exist for the chunk.
                Err(BatchApiError::Api {
                    status: status @ (404 | 405 | 501),
                    ..
                }) => {
                    call.http_status = Some(status);
                    break;
                }
                Err(e) => {
                    call.finished_at = now_ms();
                    return self.call_failed(chunk, call, &e).await;
                }
            }
        }
        call.finished_at = now_ms();
        call.http_status = call.http_status.or(Some(200));
        call.result = Some("not found".to_owned());
        self.store
            .call(move |c| batches::record_call(c, &call))
            .await?;
        match self.mode {
            Mode::Run => self.create(chunk).await,
            Mode::Settle => self.give_back(chunk).await,
        }
    }

    /// Polls the chunk's batch.
    pub(super) async fn poll(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let batch_id = batch_id_of(chunk)?;
        let mut call = self.call(chunk, "poll");
        match self.client.retrieve_batch(&batch_id).await {
            Ok(batch) => {
                call.finished_at = now_ms();
                call.http_status = Some(200);
                call.result = Some(batch.status.as_str().to_owned());
                self.record_seen(chunk, &batch, call).await
            }
            Err(e) => {
                call.finished_at = now_ms();
                self.call_failed(chunk, call, &e).await
            }
        }
    }

    /// Asks for the chunk's batch to be cancelled (once), then polls it until it ends.
    pub(super) async fn cancel_then_poll(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        if chunk.batch_status.as_deref() == Some(BatchStatus::Cancelling.as_str()) {
            return self.poll(chunk).await;
        }
        let batch_id = batch_id_of(chunk)?;
        let mut call = self.call(chunk, "cancel");
        match self.client.cancel_batch(&batch_id).await {
            Ok(batch) => {
                call.finished_at = now_ms();
                call.http_status = Some(200);
                call.result = Some(batch.status.as_str().to_owned());
                crate::say!(
                    "{}: chunk {}: asked for batch {batch_id} to be cancelled",
                    self.job.name,
                    chunk.seq
                );
                self.record_seen(chunk, &batch, call).await
            }
            // A batch that ended meanwhile cannot be cancelled (409): poll it instead.
            Err(BatchApiError::Api { status: 409, .. }) => self.poll(chunk).await,
            Err(e) => {
                call.finished_at = now_ms();
                self.call_failed(chunk, call, &e).await
            }
        }
    }

    /// Records a batch as a create, find, poll or cancel saw it, with the call, and says so
    /// when its status changed.
    async fn record_seen(
        &mut self,
        chunk: &ChunkRow,
        batch: &Batch,
        call: crate::store::batches::CallRecord,
    ) -> Result<(), StoreError> {
        let (id, job, now) = (chunk.id, self.job.id, now_ms());
        let ended = batch.status.is_terminal();
        let delay = self.settings.poll_delay(chunk.polls);
        let next_call_at = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let status = batch.status.as_str();
        let errors = batch
            .errors
            .as_ref()
            .filter(|e| !e.data.is_empty())
            .and_then(|e| serde_json::to_string(e).ok());
        let (batch_id, output, error_file) = (
            batch.id.clone(),
            batch.output_file_id.clone(),
            batch.error_file_id.clone(),
        );
        let counts = batch.request_counts;
        let seq = chunk.seq;
        let before = self
            .store
            .call(move |c| {
                batches::record_call(c, &call)?;
                let before = batches::seen(
                    c,
                    id,
                    &BatchSeen {
                        batch_id: &batch_id,
                        status,
                        ended,
                        total: counts.total as i64,
                        completed: counts.completed as i64,
                        failed: counts.failed as i64,
                        output_file_id: output.as_deref(),
                        error_file_id: error_file.as_deref(),
                        errors: errors.as_deref(),
                    },
                    next_call_at,
                    now,
                )?;
                match before.as_deref() {
                    None => db::record_event(
                        c,
                        job,
                        EventKind::BatchSubmitted,
                        Some(&format!("chunk {seq}: batch {batch_id} {status}")),
                        now,
                    )?,
                    Some(previous) if previous != status => db::record_event(
                        c,
                        job,
                        EventKind::BatchStatus,
                        Some(&format!(
                            "chunk {seq}: batch {batch_id} {status} ({}/{} done, {} failed)",
                            counts.completed + counts.failed,
                            counts.total,
                            counts.failed
                        )),
                        now,
                    )?,
                    Some(_) => {}
                }
                Ok(before)
            })
            .await?;
        if before.as_deref() != Some(status) {
            let progress = match counts.total {
                0 => String::new(),
                total => format!(
                    " ({}/{total} done, {} failed)",
                    counts.completed + counts.failed,
                    counts.failed
                ),
            };
            crate::say!(
                "{}: chunk {}: batch {} {status}{progress}",
                self.job.name,
                chunk.seq,
                batch.id
            );
        }
        Ok(())
    }

    /// The metadata the chunk's batch is created with: the job, the chunk, and the token that
    /// finds it again.
    fn metadata(&self, chunk: &ChunkRow) -> BTreeMap<String, String> {
        let job: String = self.job.name.chars().take(400).collect();
        BTreeMap::from([
            ("runner_job".to_owned(), job),
            ("runner_chunk".to_owned(), chunk.seq.to_string()),
            ("runner_token".to_owned(), chunk.token.clone()),
        ])
    }
}

/// Whether `batch` is the one created for `chunk`: it carries the chunk's token, or it was made
/// from the input file uploaded for the chunk (a server that keeps no metadata still names the
/// file, and no other batch can have been created from it).
fn is_ours(chunk: &ChunkRow, batch: &Batch) -> bool {
    made_for(&chunk.token, chunk.input_file_id.as_deref(), batch)
}

fn made_for(token: &str, input_file_id: Option<&str>, batch: &Batch) -> bool {
    let by_token = batch
        .metadata
        .as_ref()
        .and_then(|m| m.get("runner_token"))
        .is_some_and(|t| t == token);
    by_token || input_file_id == Some(batch.input_file_id.as_str())
}

fn batch_id_of(chunk: &ChunkRow) -> Result<String, StoreError> {
    chunk.batch_id.clone().ok_or_else(|| {
        StoreError::Corrupt(format!(
            "batch chunk {} is submitted without a batch id",
            chunk.seq
        ))
    })
}

/// A job name as part of a file name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(input_file_id: &str, token: Option<&str>) -> Batch {
        let metadata = token.map(|t| serde_json::json!({"runner_token": t}));
        serde_json::from_value(serde_json::json!({
            "id": "batch_1", "status": "validating", "endpoint": "/v1/chat/completions",
            "input_file_id": input_file_id, "created_at": 1, "metadata": metadata,
        }))
        .expect("a batch")
    }

    /// After a crash during a create, the chunk's batch is found by its token, or, on a server
    /// that keeps no metadata, by the input file uploaded for the chunk; never another's.
    #[test]
    fn a_chunks_batch_is_found_by_its_token_or_its_input_file() {
        assert!(made_for("t1", Some("file-1"), &batch("file-9", Some("t1"))));
        assert!(made_for("t1", Some("file-1"), &batch("file-1", None)));
        assert!(!made_for("t1", Some("file-1"), &batch("file-2", None)));
        assert!(!made_for(
            "t1",
            Some("file-1"),
            &batch("file-2", Some("t2"))
        ));
        assert!(!made_for("t1", None, &batch("file-1", None)));
    }
}
