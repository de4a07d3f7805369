//! Extra request headers: `--header 'Name: value'` (a job setting) and a Batch line's
//! `"headers": {…}` (an extension of the Batch format), checked when they are read, never when
//! they are sent. Secrets are refused: the key comes from the environment or a keys file only,
//! so that it never shows in `ps`, a shell history or an input file.

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Header names that carry the key: refused as extra headers (any case).
const SECRET_HEADERS: [&str; 2] = ["authorization", "api-key"];

/// The beta header the Assistants endpoints require.
const ASSISTANTS_BETA: (&str, &str) = ("openai-beta", "assistants=v2");

/// Why an extra header is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not `Name: value`.
    #[error("header '{0}' is not of the form 'Name: value'")]
    Form(String),
    /// The name has characters HTTP does not allow in a header name.
    #[error("header name '{0}' is not a valid HTTP header name: use letters, digits and '-'")]
    Name(String),
    /// The value has characters HTTP does not allow (control characters, newlines).
    #[error("the value of header '{0}' has characters that cannot be sent in an HTTP header")]
    Value(String),
    /// A header that carries the key.
    #[error(
        "header '{0}' carries the API key and is refused: set OPENAI_API_KEY (or AZURE_OPENAI_API_KEY) or use --keys-file, so that the key never shows in a command line or a file of requests"
    )]
    Secret(String),
    /// A line's `headers` is not an object of strings.
    #[error(
        "\"headers\" must be a JSON object of strings, e.g. {{\"OpenAI-Beta\": \"assistants=v2\"}}"
    )]
    NotStrings,
}

/// Checks one header: a valid name that is not a secret's, and a valid value. Returns the name
/// in lower case (HTTP header names are case-insensitive) and the value trimmed.
///
/// # Errors
/// [`HeaderError`] naming the header.
pub fn check(name: &str, value: &str) -> Result<(String, String), HeaderError> {
    let name = name.trim();
    let parsed =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::Name(name.to_owned()))?;
    if SECRET_HEADERS.contains(&parsed.as_str()) {
        return Err(HeaderError::Secret(name.to_owned()));
    }
    let value = value.trim();
    HeaderValue::from_str(value).map_err(|_| HeaderError::Value(name.to_owned()))?;
    Ok((parsed.as_str().to_owned(), value.to_owned()))
}

/// Parses a `--header 'Name: value'` flag.
///
/// # Errors
/// [`HeaderError`] when it is not `Name: value`, or [`check`] refuses it.
pub fn parse_flag(flag: &str) -> Result<(String, String), HeaderError> {
    let (name, value) = flag
        .split_once(':')
        .ok_or_else(|| HeaderError::Form(flag.to_owned()))?;
    check(name, value)
}

/// Checks a Batch line's `"headers"` object; returns its headers as a JSON object text with
/// lower-case names, ready to store.
///
/// # Errors
/// [`HeaderError`] for a value that is not a string or a header [`check`] refuses.
pub fn from_line(value: &Value) -> Result<String, HeaderError> {
    let Value::Object(object) = value else {
        return Err(HeaderError::NotStrings);
    };
    let mut checked = Map::new();
    for (name, value) in object {
        let Value::String(value) = value else {
            return Err(HeaderError::NotStrings);
        };
        let (name, value) = check(name, value)?;
        checked.insert(name, Value::String(value));
    }
    Ok(Value::Object(checked).to_string())
}

/// The headers one request is sent with: the job's, then the line's over them (same name:
/// the line wins), then `OpenAI-Beta: assistants=v2` for the Assistants endpoints unless a
/// header already names `OpenAI-Beta`. Stored line headers that no longer parse are skipped
/// (they were checked when the line was read).
pub fn for_request(
    job: &[(String, String)],
    line: Option<&str>,
    path: &str,
) -> Vec<(String, String)> {
    let over = over_job(job, line, path);
    let mut headers: Vec<(String, String)> = job
        .iter()
        .filter(|(name, _)| !over.iter().any(|(n, _)| n == name))
        .cloned()
        .collect();
    headers.extend(over);
    headers
}

/// What one request adds to the job's headers (which the client sends by default): the line's
/// own, and `OpenAI-Beta: assistants=v2` for the Assistants endpoints unless the job or the
/// line already names `OpenAI-Beta`. A header here replaces the job's of the same name. Empty,
/// without allocating, for a line without headers to a path that is not the Assistants'.
pub fn over_job(job: &[(String, String)], line: Option<&str>, path: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let line: Map<String, Value> = line
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    for (name, value) in line {
        if let Value::String(value) = value {
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
    }
    let assistants = ["/v1/assistants", "/v1/threads", "/assistants", "/threads"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    let named = |(n, _): &(String, String)| n == ASSISTANTS_BETA.0;
    if assistants && !headers.iter().any(named) && !job.iter().any(named) {
        headers.push((ASSISTANTS_BETA.0.to_owned(), ASSISTANTS_BETA.1.to_owned()));
    }
    headers
}

/// Merges run flags over stored settings: a flag replaces a stored header of the same name.
pub fn merge(stored: &[(String, String)], flags: &[(String, String)]) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = stored
        .iter()
        .filter(|(name, _)| !flags.iter().any(|(n, _)| n == name))
        .cloned()
        .collect();
    merged.extend(flags.iter().cloned());
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::plain("X-Trace: abc", Ok(("x-trace".into(), "abc".into())))]
    #[case::spaces("  OpenAI-Beta :  assistants=v2 ", Ok(("openai-beta".into(), "assistants=v2".into())))]
    #[case::colon_in_value("X-Url: http://a", Ok(("x-url".into(), "http://a".into())))]
    #[case::no_colon("X-Trace abc", Err(HeaderError::Form("X-Trace abc".into())))]
    #[case::bad_name("X Trace: a", Err(HeaderError::Name("X Trace".into())))]
    #[case::bad_value("X-Trace: a\u{7}b", Err(HeaderError::Value("X-Trace".into())))]
    #[case::authorization("authorization: Bearer sk-x", Err(HeaderError::Secret("authorization".into())))]
    #[case::authorization_any_case("AUTHORIZATION: x", Err(HeaderError::Secret("AUTHORIZATION".into())))]
    #[case::azure_key("Api-Key: x", Err(HeaderError::Secret("Api-Key".into())))]
    fn parses_header_flags(
        #[case] flag: &str,
        #[case] expected: Result<(String, String), HeaderError>,
    ) {
        assert_eq!(parse_flag(flag), expected);
    }

    #[test]
    fn secrets_are_refused_with_where_keys_belong() {
        let message = parse_flag("Authorization: Bearer x")
            .expect_err("refused")
            .to_string();
        assert!(message.contains("OPENAI_API_KEY"), "{message}");
    }

    #[rstest]
    #[case::object(r#"{"X-A":"1"}"#, Ok(r#"{"x-a":"1"}"#.to_owned()))]
    #[case::number(r#"{"X-A":1}"#, Err(HeaderError::NotStrings))]
    #[case::array(r#"["X-A"]"#, Err(HeaderError::NotStrings))]
    #[case::secret(r#"{"api-key":"k"}"#, Err(HeaderError::Secret("api-key".into())))]
    fn checks_line_headers(#[case] json: &str, #[case] expected: Result<String, HeaderError>) {
        let value: Value = serde_json::from_str(json).expect("json");
        assert_eq!(from_line(&value), expected);
    }

    #[test]
    fn line_headers_win_and_assistants_get_their_beta_header() {
        let job = vec![
            ("x-a".to_owned(), "job".to_owned()),
            ("x-b".to_owned(), "job".to_owned()),
        ];
        let headers = for_request(&job, Some(r#"{"x-a":"line"}"#), "/v1/threads/t/runs");
        assert_eq!(
            headers,
            [
                ("x-b".to_owned(), "job".to_owned()),
                ("x-a".to_owned(), "line".to_owned()),
                ("openai-beta".to_owned(), "assistants=v2".to_owned()),
            ]
        );
        let given = vec![("openai-beta".to_owned(), "assistants=v1".to_owned())];
        assert_eq!(for_request(&given, None, "/v1/assistants"), given);
        assert!(for_request(&[], None, "/v1/chat/completions").is_empty());
    }

    #[test]
    fn over_job_leaves_the_jobs_headers_to_the_client_and_keeps_the_beta_rule() {
        let job = vec![("x-a".to_owned(), "job".to_owned())];
        assert!(over_job(&job, None, "/v1/chat/completions").is_empty());
        assert_eq!(
            over_job(&job, Some(r#"{"x-a":"line"}"#), "/v1/threads"),
            [
                ("x-a".to_owned(), "line".to_owned()),
                ("openai-beta".to_owned(), "assistants=v2".to_owned()),
            ]
        );
        let beta = vec![("openai-beta".to_owned(), "assistants=v1".to_owned())];
        assert!(over_job(&beta, None, "/v1/assistants").is_empty());
    }

    #[test]
    fn a_run_flag_replaces_a_stored_header_of_the_same_name() {
        let stored = vec![
            ("x-a".to_owned(), "old".to_owned()),
            ("x-b".to_owned(), "kept".to_owned()),
        ];
        let flags = vec![("x-a".to_owned(), "new".to_owned())];
        assert_eq!(
            merge(&stored, &flags),
            [
                ("x-b".to_owned(), "kept".to_owned()),
                ("x-a".to_owned(), "new".to_owned())
            ]
        );
    }
}
