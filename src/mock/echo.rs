//! Success bodies, derived from the request so a test can prove an output belongs to its input.
//!
//! Texts are `echo: <input text>`; token counts are what the API would count: the texts through
//! the model's tokenizer (tiktoken), a chat conversation framed as OpenAI's token-counting
//! cookbook frames it, an answer cut at the request's `max_tokens`. Ids are derived from the
//! body key and the attempt number.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::domain::tokens::{self, Encoding, PER_MESSAGE, PER_NAME, REPLY_PRIMING};

/// Model named in answers when the request names none.
pub(crate) const DEFAULT_MODEL: &str = "gpt-4o-mini";

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

/// A reply cut to the request's `max_completion_tokens`, `max_tokens` or `max_output_tokens`
/// tokens, as the API never answers past it, with its finish reason.
fn within_max_tokens(reply: String, body: &Value, encoding: Encoding) -> (String, &'static str) {
    let max = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_u64));
    match max.and_then(|max| tokens::truncate(&reply, max, encoding)) {
        Some(cut) => (cut, "length"),
        None => (reply, "stop"),
    }
}

/// The prompt tokens of a chat conversation: each message's role, name and content through the
/// tokenizer, plus its framing, plus the tokens that prime the reply.
fn conversation_tokens(messages: &[Value], encoding: Encoding) -> u64 {
    let field = |message: &Value, name: &str| {
        message
            .get(name)
            .and_then(Value::as_str)
            .map(|text| tokens::count(text, encoding))
    };
    messages
        .iter()
        .map(|message| {
            let content = tokens::count(&text_of(message.get("content")), encoding);
            let name = field(message, "name").map_or(0, |n| n + PER_NAME);
            PER_MESSAGE + field(message, "role").unwrap_or(0) + content + name
        })
        .sum::<u64>()
        + REPLY_PRIMING
}

fn chat(body: &Value, model: &str, key: &str, attempt: u64) -> Value {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let encoding = tokens::encoding_for(model);
    let prompt_tokens = conversation_tokens(messages, encoding);
    let last = messages
        .last()
        .map(|message| text_of(message.get("content")))
        .unwrap_or_default();
    let (reply, finish_reason) = within_max_tokens(format!("echo: {last}"), body, encoding);
    let completion_tokens = tokens::count(&reply, encoding);
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
    let encoding = tokens::encoding_for(model);
    let count = |text: &str| tokens::count(text, encoding);
    let instructions = text_of(body.get("instructions"));
    let (last, input_tokens) = match body.get("input") {
        Some(Value::Array(items)) => {
            let texts: Vec<String> = items.iter().map(item_text).collect();
            let roles = items
                .iter()
                .filter_map(|item| item.get("role").and_then(Value::as_str))
                .map(count)
                .sum::<u64>();
            let all = texts
                .iter()
                .map(|text| count(text) + PER_MESSAGE)
                .sum::<u64>();
            (texts.last().cloned().unwrap_or_default(), all + roles)
        }
        other => {
            let text = text_of(other);
            let tokens = count(&text);
            (text, tokens)
        }
    };
    let input_tokens = input_tokens + count(&instructions);
    let (reply, _) = within_max_tokens(format!("echo: {last}"), body, encoding);
    let output_tokens = count(&reply);
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
    let encoding = tokens::encoding_for(model);
    let prompt_tokens = items
        .iter()
        .map(|item| tokens::count(&text_of(Some(item)), encoding))
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
    let encoding = tokens::encoding_for(model);
    let count = |text: &str| tokens::count(text, encoding);
    let prompt_tokens = prompts.iter().map(|prompt| count(prompt)).sum::<u64>();
    let replies: Vec<(String, &str)> = prompts
        .iter()
        .map(|p| within_max_tokens(format!("echo: {p}"), body, encoding))
        .collect();
    let completion_tokens = replies.iter().map(|(reply, _)| count(reply)).sum::<u64>();
    let choices: Vec<Value> = replies
        .into_iter()
        .enumerate()
        .map(|(index, (text, finish_reason))| {
            json!({"text": text, "index": index, "logprobs": null, "finish_reason": finish_reason})
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
