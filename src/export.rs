//! `runner export`: a job's results as CSV (through the csv crate) or as the Batch API's output
//! JSONL, in input order, streamed from a read-only connection.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{ExportArgs, ExportFormat};
use crate::response::output_text;
use crate::store::db::{self, RequestRow};
use crate::store::{self, StoreError};

/// The CSV header: a contract (tests pin it); add columns only at the end.
pub const CSV_COLUMNS: [&str; 16] = [
    "custom_id",
    "status",
    "http_status",
    "attempts",
    "output_text",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
    "request_id",
    "error_code",
    "error_message",
    "latency_ms",
    "finished_at",
    "error_class",
    "line",
];

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the job failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing failed (a closed pipe included: the caller ends quietly on that).
    #[error("cannot write the export: {0}")]
    Io(#[from] io::Error),
}

impl From<csv::Error> for ExportError {
    fn from(e: csv::Error) -> Self {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => ExportError::Io(io),
            other => ExportError::Io(io::Error::other(format!("{other:?}"))),
        }
    }
}

/// Runs `runner export`. Returns how many rows were written.
///
/// # Errors
/// Unknown job or database, or a write failure.
pub fn export(args: &ExportArgs) -> anyhow::Result<u64> {
    let conn = store::open_read_only(&args.db.db)?;
    let job = db::resolve_job(&conn, args.job.as_deref())?;
    match &args.output {
        None => {
            let stdout = io::stdout().lock();
            Ok(write_export(
                &conn,
                &job,
                args.format,
                BufWriter::new(stdout),
            )?)
        }
        Some(path) => {
            // Write beside the target and rename: a reader never sees half a file.
            let partial = partial_path(path);
            let file = create_private(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let rows = write_export(&conn, &job, args.format, BufWriter::new(file))
                .with_context(|| format!("cannot write {}", partial.display()))?;
            fs::rename(&partial, path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Ok(rows)
        }
    }
}

/// Writes a job's rows in `format`; returns the row count.
///
/// # Errors
/// Store or write failures.
pub fn write_export(
    conn: &rusqlite::Connection,
    job: &db::Job,
    format: ExportFormat,
    out: impl Write,
) -> Result<u64, ExportError> {
    match format {
        ExportFormat::Csv => write_csv(conn, job, out),
        ExportFormat::Jsonl => write_jsonl(conn, job, out),
    }
}

fn write_csv(
    conn: &rusqlite::Connection,
    job: &db::Job,
    out: impl Write,
) -> Result<u64, ExportError> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(CSV_COLUMNS)?;
    let mut rows = 0u64;
    db::for_each_request(conn, job.id, |row: RequestRow| -> Result<(), ExportError> {
        let text = if row.state == "succeeded" {
            row.response
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
                .and_then(|body| output_text(&body))
        } else {
            None
        };
        writer.write_record([
            row.key.as_str(),
            row.state.as_str(),
            &opt(row.http_status),
            &row.attempts.to_string(),
            text.as_deref().unwrap_or(""),
            &opt(row.prompt_tokens),
            &opt(row.completion_tokens),
            &opt(row.total_tokens),
            row.model.as_deref().unwrap_or(""),
            row.x_request_id.as_deref().unwrap_or(""),
            row.error_code.as_deref().unwrap_or(""),
            row.error_message.as_deref().unwrap_or(""),
            &opt(row.latency_ms),
            &row.finished_at.map(rfc3339).unwrap_or_default(),
            row.error_class.as_deref().unwrap_or(""),
            &row.line.to_string(),
        ])?;
        rows += 1;
        Ok(())
    })?;
    writer.flush()?;
    Ok(rows)
}

/// The Batch API output format: one line per finished request. `response` holds any HTTP answer
/// (errors included); `error` is set only when there was no answer at all.
fn write_jsonl(
    conn: &rusqlite::Connection,
    job: &db::Job,
    mut out: impl Write,
) -> Result<u64, ExportError> {
    let mut rows = 0u64;
    db::for_each_request(conn, job.id, |row: RequestRow| -> Result<(), ExportError> {
        if row.state != "succeeded" && row.state != "failed" {
            return Ok(());
        }
        let id = format!(
            "batch_req_{}",
            &blake3::hash(format!("{}\n{}", job.name, row.key).as_bytes()).to_hex()[..24]
        );
        let line = match row.http_status {
            Some(status) => {
                let body = row
                    .response
                    .as_deref()
                    .map(|r| {
                        serde_json::from_str::<Value>(r)
                            .unwrap_or_else(|_| Value::String(r.to_owned()))
                    })
                    .unwrap_or(Value::Null);
                json!({
                    "id": id,
                    "custom_id": row.key,
                    "response": {"status_code": status, "request_id": row.x_request_id, "body": body},
                    "error": null,
                })
            }
            None => json!({
                "id": id,
                "custom_id": row.key,
                "response": null,
                "error": {"code": row.error_code, "message": row.error_message},
            }),
        };
        serde_json::to_writer(&mut out, &line).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
        rows += 1;
        Ok(())
    })?;
    out.flush()?;
    Ok(rows)
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// Unix ms as RFC 3339 UTC, e.g. `2026-04-14T09:30:12.345Z`.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Creates (or truncates) a file readable by its owner only: results are private data.
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_776_159_012_345), "2026-04-14T09:30:12.345Z");
    }

    #[test]
    fn partial_files_sit_beside_the_target() {
        assert_eq!(
            partial_path(Path::new("/x/out.csv")),
            PathBuf::from("/x/out.csv.partial")
        );
    }
}
