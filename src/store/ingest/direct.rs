//! A new job's file, straight into `requests`, while its first requests are already sent.
//!
//! A job without any request (just created, or one whose earlier submit was refused) has no
//! known line to keep and no marker to replace: once [`crate::input::check`] has read the whole
//! file and found it good, with keys that cannot collide, its requests need no staging. They
//! are inserted in file order, in short transactions ([`insert`]), each one visible to the
//! pool as soon as it commits, so the first request goes out a moment after the check instead
//! of after the whole file is in the database.
//!
//! The job says meanwhile that it is reading its file (`jobs.reading_input`, migration 0009):
//! [`begin`] sets it in the first chunk's transaction and [`finish`] clears it with the file's
//! fingerprint. A runner that stops in between (a signal, a crash, a job-level stop) leaves it
//! set, and the job's next `resume` reads the file again the staged way before it sends
//! anything: the lines already in the job are kept, the rest are added. Nothing is lost, and
//! nothing that was sent is sent again.

use std::path::Path;

use rusqlite::{Connection, params};

use crate::domain::JobId;
use crate::input::{InputError, Prompt};
use crate::store::StoreError;
use crate::store::db::atomically;

/// Whether `job` may take a checked file directly: it has no request and no staged line.
///
/// # Errors
/// Database errors.
pub fn takes_direct(conn: &Connection, job: JobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT NOT EXISTS (SELECT 1 FROM requests WHERE job_id = ?1)
                AND NOT EXISTS (SELECT 1 FROM ingest_staging WHERE job_id = ?1)",
        )?
        .query_row([job.0], |r| r.get(0))?)
}

/// Marks the job as reading its file, and records the file's spreadsheet layout (`None` for
/// other formats: see migration 0010). Call it in the transaction of the first chunk.
///
/// # Errors
/// Database errors.
pub fn begin(conn: &Connection, job: JobId, layout: Option<&str>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE jobs SET reading_input = 1, input_layout = ?2 WHERE id = ?1",
        params![job.0, layout],
    )?;
    Ok(())
}

/// Inserts `prompts`, lines of a checked file in file order, as pending requests of `job`: all
/// of them or none. A line without custom_id gets the key derived from its body, numbered past
/// the equal bodies inserted before it.
///
/// # Errors
/// [`InputError::DuplicateCustomId`] when a custom_id is in the job already: the file changed
/// since its check (nothing of this chunk is written); database errors.
pub fn insert(
    conn: &Connection,
    job: JobId,
    path: &Path,
    prompts: &[Prompt],
) -> Result<(), StoreError> {
    atomically(conn, |conn| {
        for prompt in prompts {
            match &prompt.custom_id {
                Some(id) => {
                    if !insert_one(conn, job, id, prompt)? {
                        return Err(repeated(conn, job, path, id, prompt.line)?);
                    }
                }
                // Ends: every occurrence taken is a line inserted before.
                None => {
                    let mut occurrence = 1;
                    while !insert_one(conn, job, &prompt.derived_key(occurrence), prompt)? {
                        occurrence += 1;
                    }
                }
            }
        }
        Ok(())
    })
}

/// Records the file's fingerprint and clears the reading mark: every line is in the job.
///
/// # Errors
/// Database errors.
pub fn finish(conn: &Connection, job: JobId, fingerprint: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE jobs SET reading_input = 0, input_fingerprint = ?2 WHERE id = ?1",
        params![job.0, fingerprint],
    )?;
    Ok(())
}

/// Whether the job is marked as reading its file (see the module docs).
///
/// # Errors
/// Database errors.
pub fn is_reading(conn: &Connection, job: JobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT reading_input FROM jobs WHERE id = ?1")?
        .query_row([job.0], |r| r.get(0))?)
}

/// Inserts one pending request; `false` when the job has a request under `key` already.
fn insert_one(
    conn: &Connection,
    job: JobId,
    key: &str,
    prompt: &Prompt,
) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO requests (job_id, key, custom_id, line, method, url, body, body_hash,
                                   state, metadata, headers)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10)",
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
            prompt.metadata,
            prompt.headers
        ]);
    super::inserted(inserted)
}

/// The error for a custom_id that an earlier line of the file (now in the job) has too.
fn repeated(
    conn: &Connection,
    job: JobId,
    path: &Path,
    custom_id: &str,
    line: u64,
) -> Result<StoreError, StoreError> {
    let first_line: i64 = conn
        .prepare_cached("SELECT line FROM requests WHERE job_id = ?1 AND key = ?2")?
        .query_row(params![job.0, custom_id], |r| r.get(0))?;
    Ok(InputError::DuplicateCustomId {
        path: path.to_owned(),
        custom_id: custom_id.to_owned(),
        first_line: first_line as u64,
        line,
    }
    .into())
}
