//! `runner submit --skip-invalid`: lines that cannot become requests, kept as failed requests.
//!
//! Such a line is stored as a *marker*: a request in state `failed` with error class
//! [`AttemptClass::InvalidInput`], the line's error as its message and no attempt, so `status` counts it and
//! `export` lists it, and it is never sent. Its key is the line's custom_id when one can be read
//! from it, else `line-N`.
//!
//! Markers follow the file. When the line is fixed and the file submitted again, the marker
//! becomes the request (queued as new). A marker whose key is no longer in the file is dropped at
//! the end of the ingest. A marker never replaces a real request: a known custom_id whose line has
//! become unreadable keeps its request, and its result, as they were.

use rusqlite::{Connection, params};

use super::StoreError;
use crate::domain::{AttemptClass, JobId};
use crate::input::{InputError, Prompt};

/// The `error_class` of a line that could not be read as a request.
const INVALID_INPUT: AttemptClass = AttemptClass::InvalidInput;

/// The key of a bad line.
pub(super) fn key_for(custom_id: Option<&str>, line: u64) -> String {
    match custom_id {
        Some(id) => id.to_owned(),
        None => format!("line-{line}"),
    }
}

/// Stores the marker of a bad line, or updates the marker already under `key`. Returns `false`
/// (and writes nothing) when `key` belongs to a real request.
///
/// # Errors
/// Database errors.
pub(super) fn record(
    conn: &Connection,
    job: JobId,
    key: &str,
    custom_id: Option<&str>,
    error: &InputError,
    now: i64,
) -> Result<bool, StoreError> {
    let line = error.line().unwrap_or(0) as i64;
    let changed = conn
        .prepare_cached(
            "INSERT INTO requests (job_id, key, custom_id, line, method, url, body, body_hash, state,
                                   error_class, error_code, error_message, finished_at)
             VALUES (?1, ?2, ?3, ?4, 'POST', '', '', '', 'failed', ?5, ?6, ?7, ?8)
             ON CONFLICT (job_id, key) DO UPDATE
                 SET line = excluded.line, error_code = excluded.error_code,
                     error_message = excluded.error_message, finished_at = excluded.finished_at
                 WHERE requests.state = 'failed' AND requests.error_class = ?5
                       AND requests.attempts = 0",
        )?
        .execute(params![
            job.0,
            key,
            custom_id,
            line,
            INVALID_INPUT,
            error.code(),
            error.to_string(),
            now
        ])?;
    Ok(changed == 1)
}

/// Turns the marker under the prompt's key into the request read now, queued as new. Returns
/// `false` (and writes nothing) when the row under `key` is not a marker.
///
/// # Errors
/// Database errors.
pub(super) fn replace(
    conn: &Connection,
    job: JobId,
    key: &str,
    prompt: &Prompt,
) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE requests
             SET custom_id = ?3, line = ?4, method = ?5, url = ?6, body = ?7, body_hash = ?8,
                 metadata = ?10, headers = ?11,
                 state = 'pending', next_attempt_at = 0, error_class = NULL, error_code = NULL,
                 error_message = NULL, finished_at = NULL
             WHERE job_id = ?1 AND key = ?2
                   AND state = 'failed' AND error_class = ?9 AND attempts = 0",
        )?
        .execute(params![
            job.0,
            key,
            prompt.custom_id,
            prompt.line as i64,
            prompt.method,
            prompt.url,
            prompt.body,
            prompt.body_hash,
            INVALID_INPUT,
            prompt.metadata,
            prompt.headers
        ])?;
    Ok(changed == 1)
}

/// Drops the markers whose key the ingest that just ended did not read (`temp.ingest_seen`).
///
/// # Errors
/// Database errors.
pub(super) fn drop_stale(conn: &Connection, job: JobId) -> Result<u64, StoreError> {
    let dropped = conn.execute(
        "DELETE FROM requests
         WHERE job_id = ?1 AND state = 'failed' AND error_class = ?2 AND attempts = 0
               AND key NOT IN (SELECT key FROM temp.ingest_seen)",
        params![job.0, INVALID_INPUT],
    )?;
    Ok(dropped as u64)
}
