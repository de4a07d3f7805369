//! Input files, streamed into [`Prompt`]s: JSONL, spreadsheets (CSV, TSV) and plain text.
//!
//! One [`InputReader`] reads every format ([`InputFormat`]) and yields the same items, so the
//! check, the staged ingest and the feed treat them all alike:
//!
//! - JSONL (`input/jsonl.rs`): a Batch API line `{"custom_id", "method", "url", "body"}`, or a
//!   plain request body (`{"model": …, "messages": […]}`) sent to the job's endpoint.
//! - CSV and TSV (`input/table.rs`): a header row, then one chat request per row; the prompt from
//!   a column or a [`Template`] over the columns, the id from an `id` or `custom_id` column,
//!   every other column kept as the request's metadata.
//! - Plain text: one chat request per non-blank line.
//!
//! The reader never holds more than one line (or row); every error names the file and the line
//! (for a row, the line where it starts).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

mod check;
mod columns;
mod format;
mod jsonl;
mod table;
pub mod tally;
mod template;

pub use check::{Checked, check};
pub use format::{InputFormat, PromptFrom};
pub use table::TableLayout;
pub use template::{Template, TemplateError};

/// Default for [`InputOptions::max_line_bytes`]: well above any sane request body.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// The chat endpoint, where `{"prompt": "text"}` becomes one user message.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// How the file is read and how its lines (or rows) become requests.
#[derive(Clone, Debug)]
pub struct InputOptions {
    /// Endpoint path for plain JSONL lines, e.g. `/v1/chat/completions`. Rows and text lines
    /// always go to [`CHAT_ENDPOINT`].
    pub endpoint: String,
    /// Fills a missing `model` in every body.
    pub model: Option<String>,
    /// A longer line (or row) is an error rather than an allocation of any size.
    pub max_line_bytes: usize,
    /// JSONL, CSV, TSV or plain text.
    pub format: InputFormat,
    /// Where a row's prompt comes from (CSV and TSV).
    pub prompt: PromptFrom,
    /// A system message put before each row's or text line's prompt.
    pub system: Option<String>,
    /// `max_tokens` set in every body that has no output limit of its own
    /// (`max_output_tokens` for the Responses API).
    pub max_tokens: Option<u32>,
    /// Whether the key (the body's hash) leaves out a `model` filled in from [`Self::model`], so
    /// that the same line under another `--model` is the same request.
    pub own_content_keys: bool,
    /// Whether a request that names no model (and gets none from [`Self::model`]) is refused:
    /// the destination needs one. Elsewhere it is sent as it is, with a warning.
    pub model_required: bool,
}

impl Default for InputOptions {
    /// JSONL to the chat endpoint, no model, the default line limit.
    fn default() -> Self {
        InputOptions {
            endpoint: CHAT_ENDPOINT.to_owned(),
            model: None,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            format: InputFormat::Jsonl,
            prompt: PromptFrom::Auto,
            system: None,
            max_tokens: None,
            own_content_keys: true,
            model_required: false,
        }
    }
}

/// One request read from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// 1-based line number in the input file.
    pub line: u64,
    /// `custom_id` as given, if any.
    pub custom_id: Option<String>,
    /// HTTP method: `POST`, or `GET` / `DELETE` (Batch lines only; no body is sent).
    pub method: String,
    /// Path such as `/v1/chat/completions`, joined to the base URL at send time.
    pub url: String,
    /// The JSON body exactly as it will be sent.
    pub body: String,
    /// blake3 of method, url and body: the request's content identity.
    pub body_hash: String,
    /// The line's `metadata` as JSON text: kept in the journal and exported, never sent.
    pub metadata: Option<String>,
    /// A Batch line's `headers`, checked, as a JSON object text with lower-case names.
    pub headers: Option<String>,
}

impl Prompt {
    /// The key derived from content, for lines without `custom_id`.
    ///
    /// Identical lines are interchangeable, so the n-th copy of a body gets the suffix `#n`:
    /// the key stays stable when lines are reordered or appended.
    pub fn derived_key(&self, occurrence: u32) -> String {
        let short = &self.body_hash[..24];
        if occurrence <= 1 {
            format!("auto-{short}")
        } else {
            format!("auto-{short}#{occurrence}")
        }
    }
}

/// A problem with the input file. Every variant names the file; line-level ones name the line.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The input file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The bytes of a line are not UTF-8.
    #[error("{}:{line}: line is not valid UTF-8: save the file as UTF-8", path.display())]
    Utf8 {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
    },
    /// A line is longer than the limit.
    #[error("{}:{line}: line is longer than {limit} bytes: raise --max-line-bytes or shorten it", path.display())]
    TooLong {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// A line is not valid JSON.
    #[error("{}:{line}: invalid JSON at column {}: {}", path.display(), parser.column(), json_reason(parser))]
    Json {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The parser's message, with its column. Not a `source`: the message already says
        /// it, and a chain printed with `{:#}` said it twice.
        parser: serde_json::Error,
    },
    /// A line is JSON but not a request.
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong, in words.
        reason: String,
    },
    /// A spreadsheet's header row cannot be read, or does not fit the options (a column the
    /// template or `--prompt-column` names is missing, no column holds the prompt). Reading
    /// stops there: no row can be understood without it.
    #[error("{}:{line}: {reason}", path.display())]
    Columns {
        /// The input file.
        path: PathBuf,
        /// 1-based line number of the header row.
        line: u64,
        /// What is wrong and what to do, in words.
        reason: String,
    },
    /// The same custom_id appears twice.
    #[error("{}:{line}: custom_id '{custom_id}' is already used on line {first_line}: custom_id must be unique within a job", path.display())]
    DuplicateCustomId {
        /// The input file.
        path: PathBuf,
        /// The repeated id.
        custom_id: String,
        /// Where it was first seen.
        first_line: u64,
        /// Where it is repeated.
        line: u64,
    },
    /// A custom_id already in the job now has a different body.
    #[error("{}:{line}: custom_id '{custom_id}' was submitted before with a different body: give the changed request a new custom_id, or use a new --job", path.display())]
    ChangedBody {
        /// The input file.
        path: PathBuf,
        /// The id whose body changed.
        custom_id: String,
        /// 1-based line number.
        line: u64,
    },
    /// No request in the whole file.
    #[error("{}: no requests in file (it is empty or only blank lines)", path.display())]
    Empty {
        /// The input file.
        path: PathBuf,
    },
    /// The file read into a new job differs from the file its check read a moment before.
    #[error("{}: the file changed while it was being read into the job (it is not what its check read): leave it as it is until the job has it all", path.display())]
    Changed {
        /// The input file.
        path: PathBuf,
    },
}

impl InputError {
    /// The 1-based line a line-level error is about.
    pub fn line(&self) -> Option<u64> {
        match self {
            InputError::Utf8 { line, .. }
            | InputError::TooLong { line, .. }
            | InputError::Json { line, .. }
            | InputError::Invalid { line, .. }
            | InputError::Columns { line, .. }
            | InputError::DuplicateCustomId { line, .. }
            | InputError::ChangedBody { line, .. } => Some(*line),
            InputError::Io { .. } | InputError::Empty { .. } | InputError::Changed { .. } => None,
        }
    }

    /// Whether the error is about one line that cannot become a request, so that reading can go
    /// on after it (`--skip-invalid`). A duplicate custom_id or a changed body is not: which of
    /// the two lines is the right one is for a person to decide.
    pub fn is_invalid_line(&self) -> bool {
        match self {
            InputError::Utf8 { .. }
            | InputError::TooLong { .. }
            | InputError::Json { .. }
            | InputError::Invalid { .. } => true,
            InputError::Io { .. }
            | InputError::Columns { .. }
            | InputError::DuplicateCustomId { .. }
            | InputError::ChangedBody { .. }
            | InputError::Empty { .. }
            | InputError::Changed { .. } => false,
        }
    }

    /// A stable short name, stored as the `error_code` of a line recorded by `--skip-invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Io { .. } => "unreadable_input",
            InputError::Utf8 { .. } => "invalid_utf8",
            InputError::TooLong { .. } => "line_too_long",
            InputError::Json { .. } => "malformed_json",
            InputError::Invalid { .. } => "invalid_request",
            InputError::Columns { .. } => "bad_columns",
            InputError::DuplicateCustomId { .. } => "duplicate_custom_id",
            InputError::ChangedBody { .. } => "changed_body",
            InputError::Empty { .. } => "empty_input",
            InputError::Changed { .. } => "changed_input",
        }
    }
}

/// Streams [`Prompt`]s out of an input file in any [`InputFormat`]. Also fingerprints the raw
/// bytes it reads.
pub struct InputReader {
    path: PathBuf,
    source: Box<dyn BufRead + Send>,
    options: InputOptions,
    line: u64,
    buf: Vec<u8>,
    hasher: blake3::Hasher,
    done: bool,
    skip_invalid: bool,
    /// Lines are checked, not kept ([`check`]): a prompt's body is left unwritten and unhashed.
    checking: bool,
    /// Whether a line without a model was said (see `warn_no_model`).
    warned_no_model: std::cell::Cell<bool>,
    /// The CSV or TSV parser and what the header row said; `None` for line formats.
    table: Option<Box<table::Table>>,
}

impl InputReader {
    /// Opens a file for reading.
    ///
    /// # Errors
    /// [`InputError::Io`] when the file cannot be opened.
    pub fn open(path: &Path, options: InputOptions) -> Result<InputReader, InputError> {
        let file = File::open(path).map_err(|source| InputError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(
            path.to_owned(),
            Box::new(BufReader::with_capacity(64 * 1024, file)),
            options,
        ))
    }

    /// Reads from any buffered source; `path` is only used in messages.
    pub fn new(path: PathBuf, source: Box<dyn BufRead + Send>, options: InputOptions) -> Self {
        let table = options
            .format
            .delimiter()
            .map(|delimiter| Box::new(table::Table::new(delimiter)));
        InputReader {
            table,
            path,
            source,
            options,
            line: 0,
            buf: Vec::new(),
            hasher: blake3::Hasher::new(),
            done: false,
            skip_invalid: false,
            checking: false,
            warned_no_model: std::cell::Cell::new(false),
        }
    }

    /// Keeps reading after an invalid line (`--skip-invalid`): the error is still returned for
    /// that line, and a line over the length limit is read past without being kept in memory.
    /// Without it, reading ends at an over-long line.
    #[must_use]
    pub fn skip_invalid(mut self, skip: bool) -> Self {
        self.skip_invalid = skip;
        self
    }

    /// Whether [`InputReader::skip_invalid`] is on.
    pub fn skips_invalid(&self) -> bool {
        self.skip_invalid
    }

    /// The custom_id of the line last read, if one can be read from it although the line is not
    /// a valid request: a top-level string `custom_id` when the line is a JSON object, else the
    /// first `"custom_id": "…"` in its text (a truncated or malformed line usually starts with
    /// it). Of an over-long line only the first `--max-line-bytes` bytes are searched.
    ///
    /// For a spreadsheet row, the trimmed cell of its id column, when the row could be split
    /// into cells; for a plain text line, `None`.
    pub fn salvaged_custom_id(&self) -> Option<String> {
        match (self.options.format, &self.table) {
            (_, Some(table)) => table.salvaged_id(),
            (InputFormat::Txt, None) => None,
            (InputFormat::Jsonl | InputFormat::Csv | InputFormat::Tsv, None) => {
                jsonl::salvage_custom_id(&self.buf)
            }
        }
    }

    /// The cells of the spreadsheet row last read, as a metadata object (JSON text), when it is
    /// not a valid request but could be split into cells: kept with the row's failed request
    /// (`--skip-invalid`) so that the export shows the row as it was. `None` for other formats.
    pub fn salvaged_metadata(&self) -> Option<String> {
        self.table
            .as_ref()
            .and_then(|table| table.salvaged_metadata())
    }

    /// The spreadsheet's layout (its columns, and which hold the id and the prompt), once its
    /// header row is read; `None` for other formats.
    pub fn layout(&self) -> Option<&TableLayout> {
        self.table.as_ref().and_then(|table| table.layout())
    }

    /// The file named in messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// blake3 of every byte read so far (the whole file once the reader is exhausted).
    pub fn fingerprint(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }

    /// Reads the next raw line into `self.buf`; `Ok(false)` at end of input.
    fn read_line(&mut self) -> Result<bool, InputError> {
        self.buf.clear();
        // Room for "\r\n", and on the first line for a byte order mark (see `content_len`).
        let bom = if self.line == 0 { BOM.len() as u64 } else { 0 };
        let limit = self.options.max_line_bytes as u64 + 2 + bom;
        let read = (&mut self.source)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| self.io_error(source))?;
        if read == 0 {
            return Ok(false);
        }
        self.line += 1;
        self.hasher.update(&self.buf);
        let unfinished = read as u64 == limit && self.buf.last() != Some(&b'\n');
        if unfinished || content_len(&self.buf, self.line == 1) > self.options.max_line_bytes {
            if unfinished && self.skip_invalid {
                self.skip_rest_of_line()?;
            }
            return Err(InputError::TooLong {
                path: self.path.clone(),
                line: self.line,
                limit: self.options.max_line_bytes,
            });
        }
        Ok(true)
    }

    /// Reads up to the end of the current line in buffer-sized chunks, keeping none of it (but
    /// hashing it: the fingerprint covers the whole file).
    fn skip_rest_of_line(&mut self) -> Result<(), InputError> {
        loop {
            let (used, at_end) = {
                let chunk = match self.source.fill_buf() {
                    Ok(chunk) => chunk,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(InputError::Io {
                            path: self.path.clone(),
                            source,
                        });
                    }
                };
                if chunk.is_empty() {
                    return Ok(());
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.hasher.update(&chunk[..=end]);
                        (end + 1, true)
                    }
                    None => {
                        self.hasher.update(chunk);
                        (chunk.len(), false)
                    }
                }
            };
            self.source.consume(used);
            if at_end {
                return Ok(());
            }
        }
    }

    fn io_error(&self, source: io::Error) -> InputError {
        InputError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> InputError {
        InputError::Invalid {
            path: self.path.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }
}

impl InputReader {
    /// The next request of a line format (JSONL, plain text).
    fn next_line(&mut self) -> Option<Result<Prompt, InputError>> {
        while !self.done {
            match self.read_line() {
                Ok(false) => self.done = true,
                Ok(true) => {
                    let mut raw = self.buf.as_slice();
                    if self.line == 1 {
                        raw = raw.strip_prefix(BOM).unwrap_or(raw);
                    }
                    let raw = raw.trim_ascii();
                    if raw.is_empty() {
                        continue;
                    }
                    return Some(match self.options.format {
                        InputFormat::Txt => self.text_line(raw),
                        InputFormat::Jsonl | InputFormat::Csv | InputFormat::Tsv => {
                            self.parse_line(raw)
                        }
                    });
                }
                Err(e) => {
                    // Reading past a broken line would misnumber every later line, unless the
                    // rest of it was skipped (`skip_invalid`).
                    self.done = !(self.skip_invalid && e.is_invalid_line());
                    return Some(Err(e));
                }
            }
        }
        None
    }

    /// A plain text line: the whole (trimmed) line is the prompt.
    fn text_line(&self, raw: &[u8]) -> Result<Prompt, InputError> {
        let text = std::str::from_utf8(raw).map_err(|_| InputError::Utf8 {
            path: self.path.clone(),
            line: self.line,
        })?;
        Ok(self.chat_prompt(None, text, None))
    }

    /// The chat request of a spreadsheet row or a text line: `messages` of the system message
    /// (if any) and `text` as the user's, the model and `max_tokens` of the options.
    fn chat_prompt(
        &self,
        custom_id: Option<String>,
        text: &str,
        metadata: Option<String>,
    ) -> Prompt {
        let (method, url) = ("POST".to_owned(), CHAT_ENDPOINT.to_owned());
        // As for a JSONL line: a check has nothing to learn from writing the body out.
        let (body, body_hash) = if self.checking {
            (String::new(), String::new())
        } else {
            let mut messages = Vec::with_capacity(2);
            if let Some(system) = &self.options.system {
                messages.push(serde_json::json!({"role": "system", "content": system}));
            }
            messages.push(serde_json::json!({"role": "user", "content": text}));
            let mut body = serde_json::Map::new();
            body.insert("messages".into(), messages.into());
            if let Some(n) = self.options.max_tokens {
                body.insert("max_tokens".into(), n.into());
            }
            self.finish_body(&method, &url, body)
        };
        Prompt {
            line: self.line,
            custom_id,
            method,
            url,
            body,
            body_hash,
            metadata,
            headers: None,
        }
    }
}

impl Iterator for InputReader {
    type Item = Result<Prompt, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.table {
            Some(_) => self.next_row(),
            None => self.next_line(),
        }
    }
}

impl InputReader {
    /// A POST body written out with its hash: the model of the options filled in when it names
    /// none, and left out of the hash when the job keys requests by their own content.
    fn finish_body(
        &self,
        method: &str,
        url: &str,
        mut body: serde_json::Map<String, serde_json::Value>,
    ) -> (String, String) {
        let fill = match &self.options.model {
            Some(model) if !body.contains_key("model") => Some(model),
            Some(_) | None => None,
        };
        match (fill, self.options.own_content_keys) {
            (Some(model), true) => {
                let (own, sent) = with_and_without_model(&body, model);
                (sent, content_hash(method, url, &own))
            }
            (Some(model), false) => {
                body.insert("model".into(), model.clone().into());
                let body = serde_json::Value::Object(body).to_string();
                let hash = content_hash(method, url, &body);
                (body, hash)
            }
            (None, _) => {
                let body = serde_json::Value::Object(body).to_string();
                let hash = content_hash(method, url, &body);
                (body, hash)
            }
        }
    }
}

/// A body written out twice in one pass: as its line wrote it, and with `"model": model` put
/// in, each exactly as `serde_json` writes the object (keys in order, compact), so that the
/// first hashes as the line's own content and the second is what is sent. Every value is
/// written once.
fn with_and_without_model(
    body: &serde_json::Map<String, serde_json::Value>,
    model: &str,
) -> (String, String) {
    let model_entry = format!("{}:{}", compact("model"), compact(model));
    let mut own = String::with_capacity(256);
    let mut sent = String::with_capacity(256 + model_entry.len());
    own.push('{');
    sent.push('{');
    let mut model_written = false;
    for (key, value) in body {
        if !model_written && key.as_str() > "model" {
            push_entry(&mut sent, &model_entry);
            model_written = true;
        }
        let entry = format!("{}:{}", compact(key), compact(value));
        push_entry(&mut own, &entry);
        push_entry(&mut sent, &entry);
    }
    if !model_written {
        push_entry(&mut sent, &model_entry);
    }
    own.push('}');
    sent.push('}');
    (own, sent)
}

/// Appends one `"key":value` to an object being written, after a comma when it is not the first.
fn push_entry(object: &mut String, entry: &str) {
    if !object.ends_with('{') {
        object.push(',');
    }
    object.push_str(entry);
}

/// Compact JSON of a key, a model name or a value, as `serde_json` writes it (writing a string
/// or a `Value` cannot fail).
fn compact<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Whether a journaled body's `model` was filled in by `--model` rather than written in its
/// line: the body without its model hashes to the request's `body_hash` (for a job keyed by
/// its lines' own content; see [`InputOptions::own_content_keys`]).
pub fn model_was_filled(method: &str, url: &str, body: &str, body_hash: &str) -> bool {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(body) else {
        return false;
    };
    if object.remove("model").is_none() {
        return false;
    }
    content_hash(method, url, &serde_json::Value::Object(object).to_string()) == body_hash
}

/// What the JSON parser says is wrong, without its "at line 1 column N": a line of the file is
/// one line of JSON, and its column is said beside the file's own line number.
fn json_reason(parser: &serde_json::Error) -> String {
    let text = parser.to_string();
    let suffix = format!(" at line {} column {}", parser.line(), parser.column());
    match text.strip_suffix(&suffix) {
        Some(reason) => reason.to_owned(),
        None => text,
    }
}

/// blake3 of a request's method, url and body, hex.
pub fn content_hash(method: &str, url: &str, body: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(url.as_bytes());
    hasher.update(b"\n");
    hasher.update(body.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// A UTF-8 byte order mark, accepted at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The bytes of a raw line that count against `--max-line-bytes`: its end (`\n` or `\r\n`)
/// and, on the first line, a UTF-8 byte order mark do not.
fn content_len(raw: &[u8], first_line: bool) -> usize {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let raw = match first_line {
        true => raw.strip_prefix(BOM).unwrap_or(raw),
        false => raw,
    };
    raw.len()
}

#[cfg(test)]
mod tests;
