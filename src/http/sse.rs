//! Streamed answers (`"stream": true`): server-sent events turned back into the body the same
//! request would have returned without streaming, so the rest of the runner (usage, text,
//! classification, the journal) never has to know a request was streamed.
//!
//! Bytes go into a [`StreamAssembler`] as they arrive ([`StreamAssembler::push`]); at the end of
//! the body [`StreamAssembler::finish`] says how the stream ended:
//!
//! - `Ok(`[`Assembled`]`)` with `error: None`: a whole answer (`data: [DONE]`, or a terminal
//!   responses API event). Its `body` has the shape of a non-streamed body: `chat.completion`,
//!   `text_completion` or the responses API's `response` object.
//! - `Ok(`[`Assembled`]`)` with `error: Some(..)`: the server reported an error inside the stream;
//!   `error` has the `{"error": {...}}` shape of an HTTP error body, to classify like one.
//! - `Err(`[`StreamError::Cut`]`)`: the stream stopped before its end marker. The server may have
//!   finished (and billed) the request, so the outcome is unknown; `partial` holds what arrived.
//! - Any other `Err`: the bytes are not a streamed OpenAI answer.
//!
//! Memory is bounded by the answer, never by the raw stream: the assembler keeps the answer built
//! so far plus at most one pending event, itself capped (see [`MAX_EVENT_BYTES`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The largest single line or event the assembler holds before giving up.
///
/// The largest legitimate event is the responses API's terminal one, which repeats the whole
/// response: 8 MiB is many times the longest output a model produces today (128k tokens are
/// about 0.5 MB of text), so reaching it means the body is not an event stream at all, or a
/// server never ends its lines; without a cap such a body would be held in memory whole.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// Whether a `Content-Type` header value announces an event stream (`text/event-stream`, in any
/// case, with or without parameters such as `; charset=utf-8`).
pub fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// How a stream that did not get cut ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// `data: [DONE]`: the end of a chat completions or completions stream.
    Done,
    /// The responses API's `response.completed`.
    Completed,
    /// The responses API's `response.incomplete` (for example `max_output_tokens` reached): the
    /// body's `incomplete_details` says why. The answer is whole, but shorter than asked for.
    Incomplete,
    /// The responses API's `response.failed`: the body's `error` says why, and
    /// [`Assembled::error`] carries it as an error body.
    Failed,
    /// An error event inside the stream (`data: {"error": ...}`, the responses API's
    /// `event: error`, or llama.cpp's `error: {...}` line).
    Error,
}

/// A stream that reached its end, assembled into one body.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembled {
    /// The answer in its non-streamed shape (`chat.completion`, `text_completion`, or the
    /// responses API's `response`). After an error event: whatever was assembled before it
    /// (`Value::Null` when nothing was). `Value::Null` as well for a bare `data: [DONE]`.
    pub body: Value,
    /// Which end marker the stream reached.
    pub end: StreamEnd,
    /// An error the server reported inside the stream, as an HTTP error body would carry it:
    /// `{"error": {"message": …, "type": …, "code": …}}`. Set for [`StreamEnd::Error`] and for
    /// [`StreamEnd::Failed`] when the failed response names its error; `None` otherwise.
    pub error: Option<Value>,
}

impl Assembled {
    /// The generated text of the body, read as for a non-streamed body (see
    /// [`crate::http::response::output_text`]).
    pub fn text(&self) -> Option<String> {
        crate::http::response::output_text(&self.body)
    }
}

/// Why a stream could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A line or an event is longer than the cap.
    #[error(
        "a server-sent event is longer than {limit} bytes: the answer is not an event stream, or needs a larger MAX_EVENT_BYTES"
    )]
    TooLong {
        /// The cap in bytes.
        limit: usize,
    },
    /// An event's data is neither JSON nor `[DONE]`.
    #[error(
        "server-sent event '{event}' does not carry JSON: {source}: the server does not stream openai answers"
    )]
    Json {
        /// The event name (`message` when the stream names none).
        event: String,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// An event's JSON does not fit a streamed OpenAI answer.
    #[error("server-sent event '{event}' is not part of a streamed openai answer: {reason}")]
    Unexpected {
        /// The event name (`message` when the stream names none).
        event: String,
        /// What is wrong, in words.
        reason: &'static str,
    },
    /// The stream ended before `data: [DONE]` or a terminal responses API event.
    #[error(
        "the stream ended before its end marker: the server may have finished the request, so its outcome is unknown; retry it"
    )]
    Cut {
        /// What was assembled before the cut, in the same shape as [`Assembled::body`]
        /// (`Value::Null` when nothing arrived).
        partial: Value,
    },
}

/// Builds one answer from the bytes of a streamed response, in whatever pieces they arrive.
///
/// Lines may end in LF, CRLF or CR and may be split anywhere across [`push`](Self::push) calls;
/// events end at a blank line; `data:` lines of one event are joined with `\n`; comment lines
/// (`: keep-alive`) are skipped. After an `Err` from `push`, drop the assembler: the stream is
/// not one it can read.
#[derive(Debug)]
pub struct StreamAssembler {
    framer: Framer,
    assembly: Assembly,
}

impl Default for StreamAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamAssembler {
    /// An assembler whose events may be up to [`MAX_EVENT_BYTES`] long.
    pub fn new() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }

    /// An assembler whose pending line plus pending event may be up to `limit` bytes long.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            framer: Framer::new(limit),
            assembly: Assembly::default(),
        }
    }

    /// Takes the next bytes of the body.
    ///
    /// # Errors
    ///
    /// [`StreamError::TooLong`] when a line or event outgrows the limit, [`StreamError::Json`]
    /// or [`StreamError::Unexpected`] when a finished event is not part of a streamed OpenAI
    /// answer.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        let assembly = &mut self.assembly;
        self.framer
            .feed(chunk, &mut |event, data| assembly.apply(event, data))
    }

    /// Ends the body and returns the answer.
    ///
    /// A last event that lacks its closing blank line still counts when its data parses (some
    /// servers end with `data: [DONE]\n`); one that does not parse is where the stream was cut.
    ///
    /// # Errors
    ///
    /// [`StreamError::Cut`] (with the partial answer) when neither `data: [DONE]`, a terminal
    /// responses API event nor an error event arrived.
    pub fn finish(mut self) -> Result<Assembled, StreamError> {
        let assembly = &mut self.assembly;
        // An unfinished last event fails to parse: that is the cut `Cut` reports below, with the
        // partial answer, which a parse error would hide. (`apply` sets no end marker when it
        // fails, so ignoring the error cannot turn a cut stream into a whole one.)
        let _cut_short = self
            .framer
            .flush(&mut |event, data| assembly.apply(event, data));
        self.assembly.finish()
    }
}

/// The server-sent events framing (the WHATWG "event stream" grammar): bytes in, `(event, data)`
/// pairs out. Holds only the unfinished line and the unfinished event.
#[derive(Debug)]
struct Framer {
    limit: usize,
    /// Bytes of the line not ended yet.
    line: Vec<u8>,
    /// The last chunk ended in CR: an LF at the start of the next belongs to the same line end.
    skip_lf: bool,
    /// No line has ended yet (a byte order mark may open the stream).
    first_line: bool,
    /// The `event:` name of the pending event.
    event: String,
    /// The pending event's `data:` lines, each followed by `\n`.
    data: String,
}

impl Framer {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            line: Vec::new(),
            skip_lf: false,
            first_line: true,
            event: String::new(),
            data: String::new(),
        }
    }

    fn feed(
        &mut self,
        mut chunk: &[u8],
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (piece, rest) = chunk.split_at(end);
            self.take(piece)?;
            chunk = match rest {
                [b'\r', b'\n', rest @ ..] => rest,
                [b'\r'] => {
                    self.skip_lf = true;
                    &[]
                }
                [_, rest @ ..] => rest,
                [] => &[],
            };
            self.end_line(sink)?;
        }
        self.take(chunk)
    }

    /// Ends the body: the last line counts even without its line end, the last event even
    /// without its blank line.
    fn flush(
        &mut self,
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        if !self.line.is_empty() {
            self.end_line(sink)?;
        }
        self.dispatch(sink)
    }

    fn take(&mut self, piece: &[u8]) -> Result<(), StreamError> {
        if self.line.len() + self.data.len() + piece.len() > self.limit {
            return Err(StreamError::TooLong { limit: self.limit });
        }
        self.line.extend_from_slice(piece);
        Ok(())
    }

    fn end_line(
        &mut self,
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let mut line: &[u8] = &self.line;
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.line.clear();
            return self.dispatch(sink);
        }
        if !line.starts_with(b":") {
            // The stream is UTF-8 and its line ends are ASCII, so no character straddles two
            // lines; the standard replaces invalid bytes rather than rejecting the stream.
            let text = String::from_utf8_lossy(line);
            let (field, value) = match text.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (&*text, ""),
            };
            match field {
                "data" => {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
                "event" => value.clone_into(&mut self.event),
                // Not a standard field: llama.cpp's server reports an error inside a stream as
                // an `error: {...}` line, which a strict parser would drop, losing the reason.
                "error" => {
                    "error".clone_into(&mut self.event);
                    self.data.push_str(value);
                    self.data.push('\n');
                }
                // `id` and `retry` matter to a browser reconnecting, not to an answer.
                _ => {}
            }
        }
        // Cleared, not replaced: the buffer's allocation serves the next line.
        self.line.clear();
        Ok(())
    }

    fn dispatch(
        &mut self,
        sink: &mut impl FnMut(&str, &str) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let result = if self.data.is_empty() {
            Ok(())
        } else {
            let data = self.data.strip_suffix('\n').unwrap_or(&self.data);
            let event = if self.event.is_empty() {
                "message"
            } else {
                &self.event
            };
            sink(event, data)
        };
        self.event.clear();
        self.data.clear();
        result
    }
}

/// The answer as the events build it.
#[derive(Debug, Default)]
struct Assembly {
    body: Body,
    end: Option<StreamEnd>,
    error: Option<Value>,
}

#[derive(Debug, Default)]
enum Body {
    #[default]
    Empty,
    Choices(Choices),
    Response(Map<String, Value>),
}

impl Assembly {
    fn apply(&mut self, event: &str, data: &str) -> Result<(), StreamError> {
        // Once the end marker is in, nothing after it can change the answer (a responses stream
        // may still send `[DONE]`; a server may still send `[DONE]` after an error).
        if self.end.is_some() {
            return Ok(());
        }
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            // A responses stream is whole only with its terminal event, which holds the answer.
            if !matches!(self.body, Body::Response(_)) {
                self.end = Some(StreamEnd::Done);
            }
            return Ok(());
        }
        let unexpected = |reason| StreamError::Unexpected {
            event: event.to_owned(),
            reason,
        };
        let value: Value = serde_json::from_str(data).map_err(|source| StreamError::Json {
            event: event.to_owned(),
            source,
        })?;
        let Value::Object(object) = value else {
            return Err(unexpected("its data is not a JSON object"));
        };
        // OpenAI names responses API events twice (`event:` and `type`); some compatible servers
        // send only the `type`.
        let kind = if event == "message" {
            object.get("type").and_then(Value::as_str).unwrap_or("")
        } else {
            event
        }
        .to_owned();
        if kind == "error" {
            self.error = Some(error_body(object));
            self.end = Some(StreamEnd::Error);
        } else if object.get("error").is_some_and(|error| !error.is_null())
            && !kind.starts_with("response.")
        {
            self.error = Some(Value::Object(object));
            self.end = Some(StreamEnd::Error);
        } else if kind.starts_with("response.") {
            if matches!(self.body, Body::Empty) {
                self.body = Body::Response(Map::new());
            }
            let Body::Response(response) = &mut self.body else {
                return Err(unexpected("a responses API event in a completions stream"));
            };
            self.end = apply_response_event(response, &kind, object).map_err(unexpected)?;
            if self.end == Some(StreamEnd::Failed)
                && let Some(error) = response.get("error").filter(|e| !e.is_null())
            {
                self.error = Some(serde_json::json!({ "error": error }));
            }
        } else if object.contains_key("choices") {
            if matches!(self.body, Body::Empty) {
                self.body = Body::Choices(Choices::new(&object));
            }
            let Body::Choices(choices) = &mut self.body else {
                return Err(unexpected("a completions chunk in a responses API stream"));
            };
            choices.apply(object).map_err(unexpected)?;
        }
        // Anything else (a server's own progress or keep-alive events) carries nothing that
        // belongs in the answer.
        Ok(())
    }

    fn finish(self) -> Result<Assembled, StreamError> {
        let body = match self.body {
            Body::Empty => Value::Null,
            Body::Choices(choices) => choices.into_body(),
            Body::Response(response) => Value::Object(response),
        };
        match self.end {
            Some(end) => Ok(Assembled {
                body,
                end,
                error: self.error,
            }),
            None => Err(StreamError::Cut { partial: body }),
        }
    }
}

/// The `{"error": {...}}` body of an error event that carries its fields at the top level (the
/// responses API's `event: error`, llama.cpp's `error:` line), or already wraps them.
fn error_body(mut event: Map<String, Value>) -> Value {
    match event.remove("error") {
        Some(error @ Value::Object(_)) => serde_json::json!({ "error": error }),
        _ => {
            // Framing, not part of the error: `type` is the literal event name "error".
            if event.get("type").and_then(Value::as_str) == Some("error") {
                event.remove("type");
            }
            event.remove("sequence_number");
            serde_json::json!({ "error": event })
        }
    }
}

/// Applies one responses API event; returns the end marker when it is a terminal one.
///
/// Only the terminal event's `response` is the answer; the deltas before it are kept so that a
/// cut stream still shows what arrived. Events not handled here (reasoning summaries, tool
/// progress, annotations) are covered by `response.output_item.done`, which repeats the item.
fn apply_response_event(
    response: &mut Map<String, Value>,
    kind: &str,
    mut event: Map<String, Value>,
) -> Result<Option<StreamEnd>, &'static str> {
    let end = match kind {
        "response.completed" => Some(StreamEnd::Completed),
        "response.incomplete" => Some(StreamEnd::Incomplete),
        "response.failed" => Some(StreamEnd::Failed),
        _ => None,
    };
    let index = |key: &str| {
        event
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
    };
    let (output_index, content_index) = (index("output_index"), index("content_index"));
    match kind {
        "response.created"
        | "response.queued"
        | "response.in_progress"
        | "response.completed"
        | "response.incomplete"
        | "response.failed" => {
            let Some(Value::Object(mut update)) = event.remove("response") else {
                return Err("the event has no response object");
            };
            if end.is_none() {
                // Status updates repeat the response without the output streamed so far.
                if let Some(output) = response.remove("output") {
                    update.insert("output".to_owned(), output);
                }
            }
            *response = update;
        }
        "response.output_item.added" | "response.output_item.done" => {
            let (Some(item), Some(i)) = (event.remove("item"), output_index) else {
                return Err("the event has no item or output_index");
            };
            *slot(output_array(response), i) = item;
        }
        "response.content_part.added" | "response.content_part.done" => {
            let (Some(part), Some(i), Some(j)) =
                (event.remove("part"), output_index, content_index)
            else {
                return Err("the event has no part, output_index or content_index");
            };
            *slot(content_array(output_array(response), i), j) = part;
        }
        "response.output_text.delta"
        | "response.output_text.done"
        | "response.refusal.delta"
        | "response.refusal.done" => {
            let (Some(i), Some(j)) = (output_index, content_index) else {
                return Err("the event has no output_index or content_index");
            };
            let (field, part_type, piece) = match kind {
                "response.output_text.delta" => ("text", "output_text", event.remove("delta")),
                "response.output_text.done" => ("text", "output_text", event.remove("text")),
                "response.refusal.delta" => ("refusal", "refusal", event.remove("delta")),
                _ => ("refusal", "refusal", event.remove("refusal")),
            };
            let part = slot(content_array(output_array(response), i), j);
            if part.is_null() {
                *part = serde_json::json!({ "type": part_type, field: "" });
            }
            if let (Some(part), Some(Value::String(piece))) = (part.as_object_mut(), piece) {
                set_or_append(part, field, piece, kind.ends_with(".delta"));
            }
        }
        "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
            let Some(i) = output_index else {
                return Err("the event has no output_index");
            };
            let is_delta = kind.ends_with(".delta");
            let piece = event.remove(if is_delta { "delta" } else { "arguments" });
            let item = slot(output_array(response), i);
            if item.is_null() {
                *item = serde_json::json!({ "type": "function_call", "arguments": "" });
            }
            if let (Some(item), Some(Value::String(piece))) = (item.as_object_mut(), piece) {
                set_or_append(item, "arguments", piece, is_delta);
            }
        }
        _ => {}
    }
    Ok(end)
}

fn set_or_append(object: &mut Map<String, Value>, field: &str, piece: String, append: bool) {
    match object.get_mut(field) {
        Some(Value::String(text)) if append => text.push_str(&piece),
        _ => {
            object.insert(field.to_owned(), Value::String(piece));
        }
    }
}

/// The response's `output` array, made one if it is missing.
fn output_array(response: &mut Map<String, Value>) -> &mut Vec<Value> {
    array_field(response, "output")
}

/// The `content` array of output item `i`, made (with an assistant message) if missing.
fn content_array(output: &mut Vec<Value>, i: usize) -> &mut Vec<Value> {
    let item = slot(output, i);
    if !item.is_object() {
        *item = serde_json::json!({ "type": "message", "role": "assistant", "content": [] });
    }
    match item {
        Value::Object(item) => array_field(item, "content"),
        // Invariant: `item` was made an object just above.
        _ => unreachable!("output item is an object"),
    }
}

fn array_field<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let value = object
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !value.is_array() {
        *value = Value::Array(Vec::new());
    }
    match value {
        Value::Array(items) => items,
        // Invariant: `value` was made an array just above.
        _ => unreachable!("field is an array"),
    }
}

/// Element `i` of `items`, `Null` when new. An index past the end is appended rather than
/// padded to: a server's index must not decide how much memory is taken, and only the partial
/// answer of a cut stream (the terminal event replaces it all) can be off.
fn slot(items: &mut Vec<Value>, i: usize) -> &mut Value {
    let i = if i < items.len() {
        i
    } else {
        items.push(Value::Null);
        items.len() - 1
    };
    // In bounds: `i` is below the length, or the index of the element just pushed.
    &mut items[i]
}

/// Which endpoint the chunks come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChoicesKind {
    /// `chat.completion.chunk`: `choices[i].delta`.
    Chat,
    /// Legacy `/v1/completions` (`text_completion`): `choices[i].text`.
    Text,
}

/// A chat completions or completions answer being assembled.
#[derive(Debug)]
struct Choices {
    kind: ChoicesKind,
    /// `id`, `created`, `model`, `system_fingerprint`, `service_tier` and any server extras.
    top: Map<String, Value>,
    usage: Option<Value>,
    /// Choices by their `index`: a map, so a server's index cannot make it allocate.
    choices: BTreeMap<u64, Choice>,
}

#[derive(Debug, Default)]
struct Choice {
    /// `index`, `finish_reason`, `logprobs`, and for completions `text`.
    fields: Map<String, Value>,
    /// Chat only: the merged deltas, without `tool_calls`.
    message: Map<String, Value>,
    /// Chat only: tool calls by their `index`.
    tool_calls: BTreeMap<u64, Map<String, Value>>,
}

/// Fields that name something rather than carry a piece of it: a repeat replaces, never
/// appends (some servers repeat `role` or a tool call's `type` in every delta).
const IDENTITY_FIELDS: [&str; 5] = ["role", "id", "type", "finish_reason", "index"];

impl Choices {
    fn new(first: &Map<String, Value>) -> Self {
        let kind = match first.get("object").and_then(Value::as_str) {
            Some("text_completion") => ChoicesKind::Text,
            Some(_) => ChoicesKind::Chat,
            // Some servers leave `object` out: only completions choices carry `text`.
            None => {
                let has_text = first
                    .get("choices")
                    .and_then(|c| c.get(0))
                    .is_some_and(|choice| choice.get("text").is_some());
                if has_text {
                    ChoicesKind::Text
                } else {
                    ChoicesKind::Chat
                }
            }
        };
        Self {
            kind,
            top: Map::new(),
            usage: None,
            choices: BTreeMap::new(),
        }
    }

    fn apply(&mut self, chunk: Map<String, Value>) -> Result<(), &'static str> {
        for (key, value) in chunk {
            match key.as_str() {
                "choices" => {
                    let Value::Array(choices) = value else {
                        return Err("choices is not an array");
                    };
                    for choice in choices {
                        let Value::Object(choice) = choice else {
                            return Err("a choice is not an object");
                        };
                        self.apply_choice(choice);
                    }
                }
                // With `include_usage` every chunk carries `"usage": null` but the last.
                "usage" => {
                    if !value.is_null() {
                        self.usage = Some(value);
                    }
                }
                // `object` is the chunk's, not the answer's; `obfuscation` pads each chunk
                // against side channels and means nothing once assembled.
                "object" | "obfuscation" => {}
                _ => {
                    if !value.is_null() || !self.top.contains_key(&key) {
                        self.top.insert(key, value);
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_choice(&mut self, mut delta: Map<String, Value>) {
        let index = delta.get("index").and_then(Value::as_u64).unwrap_or(0);
        let choice = self.choices.entry(index).or_default();
        if let Some(Value::Object(mut message)) = delta.remove("delta") {
            if let Some(Value::Array(calls)) = message.remove("tool_calls") {
                for call in calls {
                    if let Value::Object(call) = call {
                        choice.apply_tool_call(call);
                    }
                }
            }
            merge(&mut choice.message, message);
        }
        merge(&mut choice.fields, delta);
    }

    fn into_body(self) -> Value {
        let mut body = self.top;
        let object = match self.kind {
            ChoicesKind::Chat => "chat.completion",
            ChoicesKind::Text => "text_completion",
        };
        body.insert("object".to_owned(), object.into());
        let choices = self
            .choices
            .into_iter()
            .map(|(index, choice)| choice.into_value(index, self.kind))
            .collect();
        body.insert("choices".to_owned(), Value::Array(choices));
        if let Some(usage) = self.usage {
            body.insert("usage".to_owned(), usage);
        }
        Value::Object(body)
    }
}

impl Choice {
    fn apply_tool_call(&mut self, mut call: Map<String, Value>) {
        // Parallel calls are told apart by `index`. A server that leaves it out sends each call
        // whole or starts each with its `id`, so an unseen `id` opens a new call and a piece
        // without one continues the last.
        let index = match call.remove("index").and_then(|i| i.as_u64()) {
            Some(index) => index,
            None => {
                let id = call.get("id").and_then(Value::as_str);
                let known = id.and_then(|id| {
                    self.tool_calls
                        .iter()
                        .find(|(_, c)| c.get("id").and_then(Value::as_str) == Some(id))
                        .map(|(index, _)| *index)
                });
                let last = self.tool_calls.keys().next_back().copied();
                match (known, id, last) {
                    (Some(index), _, _) => index,
                    (None, None, Some(last)) => last,
                    (None, _, Some(last)) => last + 1,
                    (None, _, None) => 0,
                }
            }
        };
        merge(self.tool_calls.entry(index).or_default(), call);
    }

    fn into_value(self, index: u64, kind: ChoicesKind) -> Value {
        let mut choice = self.fields;
        choice.insert("index".to_owned(), index.into());
        choice.entry("finish_reason").or_insert(Value::Null);
        choice.entry("logprobs").or_insert(Value::Null);
        match kind {
            ChoicesKind::Text => {
                choice.entry("text").or_insert_with(|| "".into());
            }
            ChoicesKind::Chat => {
                let mut message = self.message;
                message.entry("role").or_insert_with(|| "assistant".into());
                message.entry("content").or_insert(Value::Null);
                if !self.tool_calls.is_empty() {
                    let calls = self
                        .tool_calls
                        .into_values()
                        .map(|mut call| {
                            call.entry("type").or_insert_with(|| "function".into());
                            Value::Object(call)
                        })
                        .collect();
                    message.insert("tool_calls".to_owned(), Value::Array(calls));
                }
                choice.insert("message".to_owned(), Value::Object(message));
            }
        }
        Value::Object(choice)
    }
}

/// Merges one delta into what has arrived so far: text pieces are appended (`content`,
/// `refusal`, `reasoning_content`, a function's `name` and `arguments`, completions' `text`),
/// arrays are extended (`logprobs.content`, completions' `logprobs.tokens`), objects merge
/// field by field, and anything else, [`IDENTITY_FIELDS`] included, replaces. A `null` never
/// erases a value; it only records that the field exists, as a non-streamed body shows it.
fn merge(target: &mut Map<String, Value>, delta: Map<String, Value>) {
    for (key, value) in delta {
        let identity = IDENTITY_FIELDS.contains(&key.as_str());
        match (target.get_mut(&key), value) {
            (_, Value::Null) => {
                target.entry(key).or_insert(Value::Null);
            }
            (Some(Value::String(text)), Value::String(piece)) if !identity => {
                text.push_str(&piece);
            }
            (Some(Value::Array(items)), Value::Array(more)) => items.extend(more),
            (Some(Value::Object(fields)), Value::Object(more)) => merge(fields, more),
            (_, value) => {
                target.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    /// A chat completion as OpenAI streams it with `stream_options.include_usage`: the role
    /// first, content pieces, the finish reason, the usage chunk with `choices: []`, `[DONE]`.
    const CHAT: &str = concat!(
        r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"a1"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"b22"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"content":" wörld"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"c"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"d4"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null,"obfuscation":"e"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-C1x","object":"chat.completion.chunk","created":1750000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_34a54ae93c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"f5"}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// The non-streamed body of the same answer: what [`CHAT`] must assemble into.
    fn chat_body() -> Value {
        json!({
            "id": "chatcmpl-C1x", "object": "chat.completion", "created": 1750000000,
            "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
            "system_fingerprint": "fp_34a54ae93c",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello wörld!", "refusal": null},
                "logprobs": null, "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        })
    }

    /// Two parallel tool calls, their arguments split over many chunks and interleaved.
    const TOOLS: &str = concat!(
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_aA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Par"}}]},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_bB","type":"function","function":{"name":"get_","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"name":"time","arguments":"{\"tz\":"}}]},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is\"}"}}]},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":" \"CET\"}"}}]},"logprobs":null,"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-T9","object":"chat.completion.chunk","created":1750000100,"model":"gpt-4.1-2025-04-14","system_fingerprint":null,"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// A legacy `/v1/completions` stream with `n: 2`, its choices interleaved.
    const COMPLETIONS: &str = concat!(
        r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":"Once","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
        "\n\n",
        r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":"In a","index":1,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
        "\n\n",
        r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":" upon","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
        "\n\n",
        r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":" galaxy","index":1,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
        "\n\n",
        r#"data: {"id":"cmpl-L1","object":"text_completion","created":1750000200,"choices":[{"text":" a time","index":0,"logprobs":null,"finish_reason":"stop"}],"model":"gpt-3.5-turbo-instruct:20230824-v2"}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    const RESPONSE_CREATED: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_68a","object":"response","created_at":1750000300,"status":"in_progress","error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14","output":[],"usage":null}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_68a","object":"response","created_at":1750000300,"status":"in_progress","error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14","output":[],"usage":null}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi","logprobs":[],"obfuscation":"x"}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" there","logprobs":[],"obfuscation":"yy"}

"#;

    const RESPONSE_DONE: &str = r#"event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi there","logprobs":[]}

event: response.content_part.done
data: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"id":"msg_1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}],"role":"assistant"}}

event: response.completed
data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_68a","object":"response","created_at":1750000300,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14","output":[{"id":"msg_1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}],"role":"assistant"}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":14}}}

"#;

    fn responses_stream() -> String {
        format!("{RESPONSE_CREATED}{RESPONSE_DONE}")
    }

    /// The `response` of [`RESPONSE_DONE`]'s `response.completed`.
    fn responses_body() -> Value {
        json!({"id":"resp_68a","object":"response","created_at":1750000300,"status":"completed",
            "error":null,"incomplete_details":null,"model":"gpt-4.1-mini-2025-04-14",
            "output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant",
                "content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}]}],
            "usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,
                "output_tokens_details":{"reasoning_tokens":0},"total_tokens":14}})
    }

    fn assemble(chunks: &[&[u8]]) -> Result<Assembled, StreamError> {
        let mut assembler = StreamAssembler::new();
        for chunk in chunks {
            assembler.push(chunk)?;
        }
        assembler.finish()
    }

    fn assemble_str(stream: &str) -> Result<Assembled, StreamError> {
        assemble(&[stream.as_bytes()])
    }

    fn partial(result: Result<Assembled, StreamError>) -> Value {
        match result {
            Err(StreamError::Cut { partial }) => partial,
            other => panic!("expected a cut stream, got {other:?}"),
        }
    }

    /// The `(event, data)` pairs the framing makes of `chunks`, flushed at the end.
    fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut framer = Framer::new(MAX_EVENT_BYTES);
        let mut seen = Vec::new();
        let mut sink = |event: &str, data: &str| {
            seen.push((event.to_owned(), data.to_owned()));
            Ok(())
        };
        for chunk in chunks {
            framer.feed(chunk, &mut sink).expect("frames");
        }
        framer.flush(&mut sink).expect("flushes");
        seen
    }

    #[test]
    fn chat_stream_assembles_into_the_non_streamed_body() {
        let assembled = assemble_str(CHAT).expect("complete");
        assert_eq!(assembled.body, chat_body());
        assert_eq!(assembled.end, StreamEnd::Done);
        assert_eq!(assembled.error, None);
        assert_eq!(assembled.text().as_deref(), Some("Hello wörld!"));
        let usage = crate::http::response::parse_success(assembled.body.to_string().as_bytes())
            .expect("usage");
        assert_eq!(usage.total_tokens, Some(13));
    }

    #[test]
    fn tool_call_pieces_merge_by_index() {
        let assembled = assemble_str(TOOLS).expect("complete");
        assert_eq!(
            assembled.body,
            json!({
                "id": "chatcmpl-T9", "object": "chat.completion", "created": 1750000100,
                "model": "gpt-4.1-2025-04-14", "system_fingerprint": null,
                "choices": [{
                    "index": 0, "logprobs": null, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                        {"id": "call_aA", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                        {"id": "call_bB", "type": "function",
                         "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}}
                    ]}
                }]
            })
        );
        assert_eq!(assembled.text(), None);
    }

    #[test]
    fn tool_calls_without_index_are_told_apart_by_id() {
        let stream = concat!(
            r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"a","arguments":"{}"}}]}}]}"#,
            "\n\n",
            r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_2","type":"function","function":{"name":"b","arguments":"{\"x\""}}]}}]}"#,
            "\n\n",
            r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let body = assemble_str(stream).expect("complete").body;
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"],
            json!([
                {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{\"x\":1}"}}
            ])
        );
        // `role` repeated in a later delta names the role again; it is not appended.
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    }

    #[test]
    fn refusal_and_logprobs_pieces_are_concatenated() {
        let stream = concat!(
            r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"logprobs":{"content":null,"refusal":[]},"finish_reason":null}]}"#,
            "\n\n",
            r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":"I can't"},"logprobs":{"content":null,"refusal":[{"token":"I","logprob":-0.1}]},"finish_reason":null}]}"#,
            "\n\n",
            r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"refusal":" help."},"logprobs":{"content":null,"refusal":[{"token":" can't","logprob":-0.2}]},"finish_reason":"stop"}]}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let choice = &assemble_str(stream).expect("complete").body["choices"][0];
        assert_eq!(
            choice["message"],
            json!({"role": "assistant", "content": null, "refusal": "I can't help."})
        );
        assert_eq!(
            choice["logprobs"],
            json!({"content": null, "refusal": [{"token": "I", "logprob": -0.1}, {"token": " can't", "logprob": -0.2}]})
        );
    }

    #[test]
    fn chat_logprobs_content_is_concatenated() {
        let stream = concat!(
            r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"logprobs":{"content":[{"token":"a","logprob":-1.0,"bytes":[97],"top_logprobs":[]}],"refusal":null},"finish_reason":null}]}"#,
            "\n\n",
            r#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"b"},"logprobs":{"content":[{"token":"b","logprob":-2.0,"bytes":[98],"top_logprobs":[]}],"refusal":null},"finish_reason":"stop"}]}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let choice = &assemble_str(stream).expect("complete").body["choices"][0];
        assert_eq!(choice["message"]["content"], "ab");
        let tokens: Vec<&str> = choice["logprobs"]["content"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|t| t["token"].as_str())
            .collect();
        assert_eq!(tokens, ["a", "b"]);
    }

    #[test]
    fn legacy_completions_assemble_per_choice() {
        let assembled = assemble_str(COMPLETIONS).expect("complete");
        assert_eq!(
            assembled.body,
            json!({
                "id": "cmpl-L1", "object": "text_completion", "created": 1750000200,
                "model": "gpt-3.5-turbo-instruct:20230824-v2",
                "choices": [
                    {"text": "Once upon a time", "index": 0, "logprobs": null, "finish_reason": "stop"},
                    {"text": "In a galaxy", "index": 1, "logprobs": null, "finish_reason": "length"}
                ]
            })
        );
        assert_eq!(assembled.text().as_deref(), Some("Once upon a time"));
    }

    #[test]
    fn completions_without_object_are_recognised_by_their_text() {
        let stream = "data: {\"choices\":[{\"text\":\"a\",\"index\":0}]}\n\ndata: {\"choices\":[{\"text\":\"b\",\"index\":0,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let body = assemble_str(stream).expect("complete").body;
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "ab");
    }

    #[test]
    fn responses_stream_yields_the_completed_response() {
        let assembled = assemble_str(&responses_stream()).expect("complete");
        assert_eq!(assembled.body, responses_body());
        assert_eq!(assembled.end, StreamEnd::Completed);
        assert_eq!(assembled.error, None);
        assert_eq!(assembled.text().as_deref(), Some("Hi there"));
    }

    #[test]
    fn responses_stream_may_end_with_done_after_its_terminal_event() {
        let stream = format!("{}data: [DONE]\n\n", responses_stream());
        let assembled = assemble_str(&stream).expect("complete");
        assert_eq!(
            (assembled.body, assembled.end),
            (responses_body(), StreamEnd::Completed)
        );
    }

    #[test]
    fn responses_events_without_event_lines_are_read_by_type() {
        let stream: String = responses_stream()
            .lines()
            .filter(|line| !line.starts_with("event:"))
            .map(|line| format!("{line}\n"))
            .collect();
        let assembled = assemble_str(&stream).expect("complete");
        assert_eq!(assembled.end, StreamEnd::Completed);
        assert_eq!(assembled.body, responses_body());
    }

    #[test]
    fn cut_responses_stream_keeps_the_text_streamed_so_far() {
        let partial = partial(assemble_str(RESPONSE_CREATED));
        assert_eq!(partial["status"], "in_progress");
        assert_eq!(partial["id"], "resp_68a");
        assert_eq!(
            crate::http::response::output_text(&partial).as_deref(),
            Some("Hi there")
        );
    }

    #[test]
    fn responses_done_without_terminal_event_is_cut() {
        let stream = format!("{RESPONSE_CREATED}data: [DONE]\n\n");
        let partial = partial(assemble_str(&stream));
        assert_eq!(
            crate::http::response::output_text(&partial).as_deref(),
            Some("Hi there")
        );
    }

    #[test]
    fn responses_function_call_arguments_are_concatenated_in_the_partial() {
        let stream = concat!(
            "event: response.output_item.added\n",
            r#"data: {"type":"response.output_item.added","output_index":0,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":"get_weather"}}"#,
            "\n\nevent: response.function_call_arguments.delta\n",
            r#"data: {"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"{\"city\":"}"#,
            "\n\nevent: response.function_call_arguments.delta\n",
            r#"data: {"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"\"Oslo\"}"}"#,
            "\n\n",
        );
        let partial = partial(assemble_str(stream));
        assert_eq!(partial["output"][0]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(partial["output"][0]["name"], "get_weather");
    }

    #[rstest]
    #[case::incomplete(
        "response.incomplete",
        json!({"id":"r","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"error":null,"output":[]}),
        StreamEnd::Incomplete,
        None
    )]
    #[case::failed(
        "response.failed",
        json!({"id":"r","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"output":[]}),
        StreamEnd::Failed,
        Some(json!({"error":{"code":"server_error","message":"The model failed to generate a response."}}))
    )]
    #[case::completed(
        "response.completed",
        json!({"id":"r","status":"completed","error":null,"output":[]}),
        StreamEnd::Completed,
        None
    )]
    fn responses_terminal_events_keep_their_response(
        #[case] event: &str,
        #[case] response: Value,
        #[case] end: StreamEnd,
        #[case] error: Option<Value>,
    ) {
        let created = json!({"type":"response.created","response":{"id":"r","status":"in_progress","output":[]}});
        let terminal = json!({"type": event, "response": response});
        let stream = format!(
            "event: response.created\ndata: {created}\n\nevent: {event}\ndata: {terminal}\n\n"
        );
        let assembled = assemble_str(&stream).expect("ends");
        assert_eq!(assembled.body, response);
        assert_eq!(assembled.end, end);
        assert_eq!(assembled.error, error);
    }

    #[rstest]
    #[case::openai_data_error(
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        json!({"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}})
    )]
    #[case::error_then_done(
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":503}}\n\ndata: [DONE]\n\n",
        json!({"error":{"message":"overloaded","type":"server_error","code":503}})
    )]
    #[case::llama_cpp_error_line(
        "error: {\"code\":500,\"message\":\"Failed to parse input\",\"type\":\"server_error\"}\n\n",
        json!({"error":{"code":500,"message":"Failed to parse input","type":"server_error"}})
    )]
    #[case::responses_error_event(
        "event: error\ndata: {\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":3}\n\n",
        json!({"error":{"code":"ERR_SOMETHING","message":"Something went wrong","param":null}})
    )]
    #[case::responses_error_event_wrapping_its_error(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"code\":\"context_length_exceeded\",\"message\":\"too long\",\"param\":\"input\"},\"sequence_number\":1}\n\n",
        json!({"error":{"type":"invalid_request_error","code":"context_length_exceeded","message":"too long","param":"input"}})
    )]
    fn errors_mid_stream_are_returned_as_error_bodies(#[case] tail: &str, #[case] error: Value) {
        // Two content pieces arrive before the error: they stay in the body.
        let head: String = CHAT.split_inclusive("\n\n").take(3).collect();
        let assembled = assemble_str(&format!("{head}{tail}")).expect("an error ends the stream");
        assert_eq!(assembled.end, StreamEnd::Error);
        assert_eq!(assembled.error, Some(error));
        assert_eq!(assembled.text().as_deref(), Some("Hello wörld"));
    }

    #[rstest]
    #[case::empty("", Value::Null)]
    #[case::only_keep_alives(": ping\n\n: ping\n\n", Value::Null)]
    #[case::no_done(
        &CHAT[..CHAT.find("data: [DONE]").expect("has done")],
        chat_body()
    )]
    #[case::cut_mid_done(
        &CHAT[..CHAT.find("[DONE]").expect("has done") + 3],
        chat_body()
    )]
    #[case::cut_mid_json(
        &CHAT[..CHAT.find(r#"{"content":"!"}"#).expect("has piece") + 6],
        json!("Hello wörld")
    )]
    #[case::cut_mid_line_after_data_field(
        &CHAT[..CHAT.find(r#"{"content":"!"}"#).expect("has piece") - 120],
        json!("Hello wörld")
    )]
    #[case::cut_before_the_blank_line(
        &CHAT[..CHAT.find(r#""obfuscation":"d4"}"#).expect("has piece") + 20],
        json!("Hello wörld!")
    )]
    #[case::cut_mid_line_of_the_next_event(
        &CHAT[..CHAT.find(r#""obfuscation":"d4"}"#).expect("has piece") + 60],
        json!("Hello wörld!")
    )]
    fn cut_streams_return_the_partial_body(#[case] stream: &str, #[case] expected: Value) {
        let partial = partial(assemble_str(stream));
        match expected {
            // The expected content of choice 0 only: the rest is checked in other cases.
            Value::String(_) => assert_eq!(partial["choices"][0]["message"]["content"], expected),
            _ => assert_eq!(partial, expected),
        }
    }

    #[rstest]
    #[case::done_without_blank_line("data: [DONE]\n")]
    #[case::done_without_line_end("data: [DONE]")]
    #[case::done_with_crlf_and_no_blank_line("data: [DONE]\r\n")]
    fn a_last_event_without_its_blank_line_still_counts(#[case] done: &str) {
        let stream = CHAT.replace("data: [DONE]\n\n", done);
        let assembled = assemble_str(&stream).expect("complete");
        assert_eq!(assembled.body, chat_body());
        assert_eq!(assembled.end, StreamEnd::Done);
    }

    #[test]
    fn events_after_the_end_marker_change_nothing() {
        let stream = format!(
            "{CHAT}data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"late\"}}}}]}}\n\ndata: {{\"error\":{{\"message\":\"x\"}}}}\n\n"
        );
        let assembled = assemble_str(&stream).expect("complete");
        assert_eq!(assembled.body, chat_body());
        assert_eq!((assembled.end, assembled.error), (StreamEnd::Done, None));
    }

    #[test]
    fn the_cut_error_says_to_retry() {
        let error = assemble_str(&CHAT[..100]).expect_err("cut");
        assert!(error.to_string().contains("outcome is unknown"), "{error}");
    }

    #[rstest]
    #[case::lf("\n")]
    #[case::crlf("\r\n")]
    #[case::cr("\r")]
    fn every_line_end_gives_the_same_answer(#[case] line_end: &str) {
        let stream = CHAT.replace('\n', line_end);
        assert_eq!(assemble_str(&stream).expect("complete").body, chat_body());
    }

    fn crlf_chat() -> String {
        CHAT.replace('\n', "\r\n")
    }

    fn cr_chat() -> String {
        CHAT.replace('\n', "\r")
    }

    #[rstest]
    #[case::chat(CHAT.to_owned())]
    #[case::chat_crlf(crlf_chat())]
    #[case::chat_cr(cr_chat())]
    #[case::tools(TOOLS.to_owned())]
    #[case::completions(COMPLETIONS.to_owned())]
    #[case::responses(responses_stream())]
    #[case::mid_stream_error(format!("{RESPONSE_CREATED}event: error\ndata: {{\"type\":\"error\",\"code\":\"server_error\",\"message\":\"x\"}}\n\n"))]
    fn every_chunking_gives_the_same_answer(#[case] stream: String) {
        let bytes = stream.as_bytes();
        let whole = assemble(&[bytes]).expect("complete");
        for at in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(at);
            let split = assemble(&[head, tail]).expect("complete");
            assert_eq!(split, whole, "split at byte {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(assemble(&bytewise).expect("complete"), whole);
        let with_empty_pushes: Vec<&[u8]> = bytes.chunks(7).flat_map(|c| [c, &[][..]]).collect();
        assert_eq!(assemble(&with_empty_pushes).expect("complete"), whole);
    }

    #[test]
    fn every_chunking_of_a_cut_stream_gives_the_same_partial() {
        let bytes = &CHAT.as_bytes()[..CHAT.find("data: [DONE]").expect("has done") - 40];
        let whole = partial(assemble(&[bytes]));
        for at in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(at);
            assert_eq!(
                partial(assemble(&[head, tail])),
                whole,
                "split at byte {at}"
            );
        }
    }

    #[test]
    fn comments_keep_alives_and_other_fields_are_skipped() {
        let noisy: String = CHAT
            .split_inclusive("\n\n")
            .map(|event| {
                format!(": keep-alive\n\nid: 7\nretry: 3000\n:\n{event}: OPENROUTER PROCESSING\n\n")
            })
            .collect();
        assert_eq!(assemble_str(&noisy).expect("complete").body, chat_body());
    }

    #[test]
    fn unknown_events_are_ignored() {
        let stream = format!("event: ping\ndata: {{\"type\":\"ping\"}}\n\n{CHAT}");
        assert_eq!(assemble_str(&stream).expect("complete").body, chat_body());
    }

    #[rstest]
    #[case::one_data_line(&["data: a\n\n"], &[("message", "a")])]
    #[case::data_lines_joined(&["data: a\ndata:b\ndata:  c\n\n"], &[("message", "a\nb\n c")])]
    #[case::event_names_kept(&["event: response.created\ndata: {}\n\ndata: x\n\n"], &[("response.created", "{}"), ("message", "x")])]
    #[case::comment_skipped(&[": hi\ndata: x\n\n"], &[("message", "x")])]
    #[case::event_without_data_dropped(&["event: e\n\ndata: x\n\n"], &[("message", "x")])]
    #[case::field_without_colon(&["data\ndata\n\n"], &[("message", "\n")])]
    #[case::byte_order_mark(&["\u{feff}data: x\n\n"], &[("message", "x")])]
    #[case::crlf_split_between_cr_and_lf(&["data: a\r", "\ndata: b\r\n\r", "\n"], &[("message", "a\nb")])]
    #[case::cr_then_new_line_across_pushes(&["data: a\r", "data: b\r\r"], &[("message", "a\nb")])]
    #[case::last_event_flushed(&["data: x"], &[("message", "x")])]
    #[case::llama_cpp_error_field(&["error: {}\n\n"], &[("error", "{}")])]
    fn framing(#[case] chunks: &[&str], #[case] expected: &[(&str, &str)]) {
        let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(e, d)| ((*e).to_owned(), (*d).to_owned()))
            .collect();
        assert_eq!(events(&chunks), expected);
    }

    #[test]
    fn a_multi_line_data_field_is_one_json_value() {
        let stream = "data: {\"object\":\"chat.completion.chunk\",\ndata: \"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let body = assemble_str(stream).expect("complete").body;
        assert_eq!(body["choices"][0]["message"]["content"], "hi");
    }

    #[rstest]
    #[case::one_long_line(vec![vec![b'x'; 100]])]
    #[case::long_line_over_many_pushes(vec![vec![b'x'; 30]; 4])]
    #[case::many_data_lines_in_one_event(vec![b"data: 0123456789\n".to_vec(); 8])]
    fn an_over_long_line_or_event_is_an_error(#[case] chunks: Vec<Vec<u8>>) {
        let mut assembler = StreamAssembler::with_limit(64);
        let result = chunks.iter().try_for_each(|c| assembler.push(c));
        assert!(
            matches!(result, Err(StreamError::TooLong { limit: 64 })),
            "{result:?}"
        );
    }

    #[test]
    fn the_limit_is_per_event_not_per_stream() {
        let mut assembler = StreamAssembler::with_limit(600);
        assembler.push(CHAT.as_bytes()).expect("every event fits");
        assert_eq!(assembler.finish().expect("complete").body, chat_body());
    }

    #[rstest]
    #[case::not_json("data: hello\n\n", "does not carry JSON")]
    #[case::json_array("data: [1,2]\n\n", "not a JSON object")]
    #[case::choices_not_array("data: {\"choices\":{}}\n\n", "choices is not an array")]
    #[case::terminal_without_response(
        "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n",
        "no response object"
    )]
    #[case::mixed_endpoints(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\nevent: response.created\ndata: {\"response\":{}}\n\n",
        "responses API event in a completions stream"
    )]
    fn streams_that_are_not_openai_answers_are_errors(#[case] stream: &str, #[case] says: &str) {
        let mut assembler = StreamAssembler::new();
        let error = assembler.push(stream.as_bytes()).expect_err("rejected");
        assert!(error.to_string().contains(says), "{error}");
    }

    #[test]
    fn bare_done_is_a_complete_empty_answer() {
        let assembled = assemble_str("data: [DONE]\n\n").expect("complete");
        assert_eq!(
            (assembled.body, assembled.end),
            (Value::Null, StreamEnd::Done)
        );
    }

    #[rstest]
    #[case(Some("text/event-stream"), true)]
    #[case(Some("text/event-stream; charset=utf-8"), true)]
    #[case(Some("Text/Event-Stream;charset=UTF-8"), true)]
    #[case(Some(" text/event-stream "), true)]
    #[case(Some("application/json"), false)]
    #[case(Some("text/event-streams"), false)]
    #[case(Some("text/plain; x=text/event-stream"), false)]
    #[case(None, false)]
    fn recognises_event_stream_content_types(
        #[case] content_type: Option<&str>,
        #[case] expected: bool,
    ) {
        assert_eq!(is_event_stream(content_type), expected);
    }
}
