//! Reading a whole input file into a job: new requests queued, known ones kept, all or nothing.

use rusqlite::{Connection, OptionalExtension, params};

use super::db::atomically;
use super::{StoreError, invalid};
use crate::domain::JobId;
use crate::input::{InputError, InputReader};
use crate::util::clock::now_ms;

/// What an ingest did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Requests read from the file.
    pub read: u64,
    /// Of those, new to the job (queued).
    pub added: u64,
    /// Of those, already in the job (left as they are).
    pub known: u64,
    /// Lines that are not valid requests, recorded as failed (`--skip-invalid`); not in `read`.
    pub invalid: u64,
}

/// Reads the whole input into the job: new requests are queued, known ones (same key, same body)
/// are left as they are, so a resubmitted file resumes its job.
///
/// All or nothing: on any input error nothing is written, and the error names file and line.
/// When the reader skips invalid lines ([`InputReader::skip_invalid`]), a line that cannot
/// become a request is recorded as a failed request instead (see `store::invalid`); a duplicate
/// custom_id and a changed body still stop the ingest.
///
/// # Errors
/// [`StoreError::Input`] for bad input, including a duplicate custom_id (with both lines) and a
/// known custom_id whose body changed; database errors.
pub fn ingest(
    conn: &Connection,
    job: JobId,
    reader: &mut InputReader,
) -> Result<IngestReport, StoreError> {
    atomically(conn, |conn| ingest_all(conn, job, reader))
}

fn ingest_all(
    conn: &Connection,
    job: JobId,
    reader: &mut InputReader,
) -> Result<IngestReport, StoreError> {
    // The keys of this file, to find repeats; a temp table so a huge file costs disk, not memory.
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS ingest_seen (key TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID;
         DELETE FROM temp.ingest_seen;",
    )?;
    let mut mark_seen = conn.prepare_cached(
        "INSERT INTO temp.ingest_seen (key, line) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?;
    let mut first_line = conn.prepare_cached("SELECT line FROM temp.ingest_seen WHERE key = ?1")?;
    let mut existing =
        conn.prepare_cached("SELECT body_hash, line FROM requests WHERE job_id = ?1 AND key = ?2")?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO requests (job_id, key, custom_id, line, method, url, body, body_hash, state,
                               metadata, headers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10)",
    )?;
    let mut move_line =
        conn.prepare_cached("UPDATE requests SET line = ?3 WHERE job_id = ?1 AND key = ?2")?;

    let mut report = IngestReport::default();
    // Bad lines left out with a warning (their custom_id holds a request): not an empty file.
    let mut kept_invalid = 0u64;
    while let Some(prompt) = reader.next() {
        let prompt = match prompt {
            Ok(prompt) => prompt,
            Err(e) if reader.skips_invalid() && e.is_invalid_line() => {
                // Every invalid-line error names its line.
                let bad_line = e.line().unwrap_or(0);
                let custom_id = reader.salvaged_custom_id();
                let key = invalid::key_for(custom_id.as_deref(), bad_line);
                if mark_seen.execute(params![key, bad_line as i64])? == 0 {
                    let first: i64 = first_line.query_row([&key], |r| r.get(0))?;
                    return Err(InputError::DuplicateCustomId {
                        path: reader.path().to_owned(),
                        custom_id: key,
                        first_line: first as u64,
                        line: bad_line,
                    }
                    .into());
                }
                if invalid::record(conn, job, &key, custom_id.as_deref(), &e, now_ms())? {
                    report.invalid += 1;
                } else {
                    kept_invalid += 1;
                    tracing::warn!(
                        "{e} (skipped: custom_id '{key}' keeps the request and result it already has)"
                    );
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let line = prompt.line as i64;
        let key = match &prompt.custom_id {
            Some(id) => {
                if mark_seen.execute(params![id, line])? == 0 {
                    let first: i64 = first_line.query_row([id], |r| r.get(0))?;
                    return Err(InputError::DuplicateCustomId {
                        path: reader.path().to_owned(),
                        custom_id: id.clone(),
                        first_line: first as u64,
                        line: prompt.line,
                    }
                    .into());
                }
                id.clone()
            }
            None => {
                let mut occurrence = 1;
                loop {
                    let key = prompt.derived_key(occurrence);
                    if mark_seen.execute(params![key, line])? == 1 {
                        break key;
                    }
                    occurrence += 1;
                }
            }
        };
        report.read += 1;
        let known: Option<(String, i64)> = existing
            .query_row(params![job.0, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match known {
            Some((hash, _)) if hash != prompt.body_hash => {
                if invalid::replace(conn, job, &key, &prompt)? {
                    // The line was invalid at an earlier submit and is fixed now.
                    report.added += 1;
                    continue;
                }
                return Err(InputError::ChangedBody {
                    path: reader.path().to_owned(),
                    custom_id: key,
                    line: prompt.line,
                }
                .into());
            }
            Some((_, old_line)) => {
                report.known += 1;
                if old_line != line {
                    move_line.execute(params![job.0, key, line])?;
                }
            }
            None => {
                report.added += 1;
                insert.execute(params![
                    job.0,
                    key,
                    prompt.custom_id,
                    line,
                    prompt.method,
                    prompt.url,
                    prompt.body,
                    prompt.body_hash,
                    prompt.metadata,
                    prompt.headers
                ])?;
            }
        }
    }
    if report.read + report.invalid + kept_invalid == 0 {
        return Err(InputError::Empty {
            path: reader.path().to_owned(),
        }
        .into());
    }
    invalid::drop_stale(conn, job)?;
    conn.execute(
        "UPDATE jobs SET input_fingerprint = ?2 WHERE id = ?1",
        params![job.0, reader.fingerprint()],
    )?;
    Ok(report)
}
