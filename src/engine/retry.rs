//! What happens to a request after an attempt: done, retried at a time, failed, or the job stops.
//!
//! Pure functions over a [`Class`], the attempt number and the server's wait hints, so the policy
//! is tested without a network. The chosen time is stored as `next_attempt_at` in the database,
//! so a wait survives a restart.

use std::time::Duration;

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
    /// `server_wait` is what the server asked for (see [`crate::http::hints::server_wait`], which already caps it); it wins over backoff,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StopCause;

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
