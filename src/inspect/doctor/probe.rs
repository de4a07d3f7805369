//! The probe: one `GET /v1/models`, classified with the job's own taxonomy and explained in
//! plain words (missing scope vs invalid key vs project mismatch vs quota vs network).

use super::{Check, Verdict};
use crate::domain::{Class, StopCause};
use crate::engine::config::ApiEnv;
use crate::http::classify::{ApiError, Observation, Payload, TransportFailure, classify};
use crate::http::client::{ApiClient, ApiKey, ClientSettings, Sent};
use crate::http::hints;
use crate::inspect::timeline::missing_scopes;

/// One `GET /v1/models` with `key`, classified and explained.
pub(super) async fn probe(settings: &ClientSettings, key: Option<&ApiKey>, env: &ApiEnv) -> Check {
    let who = key.map_or_else(
        || "without a key".to_owned(),
        |k| format!("with {}", k.fingerprint()),
    );
    let client = match ApiClient::new(settings, key) {
        Ok(client) => client,
        Err(e) => {
            return Check::new(
                "probe",
                Verdict::Fail,
                format!("cannot build the HTTP client {who}: {e}"),
            );
        }
    };
    let answer = match client.get("/v1/models").await {
        Sent::Answer(answer) => answer,
        Sent::TooLarge {
            status, at_least, ..
        } => {
            return Check::new(
                "probe",
                Verdict::Fail,
                format!("GET /v1/models {who} → {status} with a body of at least {at_least} bytes"),
            )
            .advise("the base URL does not look like an OpenAI-compatible API: check it");
        }
        Sent::Failed { failure, message } => {
            let (what, advice) = match failure {
                TransportFailure::Connect => (
                    "could not connect",
                    "the network or the server is down: check the base URL check above",
                ),
                TransportFailure::Timeout => (
                    "no answer in time",
                    "the server or the network is slow or stuck: try again, or raise --timeout",
                ),
                TransportFailure::Other | TransportFailure::Cut => (
                    "the connection broke",
                    "a proxy or TLS problem is likely: check HTTPS_PROXY and the URL's scheme",
                ),
            };
            return Check::new(
                "probe",
                Verdict::Fail,
                format!("GET /v1/models {who}: {what}: {message}"),
            )
            .advise(advice);
        }
    };
    // `get` reads the whole body into memory.
    let body = answer.body.in_memory().unwrap_or_default();
    let success = (200..300).contains(&answer.status);
    let in_success = success.then(|| ApiError::in_success(body)).flatten();
    let payload = match (
        &in_success,
        serde_json::from_slice::<serde_json::Value>(body),
    ) {
        (Some(_), _) => Payload::Error,
        (None, Ok(_)) => Payload::Whole,
        (None, Err(_)) => Payload::Invalid,
    };
    let error = in_success.unwrap_or_else(|| ApiError::parse(body));
    let should_retry = hints::should_retry(&answer.headers);
    let class = classify(Observation::Answer {
        status: answer.status,
        error: &error,
        payload,
        should_retry,
    });
    let request_id = hints::request_id(&answer.headers)
        .map_or_else(String::new, |id| format!(", x-request-id {id}"));
    let code = error
        .code
        .as_deref()
        .or(error.kind.as_deref())
        .unwrap_or("no code");
    let finding = format!(
        "GET /v1/models {who} → {} {code} ({}){request_id}",
        answer.status,
        class.journaled()
    );
    let message = error.message.clone().unwrap_or_default();
    explain(
        Check::new("probe", Verdict::Ok, finding),
        class,
        answer.status,
        &error,
        &message,
        env,
        body,
    )
}

/// What a probe's answer means, in plain words.
fn explain(
    check: Check,
    class: Class,
    status: u16,
    error: &ApiError,
    message: &str,
    env: &ApiEnv,
    body: &[u8],
) -> Check {
    let lower = message.to_ascii_lowercase();
    let code = error.code.as_deref().unwrap_or("");
    let mentions = |word: &str| lower.contains(word) || code.contains(word);
    let with = |verdict: Verdict, check: Check| Check { verdict, ..check };
    match class {
        Class::Succeeded => {
            let models = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("data").and_then(|d| d.as_array()).map(Vec::len));
            let listed = models.map_or_else(String::new, |n| format!(" ({n} models listed)"));
            with(Verdict::Ok, check).advise(format!("the key works and the server answers{listed}"))
        }
        Class::AuthTransient => {
            let scopes = missing_scopes(message).join(", ");
            let scopes = if scopes.is_empty() { "none named".to_owned() } else { scopes };
            with(Verdict::Warn, check)
                .advise(format!("missing scope (scopes: {scopes}): the key is valid but was refused this permission"))
                .advise("a restricted key needs the scope added on the API keys page (listing models needs model read; jobs need model.request)")
                .advise("a key with All permissions getting this is the intermittent 401 of April 2026, on the platform's side: a job rides it out (requeued, never failed fast); check status.openai.com before a big job")
        }
        Class::JobStop(StopCause::KeyRejected) if mentions("project") || mentions("organization") => {
            let set = match (&env.project, &env.organization) {
                (Some(_), _) => "OPENAI_PROJECT_ID",
                (None, Some(_)) => "OPENAI_ORG_ID",
                (None, None) => "the project or organization header",
            };
            with(Verdict::Stop, check)
                .advise(format!("project mismatch: the key does not belong to what {set} names: \"{message}\""))
                .advise(format!("unset {set}, or use a key created in that project"))
        }
        Class::JobStop(StopCause::KeyRejected) => {
            let check = with(Verdict::Stop, check)
                .advise(format!("invalid key: \"{message}\""))
                .advise("the key is wrong, revoked or deleted: retrying cannot help; create a new key and set OPENAI_API_KEY (or fix the keys file)");
            if env.project.is_some() || env.organization.is_some() {
                check.advise("OPENAI_PROJECT_ID / OPENAI_ORG_ID are set: a key of another project is refused too; try once without them")
            } else {
                check
            }
        }
        Class::JobStop(StopCause::Quota) => with(Verdict::Stop, check)
            .advise("out of quota: billing, not load: add credit or raise the project's budget; a job would stop and keep its requests pending"),
        Class::JobStop(StopCause::Forbidden) => with(Verdict::Stop, check)
            .advise(format!("forbidden ({status}): \"{message}\""))
            .advise("the project may not use this API from here (region, model access, IP allow-list): fix the project's settings"),
        Class::RateLimited => with(Verdict::Warn, check)
            .advise("rate-limited on a single request: something else is using this project's limits now; a job would wait as told, slowly"),
        Class::Transient => with(Verdict::Warn, check)
            .advise(format!("the server is failing now ({status}): a job would retry with backoff; check the provider's status page")),
        Class::RequestFailed if status == 404 || status == 405 => with(Verdict::Warn, check)
            .advise("this server has no GET /v1/models (some OpenAI-compatible servers lack it): the key could not be checked this way"),
        Class::RequestFailed => with(Verdict::Warn, check)
            .advise(format!("unexpected answer {status}: \"{message}\"")),
        Class::InvalidResponse => with(Verdict::Warn, check)
            .advise(format!("the server answered {status} with a body that is not JSON: check that the base URL points at the API (a proxy or a web page answers like this)")),
    }
}
