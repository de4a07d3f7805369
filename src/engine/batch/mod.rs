//! `--via batch`: a job's requests run by the hosted Batch API, with the same journal, retry
//! budgets, resume and export as a sync job.
//!
//! One loop (`BatchRun::run`) moves every open chunk of the job one step at a time, each step
//! recorded before and after its call to the server (see [`ChunkState`]):
//!
//! 1. `cut`: pending requests due now are grouped by endpoint and model into chunks within
//!    the limits; each chunk's exact file is hashed and recorded, its requests become `batched`.
//! 2. `steps`: upload the file, create the batch (its metadata names the job, the chunk and a
//!    random token, so that a create the journal missed is found again in the batch list before
//!    anything is created twice), poll it with backoff up to `--poll-interval`.
//! 3. `import`: once the batch has ended, stream its output and error files, journal each
//!    line as an attempt of its request (matched by `custom_id`, classified by the same
//!    taxonomy), and send what needs another try into a later chunk.
//!
//! A failed Files or Batches call goes through the failure model: retried with backoff within
//! the class budgets (a 401 `missing_scope` is `auth_transient`), a rejected key or exhausted
//! quota stops the job. Ctrl-C leaves the batches running on the server; settling
//! cancels them instead (`runner cancel`, or `resume --via sync`), waits for them to end and
//! imports what they finished.

pub mod chunks;
mod cut;
mod import;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{ChunkState, Class, StopCause};
use crate::engine::config::BatchSettings;
use crate::engine::progress::Tally;
use crate::engine::retry::RetryPolicy;
use crate::engine::shutdown::Shutdown;
use crate::http::batch::BatchApiError;
use crate::http::client::ApiClient;
use crate::store::batches::{self, CallRecord, ChunkRow};
use crate::store::db::{self, Job};
use crate::store::{JobStore, StoreError};
use crate::util::clock::now_ms;

/// What the loop is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Run the job's pending requests through batches until none is left.
    Run,
    /// Cut nothing new; give chunks that never reached the server back to pending, cancel the
    /// batches still running, wait for them to end and import what they finished.
    Settle,
}

/// How the loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BatchExit {
    /// No chunk is open (in [`Mode::Run`]: nothing is pending either).
    Drained,
    /// A job-level condition; the message says what to do.
    Stopped {
        /// What stopped the job, and what to do.
        reason: String,
        /// Batches that may still be running.
        running: usize,
    },
    /// `--max-cost`: nothing is open, and the next request's worst case does not fit.
    OverBudget {
        /// What was spent, and how to go on.
        reason: String,
    },
    /// `--via auto`: the switch time came (or nothing left can go by batch); the rest goes
    /// directly once the open batches are settled.
    Switch {
        /// Batches that may still be running.
        running: usize,
    },
    /// A signal; this many batches go on running on the server.
    Interrupted {
        /// Batches that may still be running.
        running: usize,
    },
}

/// One run of the batch loop over a job.
pub(crate) struct BatchRun<'a> {
    /// The store's handle (fenced by the job's lease).
    pub(crate) store: &'a JobStore,
    /// The job.
    pub(crate) job: &'a Job,
    /// The client of the Files and Batches calls (one key).
    pub(crate) client: ApiClient,
    /// Budgets and backoff, for the calls and for the requests.
    pub(crate) policy: RetryPolicy,
    /// Chunk limits, poll interval, file deletion.
    pub(crate) settings: BatchSettings,
    /// Signals.
    pub(crate) shutdown: &'a Shutdown,
    /// Counts for the progress display.
    pub(crate) tally: Arc<Tally>,
    /// Run or settle.
    pub(crate) mode: Mode,
    /// Identical permanent failures of a whole batch that stop the job (0: never).
    pub(crate) stop_after_same_error: u32,
    /// A job-level stop found along the way.
    pub(crate) stop: Option<String>,
    /// `--max-cost`, held chunk by chunk.
    pub(crate) cap: Option<crate::engine::spend::BatchCap>,
    /// `--via auto`: when to stop running batches (unix ms).
    pub(crate) switch_at: Option<i64>,
}

impl BatchRun<'_> {
    /// Moves every chunk to its end, a job-level stop or a signal.
    ///
    /// # Errors
    /// Store failures only: a failed call to the server is journaled and retried or stops the
    /// job.
    pub(crate) async fn run(mut self) -> Result<BatchExit, StoreError> {
        let mut told_unbatchable = false;
        // What the cap held when it last stopped a cut: due requests wait for an import.
        let mut capped_at = None;
        loop {
            if self.shutdown.is_stopping() {
                let running = self.running().await?;
                return Ok(BatchExit::Interrupted { running });
            }
            if let Some(reason) = self.stop.take() {
                let running = self.running().await?;
                return Ok(BatchExit::Stopped { reason, running });
            }
            if self.mode == Mode::Run && self.switch_at.is_some_and(|at| now_ms() >= at) {
                let running = self.running().await?;
                return Ok(BatchExit::Switch { running });
            }
            if self.mode == Mode::Run {
                let cut = self.cut(capped_at).await?;
                cut.tell(&self.job.name, &mut told_unbatchable);
                capped_at = cut
                    .capped
                    .and_then(|(held, stopped)| stopped.then_some(held));
                // Their attempts are counted when their results are journaled.
                self.tally.batched_again(cut.again);
            }
            let (id, now) = (self.job.id, now_ms());
            let (open, next_due, counts) = self
                .store
                .call(move |c| {
                    Ok((
                        batches::open_chunks(c, id)?,
                        db::next_due(c, id)?,
                        db::counts(c, id)?,
                    ))
                })
                .await?;
            if open.is_empty() {
                match (self.mode, next_due) {
                    (Mode::Settle, _) | (Mode::Run, None) => return Ok(BatchExit::Drained),
                    (Mode::Run, Some(_))
                        if let (Some(held), Some(cap)) = (capped_at, &self.cap) =>
                    {
                        return Ok(BatchExit::OverBudget {
                            reason: cap.reason(held),
                        });
                    }
                    // Pending, due, and yet not cut: none of them can go into a batch. With a
                    // deadline, they go directly now.
                    (Mode::Run, Some(due)) if due <= now && self.switch_at.is_some() => {
                        return Ok(BatchExit::Switch { running: 0 });
                    }
                    (Mode::Run, Some(due)) if due <= now => {
                        return Ok(BatchExit::Stopped {
                            reason: format!(
                                "{} requests cannot go through the Batch API (see above): \
                                 `runner resume --via sync` sends them directly",
                                counts.pending
                            ),
                            running: 0,
                        });
                    }
                    (Mode::Run, Some(_)) => {}
                }
            }
            let shutdown = self.shutdown;
            for chunk in open.iter().filter(|c| c.next_call_at <= now) {
                if shutdown.is_stopping() || self.stop.is_some() {
                    break;
                }
                // A first signal lets the step under way finish; a second drops it where it
                // is: every step is recorded before its call, so the next run picks it up.
                tokio::select! {
                    done = self.advance(chunk.clone()) => done?,
                    () = shutdown.aborting() => break,
                }
            }
            if self.shutdown.is_stopping() || self.stop.is_some() {
                continue;
            }
            let id = self.job.id;
            let (open, next_due) = self
                .store
                .call(move |c| Ok((batches::open_chunks(c, id)?, db::next_due(c, id)?)))
                .await?;
            let running = open.iter().filter(|c| !c.state.is_final()).count();
            self.tally
                .set_note((running > 0).then(|| format!("{running} batches open")));
            let next_call = open.iter().map(|c| c.next_call_at).min();
            let wake = match self.mode {
                // Held back by the cap, the due requests wait for the open chunks.
                Mode::Run if capped_at.is_none() => next_call.into_iter().chain(next_due).min(),
                Mode::Run | Mode::Settle => next_call,
            };
            // Nothing to wait for loops back at once (to end the run); a wait ends at the
            // switch time at the latest.
            let wake = match (self.mode, self.switch_at) {
                (Mode::Run, Some(at)) => wake.map(|w| w.min(at)),
                _ => wake,
            };
            let wait = wake.map_or(Duration::ZERO, |at| {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))
            });
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.shutdown.stopping() => {}
                }
            }
        }
    }

    /// One step of one chunk.
    async fn advance(&mut self, chunk: ChunkRow) -> Result<(), StoreError> {
        match (self.mode, chunk.state) {
            (Mode::Settle, ChunkState::Cut | ChunkState::Uploading | ChunkState::Uploaded) => {
                self.give_back(&chunk).await
            }
            (Mode::Run, ChunkState::Cut | ChunkState::Uploading) => self.upload(&chunk).await,
            (Mode::Run, ChunkState::Uploaded) => self.create(&chunk).await,
            (_, ChunkState::Creating) => self.find_or_create(&chunk).await,
            (Mode::Settle, ChunkState::Submitted) => self.cancel_then_poll(&chunk).await,
            (Mode::Run, ChunkState::Submitted) => self.poll(&chunk).await,
            (_, ChunkState::Ended) => self.import(&chunk).await,
            (_, ChunkState::Imported | ChunkState::Dropped) => Ok(()),
        }
    }

    /// A chunk that never reached the server (or whose batch was never created): its requests
    /// go back to pending.
    async fn give_back(&mut self, chunk: &ChunkRow) -> Result<(), StoreError> {
        let id = chunk.id;
        let moved = self.store.call(move |c| batches::drop_chunk(c, id)).await?;
        crate::say!(
            "{}: chunk {} had not become a batch: its {moved} requests are pending again",
            self.job.name,
            chunk.seq
        );
        Ok(())
    }

    /// Batches of the job that may be running on the server: what a run leaves behind.
    async fn running(&self) -> Result<usize, StoreError> {
        let id = self.job.id;
        let open = self
            .store
            .call(move |c| batches::open_chunks(c, id))
            .await?;
        Ok(open.iter().filter(|c| c.state.may_run_on_server()).count())
    }

    /// Journals a failed Files or Batches call and decides what follows: another try after a
    /// backoff within the class's budget, or a job-level stop.
    async fn call_failed(
        &mut self,
        chunk: &ChunkRow,
        call: CallRecord,
        error: &BatchApiError,
    ) -> Result<(), StoreError> {
        self.call_failed_as(chunk, call, error, error.class()).await
    }

    /// [`BatchRun::call_failed`], with the failure taken as `class` (`None`: a local fault).
    async fn call_failed_as(
        &mut self,
        chunk: &ChunkRow,
        mut call: CallRecord,
        error: &BatchApiError,
        mut class: Option<Class>,
    ) -> Result<(), StoreError> {
        // Over the project's enqueued-token limit a create is refused until earlier batches
        // end: the chunk waits for them (not a fault of the chunk, no budget spent) while this
        // job has batches of its own running; otherwise it is paced like a 429.
        if is_enqueued_limit(error) {
            let id = self.job.id;
            let open = self
                .store
                .call(move |c| batches::open_chunks(c, id))
                .await?;
            let running = open
                .iter()
                .filter(|c| c.id != chunk.id && c.state == ChunkState::Submitted)
                .count();
            if running > 0 {
                return self.wait_for_others(chunk, call, error, running).await;
            }
            class = Some(Class::RateLimited);
        }
        note_failure(&mut call, error, class);
        let status = call.http_status;
        let now = now_ms();
        let (next_call_at, stop) = match class {
            Some(
                class @ (Class::Transient
                | Class::AuthTransient
                | Class::RateLimited
                | Class::InvalidResponse),
            ) => {
                let spent = chunk.spent.of(class) + 1;
                match self.policy.retry_delay(class, spent, None, fastrand::f64()) {
                    Some(delay) => {
                        crate::say!(
                            "{}: {error} ({}): chunk {} tries again in {}",
                            self.job.name,
                            class.journaled(),
                            chunk.seq,
                            humantime::format_duration(Duration::from_millis(
                                delay.as_millis() as u64
                            ))
                        );
                        (
                            now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                            None,
                        )
                    }
                    None => {
                        // A proxy without a Files store answers the upload with a 5xx for
                        // ever (LiteLLM without `files_settings`): say the way around it too.
                        let or_sync = match call.operation {
                            "upload" | "create" | "find" => {
                                "; if this server cannot run batches, `runner resume --via sync` \
                                 sends the job's requests directly"
                            }
                            _ => "",
                        };
                        (
                            now,
                            Some(format!(
                                "{error}, {spent} times in a row ({}): `runner resume` tries \
                                 again{or_sync}",
                                class.journaled()
                            )),
                        )
                    }
                }
            }
            Some(Class::JobStop(cause)) => (now, Some(stop_advice(cause, error))),
            // No Files or Batches API at this base URL (llama.cpp's server, vLLM, Ollama).
            Some(Class::RequestFailed)
                if matches!(status, Some(404 | 405 | 501))
                    && matches!(call.operation, "upload" | "create" | "find") =>
            {
                (
                    now,
                    Some(format!(
                        "{error}: this server does not serve the hosted Batch API; \
                     `runner resume --via sync` sends the job's requests directly"
                    )),
                )
            }
            Some(Class::RequestFailed | Class::Succeeded) => (
                now,
                Some(format!(
                    "{error}: the Batch API does not take chunk {} as it is; \
                     `runner resume --via sync` sends its requests directly",
                    chunk.seq
                )),
            ),
            None => (now, Some(format!("{error}"))),
        };
        let (id, journaled) = (chunk.id, class.unwrap_or(Class::Transient));
        self.store
            .call(move |c| {
                batches::record_call(c, &call)?;
                batches::call_failed(c, id, journaled, next_call_at)
            })
            .await?;
        if let Some(stop) = stop {
            self.stop.get_or_insert(stop);
        }
        Ok(())
    }

    /// A create refused over the enqueued-token limit while this job's other batches run: the
    /// chunk tries again after a poll interval, without spending a budget.
    async fn wait_for_others(
        &mut self,
        chunk: &ChunkRow,
        mut call: CallRecord,
        error: &BatchApiError,
        running: usize,
    ) -> Result<(), StoreError> {
        note_failure(&mut call, error, Some(Class::RateLimited));
        let wait = Duration::from_millis(self.settings.poll_interval_ms);
        let next_call_at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        crate::say!(
            "{}: chunk {} waits for the job's {running} running batches (over the enqueued-token limit)",
            self.job.name,
            chunk.seq
        );
        let id = chunk.id;
        self.store
            .call(move |c| {
                batches::record_call(c, &call)?;
                batches::put_off(c, id, next_call_at)
            })
            .await
    }

    /// A call record for this chunk, started now.
    fn call(&self, chunk: &ChunkRow, operation: &'static str) -> CallRecord {
        CallRecord {
            chunk: chunk.id,
            job: self.job.id,
            operation,
            started_at: now_ms(),
            finished_at: now_ms(),
            http_status: None,
            class: None,
            error_code: None,
            error_message: None,
            result: None,
            key_fingerprint: self.client.key_fingerprint().map(str::to_owned),
        }
    }
}

/// Whether a refusal says the project's enqueued-token limit is reached.
fn is_enqueued_limit(error: &BatchApiError) -> bool {
    match error {
        BatchApiError::Api { error, .. } => {
            error.code.as_deref() == Some("token_limit_exceeded")
                || error
                    .message
                    .as_deref()
                    .is_some_and(|m| m.to_ascii_lowercase().contains("enqueued token limit"))
        }
        BatchApiError::Transport { .. }
        | BatchApiError::Decode { .. }
        | BatchApiError::Sink { .. } => false,
    }
}

/// Journals in `call` how it failed: its status, code and message, and `class` (`None`: a
/// local fault).
fn note_failure(call: &mut CallRecord, error: &BatchApiError, class: Option<Class>) {
    let (status, code) = match error {
        BatchApiError::Api {
            status, error: e, ..
        } => (Some(*status), e.code.clone()),
        BatchApiError::Transport { failure, .. } => {
            (None, Some(format!("{failure:?}").to_ascii_lowercase()))
        }
        BatchApiError::Decode { status, .. } => (Some(*status), Some("invalid_json".to_owned())),
        BatchApiError::Sink { .. } => (None, Some("write_error".to_owned())),
    };
    call.http_status = status;
    call.error_code = code;
    call.error_message = Some(error.to_string());
    call.class = class.map(|c| c.journaled());
}

/// What to tell the user when a Files or Batches call stops the job.
fn stop_advice(cause: StopCause, error: &BatchApiError) -> String {
    match error {
        BatchApiError::Api {
            operation,
            status,
            error,
            ..
        } => format!(
            "{}, then run `runner resume` (HTTP {status} {}: {}, {operation})",
            cause.advice(),
            error.code.as_deref().unwrap_or("no code"),
            error.message.as_deref().unwrap_or("no message"),
        ),
        BatchApiError::Transport { .. }
        | BatchApiError::Decode { .. }
        | BatchApiError::Sink { .. } => {
            format!("{}, then run `runner resume` ({error})", cause.advice())
        }
    }
}
