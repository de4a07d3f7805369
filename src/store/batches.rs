//! The SQL of `--via batch`: chunks (one input file and one batch each), the Files and Batches
//! calls made for them, and the requests waiting in them (state `batched`).
//!
//! A chunk's state is written before every call that changes something on the server
//! (`uploading`, `creating`) and after it, each in its own transaction, so a crash between the
//! two is seen on restart (see [`ChunkState`]).

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::db;
use crate::domain::{
    AttemptClass, ChunkState, Class, Completion, JobId, RequestId, RequestState, Spent,
};

/// A chunk's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub i64);

/// A chunk as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChunkRow {
    /// Row id.
    #[serde(skip)]
    pub id: ChunkId,
    /// 1, 2, 3 … within the job.
    pub seq: i64,
    /// Random; the batch's metadata carries it.
    #[serde(skip)]
    pub token: String,
    /// e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The model every line names.
    pub model: String,
    /// Lines in its input file.
    pub lines: i64,
    /// Bytes of its input file.
    pub bytes: i64,
    /// blake3 of its input file.
    pub hash: String,
    /// Where it is.
    pub state: ChunkState,
    /// The uploaded input file.
    pub input_file_id: Option<String>,
    /// Its batch.
    pub batch_id: Option<String>,
    /// The batch's status at the last poll.
    pub batch_status: Option<String>,
    /// `request_counts.total` at the last poll.
    pub total: Option<i64>,
    /// `request_counts.completed` at the last poll.
    pub completed: Option<i64>,
    /// `request_counts.failed` at the last poll.
    pub failed: Option<i64>,
    /// The output file, once the batch ended with one.
    pub output_file_id: Option<String>,
    /// The error file, once the batch ended with one.
    pub error_file_id: Option<String>,
    /// Validation errors of a failed batch, as JSON.
    pub errors: Option<String>,
    /// Unix ms when it was cut.
    pub cut_at: i64,
    /// Unix ms when its batch was created (or found).
    pub submitted_at: Option<i64>,
    /// Unix ms when its batch was seen finished.
    pub ended_at: Option<i64>,
    /// Unix ms when every result was journaled.
    pub imported_at: Option<i64>,
    /// No call before this time.
    #[serde(skip)]
    pub next_call_at: i64,
    /// Failed calls in a row, by class.
    #[serde(skip)]
    pub spent: Spent,
    /// Polls so far.
    pub polls: i64,
}

const CHUNK_COLUMNS: &str = "id, seq, token, endpoint, model, lines, bytes, hash, state, \
     input_file_id, batch_id, batch_status, total, completed, failed, output_file_id, \
     error_file_id, errors, cut_at, submitted_at, ended_at, imported_at, next_call_at, \
     transient_calls, auth_calls, rate_limited_calls, invalid_calls, polls";

fn chunk_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRow> {
    Ok(ChunkRow {
        id: ChunkId(r.get(0)?),
        seq: r.get(1)?,
        token: r.get(2)?,
        endpoint: r.get(3)?,
        model: r.get(4)?,
        lines: r.get(5)?,
        bytes: r.get(6)?,
        hash: r.get(7)?,
        state: r.get(8)?,
        input_file_id: r.get(9)?,
        batch_id: r.get(10)?,
        batch_status: r.get(11)?,
        total: r.get(12)?,
        completed: r.get(13)?,
        failed: r.get(14)?,
        output_file_id: r.get(15)?,
        error_file_id: r.get(16)?,
        errors: r.get(17)?,
        cut_at: r.get(18)?,
        submitted_at: r.get(19)?,
        ended_at: r.get(20)?,
        imported_at: r.get(21)?,
        next_call_at: r.get(22)?,
        spent: Spent {
            transient: r.get(23)?,
            auth_transient: r.get(24)?,
            rate_limited: r.get(25)?,
            invalid_response: r.get(26)?,
        },
        polls: r.get(27)?,
    })
}

/// Every chunk of a job, in order.
///
/// # Errors
/// Database errors.
pub fn chunks(conn: &Connection, job: JobId) -> Result<Vec<ChunkRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHUNK_COLUMNS} FROM batch_chunks WHERE job_id = ?1 ORDER BY seq"
    ))?;
    let rows = stmt
        .query_map([job.0], chunk_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The chunks of a job that still need work, in order.
///
/// # Errors
/// Database errors.
pub fn open_chunks(conn: &Connection, job: JobId) -> Result<Vec<ChunkRow>, StoreError> {
    Ok(chunks(conn, job)?
        .into_iter()
        .filter(|c| !c.state.is_final())
        .collect())
}

/// One chunk.
///
/// # Errors
/// Database errors, or [`StoreError::Corrupt`] when it does not exist.
pub fn chunk(conn: &Connection, id: ChunkId) -> Result<ChunkRow, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {CHUNK_COLUMNS} FROM batch_chunks WHERE id = ?1"
    ))?
    .query_row([id.0], chunk_from_row)
    .optional()?
    .ok_or_else(|| StoreError::Corrupt(format!("batch chunk {} does not exist", id.0)))
}

/// A request as a batch input line carries it.
#[derive(Clone, Debug)]
pub struct LineRow {
    /// Row id.
    pub id: RequestId,
    /// `custom_id` of its line.
    pub key: String,
    /// HTTP method.
    pub method: String,
    /// e.g. `/v1/chat/completions`.
    pub url: String,
    /// The body as stored (JSON text).
    pub body: String,
    /// Whether it carries its own headers (which a batch cannot send).
    pub has_headers: bool,
    /// Whether it was attempted before.
    pub is_retry: bool,
}

/// Calls `f` with each pending request of the job due at `now`, in input order.
///
/// # Errors
/// Database errors, or `f`'s.
pub fn for_each_due<E: From<StoreError>>(
    conn: &Connection,
    job: JobId,
    now: i64,
    mut f: impl FnMut(LineRow) -> Result<(), E>,
) -> Result<(), E> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, key, method, url, body, headers IS NOT NULL, attempts > 0 FROM requests
             WHERE job_id = ?1 AND state = 'pending' AND next_attempt_at <= ?2 ORDER BY id",
        )
        .map_err(StoreError::from)?;
    let mut rows = stmt.query(params![job.0, now]).map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        f(line_from_row(r).map_err(StoreError::from)?)?;
    }
    Ok(())
}

fn line_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LineRow> {
    Ok(LineRow {
        id: RequestId(r.get(0)?),
        key: r.get(1)?,
        method: r.get(2)?,
        url: r.get(3)?,
        body: r.get(4)?,
        has_headers: r.get(5)?,
        is_retry: r.get(6)?,
    })
}

/// Up to `limit` requests waiting in a chunk after request id `after`, in its file's order:
/// a page of its input file.
///
/// # Errors
/// Database errors.
pub fn chunk_lines(
    conn: &Connection,
    chunk: ChunkId,
    after: RequestId,
    limit: usize,
) -> Result<Vec<LineRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, key, method, url, body, headers IS NOT NULL, attempts > 0 FROM requests
         WHERE batch_chunk_id = ?1 AND state = 'batched' AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![chunk.0, after.0, limit as i64], line_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A chunk about to be recorded.
#[derive(Clone, Debug)]
pub struct NewChunk<'a> {
    /// The endpoint of every line.
    pub endpoint: &'a str,
    /// The model of every line.
    pub model: &'a str,
    /// Its requests, in file order.
    pub requests: &'a [RequestId],
    /// Bytes of its file.
    pub bytes: usize,
    /// blake3 of its file, hex.
    pub hash: &'a str,
    /// Random token for its batch's metadata.
    pub token: &'a str,
    /// The worst case of its requests at the batch price, USD, when a cap is held.
    pub worst_usd: Option<f64>,
}

/// The worst case held for the job's chunks whose results are not all imported, USD.
///
/// # Errors
/// Database errors.
pub fn open_worst_usd(conn: &Connection, job: JobId) -> Result<f64, StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(sum(worst_usd), 0) FROM batch_chunks
         WHERE job_id = ?1 AND state NOT IN ('imported', 'dropped')",
        [job.0],
        |r| r.get(0),
    )?)
}

/// Records a chunk and moves its requests from `pending` to `batched`, in one transaction.
///
/// # Errors
/// Database errors; [`StoreError::Corrupt`] when a request was not pending any more.
pub fn insert_chunk(
    conn: &Connection,
    job: JobId,
    chunk: &NewChunk<'_>,
    now: i64,
) -> Result<ChunkId, StoreError> {
    db::atomically(conn, |conn| {
        let seq: i64 = conn.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM batch_chunks WHERE job_id = ?1",
            [job.0],
            |r| r.get(0),
        )?;
        conn.execute(
            "INSERT INTO batch_chunks (job_id, seq, token, endpoint, model, lines, bytes, hash, state, cut_at,
                                       worst_usd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                job.0,
                seq,
                chunk.token,
                chunk.endpoint,
                chunk.model,
                chunk.requests.len() as i64,
                chunk.bytes as i64,
                chunk.hash,
                ChunkState::Cut,
                now,
                chunk.worst_usd
            ],
        )?;
        let id = ChunkId(conn.last_insert_rowid());
        let mut stmt = conn.prepare_cached(
            "UPDATE requests SET state = 'batched', batch_chunk_id = ?2
             WHERE id = ?1 AND state = 'pending'",
        )?;
        for request in chunk.requests {
            if stmt.execute(params![request.0, id.0])? != 1 {
                return Err(StoreError::Corrupt(format!(
                    "request {} was not pending when its batch chunk was cut",
                    request.0
                )));
            }
        }
        Ok(id)
    })
}

/// Moves a chunk to `state` (and nothing else).
///
/// # Errors
/// Database errors.
pub fn set_state(conn: &Connection, chunk: ChunkId, state: ChunkState) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE batch_chunks SET state = ?2 WHERE id = ?1",
        params![chunk.0, state],
    )?;
    Ok(())
}

/// The input file is on the server.
///
/// # Errors
/// Database errors.
pub fn uploaded(conn: &Connection, chunk: ChunkId, file_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE batch_chunks SET state = ?2, input_file_id = ?3, next_call_at = 0,
                transient_calls = 0, auth_calls = 0, rate_limited_calls = 0, invalid_calls = 0
         WHERE id = ?1",
        params![chunk.0, ChunkState::Uploaded, file_id],
    )?;
    Ok(())
}

/// A batch as a poll (or the create) saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSeen<'a> {
    /// `batch_…`.
    pub batch_id: &'a str,
    /// Its status, e.g. `in_progress`.
    pub status: &'a str,
    /// Whether that status is final.
    pub ended: bool,
    /// `request_counts`.
    pub total: i64,
    /// `request_counts.completed`.
    pub completed: i64,
    /// `request_counts.failed`.
    pub failed: i64,
    /// Its output file.
    pub output_file_id: Option<&'a str>,
    /// Its error file.
    pub error_file_id: Option<&'a str>,
    /// Validation errors (JSON), for a failed batch.
    pub errors: Option<&'a str>,
}

/// Records what a create, find or poll saw: the chunk becomes `submitted`, or `ended` when the
/// batch has finished. Returns the status it had before (`None` before the first).
///
/// # Errors
/// Database errors.
pub fn seen(
    conn: &Connection,
    chunk: ChunkId,
    batch: &BatchSeen<'_>,
    next_call_at: i64,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let before: Option<String> = conn.query_row(
        "SELECT batch_status FROM batch_chunks WHERE id = ?1",
        [chunk.0],
        |r| r.get(0),
    )?;
    let state = if batch.ended {
        ChunkState::Ended
    } else {
        ChunkState::Submitted
    };
    conn.execute(
        "UPDATE batch_chunks SET state = ?2, batch_id = ?3, batch_status = ?4, total = ?5,
                completed = ?6, failed = ?7, output_file_id = ?8, error_file_id = ?9, errors = ?10,
                submitted_at = coalesce(submitted_at, ?11),
                ended_at = CASE WHEN ?12 THEN coalesce(ended_at, ?11) ELSE ended_at END,
                next_call_at = ?13, polls = polls + 1,
                transient_calls = 0, auth_calls = 0, rate_limited_calls = 0, invalid_calls = 0
         WHERE id = ?1",
        params![
            chunk.0,
            state,
            batch.batch_id,
            batch.status,
            batch.total,
            batch.completed,
            batch.failed,
            batch.output_file_id,
            batch.error_file_id,
            batch.errors,
            now,
            batch.ended,
            next_call_at
        ],
    )?;
    Ok(before)
}

/// A call on a chunk failed with `class`: counts it against the chunk's budget of that class
/// and puts the next call off until `next_call_at`.
///
/// # Errors
/// Database errors.
pub fn call_failed(
    conn: &Connection,
    chunk: ChunkId,
    class: Class,
    next_call_at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE batch_chunks SET next_call_at = ?2,
                transient_calls = transient_calls + ?3, auth_calls = auth_calls + ?4,
                rate_limited_calls = rate_limited_calls + ?5, invalid_calls = invalid_calls + ?6
         WHERE id = ?1",
        params![
            chunk.0,
            next_call_at,
            class == Class::Transient,
            class == Class::AuthTransient,
            class == Class::RateLimited,
            class == Class::InvalidResponse
        ],
    )?;
    Ok(())
}

/// Puts the chunk's next call off until `next_call_at`, spending no budget.
///
/// # Errors
/// Database errors.
pub fn put_off(conn: &Connection, chunk: ChunkId, next_call_at: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE batch_chunks SET next_call_at = ?2 WHERE id = ?1",
        params![chunk.0, next_call_at],
    )?;
    Ok(())
}

/// One Files or Batches call, for the journal.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The chunk it was for.
    pub chunk: ChunkId,
    /// The job.
    pub job: JobId,
    /// `upload`, `create`, `find`, `poll`, `download`, `cancel` or `delete`.
    pub operation: &'static str,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub finished_at: i64,
    /// HTTP status, when answered.
    pub http_status: Option<u16>,
    /// The class of a failed call; `None` when it did what it was for.
    pub class: Option<AttemptClass>,
    /// `error.code`, or a transport failure's kind.
    pub error_code: Option<String>,
    /// What went wrong.
    pub error_message: Option<String>,
    /// What it gave: a file or batch id, or a status.
    pub result: Option<String>,
    /// Which key made it (never the key).
    pub key_fingerprint: Option<String>,
}

/// Journals one Files or Batches call.
///
/// # Errors
/// Database errors.
pub fn record_call(conn: &Connection, call: &CallRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO batch_calls (chunk_id, job_id, operation, started_at, finished_at, http_status,
                                  error_class, error_code, error_message, result, key_fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        call.chunk.0,
        call.job.0,
        call.operation,
        call.started_at,
        call.finished_at,
        call.http_status,
        call.class,
        call.error_code,
        call.error_message,
        call.result,
        call.key_fingerprint
    ])?;
    Ok(())
}

/// Calls of each operation made for a job, e.g. `[("create", 3), ("poll", 41)]`.
///
/// # Errors
/// Database errors.
pub fn calls_by_operation(conn: &Connection, job: JobId) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT operation, count(*) FROM batch_calls WHERE job_id = ?1 GROUP BY operation ORDER BY operation",
    )?;
    let rows = stmt
        .query_map([job.0], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A request still waiting in a chunk, with what its retry budgets have spent.
#[derive(Clone, Debug)]
pub struct Waiting {
    /// Row id.
    pub id: RequestId,
    /// Its `custom_id`.
    pub key: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Spent per retried class.
    pub spent: Spent,
}

fn waiting_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Waiting> {
    Ok(Waiting {
        id: RequestId(r.get(0)?),
        key: r.get(1)?,
        attempts: r.get(2)?,
        spent: Spent {
            transient: r.get(3)?,
            auth_transient: r.get(4)?,
            rate_limited: r.get(5)?,
            invalid_response: r.get(6)?,
        },
    })
}

const WAITING_COLUMNS: &str = "id, key, attempts, transient_attempts, auth_attempts, \
     rate_limited_attempts, invalid_attempts";

/// The request with this `custom_id` in `chunk`, and its state: `batched` while it waits for
/// its result; `None` for a `custom_id` the chunk never had.
///
/// # Errors
/// Database errors.
pub fn in_chunk(
    conn: &Connection,
    job: JobId,
    chunk: ChunkId,
    key: &str,
) -> Result<Option<(Waiting, RequestState)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {WAITING_COLUMNS}, state FROM requests
             WHERE job_id = ?1 AND key = ?2 AND batch_chunk_id = ?3"
        ))?
        .query_row(params![job.0, key, chunk.0], |r| {
            Ok((waiting_from_row(r)?, r.get(7)?))
        })
        .optional()?)
}

/// The line (1-based) each request of `chunk` had in its input file: its place among the
/// chunk's requests by id, as the file was cut.
///
/// # Errors
/// Database errors.
pub fn file_lines(
    conn: &Connection,
    chunk: ChunkId,
) -> Result<std::collections::HashMap<RequestId, u64>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM requests WHERE batch_chunk_id = ?1 ORDER BY id")?;
    let ids = stmt
        .query_map([chunk.0], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| (RequestId(id), i as u64 + 1))
        .collect())
}

/// Every request still waiting in `chunk`, in file order.
///
/// # Errors
/// Database errors.
pub fn all_waiting(conn: &Connection, chunk: ChunkId) -> Result<Vec<Waiting>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {WAITING_COLUMNS} FROM requests
         WHERE batch_chunk_id = ?1 AND state = 'batched' ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([chunk.0], waiting_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Journals a result read from a batch: the attempt (with the batch's id) and the request's
/// new state, as [`db::record_attempt`] does for a direct one.
///
/// # Errors
/// Database errors.
pub fn record_result(
    conn: &Connection,
    completion: &Completion,
    batch_id: &str,
) -> Result<(), StoreError> {
    db::record_attempt(conn, completion)?;
    conn.prepare_cached("UPDATE attempts SET batch_id = ?3 WHERE request_id = ?1 AND number = ?2")?
        .execute(params![completion.request.0, completion.number, batch_id])?;
    Ok(())
}

/// The requests of a batch that all failed one way, with that HTTP status and error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SameError {
    /// The requests, failed.
    pub requests: Vec<RequestId>,
    /// The HTTP status they got.
    pub status: Option<u16>,
    /// The error code they got.
    pub code: Option<String>,
}

/// A batch's results when none succeeded and at least `min` failed for good with one and the
/// same HTTP status and error code (a configuration error, such as a wrong model name): those
/// requests, with the status and code. `None` otherwise.
///
/// # Errors
/// Database errors.
pub fn same_error_everywhere(
    conn: &Connection,
    batch_id: &str,
    min: u32,
) -> Result<Option<SameError>, StoreError> {
    let successes: i64 = conn.query_row(
        "SELECT count(*) FROM attempts WHERE batch_id = ?1 AND error_class = 'succeeded'",
        [batch_id],
        |r| r.get(0),
    )?;
    if successes > 0 || min == 0 {
        return Ok(None);
    }
    let top: Option<(Option<u16>, Option<String>, i64)> = conn
        .query_row(
            "SELECT http_status, error_code, count(*) FROM attempts
             WHERE batch_id = ?1 AND error_class = 'request_failed'
             GROUP BY http_status, error_code ORDER BY 3 DESC LIMIT 1",
            [batch_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((status, code, n)) = top.filter(|(_, _, n)| *n >= i64::from(min)) else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(
        "SELECT a.request_id FROM attempts a JOIN requests r ON r.id = a.request_id
         WHERE a.batch_id = ?1 AND a.error_class = 'request_failed' AND r.state = 'failed'
           AND a.http_status IS ?2 AND a.error_code IS ?3 AND a.number = r.attempts",
    )?;
    let ids = stmt
        .query_map(params![batch_id, status, code], |r| {
            Ok(RequestId(r.get(0)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    debug_assert!(ids.len() as i64 <= n);
    Ok(Some(SameError {
        requests: ids,
        status,
        code,
    }))
}

/// Every result of the chunk is journaled.
///
/// # Errors
/// Database errors; [`StoreError::Corrupt`] when requests are still waiting in it.
pub fn imported(conn: &Connection, chunk: ChunkId, now: i64) -> Result<(), StoreError> {
    let left: i64 = conn.query_row(
        "SELECT count(*) FROM requests WHERE batch_chunk_id = ?1 AND state = 'batched'",
        [chunk.0],
        |r| r.get(0),
    )?;
    if left > 0 {
        return Err(StoreError::Corrupt(format!(
            "batch chunk {} has {left} requests without a result yet",
            chunk.0
        )));
    }
    conn.execute(
        "UPDATE batch_chunks SET state = ?2, imported_at = ?3 WHERE id = ?1",
        params![chunk.0, ChunkState::Imported, now],
    )?;
    Ok(())
}

/// Gives a chunk up before any batch exists for it: its requests are pending again, with no
/// attempt journaled (none was made). Returns how many.
///
/// # Errors
/// Database errors.
pub fn drop_chunk(conn: &Connection, chunk: ChunkId) -> Result<u64, StoreError> {
    db::atomically(conn, |conn| {
        let moved = conn.execute(
            "UPDATE requests SET state = ?2 WHERE batch_chunk_id = ?1 AND state = 'batched'",
            params![chunk.0, RequestState::Pending],
        )?;
        set_state(conn, chunk, ChunkState::Dropped)?;
        Ok(moved as u64)
    })
}

#[cfg(test)]
mod tests;
