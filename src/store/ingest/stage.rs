//! The SQL of an ingest in progress: lines wait in `ingest_staging` (see migration 0007) until
//! [`super::Staging::publish`] turns them into requests in one transaction.

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::JobId;
use crate::input::{InputError, Prompt};
use crate::store::StoreError;
use crate::store::invalid::INVALID_INPUT;

/// What the publish does with a staged line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// A new request, queued.
    Add,
    /// A known request, same body: kept, its line updated.
    Keep,
    /// The marker of a line that was invalid and is fixed now: becomes the request.
    Replace,
    /// An invalid line, recorded as a marker (`--skip-invalid`).
    Invalid,
    /// An invalid line whose custom_id holds a real request: nothing to publish, but the key is
    /// part of the file (a repeat of it is refused; its marker is not stale).
    KeptInvalid,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Keep => "keep",
            Action::Replace => "replace",
            Action::Invalid => "invalid",
            Action::KeptInvalid => "kept_invalid",
        }
    }
}

/// A request of the job under the key of a line being staged.
pub(super) struct Known {
    /// Its body hash.
    pub(super) body_hash: String,
    /// Whether it is the marker of an invalid line (see `store::invalid`), not a real request.
    pub(super) is_marker: bool,
}

/// The line that staged `key` in this ingest, if one did: a key read twice is a repeat.
pub(super) fn first_line(
    conn: &Connection,
    job: JobId,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let line: Option<i64> = conn
        .prepare_cached("SELECT line FROM ingest_staging WHERE job_id = ?1 AND key = ?2")?
        .query_row(params![job.0, key], |r| r.get(0))
        .optional()?;
    Ok(line.map(|l| l as u64))
}

/// The job's published request under `key`, if any.
pub(super) fn known(conn: &Connection, job: JobId, key: &str) -> Result<Option<Known>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT body_hash, state = 'failed' AND error_class = ?3 AND attempts = 0
             FROM requests WHERE job_id = ?1 AND key = ?2",
        )?
        .query_row(params![job.0, key, INVALID_INPUT], |r| {
            Ok(Known {
                body_hash: r.get(0)?,
                is_marker: r.get(1)?,
            })
        })
        .optional()?)
}

/// Whether the job has any request (or marker) yet.
pub(super) fn has_requests(conn: &Connection, job: JobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM requests WHERE job_id = ?1)")?
        .query_row([job.0], |r| r.get(0))?)
}

/// Stages a request read from the file. A kept request needs only its key and line. `false`
/// when a line of this ingest staged `key` already (nothing is written then).
pub(super) fn stage_prompt(
    conn: &Connection,
    job: JobId,
    key: &str,
    action: Action,
    prompt: &Prompt,
) -> Result<bool, StoreError> {
    let line = prompt.line as i64;
    let inserted = if action == Action::Keep {
        // A known request keeps its body; it takes the line's place, metadata and headers.
        conn.prepare_cached(
            "INSERT INTO ingest_staging (job_id, key, line, action, metadata, headers)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            job.0,
            key,
            line,
            action.as_str(),
            prompt.metadata,
            prompt.headers
        ])
    } else {
        insert_full(conn, job, key, action, prompt)
    };
    super::inserted(inserted)
}

fn insert_full(
    conn: &Connection,
    job: JobId,
    key: &str,
    action: Action,
    prompt: &Prompt,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO ingest_staging (job_id, key, line, action, custom_id, method, url, body,
                                     body_hash, metadata, headers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        job.0,
        key,
        prompt.line as i64,
        action.as_str(),
        prompt.custom_id,
        prompt.method,
        prompt.url,
        prompt.body,
        prompt.body_hash,
        prompt.metadata,
        prompt.headers
    ])
}

/// What is kept of a line that cannot become a request.
pub(super) struct Invalid<'a> {
    /// Its key (see `store::invalid::key_for`).
    pub(super) key: &'a str,
    /// The custom_id read from it, if one could be.
    pub(super) custom_id: Option<&'a str>,
    /// A spreadsheet row's cells, as metadata: the export shows the row as it was.
    pub(super) metadata: Option<&'a str>,
}

/// Stages a line that cannot become a request (`--skip-invalid`).
pub(super) fn stage_invalid(
    conn: &Connection,
    job: JobId,
    line: &Invalid<'_>,
    action: Action,
    error: &InputError,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO ingest_staging (job_id, key, line, action, custom_id, error_code, error_message,
                                     metadata)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        job.0,
        line.key,
        error.line().unwrap_or(0) as i64,
        action.as_str(),
        line.custom_id,
        error.code(),
        error.to_string(),
        line.metadata
    ])?;
    Ok(())
}

/// Queues the staged new requests, in input order (so request ids follow the file).
pub(super) fn publish_new(conn: &Connection, job: JobId) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO requests (job_id, key, custom_id, line, method, url, body, body_hash, state,
                               metadata, headers)
         SELECT job_id, key, custom_id, line, method, url, body, body_hash, 'pending',
                metadata, headers
         FROM ingest_staging WHERE job_id = ?1 AND action = 'add' ORDER BY id",
        [job.0],
    )?;
    Ok(())
}

/// Moves known requests to the line they have in this file, with the metadata and headers it
/// gives them now: metadata is only exported, and headers go with the sends still to come.
pub(super) fn publish_moves(conn: &Connection, job: JobId) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE requests SET line = s.line, metadata = s.metadata, headers = s.headers
         FROM ingest_staging AS s
         WHERE s.job_id = ?1 AND s.action = 'keep'
               AND requests.job_id = ?1 AND requests.key = s.key
               AND (requests.line != s.line OR requests.metadata IS NOT s.metadata
                    OR requests.headers IS NOT s.headers)",
        [job.0],
    )?;
    Ok(())
}

/// Deletes up to `limit` staged lines of the job; returns how many. Callers repeat it, one short
/// transaction each, until it returns less than `limit`.
///
/// # Errors
/// Database errors.
pub(super) fn discard(conn: &Connection, job: JobId, limit: usize) -> Result<u64, StoreError> {
    let n = conn
        .prepare_cached(
            "DELETE FROM ingest_staging WHERE id IN
                 (SELECT id FROM ingest_staging WHERE job_id = ?1 LIMIT ?2)",
        )?
        .execute(params![job.0, limit as i64])?;
    Ok(n as u64)
}
