//! Which fault a request gets, and the exact error answers the mock sends.
//!
//! The bodies follow `OPENAI-FACTS.md`: `{"error":{"message","type","param","code"}}` in that key
//! order, with the messages OpenAI sends.

use std::fmt;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use super::answer::Answer;
use super::{MockConfig, RetryAfterStyle};

/// A failure the mock can inject, from a rate, a spike or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 401 `missing_scope` (the April 2026 incident: transient, the same request succeeds later).
    MissingScope,
    /// 401 with the plain-text body `RBAC: access denied` (seen in the same incident). Only
    /// spikes inject it; there is no rate for it.
    RbacDenied,
    /// 429 `rate_limit_exceeded` with `retry-after-ms` and `retry-after`.
    RateLimited,
    /// 500 `server_error`.
    ServerError,
    /// 200 with a body that is not JSON.
    Malformed,
    /// Sleeps [`MockConfig::hang`], then answers 500.
    Hang,
}

impl Fault {
    /// Every fault, for listing the accepted names.
    pub const ALL: [Fault; 6] = [
        Fault::MissingScope,
        Fault::RbacDenied,
        Fault::RateLimited,
        Fault::ServerError,
        Fault::Malformed,
        Fault::Hang,
    ];

    /// The kebab-case name used by `--spike FROM..TO:FAULT`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::MissingScope => "missing-scope",
            Fault::RbacDenied => "rbac-denied",
            Fault::RateLimited => "rate-limited",
            Fault::ServerError => "server-error",
            Fault::Malformed => "malformed",
            Fault::Hang => "hang",
        }
    }

    /// Parses a name from [`Fault::name`], case-insensitively, also accepting `_` for `-` and
    /// the short forms `rbac` and `rate-limit`.
    pub fn from_name(name: &str) -> Option<Fault> {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        match name.as_str() {
            "rbac" => Some(Fault::RbacDenied),
            "rate-limit" => Some(Fault::RateLimited),
            other => Fault::ALL.into_iter().find(|fault| fault.name() == other),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The random fault for the `attempt`-th request (0-based) with this body key, if any.
///
/// blake3(seed, key, attempt) gives a uniform number in [0, 1), which walks the cumulative rates
/// in the order missing_scope, rate_limit, server_error, malformed, hang. A retry of the same body
/// is a new attempt, so it gets a fresh draw, and the same seed replays the same sequence.
pub(crate) fn draw(config: &MockConfig, key: &str, attempt: u64) -> Option<Fault> {
    let unit = unit_draw(config.seed, key, attempt);
    let table = [
        (config.missing_scope_rate, Fault::MissingScope),
        (config.rate_limit_rate, Fault::RateLimited),
        (config.server_error_rate, Fault::ServerError),
        (config.malformed_rate, Fault::Malformed),
        (config.hang_rate, Fault::Hang),
    ];
    let mut cumulative = 0.0;
    for (rate, fault) in table {
        // `max` also turns NaN into 0, so a bad rate set in code cannot poison the walk.
        cumulative += rate.max(0.0);
        if unit < cumulative {
            return Some(fault);
        }
    }
    None
}

/// blake3(seed, attempt, key) as a uniform number in [0, 1).
fn unit_draw(seed: u64, key: &str, attempt: u64) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&attempt.to_le_bytes());
    hasher.update(key.as_bytes());
    let hash = hasher.finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash.as_bytes()[..8]);
    // The top 53 bits fill an f64 mantissa exactly, so the result is uniform in [0, 1).
    (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a request presenting a flaky key flaps this time: its own reproducible draw, apart
/// from the random faults'.
pub(crate) fn flaps(config: &MockConfig, presented: &str, key: &str, attempt: u64) -> bool {
    config
        .flaky_keys
        .iter()
        .find(|(flaky, _)| flaky == presented)
        .is_some_and(|(_, rate)| unit_draw(config.seed ^ 0x006b_6579, key, attempt) < *rate)
}

/// The answer for `fault` (for [`Fault::Hang`], the 500 sent after the sleep).
pub(crate) fn answer_for(fault: Fault, model: &str, config: &MockConfig) -> Answer {
    match fault {
        Fault::MissingScope => missing_scope(),
        Fault::RbacDenied => rbac_denied(),
        Fault::RateLimited => rate_limited(model, config.retry_after, config.retry_after_style),
        Fault::ServerError | Fault::Hang => server_error(),
        Fault::Malformed => malformed(),
    }
}

/// `{"error":{"message","type","param","code"}}`, keys in OpenAI's order.
fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    let text = |value: Option<&str>| value.map_or(Value::Null, |v| Value::String(v.to_owned()));
    format!(
        r#"{{"error":{{"message":{},"type":{},"param":{},"code":{}}}}}"#,
        text(Some(message)),
        text(Some(kind)),
        text(param),
        text(code),
    )
}

/// A JSON error answer.
fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Answer {
    Answer::json(status, error_body(message, kind, None, code))
}

/// 401 `missing_scope` for `model.request`.
pub(crate) fn missing_scope() -> Answer {
    missing_scope_for("model.request")
}

/// 401 `missing_scope` naming `scope` (`api.files.write`, `api.batch.write`, …).
pub(crate) fn missing_scope_for(scope: &str) -> Answer {
    let message = format!(
        "You have insufficient permissions for this operation. Missing scopes: {scope}. \
         Check that you have the correct role in your organization (Reader, Writer, Owner) and \
         project (Member, Owner), and if you're using a restricted API key, that it has the \
         necessary scopes."
    );
    error(
        StatusCode::UNAUTHORIZED,
        &message,
        "invalid_request_error",
        Some("missing_scope"),
    )
}

/// 401 with the plain-text body `RBAC: access denied`.
pub(crate) fn rbac_denied() -> Answer {
    Answer::text(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "RBAC: access denied".to_owned(),
    )
}

/// 429 `rate_limit_exceeded` (type `requests`) with the wait hints `style` asks for:
/// `retry-after-ms`, `retry-after` (seconds or an HTTP date), `x-ratelimit-*-requests`, and
/// "Please try again in …" in the message.
pub(crate) fn rate_limited(model: &str, retry_after: Duration, style: RetryAfterStyle) -> Answer {
    let wait = go_duration(retry_after);
    let hint = match style {
        RetryAfterStyle::All | RetryAfterStyle::Message => Some(retry_after),
        RetryAfterStyle::Millis
        | RetryAfterStyle::Seconds
        | RetryAfterStyle::HttpDate
        | RetryAfterStyle::ResetHeader => None,
    };
    let message = limit_message(model, Limit::Requests, (500, 500, 1), hint);
    let millis = retry_after.as_millis();
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut answer = error(
        StatusCode::TOO_MANY_REQUESTS,
        &message,
        "requests",
        Some("rate_limit_exceeded"),
    );
    if matches!(style, RetryAfterStyle::All | RetryAfterStyle::Millis) {
        answer = answer.with_header("retry-after-ms", millis.to_string());
    }
    if matches!(style, RetryAfterStyle::All | RetryAfterStyle::Seconds) {
        answer = answer.with_header("retry-after", seconds.to_string());
    }
    if style == RetryAfterStyle::HttpDate {
        // HTTP dates have whole seconds: round the moment up so the client never comes back
        // before `retry_after` has passed.
        let at = std::time::SystemTime::now() + retry_after;
        let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let rounded = std::time::UNIX_EPOCH
            + Duration::from_secs(
                since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0),
            );
        answer = answer.with_header("retry-after", httpdate::fmt_http_date(rounded));
    }
    // Only the reset hint: a random refusal does not announce a per-minute limit (the
    // server-side limit of `requests_per_second` sends the real headers).
    if matches!(style, RetryAfterStyle::All | RetryAfterStyle::ResetHeader) {
        answer = answer.with_header("x-ratelimit-reset-requests", wait);
    }
    answer
}

/// 429 `rate_limit_exceeded` from a server-side limit (type `requests` or `tokens`, as `by`
/// says): the limit per minute, what is used of it and what the request asks for, the real wait
/// in the message ("Please try again in 120ms.") and in `retry-after-ms`.
pub(crate) fn limit_reached(
    model: &str,
    by: Limit,
    (limit, used, requested): (u64, u64, u64),
    wait: Duration,
) -> Answer {
    let message = limit_message(model, by, (limit, used, requested), Some(wait));
    error(
        StatusCode::TOO_MANY_REQUESTS,
        &message,
        by.name(),
        Some("rate_limit_exceeded"),
    )
    .with_header("retry-after-ms", wait.as_millis().to_string())
}

/// "Rate limit reached for … on requests per min (RPM): Limit L, Used U, Requested R." with
/// "Please try again in …" when `wait` is given.
fn limit_message(
    model: &str,
    by: Limit,
    (limit, used, requested): (u64, u64, u64),
    wait: Option<Duration>,
) -> String {
    let per = match by {
        Limit::Requests => "requests per min (RPM)",
        Limit::Tokens => "tokens per min (TPM)",
    };
    let hint = wait.map_or_else(String::new, |wait| {
        format!(" Please try again in {}.", go_duration(wait))
    });
    format!(
        "Rate limit reached for {model} in organization org-mock on {per}: Limit {limit}, \
         Used {used}, Requested {requested}.{hint} Visit \
         https://platform.openai.com/account/rate-limits to learn more."
    )
}

/// 429 `rate_limit_exceeded` (type `tokens`) for a request whose token cost exceeds the whole
/// minute's limit, so it can never be admitted: no retry headers, because waiting cannot help.
pub(crate) fn request_too_large(model: &str, limit: u64, requested: u64) -> Answer {
    let message = format!(
        "Request too large for {model} in organization org-mock on tokens per min (TPM): \
         Limit {limit}, Requested {requested}. The input or output tokens must be reduced in \
         order to run successfully. Visit https://platform.openai.com/account/rate-limits to \
         learn more."
    );
    error(
        StatusCode::TOO_MANY_REQUESTS,
        &message,
        "tokens",
        Some("rate_limit_exceeded"),
    )
}

/// 404 `model_not_found` for `model`.
pub(crate) fn model_not_found(model: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        &format!("The model `{model}` does not exist or you do not have access to it."),
        "invalid_request_error",
        Some("model_not_found"),
    )
}

/// 429 `insufficient_quota`.
pub(crate) fn insufficient_quota() -> Answer {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, read the docs: \
         https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        Some("insufficient_quota"),
    )
}

/// 401 `invalid_api_key`. Shows only the start and the last four characters of the key.
pub(crate) fn invalid_api_key(key: &str) -> Answer {
    let message = format!(
        "Incorrect API key provided: {}. You can find your API key at \
         https://platform.openai.com/account/api-keys.",
        mask_key(key)
    );
    error(
        StatusCode::UNAUTHORIZED,
        &message,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
}

/// Azure OpenAI's 401 for a request without its `api-key` header, and its 404 for one without
/// `api-version`.
pub(crate) fn azure_access_denied(has_key: bool) -> Answer {
    if has_key {
        Answer::json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"404","message":"Resource not found"}}"#.to_owned(),
        )
    } else {
        Answer::json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#.to_owned(),
        )
    }
}

/// 403 for a key whose project may not use the model.
pub(crate) fn forbidden(model: &str) -> Answer {
    error(
        StatusCode::FORBIDDEN,
        &format!("Project does not have access to model `{model}`."),
        "invalid_request_error",
        Some("model_not_found"),
    )
}

/// `sk-…abcd`: never the whole key. Keys too short to hide anything show only `…`.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// 500 `server_error` (type `server_error`, code null, as OpenAI sends it).
pub(crate) fn server_error() -> Answer {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    )
}

/// 200 whose body is cut off mid-object, as if a proxy truncated it.
pub(crate) fn malformed() -> Answer {
    Answer::text(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        r#"{"id":"chatcmpl-truncated","object":"chat.completion","choices":[{"index":0,"mess"#
            .to_owned(),
    )
}

/// 400 for a body that is not JSON, with OpenAI's message.
pub(crate) fn invalid_json() -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON. If you have trouble figuring out how to fix this, please \
         contact us through our help center at help.openai.com.)",
        "invalid_request_error",
        None,
    )
}

/// 404 for an unknown path.
pub(crate) fn invalid_url(method: &str, path: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {path})"),
        "invalid_request_error",
        None,
    )
}

/// 405 for a known path with the wrong method.
pub(crate) fn invalid_method(method: &str, path: &str) -> Answer {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Invalid method for URL ({method} {path})"),
        "invalid_request_error",
        None,
    )
}

/// The answer for `"mock_status": raw`: that status with a realistic body, on every attempt.
///
/// | status | body |
/// |---|---|
/// | 200 | `None`: answer normally |
/// | 400, 422 | `invalid_request_error` |
/// | 401 | `invalid_api_key` |
/// | 403 | `unsupported_country_region_territory` |
/// | 404 | `model_not_found` for the request's model |
/// | 408 / 409 | request timed out / conflict |
/// | 429 | "Request too large" (`rate_limit_exceeded`, type `tokens`, no retry headers) |
/// | 500, 502, 503, 504 | `server_error` with OpenAI's messages |
/// | other 4xx / 5xx | a generic `invalid_request_error` / `server_error` |
/// | anything else | 400 naming `mock_status` as the bad parameter |
pub(crate) fn forced(raw: &Value, model: &str) -> Option<Answer> {
    let Some(code) = raw
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| *code == 200 || (400..=599).contains(code))
    else {
        let message = format!(
            "mock_status must be 200 or an error status from 400 to 599, got {raw}. Remove it or \
             use an integer in that range."
        );
        return Some(Answer::json(
            StatusCode::BAD_REQUEST,
            error_body(&message, "invalid_request_error", Some("mock_status"), None),
        ));
    };
    // The filter above admits only 200 and 400..=599, all valid status codes.
    let status = StatusCode::from_u16(code).ok()?;
    let invalid = "invalid_request_error";
    let answer = match code {
        200 => return None,
        401 => invalid_api_key("sk-mock-forced-by-mock-status"),
        403 => error(
            status,
            "Country, region, or territory not supported",
            "request_forbidden",
            Some("unsupported_country_region_territory"),
        ),
        404 => model_not_found(model),
        408 => error(status, "Request timed out.", "timeout", None),
        409 => error(
            status,
            "The request conflicted with another request. Please try again.",
            invalid,
            None,
        ),
        429 => request_too_large(model, 30_000, 45_000),
        500 => server_error(),
        502 => error(status, "Bad gateway.", "server_error", None),
        503 => error(
            status,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
        ),
        504 => error(status, "Gateway timeout.", "server_error", None),
        501..=599 => error(
            status,
            &format!("The server answered {code} (forced by mock_status)."),
            "server_error",
            None,
        ),
        _ => error(
            status,
            &format!("Invalid request: the mock was asked to answer {code} (mock_status)."),
            invalid,
            None,
        ),
    };
    Some(answer)
}

/// The rate-limit headers a proxy announcing nonsense sends.
const ABSURD_HEADERS: [&str; 8] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
];

/// Values no API sends for them: not numbers, negative, absurdly small or large, not Go
/// durations, empty. The first eight are the first answer's, header by header.
const ABSURD_VALUES: [&str; 16] = [
    "1e-300",
    "-3",
    "forever",
    "NaN",
    "1e400",
    "-5s",
    "1e300",
    "-1",
    "0",
    "0.5",
    "99999999999999999999",
    "1s1s",
    "",
    "inf",
    "-0.000001ms",
    "18446744073709551616",
];

/// The absurd rate-limit headers of the `number`-th answer (0-based): each header walks
/// through [`ABSURD_VALUES`] one answer at a time, so a client meets every value under every
/// header within a few answers.
pub(crate) fn absurd_rate_headers(number: u64) -> [(&'static str, &'static str); 8] {
    let shift = (number % ABSURD_VALUES.len() as u64) as usize;
    let mut index = 0;
    ABSURD_HEADERS.map(|name| {
        let value = ABSURD_VALUES[(index + shift) % ABSURD_VALUES.len()];
        index += 1;
        (name, value)
    })
}

/// A Go-style duration as OpenAI writes it: `120ms`, `1.5s`, `6m0s`.
pub(crate) fn go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let minutes = millis / 60_000;
    let rest = millis % 60_000;
    let seconds = format!("{}.{:03}", rest / 1000, rest % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    if minutes == 0 {
        format!("{seconds}s")
    } else {
        format!("{minutes}m{seconds}s")
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Requests per minute (429 type `requests`).
    Requests,
    /// Tokens per minute (429 type `tokens`).
    Tokens,
}

impl Limit {
    /// The `type` of its 429s, and the unit of its headers: `requests` or `tokens`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Tokens => "tokens",
        }
    }
}
