//! Cutting: pending requests due now become chunks. Runs on the store thread in one call, so
//! what it reads and what it records are one consistent view; a chunk's bytes are hashed and
//! dropped (they are rebuilt from its requests at upload, byte for byte).

use std::collections::HashMap;

use serde_json::Value;

use super::BatchRun;
use super::chunks::{BatchLine, Chunk, ChunkError, ChunkLimits, Chunker};
use crate::domain::{JobId, RequestId};
use crate::store::StoreError;
use crate::store::batches::{self, LineRow, NewChunk};
use crate::util::clock::now_ms;

/// The endpoints the hosted Batch API runs.
pub(crate) const BATCH_ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
];

/// What one cut did.
#[derive(Debug, Default)]
pub(super) struct Cut {
    /// `(seq, lines, endpoint, model)` of each new chunk.
    chunks: Vec<(i64, usize, String, String)>,
    /// Requests that cannot go into a batch, with the first reason seen.
    unbatchable: Option<(u64, String)>,
    /// Requests with their own headers, which a batch line cannot carry.
    headers_dropped: u64,
    /// Requests put into a chunk that had been attempted before.
    pub(super) again: u64,
}

impl Cut {
    /// Says on stderr what was cut, and (once per run) what could not be.
    pub(super) fn tell(&self, job: &str, told_unbatchable: &mut bool) {
        for (seq, lines, endpoint, model) in &self.chunks {
            eprintln!("{job}: chunk {seq}: {lines} requests for {endpoint} ({model})");
        }
        if self.headers_dropped > 0 {
            eprintln!(
                "{job}: {} requests carry their own headers, which a batch does not send",
                self.headers_dropped
            );
        }
        if let (Some((n, reason)), false) = (&self.unbatchable, *told_unbatchable) {
            eprintln!("{job}: {n} requests cannot go through the Batch API: {reason}");
            *told_unbatchable = true;
        }
    }
}

impl BatchRun<'_> {
    /// Cuts the job's due pending requests into chunks and records them.
    pub(super) async fn cut(&self) -> Result<Cut, StoreError> {
        let (job, limits) = (self.job.id, self.settings.limits());
        self.store
            .call(move |c| cut_due(c, job, limits, now_ms()))
            .await
    }
}

/// A request as the line of a batch input file; `Err` says why it cannot be one.
pub(super) fn batch_line(row: &LineRow) -> Result<BatchLine, String> {
    if row.method != "POST" {
        return Err(format!(
            "request {}: {} {} is not a POST",
            row.key, row.method, row.url
        ));
    }
    if !BATCH_ENDPOINTS.contains(&row.url.as_str()) {
        return Err(format!(
            "request {}: {} is not one of the Batch API's endpoints ({})",
            row.key,
            row.url,
            BATCH_ENDPOINTS.join(", ")
        ));
    }
    let body: Value = serde_json::from_str(&row.body)
        .map_err(|e| format!("request {}: its stored body does not parse: {e}", row.key))?;
    Ok(BatchLine {
        custom_id: row.key.clone(),
        method: row.method.clone(),
        url: row.url.clone(),
        body,
    })
}

fn cut_due(
    conn: &rusqlite::Connection,
    job: JobId,
    limits: ChunkLimits,
    now: i64,
) -> Result<Cut, StoreError> {
    let mut chunker =
        Chunker::new(limits).map_err(|e| StoreError::Failed(format!("batch limits: {e}")))?;
    let mut ids: HashMap<String, RequestId> = HashMap::new();
    let mut cut = Cut::default();
    let mut full: Vec<Chunk> = Vec::new();
    let unbatchable = |cut: &mut Cut, reason: String| {
        let entry = cut.unbatchable.get_or_insert((0, reason));
        entry.0 += 1;
    };
    batches::for_each_due(conn, job, now, |row| -> Result<(), StoreError> {
        let line = match batch_line(&row) {
            Ok(line) => line,
            Err(reason) => {
                unbatchable(&mut cut, reason);
                return Ok(());
            }
        };
        match chunker.push(&line) {
            Ok(sealed) => {
                if row.has_headers {
                    cut.headers_dropped += 1;
                }
                if row.is_retry {
                    cut.again += 1;
                }
                ids.insert(row.key, row.id);
                full.extend(sealed);
            }
            Err(e @ (ChunkError::LineTooLarge { .. } | ChunkError::NoModel { .. })) => {
                unbatchable(&mut cut, e.to_string());
            }
            Err(e @ ChunkError::EmptyLimits) => return Err(StoreError::Failed(e.to_string())),
        }
        Ok(())
    })?;
    full.extend(chunker.finish());
    for chunk in full {
        let requests = chunk
            .custom_ids
            .iter()
            .map(|key| {
                ids.remove(key).ok_or_else(|| {
                    StoreError::Corrupt(format!("request {key} was cut into a chunk twice"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token = format!("{:032x}", fastrand::u128(..));
        let hash = chunk.hash.to_hex();
        let id = batches::insert_chunk(
            conn,
            job,
            &NewChunk {
                endpoint: &chunk.endpoint,
                model: &chunk.model,
                requests: &requests,
                bytes: chunk.bytes.len(),
                hash: hash.as_str(),
                token: &token,
            },
            now,
        )?;
        let seq = batches::chunk(conn, id)?.seq;
        cut.chunks
            .push((seq, requests.len(), chunk.endpoint, chunk.model));
    }
    Ok(cut)
}

/// The exact input file of a chunk, rebuilt from its requests; checked against the hash
/// recorded when it was cut.
///
/// # Errors
/// [`StoreError::Corrupt`] when the file differs from the one cut.
pub(super) fn rebuild(rows: &[LineRow], expected_hash: &str) -> Result<Vec<u8>, StoreError> {
    let unlimited = ChunkLimits {
        max_lines: usize::MAX,
        max_bytes: usize::MAX,
    };
    let mut chunker =
        Chunker::new(unlimited).map_err(|e| StoreError::Failed(format!("batch limits: {e}")))?;
    for row in rows {
        let line = batch_line(row).map_err(StoreError::Corrupt)?;
        chunker
            .push(&line)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    }
    let mut chunks = chunker.finish();
    let chunk = match (chunks.pop(), chunks.is_empty()) {
        (Some(chunk), true) => chunk,
        (_, _) => {
            return Err(StoreError::Corrupt(
                "a batch chunk's requests no longer make one input file".to_owned(),
            ));
        }
    };
    if chunk.hash.to_hex().as_str() != expected_hash {
        return Err(StoreError::Corrupt(format!(
            "a batch chunk's input file no longer has the hash recorded when it was cut ({expected_hash})"
        )));
    }
    Ok(chunk.bytes)
}
