//! Rate control. Hard ceilings from the user: requests per minute ([`RequestLimiter`], `--rpm`)
//! and tokens per minute ([`TokenLimiter`], `--tpm`), both governor. Soft pacing from the server:
//! [`Pacer`] follows `x-ratelimit-limit-requests` and backs off on 429s (AIMD), so a job with no
//! configured limit converges to the server's.

use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::http::hints;

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

/// Lowest pace the AIMD may fall to on its own, requests per second. A server that announces
/// a lower limit is believed: the floor is then its ceiling (see [`Pacer::observe`]).
const MIN_RATE: f64 = 0.5;
/// Highest pace the pacer ever holds, requests per second: the highest limit a server can
/// announce ([`hints::MAX_LIMIT_PER_MINUTE`]). Without it, hours of additive increase with no
/// limit header would reach infinity, from which no decrease comes back.
const MAX_RATE: f64 = hints::MAX_LIMIT_PER_MINUTE / 60.0;
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

/// Pacing learned from the server.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    /// Requests per second now; `None` until the server says anything.
    rate: Option<f64>,
    /// From `x-ratelimit-limit-requests`, per second, with headroom.
    ceiling: Option<f64>,
    next_slot: Instant,
    /// Answers and 429s since the last adjustment.
    answers: u64,
    refused: u64,
    last_adjust: Instant,
    window_start: Instant,
    window_count: u64,
    measured: f64,
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
                rate: None,
                ceiling: None,
                next_slot: now,
                answers: 0,
                refused: 0,
                last_adjust: now,
                window_start: now,
                window_count: 0,
                measured: 0.0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        // A few arithmetic assignments per lock: a panic cannot leave a half state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Books the next send: returns when it may go (`None`: now).
    pub fn reserve(&self, now: Instant) -> Option<Instant> {
        let mut s = self.lock();
        s.window_count += 1;
        let elapsed = now.saturating_duration_since(s.window_start);
        if elapsed >= ADJUST_EVERY {
            s.measured = s.window_count as f64 / elapsed.as_secs_f64();
            s.window_start = now;
            s.window_count = 0;
        }
        let rate = s.rate?;
        let slot = s.next_slot.max(now);
        // The rate is kept within MIN..=MAX_RATE by `observe`; the fallback is for the
        // impossible rest, so a bad value can never panic here.
        let spacing = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::from_secs(60));
        s.next_slot = slot + spacing;
        (slot > now + AHEAD).then_some(slot - AHEAD)
    }

    /// Learns from an answer: the announced limit (requests per minute, when sent and
    /// positive: Azure sends -1 or 0 for unknown; clamped to
    /// [`hints::MIN_LIMIT_PER_MINUTE`]..=[`hints::MAX_LIMIT_PER_MINUTE`]) and whether it was a
    /// 429.
    ///
    /// The pace always stays within `[min(MIN_RATE, ceiling), min(ceiling, MAX_RATE)]`: a
    /// 429 slow-down never raises a pace above the server's announced limit, and the additive
    /// increase never runs away.
    pub fn observe(&self, limit_per_minute: Option<f64>, rate_limited: bool, now: Instant) {
        let mut s = self.lock();
        if let Some(limit) = limit_per_minute.filter(|l| l.is_finite() && *l > 0.0) {
            let limit = limit.clamp(hints::MIN_LIMIT_PER_MINUTE, hints::MAX_LIMIT_PER_MINUTE);
            let ceiling = limit / 60.0 * HEADROOM;
            s.ceiling = Some(ceiling);
            s.rate = Some(s.rate.map_or(ceiling, |r| r.min(ceiling)));
        }
        s.answers += 1;
        s.refused += u64::from(rate_limited);
        if now.duration_since(s.last_adjust) < ADJUST_EVERY || s.answers < MIN_ANSWERS {
            return;
        }
        let share = s.refused as f64 / s.answers as f64;
        let top = s.ceiling.map_or(MAX_RATE, |c| c.min(MAX_RATE));
        let floor = MIN_RATE.min(top);
        if share > CONGESTED {
            let base = s.rate.unwrap_or(s.measured).clamp(floor, top);
            s.rate = Some((base * DECREASE).clamp(floor, top));
        } else if let Some(rate) = s.rate {
            let raised = rate + (rate * INCREASE).max(1.0);
            let useful = match s.ceiling {
                Some(_) => top,
                None => (s.measured * USEFUL_HEADROOM).max(rate),
            };
            s.rate = Some(raised.min(useful).min(top).max(rate.min(top)));
        }
        s.answers = 0;
        s.refused = 0;
        s.last_adjust = now;
    }

    /// The current pace, requests per second (`None`: not pacing).
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(pacer.reserve(t), None, "no pacing before the server speaks");
        pacer.observe(Some(6000.0), false, t);
        assert_eq!(pacer.rate(), Some(100.0 * HEADROOM));
        // Slots are spaced 1/rate apart, and a send may run AHEAD of its slot.
        let slots: Vec<Option<Instant>> = (0..6).map(|_| pacer.reserve(t)).collect();
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
        pacer.observe(Some(6000.0), false, t);
        let start = pacer.rate().expect("pacing");
        // An interval where half the answers are 429s: one decrease.
        let later = t + ADJUST_EVERY;
        for i in 0..20 {
            pacer.observe(None, i % 2 == 0, later);
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
                pacer.observe(Some(6000.0), false, now);
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
        pacer.observe(Some(6000.0), false, t);
        let start = pacer.rate().expect("pacing");
        let mut now = t;
        for _ in 0..20 {
            now += ADJUST_EVERY;
            for i in 0..20 {
                pacer.observe(None, i % 10 == 0, now);
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
            pacer.observe(None, true, now);
        }
        assert!(pacer.rate().is_some());
        for _ in 0..20_000 {
            now += ADJUST_EVERY;
            for _ in 0..MIN_ANSWERS {
                pacer.reserve(now);
                pacer.observe(None, false, now);
            }
        }
        let calm = pacer.rate().expect("pacing");
        assert!(calm.is_finite() && calm <= MAX_RATE, "{calm}");
        assert!(
            calm <= 2.0 * MIN_ANSWERS as f64 + 1.0,
            "{calm}: far above what was sent"
        );
        now += ADJUST_EVERY;
        for _ in 0..MIN_ANSWERS {
            pacer.observe(None, true, now);
        }
        let slowed = pacer.rate().expect("pacing");
        assert!(slowed < calm, "{slowed} < {calm}");
    }

    /// A server announcing 10/min (or a broken 1e-300/min) is believed: the 429 slow-down's
    /// floor never lifts the pace above it, and the next slot is a finite time away.
    #[rstest::rstest]
    #[case::ten_a_minute(10.0, 10.0)]
    #[case::vanishing(1e-300, hints::MIN_LIMIT_PER_MINUTE)]
    fn a_low_announced_limit_is_never_exceeded(#[case] announced: f64, #[case] kept: f64) {
        let t = Instant::now();
        let pacer = Pacer::new(t);
        pacer.observe(Some(announced), false, t);
        let ceiling = kept / 60.0 * HEADROOM;
        assert!((pacer.rate().expect("pacing") - ceiling).abs() < 1e-12);
        let now = t + ADJUST_EVERY;
        for _ in 0..MIN_ANSWERS {
            pacer.observe(Some(announced), true, now);
        }
        let rate = pacer.rate().expect("pacing");
        assert!(rate <= ceiling + 1e-12, "{rate} > {ceiling}");
        pacer.reserve(now);
        let next = pacer.reserve(now).expect("paced");
        assert!(next > now);
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
