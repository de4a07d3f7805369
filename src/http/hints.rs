//! What the runner reads from a server's answer headers: how long to wait before retrying, the
//! announced request and token limits, and `x-should-retry`.
//!
//! Every header is text a server (or a proxy in front of it) chose, so every parser here is
//! total: any string yields a bounded value or `None`, and nothing panics. In particular no
//! server-chosen `f64` reaches `Duration::from_secs_f64` (which panics on huge, infinite or NaN
//! input), and a wait is never longer than the caller's cap.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::util::text::printable;

/// The longest duration [`parse_go_duration`] returns: Go's own `time.Duration` maximum
/// (`i64::MAX` nanoseconds, about 292 years). Go refuses longer durations; here they saturate,
/// because "longer than anyone would wait" is all a caller needs to know, and callers cap the
/// result anyway.
pub const MAX_GO_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Highest request limit believed, per minute: ten million, far above any published tier
/// (the highest are in the tens of thousands). A larger value is not a limit a server means.
pub const MAX_REQUESTS_PER_MINUTE: u64 = 10_000_000;

/// Highest token limit believed, per minute: ten billion (the largest tiers are in the
/// hundreds of millions).
pub const MAX_TOKENS_PER_MINUTE: u64 = 10_000_000_000;

/// Longest reset believed: a day (per-day limits reset within one).
pub const MAX_RESET: Duration = Duration::from_secs(24 * 3600);

/// The two limits a server announces in `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// `x-ratelimit-*-requests`.
    Requests,
    /// `x-ratelimit-*-tokens`.
    Tokens,
}

impl LimitKind {
    /// Both, in the order they are read.
    pub const ALL: [LimitKind; 2] = [LimitKind::Requests, LimitKind::Tokens];

    /// The headers' suffix and the unit, as shown: `requests`, `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }

    fn max_per_minute(self) -> u64 {
        match self {
            LimitKind::Requests => MAX_REQUESTS_PER_MINUTE,
            LimitKind::Tokens => MAX_TOKENS_PER_MINUTE,
        }
    }
}

/// What an answer announced about one limit. Each value is kept only when it is one the API
/// would send ([`announced`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// `x-ratelimit-limit-*`: per minute, at least 1.
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining-*`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset-*`: until the budget is whole again.
    pub reset: Option<Duration>,
}

/// What an answer's headers announced about the server's limits, and the headers that were
/// there but said nothing a limit can be (the caller notes each such header once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    /// `x-ratelimit-*-requests`.
    pub requests: Window,
    /// `x-ratelimit-*-tokens`.
    pub tokens: Window,
    /// Header name and value (printable, cut at 40 characters) of every value ignored.
    pub ignored: Vec<(&'static str, String)>,
}

impl Announced {
    /// The window of one limit.
    pub fn window(&self, kind: LimitKind) -> Window {
        match kind {
            LimitKind::Requests => self.requests,
            LimitKind::Tokens => self.tokens,
        }
    }
}

/// Reads the `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers.
///
/// A value is a limit only when it is one: limits and remainders are plain decimal integers
/// (a limit at least 1 and at most [`MAX_REQUESTS_PER_MINUTE`] or [`MAX_TOKENS_PER_MINUTE`],
/// a remainder at most that), resets Go durations of at most [`MAX_RESET`]. Anything else
/// (`1e-300`, `NaN`, `0.5`, Azure's `-1` and `0` for "unknown", `forever`) is ignored, never
/// clamped into a limit: a proxy announcing `1e-300` requests a minute must not slow a job to
/// one a minute. Ignored values are listed in [`Announced::ignored`].
pub fn announced(headers: &HeaderMap) -> Announced {
    let mut ignored = Vec::new();
    let mut windows = [Window::default(); 2];
    for (kind, window) in LimitKind::ALL.into_iter().zip(windows.iter_mut()) {
        let names = match kind {
            LimitKind::Requests => [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            LimitKind::Tokens => [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        };
        let [limit, remaining, reset] = names;
        let max = kind.max_per_minute();
        let mut read = |name: &'static str, parse: &dyn Fn(&str) -> bool| -> Option<&str> {
            let raw = headers.get(name)?;
            match raw.to_str().ok().map(str::trim).filter(|v| parse(v)) {
                Some(value) => Some(value),
                None => {
                    let shown = printable(&String::from_utf8_lossy(raw.as_bytes())).into_owned();
                    ignored.push((name, shown.chars().take(40).collect()));
                    None
                }
            }
        };
        let in_range =
            |low: u64| move |v: &str| integer(v).is_some_and(|n| (low..=max).contains(&n));
        window.limit = read(limit, &in_range(1)).and_then(integer);
        window.remaining = read(remaining, &in_range(0)).and_then(integer);
        window.reset = read(reset, &|v| {
            parse_go_duration(v).is_some_and(|d| d <= MAX_RESET)
        })
        .and_then(parse_go_duration);
    }
    let [requests, tokens] = windows;
    Announced {
        requests,
        tokens,
        ignored,
    }
}

/// A plain decimal integer: ASCII digits only, no sign, exponent or point; `None` past `u64`.
fn integer(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The wait a server asked for, from the headers and the error message, in the order the
/// OpenAI SDKs trust them: `retry-after-ms`, `retry-after` (seconds or an HTTP date),
/// "Please try again in 1.5s" in the message, then the longer of `x-ratelimit-reset-requests`
/// and `x-ratelimit-reset-tokens`.
///
/// Every wait is at most `cap` (the user's `--max-wait`): an infinite or enormous value becomes
/// `cap`. NaN, negative and unparseable values are ignored, so the next source in the order is
/// tried. A date in the past means "now" ([`Duration::ZERO`]).
pub fn server_wait(
    headers: &HeaderMap,
    message: Option<&str>,
    now: SystemTime,
    cap: Duration,
) -> Option<Duration> {
    if let Some(wait) = header(headers, "retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| bounded_secs(ms / 1000.0, cap))
    {
        return Some(wait);
    }
    if let Some(value) = header(headers, "retry-after") {
        let wait = match value.parse::<f64>() {
            Ok(secs) => bounded_secs(secs, cap),
            // httpdate only accepts years 1970..=9999, so the SystemTime it builds is valid.
            Err(_) => httpdate::parse_http_date(value)
                .ok()
                .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO).min(cap)),
        };
        if wait.is_some() {
            return wait;
        }
    }
    if let Some(wait) = message.and_then(try_again_in) {
        return Some(wait.min(cap));
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| header(headers, name).and_then(parse_go_duration))
        .max()
        .map(|wait| wait.min(cap))
}

/// Reads "Please try again in 1.574s" / "in 120ms" / "in 6m0s" from a rate-limit message, as a
/// Go duration (see [`parse_go_duration`], which bounds it).
pub fn try_again_in(message: &str) -> Option<Duration> {
    const MARKER: &str = "try again in ";
    let (_, rest) = message.split_once(MARKER)?;
    let token = rest
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .trim_end_matches('.');
    parse_go_duration(token)
}

/// Parses a Go-style duration as sent in `x-ratelimit-reset-*`: `1s`, `6m0s`, `12ms`,
/// `1m30.5s`, `1h2m`, `250us`, `.5s`, with units `h`, `m`, `s`, `ms`, `us`/`µs`/`μs`, `ns`.
/// A bare `0` is zero; a leading `+` is allowed.
///
/// Returns `None` for anything else, negative durations included (Azure's `-1`). Arithmetic is
/// in integer nanoseconds and saturates: a duration longer than [`MAX_GO_DURATION`] is
/// [`MAX_GO_DURATION`]. Fractions are exact to the nanosecond (digits beyond 18 are dropped).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let max = MAX_GO_DURATION.as_nanos();
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (whole, fraction, after_number) = split_number(rest)?;
        let unit_end = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at_checked(unit_end)?;
        let unit_nanos: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        total = total
            .saturating_add(whole.saturating_mul(unit_nanos))
            .saturating_add(fraction.nanos(unit_nanos))
            .min(max);
        rest = after_unit;
    }
    // `total` is at most `max`, which is `i64::MAX` and so fits a u64.
    Some(u64::try_from(total).map_or(MAX_GO_DURATION, Duration::from_nanos))
}

/// Longest request id kept, in characters: ids are short tokens; a longer value is cut there,
/// with `…`.
const MAX_REQUEST_ID: usize = 200;

/// The answer's request id, what support asks for: `x-request-id` (OpenAI, most compatible
/// servers), else `request-id` (LiteLLM's proxy, which sends no `x-request-id`). It goes into
/// the journal and onto terminals, so a value that is not plain text is kept as a copy that is:
/// bytes that are not UTF-8 become U+FFFD, control characters and bidirectional overrides are
/// escaped ([`printable`]), and a value over 200 characters is cut. `None` only when neither
/// header is there or the value is blank.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id"]
        .into_iter()
        .find_map(|name| clean_request_id(&String::from_utf8_lossy(headers.get(name)?.as_bytes())))
}

/// A request id as [`request_id`] keeps it, from wherever it came (a header, a Batch result
/// line's `request_id`); `None` when it is blank.
pub fn clean_request_id(raw: &str) -> Option<String> {
    let value = printable(raw.trim());
    if value.is_empty() {
        return None;
    }
    Some(match value.char_indices().nth(MAX_REQUEST_ID) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.into_owned(),
    })
}

/// `x-should-retry`: `Some(true)` or `Some(false)` when the server overrides the status-code
/// rules, `None` when it is absent or anything else. Case and surrounding spaces are ignored.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let value = header(headers, "x-should-retry")?;
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A header's first value as trimmed text; `None` when absent or not visible ASCII.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `secs` as a wait of at most `cap`; `None` for NaN and negative values. Infinity and values
/// beyond [`Duration::MAX`] are longer than any cap, so they are the cap.
fn bounded_secs(secs: f64, cap: Duration) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(cap, |wait| wait.min(cap)))
}

/// The fractional digits of one duration component, kept as an exact ratio.
#[derive(Clone, Copy, Debug)]
struct Fraction {
    /// The digits as an integer (`.25` is 25).
    digits: u128,
    /// `10^(number of digits)`.
    scale: u128,
}

impl Fraction {
    /// Digits kept: 10^18 times the largest unit (an hour, 3.6·10^12 ns) stays far below
    /// `u128::MAX`, and 18 digits resolve a nanosecond of any unit.
    const MAX_DIGITS: u32 = 18;

    /// This fraction of `unit_nanos`, truncated to whole nanoseconds.
    fn nanos(self, unit_nanos: u128) -> u128 {
        self.digits
            .saturating_mul(unit_nanos)
            .checked_div(self.scale)
            .unwrap_or(0)
    }
}

/// Splits `text` into the leading number's whole part, its fraction and the rest. The number
/// needs at least one digit (`5`, `5.`, `.5`, `5.25`); the whole part saturates.
fn split_number(text: &str) -> Option<(u128, Fraction, &str)> {
    let mut whole: u128 = 0;
    let mut fraction = Fraction {
        digits: 0,
        scale: 1,
    };
    let mut kept = 0;
    let mut seen_digit = false;
    let mut seen_dot = false;
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        if c == '.' && !seen_dot {
            seen_dot = true;
            continue;
        }
        let Some(digit) = c.to_digit(10).map(u128::from) else {
            end = i;
            break;
        };
        seen_digit = true;
        if !seen_dot {
            whole = whole.saturating_mul(10).saturating_add(digit);
        } else if kept < Fraction::MAX_DIGITS {
            // At most 18 digits: both stay below 10^18, far from overflow.
            fraction.digits = fraction.digits.saturating_mul(10).saturating_add(digit);
            fraction.scale = fraction.scale.saturating_mul(10);
            kept += 1;
        }
    }
    // `end` comes from `char_indices`, so it is a character boundary.
    seen_digit.then(|| (whole, fraction, text.get(end..).unwrap_or("")))
}

#[cfg(test)]
mod tests;
