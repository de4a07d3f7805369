//! Server-side rate limits, as OpenAI enforces them: requests per minute and tokens per minute,
//! each a bucket refilled continuously at the limit's rate that holds only a short share of it
//! (a per-minute limit enforced over shorter periods), the `x-ratelimit-*` headers on every
//! answer, and a 429 with the real wait when a bucket cannot pay for a request.
//!
//! One [`Bucket`] type serves both limits: a request weighs 1 in the request bucket and its
//! token cost (prompt plus the most output it asks for) in the token bucket.

use std::time::{Duration, Instant};

use super::MockConfig;
use super::answer::Answer;
use super::faults::{self, Limit};

/// The output tokens a request that names no maximum (`max_completion_tokens`, `max_tokens`,
/// `max_output_tokens`) is counted for against the token limit: the limit counts the most a
/// request may produce at admission, and this is the runner's `--default-output-tokens`
/// default, so the mock and the runner's own pacing agree on a request's cost.
pub(crate) const DEFAULT_OUTPUT: u64 = 256;

/// The request bucket holds this many seconds' worth of requests: OpenAI quantizes per-minute
/// limits (60,000 RPM as 1,000 per second), so only a short burst is tolerated.
const REQUEST_BURST_SECONDS: f64 = 0.1;
/// The token bucket holds this many seconds' worth of tokens: one request can cost thousands of
/// tokens, so a tenth of a second's share would refuse ordinary requests at modest limits.
const TOKEN_BURST_SECONDS: f64 = 1.0;
/// The slowest rate a bucket runs at: one unit a minute.
const MIN_PER_SECOND: f64 = 1.0 / 60.0;
/// Floating-point slack, in a bucket's units: a level short of a weight by less than this
/// (rounding in the refill) counts as enough.
const EPSILON: f64 = 1e-9;

/// One limit: a bucket refilled at `per_second` up to `capacity`.
///
/// A weight above the capacity is taken when the bucket is full, leaving it in debt, so a
/// request bigger than the burst (but within the minute) is slowed, never refused forever.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_second: f64,
    capacity: f64,
    /// Below zero while in debt.
    level: f64,
    refreshed: Instant,
}

/// A bucket's state as the `x-ratelimit-{limit,remaining,reset}-*` headers announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    /// `x-ratelimit-limit-*`: the limit per minute.
    pub(crate) limit_per_minute: u64,
    /// `x-ratelimit-remaining-*`: the minute's limit less what the bucket lacks to be full, as
    /// OpenAI counts it (10,000 RPM, one request just sent: 9,999), never below 0. A request can
    /// be refused while this is high: the burst is a short share of the minute.
    pub(crate) remaining: u64,
    /// `x-ratelimit-reset-*`: until the bucket is full again.
    pub(crate) reset: Duration,
}

impl Bucket {
    /// A full bucket for `per_second` units per second holding `burst_seconds` of them (at least
    /// one). The flags refuse anything but a positive finite rate; a config built in code with
    /// another value gets the slowest rate [`MIN_PER_SECOND`] rather than a panic.
    fn new(per_second: f64, burst_seconds: f64, now: Instant) -> Bucket {
        let per_second = if per_second.is_finite() {
            per_second.max(MIN_PER_SECOND)
        } else {
            MIN_PER_SECOND
        };
        let capacity = (per_second * burst_seconds).max(1.0);
        Bucket {
            per_second,
            capacity,
            level: capacity,
            refreshed: now,
        }
    }

    /// The request limit: weight 1 per request.
    pub(crate) fn requests(per_second: f64, now: Instant) -> Bucket {
        Bucket::new(per_second, REQUEST_BURST_SECONDS, now)
    }

    /// The token limit: weight the request's token cost.
    pub(crate) fn tokens(per_minute: f64, now: Instant) -> Bucket {
        Bucket::new(per_minute / 60.0, TOKEN_BURST_SECONDS, now)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refreshed).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.refreshed = now;
    }

    /// How long until `weight` may be taken; zero when it may be taken now. A weight above the
    /// capacity needs a full bucket.
    fn wait(&self, weight: f64) -> Duration {
        let short = weight.min(self.capacity) - self.level;
        if short <= EPSILON {
            return Duration::ZERO;
        }
        self.time_for(short).max(Duration::from_millis(1))
    }

    /// How long the refill takes to add `units`, rounded up to the millisecond the headers
    /// speak in, so a client that waits exactly as told is not refused again for a fraction of
    /// a millisecond.
    fn time_for(&self, units: f64) -> Duration {
        let millis = (units * 1000.0 / self.per_second - EPSILON).ceil();
        // A float-to-integer cast saturates (and takes NaN to 0): no overflow, no panic.
        Duration::from_millis(millis as u64)
    }

    /// The refusal of `weight` by this bucket (the limit `by`), with its wait; `None` when the
    /// bucket can pay for it now.
    fn refusal(&self, by: Limit, weight: f64) -> Option<(Duration, Admission)> {
        let wait = self.wait(weight);
        if wait.is_zero() {
            return None;
        }
        let reading = self.reading();
        let refusal = Admission::Refused {
            by,
            limit: reading.limit_per_minute,
            used: reading.limit_per_minute.saturating_sub(reading.remaining),
            requested: weight as u64,
            wait,
        };
        Some((wait, refusal))
    }

    fn take(&mut self, weight: f64) {
        self.level -= weight;
    }

    /// The limit per minute, as announced.
    fn per_minute(&self) -> u64 {
        (self.per_second * 60.0).round() as u64
    }

    fn reading(&self) -> Reading {
        let lacking = (self.capacity - self.level).max(0.0);
        let limit = self.per_minute();
        Reading {
            limit_per_minute: limit,
            remaining: (limit as f64 - lacking).max(0.0).floor() as u64,
            reset: self.time_for(lacking),
        }
    }
}

/// What the limits decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Both limits paid for it.
    Admitted,
    /// A limit cannot pay for it yet; nothing was taken from either.
    Refused {
        /// The limit that refused it; with both refusing, the one that needs longer.
        by: Limit,
        /// That limit per minute.
        limit: u64,
        /// What the refusing bucket lacks to be full, in its units ("Used" in the message).
        used: u64,
        /// The request's weight in that limit.
        requested: u64,
        /// Until both limits would pay for it.
        wait: Duration,
    },
    /// Its token cost exceeds the whole minute's limit: it can never be admitted.
    TooLarge {
        /// The tokens-per-minute limit.
        limit: u64,
        /// The request's token cost.
        requested: u64,
    },
}

/// The limits' decision and the state to announce in the headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verdict {
    /// Whether and why not.
    pub(crate) admission: Admission,
    /// The request limit after this request, when it is on.
    pub(crate) requests: Option<Reading>,
    /// The token limit after this request, when it is on.
    pub(crate) tokens: Option<Reading>,
}

impl Verdict {
    /// The 429 for a refused request: `rate_limit_exceeded` with the numbers and the wait, or
    /// "Request too large"; `None` for an admitted one.
    pub(crate) fn refusal(&self, model: &str) -> Option<Answer> {
        match self.admission {
            Admission::Admitted => None,
            Admission::Refused {
                by,
                limit,
                used,
                requested,
                wait,
            } => Some(faults::limit_reached(
                model,
                by,
                (limit, used, requested),
                wait,
            )),
            Admission::TooLarge { limit, requested } => {
                Some(faults::request_too_large(model, limit, requested))
            }
        }
    }

    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits that are on.
    pub(crate) fn headers(&self) -> Vec<(String, String)> {
        [
            (Limit::Requests, self.requests),
            (Limit::Tokens, self.tokens),
        ]
        .into_iter()
        .filter_map(|(limit, reading)| Some((limit.name(), reading?)))
        .flat_map(|(unit, reading)| {
            [
                ("limit", reading.limit_per_minute.to_string()),
                ("remaining", reading.remaining.to_string()),
                ("reset", faults::go_duration(reading.reset)),
            ]
            .map(|(what, value)| (format!("x-ratelimit-{what}-{unit}"), value))
        })
        .collect()
    }
}

/// The server's limits, checked together so that a request one refuses costs the other nothing.
#[derive(Debug)]
pub(crate) struct Limits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Limits {
    /// The limits `config` asks for, full at `now`; `None` when it asks for none.
    pub(crate) fn new(config: &MockConfig, now: Instant) -> Option<Limits> {
        let positive = |rate: Option<f64>| rate.filter(|rate| *rate > 0.0);
        let limits = Limits {
            requests: positive(config.requests_per_second).map(|rps| Bucket::requests(rps, now)),
            tokens: positive(config.tokens_per_minute).map(|tpm| Bucket::tokens(tpm, now)),
        };
        (limits.requests.is_some() || limits.tokens.is_some()).then_some(limits)
    }

    /// Whether a token limit is on, so a request's token cost is needed.
    pub(crate) fn counts_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Admits a request costing `cost` tokens at `now` if both limits can pay for it, and takes
    /// from both only then.
    pub(crate) fn admit(&mut self, cost: u64, now: Instant) -> Verdict {
        let weight = cost as f64;
        for bucket in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            bucket.refill(now);
        }
        let admission = match &self.tokens {
            Some(tokens) if cost > tokens.per_minute() => Admission::TooLarge {
                limit: tokens.per_minute(),
                requested: cost,
            },
            _ => {
                let refusals = [
                    self.requests
                        .as_ref()
                        .map(|bucket| (Limit::Requests, bucket, 1.0)),
                    self.tokens
                        .as_ref()
                        .map(|bucket| (Limit::Tokens, bucket, weight)),
                ];
                refusals
                    .into_iter()
                    .flatten()
                    .filter_map(|(by, bucket, weight)| bucket.refusal(by, weight))
                    .max_by_key(|(wait, _)| *wait)
                    .map_or(Admission::Admitted, |(_, refusal)| refusal)
            }
        };
        if admission == Admission::Admitted {
            if let Some(bucket) = &mut self.requests {
                bucket.take(1.0);
            }
            if let Some(bucket) = &mut self.tokens {
                bucket.take(weight);
            }
        }
        Verdict {
            admission,
            requests: self.requests.as_ref().map(Bucket::reading),
            tokens: self.tokens.as_ref().map(Bucket::reading),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: Option<f64>, tpm: Option<f64>, now: Instant) -> Limits {
        let config = MockConfig {
            requests_per_second: rps,
            tokens_per_minute: tpm,
            ..MockConfig::default()
        };
        Limits::new(&config, now).expect("a limit is on")
    }

    fn admitted(verdict: &Verdict) -> bool {
        verdict.admission == Admission::Admitted
    }

    #[rstest::rstest]
    #[case(0.0)]
    #[case(-1.0)]
    #[case(f64::NAN)]
    #[case(f64::INFINITY)]
    fn a_rate_of_zero_or_nonsense_does_not_panic(#[case] rate: f64) {
        let start = Instant::now();
        let mut bucket = Bucket::requests(rate, start);
        assert_eq!(bucket.wait(1.0), Duration::ZERO);
        bucket.take(1.0);
        let wait = bucket.wait(1.0);
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
        assert!(Limits::new(&MockConfig::default(), start).is_none());
    }

    #[test]
    fn allows_the_rate_and_a_short_burst_only() {
        let start = Instant::now();
        let mut limits = limits(Some(100.0), None, start);
        let burst = (0..50)
            .filter(|_| admitted(&limits.admit(0, start)))
            .count();
        assert_eq!(burst, 10, "a tenth of a second's worth");
        let verdict = limits.admit(0, start);
        assert_eq!(
            verdict.admission,
            Admission::Refused {
                by: Limit::Requests,
                limit: 6000,
                used: 10,
                requested: 1,
                wait: Duration::from_millis(10),
            }
        );
        let reading = verdict.requests.expect("request limit on");
        assert_eq!(
            reading.remaining, 5990,
            "the minute's limit less what is lacking"
        );
        assert_eq!(reading.reset, Duration::from_millis(100));
        assert!(verdict.tokens.is_none());
        // One second later, 100 more are allowed over that second.
        let allowed = (1..=100)
            .filter(|i| admitted(&limits.admit(0, start + Duration::from_millis(10 * i))))
            .count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn tokens_refill_continuously_at_a_sixtieth_of_the_limit_per_second() {
        let start = Instant::now();
        // 6,000 TPM: 100 tokens a second, a bucket of 100.
        let mut limits = limits(None, Some(6000.0), start);
        let first = limits.admit(60, start);
        assert!(admitted(&first));
        let reading = first.tokens.expect("token limit on");
        assert_eq!(
            reading,
            Reading {
                limit_per_minute: 6000,
                remaining: 5940,
                reset: Duration::from_millis(600)
            }
        );
        let refused = limits.admit(60, start);
        assert_eq!(
            refused.admission,
            Admission::Refused {
                by: Limit::Tokens,
                limit: 6000,
                used: 60,
                requested: 60,
                wait: Duration::from_millis(200),
            }
        );
        assert!(!admitted(
            &limits.admit(60, start + Duration::from_millis(199))
        ));
        assert!(admitted(
            &limits.admit(60, start + Duration::from_millis(200))
        ));
    }

    #[test]
    fn a_request_over_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() {
        let start = Instant::now();
        let mut limits = limits(None, Some(6000.0), start);
        assert!(admitted(&limits.admit(10, start)));
        // 500 tokens is five seconds' worth: it needs the bucket full, not 500 in it.
        let early = limits.admit(500, start);
        assert!(matches!(
            early.admission,
            Admission::Refused { wait, .. } if wait == Duration::from_millis(100)
        ));
        let full = start + Duration::from_millis(100);
        let verdict = limits.admit(500, full);
        assert!(admitted(&verdict));
        let reading = verdict.tokens.expect("token limit on");
        assert_eq!(reading.remaining, 5500);
        assert_eq!(
            reading.reset,
            Duration::from_secs(5),
            "the debt is paid back first"
        );
        // Even a one-token request waits for the debt: 400 tokens below empty, 4 s plus 10 ms.
        let next = limits.admit(1, full);
        assert!(matches!(
            next.admission,
            Admission::Refused { wait, .. } if wait == Duration::from_millis(4010)
        ));
    }

    #[test]
    fn a_request_over_the_whole_minute_is_too_large_and_costs_nothing() {
        let start = Instant::now();
        let mut limits = limits(Some(100.0), Some(6000.0), start);
        let verdict = limits.admit(6001, start);
        assert_eq!(
            verdict.admission,
            Admission::TooLarge {
                limit: 6000,
                requested: 6001
            }
        );
        assert_eq!(verdict.requests.map(|r| r.remaining), Some(6000));
        assert_eq!(verdict.tokens.map(|r| r.remaining), Some(6000));
        assert!(
            admitted(&limits.admit(6000, start)),
            "exactly the minute fits"
        );
    }

    #[test]
    fn a_refusal_by_one_limit_takes_nothing_from_the_other() {
        let start = Instant::now();
        // 600 RPM (a burst of 1), 6,000 TPM (a bucket of 100 tokens).
        let mut limits = limits(Some(10.0), Some(6000.0), start);
        assert!(admitted(&limits.admit(60, start)));
        // The request limit refuses: the tokens stay.
        let by_requests = limits.admit(10, start);
        assert!(matches!(
            by_requests.admission,
            Admission::Refused {
                by: Limit::Requests,
                ..
            }
        ));
        assert_eq!(by_requests.tokens.map(|r| r.remaining), Some(5940));
        // The token limit refuses: the request stays for the next one that fits.
        let later = start + Duration::from_millis(100);
        let by_tokens = limits.admit(95, later);
        assert!(matches!(
            by_tokens.admission,
            Admission::Refused {
                by: Limit::Tokens,
                ..
            }
        ));
        assert_eq!(by_tokens.requests.map(|r| r.remaining), Some(600));
        assert!(admitted(&limits.admit(5, later)));
    }

    #[test]
    fn with_both_refusing_the_longer_wait_is_announced() {
        let start = Instant::now();
        let mut limits = limits(Some(10.0), Some(6000.0), start);
        assert!(admitted(&limits.admit(100, start)));
        // Requests need 100 ms more, tokens 1 s (100 tokens at 100 a second).
        let verdict = limits.admit(100, start);
        assert_eq!(
            verdict.admission,
            Admission::Refused {
                by: Limit::Tokens,
                limit: 6000,
                used: 100,
                requested: 100,
                wait: Duration::from_secs(1),
            }
        );
    }
}
