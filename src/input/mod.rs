//! JSONL input, streamed line by line into [`Prompt`]s.
//!
//! Two line formats are accepted: a Batch API line `{"custom_id", "method", "url", "body"}`, and a
//! plain request body (`{"model": …, "messages": […]}`) sent to the job's endpoint. The reader
//! never holds more than one line; every error names the file and the line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

mod check;

pub use check::{Checked, check};

/// Default for [`InputOptions::max_line_bytes`]: well above any sane request body.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// The chat endpoint, where `{"prompt": "text"}` becomes one user message.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// How plain lines become requests.
#[derive(Clone, Debug)]
pub struct InputOptions {
    /// Endpoint path for plain lines, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Fills a missing `model` in every body.
    pub model: Option<String>,
    /// A longer line is an error rather than an allocation of any size.
    pub max_line_bytes: usize,
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
    #[error("{}:{line}: invalid JSON: {parser}", path.display())]
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
            InputError::DuplicateCustomId { .. } => "duplicate_custom_id",
            InputError::ChangedBody { .. } => "changed_body",
            InputError::Empty { .. } => "empty_input",
            InputError::Changed { .. } => "changed_input",
        }
    }
}

/// Streams [`Prompt`]s out of a JSONL source. Also fingerprints the raw bytes it reads.
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
        InputReader {
            path,
            source,
            options,
            line: 0,
            buf: Vec::new(),
            hasher: blake3::Hasher::new(),
            done: false,
            skip_invalid: false,
            checking: false,
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
    pub fn salvaged_custom_id(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_start_matches('\u{feff}').trim();
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => match object.get("custom_id") {
                Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
                _ => None,
            },
            _ => scan_custom_id(text),
        }
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

    fn parse_line(&self, raw: &[u8]) -> Result<Prompt, InputError> {
        let text = std::str::from_utf8(raw).map_err(|_| InputError::Utf8 {
            path: self.path.clone(),
            line: self.line,
        })?;
        let value: Value = serde_json::from_str(text).map_err(|parser| InputError::Json {
            path: self.path.clone(),
            line: self.line,
            parser,
        })?;
        let Value::Object(mut object) = value else {
            return Err(self.invalid(format!(
                "expected a JSON object, found {}",
                json_kind(&value)
            )));
        };
        let custom_id = match object.remove("custom_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            Some(Value::String(_)) => return Err(self.invalid("custom_id is empty")),
            Some(other) => {
                return Err(self.invalid(format!(
                    "custom_id must be a string, found {}",
                    json_kind(&other)
                )));
            }
        };
        // No request body of any OpenAI endpoint has these at the top level: any one of them
        // marks a Batch line, which must then have all three.
        let is_batch_line = ["method", "url", "body"]
            .iter()
            .any(|k| object.contains_key(*k));
        let (method, url, mut body, metadata, headers) = if is_batch_line {
            self.batch_parts(object)?
        } else {
            let metadata = object.remove("metadata").filter(|m| !m.is_null());
            let url = self.options.endpoint.clone();
            (Method::Post, url, object, metadata, None)
        };
        let metadata = metadata.map(|m| m.to_string());
        if method != Method::Post {
            // No body is sent: it is stored empty so that it cannot change the request's identity.
            let method = method.as_str().to_owned();
            let body_hash = content_hash(&method, &url, "");
            return Ok(Prompt {
                line: self.line,
                custom_id,
                method,
                url,
                body: String::new(),
                body_hash,
                metadata,
                headers,
            });
        }
        if let (Some(model), false) = (&self.options.model, body.contains_key("model")) {
            body.insert("model".into(), Value::String(model.clone()));
        }
        if url == CHAT_ENDPOINT
            && !body.contains_key("messages")
            && let Some(prompt) = body.remove("prompt")
        {
            let Value::String(text) = prompt else {
                return Err(self.invalid("prompt must be a string"));
            };
            body.insert(
                "messages".into(),
                serde_json::json!([{"role": "user", "content": text}]),
            );
        }
        let method = method.as_str().to_owned();
        // Writing the body out and hashing it cannot fail: a check has nothing to learn there.
        let (body, body_hash) = if self.checking {
            (String::new(), String::new())
        } else {
            let body = Value::Object(body).to_string();
            let body_hash = content_hash(&method, &url, &body);
            (body, body_hash)
        };
        Ok(Prompt {
            line: self.line,
            custom_id,
            method,
            url,
            body,
            body_hash,
            metadata,
            headers,
        })
    }

    /// Checks a Batch API line and returns its method, url, body, metadata and headers.
    fn batch_parts(&self, mut object: Map<String, Value>) -> Result<BatchParts, InputError> {
        let method = match object.remove("method") {
            Some(Value::String(m)) => match Method::parse(&m) {
                Some(method) => method,
                None => {
                    return Err(self.invalid(format!(
                        "method '{m}' is not supported: use POST, GET or DELETE"
                    )));
                }
            },
            Some(_) => return Err(self.invalid("method must be a string such as \"POST\"")),
            None => {
                return Err(self.invalid("batch line has no \"method\": add \"method\": \"POST\""));
            }
        };
        let url = match object.remove("url") {
            Some(Value::String(url)) if url.starts_with('/') => match not_plain(&url) {
                None => url,
                Some(problem) => {
                    return Err(self.invalid(format!(
                        "url '{}' {problem}: write it as sent, e.g. /v1/chat/completions",
                        crate::util::text::printable(&url)
                    )));
                }
            },
            Some(Value::String(url)) => {
                return Err(self.invalid(format!(
                    "url '{url}' must be a path such as /v1/chat/completions"
                )));
            }
            Some(_) => return Err(self.invalid("url must be a string")),
            None => return Err(self.invalid("batch line has no \"url\"")),
        };
        let metadata = match object.remove("metadata") {
            None | Some(Value::Null) => None,
            Some(metadata @ Value::Object(_)) => Some(metadata),
            Some(other) => {
                return Err(self.invalid(format!(
                    "metadata must be a JSON object, found {}",
                    json_kind(&other)
                )));
            }
        };
        let headers = match object.remove("headers") {
            None | Some(Value::Null) => None,
            Some(headers) => Some(
                crate::http::headers::from_line(&headers)
                    .map_err(|e| self.invalid(format!("headers: {e}")))?,
            ),
        };
        let body = match (object.remove("body"), method) {
            (Some(Value::Object(body)), Method::Post) => body,
            (None | Some(Value::Null), Method::Get | Method::Delete) => Map::new(),
            (Some(Value::Object(body)), Method::Get | Method::Delete) if body.is_empty() => body,
            (Some(_), Method::Get | Method::Delete) => {
                return Err(self.invalid(format!(
                    "a {} line sends no body: remove \"body\" (or leave it {{}}), or use POST",
                    method.as_str()
                )));
            }
            (Some(other), Method::Post) => {
                return Err(self.invalid(format!(
                    "body must be a JSON object, found {}",
                    json_kind(&other)
                )));
            }
            (None, Method::Post) => return Err(self.invalid("batch line has no \"body\"")),
        };
        // A body's own `metadata` (e.g. for stored chat completions) is sent as is, and also
        // kept as the request's metadata when the line has none of its own.
        let metadata = metadata.or_else(|| body.get("metadata").filter(|m| m.is_object()).cloned());
        Ok((method, url, body, metadata, headers))
    }
}

/// A Batch line's parts: method, url, body, metadata, checked headers (JSON text).
type BatchParts = (
    Method,
    String,
    Map<String, Value>,
    Option<Value>,
    Option<String>,
);

/// The methods a line may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Post,
    Get,
    Delete,
}

impl Method {
    /// Any case: `post`, `Get`.
    fn parse(text: &str) -> Option<Method> {
        [Method::Post, Method::Get, Method::Delete]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(text))
    }

    fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Get => "GET",
            Method::Delete => "DELETE",
        }
    }
}

impl Iterator for InputReader {
    type Item = Result<Prompt, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
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
                    return Some(self.parse_line(raw));
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

/// Finds the first `"custom_id": "…"` in text that is not valid JSON, and decodes the string.
fn scan_custom_id(text: &str) -> Option<String> {
    const NEEDLE: &str = "\"custom_id\"";
    let mut rest = text;
    while let Some(at) = rest.find(NEEDLE) {
        rest = &rest[at + NEEDLE.len()..];
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let value = value.trim_start();
        if !value.starts_with('"') {
            continue;
        }
        // The closing quote: the first `"` not escaped by a backslash.
        let bytes = value.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    return serde_json::from_str::<String>(&value[..=i])
                        .ok()
                        .filter(|id| !id.is_empty());
                }
                _ => i += 1,
            }
        }
        return None;
    }
    None
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

/// Why a Batch line's `url` is not a path to send as written, if it is not: the HTTP client
/// would percent-encode, drop or resolve what follows, and the line would go out changed (to
/// another endpoint, for a `..` that climbs out of the base URL's path).
fn not_plain(url: &str) -> Option<&'static str> {
    if url.chars().any(|c| !c.is_ascii_graphic()) {
        return Some(
            "holds a space, a control character or a non-ASCII character (percent-encode it)",
        );
    }
    if url.contains('#') {
        return Some("has a fragment (#…), which is never sent");
    }
    if url.contains('\\') {
        return Some("holds a backslash, which HTTP clients read as /");
    }
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some("has a . or .. segment, which would move the request to another path");
    }
    None
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
