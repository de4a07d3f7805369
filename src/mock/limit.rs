//! A server-side request-rate limit, as OpenAI enforces it: a token bucket refilled at the
//! limit's rate with a small burst (a per-minute limit enforced over shorter periods), the
//! `x-ratelimit-*-requests` headers on every answer, and a 429 with the wait when it is empty.

use std::time::{Duration, Instant};

/// The bucket holds this many seconds' worth of requests: OpenAI quantizes per-minute limits
/// (60,000 RPM as 1,000 per second), so only a short burst is tolerated.
const BURST_SECONDS: f64 = 0.1;
/// The slowest rate a bucket runs at: one request a minute.
const MIN_PER_SECOND: f64 = 1.0 / 60.0;

/// The state of one limit.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    refreshed: Instant,
}

/// What the bucket says about one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verdict {
    /// Whether the request may be served.
    pub allowed: bool,
    /// `x-ratelimit-limit-requests`: the limit per minute.
    pub limit_per_minute: u64,
    /// `x-ratelimit-remaining-requests`.
    pub remaining: u64,
    /// `x-ratelimit-reset-requests`: until the bucket is full again.
    pub reset: Duration,
    /// For a refused request: until one request is allowed.
    pub retry_after: Duration,
}

impl Bucket {
    /// A full bucket for `per_second` requests per second. `--requests-per-second` refuses
    /// anything but a positive finite rate; a config built in code with another value gets the
    /// slowest rate [`MIN_PER_SECOND`] rather than a panic.
    pub(crate) fn new(per_second: f64, now: Instant) -> Bucket {
        let per_second = if per_second.is_finite() {
            per_second.max(MIN_PER_SECOND)
        } else {
            MIN_PER_SECOND
        };
        let capacity = (per_second * BURST_SECONDS).max(1.0);
        Bucket {
            per_second,
            capacity,
            tokens: capacity,
            refreshed: now,
        }
    }

    /// Takes one request's token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refreshed).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refreshed = now;
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        let secs = |tokens: f64| {
            Duration::try_from_secs_f64((tokens / self.per_second).max(0.0))
                .unwrap_or(Duration::MAX)
        };
        Verdict {
            allowed,
            limit_per_minute: (self.per_second * 60.0).round() as u64,
            remaining: self.tokens.floor() as u64,
            reset: secs(self.capacity - self.tokens),
            retry_after: secs(1.0 - self.tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case(0.0)]
    #[case(-1.0)]
    #[case(f64::NAN)]
    #[case(f64::INFINITY)]
    fn a_rate_of_zero_or_nonsense_does_not_panic(#[case] rate: f64) {
        let start = Instant::now();
        let mut bucket = Bucket::new(rate, start);
        let first = bucket.take(start);
        let second = bucket.take(start);
        assert!(first.allowed);
        assert!(!second.allowed);
        assert!(second.retry_after <= Duration::from_secs(60));
    }

    #[test]
    fn allows_the_rate_and_a_short_burst_only() {
        let start = Instant::now();
        let mut bucket = Bucket::new(100.0, start);
        let burst = (0..50).filter(|_| bucket.take(start).allowed).count();
        assert_eq!(burst, 10, "a tenth of a second's worth");
        let verdict = bucket.take(start);
        assert!(!verdict.allowed);
        assert_eq!(verdict.limit_per_minute, 6000);
        assert_eq!(verdict.retry_after, Duration::from_millis(10));
        // One second later, 100 more are allowed over that second.
        let allowed = (1..=100)
            .filter(|i| bucket.take(start + Duration::from_millis(10 * i)).allowed)
            .count();
        assert_eq!(allowed, 100);
    }
}
