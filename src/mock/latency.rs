//! How long an answer takes: a median, a lognormal spread around it, and a slow-down that
//! multiplies every draw after a moment (a model going from 1 s to 10 s per answer mid-job).
//!
//! Draws are reproducible: each is made by a `fastrand::Rng` seeded from the config's seed and a
//! number naming the draw (the body and attempt for a request, else a counter), so the same seed
//! gives the same latencies.

use std::time::Duration;

use super::MockConfig;

/// A drawn latency is at most this many times the median, and at least the median divided by
/// it: a lognormal has an unbounded tail, and one draw of an hour would stall a test or a
/// benchmark. The bound is symmetric in log space, so the median stays the configured one.
const MAX_SPREAD_FACTOR: f64 = 20.0;

/// No latency is drawn longer than this, slow-down included: longer than any client waits.
const MAX_LATENCY: Duration = Duration::from_secs(600);

/// From [`SlowDown::at`] (measured from server start) on, every drawn latency is multiplied by
/// [`SlowDown::factor`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowDown {
    /// When the model slows down, measured from server start.
    pub at: Duration,
    /// What every latency drawn from then on is multiplied by (10: from 1 s to 10 s an answer);
    /// below 1 it speeds up.
    pub factor: f64,
}

/// The latency of draw number `draw`, made `elapsed` after server start.
///
/// With [`MockConfig::latency_spread`] 0 (the default) it is [`MockConfig::latency`] exactly;
/// otherwise `latency × e^(spread × z)` for a standard normal `z`, bounded by
/// [`MAX_SPREAD_FACTOR`]. Nonsense set in code (a negative or NaN spread or factor) counts as
/// no spread and no slow-down rather than a panic.
pub(crate) fn draw(config: &MockConfig, draw: u64, elapsed: Duration) -> Duration {
    let spread = config.latency_spread;
    let mut factor = if spread.is_finite() && spread > 0.0 {
        (spread * standard_normal(config.seed, draw))
            .exp()
            .clamp(1.0 / MAX_SPREAD_FACTOR, MAX_SPREAD_FACTOR)
    } else {
        1.0
    };
    if let Some(slow) = config.slow_down
        && elapsed >= slow.at
        && slow.factor.is_finite()
        && slow.factor > 0.0
    {
        factor *= slow.factor;
    }
    if factor == 1.0 {
        return config.latency.min(MAX_LATENCY);
    }
    let seconds = (config.latency.as_secs_f64() * factor).min(MAX_LATENCY.as_secs_f64());
    Duration::try_from_secs_f64(seconds).unwrap_or(MAX_LATENCY)
}

/// The number of the latency draw for the `attempt`-th request (0-based) with body key `key`:
/// the same request gets the same latency whatever order requests arrive in. The top bit is
/// clear, apart from the numbers of draws for answers without a body.
pub(crate) fn number(key: &str, attempt: u64) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"latency");
    hasher.update(&attempt.to_le_bytes());
    hasher.update(key.as_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(word) >> 1
}

/// A standard normal number for draw `draw` under `seed` (Box–Muller).
fn standard_normal(seed: u64, draw: u64) -> f64 {
    // Mixing the two through a multiply keeps draw n under seed s apart from draw s under n.
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ draw);
    // 1 - f64() is in (0, 1], so the logarithm is finite.
    let radius = (-2.0 * (1.0 - rng.f64()).ln()).sqrt();
    radius * (std::f64::consts::TAU * rng.f64()).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(latency: Duration, spread: f64) -> MockConfig {
        MockConfig {
            latency,
            latency_spread: spread,
            seed: 42,
            ..MockConfig::default()
        }
    }

    fn draws(config: &MockConfig, count: u64) -> Vec<Duration> {
        (0..count)
            .map(|n| draw(config, n, Duration::ZERO))
            .collect()
    }

    #[test]
    fn no_spread_is_the_fixed_latency() {
        let fixed = config(Duration::from_millis(250), 0.0);
        assert!(
            draws(&fixed, 100)
                .iter()
                .all(|d| *d == Duration::from_millis(250))
        );
    }

    #[test]
    fn the_median_of_a_spread_is_the_configured_latency() {
        let spread = config(Duration::from_secs(1), 0.8);
        let mut drawn = draws(&spread, 2001);
        drawn.sort();
        let median = drawn[1000].as_secs_f64();
        assert!((0.9..1.1).contains(&median), "median {median}");
        // A real spread: the quartiles of a lognormal with sigma 0.8 are e^(±0.8×0.674).
        let (low, high) = (drawn[500].as_secs_f64(), drawn[1500].as_secs_f64());
        assert!(
            (0.5..0.65).contains(&low) && (1.5..1.9).contains(&high),
            "{low} {high}"
        );
        // Bounded both ways.
        assert!(drawn[0] >= Duration::from_millis(50) && drawn[2000] <= Duration::from_secs(20));
    }

    #[test]
    fn draws_are_reproducible_for_a_seed() {
        let spread = config(Duration::from_millis(100), 1.0);
        assert_eq!(draws(&spread, 50), draws(&spread, 50));
        let other = MockConfig {
            seed: 43,
            ..spread.clone()
        };
        assert_ne!(draws(&spread, 50), draws(&other, 50));
    }

    #[test]
    fn a_wild_spread_stays_within_the_bounds() {
        let wild = config(Duration::from_secs(60), 50.0);
        for latency in draws(&wild, 500) {
            assert!(latency >= Duration::from_secs(3), "{latency:?}");
            assert!(latency <= MAX_LATENCY, "{latency:?}");
        }
    }

    #[test]
    fn the_slow_down_multiplies_draws_after_its_moment() {
        let slow = MockConfig {
            slow_down: Some(SlowDown {
                at: Duration::from_secs(30),
                factor: 10.0,
            }),
            ..config(Duration::from_secs(1), 0.0)
        };
        assert_eq!(
            draw(&slow, 0, Duration::from_secs(29)),
            Duration::from_secs(1)
        );
        assert_eq!(
            draw(&slow, 0, Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        let huge = MockConfig {
            slow_down: Some(SlowDown {
                at: Duration::ZERO,
                factor: 1e12,
            }),
            ..slow.clone()
        };
        assert_eq!(draw(&huge, 0, Duration::ZERO), MAX_LATENCY);
        let nonsense = MockConfig {
            slow_down: Some(SlowDown {
                at: Duration::ZERO,
                factor: f64::NAN,
            }),
            latency_spread: f64::NAN,
            ..slow
        };
        assert_eq!(draw(&nonsense, 0, Duration::ZERO), Duration::from_secs(1));
    }
}
