//! Chat completions and legacy completions chunks, merged choice by choice.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

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
pub(super) struct Choices {
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
    pub(super) fn new(first: &Map<String, Value>) -> Self {
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

    pub(super) fn apply(&mut self, chunk: Map<String, Value>) -> Result<(), &'static str> {
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

    pub(super) fn into_body(self) -> Value {
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
