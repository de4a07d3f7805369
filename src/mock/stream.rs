//! Streamed answers (`"stream": true`): the success body cut into `chat.completion.chunk` events
//! as OpenAI sends them, ending with `data: [DONE]`; with `stream_options.include_usage` one last
//! chunk carries `usage` and no choices.

use serde_json::{Value, json};

/// Whether the request asks for a streamed answer.
pub(crate) fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

/// Whether the request asks for the usage chunk.
fn wants_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

/// The `data:` payloads of a streamed chat answer whose non-streamed form is `completion`
/// (without the final `[DONE]`). `None` when `completion` is not a chat completion.
pub(crate) fn chat_chunks(request: &Value, completion: &Value) -> Option<Vec<String>> {
    let content = completion.pointer("/choices/0/message/content")?.as_str()?;
    let chunk = |choices: Value| {
        json!({
            "id": completion.get("id"),
            "object": "chat.completion.chunk",
            "created": completion.get("created"),
            "model": completion.get("model"),
            "system_fingerprint": null,
            "choices": choices,
        })
    };
    let mut events = vec![chunk(json!([{
        "index": 0,
        "delta": {"role": "assistant", "content": "", "refusal": null},
        "logprobs": null,
        "finish_reason": null,
    }]))];
    // Word by word, keeping the spaces: the pieces concatenate back to the whole text.
    for piece in content.split_inclusive(' ') {
        events.push(chunk(json!([{
            "index": 0,
            "delta": {"content": piece},
            "logprobs": null,
            "finish_reason": null,
        }])));
    }
    events.push(chunk(json!([{
        "index": 0,
        "delta": {},
        "logprobs": null,
        "finish_reason": "stop",
    }])));
    if wants_usage(request) {
        let mut last = chunk(json!([]));
        if let (Some(object), Some(usage)) = (last.as_object_mut(), completion.get("usage")) {
            object.insert("usage".to_owned(), usage.clone());
        }
        events.push(last);
    }
    Some(events.iter().map(Value::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::sse::StreamAssembler;

    #[test]
    fn chunks_assemble_back_into_the_completion() {
        let completion = json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"echo: a b c"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}});
        for include_usage in [false, true] {
            let request =
                json!({"stream": true, "stream_options": {"include_usage": include_usage}});
            let events = chat_chunks(&request, &completion).expect("chat");
            let mut assembler = StreamAssembler::new();
            for event in &events {
                assembler
                    .push(format!("data: {event}\n\n").as_bytes())
                    .expect("push");
            }
            assembler.push(b"data: [DONE]\n\n").expect("done");
            let assembled = assembler.finish().expect("whole");
            assert_eq!(assembled.text().as_deref(), Some("echo: a b c"));
            assert_eq!(
                assembled.body.get("usage").is_some_and(|u| !u.is_null()),
                include_usage,
                "{}",
                assembled.body
            );
        }
    }
}
