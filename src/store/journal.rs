//! Read-only queries over the attempt journal and the job events, for `status`, `attempts`,
//! `timeline` and `report`.
//!
//! Every function takes a `&Connection` opened with [`crate::store::open_read_only`], so it can
//! run while a job writes (WAL). Large results are streamed through a callback, never collected:
//! a job can have millions of attempts. The `attempts_job (job_id, started_at)` index serves the
//! time-ordered scans and the time-window queries.

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{AttemptClass, AttemptOutcome, EventKind, JobId};
use crate::store::StoreError;
use crate::store::db::Event;

/// One attempt as journaled, with its request's key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRecord {
    /// The request's custom_id (or derived key).
    pub custom_id: String,
    /// 1-based attempt number of the request.
    pub attempt: u32,
    /// Unix ms when sending started.
    pub started_at: i64,
    /// Unix ms when the answer (or failure) arrived.
    pub finished_at: i64,
    /// Milliseconds from send to answer (none for interrupted attempts).
    pub latency_ms: Option<i64>,
    /// Whether the server saw it.
    pub outcome: AttemptOutcome,
    /// HTTP status, when answered.
    pub http_status: Option<u16>,
    /// The taxonomy's class, or `interrupted` for attempts cut off by a crash or abort.
    pub class: AttemptClass,
    /// `error.code`, or a transport error's kind.
    pub error_code: Option<String>,
    /// `error.message`, or a transport error's text.
    pub error_message: Option<String>,
    /// The answer's `x-request-id`: what support asks for.
    pub x_request_id: Option<String>,
    /// The key's label or `sk-…abcd`, never the key.
    pub key: Option<String>,
}

/// Which attempts to list. Every field narrows; the default lists them all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptFilter {
    /// Only this request (its custom_id or derived key).
    pub custom_id: Option<String>,
    /// Only answers with this HTTP status.
    pub status: Option<u16>,
    /// Only this class.
    pub class: Option<AttemptClass>,
    /// Only attempts sent with this key (label or fingerprint, exactly as journaled).
    pub key: Option<String>,
    /// Only attempts started at or after this unix ms.
    pub since: Option<i64>,
    /// Only attempts started at or before this unix ms.
    pub until: Option<i64>,
    /// Only attempts that did not succeed.
    pub errors_only: bool,
    /// Only the most recent this many (still listed oldest first).
    pub limit: Option<u64>,
}

/// The class an attempt is counted under: its error class, or its outcome (`interrupted`) when
/// it has none.
const CLASS_SQL: &str = "coalesce(a.error_class, a.outcome)";

/// Calls `each` for every attempt of `job` that passes `filter`, oldest first, streaming.
///
/// # Errors
/// Database errors, or the callback's error.
pub fn for_each_attempt<E: From<StoreError>>(
    conn: &Connection,
    job: JobId,
    filter: &AttemptFilter,
    mut each: impl FnMut(AttemptRecord) -> Result<(), E>,
) -> Result<(), E> {
    let matching = format!(
        "SELECT a.id, r.key, a.number, a.started_at, a.finished_at, a.latency_ms, a.outcome,
                a.http_status, {CLASS_SQL} AS class, a.error_code, a.error_message, a.x_request_id,
                a.key_fingerprint
         FROM attempts a JOIN requests r ON r.id = a.request_id
         WHERE a.job_id = ?1
           AND (?2 IS NULL OR r.key = ?2)
           AND (?3 IS NULL OR a.http_status = ?3)
           AND (?4 IS NULL OR {CLASS_SQL} = ?4)
           AND (?5 IS NULL OR a.key_fingerprint = ?5)
           AND (?6 IS NULL OR a.started_at >= ?6)
           AND (?7 IS NULL OR a.started_at <= ?7)
           AND (?8 = 0 OR {CLASS_SQL} <> 'succeeded')"
    );
    // The most recent N, listed oldest first: select newest first with the limit, then re-sort.
    let sql = match filter.limit {
        Some(_) => format!(
            "SELECT * FROM ({matching} ORDER BY a.started_at DESC, a.id DESC LIMIT ?9)
             ORDER BY started_at, id"
        ),
        None => format!("{matching} AND ?9 IS NULL ORDER BY a.started_at, a.id"),
    };
    let mut stmt = conn.prepare(&sql).map_err(StoreError::from)?;
    let limit = filter.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let mut rows = stmt
        .query(params![
            job.0,
            filter.custom_id,
            filter.status,
            filter.class,
            filter.key,
            filter.since,
            filter.until,
            filter.errors_only,
            limit,
        ])
        .map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let record = (|| -> rusqlite::Result<AttemptRecord> {
            Ok(AttemptRecord {
                custom_id: r.get(1)?,
                attempt: r.get(2)?,
                started_at: r.get(3)?,
                finished_at: r.get(4)?,
                latency_ms: r.get(5)?,
                outcome: r.get(6)?,
                http_status: r.get(7)?,
                class: r.get(8)?,
                error_code: r.get(9)?,
                error_message: r.get(10)?,
                x_request_id: r.get(11)?,
                key: r.get(12)?,
            })
        })()
        .map_err(StoreError::from)?;
        each(record)?;
    }
    Ok(())
}

/// The few columns the timeline counts, without the messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Unix ms when sending started: the attempt's place on the timeline.
    pub started_at: i64,
    /// Milliseconds from send to answer (none for interrupted attempts).
    pub latency_ms: Option<i64>,
    /// The class, or `interrupted`.
    pub class: AttemptClass,
    /// The key's label or fingerprint.
    pub key: Option<String>,
}

/// Calls `each` for every attempt of `job`, oldest first, with only what the timeline needs.
///
/// # Errors
/// Database errors, or the callback's error.
pub fn for_each_outcome<E: From<StoreError>>(
    conn: &Connection,
    job: JobId,
    mut each: impl FnMut(Outcome) -> Result<(), E>,
) -> Result<(), E> {
    let sql = format!(
        "SELECT a.started_at, a.latency_ms, {CLASS_SQL}, a.key_fingerprint FROM attempts a
         WHERE a.job_id = ?1 ORDER BY a.started_at, a.id"
    );
    let mut stmt = conn.prepare(&sql).map_err(StoreError::from)?;
    let mut rows = stmt.query([job.0]).map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let outcome = Outcome {
            started_at: r.get(0).map_err(StoreError::from)?,
            latency_ms: r.get(1).map_err(StoreError::from)?,
            class: r.get(2).map_err(StoreError::from)?,
            key: r.get(3).map_err(StoreError::from)?,
        };
        each(outcome)?;
    }
    Ok(())
}

/// When a job's attempts started: the first and the last `started_at`, and how many there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Unix ms of the first attempt's start.
    pub first: i64,
    /// Unix ms of the last attempt's start.
    pub last: i64,
    /// Attempts journaled.
    pub attempts: u64,
}

/// The span of a job's attempts; `None` before its first attempt.
///
/// # Errors
/// Database errors.
pub fn attempt_span(conn: &Connection, job: JobId) -> Result<Option<Span>, StoreError> {
    let (first, last, attempts): (Option<i64>, Option<i64>, i64) = conn.query_row(
        "SELECT min(started_at), max(started_at), count(*) FROM attempts WHERE job_id = ?1",
        [job.0],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(first.zip(last).map(|(first, last)| Span {
        first,
        last,
        attempts: attempts as u64,
    }))
}

/// Attempts of a job by HTTP status, most frequent first; `None` is "no answer" (transport
/// failures, interrupted attempts).
///
/// # Errors
/// Database errors.
pub fn attempts_by_status(
    conn: &Connection,
    job: JobId,
) -> Result<Vec<(Option<u16>, u64)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT http_status, count(*) FROM attempts WHERE job_id = ?1
         GROUP BY 1 ORDER BY 2 DESC, 1",
    )?;
    let rows = stmt
        .query_map([job.0], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Token usage of a job's successful requests answered by one model.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelTokens {
    /// The answer's `model` (none when the answer named none).
    pub model: Option<String>,
    /// Successful requests answered by it.
    pub requests: u64,
    /// `prompt_tokens` / `input_tokens`.
    pub prompt: i64,
    /// `completion_tokens` / `output_tokens`.
    pub completion: i64,
    /// `total_tokens`.
    pub total: i64,
    /// The prompt tokens among them read from the prompt cache.
    pub cached: i64,
    /// Whether these requests were answered through the hosted Batch API (half price).
    pub batch: bool,
}

impl ModelTokens {
    /// The tokens billed, for [`crate::domain::price::PriceTable::usage_cost`].
    pub fn billed(&self) -> crate::domain::price::UsageTokens {
        crate::domain::price::UsageTokens {
            prompt: Some(self.prompt),
            cached: Some(self.cached),
            completion: Some(self.completion),
        }
    }
}

/// A successful request's billed usage, and when it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Billed {
    /// Unix ms when it succeeded.
    pub finished_at: i64,
    /// The answer's model.
    pub model: Option<String>,
    /// Its usage.
    pub tokens: crate::domain::price::UsageTokens,
    /// Answered through the hosted Batch API.
    pub batch: bool,
}

/// Calls `each` for every successful request of a job, with its usage, streaming.
///
/// # Errors
/// Database errors.
pub fn for_each_billed(
    conn: &Connection,
    job: JobId,
    mut each: impl FnMut(Billed),
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT r.finished_at, r.model, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
                coalesce((SELECT a.batch_id IS NOT NULL FROM attempts a
                          WHERE a.request_id = r.id AND a.number = r.attempts), 0)
         FROM requests r
         WHERE r.job_id = ?1 AND r.state = 'succeeded' AND r.finished_at IS NOT NULL",
    )?;
    let mut rows = stmt.query([job.0])?;
    while let Some(r) = rows.next()? {
        each(Billed {
            finished_at: r.get(0)?,
            model: r.get(1)?,
            tokens: crate::domain::price::UsageTokens {
                prompt: r.get(2)?,
                cached: r.get(3)?,
                completion: r.get(4)?,
            },
            batch: r.get(5)?,
        });
    }
    Ok(())
}

/// Token usage of a job's successful requests, per answering model and way of sending (direct,
/// or in a batch: the success's attempt names its batch), largest first.
///
/// # Errors
/// Database errors.
pub fn tokens_by_model(conn: &Connection, job: JobId) -> Result<Vec<ModelTokens>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT r.model, count(*), coalesce(sum(r.prompt_tokens), 0),
                coalesce(sum(r.completion_tokens), 0), coalesce(sum(r.total_tokens), 0),
                coalesce((SELECT a.batch_id IS NOT NULL FROM attempts a
                          WHERE a.request_id = r.id AND a.number = r.attempts), 0) AS batch,
                coalesce(sum(r.cached_tokens), 0)
         FROM requests r WHERE r.job_id = ?1 AND r.state = 'succeeded'
         GROUP BY r.model, batch ORDER BY 5 DESC, 1, 6",
    )?;
    let rows = stmt
        .query_map([job.0], |r| {
            Ok(ModelTokens {
                model: r.get(0)?,
                requests: r.get::<_, i64>(1)? as u64,
                prompt: r.get(2)?,
                completion: r.get(3)?,
                total: r.get(4)?,
                batch: r.get(5)?,
                cached: r.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The detail of the job's last event of `kind`, if it has one.
///
/// # Errors
/// Database errors.
pub fn last_event_detail(
    conn: &Connection,
    job: JobId,
    kind: EventKind,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT detail FROM events WHERE job_id = ?1 AND kind = ?2 ORDER BY at DESC, id DESC LIMIT 1",
            params![job.0, kind.as_str()],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// The limits a server at `base_url` last announced to any job of the database that sent to it
/// (with the key of `fingerprint`, when given), and the job's name.
///
/// # Errors
/// Database errors.
pub fn last_limits_at(
    conn: &Connection,
    base_url: &str,
    fingerprint: Option<&str>,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT j.name, e.detail FROM events e JOIN jobs j ON j.id = e.job_id
             WHERE e.kind = 'limits' AND e.detail IS NOT NULL
               AND json_extract(j.config, '$.base_url') = ?1
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM attempts a
                                          WHERE a.job_id = j.id AND a.key_fingerprint = ?2))
             ORDER BY e.at DESC, e.id DESC LIMIT 1",
            params![base_url, fingerprint],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// A job's events between `from` (inclusive) and `to` (exclusive) unix ms, oldest first, at
/// most `limit` of them.
///
/// # Errors
/// Database errors.
pub fn events_between(
    conn: &Connection,
    job: JobId,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT at, kind, detail FROM events WHERE job_id = ?1 AND at >= ?2 AND at < ?3
         ORDER BY at, id LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(params![job.0, from, to, limit as i64], |r| {
            Ok(Event {
                at: r.get(0)?,
                kind: r.get(1)?,
                detail: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// How long the job has been running, in ms, summed over its runs.
///
/// A run starts at a `running` event and ends at the next `completed`, `stopped` or
/// `interrupted` event. A run with no end (a crash, or the run going on now) ends at the last
/// attempt it started. A job without run events (none is recorded before the first run starts)
/// counts from its first attempt to its last.
///
/// # Errors
/// Database errors.
pub fn active_ms(conn: &Connection, job: JobId) -> Result<i64, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT at, kind FROM events WHERE job_id = ?1 AND kind IN (?2, ?3, ?4, ?5) ORDER BY at, id",
    )?;
    let marks = stmt
        .query_map(
            params![
                job.0,
                EventKind::Running,
                EventKind::Completed,
                EventKind::Stopped,
                EventKind::Interrupted
            ],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, EventKind>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let last_answer_between = |from: i64, to: Option<i64>| -> Result<Option<i64>, StoreError> {
        Ok(conn.query_row(
            "SELECT max(finished_at) FROM attempts WHERE job_id = ?1 AND started_at >= ?2
               AND (?3 IS NULL OR started_at < ?3)",
            params![job.0, from, to],
            |r| r.get(0),
        )?)
    };
    if marks.is_empty() {
        return match attempt_span(conn, job)? {
            Some(span) => {
                let end = last_answer_between(span.first, None)?.unwrap_or(span.first);
                Ok((end - span.first).max(0))
            }
            None => Ok(0),
        };
    }
    let mut total = 0;
    let mut open: Option<i64> = None;
    for (index, (at, kind)) in marks.iter().enumerate() {
        if *kind == EventKind::Running {
            if let Some(start) = open {
                // The previous run never ended (a crash): it lasted until its last attempt.
                let end = last_answer_between(start, Some(*at))?.unwrap_or(start);
                total += (end - start).max(0);
            }
            open = Some(*at);
        } else if kind.ends_run()
            && let Some(start) = open.take()
        {
            total += (at - start).max(0);
        }
        if index + 1 == marks.len()
            && let Some(start) = open
        {
            let end = last_answer_between(start, None)?.unwrap_or(start);
            total += (end - start).max(0);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{db, migrate};

    /// A job with two requests and four attempts at known times.
    fn journal() -> (Connection, JobId) {
        let mut conn = Connection::open_in_memory().expect("memory db");
        migrate::migrate(&mut conn).expect("migrate");
        let job = db::upsert_job(&conn, "j", "in.jsonl", "{}", 0)
            .expect("job")
            .id;
        conn.execute_batch(
            "INSERT INTO requests (id, job_id, key, line, method, url, body, body_hash, state, model,
                                   prompt_tokens, completion_tokens, total_tokens)
             VALUES (1, 1, 'a', 1, 'POST', '/v1/chat/completions', '{}', 'h', 'succeeded', 'gpt-4o-mini', 10, 5, 15),
                    (2, 1, 'b', 2, 'POST', '/v1/chat/completions', '{}', 'h', 'failed', NULL, NULL, NULL, NULL);
             INSERT INTO attempts (request_id, job_id, number, started_at, finished_at, latency_ms, outcome,
                                   http_status, error_class, error_code, error_message, x_request_id, key_fingerprint)
             VALUES (1, 1, 1, 1000, 1100, 100, 'answered', 401, 'auth_transient', 'missing_scope', 'Missing scopes: model.request.', 'req_1', 'k1'),
                    (1, 1, 2, 2000, 2050, 50, 'answered', 200, 'succeeded', NULL, NULL, 'req_2', 'k2'),
                    (2, 1, 1, 3000, 3010, 10, 'answered', 400, 'request_failed', NULL, 'bad', 'req_3', 'k1'),
                    (2, 1, 2, 4000, 9000, NULL, 'interrupted', NULL, NULL, NULL, NULL, NULL, NULL);",
        )
        .expect("rows");
        (conn, job)
    }

    fn list(conn: &Connection, job: JobId, filter: &AttemptFilter) -> Vec<String> {
        let mut ids = Vec::new();
        for_each_attempt::<StoreError>(conn, job, filter, |a| {
            ids.push(format!("{}#{}", a.custom_id, a.attempt));
            Ok(())
        })
        .expect("list");
        ids
    }

    #[test]
    fn filters_narrow_the_journal() {
        let (conn, job) = journal();
        let all = AttemptFilter::default();
        assert_eq!(list(&conn, job, &all), ["a#1", "a#2", "b#1", "b#2"]);
        let cases = [
            (
                AttemptFilter {
                    custom_id: Some("b".into()),
                    ..all.clone()
                },
                vec!["b#1", "b#2"],
            ),
            (
                AttemptFilter {
                    status: Some(401),
                    ..all.clone()
                },
                vec!["a#1"],
            ),
            (
                AttemptFilter {
                    class: Some(AttemptClass::Interrupted),
                    ..all.clone()
                },
                vec!["b#2"],
            ),
            (
                AttemptFilter {
                    key: Some("k1".into()),
                    ..all.clone()
                },
                vec!["a#1", "b#1"],
            ),
            (
                AttemptFilter {
                    since: Some(2000),
                    until: Some(3999),
                    ..all.clone()
                },
                vec!["a#2", "b#1"],
            ),
            (
                AttemptFilter {
                    errors_only: true,
                    ..all.clone()
                },
                vec!["a#1", "b#1", "b#2"],
            ),
            (
                AttemptFilter {
                    limit: Some(2),
                    ..all.clone()
                },
                vec!["b#1", "b#2"],
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(list(&conn, job, &filter), expected, "{filter:?}");
        }
    }

    #[test]
    fn summaries_count_statuses_tokens_and_span() {
        let (conn, job) = journal();
        let statuses = attempts_by_status(&conn, job).expect("statuses");
        assert_eq!(statuses.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert!(statuses.contains(&(None, 1)));
        let tokens = tokens_by_model(&conn, job).expect("tokens");
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!((tokens[0].prompt, tokens[0].completion), (10, 5));
        let span = attempt_span(&conn, job).expect("span").expect("attempts");
        assert_eq!((span.first, span.last, span.attempts), (1000, 4000, 4));
    }

    #[test]
    fn active_time_sums_runs_and_ends_an_open_run_at_its_last_attempt() {
        let (conn, job) = journal();
        // No run events: first attempt to last answer.
        assert_eq!(active_ms(&conn, job).expect("active"), 8000);
        for (at, kind) in [
            (500, EventKind::Running),
            (2500, EventKind::Interrupted),
            (2900, EventKind::Running),
        ] {
            db::record_event(&conn, job, kind, None, at).expect("event");
        }
        // 500..2500, then 2900..9000 (the open run ends at its last attempt's answer).
        assert_eq!(active_ms(&conn, job).expect("active"), 2000 + 6100);
    }
}
