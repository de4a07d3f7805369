//! Results that came from a hosted batch rather than from a direct attempt: a line of the
//! batch's output or error file, or no line at all (the batch expired, was cancelled or failed
//! validation). Read with the same taxonomy as a direct answer ([`read`]) and decided by the
//! same [`decide`], so a batch-run request follows the rules of a sync one.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::{Reading, Sending, Situation, decide, read};
use crate::domain::{AttemptOutcome, Class, Completion, JobId, RequestId, Spent, Usage};
use crate::engine::retry::RetryPolicy;
use crate::http::batch::BatchResult;
use crate::http::classify::ApiError;
use crate::http::client::{Answer, Sent};
use crate::http::hints;

/// Reads one line of a batch's output or error file as if its answer had come directly.
pub(crate) fn read_result(result: BatchResult, max_wait: Duration) -> Reading {
    let BatchResult {
        status_code,
        body,
        request_id,
        error,
        custom_id: _,
    } = result;
    let request_id = request_id.and_then(|id| hints::clean_request_id(&id));
    match status_code {
        Some(status) => {
            let answer = Answer {
                status,
                headers: HeaderMap::new(),
                // A `Value` always serialises.
                body: serde_json::to_vec(&body).unwrap_or_default().into(),
                stream: None,
            };
            let mut reading = read(Sent::Answer(answer), SystemTime::now(), max_wait);
            reading.x_request_id = reading.x_request_id.or(request_id);
            reading
        }
        // A line-level error without an HTTP answer (e.g. `batch_expired`): the line was not
        // run, so it is sent again, within the transient budget.
        None => {
            let error = error.unwrap_or(crate::http::batch::LineError {
                code: None,
                message: None,
            });
            let code = error.code.unwrap_or_else(|| "batch_line_error".to_owned());
            let message = error
                .message
                .unwrap_or_else(|| "the batch gave this line no answer".to_owned());
            unanswered(AttemptOutcome::NotSent, Class::Transient, &code, message)
        }
    }
}

/// A line the batch gave no answer to, read as an attempt of `class` with this code and message.
pub(crate) fn unanswered(
    outcome: AttemptOutcome,
    class: Class,
    code: &str,
    message: String,
) -> Reading {
    Reading {
        outcome,
        http_status: None,
        class,
        error: ApiError::default(),
        error_code: Some(code.to_owned()),
        error_message: Some(message),
        x_request_id: None,
        response: None,
        usage: Usage::default(),
        wait: None,
        announced: crate::http::hints::Announced::default(),
    }
}

/// Which request a batch result is for, and when its batch ran.
#[derive(Clone, Debug)]
pub(crate) struct FromBatch {
    /// The request.
    pub(crate) request: RequestId,
    /// Its job.
    pub(crate) job: JobId,
    /// Attempts it had before this one.
    pub(crate) attempts: u32,
    /// What its retry budgets have spent.
    pub(crate) spent: Spent,
    /// The key that created the batch (a label or `sk-…last4`).
    pub(crate) key_fingerprint: Option<String>,
    /// Unix ms when the batch was created.
    pub(crate) started_at: i64,
    /// Unix ms when the batch was seen finished.
    pub(crate) finished_at: i64,
}

/// The request's fate after a batch result: the journal's record and, when the answer stops
/// the whole job (a rejected key, an exhausted quota), what to tell the user. One key, no
/// pool to pause: a 429 line is simply sent again in a later chunk.
pub(crate) fn judge(
    reading: Reading,
    from: FromBatch,
    policy: &RetryPolicy,
) -> (Completion, Option<String>) {
    let decision = decide(&Situation {
        class: reading.class,
        status: reading.http_status,
        error: &reading.error,
        server_wait: reading.wait,
        spent: from.spent.of(reading.class) + 1,
        policy,
        jitter: fastrand::f64(),
        finished_at: from.finished_at,
        other_keys_usable: false,
        keys: 1,
    });
    let sending = Sending {
        request: from.request,
        job: from.job,
        number: from.attempts + 1,
        key_fingerprint: from.key_fingerprint,
        started_at: from.started_at,
        finished_at: from.finished_at.max(from.started_at),
    };
    (
        reading.into_completion(sending, decision.disposition),
        decision.stop,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::Disposition;

    fn from() -> FromBatch {
        FromBatch {
            request: RequestId(7),
            job: JobId(1),
            attempts: 2,
            spent: Spent::default(),
            key_fingerprint: Some("sk-…abcd".to_owned()),
            started_at: 1_000,
            finished_at: 2_000,
        }
    }

    fn result(line: serde_json::Value) -> BatchResult {
        BatchResult::parse(&line.to_string(), 1).unwrap()
    }

    #[test]
    fn an_output_line_is_journaled_like_a_direct_success() {
        let line = json!({"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200,
            "request_id": "req_1", "body": {"id": "chatcmpl-1", "object": "chat.completion",
            "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3,
            "completion_tokens": 1, "total_tokens": 4}}}, "error": null});
        let reading = read_result(result(line), Duration::from_secs(60));
        let (completion, stop) = judge(reading, from(), &RetryPolicy::default());
        assert_eq!(completion.disposition, Disposition::Succeeded);
        assert_eq!(completion.number, 3);
        assert_eq!(completion.x_request_id.as_deref(), Some("req_1"));
        assert_eq!(completion.usage.total_tokens, Some(4));
        assert_eq!(completion.latency_ms(), 1_000);
        assert!(stop.is_none());
    }

    #[test]
    fn error_lines_follow_the_taxonomy() {
        let scope = json!({"custom_id": "a", "response": {"status_code": 401, "body": {"error": {
            "message": "You have insufficient permissions for this operation. Missing scopes: model.request.",
            "type": "invalid_request_error", "param": null, "code": "missing_scope"}}}});
        let (completion, _) = judge(
            read_result(result(scope), Duration::from_secs(60)),
            from(),
            &RetryPolicy::default(),
        );
        assert_eq!(completion.class, Class::AuthTransient);
        assert!(matches!(completion.disposition, Disposition::RetryAt(_)));

        let bad = json!({"custom_id": "a", "response": {"status_code": 400, "body": {"error": {
            "message": "bad", "type": "invalid_request_error", "param": null, "code": null}}}});
        let (completion, _) = judge(
            read_result(result(bad), Duration::from_secs(60)),
            from(),
            &RetryPolicy::default(),
        );
        assert_eq!(completion.disposition, Disposition::Failed);

        let key = json!({"custom_id": "a", "response": {"status_code": 401, "body": {"error": {
            "message": "Incorrect API key provided", "type": "invalid_request_error",
            "param": null, "code": "invalid_api_key"}}}});
        let (completion, stop) = judge(
            read_result(result(key), Duration::from_secs(60)),
            from(),
            &RetryPolicy::default(),
        );
        assert_eq!(completion.disposition, Disposition::Requeue);
        assert!(stop.is_some_and(|s| s.contains("rejected")));
    }

    #[test]
    fn an_expired_line_is_sent_again_until_its_budget_is_spent() {
        let expired = json!({"custom_id": "a", "response": null, "error": {"code": "batch_expired",
            "message": "This request could not be executed before the completion window expired."}});
        let (completion, _) = judge(
            read_result(result(expired.clone()), Duration::from_secs(60)),
            from(),
            &RetryPolicy::default(),
        );
        assert_eq!(completion.outcome, AttemptOutcome::NotSent);
        assert_eq!(completion.error_code.as_deref(), Some("batch_expired"));
        assert!(matches!(completion.disposition, Disposition::RetryAt(_)));
        let spent = FromBatch {
            spent: Spent {
                transient: 100,
                ..Spent::default()
            },
            ..from()
        };
        let (completion, _) = judge(
            read_result(result(expired), Duration::from_secs(60)),
            spent,
            &RetryPolicy::default(),
        );
        assert_eq!(completion.disposition, Disposition::Failed);
    }
}
