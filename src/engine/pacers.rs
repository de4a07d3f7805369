//! One pace for the job, or one per key when the keys' limits are their own.
//!
//! OpenAI sets limits per project (and organization): keys of one project share them, keys of
//! different projects each have their own. The headers do not say which project a key is in,
//! but they say its limits: while every key's answers announce the same limits, the keys are
//! paced together (pacing each at the full limit would send twice the rate and earn 429s);
//! once two keys announce different limits, they cannot share them, and from then on each key
//! is paced by its own [`Pacer`], at its own limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::rate_limit::{Limits, Pacer};
use crate::http::hints::{Announced, LimitKind};
use crate::util::sync::lock;

/// The pacers of one pool run.
#[derive(Debug)]
pub(crate) struct Pacers {
    shared: Arc<Pacer>,
    /// Per key (by fingerprint), when the pool has more than one key.
    keys: Option<Mutex<KeyPaces>>,
}

#[derive(Debug, Default)]
struct KeyPaces {
    by_key: HashMap<String, KeyPace>,
    /// Two keys announced different limits: each is paced by its own.
    split: bool,
}

#[derive(Debug)]
struct KeyPace {
    /// What this key's answers announced last.
    announced: Limits,
    pacer: Arc<Pacer>,
}

/// What one answer taught the pacers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Learned {
    /// The limits, when they differ from the last announced (to journal).
    pub(crate) changed: Option<Limits>,
    /// The keys were found to have limits of their own just now (to journal, once).
    pub(crate) split: bool,
}

impl Pacers {
    /// Pacers for a pool of `keys` keys.
    pub(crate) fn new(keys: usize, now: Instant) -> Pacers {
        Pacers {
            shared: Arc::new(Pacer::new(now)),
            keys: (keys > 1).then(|| Mutex::new(KeyPaces::default())),
        }
    }

    /// The pace for requests sent with `key` (a fingerprint).
    pub(crate) fn for_key(&self, key: Option<&str>) -> Arc<Pacer> {
        if let (Some(keys), Some(key)) = (&self.keys, key) {
            let keys = lock(keys);
            if keys.split
                && let Some(pace) = keys.by_key.get(key)
            {
                return Arc::clone(&pace.pacer);
            }
        }
        Arc::clone(&self.shared)
    }

    /// The job's pace as a whole (its limits, its mean token cost).
    pub(crate) fn shared(&self) -> &Pacer {
        &self.shared
    }

    /// [`Pacers::shared`], to tell it from a key's own.
    pub(crate) fn shared_arc(&self) -> &Arc<Pacer> {
        &self.shared
    }

    /// Learns from an answer to a request sent with `key`.
    pub(crate) fn observe(
        &self,
        key: Option<&str>,
        announced: &Announced,
        refused: Option<LimitKind>,
        now: Instant,
    ) -> Learned {
        let changed = self.shared.observe(announced, refused, now);
        let (Some(keys), Some(key)) = (&self.keys, key) else {
            return Learned {
                changed,
                split: false,
            };
        };
        let mut keys = lock(keys);
        let pace = keys
            .by_key
            .entry(key.to_owned())
            .or_insert_with(|| KeyPace {
                announced: Limits::default(),
                pacer: Arc::new(Pacer::new(now)),
            });
        let changed_here = pace.pacer.observe(announced, refused, now);
        if let Some(limit) = announced.requests.limit {
            pace.announced.requests = Some(limit);
        }
        if let Some(limit) = announced.tokens.limit {
            pace.announced.tokens = Some(limit);
        }
        let mine = pace.announced;
        let split = !keys.split
            && keys
                .by_key
                .values()
                .any(|other| differ(other.announced, mine));
        keys.split |= split;
        // Once split, the job's limits flip between the keys' on every answer: what changed is
        // the key's own.
        let changed = if keys.split { changed_here } else { changed };
        Learned { changed, split }
    }

    /// Takes limits known before any answer (journaled by an earlier run).
    pub(crate) fn assume(&self, limits: Limits) {
        self.shared.assume(limits);
    }

    /// The requests per second the pace allows: the job's, or the sum of its keys' once each
    /// key is paced by its own.
    pub(crate) fn request_rate(&self) -> Option<f64> {
        if let Some(keys) = &self.keys {
            let keys = lock(keys);
            if keys.split {
                let cost = self.shared.cost_each();
                return keys
                    .by_key
                    .values()
                    .filter_map(|pace| pace.pacer.request_rate_at(cost))
                    .reduce(|a, b| a + b);
            }
        }
        self.shared.request_rate()
    }
}

/// Whether two keys' announced limits show they are not shared: a limit both announced, with
/// different values.
fn differ(a: Limits, b: Limits) -> bool {
    let both = |x: Option<u64>, y: Option<u64>| matches!((x, y), (Some(x), Some(y)) if x != y);
    both(a.requests, b.requests) || both(a.tokens, b.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(limit: u64) -> Announced {
        let mut announced = Announced::default();
        announced.requests.limit = Some(limit);
        announced
    }

    #[test]
    fn keys_announcing_the_same_limits_share_one_pace() {
        let t = Instant::now();
        let pacers = Pacers::new(2, t);
        for key in ["a", "b"] {
            let learned = pacers.observe(Some(key), &requests(600), None, t);
            assert!(!learned.split);
        }
        assert!(Arc::ptr_eq(
            &pacers.for_key(Some("a")),
            &pacers.for_key(Some("b"))
        ));
        let rate = pacers.request_rate().expect("paced");
        assert!(
            (rate - 10.0 * 0.98).abs() < 1e-9,
            "one limit, not two: {rate}"
        );
    }

    #[test]
    fn keys_announcing_different_limits_are_paced_each_by_its_own() {
        let t = Instant::now();
        let pacers = Pacers::new(2, t);
        assert!(!pacers.observe(Some("a"), &requests(600), None, t).split);
        assert!(
            pacers.observe(Some("b"), &requests(1200), None, t).split,
            "found once"
        );
        let again = pacers.observe(Some("a"), &requests(600), None, t);
        assert_eq!(
            again,
            Learned::default(),
            "found once; a's limits have not changed"
        );
        let (a, b) = (pacers.for_key(Some("a")), pacers.for_key(Some("b")));
        assert!(!Arc::ptr_eq(&a, &b));
        assert!((a.rate().expect("a") - 10.0 * 0.98).abs() < 1e-9);
        assert!((b.rate().expect("b") - 20.0 * 0.98).abs() < 1e-9);
        let rate = pacers.request_rate().expect("paced");
        assert!(
            (rate - 30.0 * 0.98).abs() < 1e-9,
            "the keys' limits add up: {rate}"
        );
    }

    #[test]
    fn one_key_is_paced_by_the_jobs_pace() {
        let t = Instant::now();
        let pacers = Pacers::new(1, t);
        pacers.observe(Some("a"), &requests(600), None, t);
        assert!(Arc::ptr_eq(
            &pacers.for_key(Some("a")),
            &pacers.for_key(None)
        ));
    }
}
