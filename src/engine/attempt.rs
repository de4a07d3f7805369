//! One attempt, in three steps: **read** what came back into a `Reading` (pure), **decide** the
//! request's fate with `decide` (pure, a table of cases below), then **record**: tell the
//! breaker, the key pool and the pacer, journal the attempt with its request's new state, and
//! act on a job-level stop.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::Method;

use crate::domain::tokens::Cost;
use crate::domain::{
    AttemptOutcome, Claimed, Class, Completion, Disposition, JobId, RequestId, ResponseBody,
    StopCause, Usage,
};
use crate::engine::context::{Context, Unreachable};
use crate::engine::keys::{KeyLease, KeyOutcome};
use crate::engine::retry::RetryPolicy;
use crate::engine::sizing::Signal;
use crate::http::classify::ApiError;
use crate::http::client::ApiClient;
use crate::http::hints::{Announced, LimitKind};
use crate::store::{StoreError, db};
use crate::util::clock::now_ms;
use crate::util::sync::lock;

pub(crate) mod batched;
mod read;

pub use read::RESPONSE_TOO_LARGE;
use read::read;

/// What an attempt task is told of its sending.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dispatched {
    /// When the dispatcher let it go.
    pub(crate) at: Instant,
    /// Its token cost as paced, when counted.
    pub(crate) cost: Option<Cost>,
    /// Its worst case held under the spending cap, USD (0 without a cap).
    pub(crate) held_usd: f64,
    /// Whether it is the breaker's probe.
    pub(crate) probe: bool,
}

/// Sends one attempt, reads it, decides the request's fate and records it.
pub(crate) async fn attempt(
    ctx: Arc<Context>,
    request: Claimed,
    lease: KeyLease,
    sent: Dispatched,
) -> Result<(), StoreError> {
    let probe = sent.probe;
    let Claimed {
        id,
        key,
        method,
        url,
        body,
        headers,
        attempts,
        spent,
    } = request;
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
    // Only POST carries a body: the input admits no other method with one.
    let body = (method == Method::POST).then_some(body);
    let started_at = now_ms();
    let clock = Instant::now();
    let answer = lease
        .client
        .send(&method, &url, body, headers.as_deref())
        .await;
    let finished_at = started_at + clock.elapsed().as_millis() as i64;
    let mut reading = read(answer, SystemTime::now(), ctx.policy.max_server_wait);
    reading.redact(&lease.client);

    // The gates learn from every attempt: the server's pace and limits, the pool's size, the
    // service's health, the key's.
    let now = Instant::now();
    let refused = (reading.class == Class::RateLimited).then(|| refused_limit(&reading.error));
    let key_fingerprint = lease.client.key_fingerprint();
    ctx.learn_limits(key_fingerprint, &reading.announced, refused, now)
        .await?;
    if let (Some(cost), Some(prompt)) = (sent.cost, reading.usage.prompt_tokens) {
        // Booked as tiktoken counted the prompt; the server counted it as `usage` says.
        ctx.pacers.for_key(key_fingerprint).refund_tokens(
            cost.prompt
                .saturating_sub(u64::try_from(prompt).unwrap_or(0)),
            now,
        );
    }
    if let Some(spend) = &ctx.spend {
        spend.settle(
            sent.held_usd,
            &reading.usage,
            sent.cost.map(|cost| cost.prompt),
        );
    }
    ctx.resize(sent.at, now, Signal::of(reading.class));
    let unreachable = match (reading.outcome, reading.http_status) {
        (_, Some(_)) => {
            ctx.answered();
            None
        }
        // A timeout or a cut answer may be a slow server, not a wrong address.
        (AttemptOutcome::NotSent | AttemptOutcome::OutcomeUnknown, None)
            if matches!(
                reading.error_code.as_deref(),
                Some("connect_error" | "network_error")
            ) =>
        {
            let error = reading.error_message.as_deref().unwrap_or("no answer");
            match ctx.unreachable(&lease.client.url_for(&url), error, now) {
                Unreachable::Stop(reason) => Some(reason),
                Unreachable::Wait => None,
            }
        }
        _ => None,
    };
    let unwell = matches!(reading.class, Class::Transient | Class::AuthTransient);
    let transition = lock(&ctx.breaker).record(unwell, probe, now);
    let key_event = ctx.keys.record(&lease, KeyOutcome::of(reading.class), now);

    let decision = decide(&Situation {
        class: reading.class,
        status: reading.http_status,
        error: &reading.error,
        server_wait: reading.wait,
        spent: spent.of(reading.class) + 1,
        policy: &ctx.policy,
        jitter: fastrand::f64(),
        finished_at,
        other_keys_usable: ctx.keys.any_usable(),
        keys: ctx.keys.len(),
    });
    if let Some(wait) = decision.pause {
        ctx.pause_for(wait);
    }
    tracing::debug!(
        key = %key,
        attempt = attempts + 1,
        status = ?reading.http_status,
        class = %reading.class.journaled(),
        "attempt finished"
    );
    let sending = Sending {
        request: id,
        job: ctx.job,
        number: attempts + 1,
        key_fingerprint: lease.client.key_fingerprint().map(str::to_owned),
        started_at,
        finished_at,
    };
    let completion = reading.into_completion(sending, decision.disposition);
    record(&ctx, completion, decision.stop.or(unreachable)).await?;
    if let Some(transition) = transition {
        ctx.journal_breaker(&transition).await?;
    }
    if let Some(event) = key_event {
        ctx.journal(event.kind(), event.detail()).await?;
    }
    Ok(())
}

/// Journals the attempt, counts it, and follows a streak of identical permanent errors or a
/// job-level stop.
async fn record(
    ctx: &Context,
    completion: Completion,
    stop: Option<String>,
) -> Result<(), StoreError> {
    let streak = match completion.class {
        Class::RequestFailed => ctx.note_permanent(
            completion.request,
            Some((completion.http_status, completion.error_code.clone())),
        ),
        Class::Succeeded => ctx.note_permanent(completion.request, None),
        // Retried classes and stops neither extend nor break a streak of configuration errors.
        Class::Transient
        | Class::AuthTransient
        | Class::RateLimited
        | Class::InvalidResponse
        | Class::JobStop(_) => None,
    };
    let disposition = completion.disposition;
    let status = completion.http_status;
    let code = completion.error_code.clone();
    // Counted once committed: a result a crash could still lose is never shown as done.
    let tally = Arc::clone(&ctx.tally);
    ctx.store
        .record_then(completion, move || match disposition {
            Disposition::Succeeded => tally.succeeded(),
            Disposition::Failed => tally.failed(),
            Disposition::RetryAt(_) | Disposition::Requeue => tally.retry_scheduled(),
        })
        .await?;
    if let Some(ids) = streak {
        // The failures were journaled above (same channel, so before this): put them back.
        let count = ids.len();
        let requeued = ctx.store.call(move |c| db::requeue(c, &ids)).await?;
        ctx.tally.unfail(requeued);
        ctx.stop_job(format!(
            "the last {count} requests all failed with HTTP {} {}: this looks like a configuration error \
             (e.g. a wrong model name or endpoint); fix it, then run `runner resume` (those {requeued} requests were requeued)",
            status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            code.as_deref().unwrap_or("(no code)"),
        ));
    }
    if let Some(reason) = stop {
        ctx.stop_job(reason);
    }
    Ok(())
}

/// What came back from one attempt: the journal's facts and the hints the gates use.
#[derive(Debug)]
pub(crate) struct Reading {
    /// Whether the server saw it.
    outcome: AttemptOutcome,
    /// HTTP status, when answered.
    http_status: Option<u16>,
    /// The taxonomy's verdict.
    class: Class,
    /// The parsed error body (empty for a success or a transport failure).
    error: ApiError,
    /// `error.code` (or a transport failure's kind), as journaled.
    error_code: Option<String>,
    /// `error.message` (or a transport failure's text), as journaled.
    error_message: Option<String>,
    /// `x-request-id` of the answer.
    x_request_id: Option<String>,
    /// The answer's body, when there is one: in memory, or spooled.
    response: Option<ResponseBody>,
    /// Usage, for successes.
    usage: Usage,
    /// The wait the server asked for, when the class is one that is retried (the others never
    /// wait, so their answers' headers are not read for it).
    wait: Option<Duration>,
    /// The `x-ratelimit-*` headers, as far as they are limits.
    announced: Announced,
}

impl Reading {
    /// Puts the key's fingerprint wherever the server's text quoted the key it was sent. A
    /// spooled body was redacted as it was written.
    fn redact(&mut self, client: &ApiClient) {
        let response = match &mut self.response {
            Some(ResponseBody::Text { text, .. }) => Some(text),
            Some(ResponseBody::Spooled(_)) | None => None,
        };
        for text in [
            response,
            self.error_message.as_mut(),
            self.x_request_id.as_mut(),
            self.error.message.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            client.redact(text);
        }
    }
}

/// Which attempt it was and when: the journal's facts that do not come from the answer.
#[derive(Clone, Debug)]
struct Sending {
    request: RequestId,
    job: JobId,
    /// 1-based attempt number.
    number: u32,
    /// Which key sent it (a label or `sk-…last4`, never the key).
    key_fingerprint: Option<String>,
    /// Unix ms when sending started.
    started_at: i64,
    /// Unix ms when the answer (or failure) arrived.
    finished_at: i64,
}

impl Reading {
    /// The journal's record of this attempt, with the fate [`decide`] chose.
    fn into_completion(self, sending: Sending, disposition: Disposition) -> Completion {
        let Sending {
            request,
            job,
            number,
            key_fingerprint,
            started_at,
            finished_at,
        } = sending;
        Completion {
            request,
            job,
            number,
            started_at,
            finished_at,
            outcome: self.outcome,
            http_status: self.http_status,
            class: self.class,
            error_code: self.error_code,
            error_message: self.error_message,
            x_request_id: self.x_request_id,
            key_fingerprint,
            response: self.response,
            usage: self.usage,
            disposition,
        }
    }
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Situation<'a> {
    /// The verdict.
    pub(crate) class: Class,
    /// HTTP status, when answered (for the stop message).
    pub(crate) status: Option<u16>,
    /// The error body (for the stop message).
    pub(crate) error: &'a ApiError,
    /// The wait the server asked for.
    pub(crate) server_wait: Option<Duration>,
    /// Attempts of this class the request has spent, this one included.
    pub(crate) spent: u32,
    /// Budgets and backoff.
    pub(crate) policy: &'a RetryPolicy,
    /// A uniform draw from `[0, 1)` for the backoff's jitter.
    pub(crate) jitter: f64,
    /// Unix ms when the attempt ended: retries are scheduled from it.
    pub(crate) finished_at: i64,
    /// Whether another key of the pool can still be used (after this attempt's key outcome).
    pub(crate) other_keys_usable: bool,
    /// Keys in the pool.
    pub(crate) keys: usize,
}

/// What follows one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The request's fate.
    pub(crate) disposition: Disposition,
    /// A 429's wait: the whole pool pauses, not just this request.
    pub(crate) pause: Option<Duration>,
    /// The job stops, with what to tell the user.
    pub(crate) stop: Option<String>,
}

/// Decides a request's fate from its attempt. Pure: the whole policy is in this match.
pub(crate) fn decide(s: &Situation<'_>) -> Decision {
    let settle = |disposition| Decision {
        disposition,
        pause: None,
        stop: None,
    };
    let retry =
        |pause_pool: bool| match s
            .policy
            .retry_delay(s.class, s.spent, s.server_wait, s.jitter)
        {
            Some(delay) => Decision {
                disposition: Disposition::RetryAt(
                    s.finished_at
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                ),
                pause: pause_pool.then_some(delay),
                stop: None,
            },
            None => settle(Disposition::Failed),
        };
    let stop = |reason: String| Decision {
        disposition: Disposition::Requeue,
        pause: None,
        stop: Some(reason),
    };
    match s.class {
        Class::Succeeded => settle(Disposition::Succeeded),
        Class::RequestFailed => settle(Disposition::Failed),
        Class::Transient | Class::AuthTransient | Class::InvalidResponse => retry(false),
        Class::RateLimited => retry(true),
        // A rejected key (or a key refused with 403) is the key's problem while another key is
        // usable: the request goes back at once and the pool picks another key.
        Class::JobStop(StopCause::KeyRejected | StopCause::Forbidden) if s.other_keys_usable => {
            settle(Disposition::Requeue)
        }
        Class::JobStop(StopCause::KeyRejected) => stop(no_keys_reason(s.keys)),
        Class::JobStop(cause @ (StopCause::Forbidden | StopCause::Quota)) => {
            stop(job_stop_reason(cause, s.status, s.error))
        }
    }
}

/// Which limit a 429 says it hit: tokens when its type or message says so (OpenAI:
/// `"type": "tokens"`, "… on tokens per min (TPM) …"), else requests.
fn refused_limit(error: &ApiError) -> LimitKind {
    let on_tokens = error.kind.as_deref() == Some("tokens")
        || error
            .message
            .as_deref()
            .is_some_and(|m| m.contains("tokens per min") || m.contains("(TPM)"));
    if on_tokens {
        LimitKind::Tokens
    } else {
        LimitKind::Requests
    }
}

/// What to tell the user when every key was rejected.
pub(crate) fn no_keys_reason(keys: usize) -> String {
    if keys <= 1 {
        "the API key was rejected (invalid_api_key): set a valid key (OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --auth azure, or a keys file), then run `runner resume`".to_owned()
    } else {
        format!(
            "all {keys} keys were rejected (invalid_api_key): fix the keys file, then run `runner resume`"
        )
    }
}

/// What to tell the user when the server's answer stops the whole job.
fn job_stop_reason(cause: StopCause, status: Option<u16>, error: &ApiError) -> String {
    let code = error.code.as_deref().unwrap_or("no code");
    let message = error.message.as_deref().unwrap_or("no message");
    let status = status.map_or_else(|| "-".to_owned(), |s| s.to_string());
    format!(
        "{}, then run `runner resume` (HTTP {status} {code}: {message})",
        cause.advice()
    )
}

#[cfg(test)]
mod tests;
