//! Rate control. Hard ceilings from the user: requests per minute ([`RequestLimiter`], `--rpm`)
//! and tokens per minute ([`TokenLimiter`], `--tpm`), both governor. Soft pacing from the server:
//! [`Pacer`] follows the announced request and token limits (`x-ratelimit-limit-*`) and backs
//! off on 429s (AIMD), so a job with no configured limit converges to the server's.

use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::http::hints::{self, LimitKind};

/// A requests-per-minute ceiling shared by every attempt, retries included.
#[derive(Debug)]
pub struct RequestLimiter {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl RequestLimiter {
    /// `None` means no ceiling.
    ///
    /// The burst is a tenth of a second's share of the minute, not the whole minute: OpenAI
    /// enforces a per-minute limit over shorter periods (60,000 RPM as 1,000 per second), so a
    /// large burst earns 429s even while the minute's total is under the limit.
    pub fn per_minute(rpm: Option<NonZeroU32>) -> RequestLimiter {
        let limiter = rpm.map(|rpm| {
            let burst = NonZeroU32::new(rpm.get() / 600).unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs(60) / rpm.get();
            // `with_period` is `None` only for a zero period, and 60 s / u32::MAX is 13 ns.
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        RequestLimiter { limiter }
    }

    /// Whether there is a ceiling.
    pub fn is_limited(&self) -> bool {
        self.limiter.is_some()
    }

    /// Waits until one more request may go out.
    pub async fn until_ready(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }
}

/// A tokens-per-minute ceiling: each request waits for its estimated token cost.
#[derive(Debug)]
pub struct TokenLimiter {
    limiter: DefaultDirectRateLimiter,
    per_minute: u32,
    chunk: NonZeroU32,
}

/// A request that can never fit the per-minute token budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this request needs about {needed} tokens but --tpm allows {per_minute} per minute: it can never be sent at this limit; raise --tpm or shorten the request"
)]
pub struct TooLarge {
    /// The request's estimated tokens.
    pub needed: u64,
    /// The limit.
    pub per_minute: u32,
}

impl TokenLimiter {
    /// A ceiling of `tpm` tokens per minute. The burst is a tenth of a second's share; a request
    /// larger than that waits for its tokens in burst-sized chunks, so big requests are paced
    /// at the true rate instead of needing a minute-sized burst.
    pub fn per_minute(tpm: NonZeroU32) -> TokenLimiter {
        let chunk = NonZeroU32::new(tpm.get() / 600).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs(60) / tpm.get();
        // `with_period` is `None` only for a zero period, and 60 s / u32::MAX is 13 ns.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(chunk);
        TokenLimiter {
            limiter: RateLimiter::direct(quota),
            per_minute: tpm.get(),
            chunk,
        }
    }

    /// Waits until `tokens` may be spent.
    ///
    /// # Errors
    /// [`TooLarge`] at once when `tokens` exceeds the whole per-minute budget.
    pub async fn until_ready(&self, tokens: u64) -> Result<(), TooLarge> {
        if tokens > u64::from(self.per_minute) {
            return Err(TooLarge {
                needed: tokens,
                per_minute: self.per_minute,
            });
        }
        let mut left = tokens;
        while left > 0 {
            let n = left.min(u64::from(self.chunk.get())) as u32;
            // n is in 1..=chunk, the burst: `until_n_ready` cannot report insufficient capacity.
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            if self.limiter.until_n_ready(n).await.is_err() {
                break;
            }
            left -= u64::from(n.get());
        }
        Ok(())
    }
}

/// Lowest pace the AIMD may fall to on its own, requests per second (for tokens, this times
/// the mean cost of a request). A server that announces a lower limit is believed: the floor
/// is then its ceiling (see [`Schedule::announce`]).
const MIN_RATE: f64 = 0.5;
/// Highest pace the pacer ever holds, per second: the highest limit a server can announce.
/// Without it, hours of additive increase with no limit header would reach infinity, from
/// which no decrease comes back.
const MAX_REQUEST_RATE: f64 = hints::MAX_REQUESTS_PER_MINUTE as f64 / 60.0;
const MAX_TOKEN_RATE: f64 = hints::MAX_TOKENS_PER_MINUTE as f64 / 60.0;
/// Without an announced ceiling, the pace climbs to at most this multiple of the rate actually
/// sent: raising a pace nobody is held back by only makes the next slow-down take longer.
const USEFUL_HEADROOM: f64 = 2.0;
/// Multiplicative decrease on a 429.
const DECREASE: f64 = 0.7;
/// Additive increase per [`ADJUST_EVERY`] without a 429: this share of the rate, at least 1/s.
const INCREASE: f64 = 0.05;
/// The pace is adjusted at most once per this interval, from the answers seen in it: the 429s
/// of requests already in flight are one signal, not many.
const ADJUST_EVERY: Duration = Duration::from_secs(1);
/// Answers needed in an interval before it says anything.
const MIN_ANSWERS: u64 = 10;
/// Share of 429s in an interval that means "too fast". Lower shares are noise (a server that
/// refuses a random few), which must not ratchet the pace down to nothing.
const CONGESTED: f64 = 0.2;
/// Share of the server's announced limit aimed at: just under it, for the jitter of the network.
const HEADROOM: f64 = 0.98;
/// How far ahead of its pace a send may go without waiting. Sleeping to exact slots a
/// millisecond apart loses a tenth of the rate to the timer's granularity; a 20 ms burst is well
/// within what a server tolerates (OpenAI quantizes a per-minute limit to 1 s windows).
const AHEAD: Duration = Duration::from_millis(20);
/// Weight of a new request's token cost in the running mean cost.
const COST_SMOOTHING: f64 = 0.05;

/// One budget the server paces: requests or tokens per second, as a virtual clock (the
/// generic cell rate algorithm): each send moves `next` on by its weight over the rate, and a
/// send may go when `next` is at most [`AHEAD`] away.
#[derive(Debug)]
struct Schedule {
    /// Units per second now; `None` until the server says anything.
    rate: Option<f64>,
    /// From the announced limit, per second, with headroom.
    ceiling: Option<f64>,
    /// The highest rate this budget may ever hold.
    max_rate: f64,
    /// The lowest rate the AIMD falls to on its own.
    min_rate: f64,
    next: Instant,
    /// Answers and 429s of this budget since the last adjustment.
    answers: u64,
    refused: u64,
    last_adjust: Instant,
    /// Units sent since `window_start`, and the rate they made over the last window.
    window_start: Instant,
    window_units: f64,
    measured: f64,
}

impl Schedule {
    fn new(max_rate: f64, min_rate: f64, now: Instant) -> Schedule {
        Schedule {
            rate: None,
            ceiling: None,
            max_rate,
            min_rate,
            next: now,
            answers: 0,
            refused: 0,
            last_adjust: now,
            window_start: now,
            window_units: 0.0,
            measured: 0.0,
        }
    }

    /// Books `units`: returns when they may go (`None`: now).
    fn reserve(&mut self, now: Instant, units: f64) -> Option<Instant> {
        self.window_units += units;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= ADJUST_EVERY {
            self.measured = self.window_units / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_units = 0.0;
        }
        let rate = self.rate?;
        let slot = self.next.max(now);
        // The rate is kept within min..=max by `announce` and `observe`; the fallback is for
        // the impossible rest, so a bad value can never panic here.
        let spacing = Duration::try_from_secs_f64(units / rate).unwrap_or(Duration::from_secs(60));
        self.next = slot + spacing;
        (slot > now + AHEAD).then_some(slot - AHEAD)
    }

    /// Gives back `units` booked but not spent (a cost estimated too high).
    fn refund(&mut self, units: f64, now: Instant) {
        if let Some(rate) = self.rate
            && let Ok(back) = Duration::try_from_secs_f64(units / rate)
        {
            self.next = self.next.checked_sub(back).unwrap_or(now).max(now);
        }
    }

    /// Takes an announced limit, per minute. Returns whether it changed.
    fn announce(&mut self, per_minute: u64) -> bool {
        let ceiling = per_minute as f64 / 60.0 * HEADROOM;
        let changed = self.ceiling != Some(ceiling);
        self.ceiling = Some(ceiling);
        self.rate = Some(self.rate.map_or(ceiling, |r| r.min(ceiling)));
        changed
    }

    /// Learns from an answer that counted against this budget: whether it was refused (429).
    /// The pace always stays within `[min(min_rate, ceiling), min(ceiling, max_rate)]`: a 429
    /// slow-down never raises a pace above the server's announced limit, and the additive
    /// increase never runs away.
    fn observe(&mut self, refused: bool, now: Instant) {
        self.answers += 1;
        self.refused += u64::from(refused);
        if now.saturating_duration_since(self.last_adjust) < ADJUST_EVERY
            || self.answers < MIN_ANSWERS
        {
            return;
        }
        let share = self.refused as f64 / self.answers as f64;
        let top = self.ceiling.map_or(self.max_rate, |c| c.min(self.max_rate));
        let floor = self.min_rate.min(top);
        if share > CONGESTED {
            let base = self.rate.unwrap_or(self.measured).clamp(floor, top);
            self.rate = Some((base * DECREASE).clamp(floor, top));
        } else if let Some(rate) = self.rate {
            let raised = rate + (rate * INCREASE).max(1.0);
            let useful = match self.ceiling {
                Some(_) => top,
                None => (self.measured * USEFUL_HEADROOM).max(rate),
            };
            self.rate = Some(raised.min(useful).min(top).max(rate.min(top)));
        }
        self.answers = 0;
        self.refused = 0;
        self.last_adjust = now;
    }
}

/// Pacing learned from the server: its request and token limits (from the `x-ratelimit-*`
/// headers, [`hints::announced`]) and its 429s (AIMD), so a job with no configured limit
/// converges to the server's.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    requests: Schedule,
    tokens: Schedule,
    /// Mean token cost of a request (prompt plus maximum output), once any was counted.
    cost_each: Option<f64>,
    /// The limits last announced, per minute.
    announced: Limits,
}

/// Limits per minute, as announced by a server or given by the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub requests: Option<u64>,
    /// Tokens per minute.
    pub tokens: Option<u64>,
}

impl Limits {
    /// `requests 3000/min, tokens 300000/min`, or `none`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [("requests", self.requests), ("tokens", self.tokens)]
            .into_iter()
            .filter_map(|(name, limit)| limit.map(|l| format!("{name} {l}/min")))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Reads what [`Limits::describe`] wrote.
    pub fn parse(text: &str) -> Limits {
        let mut limits = Limits::default();
        for part in text.split(',') {
            let mut words = part.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value = value.strip_suffix("/min").and_then(|v| v.parse().ok());
            match name {
                "requests" => limits.requests = value,
                "tokens" => limits.tokens = value,
                _ => {}
            }
        }
        limits
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(Instant::now())
    }
}

impl Pacer {
    /// A pacer that does not hold anything back until the server speaks.
    pub fn new(now: Instant) -> Pacer {
        Pacer {
            state: Mutex::new(PacerState {
                requests: Schedule::new(MAX_REQUEST_RATE, MIN_RATE, now),
                tokens: Schedule::new(MAX_TOKEN_RATE, MIN_RATE, now),
                cost_each: None,
                announced: Limits::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // A few arithmetic assignments per lock: a panic cannot leave a half state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Books the next send, of `tokens` (its estimated cost, when counted): returns when it
    /// may go (`None`: now), and which budget holds it back.
    pub fn reserve(&self, now: Instant, tokens: Option<u64>) -> Option<(Instant, LimitKind)> {
        let mut s = self.lock();
        let by_requests = s
            .requests
            .reserve(now, 1.0)
            .map(|at| (at, LimitKind::Requests));
        let by_tokens = tokens.and_then(|cost| {
            let cost = cost as f64;
            s.cost_each = Some(
                s.cost_each
                    .map_or(cost, |mean| mean + COST_SMOOTHING * (cost - mean)),
            );
            s.tokens
                .reserve(now, cost)
                .map(|at| (at, LimitKind::Tokens))
        });
        by_requests
            .into_iter()
            .chain(by_tokens)
            .max_by_key(|(at, _)| *at)
    }

    /// Whether the server paces tokens: every request's cost must then be counted.
    pub fn counts_tokens(&self) -> bool {
        self.lock().tokens.rate.is_some()
    }

    /// Gives back tokens booked for a request that turned out to cost fewer.
    pub fn refund_tokens(&self, tokens: u64, now: Instant) {
        if tokens > 0 {
            self.lock().tokens.refund(tokens as f64, now);
        }
    }

    /// Learns from an answer: the limits it announced, and whether it was a 429 of one of them
    /// (`refused`). Returns the limits when they differ from the last announced (to journal).
    pub fn observe(
        &self,
        announced: &hints::Announced,
        refused: Option<LimitKind>,
        now: Instant,
    ) -> Option<Limits> {
        let mut s = self.lock();
        let mut changed = false;
        if let Some(limit) = announced.requests.limit {
            changed |= s.requests.announce(limit);
            s.announced.requests = Some(limit);
        }
        if let Some(limit) = announced.tokens.limit {
            changed |= s.tokens.announce(limit);
            s.announced.tokens = Some(limit);
        }
        // A 429 on tokens before any token limit is known slows the requests: their pace is
        // the one measured, and it bounds the tokens too.
        let paces_tokens = s.tokens.rate.is_some();
        let by_requests = match refused {
            Some(LimitKind::Requests) => true,
            Some(LimitKind::Tokens) => !paces_tokens,
            None => false,
        };
        s.requests.observe(by_requests, now);
        if paces_tokens {
            s.tokens.observe(refused == Some(LimitKind::Tokens), now);
        }
        changed.then_some(s.announced)
    }

    /// Takes limits known before any answer (journaled by an earlier run against the same
    /// server): paced from the first request.
    pub fn assume(&self, limits: Limits) {
        let mut s = self.lock();
        if let Some(limit) = limits.requests {
            s.requests.announce(limit);
        }
        if let Some(limit) = limits.tokens {
            s.tokens.announce(limit);
        }
        s.announced = limits;
    }

    /// The current request pace, requests per second (`None`: not pacing).
    pub fn rate(&self) -> Option<f64> {
        self.lock().requests.rate
    }

    /// The requests per second the server's pace allows: the request pace, or the token pace
    /// over the mean cost of a request, whichever is lower (`None`: not pacing).
    pub fn request_rate(&self) -> Option<f64> {
        let cost = self.lock().cost_each;
        self.request_rate_at(cost)
    }

    /// [`Pacer::request_rate`] with the mean token cost of a request given.
    pub fn request_rate_at(&self, cost_each: Option<f64>) -> Option<f64> {
        let s = self.lock();
        let by_tokens = match (s.tokens.rate, cost_each) {
            (Some(rate), Some(cost)) if cost > 0.0 => Some(rate / cost),
            _ => None,
        };
        match (s.requests.rate, by_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts a request's token cost into the mean, without booking it (another pacer booked
    /// it: a key's own).
    pub fn count_cost(&self, tokens: u64) {
        let mut s = self.lock();
        let cost = tokens as f64;
        s.cost_each = Some(
            s.cost_each
                .map_or(cost, |mean| mean + COST_SMOOTHING * (cost - mean)),
        );
    }

    /// The mean token cost of the requests paced so far.
    pub fn cost_each(&self) -> Option<f64> {
        self.lock().cost_each
    }

    /// The limits last announced.
    pub fn announced(&self) -> Limits {
        self.lock().announced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(limit: Option<u64>) -> hints::Announced {
        let mut announced = hints::Announced::default();
        announced.requests.limit = limit;
        announced
    }

    fn refused(yes: bool) -> Option<LimitKind> {
        yes.then_some(LimitKind::Requests)
    }

    /// On a paused clock a wait cannot pass unnoticed: tokio jumps the clock to the timeout as
    /// soon as the test would block, so the timeout fires instead of the test hanging.
    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let limiter = RequestLimiter::per_minute(None);
        let start = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), async {
            for _ in 0..10_000 {
                limiter.until_ready().await;
            }
        })
        .await
        .expect("10,000 requests went out without waiting");
        assert_eq!(tokio::time::Instant::now(), start, "no time passed");
    }

    #[tokio::test]
    async fn a_request_larger_than_the_minute_fails_at_once() {
        let limiter = TokenLimiter::per_minute(NonZeroU32::new(6000).expect("non-zero"));
        let err = limiter.until_ready(6001).await.expect_err("too large");
        assert!(err.to_string().contains("raise --tpm"), "{err}");
        limiter.until_ready(10).await.expect("fits in the burst");
    }

    #[test]
    fn the_pacer_follows_the_announced_limit() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        assert_eq!(
            pacer.reserve(t, None).map(|(at, _)| at),
            None,
            "no pacing before the server speaks"
        );
        pacer.observe(&requests(Some(6000)), refused(false), t);
        assert_eq!(pacer.rate(), Some(100.0 * HEADROOM));
        // Slots are spaced 1/rate apart, and a send may run AHEAD of its slot.
        let slots: Vec<Option<Instant>> = (0..6)
            .map(|_| pacer.reserve(t, None).map(|(at, _)| at))
            .collect();
        let spacing = 1.0 / (100.0 * HEADROOM);
        let ahead = (AHEAD.as_secs_f64() / spacing).floor() as usize + 1;
        assert!(slots[..ahead].iter().all(Option::is_none), "{slots:?}");
        let gap = slots[ahead + 1].expect("paced") - slots[ahead].expect("paced");
        assert!((gap.as_secs_f64() - spacing).abs() < 1e-6);
    }

    #[test]
    fn the_pacer_backs_off_when_429s_dominate_and_recovers() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        pacer.observe(&requests(Some(6000)), refused(false), t);
        let start = pacer.rate().expect("pacing");
        // An interval where half the answers are 429s: one decrease.
        let later = t + ADJUST_EVERY;
        for i in 0..20 {
            pacer.observe(&requests(None), refused(i % 2 == 0), later);
        }
        let after = pacer.rate().expect("pacing");
        assert!(
            (after - start * DECREASE).abs() < 1e-9,
            "one decrease per interval"
        );
        let mut now = later;
        for _ in 0..30 {
            now += ADJUST_EVERY;
            for _ in 0..MIN_ANSWERS {
                pacer.observe(&requests(Some(6000)), refused(false), now);
            }
        }
        assert_eq!(
            pacer.rate(),
            Some(start),
            "recovers up to the ceiling, not past it"
        );
    }

    #[test]
    fn a_few_random_429s_do_not_ratchet_the_pace_down() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        pacer.observe(&requests(Some(6000)), refused(false), t);
        let start = pacer.rate().expect("pacing");
        let mut now = t;
        for _ in 0..20 {
            now += ADJUST_EVERY;
            for i in 0..20 {
                pacer.observe(&requests(None), refused(i % 10 == 0), now);
            }
        }
        assert_eq!(
            pacer.rate(),
            Some(start),
            "10% of 429s is noise, not congestion"
        );
    }

    /// Hours of calm without a limit header: the pace stays finite and bounded by what is
    /// actually sent, so one congested second still slows it down.
    #[test]
    fn the_additive_increase_is_bounded_without_a_limit_header() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        let mut now = t + ADJUST_EVERY;
        // A congested second with no announced limit starts pacing from the measured rate.
        for _ in 0..MIN_ANSWERS {
            pacer.observe(&requests(None), refused(true), now);
        }
        assert!(pacer.rate().is_some());
        for _ in 0..20_000 {
            now += ADJUST_EVERY;
            for _ in 0..MIN_ANSWERS {
                pacer.reserve(now, None);
                pacer.observe(&requests(None), refused(false), now);
            }
        }
        let calm = pacer.rate().expect("pacing");
        assert!(calm.is_finite() && calm <= MAX_REQUEST_RATE, "{calm}");
        assert!(
            calm <= 2.0 * MIN_ANSWERS as f64 + 1.0,
            "{calm}: far above what was sent"
        );
        now += ADJUST_EVERY;
        for _ in 0..MIN_ANSWERS {
            pacer.observe(&requests(None), refused(true), now);
        }
        let slowed = pacer.rate().expect("pacing");
        assert!(slowed < calm, "{slowed} < {calm}");
    }

    /// A server announcing 10/min or 1/min is believed: the 429 slow-down's floor never lifts
    /// the pace above it, and the next slot is a finite time away.
    #[rstest::rstest]
    #[case::ten_a_minute(10)]
    #[case::one_a_minute(1)]
    fn a_low_announced_limit_is_never_exceeded(#[case] announced: u64) {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        pacer.observe(&requests(Some(announced)), refused(false), t);
        let ceiling = announced as f64 / 60.0 * HEADROOM;
        assert!((pacer.rate().expect("pacing") - ceiling).abs() < 1e-12);
        let now = t + ADJUST_EVERY;
        for _ in 0..MIN_ANSWERS {
            pacer.observe(&requests(Some(announced)), refused(true), now);
        }
        let rate = pacer.rate().expect("pacing");
        assert!(rate <= ceiling + 1e-12, "{rate} > {ceiling}");
        pacer.reserve(now, None);
        let (next, by) = pacer.reserve(now, None).expect("paced");
        assert!(next > now);
        assert_eq!(by, LimitKind::Requests);
    }

    fn tokens(limit: u64) -> hints::Announced {
        let mut announced = hints::Announced::default();
        announced.tokens.limit = Some(limit);
        announced
    }

    #[test]
    fn an_announced_token_limit_paces_by_each_requests_cost() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        assert!(!pacer.counts_tokens());
        let changed = pacer.observe(&tokens(300_000), None, t);
        assert_eq!(
            changed,
            Some(Limits {
                requests: None,
                tokens: Some(300_000)
            })
        );
        assert_eq!(
            pacer.observe(&tokens(300_000), None, t),
            None,
            "no change, nothing to journal"
        );
        assert!(pacer.counts_tokens());
        // 5,000 tokens/s (with headroom): requests of 500 tokens go ~10 a second.
        let mut last = t;
        let mut held = 0;
        for _ in 0..50 {
            if let Some((at, by)) = pacer.reserve(t, Some(500)) {
                assert_eq!(by, LimitKind::Tokens);
                last = at;
                held += 1;
            }
        }
        assert!(held >= 49, "{held}");
        let secs = (last - t).as_secs_f64();
        let expected = 49.0 * 500.0 / (5000.0 * HEADROOM);
        assert!((secs - expected).abs() < 0.05, "{secs} vs {expected}");
        let rate = pacer.request_rate().expect("paced by tokens");
        assert!((rate - 5000.0 * HEADROOM / 500.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn tokens_booked_too_high_are_given_back() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        pacer.observe(&tokens(60_000), None, t);
        for _ in 0..10 {
            pacer.reserve(t, Some(1000));
        }
        let (before, _) = pacer.reserve(t, Some(1)).expect("paced");
        pacer.refund_tokens(5000, t);
        let (after, _) = pacer.reserve(t, Some(1)).expect("still paced");
        assert!(after < before, "{after:?} < {before:?}");
    }

    #[test]
    fn a_429_on_tokens_slows_the_token_pace_only() {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        let mut both = tokens(300_000);
        both.requests.limit = Some(10_000);
        pacer.observe(&both, None, t);
        let requests_before = pacer.rate();
        let later = t + ADJUST_EVERY;
        for _ in 0..MIN_ANSWERS {
            pacer.reserve(later, Some(300));
            pacer.observe(&both, Some(LimitKind::Tokens), later);
        }
        assert_eq!(
            pacer.rate(),
            requests_before,
            "the request pace is untouched"
        );
        let slowed = pacer.request_rate().expect("paced");
        assert!(slowed < 5000.0 * HEADROOM / 300.0, "{slowed}");
    }

    #[test]
    fn limits_read_back_as_written() {
        for limits in [
            Limits::default(),
            Limits {
                requests: Some(3000),
                tokens: None,
            },
            Limits {
                requests: Some(10_000),
                tokens: Some(30_000_000),
            },
            Limits {
                requests: None,
                tokens: Some(1),
            },
        ] {
            assert_eq!(
                Limits::parse(&limits.describe()),
                limits,
                "{}",
                limits.describe()
            );
        }
    }

    #[test]
    fn burst_is_a_tenth_of_a_second_of_the_minute() {
        let limiter = RequestLimiter::per_minute(NonZeroU32::new(6000));
        let inner = limiter.limiter.as_ref().expect("limited");
        let allowed = (0..100).filter(|_| inner.check().is_ok()).count();
        assert_eq!(
            allowed, 10,
            "6000 rpm allows a burst of 10, not 100 or 6000"
        );
    }
}
