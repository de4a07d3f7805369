//! Token cost of a request, for pacing (`--tpm`, the server's token limits) and the mock's
//! limits: prompt tokens counted with tiktoken (encoding chosen by
//! model) plus the output the request asks for.
//!
//! This is an estimate, as OpenAI's own limiter makes one: it counts the text the model reads
//! (message contents, inputs, prompts, instructions) with a small per-message overhead, and the
//! requested maximum output (`max_completion_tokens`, `max_tokens`, `max_output_tokens`), or a
//! configurable default when none is given.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens every chat message costs beyond the text of its role and content (the separators),
/// a name's one extra token, and the tokens that prime the reply: the figures of OpenAI's
/// token-counting cookbook for current models.
pub const PER_MESSAGE: u64 = 3;
/// See [`PER_MESSAGE`].
pub const PER_NAME: u64 = 1;
/// See [`PER_MESSAGE`].
pub const REPLY_PRIMING: u64 = 3;
/// A rough cost for an image part; the real one depends on size and detail.
const PER_IMAGE: u64 = 765;

/// The BPE encodings in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o-series, and unknown models (the documented fallback:
    /// current models use it, and for other servers' models any estimate is approximate).
    O200k,
    /// gpt-4, gpt-3.5, text-embedding-3, ada-002.
    Cl100k,
    /// No tokenizer: a token per 4 bytes. Loading a BPE costs about 40 MB of memory; what only
    /// needs a rough count (the line that opens a submit) counts this way.
    Bytes,
}

/// The encoding of `model`.
pub fn encoding_for(model: &str) -> Encoding {
    const CL100K: [&str; 4] = ["gpt-4-", "gpt-3.5", "text-embedding-", "davinci-002"];
    let legacy_gpt4 =
        model == "gpt-4" || (model.starts_with("gpt-4-") && !model.starts_with("gpt-4-o"));
    if legacy_gpt4 || CL100K.iter().any(|p| model.starts_with(p)) {
        Encoding::Cl100k
    } else {
        Encoding::O200k
    }
}

fn bpe(encoding: Encoding) -> Option<&'static CoreBPE> {
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    // The BPE files ship inside the crate; loading cannot fail short of a broken build, and
    // then the estimate falls back to bytes/4.
    match encoding {
        Encoding::O200k => O200K
            .get_or_init(|| tiktoken_rs::o200k_base().ok())
            .as_ref(),
        Encoding::Cl100k => CL100K
            .get_or_init(|| tiktoken_rs::cl100k_base().ok())
            .as_ref(),
        Encoding::Bytes => None,
    }
}

/// Tokens of `text` in `encoding`.
pub fn count(text: &str, encoding: Encoding) -> u64 {
    match bpe(encoding) {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// `text` cut to at most `max` tokens of `encoding`, at a character boundary; `None` when it
/// is already within.
pub fn truncate(text: &str, max: u64, encoding: Encoding) -> Option<String> {
    let Some(bpe) = bpe(encoding) else {
        let bytes = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        let end = (0..=bytes.min(text.len()))
            .rev()
            .find(|i| text.is_char_boundary(*i))?;
        return (end < text.len()).then(|| text[..end].to_owned());
    };
    let ids = bpe.encode_ordinary(text);
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if ids.len() <= max {
        return None;
    }
    // A token can end inside a character: drop tokens until the rest decodes.
    (0..=max)
        .rev()
        .find_map(|keep| bpe.decode(&ids[..keep]).ok())
}

/// A request's token cost as the API counts it at admission: the prompt, plus the most output
/// it may produce (times `n` choices).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Prompt tokens, counted with the model's encoding.
    pub prompt: u64,
    /// The output the request asks for at most (`max_completion_tokens`, `max_tokens`,
    /// `max_output_tokens`, else `default_output`), times `n`; 0 for embeddings and moderations.
    pub output: u64,
}

impl Cost {
    /// Prompt plus maximum output.
    pub fn total(self) -> u64 {
        self.prompt.saturating_add(self.output)
    }
}

/// The token cost of a request body sent to `url` (see [`Cost`]).
pub fn cost(url: &str, body: &Value, default_output: u64) -> Cost {
    let encoding = encoding_for(body.get("model").and_then(Value::as_str).unwrap_or(""));
    cost_in(url, body, default_output, encoding)
}

/// [`cost`] with the prompt counted at a token per 4 bytes, without loading a tokenizer.
pub fn cost_by_size(url: &str, body: &Value, default_output: u64) -> Cost {
    cost_in(url, body, default_output, Encoding::Bytes)
}

fn cost_in(url: &str, body: &Value, default_output: u64, encoding: Encoding) -> Cost {
    let prompt = prompt_tokens(url, body, encoding);
    let output = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_u64));
    let choices = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    let output = if url.ends_with("/embeddings") || url.ends_with("/moderations") {
        0
    } else {
        output.unwrap_or(default_output).saturating_mul(choices)
    };
    Cost { prompt, output }
}

/// The estimated token cost of a request body sent to `url`: prompt plus requested output.
pub fn estimate(url: &str, body: &Value, default_output: u64) -> u64 {
    cost(url, body, default_output).total()
}

fn prompt_tokens(url: &str, body: &Value, encoding: Encoding) -> u64 {
    let text = |value: &Value| content_tokens(value, encoding);
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let per_message: u64 = messages
            .iter()
            .map(|m| {
                let name = m.get("name").map_or(0, |name| PER_NAME + text(name));
                PER_MESSAGE
                    + m.get("role").map_or(0, text)
                    + m.get("content").map_or(0, text)
                    + name
            })
            .sum();
        return per_message + REPLY_PRIMING;
    }
    if url.ends_with("/responses") {
        let instructions = body.get("instructions").map_or(0, text);
        let input = match body.get("input") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let role = item.get("role").map_or(0, text);
                    PER_MESSAGE + role + item.get("content").map_or_else(|| text(item), text)
                })
                .sum(),
            Some(other) => text(other),
            None => 0,
        };
        return instructions + input;
    }
    let field = body.get("input").or_else(|| body.get("prompt"));
    field.map_or_else(|| count(&body.to_string(), encoding), text)
}

/// Tokens of a content value: a string, an array of strings or token ids, or of content parts.
fn content_tokens(value: &Value, encoding: Encoding) -> u64 {
    match value {
        Value::String(s) => count(s, encoding),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => count(s, encoding),
                // A pre-tokenized input: one token each.
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len() as u64,
                Value::Object(part) => match part.get("text").and_then(Value::as_str) {
                    Some(s) => count(s, encoding),
                    None if part.contains_key("image_url") || part.contains_key("image") => {
                        PER_IMAGE
                    }
                    None => 0,
                },
                Value::Null | Value::Bool(_) => 0,
            })
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case("gpt-4o-mini", Encoding::O200k)]
    #[case("gpt-4.1", Encoding::O200k)]
    #[case("gpt-5-mini", Encoding::O200k)]
    #[case("o3", Encoding::O200k)]
    #[case("o4-mini", Encoding::O200k)]
    #[case("gpt-4", Encoding::Cl100k)]
    #[case("gpt-4-turbo", Encoding::Cl100k)]
    #[case("gpt-3.5-turbo", Encoding::Cl100k)]
    #[case("text-embedding-3-small", Encoding::Cl100k)]
    #[case("meta-llama/Llama-3.1-8B", Encoding::O200k)]
    fn chooses_the_encoding_by_model(#[case] model: &str, #[case] expected: Encoding) {
        assert_eq!(encoding_for(model), expected);
    }

    #[test]
    fn truncates_to_a_token_count_at_a_character_boundary() {
        let text = "echo: the parcel arrived late, 配送が早い and crushed";
        assert_eq!(truncate(text, 1_000, Encoding::O200k), None, "within");
        for max in 0..count(text, Encoding::O200k) {
            let cut = truncate(text, max, Encoding::O200k).expect("cut");
            assert!(text.starts_with(&cut), "{cut}");
            assert!(count(&cut, Encoding::O200k) <= max, "{max}: {cut}");
        }
    }

    #[test]
    fn counts_with_the_real_encodings() {
        // Known counts: "hello world" is two tokens in both encodings.
        assert_eq!(count("hello world", Encoding::O200k), 2);
        assert_eq!(count("hello world", Encoding::Cl100k), 2);
        assert!(count(&"word ".repeat(1000), Encoding::O200k) >= 1000);
    }

    #[test]
    fn chat_cost_is_messages_plus_overhead_plus_requested_output() {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 100,
            "messages": [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"}]});
        assert_eq!(
            estimate("/v1/chat/completions", &body, 999),
            2 * (3 + 1 + 2) + 3 + 100
        );
        let no_max = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]});
        assert_eq!(
            estimate("/v1/chat/completions", &no_max, 50),
            3 + 1 + 2 + 3 + 50
        );
    }

    #[test]
    fn responses_embeddings_and_completions() {
        let responses = json!({"model": "gpt-4.1", "input": "hello world", "instructions": "hello world", "max_output_tokens": 10});
        assert_eq!(estimate("/v1/responses", &responses, 0), 2 + 2 + 10);
        let embeddings =
            json!({"model": "text-embedding-3-small", "input": ["hello world", "hello world"]});
        assert_eq!(
            estimate("/v1/embeddings", &embeddings, 500),
            4,
            "embeddings produce no output tokens"
        );
        let completions =
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "hello world", "max_tokens": 5});
        assert_eq!(estimate("/v1/completions", &completions, 0), 7);
        let two = json!({"model": "gpt-4o-mini", "n": 2, "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello world"}]});
        assert_eq!(
            cost("/v1/chat/completions", &two, 0),
            Cost {
                prompt: 3 + 1 + 2 + 3,
                output: 200
            },
            "n choices: n times the output"
        );
        let parts = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hello world"}, {"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert_eq!(
            estimate("/v1/chat/completions", &parts, 0),
            3 + 1 + 2 + PER_IMAGE + 3
        );
    }
}
