use rstest::rstest;
use serde_json::Value;

use super::*;
use crate::http::classify::TransportFailure;
use crate::http::client::{Answer, Sent, Streamed};
use crate::http::sse::{Assembled, StreamEnd};

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
#[case::transient_budget_spent(Class::Transient, 10, None, false, Disposition::Failed, None, false)]
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
            body: body.as_bytes().to_vec().into(),
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
fn a_success_is_journaled_as_sent_with_its_usage_and_a_body_not_utf8_as_far_as_it_reads() {
    let body = r#"{"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
    let reading = answer(200, body, None);
    assert_eq!(reading.class, Class::Succeeded);
    assert_eq!(
        reading.response.as_ref().and_then(ResponseBody::as_text),
        Some(body)
    );
    assert_eq!(reading.usage.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(reading.usage.total_tokens, Some(4));

    let mut bytes = br#"{"model":"m","note":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#""}"#);
    let reading = read(
        Sent::Answer(Answer {
            status: 200,
            headers: reqwest::header::HeaderMap::new(),
            body: bytes.clone().into(),
            stream: None,
        }),
        SystemTime::now(),
        Duration::from_secs(120),
    );
    let lossy = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(
        reading.response.as_ref().and_then(ResponseBody::as_text),
        Some(lossy.as_str())
    );
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
    let journaled: Value = serde_json::from_str(
        reading
            .response
            .as_ref()
            .and_then(ResponseBody::as_text)
            .unwrap_or("null"),
    )
    .expect("json");
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
            .as_ref()
            .and_then(ResponseBody::as_text)
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
