//! The SQL, as functions over a `&Connection`.
//!
//! The writer calls these on the owner thread (see [`super::JobStore`]), inside its group-commit
//! transaction; read-only commands call them on their own read-only connection. Hot statements
//! use `prepare_cached`.
//!
//! A request's last answer is its `response` column, or, for an answer that was spooled (too
//! large for the memory budget), its row in `spilled_responses`, written piece by piece with
//! incremental BLOB I/O (see `migrations/0010_…`). Readers take whichever is there, as text.

use rusqlite::blob::ZeroBlob;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Statement, params};

use super::StoreError;
use crate::domain::{
    AttemptClass, AttemptOutcome, Claimed, Class, Completion, Counts, Disposition, EventKind,
    JobId, JobState, RequestId, RequestState, ResponseBody, Spent,
};
use crate::util::spool::Spooled;

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    /// Row id.
    #[serde(skip)]
    pub id: JobId,
    /// Unique name (defaults to the input file's stem).
    pub name: String,
    /// The input file as given at submit.
    pub input_path: String,
    /// blake3 of the input file as last ingested.
    pub input_fingerprint: Option<String>,
    /// JSON of the run settings.
    pub config: String,
    /// Where the job is in its life.
    pub state: JobState,
    /// Why it stopped, for `stopped`.
    pub state_reason: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Its file is still being read into it (or a runner stopped while reading it): `resume`
    /// reads the rest first (see `store::ingest::direct`).
    pub reading_input: bool,
    /// A spreadsheet job's columns, as JSON (`input::TableLayout`); `None` for other formats.
    #[serde(skip)]
    pub input_layout: Option<String>,
}

const JOB_COLUMNS: &str = "id, name, input_path, input_fingerprint, config, state, state_reason, \
                           created_at, updated_at, reading_input, input_layout";

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: JobId(row.get(0)?),
        name: row.get(1)?,
        input_path: row.get(2)?,
        input_fingerprint: row.get(3)?,
        config: row.get(4)?,
        state: row.get(5)?,
        state_reason: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        reading_input: row.get(9)?,
        input_layout: row.get(10)?,
    })
}

/// Finds a job by name.
///
/// # Errors
/// Database errors only; a missing job is `Ok(None)`.
pub fn find_job(conn: &Connection, name: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = ?1");
    Ok(conn.query_row(&sql, [name], job_from_row).optional()?)
}

/// The job named `name`, or the most recently updated one when `name` is `None`.
///
/// # Errors
/// [`StoreError::JobNotFound`] or [`StoreError::NoJobs`] when there is no such job.
pub fn resolve_job(conn: &Connection, name: Option<&str>) -> Result<Job, StoreError> {
    match name {
        Some(name) => find_job(conn, name)?.ok_or_else(|| StoreError::JobNotFound(name.to_owned())),
        None => {
            let sql =
                format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY updated_at DESC, id DESC LIMIT 1");
            conn.query_row(&sql, [], job_from_row)
                .optional()?
                .ok_or(StoreError::NoJobs)
        }
    }
}

/// Every job, newest first.
///
/// # Errors
/// Database errors.
pub fn list_jobs(conn: &Connection) -> Result<Vec<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY updated_at DESC, id DESC");
    let mut stmt = conn.prepare(&sql)?;
    let jobs = stmt
        .query_map([], job_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(jobs)
}

/// Creates a job, or returns the existing one of that name with its config replaced.
///
/// # Errors
/// Database errors.
pub fn upsert_job(
    conn: &Connection,
    name: &str,
    input_path: &str,
    config: &str,
    now: i64,
) -> Result<Job, StoreError> {
    conn.execute(
        "INSERT INTO jobs (name, input_path, config, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'running', ?4, ?4)
         ON CONFLICT (name) DO UPDATE SET input_path = ?2, config = ?3, updated_at = ?4",
        params![name, input_path, config, now],
    )?;
    find_job(conn, name)?.ok_or_else(|| StoreError::JobNotFound(name.to_owned()))
}

/// Finds the job named `name`, or creates it with these settings; says whether it was created.
/// An existing job is left as it is: `submit` changes its settings only once its file is taken
/// ([`upsert_job`] in the ingest's publish).
///
/// # Errors
/// Database errors.
pub fn find_or_create_job(
    conn: &Connection,
    name: &str,
    input_path: &str,
    config: &str,
    now: i64,
) -> Result<(Job, bool), StoreError> {
    let created = conn.execute(
        "INSERT INTO jobs (name, input_path, config, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'running', ?4, ?4)
         ON CONFLICT (name) DO NOTHING",
        params![name, input_path, config, now],
    )? == 1;
    let job = find_job(conn, name)?.ok_or_else(|| StoreError::JobNotFound(name.to_owned()))?;
    Ok((job, created))
}

/// Deletes a job that never got a request nor an event (a first submit whose file was refused);
/// does nothing to any other job. Returns whether it was deleted.
///
/// # Errors
/// Database errors.
pub fn delete_empty_job(conn: &Connection, job: JobId) -> Result<bool, StoreError> {
    let deleted = conn.execute(
        "DELETE FROM jobs WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM requests WHERE job_id = ?1)
             AND NOT EXISTS (SELECT 1 FROM events WHERE job_id = ?1)
             AND NOT EXISTS (SELECT 1 FROM ingest_staging WHERE job_id = ?1)",
        [job.0],
    )?;
    Ok(deleted == 1)
}

/// Replaces a job's settings (a resume with overrides).
///
/// # Errors
/// Database errors.
pub fn update_job_config(
    conn: &Connection,
    job: JobId,
    config: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE jobs SET config = ?2, updated_at = ?3 WHERE id = ?1",
        params![job.0, config, now],
    )?;
    Ok(())
}

/// Sets a job's state and journals the change as an event.
///
/// # Errors
/// Database errors.
pub fn set_job_state(
    conn: &Connection,
    job: JobId,
    state: JobState,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE jobs SET state = ?2, state_reason = ?3, updated_at = ?4 WHERE id = ?1",
        params![job.0, state, reason, now],
    )?;
    record_event(conn, job, EventKind::from(state), reason, now)
}

/// Appends a job-level event.
///
/// # Errors
/// Database errors.
pub fn record_event(
    conn: &Connection,
    job: JobId,
    kind: EventKind,
    detail: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO events (job_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![job.0, now, kind, detail])?;
    Ok(())
}

/// Runs `f` under a savepoint: all of its writes, or none of them. Nests.
///
/// # Errors
/// `f`'s error (after the rollback), or the savepoint's own failure.
pub fn atomically<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached("SAVEPOINT atomically")?.execute([])?;
    match f(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE atomically")?.execute([])?;
            Ok(value)
        }
        Err(err) => {
            conn.execute_batch("ROLLBACK TO atomically; RELEASE atomically")?;
            Err(err)
        }
    }
}

/// Crash recovery: every request left `in_flight` (by a runner that died or was aborted) gets an
/// `interrupted` attempt (outcome unknown) and is pending again. Returns how many.
///
/// # Errors
/// Database errors.
pub fn recover_in_flight(conn: &Connection, job: JobId, now: i64) -> Result<u64, StoreError> {
    conn.execute(
        "INSERT INTO attempts (request_id, job_id, number, started_at, finished_at, outcome, error_message)
         SELECT id, job_id, attempts + 1, coalesce(in_flight_since, ?2), ?2, ?3,
                'the runner stopped while this request was in flight (sent, or claimed to be sent next): the server may or may not have processed it'
         FROM requests WHERE job_id = ?1 AND state = 'in_flight'",
        params![job.0, now, AttemptOutcome::Interrupted.as_str()],
    )?;
    let moved = conn.execute(
        "UPDATE requests SET state = 'pending', attempts = attempts + 1, in_flight_since = NULL,
                next_attempt_at = ?2
         WHERE job_id = ?1 AND state = 'in_flight'",
        params![job.0, now],
    )?;
    Ok(moved as u64)
}

/// Claims up to `limit` requests that are due at `now`: they become `in_flight`.
///
/// Read first, then each row moved by its id, in the caller's transaction (the store's batch):
/// nothing else writes in between, so this is the single `UPDATE … WHERE id IN (SELECT …)
/// RETURNING …` it replaces, row for row. That statement could not update in one pass (its
/// subquery reads the table it changes): SQLite copied every claimed row into a temporary
/// table, then again into another for RETURNING, ~5k instructions more per request.
///
/// # Errors
/// Database errors.
pub fn claim_due(
    conn: &Connection,
    job: JobId,
    now: i64,
    limit: usize,
) -> Result<Vec<Claimed>, StoreError> {
    claim_due_within(conn, job, now, limit, usize::MAX)
}

/// [`claim_due`], stopping once the requests claimed hold `max_bytes` ([`Claimed::bytes`]) or
/// more, so that a claim of large prompts stays small in memory; at least one is claimed when
/// one is due.
///
/// # Errors
/// Database errors.
pub fn claim_due_within(
    conn: &Connection,
    job: JobId,
    now: i64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Claimed>, StoreError> {
    let mut bytes = 0usize;
    let mut claimed = conn
        .prepare_cached(
            "SELECT id, key, method, url, body, attempts, transient_attempts, auth_attempts,
                    rate_limited_attempts, invalid_attempts, headers
             FROM requests
             WHERE job_id = ?1 AND state = 'pending' AND next_attempt_at <= ?2
             ORDER BY next_attempt_at, id LIMIT ?3",
        )?
        .query_map(params![job.0, now, limit as i64], |r| {
            Ok(Claimed {
                id: RequestId(r.get(0)?),
                key: r.get(1)?,
                method: r.get(2)?,
                url: r.get(3)?,
                body: r.get(4)?,
                attempts: r.get(5)?,
                spent: Spent {
                    transient: r.get(6)?,
                    auth_transient: r.get(7)?,
                    rate_limited: r.get(8)?,
                    invalid_response: r.get(9)?,
                },
                headers: r.get(10)?,
            })
        })?
        .take_while(|row| {
            let more = bytes < max_bytes;
            if let Ok(request) = row {
                bytes = bytes.saturating_add(request.bytes());
            }
            more
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every row was read before the first is changed: the scan above walks the index these
    // updates change. All of them or none: a request is never left in flight unclaimed.
    atomically(conn, |conn| {
        let mut mark = conn.prepare_cached(
            "UPDATE requests SET state = 'in_flight', in_flight_since = ?2
             WHERE id = ?1 AND state = 'pending'",
        )?;
        for request in &claimed {
            if mark.execute(params![request.id.0, now])? != 1 {
                return Err(StoreError::Corrupt(format!(
                    "request {} was read as pending and could not be claimed",
                    request.id.0
                )));
            }
        }
        Ok(())
    })?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Gives back claimed requests that were never sent (no attempt is journaled for them).
///
/// # Errors
/// Database errors.
pub fn release(conn: &Connection, ids: &[RequestId]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE requests SET state = 'pending', in_flight_since = NULL WHERE id = ?1 AND state = 'in_flight'",
    )?;
    for id in ids {
        stmt.execute([id.0])?;
    }
    Ok(())
}

/// Puts failed requests back in the queue with fresh retry budgets: all of a job's, or those
/// whose last error has class `class`. Returns how many.
///
/// # Errors
/// Database errors.
pub fn requeue_failed(
    conn: &Connection,
    job: JobId,
    class: Option<AttemptClass>,
) -> Result<u64, StoreError> {
    let n = conn.execute(
        "UPDATE requests SET state = 'pending', next_attempt_at = 0, finished_at = NULL,
                transient_attempts = 0, auth_attempts = 0, rate_limited_attempts = 0,
                invalid_attempts = 0
         WHERE job_id = ?1 AND state = 'failed' AND (?2 IS NULL OR error_class = ?2)",
        params![job.0, class],
    )?;
    Ok(n as u64)
}

/// Puts these failed requests back in the queue with fresh budgets (a configuration error was
/// found and fixed: their failure was not theirs).
///
/// # Errors
/// Database errors.
pub fn requeue(conn: &Connection, ids: &[RequestId]) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE requests SET state = 'pending', next_attempt_at = 0, finished_at = NULL,
                transient_attempts = 0, auth_attempts = 0, rate_limited_attempts = 0,
                invalid_attempts = 0
         WHERE id = ?1 AND state = 'failed'",
    )?;
    let mut n = 0;
    for id in ids {
        n += stmt.execute([id.0])? as u64;
    }
    Ok(n)
}

/// The earliest `next_attempt_at` of a pending request; `None` when nothing is pending.
///
/// # Errors
/// Database errors.
pub fn next_due(conn: &Connection, job: JobId) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT min(next_attempt_at) FROM requests WHERE job_id = ?1 AND state = 'pending'",
        )?
        .query_row([job.0], |r| r.get(0))?)
}

/// Journals one attempt and moves its request, in the caller's transaction.
///
/// # Errors
/// Database errors.
pub fn record_attempt(conn: &Connection, c: &Completion) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(INSERT_ATTEMPT)?;
    let mut update = conn.prepare_cached(UPDATE_REQUEST)?;
    record_with(
        conn,
        &mut Statements {
            insert: &mut insert,
            update: &mut update,
            unspill: None,
        },
        c,
    )
}

/// The statements that journal an attempt ([`record_attempt`]), prepared once and kept by the
/// store's owner thread, which journals thousands of attempts a second: taking a statement
/// from the connection's cache hashes its text, and giving it back clears its bindings, ~2k
/// instructions per statement and call.
pub struct Journal<'conn> {
    conn: &'conn Connection,
    insert: Statement<'conn>,
    update: Statement<'conn>,
    unspill: Statement<'conn>,
}

impl<'conn> Journal<'conn> {
    /// Prepares the statements.
    ///
    /// # Errors
    /// Database errors (a database without the schema).
    pub fn new(conn: &'conn Connection) -> Result<Journal<'conn>, StoreError> {
        Ok(Journal {
            conn,
            insert: conn.prepare(INSERT_ATTEMPT)?,
            update: conn.prepare(UPDATE_REQUEST)?,
            unspill: conn.prepare(DELETE_SPILLED)?,
        })
    }

    /// As [`record_attempt`].
    ///
    /// # Errors
    /// Database errors.
    pub fn record(&mut self, c: &Completion) -> Result<(), StoreError> {
        record_with(
            self.conn,
            &mut Statements {
                insert: &mut self.insert,
                update: &mut self.update,
                unspill: Some(&mut self.unspill),
            },
            c,
        )
    }
}

/// An attempt's journal row.
const INSERT_ATTEMPT: &str =
    "INSERT INTO attempts (request_id, job_id, number, started_at, finished_at, latency_ms,
                          outcome, http_status, error_class, error_code, error_message,
                          x_request_id, key_fingerprint)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// The request's state and last answer after an attempt.
const UPDATE_REQUEST: &str = "UPDATE requests SET state = ?2, attempts = ?3, next_attempt_at = ?4, in_flight_since = NULL,
            http_status = ?5, error_class = ?6, error_code = ?7, error_message = ?8, x_request_id = ?9,
            response = ?10, model = ?11, prompt_tokens = ?12, completion_tokens = ?13, total_tokens = ?14,
            latency_ms = ?15, finished_at = ?16,
            transient_attempts = transient_attempts + ?17, auth_attempts = auth_attempts + ?18,
            rate_limited_attempts = rate_limited_attempts + ?19,
            invalid_attempts = invalid_attempts + ?20, cached_tokens = ?21
     WHERE id = ?1";

/// A request's spooled answer, gone: a later attempt's answer replaces it.
const DELETE_SPILLED: &str = "DELETE FROM spilled_responses WHERE request_id = ?1";

/// A request's spooled answer, as a zero-filled BLOB of its length, filled in afterwards.
const INSERT_SPILLED: &str =
    "INSERT OR REPLACE INTO spilled_responses (request_id, body) VALUES (?1, ?2)";

/// The statements [`record_with`] runs; [`DELETE_SPILLED`], when not given, is taken from the
/// connection's cache when needed (rarely: see [`record_with`]).
struct Statements<'a, 'conn> {
    insert: &'a mut Statement<'conn>,
    update: &'a mut Statement<'conn>,
    unspill: Option<&'a mut Statement<'conn>>,
}

/// [`record_attempt`] with its statements.
fn record_with(
    conn: &Connection,
    statements: &mut Statements<'_, '_>,
    c: &Completion,
) -> Result<(), StoreError> {
    let Statements {
        insert,
        update,
        unspill,
    } = statements;
    insert.execute(params![
        c.request.0,
        c.job.0,
        c.number,
        c.started_at,
        c.finished_at,
        c.latency_ms(),
        c.outcome,
        c.http_status,
        c.class.journaled(),
        c.error_code,
        c.error_message,
        c.x_request_id,
        c.key_fingerprint,
    ])?;
    let (state, next_at, finished_at) = match c.disposition {
        Disposition::Succeeded => (RequestState::Succeeded, 0, Some(c.finished_at)),
        Disposition::Failed => (RequestState::Failed, 0, Some(c.finished_at)),
        Disposition::RetryAt(at) => (RequestState::Pending, at, None),
        Disposition::Requeue => (RequestState::Pending, 0, None),
    };
    let succeeded = c.disposition == Disposition::Succeeded;
    let (inline, spooled) = match &c.response {
        Some(ResponseBody::Text { text, .. }) => (Some(text.as_str()), None),
        Some(ResponseBody::Spooled(spooled)) => (None, Some(spooled)),
        None => (None, None),
    };
    let changed = update.execute(params![
        c.request.0,
        state,
        c.number,
        next_at,
        c.http_status,
        (!succeeded).then(|| c.class.journaled()),
        c.error_code,
        c.error_message,
        c.x_request_id,
        inline,
        c.usage.model,
        c.usage.prompt_tokens,
        c.usage.completion_tokens,
        c.usage.total_tokens,
        c.latency_ms(),
        finished_at,
        c.class == Class::Transient,
        c.class == Class::AuthTransient,
        c.class == Class::RateLimited,
        c.class == Class::InvalidResponse,
        c.usage.cached_tokens,
    ])?;
    if changed != 1 {
        return Err(StoreError::Corrupt(format!(
            "attempt {} journaled for request {} which does not exist",
            c.number, c.request.0
        )));
    }
    match spooled {
        Some(spooled) => spill(conn, c.request, spooled)?,
        // A request's first attempt has no earlier answer to replace: the common case, a first
        // success, runs no statement for it.
        None if c.number > 1 => match unspill {
            Some(unspill) => unspill.execute([c.request.0]).map(drop)?,
            None => conn
                .prepare_cached(DELETE_SPILLED)?
                .execute([c.request.0])
                .map(drop)?,
        },
        None => {}
    }
    Ok(())
}

/// Journals a spooled answer as its request's row in `spilled_responses`: a zero-filled BLOB of
/// the text's length, then the text written into it piece by piece, so neither SQLite nor this
/// thread ever holds more than a piece of it.
fn spill(conn: &Connection, request: RequestId, spooled: &Spooled) -> Result<(), StoreError> {
    let length = spooled.text_len();
    let too_large = || StoreError::Spool {
        request: request.0,
        source: std::io::Error::other(format!(
            "an answer of {length} bytes is over SQLite's limit for one value"
        )),
    };
    let zeroed = ZeroBlob(i32::try_from(length).map_err(|_| too_large())?);
    conn.prepare_cached(INSERT_SPILLED)?
        .execute(params![request.0, zeroed])?;
    let mut blob = conn.blob_open(
        rusqlite::MAIN_DB,
        c"spilled_responses",
        c"body",
        request.0,
        false,
    )?;
    let copied = spooled.copy_text(&mut |piece| std::io::Write::write_all(&mut blob, piece));
    match copied {
        Ok(n) if n == length => Ok(()),
        Ok(n) => Err(StoreError::Spool {
            request: request.0,
            source: std::io::Error::other(format!(
                "its text is {n} bytes where {length} were counted"
            )),
        }),
        Err(source) => Err(StoreError::Spool {
            request: request.0,
            source,
        }),
    }
}

/// A `response` as text, whether stored as TEXT (`requests.response`) or as a BLOB of UTF-8
/// (`spilled_responses.body`).
fn response_text(value: ValueRef<'_>) -> rusqlite::Result<Option<String>> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
        }
        ValueRef::Integer(_) | ValueRef::Real(_) => Err(rusqlite::Error::InvalidColumnType(
            5,
            "response".to_owned(),
            value.data_type(),
        )),
    }
}

/// The models named by the job's requests still to send (an empty name for those that name
/// none), for `--max-cost`, which must price each.
///
/// # Errors
/// Database errors.
pub fn pending_models(conn: &Connection, job: JobId) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT coalesce(json_extract(body, '$.model'), '') FROM requests
         WHERE job_id = ?1 AND state IN ('pending', 'in_flight') AND method = 'POST'
           AND json_valid(body)",
    )?;
    let models = stmt
        .query_map([job.0], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(models)
}

/// The SQL of a request's `response`: the column, or its spilled row.
pub const RESPONSE_SQL: &str =
    "coalesce(response, (SELECT body FROM spilled_responses WHERE request_id = requests.id))";

/// Requests of a job by state.
///
/// # Errors
/// Database errors.
pub fn counts(conn: &Connection, job: JobId) -> Result<Counts, StoreError> {
    // Counted from the dispatch index alone (job_id, state, …): a finished request's row holds
    // its answer, and reading every row of a big job to count them took longer than the
    // counting. Only pending rows are read, for how many of them were tried before.
    let mut stmt = conn
        .prepare_cached("SELECT state, count(*) FROM requests WHERE job_id = ?1 GROUP BY state")?;
    let mut counts = Counts::default();
    let mut rows = stmt.query([job.0])?;
    while let Some(row) = rows.next()? {
        let state: RequestState = row.get(0)?;
        let n = row.get::<_, i64>(1)? as u64;
        counts.total += n;
        match state {
            RequestState::Pending => {
                counts.pending = n;
                counts.retrying =
                    conn.prepare_cached(
                        "SELECT count(*) FROM requests
                         WHERE job_id = ?1 AND state = 'pending' AND attempts > 0",
                    )?
                    .query_row([job.0], |r| r.get::<_, i64>(0))? as u64;
            }
            RequestState::InFlight => counts.in_flight = n,
            RequestState::Succeeded => counts.succeeded = n,
            RequestState::Failed => counts.failed = n,
            RequestState::Batched => counts.batched = n,
        }
    }
    Ok(counts)
}

/// Attempts of a job by class (`interrupted` for attempts cut off by a crash or abort).
///
/// # Errors
/// Database errors.
pub fn attempts_by_class(
    conn: &Connection,
    job: JobId,
) -> Result<Tallies<AttemptClass>, StoreError> {
    // An interrupted attempt has no class; its outcome, `interrupted`, is the class's name.
    let mut stmt = conn.prepare(
        "SELECT coalesce(error_class, outcome), count(*) FROM attempts WHERE job_id = ?1
         GROUP BY 1 ORDER BY 2 DESC",
    )?;
    let rows = stmt
        .query_map([job.0], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A job-level event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Unix ms.
    pub at: i64,
    /// What happened.
    pub kind: EventKind,
    /// Human detail.
    pub detail: Option<String>,
}

/// Counts by name, e.g. events by kind or attempts by class, most first or in name order.
pub type Tallies<T> = Vec<(T, u64)>;

/// Events of a job by kind, and the last `limit` of them (oldest first).
///
/// # Errors
/// Database errors.
pub fn events(
    conn: &Connection,
    job: JobId,
    limit: usize,
) -> Result<(Tallies<EventKind>, Vec<Event>), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT kind, count(*) FROM events WHERE job_id = ?1 GROUP BY kind ORDER BY kind",
    )?;
    let by_kind = stmt
        .query_map([job.0], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT at, kind, detail FROM (SELECT id, at, kind, detail FROM events WHERE job_id = ?1
                                       ORDER BY id DESC LIMIT ?2) ORDER BY id",
    )?;
    let last = stmt
        .query_map(params![job.0, limit as i64], |r| {
            Ok(Event {
                at: r.get(0)?,
                kind: r.get(1)?,
                detail: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((by_kind, last))
}

/// Token totals of a job's successful requests: (prompt, completion, total).
///
/// # Errors
/// Database errors.
pub fn token_totals(conn: &Connection, job: JobId) -> Result<(i64, i64, i64), StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0)
         FROM requests WHERE job_id = ?1 AND state = 'succeeded'",
        [job.0],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

/// One request as exported.
#[derive(Clone, Debug)]
pub struct RequestRow {
    /// custom_id or derived key.
    pub key: String,
    /// The custom_id the line gave (`None` for a derived key).
    pub custom_id: Option<String>,
    /// The request body as sent (empty for a line that was not a valid request).
    pub body: String,
    /// Input line.
    pub line: i64,
    /// Where the request is.
    pub state: RequestState,
    /// Last HTTP status.
    pub http_status: Option<u16>,
    /// Attempts journaled.
    pub attempts: u32,
    /// Last answer body.
    pub response: Option<String>,
    /// Answer's model.
    pub model: Option<String>,
    /// Usage.
    pub prompt_tokens: Option<i64>,
    /// Usage.
    pub completion_tokens: Option<i64>,
    /// Usage.
    pub total_tokens: Option<i64>,
    /// Usage: the prompt tokens read from the cache.
    pub cached_tokens: Option<i64>,
    /// Last `x-request-id`.
    pub x_request_id: Option<String>,
    /// Last error's class (none after success).
    pub error_class: Option<AttemptClass>,
    /// Last error's code.
    pub error_code: Option<String>,
    /// Last error's message.
    pub error_message: Option<String>,
    /// Last attempt's latency.
    pub latency_ms: Option<i64>,
    /// Unix ms when the request ended.
    pub finished_at: Option<i64>,
    /// The line's `metadata`, as JSON text.
    pub metadata: Option<String>,
    /// Whether its last attempt went through the hosted Batch API (priced at half).
    pub batch: bool,
}

/// Calls `each` for every request of a job in input order, streaming.
///
/// # Errors
/// Database errors, or the callback's error.
pub fn for_each_request<E: From<StoreError>>(
    conn: &Connection,
    job: JobId,
    mut each: impl FnMut(RequestRow) -> Result<(), E>,
) -> Result<(), E> {
    let sql = format!(
        "SELECT key, line, state, http_status, attempts, {RESPONSE_SQL}, model, prompt_tokens,
                completion_tokens, total_tokens, x_request_id, error_class, error_code, error_message,
                latency_ms, finished_at, metadata, custom_id, body,
                coalesce((SELECT a.batch_id IS NOT NULL FROM attempts a
                          WHERE a.request_id = requests.id AND a.number = requests.attempts), 0),
                cached_tokens
         FROM requests WHERE job_id = ?1 ORDER BY line, id"
    );
    let mut stmt = conn.prepare(&sql).map_err(StoreError::from)?;
    let mut rows = stmt.query([job.0]).map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let row = (|| -> rusqlite::Result<RequestRow> {
            Ok(RequestRow {
                key: r.get(0)?,
                line: r.get(1)?,
                state: r.get(2)?,
                http_status: r.get(3)?,
                attempts: r.get(4)?,
                response: response_text(r.get_ref(5)?)?,
                model: r.get(6)?,
                prompt_tokens: r.get(7)?,
                completion_tokens: r.get(8)?,
                total_tokens: r.get(9)?,
                x_request_id: r.get(10)?,
                error_class: r.get(11)?,
                error_code: r.get(12)?,
                error_message: r.get(13)?,
                latency_ms: r.get(14)?,
                finished_at: r.get(15)?,
                metadata: r.get(16)?,
                custom_id: r.get(17)?,
                body: r.get(18)?,
                batch: r.get(19)?,
                cached_tokens: r.get(20)?,
            })
        })()
        .map_err(StoreError::from)?;
        each(row)?;
    }
    Ok(())
}
