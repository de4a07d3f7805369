//! Reading success bodies: usage and model (journaled per request) and the output text (exported).
//! Covers chat completions, the responses API, completions and embeddings (which have no text).

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Usage;

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
    let usage = probe.usage;
    Some(Usage {
        model: probe.model,
        prompt_tokens: usage
            .as_ref()
            .and_then(|u| u.prompt_tokens.or(u.input_tokens)),
        completion_tokens: usage
            .as_ref()
            .and_then(|u| u.completion_tokens.or(u.output_tokens)),
        total_tokens: usage.as_ref().and_then(|u| u.total_tokens),
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

    #[test]
    fn rejects_non_json_success_bodies() {
        assert!(parse_success(b"{\"choices\": [").is_none());
        assert!(parse_success(b"<html>").is_none());
        assert!(parse_success(b"[1]").is_none());
    }
}
