//! Reading success bodies: usage and model (journaled per request) and the output text (exported).
//! Covers chat completions, the responses API, completions and embeddings (which have no text).
//! A body is read in memory or from its spool file alike ([`BodySource`]).

use std::io;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Usage;
use crate::http::classify::ApiError;
use crate::http::source::{BodySource, IsObject};

#[derive(Deserialize)]
struct Probe {
    model: Option<String>,
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    total_tokens: Option<i64>,
    prompt_tokens_details: Option<RawDetails>,
    input_tokens_details: Option<RawDetails>,
}

#[derive(Deserialize)]
struct RawDetails {
    cached_tokens: Option<i64>,
}

/// Parses a 2xx body. `None` when it is not a JSON object: the taxonomy calls that transient.
pub fn parse_success(body: &[u8]) -> Option<Usage> {
    let probe: Probe = serde_json::from_slice(body).ok()?;
    Some(usage_of(probe.model, probe.usage))
}

/// The journal's usage from a body's `model` and `usage`, in either API's names.
fn usage_of(model: Option<String>, usage: Option<RawUsage>) -> Usage {
    Usage {
        model,
        prompt_tokens: usage
            .as_ref()
            .and_then(|u| u.prompt_tokens.or(u.input_tokens)),
        completion_tokens: usage
            .as_ref()
            .and_then(|u| u.completion_tokens.or(u.output_tokens)),
        total_tokens: usage.as_ref().and_then(|u| u.total_tokens),
        cached_tokens: usage.as_ref().and_then(|u| {
            let details = u.prompt_tokens_details.as_ref();
            details
                .or(u.input_tokens_details.as_ref())
                .and_then(|d| d.cached_tokens)
        }),
    }
}

/// What a plain (not streamed) 2xx body turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuccessBody {
    /// A JSON object with a top-level `error` object: that error (see [`ApiError::in_success`]).
    Error(ApiError),
    /// A JSON object without one: the answer, with its usage (see [`parse_success`]).
    Answer(Usage),
    /// Not a JSON object.
    Invalid,
}

/// Reads a plain 2xx body: [`ApiError::in_success`] and then [`parse_success`], with the same
/// verdicts, in one pass over the body for the usual answer. This runs on every answer, and
/// the body (around a kilobyte for a chat completion) was scanned twice.
pub fn read_success(body: &[u8]) -> SuccessBody {
    // A body in memory always reads.
    read_success_in(body).unwrap_or(SuccessBody::Invalid)
}

/// [`read_success`] on a body in memory or spooled.
///
/// # Errors
/// The body could not be read (a spool file's I/O error).
pub fn read_success_in<S: BodySource + ?Sized>(body: &S) -> io::Result<SuccessBody> {
    #[derive(Deserialize)]
    struct Both {
        error: Option<IsObject>,
        model: Option<String>,
        usage: Option<RawUsage>,
    }
    // Reading the three fields at once succeeds exactly when both separate reads would: each
    // needs a JSON object, and each field's own shape. When it fails, one of them may still
    // succeed (an error object beside a `model` that is not a string): the separate reads decide.
    Ok(match body.parse::<Both>()? {
        Some(Both {
            error: Some(IsObject(true)),
            ..
        }) => SuccessBody::Error(ApiError::parse_in(body)?),
        Some(Both { model, usage, .. }) => SuccessBody::Answer(usage_of(model, usage)),
        None => match ApiError::in_success_in(body)? {
            Some(error) => SuccessBody::Error(error),
            None => body
                .parse::<Probe>()?
                .map_or(SuccessBody::Invalid, |probe| {
                    SuccessBody::Answer(usage_of(probe.model, probe.usage))
                }),
        },
    })
}

/// The generated text of a success body, or `None` (embeddings, moderations, unknown shapes).
///
/// Chat: `choices[0].message.content`; responses API: every `output[*].content[*].text` whose
/// type is `output_text`, joined; completions: `choices[0].text`.
pub fn output_text(body: &Value) -> Option<String> {
    if let Some(choice) = body.get("choices").and_then(|c| c.get(0)) {
        if let Some(content) = choice.get("message").and_then(|m| m.get("content")) {
            return content.as_str().map(str::to_owned);
        }
        if let Some(text) = choice.get("text").and_then(Value::as_str) {
            return Some(text.to_owned());
        }
    }
    if let Some(output) = body.get("output").and_then(Value::as_array) {
        let parts: Vec<&str> = output
            .iter()
            .filter_map(|item| item.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("output_text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect();
        if !parts.is_empty() {
            return Some(parts.concat());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_chat_usage_and_text() {
        let body = json!({"model":"gpt-4o-mini","choices":[{"message":{"role":"assistant","content":"hi"}}],
                          "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}});
        let usage = parse_success(body.to_string().as_bytes()).expect("parses");
        assert_eq!(
            usage,
            Usage {
                model: Some("gpt-4o-mini".into()),
                prompt_tokens: Some(3),
                completion_tokens: Some(1),
                total_tokens: Some(4),
                cached_tokens: None,
            }
        );
        assert_eq!(output_text(&body).as_deref(), Some("hi"));
        // The prompt cache's share of the prompt, billed at its own price.
        let cached = json!({"model":"gpt-5.1","usage":{"prompt_tokens":1200,"completion_tokens":90,
            "total_tokens":1290,"prompt_tokens_details":{"cached_tokens":1024},
            "completion_tokens_details":{"reasoning_tokens":64}}});
        let usage = parse_success(cached.to_string().as_bytes()).expect("parses");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens
            ),
            (Some(1200), Some(1024), Some(90))
        );
    }

    #[test]
    fn reads_responses_api_usage_and_text() {
        let body = json!({"model":"gpt-4.1","output":[
            {"type":"reasoning","summary":[]},
            {"type":"message","content":[{"type":"output_text","text":"a"},{"type":"refusal","refusal":"no"},{"type":"output_text","text":"b"}]}],
            "usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}});
        let usage = parse_success(body.to_string().as_bytes()).expect("parses");
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (Some(5), Some(2))
        );
        assert_eq!(output_text(&body).as_deref(), Some("ab"));
    }

    #[test]
    fn embeddings_have_usage_but_no_text() {
        let body = json!({"object":"list","data":[{"embedding":[0.1]}],"model":"text-embedding-3-small",
                          "usage":{"prompt_tokens":2,"total_tokens":2}});
        let usage = parse_success(body.to_string().as_bytes()).expect("parses");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (Some(2), None, Some(2))
        );
        assert_eq!(output_text(&body), None);
    }

    #[test]
    fn completions_text() {
        assert_eq!(
            output_text(&json!({"choices":[{"text":"t"}]})).as_deref(),
            Some("t")
        );
    }

    /// One pass gives what the two separate reads give, for every kind of body, including those
    /// where only one of them succeeds.
    #[rstest::rstest]
    #[case::answer(
        r#"{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
    )]
    #[case::answer_without_usage(r#"{"choices":[]}"#)]
    #[case::error_object(r#"{"error":{"code":"x","message":"m"}}"#)]
    #[case::null_error(r#"{"error":null,"model":"m"}"#)]
    #[case::string_error(r#"{"error":"x","model":"m"}"#)]
    #[case::error_beside_a_numeric_model(r#"{"error":{"code":"x"},"model":7}"#)]
    #[case::string_error_beside_a_numeric_model(r#"{"error":"x","model":7}"#)]
    #[case::duplicate_model(r#"{"model":"a","model":"b"}"#)]
    #[case::duplicate_error(r#"{"error":{"code":"x"},"error":{"code":"y"}}"#)]
    #[case::array("[1]")]
    #[case::html("<html>")]
    #[case::cut(r#"{"choices": ["#)]
    #[case::empty("")]
    fn reading_in_one_pass_agrees_with_the_two_reads(#[case] body: &str) {
        let two_reads = match ApiError::in_success(body.as_bytes()) {
            Some(error) => SuccessBody::Error(error),
            None => {
                parse_success(body.as_bytes()).map_or(SuccessBody::Invalid, SuccessBody::Answer)
            }
        };
        assert_eq!(read_success(body.as_bytes()), two_reads, "{body}");
        let spooled = crate::util::spool::spooled_for_test(body.as_bytes());
        assert_eq!(
            read_success_in(&spooled).expect("reads"),
            two_reads,
            "spooled: {body}"
        );
    }

    /// A spooled body is read in pieces, through runs of whitespace and long strings, with the
    /// verdicts a body in memory gets.
    #[rstest::rstest]
    #[case::padded_answer(
        r#"{"model":"m","choices":[{"message":{"content":"hi"}}]"#,
        r#","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
    )]
    #[case::long_string(r#"{"model":"m","choices":[{"message":{"content":""#, r#""}}]}"#)]
    #[case::padded_error(r#"{"error":{"message":"over","code":"x"}"#, "}")]
    #[case::escape_in_a_long_string(r#"{"model":"m","x":""#, r#"q"}"#)]
    #[case::cut(r#"{"model":"m","choices":[{"message":{"content":""#, "")]
    #[case::not_json("<html>", "</html>")]
    fn a_large_spooled_body_reads_as_it_would_in_memory(
        #[case] start: &str,
        #[case] end: &str,
        #[values(b' ', b'a', b'\n')] filler: u8,
    ) {
        let mut body = start.as_bytes().to_vec();
        body.extend(std::iter::repeat_n(filler, 300_000));
        body.extend_from_slice(end.as_bytes());
        let spooled = crate::util::spool::spooled_for_test(&body);
        assert_eq!(
            read_success_in(&spooled).expect("reads"),
            read_success(&body),
            "{start}…{end}"
        );
        assert_eq!(
            ApiError::parse_in(&spooled).expect("reads"),
            ApiError::parse(&body),
            "{start}…{end}"
        );
    }

    #[test]
    fn usage_is_read_from_a_spooled_answer_padded_past_the_budget() {
        let mut body = br#"{"model":"gpt-4o-mini","choices":[{"message":{"content":""#.to_vec();
        body.extend(std::iter::repeat_n(b'z', 2 * 1024 * 1024));
        body.extend_from_slice(br#""}}],"#);
        body.extend(std::iter::repeat_n(b' ', 2 * 1024 * 1024));
        body.extend_from_slice(
            br#""usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":4},"output_tokens":5,"total_tokens":12}}"#,
        );
        let spooled = crate::util::spool::spooled_for_test(&body);
        assert_eq!(
            read_success_in(&spooled).expect("reads"),
            SuccessBody::Answer(Usage {
                model: Some("gpt-4o-mini".into()),
                prompt_tokens: Some(7),
                completion_tokens: Some(5),
                total_tokens: Some(12),
                cached_tokens: Some(4),
            })
        );
    }

    #[test]
    fn rejects_non_json_success_bodies() {
        assert!(parse_success(b"{\"choices\": [").is_none());
        assert!(parse_success(b"<html>").is_none());
        assert!(parse_success(b"[1]").is_none());
    }
}
