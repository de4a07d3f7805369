//! The error taxonomy: what one attempt's result means for its request and for the job.
//!
//! Everything the runner decides about a failure starts from [`classify`], one function over the
//! HTTP status, the error body's `code`, `type` and `message`, and the `x-should-retry` header. Its
//! match arms are the table of docs/error-taxonomy.md, row for row: change one, change the other.

use std::io;

use serde::Deserialize;

use super::source::{BodySource, IsObject};
pub use crate::domain::{Class, StopCause};

/// How an attempt failed to produce an HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// The connection was never made: the server cannot have seen the request.
    Connect,
    /// The request may have been sent and is not answered in time: the server may have done the work.
    Timeout,
    /// Reset, broken body, protocol error after the request may have been sent.
    Other,
    /// An event stream (`"stream": true`) stopped before its end marker: the server may have
    /// finished (and billed) the request.
    Cut,
}

impl TransportFailure {
    /// Whether the server may have processed the request ("outcome unknown" in the journal).
    pub fn outcome_unknown(self) -> bool {
        match self {
            TransportFailure::Connect => false,
            TransportFailure::Timeout | TransportFailure::Other | TransportFailure::Cut => true,
        }
    }
}

/// The parts of an OpenAI error body the taxonomy looks at:
/// `{"error": {"message": …, "type": …, "param": …, "code": …}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiError {
    /// `error.code`, e.g. `missing_scope`, `invalid_api_key`, `insufficient_quota`.
    pub code: Option<String>,
    /// `error.type`, e.g. `invalid_request_error`, `requests`, `insufficient_quota`.
    pub kind: Option<String>,
    /// `error.message`, or the raw body (trimmed) when it is not an OpenAI error object.
    pub message: Option<String>,
}

/// Longest error message kept from a body that is not an OpenAI error object.
const MAX_RAW_MESSAGE: usize = 500;

impl ApiError {
    /// Reads an error body. Never fails: a body that is not the OpenAI shape becomes the message.
    pub fn parse(body: &[u8]) -> ApiError {
        // A body in memory always reads.
        ApiError::parse_in(body).unwrap_or_default()
    }

    /// [`ApiError::parse`] on a body in memory or spooled.
    ///
    /// # Errors
    /// The body could not be read (a spool file's I/O error).
    pub fn parse_in<S: BodySource + ?Sized>(body: &S) -> io::Result<ApiError> {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: Option<serde_json::Value>,
            #[serde(rename = "type")]
            kind: Option<String>,
            message: Option<String>,
        }
        Ok(match body.parse::<Envelope>()? {
            Some(Envelope { error }) => ApiError {
                // Some servers send numeric codes; keep them as text.
                code: error.code.and_then(|c| match c {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                }),
                kind: error.kind,
                message: error.message,
            },
            None => {
                let (head, more) = body.trimmed_head(MAX_RAW_MESSAGE)?;
                ApiError {
                    code: None,
                    kind: None,
                    message: match (head.is_empty(), more) {
                        (true, _) => None,
                        (false, true) => Some(format!("{head}…")),
                        (false, false) => Some(head),
                    },
                }
            }
        })
    }

    /// Reads the `error` object of a 2xx body, if it has one: `{"error": {...}}` at the top level.
    /// A body without one (any success body, or one that is not JSON) gives `None`.
    pub fn in_success(body: &[u8]) -> Option<ApiError> {
        // A body in memory always reads.
        ApiError::in_success_in(body).ok().flatten()
    }

    /// [`ApiError::in_success`] on a body in memory or spooled.
    ///
    /// # Errors
    /// The body could not be read (a spool file's I/O error).
    pub fn in_success_in<S: BodySource + ?Sized>(body: &S) -> io::Result<Option<ApiError>> {
        // Only the `error` field is read, and not even built (see `IsObject`); the rest of a
        // (large) success body is skipped: this runs on every 2xx answer.
        #[derive(Deserialize)]
        struct Probe {
            error: Option<IsObject>,
        }
        match body.parse::<Probe>()? {
            Some(Probe {
                error: Some(IsObject(true)),
            }) => ApiError::parse_in(body).map(Some),
            Some(_) | None => Ok(None),
        }
    }

    fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    fn kind_is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }

    fn message_contains(&self, needle: &str) -> bool {
        self.message.as_deref().is_some_and(|m| m.contains(needle))
    }

    /// The intermittent-permission 401 of the April 2026 incident, in every form seen.
    fn is_scope_flap(&self) -> bool {
        self.code_is("missing_scope")
            || self.message_contains("Missing scopes")
            || self.message_contains("RBAC: access denied")
    }

    fn is_quota(&self) -> bool {
        self.code_is("insufficient_quota") || self.kind_is("insufficient_quota")
    }

    /// A request bigger than the whole per-minute budget: waiting cannot help.
    fn is_too_large(&self) -> bool {
        self.message_contains("Request too large")
    }
}

/// What a 2xx answer's body turned out to be. (Other statuses are read by their error body.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A JSON object without a top-level `error`, or a complete event stream: the answer.
    Whole,
    /// A JSON object with a top-level `error` object, or a stream that ended with an error event:
    /// the observation's `error` holds it.
    Error,
    /// Neither JSON nor a complete event stream.
    Invalid,
}

/// What one attempt produced, as far as the taxonomy cares.
#[derive(Clone, Copy, Debug)]
pub enum Observation<'a> {
    /// The server answered.
    Answer {
        /// HTTP status code.
        status: u16,
        /// The parsed error body (for a 2xx: the `error` object it carries, if any).
        error: &'a ApiError,
        /// For a 2xx: what the body is.
        payload: Payload,
        /// The `x-should-retry` header, when present and `true` or `false`.
        should_retry: Option<bool>,
    },
    /// No answer.
    Transport(TransportFailure),
}

/// Classifies one attempt. This is the whole taxonomy: the table of docs/error-taxonomy.md
/// mirrors these arms.
pub fn classify(observation: Observation<'_>) -> Class {
    match observation {
        Observation::Transport(
            TransportFailure::Connect
            | TransportFailure::Timeout
            | TransportFailure::Other
            | TransportFailure::Cut,
        ) => Class::Transient,
        Observation::Answer {
            status,
            error,
            payload,
            should_retry,
        } => {
            let by_status = classify_status(status, error, payload);
            apply_should_retry(by_status, should_retry)
        }
    }
}

fn classify_status(status: u16, error: &ApiError, payload: Payload) -> Class {
    match status {
        200..=299 if payload == Payload::Whole => Class::Succeeded,
        200..=299 if payload == Payload::Invalid => Class::InvalidResponse,
        // A 2xx carrying an error (a proxy that answers 200 with the upstream error, or an error
        // event inside a stream): the error's own words decide, as they would under its status.
        200..=299 if error.is_scope_flap() => Class::AuthTransient,
        200..=299 if error.code_is("invalid_api_key") => Class::JobStop(StopCause::KeyRejected),
        200..=299 if error.is_quota() => Class::JobStop(StopCause::Quota),
        200..=299 if error.is_too_large() => Class::RequestFailed,
        200..=299 if error.code_is("rate_limit_exceeded") => Class::RateLimited,
        200..=299 if error.kind_is("invalid_request_error") => Class::RequestFailed,
        200..=299 => Class::Transient,
        401 | 403 if error.is_scope_flap() => Class::AuthTransient,
        401 => Class::JobStop(StopCause::KeyRejected),
        403 => Class::JobStop(StopCause::Forbidden),
        408 | 409 => Class::Transient,
        429 if error.is_quota() => Class::JobStop(StopCause::Quota),
        429 if error.is_too_large() => Class::RequestFailed,
        429 => Class::RateLimited,
        400..=499 => Class::RequestFailed,
        500..=599 => Class::Transient,
        // 1xx that reached us, redirects reqwest did not follow, nonsense codes: nothing to retry.
        0..=199 | 300..=399 | 600..=u16::MAX => Class::RequestFailed,
    }
}

/// `x-should-retry` is the server's own word and overrides the status rules, except that it
/// cannot turn a success into a failure nor a job-level stop into a retry, and an invalid 2xx
/// body keeps its own one-retry rule.
fn apply_should_retry(class: Class, should_retry: Option<bool>) -> Class {
    match (class, should_retry) {
        (Class::Succeeded | Class::JobStop(_) | Class::InvalidResponse, _) | (_, None) => class,
        (Class::RequestFailed, Some(true)) => Class::Transient,
        (Class::Transient | Class::AuthTransient | Class::RateLimited, Some(false)) => {
            Class::RequestFailed
        }
        (Class::Transient | Class::AuthTransient | Class::RateLimited, Some(true))
        | (Class::RequestFailed, Some(false)) => class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const MISSING_SCOPE: &str = r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: model.request. Check that you have the correct role in your organization.","type":"invalid_request_error","param":null,"code":"missing_scope"}}"#;
    const MISSING_SCOPE_NULL_CODE: &str = r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: api.responses.write.","type":"invalid_request_error","param":null,"code":null}}"#;
    const INVALID_KEY: &str = r#"{"error":{"message":"Incorrect API key provided: sk-abc***def.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    const RATE_LIMIT: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const TOO_LARGE: &str = r#"{"error":{"message":"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 45000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const QUOTA_OLD: &str = r#"{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":null}}"#;
    const MODEL_NOT_FOUND: &str = r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    const SERVER_ERROR: &str = r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#;

    fn answer(status: u16, body: &str) -> Class {
        let error = ApiError::parse(body.as_bytes());
        classify(Observation::Answer {
            status,
            error: &error,
            payload: Payload::Whole,
            should_retry: None,
        })
    }

    fn in_success(status: u16, body: &str) -> Class {
        let error = ApiError::in_success(body.as_bytes()).unwrap_or_default();
        classify(Observation::Answer {
            status,
            error: &error,
            payload: Payload::Error,
            should_retry: None,
        })
    }

    #[rstest]
    #[case::ok(200, "{}", Class::Succeeded)]
    #[case::missing_scope(401, MISSING_SCOPE, Class::AuthTransient)]
    #[case::missing_scope_null_code(401, MISSING_SCOPE_NULL_CODE, Class::AuthTransient)]
    #[case::rbac_plain_text(401, "RBAC: access denied", Class::AuthTransient)]
    #[case::invalid_key(401, INVALID_KEY, Class::JobStop(StopCause::KeyRejected))]
    #[case::forbidden_missing_scope(403, MISSING_SCOPE, Class::AuthTransient)]
    #[case::forbidden_missing_scopes_text(
        403,
        "Missing scopes: api.batch.read",
        Class::AuthTransient
    )]
    #[case::forbidden_rbac(403, "RBAC: access denied", Class::AuthTransient)]
    #[case::forbidden(403, r#"{"error":{"message":"Country, region, or territory not supported","type":"request_forbidden","param":null,"code":"unsupported_country_region_territory"}}"#, Class::JobStop(StopCause::Forbidden))]
    #[case::bad_request(
        400,
        r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#,
        Class::RequestFailed
    )]
    #[case::not_found(404, MODEL_NOT_FOUND, Class::RequestFailed)]
    #[case::unprocessable(422, "{}", Class::RequestFailed)]
    #[case::timeout_status(408, "", Class::Transient)]
    #[case::conflict(409, "", Class::Transient)]
    #[case::rate_limited(429, RATE_LIMIT, Class::RateLimited)]
    #[case::too_large(429, TOO_LARGE, Class::RequestFailed)]
    #[case::quota(429, QUOTA, Class::JobStop(StopCause::Quota))]
    #[case::quota_old_form(429, QUOTA_OLD, Class::JobStop(StopCause::Quota))]
    #[case::server_error(500, SERVER_ERROR, Class::Transient)]
    #[case::bad_gateway(502, "<html>bad gateway</html>", Class::Transient)]
    #[case::overloaded(503, "The engine is currently overloaded", Class::Transient)]
    #[case::redirect(302, "", Class::RequestFailed)]
    fn classifies_answers(#[case] status: u16, #[case] body: &str, #[case] expected: Class) {
        assert_eq!(answer(status, body), expected);
    }

    #[test]
    fn unparseable_success_is_an_invalid_response() {
        let error = ApiError::default();
        let class = classify(Observation::Answer {
            status: 200,
            error: &error,
            payload: Payload::Invalid,
            should_retry: Some(true),
        });
        assert_eq!(class, Class::InvalidResponse);
    }

    /// A 2xx with an error object is classified by the error, as under its own status.
    #[rstest]
    #[case::missing_scope(200, MISSING_SCOPE, Class::AuthTransient)]
    #[case::rbac(
        200,
        r#"{"error":{"message":"RBAC: access denied"}}"#,
        Class::AuthTransient
    )]
    #[case::invalid_key(200, INVALID_KEY, Class::JobStop(StopCause::KeyRejected))]
    #[case::quota(200, QUOTA, Class::JobStop(StopCause::Quota))]
    #[case::too_large(200, TOO_LARGE, Class::RequestFailed)]
    #[case::rate_limited(200, RATE_LIMIT, Class::RateLimited)]
    #[case::bad_request(
        200,
        r#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#,
        Class::RequestFailed
    )]
    #[case::server_error(200, SERVER_ERROR, Class::Transient)]
    #[case::stream_error_no_fields(200, r#"{"error":{}}"#, Class::Transient)]
    fn a_success_status_carrying_an_error_is_that_error(
        #[case] status: u16,
        #[case] body: &str,
        #[case] expected: Class,
    ) {
        assert_eq!(in_success(status, body), expected);
    }

    #[rstest]
    #[case::object(r#"{"error":{"code":"x"}}"#, true)]
    #[case::null_error(r#"{"error":null,"choices":[]}"#, false)]
    #[case::string_error(r#"{"error":"x"}"#, false)]
    #[case::success(r#"{"choices":[]}"#, false)]
    #[case::not_json("<html>", false)]
    fn finds_error_objects_in_success_bodies(#[case] body: &str, #[case] found: bool) {
        assert_eq!(ApiError::in_success(body.as_bytes()).is_some(), found);
    }

    #[rstest]
    #[case(TransportFailure::Connect)]
    #[case(TransportFailure::Timeout)]
    #[case(TransportFailure::Other)]
    #[case(TransportFailure::Cut)]
    fn transport_failures_are_transient(#[case] failure: TransportFailure) {
        assert_eq!(classify(Observation::Transport(failure)), Class::Transient);
    }

    #[rstest]
    #[case::retry_forces_4xx(400, Some(true), Class::Transient)]
    #[case::no_retry_stops_5xx(500, Some(false), Class::RequestFailed)]
    #[case::no_retry_stops_429(429, Some(false), Class::RequestFailed)]
    #[case::cannot_unstop_job(403, Some(true), Class::JobStop(StopCause::Forbidden))]
    #[case::absent_keeps_status_rule(500, None, Class::Transient)]
    fn should_retry_header_overrides(
        #[case] status: u16,
        #[case] should_retry: Option<bool>,
        #[case] expected: Class,
    ) {
        let error = ApiError::default();
        let class = classify(Observation::Answer {
            status,
            error: &error,
            payload: Payload::Whole,
            should_retry,
        });
        assert_eq!(class, expected);
    }

    #[test]
    fn parses_error_bodies_in_every_form() {
        let e = ApiError::parse(MISSING_SCOPE.as_bytes());
        assert_eq!(e.code.as_deref(), Some("missing_scope"));
        assert_eq!(e.kind.as_deref(), Some("invalid_request_error"));
        let e = ApiError::parse(br#"{"error":{"message":"x","type":"t","code":429}}"#);
        assert_eq!(e.code.as_deref(), Some("429"));
        let e = ApiError::parse(b"  RBAC: access denied\n");
        assert_eq!(e.message.as_deref(), Some("RBAC: access denied"));
        assert_eq!(ApiError::parse(b""), ApiError::default());
        let long = "x".repeat(2 * MAX_RAW_MESSAGE);
        let e = ApiError::parse(long.as_bytes());
        assert_eq!(
            e.message.map(|m| m.chars().count()),
            Some(MAX_RAW_MESSAGE + 1)
        );
    }

    /// The taxonomy table of docs/error-taxonomy.md and `classify` agree row for row: each
    /// row's representative observation gets the class the row names, in the table's order.
    #[test]
    fn documented_table_matches_the_code_row_for_row() {
        let page = include_str!("../../docs/error-taxonomy.md");
        let table = &page[page.find("# Error taxonomy").expect("section")..];
        let documented: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("| # |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.split('|')
                    .nth(3)
                    .expect("class column")
                    .trim()
                    .trim_matches('`')
            })
            .collect();
        let answer = |status: u16, body: &str, payload: Payload| {
            let error = ApiError::parse(body.as_bytes());
            classify(Observation::Answer {
                status,
                error: &error,
                payload,
                should_retry: None,
            })
        };
        let whole = Payload::Whole;
        let error = Payload::Error;
        let rows = [
            classify(Observation::Transport(TransportFailure::Connect)),
            classify(Observation::Transport(TransportFailure::Timeout)),
            classify(Observation::Transport(TransportFailure::Cut)),
            answer(200, "{}", whole),
            answer(200, "", Payload::Invalid),
            answer(200, MISSING_SCOPE, error),
            answer(200, INVALID_KEY, error),
            answer(200, QUOTA, error),
            answer(200, TOO_LARGE, error),
            answer(200, RATE_LIMIT, error),
            answer(200, r#"{"error":{"type":"invalid_request_error"}}"#, error),
            answer(200, SERVER_ERROR, error),
            answer(401, MISSING_SCOPE, whole),
            answer(401, INVALID_KEY, whole),
            answer(403, "{}", whole),
            answer(408, "", whole),
            answer(429, QUOTA, whole),
            answer(429, TOO_LARGE, whole),
            answer(429, RATE_LIMIT, whole),
            answer(400, "{}", whole),
            answer(500, SERVER_ERROR, whole),
            answer(302, "", whole),
        ];
        let coded: Vec<&str> = rows.iter().map(|c| c.journaled().as_str()).collect();
        assert_eq!(documented, coded, "taxonomy page vs classify()");
    }
}
