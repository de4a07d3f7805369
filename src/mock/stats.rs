//! What the mock has answered: totals, per status and per request body.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::faults::Limit;
use super::limit::Admission;
use super::{BatchCounts, body_key};

/// A snapshot of everything the mock has answered (`GET /mock/stats` serves it as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MockStats {
    /// Every answer sent, any status, any route except `/mock/stats`.
    pub answers: u64,
    /// Answers per HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Answers per request body, keyed by [`body_key`]. Bodies that are not JSON are not listed.
    pub per_body: HashMap<String, BodyCounts>,
    /// Answers by whole seconds since server start, then by status: what a client sent when.
    pub by_second: BTreeMap<u64, BTreeMap<u16, u64>>,
    /// Answers by the key presented (its last 8 characters, `-` for none), then by status.
    pub by_key: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Requests by `name: value` of each `x-…` and `openai-beta` header they carried, and by
    /// `api-version=…` query parameter: proof of what a client sent beside the body.
    pub extras: BTreeMap<String, u64>,
    /// Requests by HTTP method and path, e.g. `GET /v1/models/gpt-4o`.
    pub routes: BTreeMap<String, u64>,
    /// Files and Batches calls (the hosted Batch API).
    pub batch: BatchCounts,
    /// Requests to the POST endpoints that the rate limits let through (all of them when no
    /// limit is on), and their token cost: with [`MockConfig::tokens_per_minute`] set,
    /// `admitted.tokens / (tokens_per_minute × minutes)` is the share of the allowed rate a
    /// client reached.
    ///
    /// [`MockConfig::tokens_per_minute`]: super::MockConfig::tokens_per_minute
    pub admitted: Admitted,
    /// [`MockStats::admitted`] by whole seconds since server start.
    pub admitted_by_second: BTreeMap<u64, Admitted>,
    /// Requests the rate limits refused with a 429, by limit.
    pub limited: Limited,
}

/// What the rate limits let through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Admitted {
    /// Requests admitted.
    pub requests: u64,
    /// Their token cost as the limit counts it (prompt plus the most output asked for); 0 while
    /// no token limit is on, since counting tokens costs the mock time.
    pub tokens: u64,
}

/// Requests the rate limits refused, by limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Limited {
    /// 429 `rate_limit_exceeded` type `requests`: over the request limit.
    pub requests: u64,
    /// 429 `rate_limit_exceeded` type `tokens`: over the token limit for now.
    pub tokens: u64,
    /// 429 "Request too large": a token cost over the whole minute's limit.
    pub too_large: u64,
}

/// Answers sent for one request body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BodyCounts {
    /// Every answer for this body, any status.
    pub answers: u64,
    /// Answers that were a 200 with a well-formed body.
    pub successes: u64,
}

impl MockStats {
    /// Successful answers for `body` (0 if it was never seen).
    pub fn successes_for(&self, body: &serde_json::Value) -> u64 {
        self.counts_for(body).successes
    }

    /// Answers of any status for `body` (0 if it was never seen).
    pub fn answers_for(&self, body: &serde_json::Value) -> u64 {
        self.counts_for(body).answers
    }

    /// Successful answers over all bodies.
    pub fn successes(&self) -> u64 {
        self.per_body.values().map(|counts| counts.successes).sum()
    }

    fn counts_for(&self, body: &serde_json::Value) -> BodyCounts {
        self.per_body
            .get(&body_key(body))
            .copied()
            .unwrap_or_default()
    }
}

/// What the mock knows about one body.
#[derive(Clone, Copy, Debug, Default)]
struct BodyRecord {
    /// Requests that arrived, answered or not yet: numbers the fault draws.
    arrivals: u64,
    counts: BodyCounts,
}

/// The live counters behind [`MockStats`]; the server keeps them in a `std::sync::Mutex` and
/// holds it only for these short calls.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    answers: u64,
    successes: u64,
    by_status: BTreeMap<u16, u64>,
    bodies: HashMap<String, BodyRecord>,
    by_second: BTreeMap<u64, BTreeMap<u16, u64>>,
    by_key: BTreeMap<String, BTreeMap<u16, u64>>,
    extras: BTreeMap<String, u64>,
    routes: BTreeMap<String, u64>,
    admitted: Admitted,
    admitted_by_second: BTreeMap<u64, Admitted>,
    limited: Limited,
}

impl Counters {
    /// Notes a request's route and the extras it carried (see [`MockStats::extras`]).
    pub(crate) fn note(&mut self, route: String, extras: Vec<String>) {
        *self.routes.entry(route).or_default() += 1;
        for extra in extras {
            *self.extras.entry(extra).or_default() += 1;
        }
    }

    /// Notes that a request with this body arrived and returns how many arrived before it.
    ///
    /// The draw is numbered by arrivals rather than answers: a retry that arrives while an earlier
    /// attempt still hangs must get a fresh draw, not the same hang again.
    pub(crate) fn arrive(&mut self, key: &str) -> u64 {
        let record = match self.bodies.get_mut(key) {
            Some(record) => record,
            None => self.bodies.entry(key.to_owned()).or_default(),
        };
        record.arrivals += 1;
        record.arrivals - 1
    }

    /// Notes what the rate limits decided for a request costing `tokens`, `second` whole
    /// seconds after server start.
    pub(crate) fn admission(&mut self, admission: &Admission, tokens: u64, second: u64) {
        match admission {
            Admission::Admitted => {
                let by_second = self.admitted_by_second.entry(second).or_default();
                for admitted in [&mut self.admitted, by_second] {
                    admitted.requests += 1;
                    admitted.tokens = admitted.tokens.saturating_add(tokens);
                }
            }
            Admission::Refused {
                by: Limit::Requests,
                ..
            } => self.limited.requests += 1,
            Admission::Refused {
                by: Limit::Tokens, ..
            } => self.limited.tokens += 1,
            Admission::TooLarge { .. } => self.limited.too_large += 1,
        }
    }

    /// Whether `quota_after` successes have been answered already.
    pub(crate) fn quota_exhausted(&self, quota_after: Option<u64>) -> bool {
        quota_after.is_some_and(|limit| self.successes >= limit)
    }

    /// Counts one answer sent, under `key` when the body was JSON.
    pub(crate) fn record(
        &mut self,
        key: Option<&str>,
        status: u16,
        success: bool,
        second: u64,
        presented: Option<&str>,
    ) {
        self.answers += 1;
        *self.by_status.entry(status).or_default() += 1;
        *self
            .by_second
            .entry(second)
            .or_default()
            .entry(status)
            .or_default() += 1;
        let tail = presented.map_or_else(
            || "-".to_owned(),
            |k| {
                k.chars()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect()
            },
        );
        *self
            .by_key
            .entry(tail)
            .or_default()
            .entry(status)
            .or_default() += 1;
        let success = u64::from(success);
        self.successes += success;
        if let Some(key) = key {
            let record = match self.bodies.get_mut(key) {
                Some(record) => record,
                None => self.bodies.entry(key.to_owned()).or_default(),
            };
            record.counts.answers += 1;
            record.counts.successes += success;
        }
    }

    /// A copy for [`MockStats`]; bodies that arrived but have no answer yet are left out.
    pub(crate) fn snapshot(&self) -> MockStats {
        MockStats {
            answers: self.answers,
            by_status: self.by_status.clone(),
            per_body: self
                .bodies
                .iter()
                .filter(|(_, record)| record.counts.answers > 0)
                .map(|(key, record)| (key.clone(), record.counts))
                .collect(),
            by_second: self.by_second.clone(),
            by_key: self.by_key.clone(),
            extras: self.extras.clone(),
            routes: self.routes.clone(),
            batch: BatchCounts::default(),
            admitted: self.admitted,
            admitted_by_second: self.admitted_by_second.clone(),
            limited: self.limited,
        }
    }
}
