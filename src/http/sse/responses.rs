//! The responses API's events, applied to the `response` object they build.

use serde_json::{Map, Value};

use super::StreamEnd;

/// Applies one responses API event; returns the end marker when it is a terminal one.
///
/// Only the terminal event's `response` is the answer; the deltas before it are kept so that a
/// cut stream still shows what arrived. Events not handled here (reasoning summaries, tool
/// progress, annotations) are covered by `response.output_item.done`, which repeats the item.
pub(super) fn apply_response_event(
    response: &mut Map<String, Value>,
    kind: &str,
    mut event: Map<String, Value>,
) -> Result<Option<StreamEnd>, &'static str> {
    let end = match kind {
        "response.completed" => Some(StreamEnd::Completed),
        "response.incomplete" => Some(StreamEnd::Incomplete),
        "response.failed" => Some(StreamEnd::Failed),
        _ => None,
    };
    let index = |key: &str| {
        event
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
    };
    let (output_index, content_index) = (index("output_index"), index("content_index"));
    match kind {
        "response.created"
        | "response.queued"
        | "response.in_progress"
        | "response.completed"
        | "response.incomplete"
        | "response.failed" => {
            let Some(Value::Object(mut update)) = event.remove("response") else {
                return Err("the event has no response object");
            };
            if end.is_none() {
                // Status updates repeat the response without the output streamed so far.
                if let Some(output) = response.remove("output") {
                    update.insert("output".to_owned(), output);
                }
            }
            *response = update;
        }
        "response.output_item.added" | "response.output_item.done" => {
            let (Some(item), Some(i)) = (event.remove("item"), output_index) else {
                return Err("the event has no item or output_index");
            };
            *slot(output_array(response), i) = item;
        }
        "response.content_part.added" | "response.content_part.done" => {
            let (Some(part), Some(i), Some(j)) =
                (event.remove("part"), output_index, content_index)
            else {
                return Err("the event has no part, output_index or content_index");
            };
            *slot(content_array(output_array(response), i), j) = part;
        }
        "response.output_text.delta"
        | "response.output_text.done"
        | "response.refusal.delta"
        | "response.refusal.done" => {
            let (Some(i), Some(j)) = (output_index, content_index) else {
                return Err("the event has no output_index or content_index");
            };
            let (field, part_type, piece) = match kind {
                "response.output_text.delta" => ("text", "output_text", event.remove("delta")),
                "response.output_text.done" => ("text", "output_text", event.remove("text")),
                "response.refusal.delta" => ("refusal", "refusal", event.remove("delta")),
                _ => ("refusal", "refusal", event.remove("refusal")),
            };
            let part = slot(content_array(output_array(response), i), j);
            if part.is_null() {
                *part = serde_json::json!({ "type": part_type, field: "" });
            }
            if let (Some(part), Some(Value::String(piece))) = (part.as_object_mut(), piece) {
                set_or_append(part, field, piece, kind.ends_with(".delta"));
            }
        }
        "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
            let Some(i) = output_index else {
                return Err("the event has no output_index");
            };
            let is_delta = kind.ends_with(".delta");
            let piece = event.remove(if is_delta { "delta" } else { "arguments" });
            let item = slot(output_array(response), i);
            if item.is_null() {
                *item = serde_json::json!({ "type": "function_call", "arguments": "" });
            }
            if let (Some(item), Some(Value::String(piece))) = (item.as_object_mut(), piece) {
                set_or_append(item, "arguments", piece, is_delta);
            }
        }
        _ => {}
    }
    Ok(end)
}

fn set_or_append(object: &mut Map<String, Value>, field: &str, piece: String, append: bool) {
    match object.get_mut(field) {
        Some(Value::String(text)) if append => text.push_str(&piece),
        _ => {
            object.insert(field.to_owned(), Value::String(piece));
        }
    }
}

/// The response's `output` array, made one if it is missing.
fn output_array(response: &mut Map<String, Value>) -> &mut Vec<Value> {
    array_field(response, "output")
}

/// The `content` array of output item `i`, made (with an assistant message) if missing.
fn content_array(output: &mut Vec<Value>, i: usize) -> &mut Vec<Value> {
    let item = slot(output, i);
    if !item.is_object() {
        *item = serde_json::json!({ "type": "message", "role": "assistant", "content": [] });
    }
    match item {
        Value::Object(item) => array_field(item, "content"),
        // Invariant: `item` was made an object just above.
        _ => unreachable!("output item is an object"),
    }
}

fn array_field<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let value = object
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !value.is_array() {
        *value = Value::Array(Vec::new());
    }
    match value {
        Value::Array(items) => items,
        // Invariant: `value` was made an array just above.
        _ => unreachable!("field is an array"),
    }
}

/// Element `i` of `items`, `Null` when new. An index past the end is appended rather than
/// padded to: a server's index must not decide how much memory is taken, and only the partial
/// answer of a cut stream (the terminal event replaces it all) can be off.
fn slot(items: &mut Vec<Value>, i: usize) -> &mut Value {
    let i = if i < items.len() {
        i
    } else {
        items.push(Value::Null);
        items.len() - 1
    };
    // In bounds: `i` is below the length, or the index of the element just pushed.
    &mut items[i]
}
