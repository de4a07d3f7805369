//! Reading success bodies: usage and model (journaled per request) and the output text (exported).
//! Covers chat completions, the responses API, completions and embeddings (which have no text).

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Usage;
use crate::http::classify::ApiError;

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
    #[derive(Deserialize)]
    struct Both {
        error: Option<Value>,
        model: Option<String>,
        usage: Option<RawUsage>,
    }
    // Reading the three fields at once succeeds exactly when both separate reads would: each
    // needs a JSON object, and each field's own shape. When it fails, one of them may still
    // succeed (an error object beside a `model` that is not a string): the separate reads decide.
    match serde_json::from_slice::<Both>(body) {
        Ok(Both { error, .. }) if error.as_ref().is_some_and(Value::is_object) => {
            SuccessBody::Error(ApiError::parse(body))
        }
        Ok(Both { model, usage, .. }) => SuccessBody::Answer(usage_of(model, usage)),
        Err(_) => match ApiError::in_success(body) {
            Some(error) => SuccessBody::Error(error),
            None => parse_success(body).map_or(SuccessBody::Invalid, SuccessBody::Answer),
        },
    }
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
                total_tokens: Some(4)
            }
        );
        assert_eq!(output_text(&body).as_deref(), Some("hi"));
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
    }

    #[test]
    fn rejects_non_json_success_bodies() {
        assert!(parse_success(b"{\"choices\": [").is_none());
        assert!(parse_success(b"<html>").is_none());
        assert!(parse_success(b"[1]").is_none());
    }
}
