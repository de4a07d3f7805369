//! JSONL lines: a Batch API line `{"custom_id", "method", "url", "body"}` or a plain request
//! body, parsed into a [`Prompt`].

use serde_json::{Map, Value};

use super::{CHAT_ENDPOINT, InputError, InputReader, Prompt, content_hash};

/// The endpoints whose requests name a model. `/v1/moderations` picks its own.
const MODEL_ENDPOINTS: [&str; 4] = [
    CHAT_ENDPOINT,
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

impl InputReader {
    /// Says once per file, when it is read into the job, that a line goes without a model.
    fn warn_no_model(&self) {
        if self.checking || self.warned_no_model.replace(true) {
            return;
        }
        crate::say!(
            "{}:{}: names no model and no --model was given: such lines are sent without one \
             (a server with one model takes them; pass --model if this one has several)",
            self.path.display(),
            self.line
        );
    }

    pub(super) fn parse_line(&self, raw: &[u8]) -> Result<Prompt, InputError> {
        let text = std::str::from_utf8(raw).map_err(|_| InputError::Utf8 {
            path: self.path.clone(),
            line: self.line,
        })?;
        let value: Value = serde_json::from_str(text).map_err(|parser| InputError::Json {
            path: self.path.clone(),
            line: self.line,
            parser,
        })?;
        let Value::Object(mut object) = value else {
            return Err(self.invalid(format!(
                "expected a JSON object, found {}",
                json_kind(&value)
            )));
        };
        let custom_id = match object.remove("custom_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            Some(Value::String(_)) => return Err(self.invalid("custom_id is empty")),
            Some(other) => {
                return Err(self.invalid(format!(
                    "custom_id must be a string, found {}",
                    json_kind(&other)
                )));
            }
        };
        // No request body of any OpenAI endpoint has these at the top level: any one of them
        // marks a Batch line, which must then have all three.
        let is_batch_line = ["method", "url", "body"]
            .iter()
            .any(|k| object.contains_key(*k));
        let (method, url, mut body, metadata, headers) = if is_batch_line {
            self.batch_parts(object)?
        } else {
            let metadata = object.remove("metadata").filter(|m| !m.is_null());
            let url = self.options.endpoint.clone();
            (Method::Post, url, object, metadata, None)
        };
        let metadata = metadata.map(|m| m.to_string());
        if method != Method::Post {
            // No body is sent: it is stored empty so that it cannot change the request's identity.
            let method = method.as_str().to_owned();
            let body_hash = content_hash(&method, &url, "");
            return Ok(Prompt {
                line: self.line,
                custom_id,
                method,
                url,
                body: String::new(),
                body_hash,
                metadata,
                headers,
            });
        }
        if self.options.model.is_none()
            && !body.contains_key("model")
            && MODEL_ENDPOINTS.contains(&url.as_str())
        {
            if self.options.model_required {
                return Err(self.invalid(
                    "names no model, and the server needs one: add \"model\" to the line, or pass \
                     --model, e.g. --model gpt-4o-mini",
                ));
            }
            self.warn_no_model();
        }
        if url == CHAT_ENDPOINT
            && !body.contains_key("messages")
            && let Some(prompt) = body.remove("prompt")
        {
            let Value::String(text) = prompt else {
                return Err(self.invalid("prompt must be a string"));
            };
            body.insert(
                "messages".into(),
                serde_json::json!([{"role": "user", "content": text}]),
            );
        }
        if let (Some(n), Some(field)) = (self.options.max_tokens, output_limit_field(&url))
            && !OUTPUT_LIMITS.iter().any(|k| body.contains_key(*k))
        {
            body.insert(field.into(), n.into());
        }
        let method = method.as_str().to_owned();
        // Writing the body out and hashing it cannot fail: a check has nothing to learn there.
        let (body, body_hash) = if self.checking {
            (String::new(), String::new())
        } else {
            self.finish_body(&method, &url, body)
        };
        Ok(Prompt {
            line: self.line,
            custom_id,
            method,
            url,
            body,
            body_hash,
            metadata,
            headers,
        })
    }

    /// Checks a Batch API line and returns its method, url, body, metadata and headers.
    fn batch_parts(&self, mut object: Map<String, Value>) -> Result<BatchParts, InputError> {
        let method = match object.remove("method") {
            Some(Value::String(m)) => match Method::parse(&m) {
                Some(method) => method,
                None => {
                    return Err(self.invalid(format!(
                        "method '{m}' is not supported: use POST, GET or DELETE"
                    )));
                }
            },
            Some(_) => return Err(self.invalid("method must be a string such as \"POST\"")),
            None => {
                return Err(self.invalid("batch line has no \"method\": add \"method\": \"POST\""));
            }
        };
        let url = match object.remove("url") {
            Some(Value::String(url)) if url.starts_with('/') => match not_plain(&url) {
                None => url,
                Some(problem) => {
                    return Err(self.invalid(format!(
                        "url '{}' {problem}: write it as sent, e.g. /v1/chat/completions",
                        crate::util::text::printable(&url)
                    )));
                }
            },
            Some(Value::String(url)) => {
                return Err(self.invalid(format!(
                    "url '{url}' must be a path such as /v1/chat/completions"
                )));
            }
            Some(_) => return Err(self.invalid("url must be a string")),
            None => return Err(self.invalid("batch line has no \"url\"")),
        };
        let metadata = match object.remove("metadata") {
            None | Some(Value::Null) => None,
            Some(metadata @ Value::Object(_)) => Some(metadata),
            Some(other) => {
                return Err(self.invalid(format!(
                    "metadata must be a JSON object, found {}",
                    json_kind(&other)
                )));
            }
        };
        let headers = match object.remove("headers") {
            None | Some(Value::Null) => None,
            Some(headers) => Some(
                crate::http::headers::from_line(&headers)
                    .map_err(|e| self.invalid(format!("headers: {e}")))?,
            ),
        };
        let body = match (object.remove("body"), method) {
            (Some(Value::Object(body)), Method::Post) => body,
            (None | Some(Value::Null), Method::Get | Method::Delete) => Map::new(),
            (Some(Value::Object(body)), Method::Get | Method::Delete) if body.is_empty() => body,
            (Some(_), Method::Get | Method::Delete) => {
                return Err(self.invalid(format!(
                    "a {} line sends no body: remove \"body\" (or leave it {{}}), or use POST",
                    method.as_str()
                )));
            }
            (Some(other), Method::Post) => {
                return Err(self.invalid(format!(
                    "body must be a JSON object, found {}",
                    json_kind(&other)
                )));
            }
            (None, Method::Post) => return Err(self.invalid("batch line has no \"body\"")),
        };
        // A body's own `metadata` (e.g. for stored chat completions) is sent as is, and also
        // kept as the request's metadata when the line has none of its own.
        let metadata = metadata.or_else(|| body.get("metadata").filter(|m| m.is_object()).cloned());
        Ok((method, url, body, metadata, headers))
    }
}

/// A Batch line's parts: method, url, body, metadata, checked headers (JSON text).
type BatchParts = (
    Method,
    String,
    Map<String, Value>,
    Option<Value>,
    Option<String>,
);

/// The methods a line may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Post,
    Get,
    Delete,
}

impl Method {
    /// Any case: `post`, `Get`.
    fn parse(text: &str) -> Option<Method> {
        [Method::Post, Method::Get, Method::Delete]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(text))
    }

    fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Get => "GET",
            Method::Delete => "DELETE",
        }
    }
}

/// The fields that limit a request's output: a line that has one keeps it (`--max-tokens` is
/// for the lines that have none).
const OUTPUT_LIMITS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// The field that `--max-tokens` sets in a body sent to `url`: `max_output_tokens` for the
/// Responses API, `max_tokens` for chat and legacy completions; none for the endpoints that
/// produce no text (embeddings, moderations, …), which would refuse it.
fn output_limit_field(url: &str) -> Option<&'static str> {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    if path.ends_with("/responses") {
        Some("max_output_tokens")
    } else if path.ends_with("/completions") {
        Some("max_tokens")
    } else {
        None
    }
}

/// The custom_id of a line that is not a valid request, if one can be read from it (see
/// [`InputReader::salvaged_custom_id`]).
pub(super) fn salvage_custom_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_start_matches('\u{feff}').trim();
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => match object.get("custom_id") {
            Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
            _ => None,
        },
        _ => scan_custom_id(text),
    }
}

/// Finds the first `"custom_id": "…"` in text that is not valid JSON, and decodes the string.
pub(super) fn scan_custom_id(text: &str) -> Option<String> {
    const NEEDLE: &str = "\"custom_id\"";
    let mut rest = text;
    while let Some(at) = rest.find(NEEDLE) {
        rest = &rest[at + NEEDLE.len()..];
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let value = value.trim_start();
        if !value.starts_with('"') {
            continue;
        }
        // The closing quote: the first `"` not escaped by a backslash.
        let bytes = value.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    return serde_json::from_str::<String>(&value[..=i])
                        .ok()
                        .filter(|id| !id.is_empty());
                }
                _ => i += 1,
            }
        }
        return None;
    }
    None
}

/// Why a Batch line's `url` is not a path to send as written, if it is not: the HTTP client
/// would percent-encode, drop or resolve what follows, and the line would go out changed (to
/// another endpoint, for a `..` that climbs out of the base URL's path).
fn not_plain(url: &str) -> Option<&'static str> {
    if url.chars().any(|c| !c.is_ascii_graphic()) {
        return Some(
            "holds a space, a control character or a non-ASCII character (percent-encode it)",
        );
    }
    if url.contains('#') {
        return Some("has a fragment (#…), which is never sent");
    }
    if url.contains('\\') {
        return Some("holds a backslash, which HTTP clients read as /");
    }
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some("has a . or .. segment, which would move the request to another path");
    }
    None
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
