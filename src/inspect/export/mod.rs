//! `runner export`: a job's results as CSV (through the csv crate) or as the Batch API's output
//! JSONL, in input order, streamed from a read-only connection.
//!
//! The CSV has one of two layouts ([`CsvLayout`], `--layout`): the standard one of every job
//! ([`CSV_COLUMNS`]), and, by default for a job submitted from a spreadsheet, the input layout:
//! the spreadsheet's own columns first, then the answer columns (`export/columns.rs`).
//!
//! CSV cells that a spreadsheet would run as a formula are neutralised by default (see
//! [`neutralise`]), whatever the layout; JSONL is data for programs and is never altered.

mod columns;
mod prompt;

pub use columns::{CsvLayout, InputColumns};
pub use prompt::prompt_text;

use std::borrow::Cow;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cli::{ExportArgs, ExportFormat, ExportLayout, UsageError};
use crate::domain::RequestState;
use crate::engine::config::JobSettings;
use crate::input::TableLayout;
use crate::inspect::prices::PriceTable;
use crate::store::db::{self, RequestRow};
use crate::store::{self, StoreError};
use crate::util::fs::{Replacement, is_database_file};

/// The CSV header of the standard layout: a contract (tests pin it); add columns only at the
/// end.
pub const CSV_COLUMNS: [&str; 20] = [
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
    "metadata",
    "prompt",
    "cost_usd",
    "via",
];

/// The first characters that make a spreadsheet evaluate a cell as a formula (OWASP, "CSV
/// Injection"): `=`, `+`, `-`, `@`, tab and carriage return.
pub const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// How CSV cells are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsvCells {
    /// Cells starting with one of [`FORMULA_TRIGGERS`] get a leading `'` (the default).
    Sanitized,
    /// Exactly as stored (`--no-sanitize`).
    Raw,
}

impl CsvCells {
    fn apply(self, cell: &str) -> Cow<'_, str> {
        match self {
            CsvCells::Sanitized => neutralise(cell),
            CsvCells::Raw => Cow::Borrowed(cell),
        }
    }
}

/// OWASP's defence against CSV injection: a cell starting with one of [`FORMULA_TRIGGERS`] gets a
/// leading `'`, so a spreadsheet shows `=HYPERLINK(…)` as text instead of running it. Model
/// output and custom ids are untrusted text: either can start with `=`.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(FORMULA_TRIGGERS) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

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
    let cells = if args.no_sanitize {
        CsvCells::Raw
    } else {
        CsvCells::Sanitized
    };
    let layout = choose_layout(&job, args.format, args.layout)?;
    let prices =
        job_prices(&job).overridden_by(args.prices.prices.as_deref(), &args.prices.price)?;
    match &args.output {
        None => {
            let stdout = io::stdout().lock();
            Ok(write_export_as(
                &conn,
                &job,
                args.format,
                (cells, &layout, &prices),
                BufWriter::new(stdout),
            )?)
        }
        Some(path) => {
            refuse_database(path, &args.db.db)?;
            // Write beside the target, sync, rename, sync the directory: a reader never sees
            // half a file, and a crash leaves the old one or the whole new one.
            let mut replacement = Replacement::create(path)
                .with_context(|| format!("cannot create {}.partial", path.display()))?;
            let rows = write_export_as(
                &conn,
                &job,
                args.format,
                (cells, &layout, &prices),
                BufWriter::new(replacement.file()),
            )
            .with_context(|| format!("cannot write {}.partial", path.display()))?;
            replacement
                .commit()
                .with_context(|| format!("cannot create {}", path.display()))?;
            Ok(rows)
        }
    }
}

/// The CSV layout of `job`: `--layout` if given, else the input layout for a job read from a
/// spreadsheet and the standard one for any other.
///
/// # Errors
/// [`UsageError`] for `--layout` with `--format jsonl`, and for `--layout input` of a job that
/// has no input columns.
pub fn choose_layout(
    job: &db::Job,
    format: ExportFormat,
    asked: Option<ExportLayout>,
) -> Result<CsvLayout, UsageError> {
    if let (ExportFormat::Jsonl, Some(_)) = (format, asked) {
        return Err(UsageError(
            "--layout is for --format csv: the JSONL export has one layout, the Batch API's"
                .to_owned(),
        ));
    }
    let stored = job
        .input_layout
        .as_deref()
        .and_then(|json| match TableLayout::from_json(json) {
            Ok(layout) => Some(layout),
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "unreadable input layout: exporting the standard columns");
                None
            }
        });
    match (asked, stored) {
        (Some(ExportLayout::Standard), _) | (None, None) => Ok(CsvLayout::Standard),
        (Some(ExportLayout::Input) | None, Some(layout)) => {
            Ok(CsvLayout::Input(InputColumns::new(layout)))
        }
        (Some(ExportLayout::Input), None) => Err(UsageError(format!(
            "job '{}' was not submitted from a spreadsheet (.csv, .tsv), so it has no input \
             columns: --layout input is for such jobs; leave it out for the standard columns",
            job.name
        ))),
    }
}

/// Refuses an `--output` that is the database itself (or its -wal/-shm): the rename would
/// replace the live journal with the export.
///
/// # Errors
/// When `output` is one of the database's files.
pub fn refuse_database(output: &Path, db: &Path) -> anyhow::Result<()> {
    if is_database_file(output, db) {
        anyhow::bail!(
            "--output {} is the database {} (or one of its files): writing there would destroy the journal; choose another path",
            output.display(),
            db.display()
        );
    }
    Ok(())
}

/// Writes a job's rows in `format` (CSV cells sanitised, in the job's default layout); returns
/// the row count.
///
/// # Errors
/// Store or write failures.
pub fn write_export(
    conn: &rusqlite::Connection,
    job: &db::Job,
    format: ExportFormat,
    out: impl Write,
) -> Result<u64, ExportError> {
    write_export_with(conn, job, format, CsvCells::Sanitized, out)
}

/// [`write_export`] with the choice of CSV cells, in the job's default layout; JSONL ignores
/// it.
///
/// # Errors
/// Store or write failures.
pub fn write_export_with(
    conn: &rusqlite::Connection,
    job: &db::Job,
    format: ExportFormat,
    cells: CsvCells,
    out: impl Write,
) -> Result<u64, ExportError> {
    let layout = choose_layout(job, ExportFormat::Csv, None).unwrap_or(CsvLayout::Standard);
    let prices = job_prices(job);
    write_export_as(conn, job, format, (cells, &layout, &prices), out)
}

/// The built-in prices with the ones the job was given (`--price`, stored with it) over them.
pub fn job_prices(job: &db::Job) -> PriceTable {
    JobSettings::from_json(&job.config)
        .map(|settings| settings.price_table())
        .unwrap_or_default()
}

/// [`write_export`] with the choice of CSV cells and layout; JSONL ignores both.
///
/// # Errors
/// Store or write failures.
pub fn write_export_as(
    conn: &rusqlite::Connection,
    job: &db::Job,
    format: ExportFormat,
    (cells, layout, prices): (CsvCells, &CsvLayout, &PriceTable),
    out: impl Write,
) -> Result<u64, ExportError> {
    match format {
        ExportFormat::Csv => write_csv(conn, job, (cells, layout, prices), out),
        ExportFormat::Jsonl => write_jsonl(conn, job, prices, out),
    }
}

fn write_csv(
    conn: &rusqlite::Connection,
    job: &db::Job,
    (cells, layout, prices): (CsvCells, &CsvLayout, &PriceTable),
    out: impl Write,
) -> Result<u64, ExportError> {
    let mut writer = csv::Writer::from_writer(out);
    let header: Vec<Cow<'_, str>> = layout
        .header()
        .into_iter()
        .map(|h| cells.apply(h))
        .collect();
    writer.write_record(header.iter().map(|cell| cell.as_bytes()))?;
    let mut rows = 0u64;
    db::for_each_request(conn, job.id, |row: RequestRow| -> Result<(), ExportError> {
        let record = layout.cells(&row, prices);
        let record: Vec<Cow<'_, str>> = record.iter().map(|cell| cells.apply(cell)).collect();
        writer.write_record(record.iter().map(|cell| cell.as_bytes()))?;
        rows += 1;
        Ok(())
    })?;
    writer.flush()?;
    Ok(rows)
}

/// The Batch API output format: one line per finished request. `response` holds any HTTP answer
/// (errors included); `error` is set when there was no answer at all, and when a request failed
/// on a 2xx answer (a body that is not JSON, a cut stream, one over `--max-response-bytes`):
/// its status alone would read as a success.
/// The Batch API's output lines, with `cost_usd` (what the answer cost by its usage, `null`
/// when unknown) and `via` (`batch` or `direct`) appended.
fn write_jsonl(
    conn: &rusqlite::Connection,
    job: &db::Job,
    prices: &PriceTable,
    mut out: impl Write,
) -> Result<u64, ExportError> {
    let mut rows = 0u64;
    db::for_each_request(conn, job.id, |row: RequestRow| -> Result<(), ExportError> {
        match row.state {
            RequestState::Succeeded | RequestState::Failed => {}
            // Not finished: the Batch output lists finished requests only.
            RequestState::Pending | RequestState::InFlight | RequestState::Batched => return Ok(()),
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
                let failed_on_success =
                    row.state == RequestState::Failed && (200..300).contains(&status);
                let error = match failed_on_success {
                    true => json!({"code": row.error_code, "message": row.error_message}),
                    false => Value::Null,
                };
                json!({
                    "id": id,
                    "custom_id": row.key,
                    "response": {"status_code": status, "request_id": row.x_request_id, "body": body},
                    "error": error,
                })
            }
            None => json!({
                "id": id,
                "custom_id": row.key,
                "response": null,
                "error": {"code": row.error_code, "message": row.error_message},
            }),
        };
        let line = match line {
            Value::Object(mut object) => {
                if let Some(metadata) = row.metadata.as_deref() {
                    let metadata = serde_json::from_str::<Value>(metadata)
                        .unwrap_or_else(|_| Value::String(metadata.to_owned()));
                    object.insert("metadata".to_owned(), metadata);
                }
                object.insert(
                    "cost_usd".to_owned(),
                    json!(columns::request_cost(&row, prices)),
                );
                object.insert("via".to_owned(), json!(columns::via(&row)));
                Value::Object(object)
            }
            line => line,
        };
        serde_json::to_writer(&mut out, &line).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
        rows += 1;
        Ok(())
    })?;
    out.flush()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case::equals("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")")]
    #[case::plus("+1+1", "'+1+1")]
    #[case::minus("-2+3", "'-2+3")]
    #[case::at("@SUM(A1)", "'@SUM(A1)")]
    #[case::tab("\t=1", "'\t=1")]
    #[case::carriage_return("\r=1", "'\r=1")]
    #[case::plain("echo: hi", "echo: hi")]
    #[case::inner("a=b", "a=b")]
    #[case::empty("", "")]
    #[case::quote("'=1", "'=1")]
    fn neutralises_cells_a_spreadsheet_would_run(#[case] cell: &str, #[case] expected: &str) {
        assert_eq!(neutralise(cell), expected);
        assert_eq!(CsvCells::Raw.apply(cell), cell);
    }

    #[test]
    fn an_old_partial_file_does_not_keep_its_mode_or_content() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("out.csv");
        let partial = dir.path().join("out.csv.partial");
        fs::write(&partial, "old").expect("write");
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o644)).expect("chmod");
        let replacement = Replacement::create(&target).expect("create");
        let mode = fs::metadata(&partial).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(fs::read(&partial).expect("read"), b"", "a new file");
        replacement.commit().expect("commit");
        assert!(target.exists() && !partial.exists());
    }
}
