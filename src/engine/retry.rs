//! What happens to a request after an attempt: done, retried at a time, failed, or the job stops.
//!
//! Pure functions over a [`Class`], the attempt number and the server's wait hints, so the policy
//! is tested without a network. The chosen time is stored as `next_attempt_at` in the database,
//! so a wait survives a restart.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::domain::Class;

/// Attempts a request may spend per retried class before it ends failed with its last error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// Connection errors, timeouts, cut streams, 408/409, 5xx (`--max-attempts`).
    pub transient: u32,
    /// The intermittent 401. Large: the incident lasted hours, and the breaker keeps what a
    /// spike costs to a probe per cool-down, so waiting it out is cheap.
    pub auth_transient: u32,
    /// 429 `rate_limit_exceeded`: waiting always helps in the end.
    pub rate_limited: u32,
    /// 2xx with an unreadable body ([`INVALID_RESPONSE_ATTEMPTS`]).
    pub invalid_response: u32,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            transient: 10,
            auth_transient: 50,
            rate_limited: 50,
            invalid_response: INVALID_RESPONSE_ATTEMPTS,
        }
    }
}

/// Attempts a request may spend on 2xx answers whose body is unreadable: sent once more (a proxy
/// or a network glitch may have mangled one answer), then failed. Not configurable: a server
/// that keeps answering garbage will not stop doing so.
pub const INVALID_RESPONSE_ATTEMPTS: u32 = 2;

impl Budgets {
    /// The budget of `class` (0 for classes that are never retried).
    pub fn of(&self, class: Class) -> u32 {
        match class {
            Class::Transient => self.transient,
            Class::AuthTransient => self.auth_transient,
            Class::RateLimited => self.rate_limited,
            Class::InvalidResponse => self.invalid_response,
            Class::Succeeded | Class::RequestFailed | Class::JobStop(_) => 0,
        }
    }
}

/// Retry settings of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Per-class attempt budgets.
    pub budgets: Budgets,
    /// First backoff step; step n waits up to `base · 2ⁿ⁻¹`.
    pub base: Duration,
    /// No backoff step is longer than this.
    pub cap: Duration,
    /// Longest server-requested wait honoured as given; longer ones are cut to this.
    pub max_server_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budgets: Budgets::default(),
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_server_wait: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before the next attempt of a request whose `attempt`-th (1-based)
    /// attempt of class `class` just failed; `None` when the class is not retried or its
    /// budget is spent (the request then ends failed with this attempt's error).
    ///
    /// `server_wait` is what the server asked for (see [`server_wait`]); it wins over backoff,
    /// cut to `max_server_wait`. `jitter` is a uniform draw from `[0, 1)`, passed in so that
    /// tests are exact.
    pub fn retry_delay(
        &self,
        class: Class,
        attempt: u32,
        server_wait: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        match class {
            Class::Succeeded | Class::RequestFailed | Class::JobStop(_) => None,
            Class::Transient
            | Class::AuthTransient
            | Class::RateLimited
            | Class::InvalidResponse
                if attempt >= self.budgets.of(class) =>
            {
                None
            }
            Class::Transient
            | Class::AuthTransient
            | Class::RateLimited
            | Class::InvalidResponse => Some(match server_wait {
                Some(wait) => wait.min(self.max_server_wait),
                None => self.backoff(attempt, jitter),
            }),
        }
    }

    /// Exponential backoff with full jitter: uniform in `[0, min(cap, base · 2ⁿ⁻¹)]`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// The wait a server asked for, from the headers and the error message, in the order the
/// OpenAI SDKs trust them: `retry-after-ms`, `retry-after` (seconds or an HTTP date),
/// "Please try again in 1.5s" in the message, then the `x-ratelimit-reset-*` headers.
pub fn server_wait(
    headers: &HeaderMap,
    message: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::from_secs_f64(secs));
            }
        } else if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    if let Some(wait) = message.and_then(try_again_in) {
        return Some(wait);
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| header(name).and_then(parse_go_duration))
        .max()
}

/// Reads "Please try again in 1.574s" / "in 120ms" / "in 6m0s" from a rate-limit message.
pub fn try_again_in(message: &str) -> Option<Duration> {
    let rest = &message[message.find("try again in ")? + "try again in ".len()..];
    let token = rest
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .trim_end_matches('.');
    parse_go_duration(token)
}

/// Parses a Go-style duration as sent in `x-ratelimit-reset-*`: `1s`, `6m0s`, `12ms`,
/// `1m30.5s`, `1h2m`, `250us`. Returns `None` for anything else (Azure's `-1`, `0` without unit
/// is accepted as zero).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StopCause;
    use reqwest::header::{HeaderName, HeaderValue};
    use rstest::rstest;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    #[rstest]
    #[case("1s", Some(1_000))]
    #[case("6m0s", Some(360_000))]
    #[case("12ms", Some(12))]
    #[case("1m30.5s", Some(90_500))]
    #[case("1.5s", Some(1_500))]
    #[case("1h2m", Some(3_720_000))]
    #[case("0", Some(0))]
    #[case("-1", None)]
    #[case("", None)]
    #[case("5", None)]
    #[case("5x", None)]
    fn parses_go_durations(#[case] text: &str, #[case] millis: Option<u64>) {
        assert_eq!(
            parse_go_duration(text).map(|d| d.as_millis() as u64),
            millis
        );
    }

    #[rstest]
    #[case(
        "Limit 500, Used 500, Requested 1. Please try again in 1.574s. Visit",
        Some(1_574)
    )]
    #[case("Please try again in 120ms.", Some(120))]
    #[case("Please try again in 6m0s", Some(360_000))]
    #[case("no hint here", None)]
    fn reads_try_again_in(#[case] message: &str, #[case] millis: Option<u64>) {
        assert_eq!(try_again_in(message).map(|d| d.as_millis() as u64), millis);
    }

    #[test]
    fn server_wait_prefers_retry_after_ms() {
        let now = SystemTime::now();
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "7")]);
        assert_eq!(server_wait(&h, None, now), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(server_wait(&h, None, now), Some(Duration::from_secs(7)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(server_wait(&h, None, now), Some(Duration::from_secs(360)));
        let h = headers(&[]);
        assert_eq!(
            server_wait(&h, Some("Please try again in 20ms."), now),
            Some(Duration::from_millis(20))
        );
        assert_eq!(server_wait(&h, None, now), None);
    }

    #[test]
    fn server_wait_reads_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = headers(&[("retry-after", &later)]);
        assert_eq!(server_wait(&h, None, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h = headers(&[("retry-after", &earlier)]);
        assert_eq!(server_wait(&h, None, now), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(p.backoff(2, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(4, 1.0), Duration::from_secs(4));
        assert_eq!(p.backoff(20, 1.0), p.cap);
        assert_eq!(p.backoff(u32::MAX, 1.0), p.cap);
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn retry_delay_follows_the_class_and_its_budget() {
        let p = RetryPolicy::default();
        assert_eq!(p.retry_delay(Class::Succeeded, 1, None, 0.5), None);
        assert_eq!(p.retry_delay(Class::RequestFailed, 1, None, 0.5), None);
        assert_eq!(
            p.retry_delay(Class::JobStop(StopCause::Quota), 1, None, 0.5),
            None
        );
        assert_eq!(
            p.retry_delay(Class::Transient, 1, None, 1.0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            p.retry_delay(Class::RateLimited, 1, Some(Duration::from_secs(3)), 0.0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            p.retry_delay(Class::RateLimited, 1, Some(Duration::from_secs(3600)), 0.0),
            Some(p.max_server_wait)
        );
        let auth = p.budgets.auth_transient;
        assert_eq!(p.retry_delay(Class::AuthTransient, auth, None, 0.5), None);
        assert_eq!(
            p.retry_delay(Class::AuthTransient, auth - 1, None, 0.0),
            Some(Duration::ZERO)
        );
        let transient = p.budgets.transient;
        assert_eq!(p.retry_delay(Class::Transient, transient, None, 0.5), None);
        assert!(transient < auth, "each class has its own budget");
    }
}
