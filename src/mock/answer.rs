//! An answer as the mock decided it, before it becomes an HTTP response.
//!
//! Keeping the decision as data lets the server count it (status, success) and swap it (quota
//! exhausted meanwhile) before anything is written to the socket.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Content type of every well-formed answer.
const JSON: &str = "application/json";

/// The largest body `mock_body_bytes` makes: enough to pass any limit a test sets, including
/// the runner's largest `--max-response-bytes` (300,000,000).
const MAX_PADDED_BODY: usize = 320_000_000;

/// A padded body larger than this is streamed from one shared buffer of spaces rather than
/// built in memory: a few concurrent 300 MB answers would otherwise take gigabytes.
const STREAM_PADDED_ABOVE: usize = 1024 * 1024;

/// The body of an answer.
#[derive(Debug)]
pub(crate) enum Body {
    /// Serialized JSON, sent as `application/json`.
    Json(String),
    /// Serialized JSON followed by spaces up to `total` bytes (still valid JSON), streamed in
    /// chunks of one shared buffer so a body of hundreds of megabytes is never held in memory;
    /// sent with its `Content-Length`.
    Padded { json: String, total: usize },
    /// Anything else (malformed bodies, `RBAC: access denied`), with its own content type.
    Text {
        content_type: &'static str,
        text: String,
    },
    /// A `text/event-stream` of these `data:` payloads, sent chunk by chunk and ended with
    /// `data: [DONE]`; see [`StreamEnding`] for the other ways it can end.
    Stream {
        events: Vec<String>,
        ending: StreamEnding,
    },
}

/// How a streamed answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnding {
    /// Every event, then `data: [DONE]`.
    Whole,
    /// The first half of the events, then the connection drops without an end marker.
    Cut,
    /// The first half of the events, then an error event (`server_error`) and `data: [DONE]`,
    /// as OpenAI reports a failure in the middle of a stream.
    Error,
}

/// Status, body and extra headers of one answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Body,
    /// Extra headers such as `retry-after-ms`: built by the mock, or asked for by a request's
    /// `mock_headers` (any name and value HTTP allows; others are dropped).
    pub(crate) headers: Vec<(String, String)>,
}

impl Answer {
    /// A JSON answer.
    pub(crate) fn json(status: StatusCode, body: String) -> Self {
        Self {
            status,
            body: Body::Json(body),
            headers: Vec::new(),
        }
    }

    /// Puts `message` in place of a JSON error body's `error.message` (`"mock_message"`: what
    /// a hostile server could say); any other body stays as it is.
    pub(crate) fn replace_error_message(&mut self, message: &str) {
        if let Body::Json(text) = &mut self.body
            && let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text)
            && let Some(error) = value.get_mut("error").and_then(|e| e.as_object_mut())
        {
            error.insert("message".into(), message.into());
            *text = value.to_string();
        }
    }

    /// A non-JSON answer with the given content type.
    pub(crate) fn text(status: StatusCode, content_type: &'static str, text: String) -> Self {
        Self {
            status,
            body: Body::Text { content_type, text },
            headers: Vec::new(),
        }
    }

    /// A streamed 200 answer (see [`Body::Stream`]).
    pub(crate) fn stream(events: Vec<String>, ending: StreamEnding) -> Self {
        Self {
            status: StatusCode::OK,
            body: Body::Stream { events, ending },
            headers: Vec::new(),
        }
    }

    /// Adds an extra header.
    pub(crate) fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    /// Applies a request body's directives for hostile answers:
    /// - `"mock_headers": {"name": "value", …}`: extra headers on every answer to this body, any
    ///   value a server could send (a `retry-after: 1e30`, say);
    /// - `"mock_body_bytes": N`: a success body padded with spaces to at least N bytes (still
    ///   valid JSON), to test the answer size limit; at most [`MAX_PADDED_BODY`], streamed
    ///   above [`STREAM_PADDED_ABOVE`].
    pub(crate) fn directed(mut self, body: &Value) -> Self {
        if let Some(extra) = body.get("mock_headers").and_then(Value::as_object) {
            for (name, value) in extra {
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                self = self.with_header(name, value);
            }
        }
        if let Some(size) = body.get("mock_body_bytes").and_then(Value::as_u64)
            && self.status == StatusCode::OK
            && let Body::Json(text) = &mut self.body
        {
            let size = usize::try_from(size)
                .unwrap_or(usize::MAX)
                .min(MAX_PADDED_BODY);
            // JSON allows any amount of trailing whitespace.
            if size > STREAM_PADDED_ABOVE {
                let json = std::mem::take(text);
                self.body = Body::Padded { json, total: size };
            } else {
                let pad = size.saturating_sub(text.len());
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        self
    }

    /// A 200 with a well-formed JSON body: the only answers counted as successes.
    pub(crate) fn is_success(&self) -> bool {
        match self.body {
            Body::Json(_) | Body::Padded { .. } => self.status == StatusCode::OK,
            Body::Stream { ending, .. } => {
                self.status == StatusCode::OK && ending == StreamEnding::Whole
            }
            Body::Text { .. } => false,
        }
    }

    /// Turns the answer into a response with the headers every OpenAI answer carries.
    pub(crate) fn into_response(self, request_id: &str, processing: Duration) -> Response {
        let mut response = match self.body {
            Body::Json(text) => with_type((self.status, text).into_response(), JSON),
            Body::Padded { json, total } => {
                // The length is known: say it, rather than a chunked body of unknown size.
                let total = total.max(json.len());
                let body = padded_body(json, total);
                let mut response = with_type((self.status, body).into_response(), JSON);
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(total));
                response
            }
            Body::Text { content_type, text } => {
                with_type((self.status, text).into_response(), content_type)
            }
            Body::Stream { events, ending } => with_type(
                (self.status, stream_body(events, ending)).into_response(),
                SSE,
            ),
        };
        let headers = response.headers_mut();
        let common = [
            ("x-request-id", request_id.to_owned()),
            ("openai-processing-ms", processing.as_millis().to_string()),
            ("openai-organization", "org-mock".to_owned()),
            ("openai-version", "2020-10-01".to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value));
        for (name, value) in common.into_iter().chain(self.headers) {
            // A name or value HTTP does not allow (only possible through `mock_headers`) is
            // dropped rather than a panic.
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// Content type of a streamed answer.
const SSE: &str = "text/event-stream";

/// Sets the content type; content types are string constants of this module tree, all valid
/// header values.
fn with_type(mut response: Response, content_type: &'static str) -> Response {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The body of a streamed answer: one chunk per event. A cut stream ends in an error, which
/// makes the server drop the connection without the chunked body's last chunk, as a proxy or a
/// crashed upstream would.
fn stream_body(events: Vec<String>, ending: StreamEnding) -> axum::body::Body {
    use futures::StreamExt;

    let keep = match ending {
        StreamEnding::Whole => events.len(),
        StreamEnding::Cut | StreamEnding::Error => events.len() / 2,
    };
    let sent = futures::stream::iter(
        events
            .into_iter()
            .take(keep)
            .map(|event| Ok::<_, std::io::Error>(format!("data: {event}\n\n"))),
    );
    let end = futures::stream::once(async move {
        match ending {
            StreamEnding::Whole => Ok("data: [DONE]\n\n".to_owned()),
            StreamEnding::Error => Ok(format!("data: {MID_STREAM_ERROR}\n\ndata: [DONE]\n\n")),
            StreamEnding::Cut => {
                // Let the status line and the first chunks reach the client first, so that the
                // cut lands in the middle of the body, not before the answer.
                tokio::time::sleep(CUT_AFTER).await;
                Err(std::io::Error::other("mock: stream cut on purpose"))
            }
        }
    });
    axum::body::Body::from_stream(sent.chain(end))
}

/// The chunk of spaces a padded body is streamed in: one static buffer, shared by every chunk.
static SPACES: [u8; PAD_CHUNK] = [b' '; PAD_CHUNK];

/// Bytes per chunk of padding.
const PAD_CHUNK: usize = 64 * 1024;

/// `json`, then spaces up to `total` bytes, one [`PAD_CHUNK`] at a time.
fn padded_body(json: String, total: usize) -> axum::body::Body {
    let pad = total.saturating_sub(json.len());
    let chunks = pad.div_ceil(PAD_CHUNK);
    let spaces = (0..chunks).map(move |index| {
        let size = (pad - index * PAD_CHUNK).min(PAD_CHUNK);
        Ok::<_, std::io::Error>(Bytes::from_static(&SPACES[..size]))
    });
    let head = std::iter::once(Ok(Bytes::from(json)));
    axum::body::Body::from_stream(futures::stream::iter(head.chain(spaces)))
}

/// The error event of [`StreamEnding::Error`]: OpenAI's words for a server failure.
const MID_STREAM_ERROR: &str = r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#;

/// How long a cut stream waits after its first half before the connection drops.
const CUT_AFTER: Duration = Duration::from_millis(20);

/// A fresh `req_<32 hex>` id. Random rather than derived, like OpenAI's, so retries differ.
pub(crate) fn request_id() -> String {
    format!("req_{:032x}", fastrand::u128(..))
}
