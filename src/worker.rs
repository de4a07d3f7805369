//! The worker pool: one dispatcher claims due requests from the store and runs each attempt as a
//! task, at most `concurrency` at a time, each one after the shared rate limiter allows it.
//!
//! The queue is the database: retries are rows whose `next_attempt_at` lies ahead, so the
//! dispatcher sleeps until the earliest deadline (or until a task ends), never in a polling loop,
//! and a restart picks up exactly where the journal says.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::http::classify::{ApiError, Class, Observation, classify};
use crate::http::client::{ApiClient, Sent};
use crate::progress::Tally;
use crate::rate_limit::RequestLimiter;
use crate::request::{AttemptOutcome, Claimed, Completion, Disposition, JobId, RequestId, Usage};
use crate::response::parse_success;
use crate::retry::{Next, RetryPolicy, server_wait};
use crate::shutdown::Shutdown;
use crate::store::{JobStore, StoreError, db};

/// Most requests claimed in one store round trip.
const CLAIM_BATCH: usize = 256;

/// The current wall-clock time in unix milliseconds, the unit of every timestamp in the store.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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

/// Settings of the pool.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Requests in flight at most.
    pub concurrency: usize,
    /// How long requests in flight may take to finish after a stop.
    pub grace: Duration,
    /// Retry budget and backoff.
    pub policy: RetryPolicy,
}

/// Everything an attempt task needs, shared.
struct Context {
    job: JobId,
    store: JobStore,
    client: ApiClient,
    policy: RetryPolicy,
    tally: Arc<Tally>,
    /// Cancelled on a job-level stop (and on shutdown, as a child of the stop token).
    halt: CancellationToken,
    stop_reason: Mutex<Option<String>>,
}

/// Runs one job's requests until none is left, a job-level stop, or shutdown.
pub struct WorkerPool {
    context: Arc<Context>,
    limiter: RequestLimiter,
    settings: PoolSettings,
}

impl WorkerPool {
    /// Prepares a pool; nothing is sent until [`WorkerPool::run`].
    pub fn new(
        job: JobId,
        store: JobStore,
        client: ApiClient,
        limiter: RequestLimiter,
        settings: PoolSettings,
        tally: Arc<Tally>,
    ) -> WorkerPool {
        WorkerPool {
            context: Arc::new(Context {
                job,
                store,
                client,
                policy: settings.policy,
                tally,
                halt: CancellationToken::new(),
                stop_reason: Mutex::new(None),
            }),
            limiter,
            settings,
        }
    }

    /// Dispatches until done. Requests in flight at a stop get the grace period; after it (or on
    /// abort) they are cancelled and journaled as interrupted, so the job is always resumable.
    ///
    /// # Errors
    /// Only store errors (and a panicked attempt task): a failed request is data, not an error.
    pub async fn run(self, shutdown: &Shutdown) -> Result<PoolExit, StoreError> {
        let ctx = &self.context;
        let halt = shutdown.stop_token().child_token();
        let job_halt = ctx.halt.clone();
        let mut tasks: JoinSet<Result<(), StoreError>> = JoinSet::new();
        let dispatched = self.dispatch(&mut tasks, &halt, &job_halt).await;
        let exit = match dispatched {
            Ok(()) if tasks.is_empty() && !halt.is_cancelled() && !job_halt.is_cancelled() => {
                PoolExit::Drained
            }
            Ok(()) => match ctx.stop_reason() {
                Some(reason) => PoolExit::Stopped(reason),
                None => PoolExit::Interrupted,
            },
            Err(e) => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return Err(e);
            }
        };
        self.drain(&mut tasks, shutdown).await?;
        Ok(exit)
    }

    /// The dispatch loop; returns when nothing is left or on a halt.
    async fn dispatch(
        &self,
        tasks: &mut JoinSet<Result<(), StoreError>>,
        halt: &CancellationToken,
        job_halt: &CancellationToken,
    ) -> Result<(), StoreError> {
        let ctx = &self.context;
        let job = ctx.job;
        loop {
            if halt.is_cancelled() || job_halt.is_cancelled() {
                return Ok(());
            }
            while let Some(joined) = tasks.try_join_next() {
                settle(joined)?;
            }
            let free = self.settings.concurrency.saturating_sub(tasks.len());
            if free == 0 {
                tokio::select! {
                    Some(joined) = tasks.join_next() => settle(joined)?,
                    _ = halt.cancelled() => {}
                    _ = job_halt.cancelled() => {}
                }
                continue;
            }
            let now = now_ms();
            let limit = free.min(CLAIM_BATCH);
            let claimed = ctx
                .store
                .call(move |c| db::claim_due(c, job, now, limit))
                .await?;
            if claimed.is_empty() {
                let next = ctx.store.call(move |c| db::next_due(c, job)).await?;
                if next.is_none() && tasks.is_empty() {
                    return Ok(());
                }
                let deadline = next.map(|at| {
                    tokio::time::Instant::now()
                        + Duration::from_millis((at - now_ms()).max(0) as u64)
                });
                tokio::select! {
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => settle(joined)?,
                    _ = sleep_until(deadline) => {}
                    _ = halt.cancelled() => {}
                    _ = job_halt.cancelled() => {}
                }
                continue;
            }
            let mut queue = claimed.into_iter();
            while let Some(request) = queue.next() {
                let ready = tokio::select! {
                    biased;
                    _ = halt.cancelled() => false,
                    _ = job_halt.cancelled() => false,
                    _ = self.limiter.until_ready() => true,
                };
                if !ready {
                    let unsent: Vec<RequestId> = std::iter::once(request.id)
                        .chain(queue.map(|r| r.id))
                        .collect();
                    ctx.store.call(move |c| db::release(c, &unsent)).await?;
                    return Ok(());
                }
                ctx.tally.attempt_started(request.attempts > 0);
                tasks.spawn(attempt(Arc::clone(ctx), request));
            }
        }
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

impl Context {
    fn stop_reason(&self) -> Option<String> {
        self.stop_reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Records the first job-level stop and halts dispatch.
    fn stop_job(&self, reason: String) {
        let mut slot = self
            .stop_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            tracing::warn!(%reason, "stopping the job");
            *slot = Some(reason);
        }
        drop(slot);
        self.halt.cancel();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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

/// Sends one attempt, classifies it, journals it and decides the request's fate.
async fn attempt(ctx: Arc<Context>, request: Claimed) -> Result<(), StoreError> {
    let number = request.attempts + 1;
    let started_at = now_ms();
    let clock = Instant::now();
    let sent = ctx.client.post(&request.url, request.body).await;
    let finished_at = started_at + clock.elapsed().as_millis() as i64;

    let mut completion = Completion {
        request: request.id,
        job: ctx.job,
        number,
        started_at,
        finished_at,
        outcome: AttemptOutcome::Answered,
        http_status: None,
        class: Class::Transient,
        error_code: None,
        error_message: None,
        x_request_id: None,
        key_fingerprint: ctx.client.key_fingerprint().map(str::to_owned),
        response: None,
        usage: Usage::default(),
        disposition: Disposition::Failed,
    };
    let (class, wait, stop_reason) = match sent {
        Sent::Answer(answer) => {
            let success = (200..300).contains(&answer.status);
            let usage = if success {
                parse_success(&answer.body)
            } else {
                None
            };
            let error = if success {
                ApiError::default()
            } else {
                ApiError::parse(&answer.body)
            };
            let should_retry = match answer.header("x-should-retry") {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            };
            let class = classify(Observation::Answer {
                status: answer.status,
                error: &error,
                body_parses: usage.is_some(),
                should_retry,
            });
            let wait = server_wait(&answer.headers, error.message.as_deref(), SystemTime::now());
            completion.http_status = Some(answer.status);
            completion.x_request_id = answer.header("x-request-id").map(str::to_owned);
            if success && usage.is_none() {
                completion.error_code = Some("invalid_json".into());
                completion.error_message = Some("the answer's body is not a JSON object".into());
            }
            let stop_reason =
                (class == Class::JobStop).then(|| job_stop_reason(answer.status, &error));
            completion.error_code = completion.error_code.take().or(error.code);
            completion.error_message = completion.error_message.take().or(error.message);
            completion.usage = usage.unwrap_or_default();
            completion.response = Some(String::from_utf8_lossy(&answer.body).into_owned());
            (class, wait, stop_reason)
        }
        Sent::Failed { failure, message } => {
            completion.outcome = if failure.outcome_unknown() {
                AttemptOutcome::OutcomeUnknown
            } else {
                AttemptOutcome::NotSent
            };
            completion.error_code = Some(
                match failure {
                    crate::http::classify::TransportFailure::Connect => "connect_error",
                    crate::http::classify::TransportFailure::Timeout => "timeout",
                    crate::http::classify::TransportFailure::Other => "network_error",
                }
                .into(),
            );
            completion.error_message = Some(message);
            (classify(Observation::Transport(failure)), None, None)
        }
    };
    completion.class = class;
    let next = ctx.policy.next(class, number, wait, fastrand::f64());
    completion.disposition = match next {
        Next::Succeeded => Disposition::Succeeded,
        Next::Failed => Disposition::Failed,
        Next::RetryAfter(delay) => Disposition::RetryAt(finished_at + delay.as_millis() as i64),
        Next::StopJob => Disposition::Requeue,
    };
    tracing::debug!(
        key = %request.key,
        attempt = number,
        status = ?completion.http_status,
        class = %class,
        "attempt finished"
    );
    ctx.store.record(completion).await?;
    match next {
        Next::Succeeded => ctx.tally.succeeded(),
        Next::Failed => ctx.tally.failed(),
        Next::RetryAfter(_) => ctx.tally.retry_scheduled(),
        Next::StopJob => {
            ctx.tally.retry_scheduled();
            ctx.stop_job(stop_reason.unwrap_or_else(|| "the server refused the job".into()));
        }
    }
    Ok(())
}

/// What to tell the user when the server's answer stops the whole job.
fn job_stop_reason(status: u16, error: &ApiError) -> String {
    let code = error.code.as_deref().unwrap_or("no code");
    let message = error.message.as_deref().unwrap_or("no message");
    let advice = match (status, error.code.as_deref()) {
        (401, Some("invalid_api_key")) => "the API key was rejected: set a valid OPENAI_API_KEY",
        (401, _) => {
            "authentication failed: check OPENAI_API_KEY, OPENAI_PROJECT_ID and OPENAI_ORG_ID"
        }
        (429, _) => "the account is out of quota: check the plan and billing details",
        (403, _) => "access is forbidden: check the project's model access and region",
        _ => "the server refused the job",
    };
    format!("{advice}, then run `runner resume` (HTTP {status} {code}: {message})")
}
