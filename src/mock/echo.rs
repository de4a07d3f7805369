//! Success bodies, derived from the request so a test can prove an output belongs to its input.
//!
//! Texts are `echo: <input text>`; token counts are word counts plus small constants, so they are
//! deterministic; ids are derived from the body key and the attempt number.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Model named in answers when the request names none.
pub(crate) const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Tokens a chat request costs per message on top of its words, like OpenAI's message framing.
const TOKENS_PER_MESSAGE: u64 = 3;

/// Tokens every prompt costs on top of its messages (the assistant reply priming).
const PROMPT_OVERHEAD: u64 = 3;

/// Numbers in each mock embedding vector.
const EMBEDDING_DIMENSIONS: usize = 8;

/// The POST endpoints the mock answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/responses`
    Responses,
    /// `/v1/embeddings`
    Embeddings,
    /// `/v1/completions`
    Completions,
}

impl Endpoint {
    /// The endpoint's path, as a batch line's `url` names it.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// The model a request names, or [`DEFAULT_MODEL`].
pub(crate) fn model_of(body: &Value) -> &str {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
}

/// The success body for `body` on `endpoint`; `key` and `attempt` only feed the id.
pub(crate) fn success(endpoint: Endpoint, body: &Value, key: &str, attempt: u64) -> String {
    let model = model_of(body);
    let value = match endpoint {
        Endpoint::Chat => chat(body, model, key, attempt),
        Endpoint::Responses => responses(body, model, key, attempt),
        Endpoint::Embeddings => embeddings(body, model),
        Endpoint::Completions => completions(body, model, key, attempt),
    };
    value.to_string()
}

/// A chat reply cut to the request's `max_completion_tokens` (or `max_tokens`) words, as the
/// API never answers past it, with its finish reason.
fn within_max_tokens(reply: String, body: &Value) -> (String, &'static str) {
    let max = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_u64));
    match max {
        Some(max) if words(&reply) > max => {
            let cut: Vec<&str> = reply.split_whitespace().take(max as usize).collect();
            (cut.join(" "), "length")
        }
        Some(_) | None => (reply, "stop"),
    }
}

fn chat(body: &Value, model: &str, key: &str, attempt: u64) -> Value {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let prompt_tokens = messages
        .iter()
        .map(|message| words(&text_of(message.get("content"))) + TOKENS_PER_MESSAGE)
        .sum::<u64>()
        + PROMPT_OVERHEAD;
    let last = messages
        .last()
        .map(|message| text_of(message.get("content")))
        .unwrap_or_default();
    let (reply, finish_reason) = within_max_tokens(format!("echo: {last}"), body);
    let completion_tokens = words(&reply);
    json!({
        "id": format!("chatcmpl-{}", short_id(key, attempt, 24)),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
}

fn responses(body: &Value, model: &str, key: &str, attempt: u64) -> Value {
    let input = body.get("input");
    let (last, all_words) = match input {
        Some(Value::Array(items)) => {
            let texts: Vec<String> = items.iter().map(item_text).collect();
            let all = texts.iter().map(|text| words(text)).sum::<u64>();
            (texts.last().cloned().unwrap_or_default(), all)
        }
        other => {
            let text = text_of(other);
            let count = words(&text);
            (text, count)
        }
    };
    let reply = format!("echo: {last}");
    let input_tokens = all_words + PROMPT_OVERHEAD;
    let output_tokens = words(&reply);
    let id = short_id(key, attempt, 32);
    json!({
        "id": format!("resp_{id}"),
        "object": "response",
        "created_at": now(),
        "status": "completed",
        "model": model,
        "output": [{
            "type": "message",
            "id": format!("msg_{id}"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply, "annotations": []}],
        }],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    })
}

/// One embedding per input string when `input` is an array of strings, otherwise one for the
/// whole input (a string, or an array of token ids).
fn embeddings(body: &Value, model: &str) -> Value {
    let input = body.get("input").unwrap_or(&Value::Null);
    let items: Vec<&Value> = match input {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().collect()
        }
        other => vec![other],
    };
    let prompt_tokens = items
        .iter()
        .map(|item| words(&text_of(Some(item))))
        .sum::<u64>();
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            json!({"object": "embedding", "index": index, "embedding": vector(item)})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// One choice per prompt when `prompt` is an array of strings, otherwise one.
fn completions(body: &Value, model: &str, key: &str, attempt: u64) -> Value {
    let prompts: Vec<String> = match body.get("prompt") {
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().map(|item| text_of(Some(item))).collect()
        }
        other => vec![text_of(other)],
    };
    let prompt_tokens = prompts.iter().map(|prompt| words(prompt)).sum::<u64>();
    let replies: Vec<String> = prompts.iter().map(|p| format!("echo: {p}")).collect();
    let completion_tokens = replies.iter().map(|reply| words(reply)).sum::<u64>();
    let choices: Vec<Value> = replies
        .into_iter()
        .enumerate()
        .map(|(index, text)| {
            json!({"text": text, "index": index, "logprobs": null, "finish_reason": "stop"})
        })
        .collect();
    json!({
        "id": format!("cmpl-{}", short_id(key, attempt, 24)),
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
}

/// Text of a `content` value: a string as is, an array of parts as their `text` fields joined by
/// newlines, anything else empty.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(_) | None => String::new(),
    }
}

/// Text of one Responses API input item: a bare string, `content`, or `text`.
fn item_text(item: &Value) -> String {
    match item {
        Value::String(text) => text.clone(),
        other => text_of(other.get("content").or_else(|| other.get("text"))),
    }
}

fn words(text: &str) -> u64 {
    // A count of words in a request body always fits in u64.
    text.split_whitespace().count() as u64
}

/// Eight numbers in [-1, 1) derived from the input, so equal inputs get equal vectors.
fn vector(input: &Value) -> Vec<f64> {
    let hash = blake3::hash(input.to_string().as_bytes());
    hash.as_bytes()
        .chunks_exact(4)
        .take(EMBEDDING_DIMENSIONS)
        .map(|chunk| {
            let word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            f64::from(word) / f64::from(1u32 << 31) - 1.0
        })
        .collect()
}

/// `len` hex characters derived from the body key and attempt (len <= 64).
fn short_id(key: &str, attempt: u64, len: usize) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&attempt.to_le_bytes());
    hasher.update(key.as_bytes());
    let hex = hasher.finalize().to_hex();
    hex.as_str().chars().take(len).collect()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
