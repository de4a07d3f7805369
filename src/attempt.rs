//! One attempt: send it with its key's client, read and classify what came back, tell the
//! breaker, the key pool and the pacer, decide the request's fate, and journal it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::http::classify::{ApiError, Class, Observation, TransportFailure, classify};
use crate::http::client::Sent;
use crate::keys::{KeyLease, KeyOutcome};
use crate::request::{AttemptOutcome, Claimed, Completion, Disposition, Usage};
use crate::response::parse_success;
use crate::retry::{Next, server_wait};
use crate::store::{StoreError, db};
use crate::worker::{Context, lock, now_ms};

/// Sends one attempt, classifies it, journals it and decides the request's fate.
pub(crate) async fn attempt(
    ctx: Arc<Context>,
    request: Claimed,
    lease: KeyLease,
    probe: bool,
) -> Result<(), StoreError> {
    let number = request.attempts + 1;
    let started_at = now_ms();
    let clock = Instant::now();
    let sent = lease.client.post(&request.url, request.body).await;
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
        key_fingerprint: lease.client.key_fingerprint().map(str::to_owned),
        response: None,
        usage: Usage::default(),
        disposition: Disposition::Failed,
    };
    let reading = read_answer(sent, &mut completion);
    let Reading {
        class,
        wait,
        ref error,
        ..
    } = reading;
    completion.class = class;
    let now = Instant::now();

    // The server's pace, from its rate-limit headers and 429s.
    ctx.pacer
        .observe(reading.limit_per_minute, class == Class::RateLimited, now);
    // The service's health: breaker and key pool.
    let unwell = matches!(class, Class::Transient | Class::AuthTransient);
    let transition = lock(&ctx.breaker).record(unwell, probe, now);
    let rejected_key = class == Class::JobStop && completion.http_status == Some(401);
    let key_outcome = match class {
        Class::AuthTransient => KeyOutcome::AuthTransient,
        Class::JobStop if rejected_key => KeyOutcome::Rejected,
        Class::Succeeded
        | Class::Transient
        | Class::RateLimited
        | Class::RequestFailed
        | Class::JobStop => KeyOutcome::Fine,
    };
    let key_event = ctx.keys.record(&lease, key_outcome, now);

    let spent = request.spent.of(class) + 1;
    let mut next = ctx.policy.next(class, spent, wait, fastrand::f64());
    let mut stop = None;
    if next == Next::StopJob {
        // A rejected key is the key's problem while another key is usable.
        if rejected_key && ctx.keys.any_usable() {
            next = Next::RetryAfter(Duration::ZERO);
        } else if rejected_key {
            stop = Some(no_keys_reason(ctx.keys.len()));
        } else {
            stop = Some(job_stop_reason(completion.http_status.unwrap_or(0), error));
        }
    }
    if class == Class::RateLimited
        && let Next::RetryAfter(delay) = next
    {
        ctx.pause_for(delay);
    }
    completion.disposition = match next {
        Next::Succeeded => Disposition::Succeeded,
        Next::Failed => Disposition::Failed,
        Next::RetryAfter(delay) if stop.is_none() && !rejected_key => {
            Disposition::RetryAt(finished_at + delay.as_millis() as i64)
        }
        Next::RetryAfter(_) | Next::StopJob => Disposition::Requeue,
    };
    let streak = match class {
        Class::RequestFailed => ctx.note_permanent(
            request.id,
            Some((completion.http_status, completion.error_code.clone())),
        ),
        Class::Succeeded => ctx.note_permanent(request.id, None),
        // Retried classes and stops neither extend nor break a streak of configuration errors.
        Class::Transient | Class::AuthTransient | Class::RateLimited | Class::JobStop => None,
    };
    tracing::debug!(
        key = %request.key,
        attempt = number,
        status = ?completion.http_status,
        class = %class,
        "attempt finished"
    );
    let disposition = completion.disposition;
    let status = completion.http_status;
    let code = completion.error_code.clone();
    ctx.store.record(completion).await?;
    match disposition {
        Disposition::Succeeded => ctx.tally.succeeded(),
        Disposition::Failed => ctx.tally.failed(),
        Disposition::RetryAt(_) | Disposition::Requeue => ctx.tally.retry_scheduled(),
    }

    if let Some(transition) = transition {
        ctx.journal_breaker(&transition).await?;
    }
    if let Some(event) = key_event {
        ctx.journal(event.kind(), event.detail()).await?;
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

/// What an attempt's result says, beyond what the journal keeps.
struct Reading {
    /// The taxonomy's verdict.
    class: Class,
    /// The wait the server asked for.
    wait: Option<Duration>,
    /// The parsed error body.
    error: ApiError,
    /// `x-ratelimit-limit-requests`, when sent.
    limit_per_minute: Option<f64>,
}

/// Reads what came back into `completion`.
fn read_answer(sent: Sent, completion: &mut Completion) -> Reading {
    match sent {
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
            } else {
                completion.error_code.clone_from(&error.code);
                completion.error_message.clone_from(&error.message);
            }
            completion.usage = usage.unwrap_or_default();
            completion.response = Some(String::from_utf8_lossy(&answer.body).into_owned());
            let limit_per_minute = answer
                .header("x-ratelimit-limit-requests")
                .and_then(|v| v.trim().parse::<f64>().ok());
            Reading {
                class,
                wait,
                error,
                limit_per_minute,
            }
        }
        Sent::Failed { failure, message } => {
            completion.outcome = if failure.outcome_unknown() {
                AttemptOutcome::OutcomeUnknown
            } else {
                AttemptOutcome::NotSent
            };
            completion.error_code = Some(
                match failure {
                    TransportFailure::Connect => "connect_error",
                    TransportFailure::Timeout => "timeout",
                    TransportFailure::Other => "network_error",
                }
                .into(),
            );
            completion.error_message = Some(message);
            Reading {
                class: classify(Observation::Transport(failure)),
                wait: None,
                error: ApiError::default(),
                limit_per_minute: None,
            }
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
fn job_stop_reason(status: u16, error: &ApiError) -> String {
    let code = error.code.as_deref().unwrap_or("no code");
    let message = error.message.as_deref().unwrap_or("no message");
    let advice = match (status, error.code.as_deref()) {
        (401, _) => {
            "authentication failed: check OPENAI_API_KEY, OPENAI_PROJECT_ID and OPENAI_ORG_ID"
        }
        (429, _) => "the account is out of quota: check the plan and billing details",
        (403, _) => "access is forbidden: check the project's model access and region",
        _ => "the server refused the job",
    };
    format!("{advice}, then run `runner resume` (HTTP {status} {code}: {message})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_say_what_to_fix() {
        let quota = ApiError {
            code: Some("insufficient_quota".into()),
            kind: None,
            message: Some("You exceeded your current quota".into()),
        };
        let reason = job_stop_reason(429, &quota);
        assert!(
            reason.starts_with("the account is out of quota"),
            "{reason}"
        );
        assert!(reason.contains("runner resume"));
        assert!(no_keys_reason(1).contains("OPENAI_API_KEY"));
        assert!(no_keys_reason(3).contains("all 3 keys"));
    }
}
