//! The worker pool: one dispatcher claims due requests from the store and runs each attempt as a
//! task, at most as many at a time as `--concurrency` says, or as the pool's own sizing finds
//! ([`crate::engine::sizing`]).
//!
//! Before each request goes out it passes, in order: the pool-wide pause a 429 imposes, the key
//! pool (a healthy key), the circuit breaker ([`crate::engine::breaker`]), and the shared rate limiter.
//! The queue is the database: retries are rows whose `next_attempt_at` lies ahead, so the
//! dispatcher sleeps until the earliest deadline (or until a task ends), never in a polling loop,
//! and a restart picks up exactly where the journal says.
//!
//! Every claim is committed before any of its requests is sent. Against a fast server the
//! dispatcher claims ahead of its free slots while the last claim is on its way (see
//! `WorkerPool::claim_ahead`); whatever it claimed and did not send goes back unsent when it
//! stops.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::tokens::{Cost, cost};
use crate::domain::{Claimed, EventKind, JobId, RequestId};
use crate::engine::attempt::{Dispatched, attempt, no_keys_reason};
use crate::engine::breaker::{Admission, BreakerSettings};
use crate::engine::context::Context;
use crate::engine::feed::{FeedWatch, Feeder, Reading};
use crate::engine::keys::{KeyPool, Pick};
use crate::engine::progress::Bound;
use crate::engine::progress::Tally;
use crate::engine::rate_limit::{Limits, RequestLimiter, TokenLimiter, TooLarge};
use crate::engine::retry::RetryPolicy;
use crate::engine::shutdown::Shutdown;
use crate::engine::sizing::Sizing;
use crate::http::hints::LimitKind;
use crate::store::{JobStore, StoreError, db};
use crate::util::clock::now_ms;
use crate::util::sync::lock;

/// Most requests claimed in one store round trip.
const CLAIM_BATCH: usize = 512;

/// The share of `--concurrency` a claim is made for at least (while requests are in flight):
/// claiming one request per finished task costs a store round trip and a commit each; claiming
/// a quarter of the pool at a time amortises them, and the pool is never emptier than three
/// quarters while work is due (see [`WorkerPool::claim_ahead`] for claims made before slots
/// are free).
const REFILL_DIVISOR: usize = 4;

/// Requests claimed ahead at most, per slot of the pool. Against a fast server a claim can wait
/// several milliseconds behind a batch of journal writes or a chunk of the file going in, while
/// hundreds of answers arrive: with no more than one pool's worth claimed ahead, the pool ran
/// empty a few times a second (measured on the nginx workload of docs/benchmarks.md).
const AHEAD_PER_SLOT: usize = 8;

/// Bytes of requests ([`Claimed::bytes`]) claimed ahead at most, whatever their number: large
/// prompts are claimed ahead a few at a time.
const AHEAD_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of requests one claim brings back at most (and at least one request): the number
/// alone would let a claim of large prompts fill memory before their size is known.
const CLAIM_BYTES: usize = 4 * 1024 * 1024;

/// A claim on its way to the store.
type Claim = Pin<Box<dyn Future<Output = Result<Vec<Claimed>, StoreError>> + Send>>;

/// What the dispatcher has claimed and not sent yet (see [`WorkerPool::claim_ahead`]).
#[derive(Default)]
struct Ahead {
    /// Claimed (in flight in the store), in the store's order, waiting for a free slot.
    ready: VecDeque<Claimed>,
    /// The claim made ahead that has not come back yet, and [`Ahead::finished`] when it began.
    claiming: Option<(Claim, u64)>,
    /// The last claim made ahead found nothing due: no other is made before one that does.
    dry: bool,
    /// Attempts finished so far in this run.
    finished: u64,
    /// How many to claim beyond the pool's size (see [`Ahead::allowance`] for how much of it
    /// is used): four times as many as finished during the last claim's round trip, or an
    /// eighth less than before if that is more. Round trips vary several-fold from one to the
    /// next; a depth that followed each would leave the pool short after every quick one.
    depth: usize,
    /// The mean size in bytes of the requests the last claim brought back (0 before any).
    bytes_each: usize,
}

impl Ahead {
    /// Takes the claim made ahead if it has come back, without waiting for it.
    fn take_claim(&mut self) -> Result<(), StoreError> {
        match self
            .claiming
            .as_mut()
            .and_then(|(claim, _)| claim.now_or_never())
        {
            Some(claimed) => self.came_back(claimed),
            None => Ok(()),
        }
    }

    /// Joins the attempts that have finished, counting them.
    fn join_finished(
        &mut self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        while let Some(joined) = tasks.try_join_next() {
            self.finished += 1;
            settle(joined)?;
        }
        Ok(())
    }

    /// Sets [`Ahead::depth`] from a claim that began when [`Ahead::finished`] was `began`
    /// and has just come back.
    fn measured(&mut self, began: u64) {
        let needed = usize::try_from(4 * (self.finished - began)).unwrap_or(usize::MAX);
        self.depth = needed.max(self.depth * 7 / 8);
    }

    /// How many may be claimed beyond the pool's size now: [`Ahead::depth`], at most
    /// [`AHEAD_PER_SLOT`] per slot and [`AHEAD_BYTES`] of requests the size of the last ones.
    fn allowance(&self, concurrency: usize) -> usize {
        self.depth
            .min(AHEAD_PER_SLOT * concurrency)
            .min(AHEAD_BYTES / self.bytes_each.max(1))
    }

    /// Takes in what a claim brought back.
    fn extend(&mut self, claimed: Vec<Claimed>) {
        if !claimed.is_empty() {
            let bytes: usize = claimed.iter().map(Claimed::bytes).sum();
            self.bytes_each = bytes / claimed.len();
        }
        self.dry = claimed.is_empty();
        self.ready.extend(claimed);
    }

    fn came_back(&mut self, claimed: Result<Vec<Claimed>, StoreError>) -> Result<(), StoreError> {
        if let Some((_, began)) = self.claiming.take() {
            self.measured(began);
        }
        self.extend(claimed?);
        Ok(())
    }

    /// Gives every request claimed and not sent back to the queue, unsent, waiting first for
    /// a claim on its way (the store runs it whether or not its answer is read).
    async fn give_back(&mut self, store: &JobStore) -> Result<(), StoreError> {
        if let Some((claim, _)) = self.claiming.take() {
            self.ready.extend(claim.await?);
        }
        if self.ready.is_empty() {
            return Ok(());
        }
        let unsent: Vec<RequestId> = self.ready.drain(..).map(|r| r.id).collect();
        store.call(move |c| db::release(c, &unsent)).await
    }
}

/// How a pool run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolExit {
    /// Nothing is pending or in flight: every request is done.
    Drained,
    /// A job-level condition stopped dispatch; the reason says what to fix.
    Stopped(String),
    /// The spending cap (`--max-cost`) stopped dispatch; the reason says what was spent.
    OverBudget(String),
    /// Shutdown was requested.
    Interrupted,
}

impl PoolExit {
    /// How a run ends for the reading of its file alone: drained once the whole file is in,
    /// stopped by a failed reading, interrupted by one cut short.
    pub fn after_reading(read: Reading) -> PoolExit {
        match read {
            Reading::Done => PoolExit::Drained,
            Reading::Failed(reason) => PoolExit::Stopped(reason),
            Reading::Going | Reading::Stopped => PoolExit::Interrupted,
        }
    }
}

/// Settings of the pool.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Requests in flight at most, as the user gave it (`--concurrency`); `None`: the pool sizes
    /// itself ([`crate::engine::sizing`]) up to `max_in_flight`.
    pub concurrency: Option<usize>,
    /// Requests in flight at most when the pool sizes itself.
    pub max_in_flight: usize,
    /// Limits known before the first answer: journaled by an earlier run of the job.
    pub known_limits: Limits,
    /// Requests per minute at most (`--rpm`), for sizing the pool.
    pub rpm: Option<NonZeroU32>,
    /// How long requests in flight may take to finish after a stop.
    pub grace: Duration,
    /// Retry budgets and backoff.
    pub policy: RetryPolicy,
    /// The circuit breaker.
    pub breaker: BreakerSettings,
    /// Consecutive identical permanent errors that stop the job (0: never).
    pub stop_after_same_error: u32,
    /// Tokens per minute at most.
    pub tpm: Option<NonZeroU32>,
    /// Output tokens counted for `tpm` when a request names no maximum.
    pub default_output_tokens: u64,
    /// The spending cap, if the job has one.
    pub spend: Option<Arc<crate::engine::spend::Spend>>,
}

/// How often a pool that sizes itself looks at its size again while it is full and nothing
/// finishes.
const RESIZE_EVERY: Duration = Duration::from_millis(250);

/// Whether a request may go, after pacing.
enum Pace {
    /// Send it; its token cost, when counted, and the worst case held under the spending cap.
    Go(Option<Cost>, f64),
    /// It goes back to the queue, unsent.
    Withdrawn,
}

/// What the dispatcher may do now.
enum Gate {
    /// Send; as the breaker's probe if `probe`.
    Open { probe: bool },
    /// Nothing may go out before this instant.
    Closed(Instant),
    /// Wait for an attempt in flight to finish (the breaker's probe).
    WaitForTask,
    /// No usable key is left: the job stops.
    NoKeys,
}

/// Runs one job's requests until none is left, a job-level stop, or shutdown.
pub struct WorkerPool {
    context: Arc<Context>,
    limiter: RequestLimiter,
    tokens: Option<TokenLimiter>,
    settings: PoolSettings,
    /// The job's file, when it is still being read into the job (see [`crate::engine::feed`]).
    feed: Option<FeedWatch>,
}

impl WorkerPool {
    /// Prepares a pool; nothing is sent until [`WorkerPool::run`].
    pub fn new(
        job: JobId,
        store: JobStore,
        keys: KeyPool,
        limiter: RequestLimiter,
        settings: PoolSettings,
        tally: Arc<Tally>,
    ) -> WorkerPool {
        let mut context = Context::new(
            job,
            store,
            keys,
            settings.policy,
            settings.breaker,
            settings.stop_after_same_error,
            tally,
        );
        context.ceilings = Limits {
            requests: settings.rpm.map(|n| u64::from(n.get())),
            tokens: settings.tpm.map(|n| u64::from(n.get())),
        };
        context.pacers.assume(settings.known_limits);
        context.spend = settings.spend.clone();
        let rate = context.known_rate();
        context.sizing = Mutex::new(Sizing::new(
            settings.concurrency,
            settings.max_in_flight,
            rate,
            Instant::now(),
        ));
        WorkerPool {
            context: Arc::new(context),
            limiter,
            tokens: settings.tpm.map(TokenLimiter::per_minute),
            settings,
            feed: None,
        }
    }

    /// [`WorkerPool::run`] while `feeder` reads the rest of the job's file into it: the pool
    /// takes each chunk as it comes in and does not end before the last one; the reading stops
    /// (at a chunk's end) when the pool ends first, and is waited for.
    ///
    /// # Errors
    /// As [`WorkerPool::run`]; a reading task that panicked.
    pub async fn run_feeding(
        mut self,
        feeder: Feeder,
        shutdown: &Shutdown,
    ) -> Result<PoolExit, StoreError> {
        let stop = shutdown.stop_token().child_token();
        self.feed = Some(feeder.watch());
        let reading = tokio::spawn({
            let (store, stop) = (self.context.store.clone(), stop.clone());
            async move { feeder.rest(&store, &stop).await }
        });
        let exit = self.run(shutdown).await;
        stop.cancel();
        let read = reading
            .await
            .map_err(|e| StoreError::Failed(format!("the task reading the file failed: {e}")))?;
        // The pool drains only once the reading has ended; a failed reading stops it.
        Ok(match exit? {
            PoolExit::Drained => PoolExit::after_reading(read),
            exit => exit,
        })
    }

    /// Dispatches until done. Requests in flight at a stop get the grace period; after it (or on
    /// abort) they are cancelled and journaled as interrupted, so the job is always resumable.
    ///
    /// # Errors
    /// Only store errors (and a panicked attempt task): a failed request is data, not an error.
    pub async fn run(self, shutdown: &Shutdown) -> Result<PoolExit, StoreError> {
        let stop = shutdown.stop_token();
        let mut tasks: JoinSet<Result<(), StoreError>> = JoinSet::new();
        if let Err(e) = self.dispatch(&mut tasks, &stop).await {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            return Err(e);
        }
        self.drain(&mut tasks, shutdown).await?;
        self.journal_pacing().await?;
        // A stop reason set by the last tasks to finish counts too.
        let over_budget = self
            .context
            .over_budget
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(match self.context.stop_reason() {
            Some(reason) if over_budget => PoolExit::OverBudget(reason),
            Some(reason) => PoolExit::Stopped(reason),
            None if stop.is_cancelled() => PoolExit::Interrupted,
            None => PoolExit::Drained,
        })
    }

    /// Journals how the run was paced: what held the dispatcher back most, the limits known,
    /// and the pool's largest size, so "why was it slow" has an answer after the fact.
    async fn journal_pacing(&self) -> Result<(), StoreError> {
        let ctx = &self.context;
        let Some((bound, share)) = ctx.tally.bound_most() else {
            return Ok(());
        };
        let (peak, adaptive) = {
            let sizing = lock(&ctx.sizing);
            (sizing.peak(), sizing.is_adaptive())
        };
        let limits = ctx.pacers.shared().announced();
        let detail = format!(
            "bound by {} ({:.0}% of the waiting); limits announced: {}; in flight at most {peak} ({})",
            bound.as_str(),
            share * 100.0,
            limits.describe(),
            if adaptive {
                "self-sized"
            } else {
                "--concurrency"
            },
        );
        ctx.journal(EventKind::Pacing, detail).await
    }

    fn halted(&self, stop: &CancellationToken) -> bool {
        stop.is_cancelled() || self.context.halt.is_cancelled()
    }

    /// The dispatch loop; returns when nothing is left or on a halt. Requests it claimed and
    /// did not send go back to the queue, unsent, whatever ended it.
    async fn dispatch(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut ahead = Ahead::default();
        let dispatched = self.dispatch_from(tasks, stop, &mut ahead).await;
        let given_back = ahead.give_back(&self.context.store).await;
        dispatched.and(given_back)
    }

    async fn dispatch_from(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        stop: &CancellationToken,
        ahead: &mut Ahead,
    ) -> Result<(), StoreError> {
        let ctx = &self.context;
        let job = ctx.job;
        let mut feed = self.feed.clone();
        loop {
            let concurrency = self.size();
            let refill_at = self.refill_at();
            if self.halted(stop) {
                return Ok(());
            }
            ahead.join_finished(tasks)?;
            // Looked at before any claim: a feed that is done had every line in the job when
            // the claim ran, so an empty claim then means nothing is left.
            let reading = match feed.as_ref().map(FeedWatch::now) {
                None | Some(Reading::Done | Reading::Stopped) => false,
                Some(Reading::Going) => true,
                Some(Reading::Failed(reason)) => {
                    ctx.stop_job(reason);
                    return Ok(());
                }
            };
            ahead.take_claim()?;
            let free = concurrency.saturating_sub(tasks.len());
            let nothing_to_send = ahead.ready.is_empty()
                && (ahead.claiming.is_some() || (free < refill_at && !tasks.is_empty()));
            ctx.tally.set_pool(tasks.len(), concurrency);
            if free == 0 || nothing_to_send {
                self.claim_ahead(tasks, ahead);
                let waiting = Instant::now();
                // A pool that sizes itself looks again now and then while it is full: requests
                // that have waited long already say the latency rose (see `sizing`).
                let look_again = lock(&ctx.sizing)
                    .is_adaptive()
                    .then(|| waiting + RESIZE_EVERY);
                self.wait(tasks, look_again, stop, None, ahead).await?;
                if free == 0 {
                    ctx.tally.waited(Bound::Pool, waiting.elapsed());
                    let rate = ctx.known_rate();
                    lock(&ctx.sizing).refresh(Instant::now(), rate);
                }
                continue;
            }
            let waiting = Instant::now();
            let probe = match self.gate().await? {
                Gate::Open { probe } => probe,
                Gate::Closed(until) => {
                    ahead.give_back(&ctx.store).await?;
                    self.wait(tasks, Some(until), stop, None, ahead).await?;
                    ctx.tally.waited(Bound::Breaker, waiting.elapsed());
                    continue;
                }
                Gate::WaitForTask => {
                    ahead.give_back(&ctx.store).await?;
                    self.wait(tasks, None, stop, None, ahead).await?;
                    ctx.tally.waited(Bound::Breaker, waiting.elapsed());
                    continue;
                }
                Gate::NoKeys => {
                    ctx.stop_job(no_keys_reason(ctx.keys.len()));
                    return Ok(());
                }
            };
            if ahead.ready.is_empty() {
                let limit = if probe { 1 } else { free.min(CLAIM_BATCH) };
                let began = ahead.finished;
                let claimed = claim(ctx.store.clone(), job, limit).await?;
                ahead.join_finished(tasks)?;
                ahead.measured(began);
                if claimed.is_empty() {
                    if probe {
                        lock(&ctx.breaker).probe_withdrawn();
                    }
                    let next = ctx.store.call(move |c| db::next_due(c, job)).await?;
                    if next.is_none() && tasks.is_empty() && !reading {
                        return Ok(());
                    }
                    let deadline = next.map(|at| {
                        Instant::now() + Duration::from_millis((at - now_ms()).max(0) as u64)
                    });
                    let more = feed.as_mut().filter(|_| reading);
                    self.wait(tasks, deadline, stop, more, ahead).await?;
                    continue;
                }
                ahead.extend(claimed);
            }
            self.launch(tasks, ahead, if probe { 1 } else { free }, probe, stop)
                .await?;
            if probe {
                // Nothing else goes out before the probe's answer: what was claimed ahead waits
                // in the queue, not marked in flight.
                ahead.give_back(&ctx.store).await?;
            } else {
                self.claim_ahead(tasks, ahead);
            }
        }
    }

    /// Requests that may be in flight now: `--concurrency`, or the size the pool found.
    fn size(&self) -> usize {
        lock(&self.context.sizing).limit()
    }

    /// The fewest requests a claim is made for while requests are in flight ([`REFILL_DIVISOR`]).
    fn refill_at(&self) -> usize {
        (self.size() / REFILL_DIVISOR).max(1)
    }

    /// Starts claiming the next requests while those in flight are sent and answered, so that
    /// a slot that frees finds one ready instead of waiting for a store round trip. A claim is
    /// committed with the journal writes queued before it: one to several milliseconds against
    /// a fast server, in which the pool would otherwise run dry (measured on the nginx
    /// workload of docs/benchmarks.md: the dispatcher waited for claims most of the run).
    ///
    /// Claimed requests are in flight in the store until sent or given back, and a crash
    /// journals each as interrupted, so no more are claimed ahead than the pace needs: a few
    /// times as many as finish during a round trip (see [`Ahead::depth`]), within
    /// [`Ahead::allowance`]'s bounds on their number and bytes. Against a
    /// server that takes seconds to answer that is none: claims then wait for free slots, a
    /// quarter of the pool at a time, as they always have. No claim is made ahead while the
    /// pool is paused or its breaker open, nor after one found nothing, until one finds some.
    fn claim_ahead(&self, tasks: &JoinSet<Result<(), StoreError>>, ahead: &mut Ahead) {
        let concurrency = self.size();
        let held = tasks.len() + ahead.ready.len();
        let room = (concurrency + ahead.allowance(concurrency)).saturating_sub(held);
        if ahead.claiming.is_some()
            || ahead.dry
            || room < self.refill_at()
            || !self.gates_still_open()
        {
            return;
        }
        let store = self.context.store.clone();
        let claiming: Claim = Box::pin(claim(store, self.context.job, room.min(CLAIM_BATCH)));
        ahead.claiming = Some((claiming, ahead.finished));
    }

    /// Sends up to `n` of the requests claimed, each after the gates and the limiter allow it;
    /// gives back (never sent, no attempt journaled) every one left when one must wait after all.
    async fn launch(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        ahead: &mut Ahead,
        n: usize,
        probe: bool,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let ctx = &self.context;
        for sent in 0..n {
            let Some(request) = ahead.ready.pop_front() else {
                return Ok(());
            };
            // The first passed the gates already; the others must not slip past a breaker that
            // tripped, or a pause that began, while this batch was going out.
            let first = sent == 0;
            let lease = match (
                first || self.gates_still_open(),
                ctx.keys.pick(Instant::now()),
            ) {
                (true, Pick::Key(lease)) => Some(lease),
                (true | false, Pick::Key(_) | Pick::WaitUntil(_) | Pick::NoneLeft) => None,
            };
            let paced = match &lease {
                Some(lease) => {
                    self.pace(&request, lease.client.key_fingerprint(), stop)
                        .await?
                }
                None => Pace::Withdrawn,
            };
            let (Some(lease), Pace::Go(cost, held_usd)) = (lease, paced) else {
                if probe {
                    lock(&ctx.breaker).probe_withdrawn();
                }
                ahead.ready.push_front(request);
                return ahead.give_back(&ctx.store).await;
            };
            ctx.tally.attempt_started(request.attempts > 0);
            let sent = Dispatched {
                at: Instant::now(),
                cost,
                held_usd,
                probe: probe && first,
            };
            lock(&ctx.sizing).sent(sent.at);
            tasks.spawn(attempt(Arc::clone(ctx), request, lease, sent));
        }
        Ok(())
    }

    /// Waits for the request's turn under `--rpm`, `--tpm` and the server's pace, and counts
    /// each wait toward what bound the job. The request's token cost is counted when a token
    /// limit is known (`--tpm`, or one the server announced), and goes with the attempt.
    /// [`Pace::Withdrawn`] when a halt came first, or when the request can never fit `--tpm`
    /// (then it is journaled as failed, unsent, and the next request may go).
    async fn pace(
        &self,
        request: &Claimed,
        key: Option<&str>,
        stop: &CancellationToken,
    ) -> Result<Pace, StoreError> {
        let ctx = &self.context;
        let tally = &ctx.tally;
        let pacer = ctx.pacers.for_key(key);
        let mut model = None;
        let cost =
            (self.tokens.is_some() || pacer.counts_tokens() || ctx.spend.is_some()).then(|| {
                let body: serde_json::Value =
                    serde_json::from_str(&request.body).unwrap_or_default();
                model = body
                    .get("model")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned);
                cost(&request.url, &body, self.settings.default_output_tokens)
            });
        // The spending cap first: a request that may not go does not wait for its turn.
        let held_usd = match (&ctx.spend, cost) {
            (Some(spend), Some(cost)) => match spend.reserve(model.as_deref(), cost) {
                Ok(held) => held,
                Err(refusal) => {
                    ctx.stop_for_budget(refusal.reason());
                    return Ok(Pace::Withdrawn);
                }
            },
            (Some(_) | None, _) => 0.0,
        };
        let release = || {
            if let Some(spend) = &ctx.spend {
                spend.settle(held_usd, &crate::domain::Usage::default(), None);
            }
        };
        let paced = async {
            if self.limiter.is_limited() {
                let waiting = Instant::now();
                self.limiter.until_ready().await;
                tally.waited(Bound::Requests, waiting.elapsed());
            }
            if let (Some(tokens), Some(cost)) = (&self.tokens, cost) {
                let waiting = Instant::now();
                tokens.until_ready(cost.total()).await?;
                tally.waited(Bound::Tokens, waiting.elapsed());
            }
            let now = Instant::now();
            let tokens = cost.map(Cost::total);
            if let Some(tokens) = tokens.filter(|_| !Arc::ptr_eq(&pacer, ctx.pacers.shared_arc())) {
                ctx.pacers.shared().count_cost(tokens);
            }
            if let Some((slot, by)) = pacer.reserve(now, tokens) {
                tokio::time::sleep_until(slot.into()).await;
                let bound = match by {
                    LimitKind::Requests => Bound::Requests,
                    LimitKind::Tokens => Bound::Tokens,
                };
                tally.waited(bound, slot.saturating_duration_since(now));
            }
            Ok::<(), TooLarge>(())
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                release();
                Ok(Pace::Withdrawn)
            }
            _ = ctx.halt.cancelled() => {
                release();
                Ok(Pace::Withdrawn)
            }
            paced = paced => match paced {
                Ok(()) => Ok(Pace::Go(cost, held_usd)),
                Err(too_large) => {
                    release();
                    ctx.fail_unsent(request, &too_large).await?;
                    Ok(Pace::Withdrawn)
                }
            },
        }
    }

    /// Checks the pause, the keys and the breaker, in that order (the breaker last, because
    /// admitting its probe commits to sending one).
    async fn gate(&self) -> Result<Gate, StoreError> {
        let ctx = &self.context;
        let now = Instant::now();
        if let Some(until) = *lock(&ctx.paused_until)
            && until > now
        {
            return Ok(Gate::Closed(until));
        }
        match ctx.keys.pick(now) {
            Pick::Key(_) => {}
            Pick::WaitUntil(until) => return Ok(Gate::Closed(until)),
            Pick::NoneLeft => return Ok(Gate::NoKeys),
        }
        let (admission, transition) = lock(&ctx.breaker).admit(now);
        if let Some(transition) = transition {
            ctx.journal_breaker(&transition).await?;
        }
        Ok(match admission {
            Admission::Go => Gate::Open { probe: false },
            Admission::Probe => Gate::Open { probe: true },
            Admission::WaitUntil(until) => Gate::Closed(until),
            Admission::WaitForProbe => Gate::WaitForTask,
        })
    }

    fn gates_still_open(&self) -> bool {
        let ctx = &self.context;
        let paused = lock(&ctx.paused_until).is_some_and(|until| until > Instant::now());
        !paused && !lock(&ctx.breaker).is_open()
    }

    /// Waits for a task to end, `deadline`, a halt, a claim made ahead to come back, or (with
    /// `feed`) more of the file.
    async fn wait(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        deadline: Option<Instant>,
        stop: &CancellationToken,
        feed: Option<&mut FeedWatch>,
        ahead: &mut Ahead,
    ) -> Result<(), StoreError> {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let fed = async {
            match feed {
                Some(feed) => feed.moved().await,
                None => std::future::pending().await,
            }
        };
        let claimed = async {
            match ahead.claiming.as_mut() {
                Some((claim, _)) => claim.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                ahead.finished += 1;
                settle(joined)?;
            }
            claimed = claimed => ahead.came_back(claimed)?,
            () = sleep => {}
            () = fed => {}
            _ = stop.cancelled() => {}
            _ = self.context.halt.cancelled() => {}
        }
        Ok(())
    }

    /// Waits for requests in flight: until they finish, the grace period ends, or an abort.
    /// Whatever is cut off is journaled as interrupted and pending again.
    async fn drain(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        shutdown: &Shutdown,
    ) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        tracing::info!(in_flight = tasks.len(), "waiting for requests in flight");
        let grace = tokio::time::sleep(self.settings.grace);
        tokio::pin!(grace);
        let mut result = Ok(());
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(joined) => {
                        if let Err(e) = settle(joined) {
                            result = Err(e);
                        }
                    }
                    None => return result,
                },
                _ = &mut grace => break,
                _ = shutdown.aborting() => break,
            }
        }
        tracing::warn!(in_flight = tasks.len(), "cancelling requests in flight");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let job = self.context.job;
        let now = now_ms();
        self.context
            .store
            .call(move |c| db::recover_in_flight(c, job, now))
            .await?;
        result
    }
}

/// Claims up to `limit` of `job`'s requests due when it runs, at most [`CLAIM_BYTES`] of them
/// (and at least one): they are in flight, committed, when it completes.
async fn claim(store: JobStore, job: JobId, limit: usize) -> Result<Vec<Claimed>, StoreError> {
    let now = now_ms();
    store
        .call(move |c| db::claim_due_within(c, job, now, limit, CLAIM_BYTES))
        .await
}

/// A finished task: its store error, or its panic, is the pool's.
fn settle(
    joined: Result<Result<(), StoreError>, tokio::task::JoinError>,
) -> Result<(), StoreError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(StoreError::Failed(format!("an attempt task panicked: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_depth_claimed_ahead_follows_the_pace_and_fades_when_answers_slow_down() {
        let mut ahead = Ahead {
            finished: 10,
            ..Ahead::default()
        };
        ahead.measured(0);
        assert_eq!(
            ahead.depth, 40,
            "four times what finished during the round trip"
        );
        ahead.finished += 2;
        ahead.measured(10);
        assert_eq!(
            ahead.depth, 35,
            "a slower round trip lowers it by an eighth at most"
        );
        for _ in 0..40 {
            ahead.measured(ahead.finished);
        }
        assert_eq!(ahead.depth, 0, "nothing finishing, nothing claimed ahead");
    }

    fn claimed(id: i64, body_bytes: usize) -> Claimed {
        Claimed {
            id: RequestId(id),
            key: format!("k{id}"),
            method: "POST".to_owned(),
            url: "/v1/chat/completions".to_owned(),
            body: "x".repeat(body_bytes),
            headers: None,
            attempts: 0,
            spent: crate::domain::Spent::default(),
        }
    }

    #[test]
    fn what_is_claimed_ahead_is_bounded_per_slot_and_in_bytes() {
        let mut ahead = Ahead {
            depth: 100_000,
            ..Ahead::default()
        };
        assert_eq!(
            ahead.allowance(64),
            AHEAD_PER_SLOT * 64,
            "small requests: the bound per slot"
        );
        ahead.extend((0..4).map(|i| claimed(i, 1024 * 1024)).collect());
        let each = 1024 * 1024 + "/v1/chat/completions".len() + 2;
        assert_eq!(ahead.bytes_each, each);
        assert_eq!(
            ahead.allowance(64),
            AHEAD_BYTES / each,
            "1 MiB prompts: a few, by their bytes"
        );
        assert!(!ahead.dry);
        ahead.extend(Vec::new());
        assert!(ahead.dry, "a claim that found nothing");
        assert_eq!(ahead.bytes_each, each, "and no size to learn from it");
        ahead.depth = 3;
        assert_eq!(ahead.allowance(64), 3, "the pace's depth when it is less");
    }
}
