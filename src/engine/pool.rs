//! The worker pool: one dispatcher claims due requests from the store and runs each attempt as a
//! task, at most `concurrency` at a time.
//!
//! Before each request goes out it passes, in order: the pool-wide pause a 429 imposes, the key
//! pool (a healthy key), the circuit breaker ([`crate::engine::breaker`]), and the shared rate limiter.
//! The queue is the database: retries are rows whose `next_attempt_at` lies ahead, so the
//! dispatcher sleeps until the earliest deadline (or until a task ends), never in a polling loop,
//! and a restart picks up exactly where the journal says.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::{Claimed, JobId, RequestId};
use crate::engine::attempt::{attempt, no_keys_reason};
use crate::engine::breaker::{Admission, BreakerSettings};
use crate::engine::context::Context;
use crate::engine::feed::{FeedWatch, Feeder, Reading};
use crate::engine::keys::{KeyPool, Pick};
use crate::engine::progress::Tally;
use crate::engine::rate_limit::{RequestLimiter, TokenLimiter, TooLarge};
use crate::engine::retry::RetryPolicy;
use crate::engine::shutdown::Shutdown;
use crate::engine::tokens::estimate;
use crate::store::{JobStore, StoreError, db};
use crate::util::clock::now_ms;
use crate::util::sync::lock;

/// Most requests claimed in one store round trip.
const CLAIM_BATCH: usize = 256;

/// The share of `--concurrency` that must be free before the dispatcher claims again (while
/// requests are in flight): claiming one request per finished task costs a store round trip and
/// a commit each; claiming a quarter of the pool at a time amortises them, and the pool is never
/// emptier than three quarters while work is due.
const REFILL_DIVISOR: usize = 4;

/// How a pool run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolExit {
    /// Nothing is pending or in flight: every request is done.
    Drained,
    /// A job-level condition stopped dispatch; the reason says what to fix.
    Stopped(String),
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
    /// Requests in flight at most.
    pub concurrency: usize,
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
        WorkerPool {
            context: Arc::new(Context::new(
                job,
                store,
                keys,
                settings.policy,
                settings.breaker,
                settings.stop_after_same_error,
                tally,
            )),
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
        // A stop reason set by the last tasks to finish counts too.
        Ok(match self.context.stop_reason() {
            Some(reason) => PoolExit::Stopped(reason),
            None if stop.is_cancelled() => PoolExit::Interrupted,
            None => PoolExit::Drained,
        })
    }

    fn halted(&self, stop: &CancellationToken) -> bool {
        stop.is_cancelled() || self.context.halt.is_cancelled()
    }

    /// The dispatch loop; returns when nothing is left or on a halt.
    async fn dispatch(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let ctx = &self.context;
        let job = ctx.job;
        let mut feed = self.feed.clone();
        loop {
            if self.halted(stop) {
                return Ok(());
            }
            while let Some(joined) = tasks.try_join_next() {
                settle(joined)?;
            }
            let free = self.settings.concurrency.saturating_sub(tasks.len());
            let refill_at = (self.settings.concurrency / REFILL_DIVISOR).max(1);
            if free < refill_at && !tasks.is_empty() {
                self.wait(tasks, None, stop, None).await?;
                continue;
            }
            let probe = match self.gate().await? {
                Gate::Open { probe } => probe,
                Gate::Closed(until) => {
                    self.wait(tasks, Some(until), stop, None).await?;
                    continue;
                }
                Gate::WaitForTask => {
                    self.wait(tasks, None, stop, None).await?;
                    continue;
                }
                Gate::NoKeys => {
                    ctx.stop_job(no_keys_reason(ctx.keys.len()));
                    return Ok(());
                }
            };
            // Looked at before the claim: a feed that is done had every line in the job when
            // this claim ran, so an empty claim then means nothing is left.
            let reading = match feed.as_ref().map(FeedWatch::now) {
                None | Some(Reading::Done | Reading::Stopped) => false,
                Some(Reading::Going) => true,
                Some(Reading::Failed(reason)) => {
                    ctx.stop_job(reason);
                    return Ok(());
                }
            };
            let now = now_ms();
            let limit = if probe { 1 } else { free.min(CLAIM_BATCH) };
            let claimed = ctx
                .store
                .call(move |c| db::claim_due(c, job, now, limit))
                .await?;
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
                self.wait(tasks, deadline, stop, more).await?;
                continue;
            }
            self.launch(tasks, claimed, probe, stop).await?;
        }
    }

    /// Sends claimed requests, each after the gates and the limiter allow it; gives back (never
    /// sent, no attempt journaled) those that must wait after all.
    async fn launch(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        claimed: Vec<Claimed>,
        probe: bool,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let ctx = &self.context;
        let mut queue = claimed.into_iter().peekable();
        let mut first = true;
        while let Some(request) = queue.next() {
            // The first passed the gates already; the others must not slip past a breaker that
            // tripped, or a pause that began, while this batch was going out.
            let lease = match (
                first || self.gates_still_open(),
                ctx.keys.pick(Instant::now()),
            ) {
                (true, Pick::Key(lease)) => Some(lease),
                (true | false, Pick::Key(_) | Pick::WaitUntil(_) | Pick::NoneLeft) => None,
            };
            let ready = lease.is_some() && self.pace(&request, stop).await?;
            let Some(lease) = lease.filter(|_| ready) else {
                if probe {
                    lock(&ctx.breaker).probe_withdrawn();
                }
                let unsent: Vec<RequestId> = std::iter::once(request.id)
                    .chain(queue.map(|r| r.id))
                    .collect();
                ctx.store.call(move |c| db::release(c, &unsent)).await?;
                return Ok(());
            };
            ctx.tally.attempt_started(request.attempts > 0);
            tasks.spawn(attempt(Arc::clone(ctx), request, lease, probe && first));
            first = false;
        }
        Ok(())
    }

    /// Waits for the request's turn under `--rpm`, `--tpm` and the server's pace. `false` when
    /// a halt came first, or when the request can never fit `--tpm` (then it is journaled as
    /// failed, unsent, and the next request may go).
    async fn pace(&self, request: &Claimed, stop: &CancellationToken) -> Result<bool, StoreError> {
        let ctx = &self.context;
        let paced = async {
            self.limiter.until_ready().await;
            if let Some(tokens) = &self.tokens {
                let body: serde_json::Value =
                    serde_json::from_str(&request.body).unwrap_or_default();
                let needed = estimate(&request.url, &body, self.settings.default_output_tokens);
                tokens.until_ready(needed).await?;
            }
            if let Some(slot) = ctx.pacer.reserve(Instant::now()) {
                tokio::time::sleep_until(slot.into()).await;
            }
            Ok::<(), TooLarge>(())
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => Ok(false),
            _ = ctx.halt.cancelled() => Ok(false),
            paced = paced => match paced {
                Ok(()) => Ok(true),
                Err(too_large) => {
                    ctx.fail_unsent(request, &too_large).await?;
                    Ok(false)
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

    /// Waits for a task to end, `deadline`, a halt, or (with `feed`) more of the file.
    async fn wait(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        deadline: Option<Instant>,
        stop: &CancellationToken,
        feed: Option<&mut FeedWatch>,
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
        tokio::select! {
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => settle(joined)?,
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
