//! The `prompt` column: the text a request asked, read back from its body.

use serde_json::Value;

/// The prompt of a request body: the last user message's content (chat), the `input` of a
/// Responses or embeddings request (its last user message's content when it is a list of
/// messages), the `prompt` of a legacy completion. Text parts of a content list are joined by
/// line breaks; other parts (images, audio) are left out. `None` for a body that holds none of
/// these (a line that was not a valid request has an empty body).
pub fn prompt_text(body: &str) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let body: Value = serde_json::from_str(body).ok()?;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        return last_user_content(messages);
    }
    if let Some(input) = body.get("input") {
        return match input {
            Value::Array(items) if items.iter().any(Value::is_object) => last_user_content(items),
            other => content_text(other),
        };
    }
    body.get("prompt").and_then(content_text)
}

/// The content of the last message whose role is `user` (a Responses input item without a
/// role is the user's).
fn last_user_content(messages: &[Value]) -> Option<String> {
    messages
        .iter()
        .rev()
        .find(|m| {
            m.get("role")
                .and_then(Value::as_str)
                .is_none_or(|role| role == "user")
        })
        .and_then(|m| m.get("content"))
        .and_then(content_text)
}

/// The text of a content value: a string, a list of strings, or a list of content parts whose
/// text parts are joined by line breaks.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|part| match part {
                    Value::String(text) => Some(text.as_str()),
                    Value::Object(part) => part.get("text").and_then(Value::as_str),
                    _ => None,
                })
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::prompt_text;

    #[rstest::rstest]
    #[case::chat_last_user(
        r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#,
        Some("c")
    )]
    #[case::chat_parts(
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"here"}]}]}"#,
        Some("look\nhere")
    )]
    #[case::responses_string(r#"{"model":"m","input":"hello"}"#, Some("hello"))]
    #[case::responses_items(
        r#"{"input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}]}"#,
        Some("hi")
    )]
    #[case::completions(r#"{"model":"m","prompt":"Once upon"}"#, Some("Once upon"))]
    #[case::embeddings_list(r#"{"input":["a","b"]}"#, Some("a\nb"))]
    #[case::no_prompt(r#"{"model":"m"}"#, None)]
    #[case::empty_body("", None)]
    #[case::not_json("{", None)]
    fn reads_the_prompt_of_each_endpoint(#[case] body: &str, #[case] expected: Option<&str>) {
        assert_eq!(prompt_text(body).as_deref(), expected);
    }
}
