//! `runner attempts`: the raw journal, filtered, as a table, JSONL or CSV on stdout.
//!
//! One row per attempt, oldest first. Filters: request, HTTP status, class, key, a time window
//! (`--since`/`--until` as RFC 3339 or a duration ago: `10m` is "ten minutes before now"), errors
//! only, the most recent N. CSV goes through the csv crate; a closed pipe ends quietly.

use std::io::{self, Write};

use crate::cli::{AttemptsArgs, AttemptsFormat};
use crate::inspect::export::neutralise;
use crate::store::journal::{self, AttemptFilter, AttemptRecord};
use crate::store::{self, StoreError, db};
use crate::util::clock::now_ms;
use crate::util::clock::rfc3339;
use crate::util::clock::utc;
use crate::util::text::printable;

/// The CSV header and the JSONL keys, in order: a contract; add columns only at the end.
pub const ATTEMPT_COLUMNS: [&str; 13] = [
    "job",
    "custom_id",
    "attempt",
    "started_at",
    "finished_at",
    "latency_ms",
    "outcome",
    "http_status",
    "class",
    "error_code",
    "error_message",
    "x_request_id",
    "key",
];

/// Longest error message shown in the table (CSV and JSONL carry it whole).
const TABLE_MESSAGE: usize = 60;

/// Errors of `runner attempts`.
#[derive(Debug, thiserror::Error)]
pub enum AttemptsError {
    /// Reading the journal failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing failed (a closed pipe included: the caller ends quietly on that).
    #[error("cannot write the attempts: {0}")]
    Io(#[from] io::Error),
}

impl From<csv::Error> for AttemptsError {
    fn from(e: csv::Error) -> Self {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => AttemptsError::Io(io),
            other => AttemptsError::Io(io::Error::other(format!("{other:?}"))),
        }
    }
}

/// Runs `runner attempts`, writing to `out`. Returns how many attempts were written; says on
/// stderr when none matched.
///
/// # Errors
/// Unknown job or database, or a write failure.
pub fn attempts(args: &AttemptsArgs, out: impl Write) -> anyhow::Result<u64> {
    let conn = store::open_read_only(&args.db.db)?;
    let job = db::resolve_job(&conn, args.job.as_deref())?;
    let now = now_ms();
    let filter = AttemptFilter {
        custom_id: args.custom_id.clone(),
        status: args.status,
        class: args.class,
        key: args.key.clone(),
        since: args.since.map(|t| t.resolve(now)),
        until: args.until.map(|t| t.resolve(now)),
        errors_only: args.errors,
        limit: args.limit,
    };
    let rows = write_attempts(&conn, &job, &filter, args.format, io::BufWriter::new(out))?;
    if rows == 0 {
        crate::say!("{}: no attempts match", job.name);
    }
    Ok(rows)
}

/// Writes the attempts of `job` passing `filter` in `format`; returns how many.
///
/// # Errors
/// Store or write failures.
pub fn write_attempts(
    conn: &rusqlite::Connection,
    job: &db::Job,
    filter: &AttemptFilter,
    format: AttemptsFormat,
    mut out: impl Write,
) -> Result<u64, AttemptsError> {
    let mut rows = 0u64;
    match format {
        AttemptsFormat::Csv => {
            let mut writer = csv::Writer::from_writer(&mut out);
            writer.write_record(ATTEMPT_COLUMNS)?;
            journal::for_each_attempt::<AttemptsError>(conn, job.id, filter, |a| {
                // Error messages and request ids are server-controlled text: neutralised as in
                // `runner export` (JSONL carries them exactly).
                writer.write_record(
                    fields(&job.name, &a)
                        .iter()
                        .map(|cell| neutralise(cell).into_owned()),
                )?;
                rows += 1;
                Ok(())
            })?;
            writer.flush()?;
        }
        AttemptsFormat::Jsonl => {
            journal::for_each_attempt::<AttemptsError>(conn, job.id, filter, |a| {
                let object: serde_json::Map<String, serde_json::Value> = ATTEMPT_COLUMNS
                    .iter()
                    .zip(json_fields(&job.name, &a))
                    .map(|(k, v)| ((*k).to_owned(), v))
                    .collect();
                serde_json::to_writer(&mut out, &object).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
                rows += 1;
                Ok(())
            })?;
        }
        AttemptsFormat::Table => {
            writeln!(
                out,
                "{:<18} {:<14} {:>3} {:<12} {:>6} {:<14} {:>7}  {:<36}  error",
                "sent (UTC)", "custom_id", "#", "key", "status", "class", "latency", "request id"
            )?;
            journal::for_each_attempt::<AttemptsError>(conn, job.id, filter, |a| {
                writeln!(out, "{}", table_row(&a))?;
                rows += 1;
                Ok(())
            })?;
        }
    }
    out.flush()?;
    Ok(rows)
}

/// The CSV fields, in [`ATTEMPT_COLUMNS`] order.
fn fields(job: &str, a: &AttemptRecord) -> [String; 13] {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        job.to_owned(),
        a.custom_id.clone(),
        a.attempt.to_string(),
        rfc3339(a.started_at),
        rfc3339(a.finished_at),
        opt(a.latency_ms.map(|v| v.to_string())),
        a.outcome.as_str().to_owned(),
        opt(a.http_status.map(|v| v.to_string())),
        a.class.as_str().to_owned(),
        opt(a.error_code.clone()),
        opt(a.error_message.clone()),
        opt(a.x_request_id.clone()),
        opt(a.key.clone()),
    ]
}

/// The JSONL values, in [`ATTEMPT_COLUMNS`] order (absent values are `null`).
fn json_fields(job: &str, a: &AttemptRecord) -> [serde_json::Value; 13] {
    use serde_json::json;
    [
        json!(job),
        json!(a.custom_id),
        json!(a.attempt),
        json!(rfc3339(a.started_at)),
        json!(rfc3339(a.finished_at)),
        json!(a.latency_ms),
        json!(a.outcome),
        json!(a.http_status),
        json!(a.class),
        json!(a.error_code),
        json!(a.error_message),
        json!(a.x_request_id),
        json!(a.key),
    ]
}

fn table_row(a: &AttemptRecord) -> String {
    let error = match (&a.error_code, &a.error_message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(text), None) | (None, Some(text)) => text.clone(),
        (None, None) => String::new(),
    };
    format!(
        "{:<18} {:<14} {:>3} {:<12} {:>6} {:<14} {:>7}  {:<36}  {}",
        utc(
            a.started_at,
            "[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
        ),
        shorten(&printable(&a.custom_id), 14),
        a.attempt,
        shorten(&printable(a.key.as_deref().unwrap_or("-")), 12),
        a.http_status
            .map_or_else(|| "-".to_owned(), |s| s.to_string()),
        a.class,
        a.latency_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms")),
        printable(a.x_request_id.as_deref().unwrap_or("-")),
        shorten(&printable(&error.replace('\n', " ")), TABLE_MESSAGE),
    )
}

/// `text` cut to `max` characters with a trailing `…`.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text.chars().count() > max => format!("{}…", &text[..cut]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortening_keeps_short_text() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdefgh", 5), "abcd…");
        assert_eq!(shorten("abcde", 5), "abcde");
    }

    fn hostile_record() -> AttemptRecord {
        AttemptRecord {
            custom_id: "=cmd|' /C calc'!A0".into(),
            attempt: 1,
            started_at: 0,
            finished_at: 1,
            latency_ms: Some(1),
            outcome: crate::domain::AttemptOutcome::Answered,
            http_status: Some(400),
            class: crate::domain::AttemptClass::RequestFailed,
            error_code: Some("@SUM(A1)".into()),
            error_message: Some("\u{1b}]0;pwned\u{7}\u{1b}[2J-2+3 \u{202e}txt.exe".into()),
            x_request_id: Some("+HYPERLINK(\"http://x\")".into()),
            key: Some("k".into()),
        }
    }

    #[test]
    fn table_rows_never_carry_control_characters_to_the_terminal() {
        let row = table_row(&hostile_record());
        assert!(!row.chars().any(|c| c.is_control()), "{row:?}");
        assert!(!row.contains('\u{202e}'), "{row:?}");
        assert!(row.contains("\\u{1b}"), "{row:?}");
    }

    #[test]
    fn csv_cells_from_servers_are_neutralised_like_the_export() {
        let cells: Vec<String> = fields("job", &hostile_record())
            .iter()
            .map(|cell| neutralise(cell).into_owned())
            .collect();
        for cell in &cells {
            assert!(
                !cell.starts_with(crate::inspect::export::FORMULA_TRIGGERS),
                "{cell:?}"
            );
        }
    }
}
