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

use serde_json::{Map, Value};

mod choices;
mod framer;
mod responses;

use choices::Choices;
use framer::Framer;
use responses::apply_response_event;

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
#[cfg(test)]
mod tests;
