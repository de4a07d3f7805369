//! One attempt, in three steps: **read** what came back into a `Reading` (pure), **decide** the
//! request's fate with `decide` (pure, a table of cases below), then **record**: tell the
//! breaker, the key pool and the pacer, journal the attempt with its request's new state, and
//! act on a job-level stop.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::Method;

use crate::domain::{
    AttemptOutcome, Claimed, Class, Completion, Disposition, JobId, RequestId, StopCause, Usage,
};
use crate::engine::context::Context;
use crate::engine::keys::{KeyLease, KeyOutcome};
use crate::engine::retry::RetryPolicy;
use serde_json::Value;

use crate::http::classify::{ApiError, Observation, Payload, TransportFailure, classify};
use crate::http::client::{Answer, Sent, Streamed};
use crate::http::hints;
use crate::http::response::parse_success;
use crate::http::sse::{Assembled, StreamEnd};
use crate::store::{StoreError, db};
use crate::util::clock::now_ms;
use crate::util::sync::lock;

/// Sends one attempt, reads it, decides the request's fate and records it.
pub(crate) async fn attempt(
    ctx: Arc<Context>,
    request: Claimed,
    lease: KeyLease,
    probe: bool,
) -> Result<(), StoreError> {
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
    let sent = lease
        .client
        .send(&method, &url, body, headers.as_deref())
        .await;
    let finished_at = started_at + clock.elapsed().as_millis() as i64;
    let reading = read(sent, SystemTime::now(), ctx.policy.max_server_wait);

    // The gates learn from every attempt: the server's pace, the service's health, the key's.
    let now = Instant::now();
    ctx.pacer.observe(
        reading.limit_per_minute,
        reading.class == Class::RateLimited,
        now,
    );
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
    record(&ctx, completion, decision.stop).await?;
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
    ctx.store.record(completion).await?;
    match disposition {
        Disposition::Succeeded => ctx.tally.succeeded(),
        Disposition::Failed => ctx.tally.failed(),
        Disposition::RetryAt(_) | Disposition::Requeue => ctx.tally.retry_scheduled(),
    }
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
#[derive(Clone, Debug)]
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
    /// The answer's body, when there is one.
    response: Option<String>,
    /// Usage, for successes.
    usage: Usage,
    /// The wait the server asked for.
    wait: Option<Duration>,
    /// `x-ratelimit-limit-requests`, when sent.
    limit_per_minute: Option<f64>,
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

/// Longest part of an unreadable 2xx body kept in the journal's `error_message`.
const INVALID_BODY_HEAD: usize = 200;

/// Reads what came back. `now` resolves a `retry-after` given as an HTTP date.
///
/// `max_wait` (`--max-wait`) caps the wait a server may ask for. Every header goes through
/// [`hints`], so no value a server sends can panic here.
pub(crate) fn read(sent: Sent, now: SystemTime, max_wait: Duration) -> Reading {
    match sent {
        Sent::Answer(answer) => read_answer(answer, now, max_wait),
        // Never retried: the server did the work (a 2xx may be billed), and the same request
        // would get the same answer. Only the error goes into the journal, never the body.
        Sent::TooLarge {
            status,
            headers,
            cap,
            at_least,
        } => Reading {
            outcome: AttemptOutcome::Answered,
            http_status: Some(status),
            class: Class::RequestFailed,
            error: ApiError::default(),
            error_code: Some(RESPONSE_TOO_LARGE.to_owned()),
            error_message: Some(format!(
                "the answer's body is at least {at_least} bytes, over the --max-response-bytes limit of {cap}: \
                 raise --max-response-bytes, then `runner retry-failed --class request_failed` sends it again"
            )),
            x_request_id: hints::request_id(&headers),
            response: None,
            usage: Usage::default(),
            wait: None,
            limit_per_minute: hints::limit_per_minute(&headers),
        },
        Sent::Failed { failure, message } => Reading {
            outcome: if failure.outcome_unknown() {
                AttemptOutcome::OutcomeUnknown
            } else {
                AttemptOutcome::NotSent
            },
            http_status: None,
            class: classify(Observation::Transport(failure)),
            error: ApiError::default(),
            error_code: Some(failure_code(failure).to_owned()),
            error_message: Some(message),
            x_request_id: None,
            response: None,
            usage: Usage::default(),
            wait: None,
            limit_per_minute: None,
        },
    }
}

/// The journal's `error_code` of a transport failure.
fn failure_code(failure: TransportFailure) -> &'static str {
    match failure {
        TransportFailure::Connect => "connect_error",
        TransportFailure::Timeout => "timeout",
        TransportFailure::Other => "network_error",
        TransportFailure::Cut => "stream_cut",
    }
}

/// What a body turned out to be: its class of payload, the error it carries, the text to
/// journal as the response, and why it cannot be read (for an invalid 2xx).
struct Content {
    payload: Payload,
    error: ApiError,
    response: Option<String>,
    unreadable: Option<(&'static str, String)>,
}

/// The journal's `error_code` of an answer over `--max-response-bytes`.
pub const RESPONSE_TOO_LARGE: &str = "response_too_large";

fn read_answer(answer: Answer, now: SystemTime, max_wait: Duration) -> Reading {
    let Answer {
        status,
        headers,
        body,
        stream,
    } = answer;
    let x_request_id = hints::request_id(&headers);
    let limit_per_minute = hints::limit_per_minute(&headers);
    let should_retry = hints::should_retry(&headers);
    let success = (200..300).contains(&status);
    let content = match stream {
        // A chat or completions stream that says `[DONE]` before any choice got its
        // `finish_reason` was stopped early (llama.cpp's Python server does this to a stream
        // when another request arrives): as unfinished as a cut one.
        Some(Streamed::Assembled(assembled)) if is_unfinished(&assembled) => {
            return cut_reading(
                status,
                assembled.body,
                "the event stream said [DONE] before any choice had a finish_reason: the server stopped it early".to_owned(),
                x_request_id,
                limit_per_minute,
            );
        }
        // A cut stream is answered but unfinished: like a timeout, the server may have done
        // the work, so it is retried with its outcome unknown; the partial answer is kept.
        Some(Streamed::Cut { partial, message }) => {
            return cut_reading(status, partial, message, x_request_id, limit_per_minute);
        }
        Some(Streamed::Unreadable { message }) => Content {
            payload: Payload::Invalid,
            error: ApiError::default(),
            response: Some(String::from_utf8_lossy(&body).into_owned()),
            unreadable: Some((
                "invalid_stream",
                format!("{message}; the stream began: {}", head(&body)),
            )),
        },
        Some(Streamed::Assembled(assembled)) => assembled_content(assembled),
        None if !success => Content {
            payload: Payload::Whole,
            error: ApiError::parse(&body),
            response: Some(String::from_utf8_lossy(&body).into_owned()),
            unreadable: None,
        },
        None => match ApiError::in_success(&body) {
            Some(error) => Content {
                payload: Payload::Error,
                error,
                response: Some(String::from_utf8_lossy(&body).into_owned()),
                unreadable: None,
            },
            None if parse_success(&body).is_some() => Content {
                payload: Payload::Whole,
                error: ApiError::default(),
                response: Some(String::from_utf8_lossy(&body).into_owned()),
                unreadable: None,
            },
            None => Content {
                payload: Payload::Invalid,
                error: ApiError::default(),
                response: Some(String::from_utf8_lossy(&body).into_owned()),
                unreadable: Some((
                    "invalid_json",
                    format!(
                        "the answer's body is not a JSON object; it began: {}",
                        head(&body)
                    ),
                )),
            },
        },
    };
    let class = classify(Observation::Answer {
        status,
        error: &content.error,
        payload: content.payload,
        should_retry,
    });
    let usage = match (success, content.payload, &content.response) {
        (true, Payload::Whole, Some(text)) => parse_success(text.as_bytes()).unwrap_or_default(),
        _ => Usage::default(),
    };
    let (error_code, error_message) = match content.unreadable {
        Some((code, message)) => (Some(code.to_owned()), Some(message)),
        None => (content.error.code.clone(), content.error.message.clone()),
    };
    Reading {
        outcome: AttemptOutcome::Answered,
        http_status: Some(status),
        class,
        wait: hints::server_wait(&headers, content.error.message.as_deref(), now, max_wait),
        error_code,
        error_message,
        x_request_id,
        response: content.response,
        usage,
        limit_per_minute,
        error: content.error,
    }
}

/// The reading of a stream that stopped before its end: answered, but its outcome is unknown
/// (the server may have finished and billed it), so it is retried like a timeout; the partial
/// answer is journaled.
fn cut_reading(
    status: u16,
    partial: Value,
    message: String,
    x_request_id: Option<String>,
    limit_per_minute: Option<f64>,
) -> Reading {
    let failure = TransportFailure::Cut;
    // The attempt row keeps what arrived (the request row's response is replaced by the next
    // attempt's): the text so far, as far as it can be read.
    let message = match crate::http::response::output_text(&partial) {
        Some(text) if !text.is_empty() => {
            format!("{message}; text so far: {}", head(text.as_bytes()))
        }
        Some(_) | None => message,
    };
    Reading {
        outcome: AttemptOutcome::OutcomeUnknown,
        http_status: Some(status),
        class: classify(Observation::Transport(failure)),
        error: ApiError::default(),
        error_code: Some(failure_code(failure).to_owned()),
        error_message: Some(message),
        x_request_id,
        response: (!partial.is_null()).then(|| partial.to_string()),
        usage: Usage::default(),
        wait: None,
        limit_per_minute,
    }
}

/// Whether a stream ended by `data: [DONE]` without any of its choices finishing: OpenAI's
/// last content chunk always carries a `finish_reason`.
fn is_unfinished(assembled: &Assembled) -> bool {
    let choices = assembled
        .body
        .get("choices")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    assembled.end == StreamEnd::Done
        && assembled.error.is_none()
        && !choices.is_empty()
        && choices
            .iter()
            .all(|choice| choice.get("finish_reason").is_none_or(Value::is_null))
}

/// A stream that reached its end: the assembled body, or the error it ended with (journaled
/// inside the body assembled so far, the shape of a 2xx body carrying an `error`).
fn assembled_content(assembled: Assembled) -> Content {
    let Assembled {
        body,
        end: _,
        error,
    } = assembled;
    match (error, body) {
        (Some(error), body) => {
            let parsed = ApiError::parse(error.to_string().as_bytes());
            let journaled = match (body, error.get("error")) {
                (Value::Object(mut object), Some(inner)) => {
                    object.insert("error".to_owned(), inner.clone());
                    Value::Object(object)
                }
                (_, _) => error,
            };
            Content {
                payload: Payload::Error,
                error: parsed,
                response: Some(journaled.to_string()),
                unreadable: None,
            }
        }
        (None, Value::Null) => Content {
            payload: Payload::Invalid,
            error: ApiError::default(),
            response: None,
            unreadable: Some((
                "invalid_stream",
                "the event stream ended without an answer in it".to_owned(),
            )),
        },
        (None, body) => Content {
            payload: Payload::Whole,
            error: ApiError::default(),
            response: Some(body.to_string()),
            unreadable: None,
        },
    }
}

/// The first bytes of a body, as text for a message.
fn head(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(INVALID_BODY_HEAD) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
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

/// What to tell the user when every key was rejected.
pub(crate) fn no_keys_reason(keys: usize) -> String {
    if keys <= 1 {
        "the API key was rejected (invalid_api_key): set a valid OPENAI_API_KEY, then run `runner resume`".to_owned()
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
mod tests {
    use rstest::rstest;

    use super::*;

    const FINISHED: i64 = 1_000_000;

    fn situation<'a>(
        class: Class,
        spent: u32,
        wait: Option<Duration>,
        others: bool,
        policy: &'a RetryPolicy,
        error: &'a ApiError,
    ) -> Situation<'a> {
        Situation {
            class,
            status: Some(429),
            error,
            server_wait: wait,
            spent,
            policy,
            jitter: 0.5,
            finished_at: FINISHED,
            other_keys_usable: others,
            keys: if others { 2 } else { 1 },
        }
    }

    /// Row by row: verdict, attempts spent on it, the server's wait, whether another key is
    /// usable → the request's fate, the pool's pause, and whether the job stops.
    #[rstest]
    #[case::success(Class::Succeeded, 1, None, false, Disposition::Succeeded, None, false)]
    #[case::bad_request(Class::RequestFailed, 1, None, false, Disposition::Failed, None, false)]
    #[case::transient_backs_off(Class::Transient, 1, None, false, Disposition::RetryAt(FINISHED + 250), None, false)]
    #[case::transient_budget_spent(
        Class::Transient,
        10,
        None,
        false,
        Disposition::Failed,
        None,
        false
    )]
    #[case::auth_flap_is_requeued(Class::AuthTransient, 3, None, false, Disposition::RetryAt(FINISHED + 1000), None, false)]
    #[case::auth_flap_budget_spent(
        Class::AuthTransient,
        50,
        None,
        false,
        Disposition::Failed,
        None,
        false
    )]
    #[case::rate_limited_pauses_the_pool(Class::RateLimited, 1, Some(Duration::from_secs(3)), false, Disposition::RetryAt(FINISHED + 3000), Some(Duration::from_secs(3)), false)]
    #[case::server_wait_is_capped(Class::RateLimited, 1, Some(Duration::from_secs(900)), false, Disposition::RetryAt(FINISHED + 120_000), Some(Duration::from_secs(120)), false)]
    #[case::rate_limit_budget_spent(
        Class::RateLimited,
        50,
        Some(Duration::from_secs(3)),
        false,
        Disposition::Failed,
        None,
        false
    )]
    #[case::rejected_key_with_others(
        Class::JobStop(StopCause::KeyRejected),
        1,
        None,
        true,
        Disposition::Requeue,
        None,
        false
    )]
    #[case::rejected_last_key(
        Class::JobStop(StopCause::KeyRejected),
        1,
        None,
        false,
        Disposition::Requeue,
        None,
        true
    )]
    #[case::quota_stops_even_with_other_keys(
        Class::JobStop(StopCause::Quota),
        1,
        None,
        true,
        Disposition::Requeue,
        None,
        true
    )]
    #[case::forbidden_key_with_others(
        Class::JobStop(StopCause::Forbidden),
        1,
        None,
        true,
        Disposition::Requeue,
        None,
        false
    )]
    #[case::invalid_response_is_sent_once_more(Class::InvalidResponse, 1, None, false, Disposition::RetryAt(FINISHED + 250), None, false)]
    #[case::invalid_response_twice_fails(
        Class::InvalidResponse,
        2,
        None,
        false,
        Disposition::Failed,
        None,
        false
    )]
    #[case::forbidden_stops(
        Class::JobStop(StopCause::Forbidden),
        1,
        None,
        false,
        Disposition::Requeue,
        None,
        true
    )]
    fn decides_by_the_table(
        #[case] class: Class,
        #[case] spent: u32,
        #[case] wait: Option<Duration>,
        #[case] others: bool,
        #[case] disposition: Disposition,
        #[case] pause: Option<Duration>,
        #[case] stops: bool,
    ) {
        let policy = RetryPolicy::default();
        let error = ApiError::default();
        let decision = decide(&situation(class, spent, wait, others, &policy, &error));
        assert_eq!(decision.disposition, disposition);
        assert_eq!(decision.pause, pause);
        assert_eq!(decision.stop.is_some(), stops, "{:?}", decision.stop);
    }

    #[test]
    fn stop_reasons_say_what_to_fix() {
        let quota = ApiError {
            code: Some("insufficient_quota".into()),
            kind: None,
            message: Some("You exceeded your current quota".into()),
        };
        let reason = job_stop_reason(StopCause::Quota, Some(429), &quota);
        assert!(
            reason.starts_with("the account is out of quota"),
            "{reason}"
        );
        assert!(reason.contains("runner resume"));
        assert!(reason.contains("HTTP 429 insufficient_quota"));
        assert!(no_keys_reason(1).contains("OPENAI_API_KEY"));
        assert!(no_keys_reason(3).contains("all 3 keys"));
    }

    fn answer(status: u16, body: &str, stream: Option<Streamed>) -> Reading {
        read(
            Sent::Answer(Answer {
                status,
                headers: reqwest::header::HeaderMap::new(),
                body: body.as_bytes().to_vec(),
                stream,
            }),
            SystemTime::now(),
            Duration::from_secs(120),
        )
    }

    #[test]
    fn a_success_status_carrying_an_error_reads_as_that_error() {
        let reading = answer(
            200,
            r#"{"error":{"message":"Missing scopes: model.request","type":"invalid_request_error","code":"missing_scope"}}"#,
            None,
        );
        assert_eq!(reading.class, Class::AuthTransient);
        assert_eq!(reading.error_code.as_deref(), Some("missing_scope"));
        assert_eq!(reading.usage, Usage::default());
    }

    #[test]
    fn an_unreadable_success_body_keeps_its_first_bytes() {
        let body = format!("<html>{}</html>", "x".repeat(1000));
        let reading = answer(200, &body, None);
        assert_eq!(reading.class, Class::InvalidResponse);
        assert_eq!(reading.error_code.as_deref(), Some("invalid_json"));
        let message = reading.error_message.unwrap_or_default();
        assert!(message.contains("<html>xxx"), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn a_stream_that_ends_with_an_error_event_reads_as_that_error() {
        let assembled = Assembled {
            body: serde_json::json!({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"par"}}]}),
            end: StreamEnd::Error,
            error: Some(
                serde_json::json!({"error":{"message":"The server had an error","type":"server_error","code":null}}),
            ),
        };
        let reading = answer(200, "", Some(Streamed::Assembled(assembled)));
        assert_eq!(reading.class, Class::Transient);
        assert_eq!(reading.outcome, AttemptOutcome::Answered);
        let journaled: Value =
            serde_json::from_str(reading.response.as_deref().unwrap_or("null")).expect("json");
        assert_eq!(journaled["error"]["type"], "server_error");
        assert_eq!(journaled["choices"][0]["message"]["content"], "par");
    }

    #[test]
    fn a_stream_done_before_any_choice_finished_is_unfinished() {
        let body = serde_json::json!({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":null}]});
        let assembled = Assembled {
            body,
            end: StreamEnd::Done,
            error: None,
        };
        let reading = answer(200, "", Some(Streamed::Assembled(assembled)));
        assert_eq!(reading.class, Class::Transient);
        assert_eq!(reading.outcome, AttemptOutcome::OutcomeUnknown);
        assert_eq!(reading.error_code.as_deref(), Some("stream_cut"));
        let finished = serde_json::json!({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]});
        let whole = Assembled {
            body: finished,
            end: StreamEnd::Done,
            error: None,
        };
        let reading = answer(200, "", Some(Streamed::Assembled(whole)));
        assert_eq!(reading.class, Class::Succeeded);
    }

    #[test]
    fn a_cut_stream_is_outcome_unknown_and_keeps_the_partial_answer() {
        let partial = serde_json::json!({"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"half an ans"}}]});
        let reading = answer(
            200,
            "data: {",
            Some(Streamed::Cut {
                partial,
                message: "cut".into(),
            }),
        );
        assert_eq!(reading.class, Class::Transient);
        assert_eq!(reading.outcome, AttemptOutcome::OutcomeUnknown);
        assert_eq!(reading.error_code.as_deref(), Some("stream_cut"));
        assert!(
            reading
                .error_message
                .as_deref()
                .is_some_and(|m| m.contains("text so far: \"half an ans\"")),
            "{:?}",
            reading.error_message
        );
        assert!(
            reading
                .response
                .is_some_and(|r| r.contains("chat.completion"))
        );
    }

    #[test]
    fn reads_transport_failures_without_a_verdict_from_the_server() {
        let reading = read(
            Sent::Failed {
                failure: TransportFailure::Timeout,
                message: "timed out".into(),
            },
            SystemTime::now(),
            Duration::from_secs(120),
        );
        assert_eq!(reading.outcome, AttemptOutcome::OutcomeUnknown);
        assert_eq!(reading.class, Class::Transient);
        assert_eq!(reading.error_code.as_deref(), Some("timeout"));
        assert_eq!(reading.http_status, None);
    }
}
