//! The lines of a hosted batch's output and error files, typed ([`BatchResult`]): each says
//! which input line (`custom_id`) it answers and how, an HTTP answer or a line-level error.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `error` of a Batch output line that is not an HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// e.g. `batch_expired`.
    #[serde(default)]
    pub code: Option<String>,
    /// What happened.
    #[serde(default)]
    pub message: Option<String>,
}

/// One line of a batch's output or error file, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchResult {
    /// The input line's `custom_id`: results come in no particular order, match by this.
    pub custom_id: String,
    /// `response.status_code`, when the line got an HTTP answer (errors included).
    pub status_code: Option<u16>,
    /// `response.body` (`Null` without a response).
    pub body: Value,
    /// `response.request_id`.
    pub request_id: Option<String>,
    /// `error`, for a failure that is not an HTTP answer.
    pub error: Option<LineError>,
}

/// Why an output line cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BatchResultError {
    /// Not JSON, or without a `custom_id`.
    #[error("batch output line {line} is not a result line: {message}")]
    Unreadable {
        /// 1-based line number in its file.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

impl BatchResult {
    /// Whether the line is a 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|s| (200..300).contains(&s))
    }

    /// Reads one line of an output or error file (`line` numbers it for the error). Tolerant:
    /// `response` and `error` may each be missing or `null`, and `status_code` may be a string.
    ///
    /// # Errors
    /// [`BatchResultError`] for a line that is not JSON or has no `custom_id`.
    pub fn parse(text: &str, line: u64) -> Result<BatchResult, BatchResultError> {
        #[derive(Deserialize)]
        struct Raw {
            custom_id: Option<String>,
            #[serde(default)]
            response: Option<RawResponse>,
            #[serde(default)]
            error: Option<LineError>,
        }
        #[derive(Deserialize)]
        struct RawResponse {
            #[serde(default)]
            status_code: Option<Value>,
            #[serde(default)]
            request_id: Option<String>,
            #[serde(default)]
            body: Value,
        }
        let unreadable = |message: String| BatchResultError::Unreadable { line, message };
        let raw: Raw = serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        let custom_id = raw
            .custom_id
            .ok_or_else(|| unreadable("it has no custom_id".to_owned()))?;
        let (status_code, request_id, body) = match raw.response {
            Some(response) => {
                let status = response.status_code.and_then(|v| match v {
                    Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                    Value::String(s) => s.trim().parse().ok(),
                    Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_) => None,
                });
                (status, response.request_id, response.body)
            }
            None => (None, None, Value::Null),
        };
        Ok(BatchResult {
            custom_id,
            status_code,
            body,
            request_id,
            error: raw.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::success(
        r#"{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"request_id":"req_1","body":{"ok":true}},"error":null}"#,
        Some(200),
        true
    )]
    #[case::http_error(
        r#"{"id":"batch_req_2","custom_id":"a","response":{"status_code":500,"request_id":"req_2","body":{"error":{"message":"x"}}},"error":null}"#,
        Some(500),
        false
    )]
    #[case::not_an_answer(
        r#"{"id":"batch_req_3","custom_id":"a","response":null,"error":{"code":"batch_expired","message":"expired"}}"#,
        None,
        false
    )]
    #[case::status_as_text(
        r#"{"custom_id":"a","response":{"status_code":"404","body":{}}}"#,
        Some(404),
        false
    )]
    fn reads_output_and_error_lines(
        #[case] line: &str,
        #[case] status: Option<u16>,
        #[case] succeeded: bool,
    ) {
        let result = BatchResult::parse(line, 1).unwrap();
        assert_eq!(result.custom_id, "a");
        assert_eq!(result.status_code, status);
        assert_eq!(result.succeeded(), succeeded);
    }

    #[rstest]
    #[case("not json")]
    #[case(r#"{"response":{"status_code":200}}"#)]
    fn refuses_what_is_not_a_result(#[case] line: &str) {
        let error = BatchResult::parse(line, 7).unwrap_err();
        assert!(error.to_string().contains("line 7"), "{error}");
    }
}
