//! What happened when: a job's attempts counted in time buckets by class, with latency
//! percentiles, per-key health, the job's events and the detected spikes.
//!
//! Used by `runner timeline` (and `status --timeline`), and by `runner report`.
//!
//! # Buckets
//! An attempt belongs to the bucket in which it was **sent** (`attempts.started_at`): the mock,
//! and the API, decide an answer when the request arrives, a few milliseconds after it was sent.
//! Buckets are aligned to multiples of their width since the Unix epoch (so 1-minute buckets
//! start on whole minutes, UTC). Without `--bucket`, the width is the smallest of 100 ms,
//! 200 ms, 250 ms, 500 ms, 1 s, 2 s, 5 s, 10 s, 15 s, 30 s, 1 m, 2 m, 5 m, 10 m, 15 m, 30 m, 1 h,
//! 2 h, 3 h, 6 h, 12 h, 1 d that gives the job at most [`MAX_AUTO_BUCKETS`] buckets: 30 to 75
//! for any job longer than a few seconds.
//!
//! # Layout
//! - `mod.rs`: [`Timeline`], [`Bucket`], [`AttemptClass`] counts, building them from the journal.
//! - `spikes.rs`: [`Spike`], the spike rule ([`Scanner`]) and the evidence (scopes, keys,
//!   request ids, a verdict).
//! - `chart.rs`: the terminal rendering (sparklines, spike list) and the JSON form.

mod chart;
mod spikes;

use std::time::Duration;

use rusqlite::Connection;

use crate::domain::AttemptClass;
use crate::store::StoreError;
use crate::store::db::{Event, Job};
use crate::store::journal::{self, Outcome};

pub use chart::{pairs, render_text, to_json};
pub use spikes::{
    MIN_SPIKE_SCORE, SPIKE_ERROR_SHARE, Scanner, Spike, Stretch, missing_scopes, status_label,
};

/// Most buckets an automatic width gives a job: one character each in a 100-column terminal.
pub const MAX_AUTO_BUCKETS: i64 = 75;

/// Most buckets a `--bucket` width may give a job: beyond, no chart is readable.
pub const MAX_BUCKETS: i64 = 10_000;

/// Most keys tracked one by one; the rest are summed as `(other keys)`.
pub const MAX_KEYS: usize = 24;

/// Most events read for the charts (breaker and key marks): a long outage logs a few per cycle.
const MAX_EVENTS: usize = 10_000;

/// Automatic bucket widths, in ms: sub-second ones for jobs of seconds (the demo), then round
/// seconds, minutes and hours.
const WIDTHS: [i64; 22] = [
    100, 200, 250, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
    600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000,
    86_400_000,
];

/// Errors building a timeline.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// Reading the journal failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--bucket` would give more buckets than anyone can read.
    #[error(
        "a {bucket} bucket gives this job's {span} more than {MAX_BUCKETS} buckets: use --bucket {suggested} or more"
    )]
    TooManyBuckets {
        /// The width asked for.
        bucket: String,
        /// The job's span.
        span: String,
        /// The smallest width that fits.
        suggested: String,
    },
}

/// Latency percentiles of a bucket's answered attempts, in ms (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u32,
    /// 90th percentile.
    pub p90: u32,
    /// 99th percentile.
    pub p99: u32,
}

impl Latency {
    /// Percentiles of `samples` (sorted in place); `None` when empty.
    pub fn of(samples: &mut [u32]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let n = samples.len();
            let index = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            samples[index]
        };
        Some(Latency {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
        })
    }
}

/// One time bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Unix ms of its start; it ends one width later.
    pub start: i64,
    counts: [u64; AttemptClass::ALL.len()],
    /// Latency percentiles of its attempts that have one.
    pub latency: Option<Latency>,
}

impl Bucket {
    /// Attempts of `series` sent in this bucket.
    pub fn count(&self, series: AttemptClass) -> u64 {
        self.counts[series.index()]
    }

    /// Every attempt sent in this bucket.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Attempts with a verdict (all but interrupted ones).
    pub fn judged(&self) -> u64 {
        self.total() - self.count(AttemptClass::Interrupted)
    }

    /// Attempts whose verdict is not success.
    pub fn errors(&self) -> u64 {
        AttemptClass::ATTEMPTS
            .into_iter()
            .filter(|s| s.is_error())
            .map(|s| self.count(s))
            .sum()
    }

    /// Errors among judged attempts; `None` when there were none.
    pub fn error_share(&self) -> Option<f64> {
        let judged = self.judged();
        (judged > 0).then(|| self.errors() as f64 / judged as f64)
    }
}

/// How one key fared, overall and per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyHealth {
    /// Label or `sk-…abcd` as journaled; `(no key)` or `(other keys)`.
    pub key: String,
    /// Attempts sent with it.
    pub attempts: u64,
    /// Of those, errors (see [`AttemptClass::is_error`]).
    pub errors: u64,
    /// Of those, the intermittent 401.
    pub auth_transient: u64,
    /// (attempts, errors) per bucket, aligned with [`Timeline::buckets`].
    pub per_bucket: Vec<(u32, u32)>,
}

/// A job's attempts over time.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The job's name.
    pub job: String,
    /// Bucket width, ms.
    pub width_ms: i64,
    /// The buckets, oldest first, contiguous (empty ones included).
    pub buckets: Vec<Bucket>,
    /// Per-key health, most used key first.
    pub keys: Vec<KeyHealth>,
    /// The job's events inside the buckets' span, oldest first.
    pub events: Vec<Event>,
    /// The detected spikes, oldest first.
    pub spikes: Vec<Spike>,
}

impl Timeline {
    /// Unix ms where the first bucket starts (0 when there are none).
    pub fn start(&self) -> i64 {
        self.buckets.first().map_or(0, |b| b.start)
    }

    /// Unix ms where the last bucket ends.
    pub fn end(&self) -> i64 {
        self.buckets.last().map_or(0, |b| b.start + self.width_ms)
    }

    /// Attempts counted.
    pub fn attempts(&self) -> u64 {
        self.buckets.iter().map(Bucket::total).sum()
    }

    /// Attempts of `series` in all buckets.
    pub fn total(&self, series: AttemptClass) -> u64 {
        self.buckets.iter().map(|b| b.count(series)).sum()
    }

    /// The index of the bucket holding `at`, if any.
    pub fn bucket_of(&self, at: i64) -> Option<usize> {
        if self.width_ms <= 0 || at < self.start() {
            return None;
        }
        let index = ((at - self.start()) / self.width_ms) as usize;
        (index < self.buckets.len()).then_some(index)
    }
}

/// Builds the timeline of `job` from one consistent snapshot of the journal. `bucket` overrides
/// the automatic width.
///
/// # Errors
/// Database errors; [`TimelineError::TooManyBuckets`] for a `bucket` far too small.
pub fn build(
    conn: &Connection,
    job: &Job,
    bucket: Option<Duration>,
) -> Result<Timeline, TimelineError> {
    // One read transaction: every query below sees the same snapshot while the job writes.
    let snapshot = conn.unchecked_transaction().map_err(StoreError::from)?;
    let mut timeline = Timeline {
        job: job.name.clone(),
        ..Timeline::default()
    };
    let Some(span) = journal::attempt_span(&snapshot, job.id)? else {
        timeline.width_ms = bucket.map_or(1000, duration_ms);
        return Ok(timeline);
    };
    let length = span.last - span.first + 1;
    let width = match bucket {
        Some(b) => {
            let width = duration_ms(b).max(1);
            if length / width >= MAX_BUCKETS {
                return Err(TimelineError::TooManyBuckets {
                    bucket: human_ms(width),
                    span: human_ms(length),
                    suggested: human_ms(length / MAX_BUCKETS + 1),
                });
            }
            width
        }
        None => auto_width(length),
    };
    let start = span.first.div_euclid(width) * width;
    let count = ((span.last - start) / width + 1) as usize;
    timeline.width_ms = width;
    timeline.buckets = (0..count)
        .map(|i| Bucket {
            start: start + i as i64 * width,
            ..Bucket::default()
        })
        .collect();
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); count];
    let mut keys: Vec<KeyHealth> = Vec::new();
    let mut scanner = Scanner::default();
    journal::for_each_outcome::<StoreError>(&snapshot, job.id, |o: Outcome| {
        let series = o.class;
        let index = (o.started_at - start) / width;
        let Some(index) = usize::try_from(index).ok().filter(|i| *i < count) else {
            // Sent after the snapshot's span was read: it shows next time.
            return Ok(());
        };
        timeline.buckets[index].counts[series.index()] += 1;
        if series != AttemptClass::Interrupted {
            scanner.push(o.started_at, series.is_error());
        }
        if let Some(ms) = o.latency_ms.filter(|_| series != AttemptClass::Interrupted) {
            latencies[index].push(u32::try_from(ms.max(0)).unwrap_or(u32::MAX));
        }
        let key = key_slot(&mut keys, o.key.as_deref(), count);
        key.attempts += 1;
        key.per_bucket[index].0 += 1;
        if series.is_error() {
            key.errors += 1;
            key.per_bucket[index].1 += 1;
        }
        if series == AttemptClass::AuthTransient {
            key.auth_transient += 1;
        }
        Ok(())
    })?;
    for (bucket, samples) in timeline.buckets.iter_mut().zip(&mut latencies) {
        bucket.latency = Latency::of(samples);
    }
    keys.sort_by(|a, b| b.attempts.cmp(&a.attempts).then(a.key.cmp(&b.key)));
    timeline.keys = keys;
    timeline.events =
        journal::events_between(&snapshot, job.id, start, timeline.end(), MAX_EVENTS)?;
    timeline.spikes = spikes::describe_all(&snapshot, job.id, &timeline, &scanner.finish())?;
    Ok(timeline)
}

/// The key's tally, created on first sight; past [`MAX_KEYS`] keys, the shared `(other keys)`.
fn key_slot<'k>(
    keys: &'k mut Vec<KeyHealth>,
    key: Option<&str>,
    buckets: usize,
) -> &'k mut KeyHealth {
    let name = key.unwrap_or("(no key)");
    let position = keys.iter().position(|k| k.key == name).or_else(|| {
        (keys.len() >= MAX_KEYS).then(|| keys.iter().position(|k| k.key == "(other keys)"))?
    });
    let index = match position {
        Some(index) => index,
        None => {
            let key = if keys.len() >= MAX_KEYS {
                "(other keys)"
            } else {
                name
            };
            keys.push(KeyHealth {
                key: key.to_owned(),
                per_bucket: vec![(0, 0); buckets],
                ..KeyHealth::default()
            });
            keys.len() - 1
        }
    };
    &mut keys[index]
}

/// The smallest automatic width giving at most [`MAX_AUTO_BUCKETS`] buckets for `length` ms.
pub fn auto_width(length: i64) -> i64 {
    for width in WIDTHS {
        // Aligned buckets can add one at each end: leave room for them.
        if length / width + 2 <= MAX_AUTO_BUCKETS {
            return width;
        }
    }
    let day = 86_400_000;
    (length / (MAX_AUTO_BUCKETS - 2) / day + 1) * day
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `1s`, `5m`, `2h30m`, `450ms`: a width or span for people.
pub fn human_ms(ms: i64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 && ms % 1000 != 0 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let mut secs = ms / 1000;
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
            if text.len() >= 5 {
                break;
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::five_seconds(5_000, 100)]
    #[case::ten_seconds(10_000, 200)]
    #[case::one_minute(60_000, 1_000)]
    #[case::five_minutes(300_000, 5_000)]
    #[case::an_hour(3_600_000, 60_000)]
    #[case::two_hours(7_200_000, 120_000)]
    #[case::a_day(86_400_000, 1_800_000)]
    fn automatic_widths_give_a_readable_count(#[case] length: i64, #[case] width: i64) {
        assert_eq!(auto_width(length), width);
        let buckets = length / width + 2;
        assert!(buckets <= MAX_AUTO_BUCKETS, "{buckets}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        let l = Latency::of(&mut samples).expect("samples");
        assert_eq!((l.p50, l.p90, l.p99), (50, 90, 99));
        assert_eq!(Latency::of(&mut []), None);
        let l = Latency::of(&mut [7]).expect("one");
        assert_eq!((l.p50, l.p99), (7, 7));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(450), "450ms");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human_ms(60_000), "1m");
        assert_eq!(human_ms(9_000_000), "2h30m");
    }

    #[test]
    fn keys_past_the_cap_share_one_row() {
        let mut keys = Vec::new();
        for i in 0..MAX_KEYS + 5 {
            key_slot(&mut keys, Some(&format!("k{i}")), 1).attempts += 1;
        }
        key_slot(&mut keys, None, 1);
        assert_eq!(keys.len(), MAX_KEYS + 1);
        let other = keys
            .iter()
            .find(|k| k.key == "(other keys)")
            .expect("other");
        assert_eq!(other.attempts, 5);
    }
}
