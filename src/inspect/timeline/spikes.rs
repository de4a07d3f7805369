//! Spikes: when failures outnumbered successes, and the evidence to take to support.
//!
//! # The rule
//! Walk a job's attempts in the order they were sent (interrupted ones, which have no verdict,
//! are skipped) keeping a score: each failure (any class but `succeeded`) adds one, each
//! success takes one away, and the score never goes below zero. A stretch starts at the failure
//! that lifts the score above zero and ends at the failure where the score peaks, before it falls
//! back to zero. The stretch is a **spike** when that peak is at least [`MIN_SPIKE_SCORE`]:
//! failures outnumbered successes by that many. Inside a spike more than half of the attempts
//! failed ([`SPIKE_ERROR_SHARE`]).
//!
//! This is the stretch in which failures most outnumber successes (a maximum-sum run, with a
//! failure worth +1 and a success −1). So a spike's start and end are the send times of its first
//! and last failure: exact, not rounded to a bucket, and the breaker holding requests back does
//! not split it (no attempts, no score change; each failed probe lifts the score). A later burst
//! joins the spike when it brings the score back to its peak, i.e. when it has at least as many
//! failures as there were successes since the peak; a smaller one is part of the spike's tail.
//! Random errors at a low rate almost never reach the minimum: with 10% of attempts failing at
//! random, a net ten failures needs ten in a row, about once in 10¹⁰ attempts.
//! While the breaker holds requests back, the last failure seen is the last evidence: the real end
//! lies between [`Spike::end`] and [`Spike::recovered_by`], the first success sent after it.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::{Bucket, Timeline};
use crate::domain::{AttemptClass, JobId};
use crate::store::StoreError;
use crate::store::journal::{self, AttemptFilter, AttemptRecord};

/// Inside a spike, more than this share of attempts failed (the chart's threshold line).
pub const SPIKE_ERROR_SHARE: f64 = 0.5;

/// Net failures (failures minus successes) a stretch needs to be a spike: the breaker trips at
/// ten failures too, so a spike it reacted to is always found, and random errors are not.
pub const MIN_SPIKE_SCORE: u64 = 10;

/// Request ids quoted per spike: enough for support to find it, few enough to paste.
const QUOTED_IDS: usize = 5;

/// Request ids kept while sampling: bounds memory in a spike of millions of errors.
const MAX_SAMPLED_IDS: usize = 100_000;

/// A stretch of attempts found by [`Scanner`]: send times of its first and last failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stretch {
    /// Send time (unix ms) of the first failure.
    pub start: i64,
    /// Send time of the last failure.
    pub end: i64,
    /// Failures in it.
    pub errors: u64,
    /// Attempts with a verdict in it.
    pub attempts: u64,
    /// Send time of the first success after it, if any.
    pub recovered_by: Option<i64>,
}

/// The open stretch of a [`Scanner`].
#[derive(Clone, Copy, Debug)]
struct Open {
    start: i64,
    errors: u64,
    attempts: u64,
    peak: u64,
    /// The stretch as of its peak: what is reported if the score falls back to zero.
    at_peak: Stretch,
}

/// Finds spikes in one pass over the attempts, in send order, with constant memory per spike.
#[derive(Debug, Default)]
pub struct Scanner {
    score: u64,
    open: Option<Open>,
    found: Vec<Stretch>,
}

impl Scanner {
    /// Takes the next attempt with a verdict: sent at `at`, failed or not.
    pub fn push(&mut self, at: i64, failed: bool) {
        if failed {
            self.score += 1;
            let open = self.open.get_or_insert(Open {
                start: at,
                errors: 0,
                attempts: 0,
                peak: 0,
                at_peak: Stretch {
                    start: at,
                    end: at,
                    errors: 0,
                    attempts: 0,
                    recovered_by: None,
                },
            });
            open.errors += 1;
            open.attempts += 1;
            if self.score >= open.peak {
                open.peak = self.score;
                open.at_peak = Stretch {
                    start: open.start,
                    end: at,
                    errors: open.errors,
                    attempts: open.attempts,
                    recovered_by: None,
                };
            }
        } else if let Some(open) = &mut self.open {
            self.score -= 1;
            open.attempts += 1;
            open.at_peak.recovered_by.get_or_insert(at);
            if self.score == 0 {
                self.close();
            }
        }
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take()
            && open.peak >= MIN_SPIKE_SCORE
        {
            self.found.push(open.at_peak);
        }
    }

    /// The spikes found, oldest first.
    pub fn finish(mut self) -> Vec<Stretch> {
        self.close();
        self.found
    }
}

/// One detected spike and what the journal says about it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Spike {
    /// Unix ms when its first failure was sent.
    pub start: i64,
    /// Unix ms when its last failure was sent.
    pub end: i64,
    /// Unix ms when the first success after it was sent: the spike was over by then (it ended
    /// between [`Spike::end`] and this). `None` when nothing has succeeded since.
    pub recovered_by: Option<i64>,
    /// Index of the bucket of its first failure.
    pub first_bucket: usize,
    /// Index of the bucket of its last failure.
    pub last_bucket: usize,
    /// Attempts with a verdict sent in it.
    pub attempts: u64,
    /// Of those, errors.
    pub errors: u64,
    /// The highest error share of the buckets it spans.
    pub peak_share: f64,
    /// Errors by class, most first.
    pub classes: Vec<(AttemptClass, u64)>,
    /// Errors by HTTP status (`None`: no answer), most first.
    pub statuses: Vec<(Option<u16>, u64)>,
    /// Errors by `error.code`, most first.
    pub codes: Vec<(String, u64)>,
    /// Scopes named in "Missing scopes: …" messages, most first.
    pub scopes: Vec<(String, u64)>,
    /// Errors by key, most first.
    pub keys: Vec<(String, u64)>,
    /// A few `x-request-id`s of its errors, first to last: quote them to support.
    pub request_ids: Vec<String>,
    /// Every key that sent attempts in it: (key, attempts, errors), most used first.
    pub keys_in_use: Vec<(String, u64, u64)>,
}

/// An attempt's HTTP status as shown to people: the code, or "no answer".
pub fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "no answer".to_owned(), |s| s.to_string())
}

impl Spike {
    /// [`Spike::statuses`] labelled for display, like the other tallies.
    pub fn status_tally(&self) -> Vec<(String, u64)> {
        self.statuses
            .iter()
            .map(|(status, n)| (status_label(*status), *n))
            .collect()
    }

    /// [`Spike::classes`] by name, like the other tallies.
    pub fn class_tally(&self) -> Vec<(String, u64)> {
        self.classes
            .iter()
            .map(|(class, n)| (class.as_str().to_owned(), *n))
            .collect()
    }

    /// What it was and whose fault it looks like, in one sentence for people.
    pub fn verdict(&self) -> String {
        let cause = match self.classes.first().map(|(c, _)| *c) {
            Some(AttemptClass::AuthTransient) => {
                let scopes: Vec<&str> = self.scopes.iter().map(|(s, _)| s.as_str()).collect();
                let scopes = if scopes.is_empty() {
                    String::new()
                } else {
                    format!(" (missing scopes: {})", scopes.join(", "))
                };
                format!(
                    "intermittent 401s{scopes}, the April 2026 pattern: the requests were requeued, not failed"
                )
            }
            Some(AttemptClass::RateLimited) => {
                "429 rate limits: the runner waited as the server asked".to_owned()
            }
            Some(AttemptClass::Transient) => {
                "server errors or timeouts: retried with backoff".to_owned()
            }
            Some(AttemptClass::JobStop) => {
                "a rejected key, a 403 or an exhausted quota: the job stopped".to_owned()
            }
            Some(AttemptClass::RequestFailed) => {
                "requests rejected as invalid (4xx): they failed".to_owned()
            }
            Some(AttemptClass::InvalidResponse) => {
                "2xx answers whose body was not JSON: sent once more, then failed".to_owned()
            }
            Some(AttemptClass::InvalidInput) => {
                "lines that are not valid requests: they failed".to_owned()
            }
            // A spike is made of failures: a success or an interrupted attempt never leads it.
            Some(AttemptClass::Succeeded | AttemptClass::Interrupted) | None => "errors".to_owned(),
        };
        let failing: Vec<&str> = self
            .keys_in_use
            .iter()
            .filter(|(_, attempts, errors)| *attempts > 0 && *errors * 2 >= *attempts)
            .map(|(k, _, _)| k.as_str())
            .collect();
        let whose = match (self.keys_in_use.len(), failing.len()) {
            (0 | 1, _) => "one key in use, so a key fault cannot be told from a platform fault: a second key (--keys-file) would tell".to_owned(),
            (n, f) if f == n => format!("all {n} keys in use failed alike: the platform or the whole project, not one key"),
            (n, _) => format!(
                "only {} of {n} keys failed ({}): those keys, not the platform",
                failing.len(),
                failing.join(", ")
            ),
        };
        format!("{cause}; {whose}")
    }
}

/// Reads each stretch's errors from the journal and places it on `timeline`.
pub(super) fn describe_all(
    conn: &Connection,
    job: JobId,
    timeline: &Timeline,
    stretches: &[Stretch],
) -> Result<Vec<Spike>, StoreError> {
    stretches
        .iter()
        .map(|stretch| describe(conn, job, timeline, stretch))
        .collect()
}

fn describe(
    conn: &Connection,
    job: JobId,
    timeline: &Timeline,
    stretch: &Stretch,
) -> Result<Spike, StoreError> {
    let last_index = timeline.buckets.len().saturating_sub(1);
    let first = timeline.bucket_of(stretch.start).unwrap_or(0);
    let last = timeline
        .bucket_of(stretch.end)
        .unwrap_or(last_index)
        .max(first);
    let buckets = &timeline.buckets[first..=last];
    let mut classes = [0u64; AttemptClass::ALL.len()];
    let mut statuses: BTreeMap<Option<u16>, u64> = BTreeMap::new();
    let mut codes = Tally::default();
    let mut scopes = Tally::default();
    let mut keys = Tally::default();
    let mut ids: Vec<String> = Vec::new();
    let mut seen_ids = 0usize;
    let mut stride = 1usize;
    let mut last_id: Option<String> = None;
    let filter = AttemptFilter {
        since: Some(stretch.start),
        until: Some(stretch.end),
        errors_only: true,
        ..AttemptFilter::default()
    };
    journal::for_each_attempt::<StoreError>(conn, job, &filter, |a: AttemptRecord| {
        if !a.class.is_error() {
            return Ok(());
        }
        classes[a.class.index()] += 1;
        *statuses.entry(a.http_status).or_default() += 1;
        if let Some(code) = &a.error_code {
            codes.add(code);
        }
        for scope in a
            .error_message
            .as_deref()
            .map(missing_scopes)
            .unwrap_or_default()
        {
            scopes.add(scope);
        }
        keys.add(a.key.as_deref().unwrap_or("(no key)"));
        if let Some(id) = a.x_request_id {
            // Every id until the cap; then every other one kept and half as many taken: an
            // even sample of any number of errors in bounded memory.
            if seen_ids.is_multiple_of(stride) {
                ids.push(id.clone());
                if ids.len() >= MAX_SAMPLED_IDS {
                    let mut index = 0usize;
                    ids.retain(|_| {
                        index += 1;
                        !index.is_multiple_of(2)
                    });
                    stride *= 2;
                }
            }
            seen_ids += 1;
            last_id = Some(id);
        }
        Ok(())
    })?;
    let mut statuses: Vec<(Option<u16>, u64)> = statuses.into_iter().collect();
    statuses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Spike {
        start: stretch.start,
        end: stretch.end,
        recovered_by: stretch.recovered_by,
        first_bucket: first,
        last_bucket: last,
        attempts: stretch.attempts,
        errors: stretch.errors,
        peak_share: buckets
            .iter()
            .filter_map(Bucket::error_share)
            .fold(0.0, f64::max),
        classes: most_first(&classes),
        statuses,
        codes: codes.sorted(),
        scopes: scopes.sorted(),
        keys: keys.sorted(),
        request_ids: quoted(&ids, last_id, QUOTED_IDS),
        keys_in_use: keys_in_use(timeline, first, last),
    })
}

/// (key, attempts, errors) of every key that sent in buckets `first..=last`, most used first.
fn keys_in_use(timeline: &Timeline, first: usize, last: usize) -> Vec<(String, u64, u64)> {
    let mut keys: Vec<(String, u64, u64)> = timeline
        .keys
        .iter()
        .map(|k| {
            let (attempts, errors) = k.per_bucket[first..=last]
                .iter()
                .fold((0, 0), |(a, e), (n, x)| {
                    (a + u64::from(*n), e + u64::from(*x))
                });
            (k.key.clone(), attempts, errors)
        })
        .filter(|(_, attempts, _)| *attempts > 0)
        .collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    keys
}

/// Counts by name.
#[derive(Default)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn add(&mut self, name: &str) {
        match self.0.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.0.insert(name.to_owned(), 1);
            }
        }
    }

    /// Most first, then by name.
    fn sorted(self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.0.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// Per-class counts as (class, count) pairs, most first, then in class order; zeros left out.
fn most_first(counts: &[u64; AttemptClass::ALL.len()]) -> Vec<(AttemptClass, u64)> {
    let mut v: Vec<(AttemptClass, u64)> = AttemptClass::ALL
        .iter()
        .map(|c| (*c, counts[c.index()]))
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// `n` of the sampled ids, spread evenly, ending with the very last one seen.
fn quoted(ids: &[String], last: Option<String>, n: usize) -> Vec<String> {
    let mut quoted = spread(ids, n);
    if let Some(last) = last
        && !quoted.contains(&last)
    {
        if quoted.len() >= n {
            quoted.pop();
        }
        quoted.push(last);
    }
    quoted
}

/// `n` items spread evenly over `items`, first and last included.
fn spread(items: &[String], n: usize) -> Vec<String> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n)
        .map(|i| items[i * (items.len() - 1) / (n - 1)].clone())
        .collect()
}

/// The scopes named in a message like "… Missing scopes: api.responses.write, model.request.
/// Check that …", in order; empty when it names none.
pub fn missing_scopes(message: &str) -> Vec<&str> {
    const MARK: &str = "Missing scopes:";
    let Some(at) = message.find(MARK) else {
        return Vec::new();
    };
    let rest = &message[at + MARK.len()..];
    // The list ends at the sentence's full stop: a '.' followed by a space or the end. Dots
    // inside scope names ("model.request") are followed by letters.
    let end = rest
        .char_indices()
        .find(|(i, c)| *c == '.' && rest[i + 1..].chars().next().is_none_or(char::is_whitespace))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end]
        .split(',')
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// Scans a picture of attempts, one per millisecond: `o` a success, `x` a failure; digits
    /// repeat the next character (`9x` is nine failures, up to 9).
    fn scan(picture: &str) -> Vec<(i64, i64, u64)> {
        let mut scanner = Scanner::default();
        let mut at = 0;
        let mut repeat = 1;
        for c in picture.chars() {
            if let Some(n) = c.to_digit(10) {
                repeat = n;
                continue;
            }
            for _ in 0..repeat {
                scanner.push(at, c == 'x');
                at += 1;
            }
            repeat = 1;
        }
        scanner
            .finish()
            .into_iter()
            .map(|s| (s.start, s.end, s.errors))
            .collect()
    }

    #[rstest]
    #[case::healthy("9o9o9o", &[])]
    #[case::one_spike("3o9x3x3o", &[(3, 14, 12)])]
    #[case::random_errors_never_add_up("4ox4ox4ox4ox4ox4ox4ox4ox4ox4ox", &[])]
    #[case::too_small("3o9x9o", &[])]
    #[case::a_bigger_second_burst_joins("9x3x5o6x9o9o9o", &[(0, 22, 18)])]
    #[case::a_smaller_second_burst_is_the_tail("9x3x5o3x9o9o", &[(0, 11, 12)])]
    #[case::a_long_recovery_splits("9x3x9o4o9x3x", &[(0, 11, 12), (25, 36, 12)])]
    #[case::the_end_is_the_last_failure("9x3xoxo9o9o", &[(0, 13, 13)])]
    fn the_spike_rule(#[case] picture: &str, #[case] expected: &[(i64, i64, u64)]) {
        assert_eq!(scan(picture), expected, "{picture}");
    }

    #[test]
    fn the_first_success_after_a_spike_marks_the_recovery() {
        let mut scanner = Scanner::default();
        for at in 0..12 {
            scanner.push(at, true);
        }
        scanner.push(100, false);
        let found = scanner.finish();
        assert_eq!(found[0].recovered_by, Some(100));
    }

    #[test]
    fn interrupted_attempts_count_neither_way() {
        let mut b = Bucket::default();
        b.counts[AttemptClass::Interrupted.index()] = 30;
        b.counts[AttemptClass::Succeeded.index()] = 1;
        assert_eq!(b.error_share(), Some(0.0));
    }

    #[rstest]
    #[case(
        "You have insufficient permissions for this operation. Missing scopes: model.request. Check that you have the correct role",
        &["model.request"]
    )]
    #[case("Missing scopes: api.responses.write, api.threads.read.", &["api.responses.write", "api.threads.read"])]
    #[case("Missing scopes: model.request", &["model.request"])]
    #[case("RBAC: access denied", &[])]
    fn scopes_from_messages(#[case] message: &str, #[case] expected: &[&str]) {
        assert_eq!(missing_scopes(message), expected);
    }

    #[rstest]
    #[case::one_key(&[("k1", 10, 10)], "one key in use")]
    #[case::all_keys(&[("k1", 10, 10), ("k2", 8, 6)], "all 2 keys in use failed alike")]
    #[case::one_of_two(&[("k1", 10, 10), ("k2", 8, 0)], "only 1 of 2 keys failed (k1)")]
    fn verdicts_tell_key_from_platform(#[case] keys: &[(&str, u64, u64)], #[case] expected: &str) {
        let spike = Spike {
            classes: vec![(AttemptClass::AuthTransient, 10)],
            scopes: vec![("model.request".into(), 10)],
            keys_in_use: keys
                .iter()
                .map(|(k, a, e)| ((*k).to_owned(), *a, *e))
                .collect(),
            ..Spike::default()
        };
        let verdict = spike.verdict();
        assert!(verdict.contains(expected), "{verdict}");
        assert!(
            verdict.contains("missing scopes: model.request"),
            "{verdict}"
        );
    }

    #[test]
    fn quoted_ids_span_the_spike() {
        let ids: Vec<String> = (0..100).map(|i| format!("req_{i}")).collect();
        assert_eq!(
            spread(&ids, 5),
            ["req_0", "req_24", "req_49", "req_74", "req_99"]
        );
        assert_eq!(spread(&ids[..2], 5), ["req_0", "req_1"]);
    }
}
