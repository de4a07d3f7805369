//! What every attempt task of a pool shares: the store handle, the key pool, the breaker, the
//! pacer, the pool-wide pause, the streak of identical permanent errors, and the job's stop.
//!
//! The pool ([`crate::engine::pool`]) owns one `Context` behind an `Arc`; each attempt task
//! ([`crate::engine::attempt`]) holds a clone. Locks here guard a few assignments and are never
//! held across an `.await`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::domain::{
    AttemptOutcome, Claimed, Class, Completion, Disposition, EventKind, JobId, RequestId, Usage,
};
use crate::engine::breaker::{Breaker, BreakerSettings, Transition};
use crate::engine::keys::KeyPool;
use crate::engine::pacers::Pacers;
use crate::engine::progress::Tally;
use crate::engine::rate_limit::{Limits, TooLarge};
use crate::engine::retry::RetryPolicy;
use crate::engine::sizing::{Signal, Sizing};
use crate::http::hints::{Announced, LimitKind};
use crate::store::{JobStore, StoreError, db};
use crate::util::clock::now_ms;
use crate::util::sync::lock;
use crate::util::text::printable;

/// The same permanent error on consecutive requests, with no success between them.
#[derive(Debug, Default)]
struct Streak {
    /// HTTP status and error code of the error.
    signature: Option<(Option<u16>, Option<String>)>,
    /// The requests that failed with it.
    requests: Vec<RequestId>,
    /// The streak already stopped the job: requests in flight then that fail the same way are
    /// requeued too.
    fired: bool,
}

/// How long nothing may have answered, every attempt failing to connect, before the job stops
/// as misconfigured (a mistyped base URL, a server not started, http for https): a newcomer's
/// mistake gets an answer within a minute, not a wait of hours.
pub(crate) const UNREACHABLE_STOP: Duration = Duration::from_secs(20);
/// Attempts that must have failed to connect before that stop.
const UNREACHABLE_ATTEMPTS: u32 = 3;

/// Whether the server has answered in this run, and since when it has not been reached.
#[derive(Debug, Default)]
struct Reach {
    /// Some answer (any HTTP status) came back in this run.
    answered: bool,
    /// The first failure to reach the server since the last answer (or the run's start), its
    /// error, and how many attempts failed so since.
    failing: Option<(Instant, String, u32)>,
}

/// What a failure to reach the server means for the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// Keep trying (backoff and the breaker pace it).
    Wait,
    /// Nothing has ever answered: stop, with this reason.
    Stop(String),
}

/// What a transport error comes to, in the words a user searches for.
fn plain_cause(error: &str) -> &'static str {
    let error = error.to_ascii_lowercase();
    if error.contains("connection refused") {
        "connection refused"
    } else if error.contains("dns error") || error.contains("failed to lookup") {
        "no such host"
    } else if error.contains("tls")
        || error.contains("certificate")
        || error.contains("invalidcontenttype")
        || error.contains("handshake")
    {
        "the TLS handshake failed (https:// to a plain-HTTP server, or the reverse?)"
    } else if error.contains("timed out") {
        "the connection timed out"
    } else {
        "no connection"
    }
}

/// Everything an attempt task needs, shared.
pub(crate) struct Context {
    pub(crate) job: JobId,
    pub(crate) store: JobStore,
    pub(crate) keys: KeyPool,
    pub(crate) policy: RetryPolicy,
    pub(crate) tally: Arc<Tally>,
    pub(crate) breaker: Mutex<Breaker>,
    /// No dispatch before this instant: a 429 slows the whole pool, not one request.
    pub(crate) paused_until: Mutex<Option<Instant>>,
    /// Pace learned from the server's rate-limit headers and 429s: the job's, or each key's.
    pub(crate) pacers: Pacers,
    /// How many requests may be in flight ([`crate::engine::sizing`]).
    pub(crate) sizing: Mutex<Sizing>,
    /// The user's ceilings: requests and tokens per minute (`--rpm`, `--tpm`).
    pub(crate) ceilings: Limits,
    /// Rate-limit headers already noted as ignored in this run (each is noted once).
    ignored_noted: Mutex<Vec<&'static str>>,
    reach: Mutex<Reach>,
    streak: Mutex<Streak>,
    stop_after_same_error: u32,
    /// The spending cap (`--max-cost`), if any.
    pub(crate) spend: Option<Arc<crate::engine::spend::Spend>>,
    /// Whether the job-level stop is the spending cap's.
    pub(crate) over_budget: std::sync::atomic::AtomicBool,
    /// Cancelled on a job-level stop.
    pub(crate) halt: CancellationToken,
    stop_reason: Mutex<Option<String>>,
}

impl Context {
    /// A fresh context for one pool run: no pause, breaker closed, no streak, no stop.
    pub(crate) fn new(
        job: JobId,
        store: JobStore,
        keys: KeyPool,
        policy: RetryPolicy,
        breaker: BreakerSettings,
        stop_after_same_error: u32,
        tally: Arc<Tally>,
    ) -> Context {
        let now = Instant::now();
        let pacers = Pacers::new(keys.len(), now);
        Context {
            job,
            store,
            keys,
            policy,
            tally,
            breaker: Mutex::new(Breaker::new(breaker)),
            paused_until: Mutex::new(None),
            pacers,
            sizing: Mutex::new(Sizing::Fixed(1)),
            ceilings: Limits::default(),
            ignored_noted: Mutex::new(Vec::new()),
            reach: Mutex::new(Reach::default()),
            streak: Mutex::new(Streak::default()),
            stop_after_same_error,
            spend: None,
            over_budget: std::sync::atomic::AtomicBool::new(false),
            halt: CancellationToken::new(),
            stop_reason: Mutex::new(None),
        }
    }

    /// The reason of the first job-level stop, if there was one.
    pub(crate) fn stop_reason(&self) -> Option<String> {
        lock(&self.stop_reason).clone()
    }

    /// Stops the job at the spending cap (exit 5), unless another stop came first.
    pub(crate) fn stop_for_budget(&self, reason: String) {
        if lock(&self.stop_reason).is_none() {
            self.over_budget
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.stop_job(reason);
    }

    /// Records the first job-level stop and halts dispatch.
    pub(crate) fn stop_job(&self, reason: String) {
        let mut slot = lock(&self.stop_reason);
        if slot.is_none() {
            tracing::warn!(reason = %printable(&reason), "stopping the job");
            *slot = Some(reason);
        }
        drop(slot);
        self.halt.cancel();
    }

    /// Journals a request that can never be sent under `--tpm` as failed (not sent).
    pub(crate) async fn fail_unsent(
        &self,
        request: &Claimed,
        reason: &TooLarge,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.store
            .record(Completion {
                request: request.id,
                job: self.job,
                number: request.attempts + 1,
                started_at: now,
                finished_at: now,
                outcome: AttemptOutcome::NotSent,
                http_status: None,
                class: Class::RequestFailed,
                error_code: Some("exceeds_tpm".to_owned()),
                error_message: Some(reason.to_string()),
                x_request_id: None,
                key_fingerprint: None,
                response: None,
                usage: Usage::default(),
                disposition: Disposition::Failed,
            })
            .await?;
        self.tally.failed();
        Ok(())
    }

    pub(crate) async fn journal(&self, kind: EventKind, detail: String) -> Result<(), StoreError> {
        tracing::info!(event = kind.as_str(), detail = %printable(&detail));
        let (job, now) = (self.job, now_ms());
        self.store
            .call(move |c| db::record_event(c, job, kind, Some(&detail), now))
            .await
    }

    pub(crate) async fn journal_breaker(&self, transition: &Transition) -> Result<(), StoreError> {
        self.tally.set_note(match transition {
            Transition::Opened { cooldown, .. } => {
                Some(format!("breaker open {:.0}s", cooldown.as_secs_f64()))
            }
            Transition::HalfOpened => Some("breaker probing".to_owned()),
            Transition::Closed => None,
        });
        self.journal(transition.kind(), transition.detail()).await
    }

    /// The requests per second the pace allows, from every limit known: `--rpm`, `--tpm` over
    /// the mean cost of a request, and the server's (`None`: nothing paces the job).
    pub(crate) fn known_rate(&self) -> Option<f64> {
        let by_rpm = self.ceilings.requests.map(|rpm| rpm as f64 / 60.0);
        let by_tpm = self
            .ceilings
            .tokens
            .zip(self.pacers.shared().cost_each())
            .map(|(tpm, cost)| tpm as f64 / 60.0 / cost.max(1.0));
        [by_rpm, by_tpm, self.pacers.request_rate()]
            .into_iter()
            .flatten()
            .reduce(f64::min)
    }

    /// Learns from an answer's rate-limit headers and whether a limit refused it: the pacer
    /// takes the limits, a change of them is journaled, and each header ignored as no limit is
    /// noted once.
    pub(crate) async fn learn_limits(
        &self,
        key: Option<&str>,
        announced: &Announced,
        refused: Option<LimitKind>,
        now: Instant,
    ) -> Result<(), StoreError> {
        let learned = self.pacers.observe(key, announced, refused, now);
        if let Some(limits) = learned.changed {
            self.journal(EventKind::Limits, limits.describe()).await?;
        }
        if learned.split {
            self.journal(
                EventKind::KeyLimits,
                "the keys announce limits of their own: each key is paced by its own".to_owned(),
            )
            .await?;
        }
        let first: Vec<(&'static str, String)> = {
            let mut noted = lock(&self.ignored_noted);
            announced
                .ignored
                .iter()
                .filter(|(name, _)| {
                    let new = !noted.contains(name);
                    if new {
                        noted.push(name);
                    }
                    new
                })
                .cloned()
                .collect()
        };
        for (name, value) in first {
            self.journal(
                EventKind::HeaderIgnored,
                format!("{name}: {value:?} is not a limit the API would send; ignored"),
            )
            .await?;
        }
        Ok(())
    }

    /// A request sent at `started` finished: the pool's size learns from it.
    pub(crate) fn resize(&self, started: Instant, now: Instant, signal: Signal) {
        let rate = self.known_rate();
        lock(&self.sizing).finished(started, now, signal, rate);
    }

    /// The server answered (any status): it is there.
    pub(crate) fn answered(&self) {
        let mut reach = lock(&self.reach);
        let was_failing = reach.failing.take().is_some();
        reach.answered = true;
        drop(reach);
        if was_failing {
            self.tally.set_note(None);
        }
    }

    /// An attempt to `url` got no answer at all (`error`: why). Before any answer in this run,
    /// [`UNREACHABLE_STOP`] of such failures stop the job; after one, the server is waited for,
    /// and the progress line says since when and why.
    pub(crate) fn unreachable(&self, url: &str, error: &str, now: Instant) -> Unreachable {
        let mut reach = lock(&self.reach);
        let (since, first, failed) = reach
            .failing
            .get_or_insert_with(|| (now, error.to_owned(), 0));
        *failed += 1;
        let (since, first, failed) = (*since, first.clone(), *failed);
        let answered = reach.answered;
        drop(reach);
        let waited = now.saturating_duration_since(since);
        if !answered && waited >= UNREACHABLE_STOP && failed >= UNREACHABLE_ATTEMPTS {
            return Unreachable::Stop(format!(
                "nothing answered at {url} since the run began: {} ({failed} attempts over {}s; \
                 {first}); check the base URL (--base-url or OPENAI_BASE_URL), that the server \
                 is running, and http:// against https://, then run `runner resume`",
                plain_cause(&first),
                waited.as_secs()
            ));
        }
        let clock = time::OffsetDateTime::now_utc() - waited;
        self.tally.set_note(Some(format!(
            "waiting for the server since {:02}:{:02}:{:02} UTC ({})",
            clock.hour(),
            clock.minute(),
            clock.second(),
            plain_cause(error),
        )));
        Unreachable::Wait
    }

    /// A 429 pauses every dispatch for the wait the server asked for.
    pub(crate) fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = lock(&self.paused_until);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Tracks consecutive identical permanent errors (`signature`: status and code; `None` for a
    /// success, which ends any streak); returns the requests to requeue when the streak is long
    /// enough to call it a configuration error.
    pub(crate) fn note_permanent(
        &self,
        request: RequestId,
        signature: Option<(Option<u16>, Option<String>)>,
    ) -> Option<Vec<RequestId>> {
        let mut streak = lock(&self.streak);
        match signature {
            None => {
                *streak = Streak::default();
                None
            }
            Some(signature) => {
                if streak.signature.as_ref() != Some(&signature) {
                    *streak = Streak {
                        signature: Some(signature),
                        requests: Vec::new(),
                        fired: false,
                    };
                }
                streak.requests.push(request);
                let limit = self.stop_after_same_error as usize;
                if limit > 0 && (streak.fired || streak.requests.len() >= limit) {
                    streak.fired = true;
                    Some(std::mem::take(&mut streak.requests))
                } else {
                    None
                }
            }
        }
    }
}
