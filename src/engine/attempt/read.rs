//! The **read** step of an attempt: what came back (an answer, a cut or unreadable stream, a
//! body over the limit, a transport failure) turned into a [`Reading`](super::Reading). Pure: a
//! spooled body comes already examined (`http::body::Examined`), and its file becomes the
//! reading's response as it is, never loaded.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, LOCATION};
use serde_json::Value;

use super::Reading;
use crate::domain::{AttemptOutcome, Class, ResponseBody, Usage};
use crate::http::body::{self, Body, Examined, SpooledBody, examine};
use crate::http::classify::{ApiError, Observation, Payload, TransportFailure, classify};
use crate::http::client::{Answer, Sent, Streamed};
use crate::http::hints::{self, Announced};
use crate::http::response::{SuccessBody, parse_success};
use crate::http::sse::{Assembled, StreamEnd};

/// Longest part of an unreadable 2xx body kept in the journal's `error_message`.
const INVALID_BODY_HEAD: usize = body::HEAD_CHARS;

/// Reads what came back. `now` resolves a `retry-after` given as an HTTP date.
///
/// `max_wait` (`--max-wait`) caps the wait a server may ask for. Every header goes through
/// [`hints`], so no value a server sends can panic here.
pub(crate) fn read(sent: Sent, now: SystemTime, max_wait: Duration) -> Reading {
    match sent {
        Sent::Answer(answer) => read_answer(answer, now, max_wait),
        // Never retried: the server did the work (a 2xx may be billed), and the same request
        // would get the same answer. Only the error goes into the journal, never the body.
        Sent::TooLarge {
            status,
            headers,
            cap,
            at_least,
        } => Reading {
            outcome: AttemptOutcome::Answered,
            http_status: Some(status),
            class: Class::RequestFailed,
            error: ApiError::default(),
            error_code: Some(RESPONSE_TOO_LARGE.to_owned()),
            error_message: Some(format!(
                "the answer's body is at least {at_least} bytes, over the --max-response-bytes limit of {cap}: \
                 raise --max-response-bytes, then `runner retry-failed --class request_failed` sends it again"
            )),
            x_request_id: hints::request_id(&headers),
            response: None,
            usage: Usage::default(),
            wait: None,
            announced: hints::announced(&headers),
        },
        Sent::Failed { failure, message } => Reading {
            outcome: if failure.outcome_unknown() {
                AttemptOutcome::OutcomeUnknown
            } else {
                AttemptOutcome::NotSent
            },
            http_status: None,
            class: classify(Observation::Transport(failure)),
            error: ApiError::default(),
            error_code: Some(failure_code(failure).to_owned()),
            error_message: Some(message),
            x_request_id: None,
            response: None,
            usage: Usage::default(),
            wait: None,
            announced: Announced::default(),
        },
    }
}

/// The journal's `error_code` of a transport failure.
fn failure_code(failure: TransportFailure) -> &'static str {
    match failure {
        TransportFailure::Connect => "connect_error",
        TransportFailure::Timeout => "timeout",
        TransportFailure::Other => "network_error",
        TransportFailure::Cut => "stream_cut",
    }
}

/// What a body turned out to be: its class of payload, the error it carries, the text to
/// journal as the response, and why it cannot be read (for an invalid 2xx).
struct Content {
    payload: Payload,
    error: ApiError,
    response: Option<ResponseBody>,
    unreadable: Option<(&'static str, String)>,
    /// Usage, when the body was already parsed for it (a plain 2xx).
    usage: Option<Usage>,
}

/// The journal's `error_code` of an answer over `--max-response-bytes`.
pub const RESPONSE_TOO_LARGE: &str = "response_too_large";

fn read_answer(answer: Answer, now: SystemTime, max_wait: Duration) -> Reading {
    let Answer {
        status,
        headers,
        body,
        stream,
    } = answer;
    let x_request_id = hints::request_id(&headers);
    let announced = hints::announced(&headers);
    let should_retry = hints::should_retry(&headers);
    let success = (200..300).contains(&status);
    let content = match stream {
        // A chat or completions stream that says `[DONE]` before any choice got its
        // `finish_reason` was stopped early (llama.cpp's Python server does this to a stream
        // when another request arrives): as unfinished as a cut one.
        Some(Streamed::Assembled(assembled)) if is_unfinished(&assembled) => {
            return cut_reading(
                status,
                assembled.body,
                "the event stream said [DONE] before any choice had a finish_reason: the server stopped it early".to_owned(),
                x_request_id,
                announced,
            );
        }
        // A cut stream is answered but unfinished: like a timeout, the server may have done
        // the work, so it is retried with its outcome unknown; the partial answer is kept.
        Some(Streamed::Cut { partial, message }) => {
            return cut_reading(status, partial, message, x_request_id, announced);
        }
        Some(Streamed::Unreadable { message }) => Content {
            payload: Payload::Invalid,
            error: ApiError::default(),
            unreadable: Some((
                "invalid_stream",
                format!(
                    "{message}; the stream began: {}",
                    head(body.in_memory().unwrap_or_default())
                ),
            )),
            response: Some(into_response(body)),
            usage: None,
        },
        Some(Streamed::Assembled(assembled)) => assembled_content(assembled),
        None => plain_content(status, &headers, body),
    };
    let class = classify(Observation::Answer {
        status,
        error: &content.error,
        payload: content.payload,
        should_retry,
    });
    let usage = match (success, content.payload, &content.response) {
        (true, Payload::Whole, Some(response)) => content
            .usage
            .or_else(|| {
                response
                    .as_text()
                    .and_then(|text| parse_success(text.as_bytes()))
            })
            .unwrap_or_default(),
        _ => Usage::default(),
    };
    let (error_code, error_message) = match content.unreadable {
        Some((code, message)) => (Some(code.to_owned()), Some(message)),
        None => (content.error.code.clone(), content.error.message.clone()),
    };
    Reading {
        outcome: AttemptOutcome::Answered,
        http_status: Some(status),
        class,
        wait: match class {
            // Only a retry waits: a success (most answers) skips reading the reset headers.
            Class::Transient
            | Class::AuthTransient
            | Class::RateLimited
            | Class::InvalidResponse => {
                hints::server_wait(&headers, content.error.message.as_deref(), now, max_wait)
            }
            Class::Succeeded | Class::RequestFailed | Class::JobStop(_) => None,
        },
        error_code,
        error_message,
        x_request_id,
        response: content.response,
        usage,
        announced,
        error: content.error,
    }
}

/// What a plain (not streamed) answer's body turned out to be: examined here when it is in
/// memory, before it was spooled otherwise.
fn plain_content(status: u16, headers: &HeaderMap, body: Body) -> Content {
    let (examined, response) = match body {
        Body::Memory { bytes, held } => {
            // A body in memory always reads; the fallback is never taken.
            let examined = examine(status, bytes.as_slice())
                .unwrap_or(Examined::Success(SuccessBody::Invalid, None));
            let text = into_text(bytes);
            (examined, ResponseBody::Text { text, held })
        }
        Body::Spooled(SpooledBody { spooled, examined }) => {
            (examined, ResponseBody::Spooled(spooled))
        }
    };
    let (payload, error, unreadable, usage) = match examined {
        Examined::Error(error) => (Payload::Whole, error_of(status, headers, error), None, None),
        Examined::Success(SuccessBody::Error(error), _) => (Payload::Error, error, None, None),
        Examined::Success(SuccessBody::Answer(usage), _) => {
            (Payload::Whole, ApiError::default(), None, Some(usage))
        }
        Examined::Success(SuccessBody::Invalid, began) => {
            let (text, more) = began.unwrap_or_default();
            let began = if more {
                format!("{text:?}…")
            } else {
                format!("{text:?}")
            };
            let message = format!("the answer's body is not a JSON object; it began: {began}");
            (
                Payload::Invalid,
                ApiError::default(),
                Some(("invalid_json", message)),
                None,
            )
        }
    };
    Content {
        payload,
        error,
        response: Some(response),
        unreadable,
        usage,
    }
}

/// The error a non-2xx answer gives (`parsed` from its body). A redirect is never followed (see
/// `http::client`): its journal row says where it pointed, since its body rarely says anything.
fn error_of(status: u16, headers: &HeaderMap, parsed: ApiError) -> ApiError {
    let mut error = parsed;
    if (300..400).contains(&status) {
        let location = match headers.get(LOCATION) {
            Some(value) => head(value.as_bytes()),
            None => "nowhere (no Location header)".to_owned(),
        };
        error.code.get_or_insert_with(|| "redirect".to_owned());
        error.message = Some(format!(
            "the server redirected to {location}; redirects are not followed (the request, its \
             headers and key go only to --base-url): point --base-url where it redirects"
        ));
    }
    error
}

/// The reading of a stream that stopped before its end: answered, but its outcome is unknown
/// (the server may have finished and billed it), so it is retried like a timeout; the partial
/// answer is journaled.
fn cut_reading(
    status: u16,
    partial: Value,
    message: String,
    x_request_id: Option<String>,
    announced: Announced,
) -> Reading {
    let failure = TransportFailure::Cut;
    // The attempt row keeps what arrived (the request row's response is replaced by the next
    // attempt's): the text so far, as far as it can be read.
    let message = match crate::http::response::output_text(&partial) {
        Some(text) if !text.is_empty() => {
            format!("{message}; text so far: {}", head(text.as_bytes()))
        }
        Some(_) | None => message,
    };
    Reading {
        outcome: AttemptOutcome::OutcomeUnknown,
        http_status: Some(status),
        class: classify(Observation::Transport(failure)),
        error: ApiError::default(),
        error_code: Some(failure_code(failure).to_owned()),
        error_message: Some(message),
        x_request_id,
        response: (!partial.is_null()).then(|| partial.to_string().into()),
        usage: Usage::default(),
        wait: None,
        announced,
    }
}

/// Whether a stream ended by `data: [DONE]` without any of its choices finishing: OpenAI's
/// last content chunk always carries a `finish_reason`.
fn is_unfinished(assembled: &Assembled) -> bool {
    let choices = assembled
        .body
        .get("choices")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    assembled.end == StreamEnd::Done
        && assembled.error.is_none()
        && !choices.is_empty()
        && choices
            .iter()
            .all(|choice| choice.get("finish_reason").is_none_or(Value::is_null))
}

/// A stream that reached its end: the assembled body, or the error it ended with (journaled
/// inside the body assembled so far, the shape of a 2xx body carrying an `error`).
fn assembled_content(assembled: Assembled) -> Content {
    let Assembled {
        body,
        end: _,
        error,
    } = assembled;
    match (error, body) {
        (Some(error), body) => {
            let parsed = ApiError::parse(error.to_string().as_bytes());
            let journaled = match (body, error.get("error")) {
                (Value::Object(mut object), Some(inner)) => {
                    object.insert("error".to_owned(), inner.clone());
                    Value::Object(object)
                }
                (_, _) => error,
            };
            Content {
                payload: Payload::Error,
                error: parsed,
                response: Some(journaled.to_string().into()),
                unreadable: None,
                usage: None,
            }
        }
        (None, Value::Null) => Content {
            payload: Payload::Invalid,
            error: ApiError::default(),
            response: None,
            unreadable: Some((
                "invalid_stream",
                "the event stream ended without an answer in it".to_owned(),
            )),
            usage: None,
        },
        (None, body) => Content {
            payload: Payload::Whole,
            error: ApiError::default(),
            response: Some(body.to_string().into()),
            unreadable: None,
            usage: None,
        },
    }
}

/// A body as the journal's response: text in memory (see [`into_text`]), or its spool file.
fn into_response(body: Body) -> ResponseBody {
    match body {
        Body::Memory { bytes, held } => ResponseBody::Text {
            text: into_text(bytes),
            held,
        },
        Body::Spooled(SpooledBody { spooled, .. }) => ResponseBody::Spooled(spooled),
    }
}

/// A body as the journal's text: moved, not copied, when it is UTF-8 (every JSON answer is);
/// otherwise with each invalid sequence replaced, as `String::from_utf8_lossy` does.
fn into_text(body: Vec<u8>) -> String {
    String::from_utf8(body)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// The first bytes of a body, as text for a message.
fn head(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(INVALID_BODY_HEAD) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::spool::spooled_for_test;

    fn read_spooled(status: u16, bytes: &[u8]) -> Reading {
        let spooled = spooled_for_test(bytes);
        let examined = examine(status, &spooled).expect("examined");
        let answer = Answer {
            status,
            headers: HeaderMap::new(),
            body: Body::Spooled(SpooledBody { spooled, examined }),
            stream: None,
        };
        read(
            Sent::Answer(answer),
            SystemTime::now(),
            Duration::from_secs(1),
        )
    }

    fn read_in_memory(status: u16, bytes: &[u8]) -> Reading {
        let answer = Answer {
            status,
            headers: HeaderMap::new(),
            body: bytes.to_vec().into(),
            stream: None,
        };
        read(
            Sent::Answer(answer),
            SystemTime::now(),
            Duration::from_secs(1),
        )
    }

    /// A spooled answer reads as it would in memory, and stays spooled: its file becomes the
    /// journal's response.
    #[rstest::rstest]
    #[case::answer(
        200,
        r#"{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
    )]
    #[case::error_in_a_success(
        200,
        r#"{"error":{"message":"Missing scopes: x","code":"missing_scope"}}"#
    )]
    #[case::not_json(200, "<html>oops</html>")]
    #[case::server_error(500, r#"{"error":{"message":"boom","type":"server_error"}}"#)]
    #[case::not_json_error(502, "<html>bad gateway</html>")]
    fn a_spooled_answer_reads_as_it_would_in_memory(#[case] status: u16, #[case] body: &str) {
        let padded = format!("{body}{}", " ".repeat(100_000));
        let spooled = read_spooled(status, padded.as_bytes());
        let memory = read_in_memory(status, padded.as_bytes());
        assert_eq!(spooled.class, memory.class, "{body}");
        assert_eq!(spooled.usage, memory.usage, "{body}");
        assert_eq!(spooled.error, memory.error, "{body}");
        assert_eq!(spooled.error_code, memory.error_code, "{body}");
        assert_eq!(spooled.error_message, memory.error_message, "{body}");
        assert!(
            matches!(spooled.response, Some(ResponseBody::Spooled(ref s)) if s.text_len() == padded.len() as u64),
            "{:?}",
            spooled.response
        );
    }
}
