//! Cutting: pending requests due now become chunks. Runs on the store thread in one call, so
//! what it reads and what it records are one consistent view; a chunk's bytes are hashed and
//! dropped (they are rebuilt from its requests at upload, byte for byte).

use std::collections::HashMap;

use serde_json::Value;

use super::BatchRun;
use super::chunks::{BatchLine, Chunk, ChunkError, ChunkLimits, Chunker, encode_line};
use crate::domain::{JobId, RequestId};
use crate::engine::spend::BatchCap;
use crate::store::batches::{self, ChunkId, LineRow, NewChunk};
use crate::store::{JobStore, StoreError};
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
    /// With `--max-cost`: what was held when the cut began (spent plus the open chunks' worst
    /// case), and whether a due request was left pending because its worst case did not fit.
    pub(super) capped: Option<(f64, bool)>,
}

impl Cut {
    /// Says on stderr what was cut, and (once per run) what could not be.
    pub(super) fn tell(&self, job: &str, told_unbatchable: &mut bool) {
        for (seq, lines, endpoint, model) in &self.chunks {
            crate::say!("{job}: chunk {seq}: {lines} requests for {endpoint} ({model})");
        }
        if self.headers_dropped > 0 {
            crate::say!(
                "{job}: {} requests carry their own headers, which a batch does not send",
                self.headers_dropped
            );
        }
        if let (Some((n, reason)), false) = (&self.unbatchable, *told_unbatchable) {
            crate::say!("{job}: {n} requests cannot go through the Batch API: {reason}");
            *told_unbatchable = true;
        }
    }
}

impl BatchRun<'_> {
    /// Cuts the job's due pending requests into chunks and records them; with a cap, only as
    /// many as fit under it. A cut that the cap stopped at `held` USD is not tried again until
    /// what is held changes (an import).
    pub(super) async fn cut(&self, capped_at: Option<f64>) -> Result<Cut, StoreError> {
        let (job, limits, cap) = (self.job.id, self.settings.limits(), self.cap.clone());
        self.store
            .call(move |c| {
                let room = match &cap {
                    Some(cap) => {
                        let held = cap.committed(c, job)?;
                        if capped_at == Some(held) {
                            return Ok(Cut {
                                capped: Some((held, true)),
                                ..Cut::default()
                            });
                        }
                        Some(Room { cap, held })
                    }
                    None => None,
                };
                cut_due(c, job, limits, now_ms(), room)
            })
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

/// What a capped cut may still take.
struct Room<'a> {
    cap: &'a BatchCap,
    /// Spent plus the worst case of the open chunks, USD, when the cut began.
    held: f64,
}

fn cut_due(
    conn: &rusqlite::Connection,
    job: JobId,
    limits: ChunkLimits,
    now: i64,
    mut room: Option<Room<'_>>,
) -> Result<Cut, StoreError> {
    let mut chunker =
        Chunker::new(limits).map_err(|e| StoreError::Failed(format!("batch limits: {e}")))?;
    let mut ids: HashMap<String, RequestId> = HashMap::new();
    let mut cut = Cut {
        capped: room.as_ref().map(|r| (r.held, false)),
        ..Cut::default()
    };
    let mut worst_of: HashMap<String, f64> = HashMap::new();
    let mut full: Vec<Chunk> = Vec::new();
    let unbatchable = |cut: &mut Cut, reason: String| {
        let entry = cut.unbatchable.get_or_insert((0, reason));
        entry.0 += 1;
    };
    batches::for_each_due(conn, job, now, |row| -> Result<(), StoreError> {
        // In file order: once one does not fit under the cap, none after it goes.
        if cut.capped.is_some_and(|(_, stopped)| stopped) {
            return Ok(());
        }
        let line = match batch_line(&row) {
            Ok(line) => line,
            Err(reason) => {
                unbatchable(&mut cut, reason);
                return Ok(());
            }
        };
        let worst = match &room {
            Some(room) => match room.cap.worst(&line.url, &line.body) {
                Some(worst) if room.held + worst <= room.cap.cap => Some(worst),
                Some(_) => {
                    cut.capped = Some((room.held, true));
                    return Ok(());
                }
                None => {
                    unbatchable(
                        &mut cut,
                        format!(
                            "request {}: its model has no price, and --max-cost needs one",
                            row.key
                        ),
                    );
                    return Ok(());
                }
            },
            None => None,
        };
        match chunker.push(&line) {
            Ok(sealed) => {
                if let (Some(room), Some(worst)) = (room.as_mut(), worst) {
                    room.held += worst;
                    worst_of.insert(row.key.clone(), worst);
                }
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
        let worst_usd = cut.capped.map(|_| {
            chunk
                .custom_ids
                .iter()
                .filter_map(|key| worst_of.get(key))
                .sum::<f64>()
        });
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
                worst_usd,
            },
            now,
        )?;
        let seq = batches::chunk(conn, id)?.seq;
        cut.chunks
            .push((seq, requests.len(), chunk.endpoint, chunk.model));
    }
    Ok(cut)
}

/// Requests per page of a chunk's file while it is uploaded.
const PAGE: usize = 1_000;

/// The exact input file of a chunk, rebuilt from its requests a page at a time as the upload
/// takes it (never whole in memory), and checked at its end against the hash recorded when it
/// was cut: a file that differs ends the stream with an error, which aborts the upload.
pub(super) fn file_stream(
    store: JobStore,
    chunk: ChunkId,
    expected_hash: String,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let start = Some((store, RequestId(0), blake3::Hasher::new()));
    futures::stream::unfold(start, move |state| {
        let expected = expected_hash.clone();
        async move {
            let (store, after, mut hasher) = state?;
            let page = store
                .call(move |c| batches::chunk_lines(c, chunk, after, PAGE))
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
            };
            let Some(last) = page.last().map(|row| row.id) else {
                let hash = hasher.finalize();
                return (hash.to_hex().as_str() != expected).then(|| {
                    let message = format!(
                        "the chunk's input file no longer has the hash recorded when it was cut ({expected})"
                    );
                    (Err(std::io::Error::other(message)), None)
                });
            };
            let mut bytes = Vec::new();
            for row in &page {
                match batch_line(row) {
                    Ok(line) => bytes.extend_from_slice(&encode_line(&line)),
                    Err(e) => return Some((Err(std::io::Error::other(e)), None)),
                }
            }
            hasher.update(&bytes);
            Some((Ok(bytes), Some((store, last, hasher))))
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use rusqlite::{Connection, params};

    use super::*;
    use crate::store::{db, migrate};

    /// A store holding `n` pending requests of job `j`, with bodies long enough for two pages.
    async fn store_with(n: usize) -> (JobStore, crate::store::StoreThread, JobId) {
        let mut conn = Connection::open_in_memory().expect("db");
        migrate::migrate(&mut conn).expect("migrate");
        let job = db::upsert_job(&conn, "j", "in.jsonl", "{}", 1)
            .expect("job")
            .id;
        for i in 0..n {
            let body =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":"prompt {i}"}}]}}"#);
            conn.execute(
                "INSERT INTO requests (job_id, key, line, method, url, body, body_hash, state)
                 VALUES (?1, ?2, ?3, 'POST', '/v1/chat/completions', ?4, 'h', 'pending')",
                params![job.0, format!("r{i}"), i as i64 + 1, body],
            )
            .expect("request");
        }
        let (store, thread) = JobStore::start(conn).expect("store");
        (store, thread, job)
    }

    async fn streamed(store: &JobStore, chunk: ChunkId, hash: String) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut stream = Box::pin(file_stream(store.clone(), chunk, hash));
        while let Some(part) = stream.next().await {
            out.extend(part.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn the_uploaded_file_is_the_cut_one_byte_for_byte_and_a_changed_one_is_refused() {
        let (store, thread, job) = store_with(PAGE + 7).await;
        let limits = ChunkLimits::default();
        let cut = store
            .call(move |c| cut_due(c, job, limits, 10, None))
            .await
            .expect("cut");
        assert_eq!(cut.chunks.len(), 1);
        let row = store
            .call(move |c| Ok(batches::chunks(c, job)?.remove(0)))
            .await
            .expect("chunk");
        let bytes = streamed(&store, row.id, row.hash.clone())
            .await
            .expect("the file");
        assert_eq!(bytes.len() as i64, row.bytes);
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), row.hash);
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), PAGE + 7);

        let refused = streamed(&store, row.id, "0".repeat(64)).await;
        assert!(
            refused.is_err_and(|e| e.contains("no longer has the hash")),
            "a file that differs from the cut one aborts the upload"
        );
        drop(store);
        thread.join().await;
    }
}
