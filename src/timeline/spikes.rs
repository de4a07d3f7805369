//! Spikes: when most attempts failed, and the evidence to take to support.
//!
//! # The rule
//! A bucket **fails** when at least one of its attempts got a verdict and at least
//! [`SPIKE_ERROR_SHARE`] of those verdicts are errors (any class but `succeeded`; interrupted
//! attempts count neither way). It is **healthy** when it has verdicts and does not fail, and
//! **empty** when it has none (e.g. while the breaker holds requests back).
//!
//! A spike is a maximal run of failing buckets in which empty buckets, and at most
//! [`MAX_GAP_BUCKETS`] healthy bucket between two failing ones, do not break the run; the run
//! counts as a spike when its buckets hold at least [`MIN_SPIKE_ERRORS`] errors. It starts where
//! its first failing bucket starts and ends where its last failing bucket ends, so the detected
//! window is within one bucket of the real one at each end while requests keep flowing. When
//! the breaker holds requests back, the last error seen is the last evidence: the spike ended
//! between [`Spike::end`] and [`Spike::recovered_by`], the first bucket with a success after it.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::{Bucket, Series, Timeline};
use crate::journal::{self, AttemptFilter, AttemptRecord};
use crate::request::JobId;
use crate::store::StoreError;

/// Share of errors from which a bucket fails.
pub const SPIKE_ERROR_SHARE: f64 = 0.5;

/// Healthy buckets a spike may hold between two failing ones: one random good bucket inside an
/// outage must not split it in two.
pub const MAX_GAP_BUCKETS: usize = 1;

/// Errors a run of failing buckets needs to count as a spike: a lone failed probe is not one.
pub const MIN_SPIKE_ERRORS: u64 = 5;

/// Request ids quoted per spike: enough for support to find it, few enough to paste.
const QUOTED_IDS: usize = 5;

/// Request ids kept while sampling: bounds memory in a spike of millions of errors.
const MAX_SAMPLED_IDS: usize = 100_000;

/// One detected spike and what the journal says about it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Spike {
    /// Unix ms where it starts (its first failing bucket's start).
    pub start: i64,
    /// Unix ms where it ends (its last failing bucket's end).
    pub end: i64,
    /// Unix ms of the first bucket after it with a success: the spike was over by then (it
    /// ended between [`Spike::end`] and this). `None` when nothing has succeeded since.
    pub recovered_by: Option<i64>,
    /// Index of its first bucket.
    pub first_bucket: usize,
    /// Index of its last bucket.
    pub last_bucket: usize,
    /// Attempts with a verdict sent in it.
    pub attempts: u64,
    /// Of those, errors.
    pub errors: u64,
    /// The highest error share of its buckets.
    pub peak_share: f64,
    /// Errors by class, most first.
    pub classes: Vec<(String, u64)>,
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

impl Spike {
    /// What it was and whose fault it looks like, in one sentence for people.
    pub fn verdict(&self) -> String {
        let cause = match self.classes.first().map(|(c, _)| c.as_str()) {
            Some("auth_transient") => {
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
            Some("rate_limited") => {
                "429 rate limits: the runner waited as the server asked".to_owned()
            }
            Some("transient") => "server errors or timeouts: retried with backoff".to_owned(),
            Some("job_stop") => {
                "a rejected key, a 403 or an exhausted quota: the job stopped".to_owned()
            }
            Some("request_failed") => "requests rejected as invalid (4xx): they failed".to_owned(),
            _ => "errors".to_owned(),
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

/// The bucket ranges (first, last) that are spikes under the rule above.
pub fn detect(buckets: &[Bucket]) -> Vec<(usize, usize)> {
    let mut spikes = Vec::new();
    // The open run: its first and last failing bucket, and healthy buckets seen since the last.
    let mut run: Option<(usize, usize, usize)> = None;
    let mut close = |run: (usize, usize, usize)| {
        let errors: u64 = buckets[run.0..=run.1].iter().map(Bucket::errors).sum();
        if errors >= MIN_SPIKE_ERRORS {
            spikes.push((run.0, run.1));
        }
    };
    for (i, bucket) in buckets.iter().enumerate() {
        match bucket.error_share() {
            Some(share) if share >= SPIKE_ERROR_SHARE => {
                run = Some(match run {
                    Some((first, _, gap)) if gap <= MAX_GAP_BUCKETS => (first, i, 0),
                    Some(done) => {
                        close(done);
                        (i, i, 0)
                    }
                    None => (i, i, 0),
                });
            }
            Some(_) => {
                if let Some((first, last, gap)) = run {
                    if gap + 1 > MAX_GAP_BUCKETS {
                        close((first, last, gap));
                        run = None;
                    } else {
                        run = Some((first, last, gap + 1));
                    }
                }
            }
            None => {}
        }
    }
    if let Some(open) = run {
        close(open);
    }
    spikes
}

/// Detects the spikes of `timeline` and reads each one's errors from the journal.
pub(super) fn find(
    conn: &Connection,
    job: JobId,
    timeline: &Timeline,
) -> Result<Vec<Spike>, StoreError> {
    detect(&timeline.buckets)
        .into_iter()
        .map(|(first, last)| describe(conn, job, timeline, first, last))
        .collect()
}

fn describe(
    conn: &Connection,
    job: JobId,
    timeline: &Timeline,
    first: usize,
    last: usize,
) -> Result<Spike, StoreError> {
    let buckets = &timeline.buckets[first..=last];
    let start = buckets[0].start;
    let end = buckets[buckets.len() - 1].start + timeline.width_ms;
    let mut classes = Tally::default();
    let mut statuses: BTreeMap<Option<u16>, u64> = BTreeMap::new();
    let mut codes = Tally::default();
    let mut scopes = Tally::default();
    let mut keys = Tally::default();
    let mut ids: Vec<String> = Vec::new();
    let mut seen_ids = 0usize;
    let mut stride = 1usize;
    let mut last_id: Option<String> = None;
    let filter = AttemptFilter {
        since: Some(start),
        until: Some(end),
        errors_only: true,
        ..AttemptFilter::default()
    };
    journal::for_each_attempt::<StoreError>(conn, job, &filter, |a: AttemptRecord| {
        if Series::from_name(&a.class).is_none_or(|s| !s.is_error()) {
            return Ok(());
        }
        classes.add(&a.class);
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
        start,
        end,
        recovered_by: timeline.buckets[last + 1..]
            .iter()
            .find(|b| b.count(Series::Succeeded) > 0)
            .map(|b| b.start),
        first_bucket: first,
        last_bucket: last,
        attempts: buckets.iter().map(Bucket::judged).sum(),
        errors: buckets.iter().map(Bucket::errors).sum(),
        peak_share: buckets
            .iter()
            .filter_map(Bucket::error_share)
            .fold(0.0, f64::max),
        classes: classes.sorted(),
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

    /// Buckets from a compact picture: `.` empty, `o` healthy (10 ok), `x` failing (10 errors),
    /// `p` a lone failed probe (1 error), `h` half (5 ok, 5 errors: fails).
    fn buckets(picture: &str) -> Vec<Bucket> {
        picture
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let mut b = Bucket {
                    start: i as i64 * 1000,
                    ..Bucket::default()
                };
                let (ok, bad) = match c {
                    'o' => (10, 0),
                    'x' => (0, 10),
                    'p' => (0, 1),
                    'h' => (5, 5),
                    _ => (0, 0),
                };
                b.counts[Series::Succeeded.index()] = ok;
                b.counts[Series::AuthTransient.index()] = bad;
                b
            })
            .collect()
    }

    #[rstest]
    #[case::none("oooooo", &[])]
    #[case::one("ooxxxoo", &[(2, 4)])]
    #[case::half_counts("oohhoo", &[(2, 3)])]
    #[case::empty_buckets_do_not_break("ox..p...pxoo", &[(1, 9)])]
    #[case::one_healthy_gap_merges("oxxoxxo", &[(1, 5)])]
    #[case::two_healthy_buckets_split("oxxooxxo", &[(1, 2), (5, 6)])]
    #[case::lone_probes_are_not_a_spike("oopoopoo", &[])]
    #[case::at_the_edges("xxooooxx", &[(0, 1), (6, 7)])]
    fn the_spike_rule(#[case] picture: &str, #[case] expected: &[(usize, usize)]) {
        assert_eq!(detect(&buckets(picture)), expected, "{picture}");
    }

    #[test]
    fn interrupted_attempts_count_neither_way() {
        let mut b = Bucket::default();
        b.counts[Series::Interrupted.index()] = 30;
        b.counts[Series::Succeeded.index()] = 1;
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
            classes: vec![("auth_transient".into(), 10)],
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
