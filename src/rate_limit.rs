//! The shared request-rate ceiling (`--rpm`), a wrapper over governor.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A requests-per-minute ceiling shared by every attempt, retries included.
#[derive(Debug)]
pub struct RequestLimiter {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl RequestLimiter {
    /// `None` means no ceiling.
    ///
    /// The burst is one second's share of the minute, not the whole minute: OpenAI enforces a
    /// per-minute limit over shorter periods, so a full-minute burst earns 429s.
    pub fn per_minute(rpm: Option<NonZeroU32>) -> RequestLimiter {
        let limiter = rpm.map(|rpm| {
            let burst = NonZeroU32::new(rpm.get() / 60).unwrap_or(NonZeroU32::MIN);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = RequestLimiter::per_minute(None);
        for _ in 0..10_000 {
            limiter.until_ready().await;
        }
    }

    #[test]
    fn burst_is_a_second_of_the_minute() {
        let limiter = RequestLimiter::per_minute(NonZeroU32::new(600));
        let inner = limiter.limiter.as_ref().expect("limited");
        let allowed = (0..100).filter(|_| inner.check().is_ok()).count();
        assert_eq!(allowed, 10, "600 rpm allows a burst of 10, not 600");
    }
}
