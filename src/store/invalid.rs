//! `runner submit --skip-invalid`: lines that cannot become requests, kept as failed requests.
//!
//! Such a line is stored as a *marker*: a request in state `failed` with error class
//! [`AttemptClass::InvalidInput`], the line's error as its message and no attempt, so `status` counts it and
//! `export` lists it, and it is never sent. Its key is the line's custom_id when one can be read
//! from it, else `line-N`. A spreadsheet row's cells are kept as its metadata, when the row
//! could be split into cells, so that the export shows the row as it was.
//!
//! Markers follow the file. When the line is fixed and the file submitted again, the marker
//! becomes the request (queued as new). A marker whose key is no longer in the file is dropped at
//! its publish. A marker never replaces a real request: a known custom_id whose line has
//! become unreadable keeps its request, and its result, as they were.

use rusqlite::{Connection, params};

use super::StoreError;
use crate::domain::{AttemptClass, JobId};

/// The `error_class` of a line that could not be read as a request.
pub(super) const INVALID_INPUT: AttemptClass = AttemptClass::InvalidInput;

/// The key of a bad line.
pub(super) fn key_for(custom_id: Option<&str>, line: u64) -> String {
    match custom_id {
        Some(id) => id.to_owned(),
        None => format!("line-{line}"),
    }
}

/// Records the staged invalid lines as markers, or updates the markers already under their
/// keys; a key that belongs to a real request was staged as `kept_invalid` and is left alone.
///
/// # Errors
/// Database errors.
pub(super) fn publish_markers(conn: &Connection, job: JobId, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO requests (job_id, key, custom_id, line, method, url, body, body_hash, state,
                               error_class, error_code, error_message, finished_at, metadata)
         SELECT job_id, key, custom_id, line, 'POST', '', '', '', 'failed', ?2, error_code,
                error_message, ?3, metadata
         FROM ingest_staging WHERE job_id = ?1 AND action = 'invalid' ORDER BY id
         ON CONFLICT (job_id, key) DO UPDATE
             SET line = excluded.line, error_code = excluded.error_code,
                 error_message = excluded.error_message, finished_at = excluded.finished_at,
                 metadata = excluded.metadata
             WHERE requests.state = 'failed' AND requests.error_class = ?2
                   AND requests.attempts = 0",
        params![job.0, INVALID_INPUT, now],
    )?;
    Ok(())
}

/// Turns the markers of lines fixed since (staged as `replace`) into the requests read now,
/// queued as new.
///
/// # Errors
/// Database errors.
pub(super) fn publish_fixed(conn: &Connection, job: JobId) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE requests
         SET custom_id = s.custom_id, line = s.line, method = s.method, url = s.url,
             body = s.body, body_hash = s.body_hash, metadata = s.metadata, headers = s.headers,
             state = 'pending', next_attempt_at = 0, error_class = NULL, error_code = NULL,
             error_message = NULL, finished_at = NULL
         FROM ingest_staging AS s
         WHERE s.job_id = ?1 AND s.action = 'replace'
               AND requests.job_id = ?1 AND requests.key = s.key
               AND requests.state = 'failed' AND requests.error_class = ?2
               AND requests.attempts = 0",
        params![job.0, INVALID_INPUT],
    )?;
    Ok(())
}

/// Drops the markers whose key the ingest being published did not read.
///
/// # Errors
/// Database errors.
pub(super) fn drop_stale(conn: &Connection, job: JobId) -> Result<u64, StoreError> {
    let dropped = conn.execute(
        "DELETE FROM requests
         WHERE job_id = ?1 AND state = 'failed' AND error_class = ?2 AND attempts = 0
               AND key NOT IN (SELECT key FROM ingest_staging WHERE job_id = ?1)",
        params![job.0, INVALID_INPUT],
    )?;
    Ok(dropped as u64)
}
