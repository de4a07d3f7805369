//! The axum router and the per-request decision.
//!
//! Precedence for the POST endpoints: invalid key → forbidden key → quota exhausted → body not JSON →
//! `mock_status` → active spike → random draw → success; then the rate limits, whose 429s
//! replace any of these (a request they refuse is not processed), then the body's own
//! directives (`mock_headers`, `mock_body_bytes`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::answer::{Answer, Body, StreamEnding, request_id};
use super::batch::{self, BatchApi, BatchHost};
use super::echo::{self, Endpoint};
use super::faults::{self, Fault};
use super::limit::{Admission, DEFAULT_OUTPUT, Limits, Verdict};
use super::stats::Counters;
use super::{MockConfig, MockStats, body_key, latency, stream};
use crate::domain::tokens;

/// Models listed by `GET /v1/models`.
const MODELS: [&str; 4] = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
];

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct Shared {
    config: MockConfig,
    /// Spikes are measured from here.
    started: Instant,
    /// Held only for a few map operations, never across an `.await`.
    counters: Mutex<Counters>,
    /// Turns `true` on shutdown; hangs and latency sleeps race it.
    stopping: watch::Receiver<bool>,
    /// The server-side rate limits, when configured. Held only to check and take, never
    /// across an `.await` or while counting tokens.
    limits: Option<Mutex<Limits>>,
    /// Numbers the latency draws of answers without a body to key them by.
    draws: AtomicU64,
    /// Numbers the answers carrying absurd rate-limit headers, to vary them.
    absurd_answers: AtomicU64,
    /// Files and batches of the hosted Batch API.
    batch: BatchApi,
    /// The slots requests are served in ([`MockConfig::slots`]).
    slots: Option<tokio::sync::Semaphore>,
}

impl Shared {
    pub(crate) fn new(
        config: MockConfig,
        started: Instant,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            batch: BatchApi::new(&config),
            limits: Limits::new(&config, started).map(Mutex::new),
            slots: config.slots.map(tokio::sync::Semaphore::new),
            config,
            started,
            counters: Mutex::new(Counters::default()),
            stopping,
            draws: AtomicU64::new(0),
            absurd_answers: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> MockStats {
        let mut stats = self.counters().snapshot();
        stats.batch = self.batch.counts();
        stats
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters for a mock, so keep serving rather than propagate the poison.
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latency of an answer that waits as `wait` says.
    fn latency(&self, wait: Wait) -> Duration {
        match wait {
            Wait::For(duration) => duration,
            Wait::Draw => {
                // The top bit keeps these numbers apart from those of `latency::number`.
                let draw = self.draws.fetch_add(1, Ordering::Relaxed) | 1 << 63;
                latency::draw(&self.config, draw, self.started.elapsed())
            }
        }
    }

    /// Sleeps `duration`, or less if the server is stopping.
    async fn pause(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        let mut stopping = self.stopping.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            // An error means the handle is gone: stop waiting too.
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
    }

    /// The fault of the first spike whose window holds the present moment.
    fn active_spike(&self) -> Option<Fault> {
        let elapsed = self.started.elapsed();
        self.config
            .spikes
            .iter()
            .find(|spike| spike.contains(elapsed))
            .map(|spike| spike.fault)
    }

    /// The configured invalid key this request presents, if any.
    fn invalid_key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        presented_key(headers).filter(|key| self.config.invalid_keys.iter().any(|bad| bad == key))
    }
}

/// The router for all mock routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model).delete(delete_model))
        .route("/mock/stats", get(stats))
        .merge(batch::router(Arc::clone(&shared) as Arc<dyn BatchHost>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            gatekeeper,
        ))
        .with_state(shared)
}

/// Before any route: counts the request's route and extras (see [`MockStats::extras`]), and,
/// with [`MockConfig::require_api_key`], answers 401 as Azure OpenAI does to a request without an
/// `api-key` header or without an `api-version` query parameter.
async fn gatekeeper(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/mock/stats" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let mut extras: Vec<String> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-") || name.as_str() == "openai-beta")
        .filter_map(|(name, value)| Some(format!("{name}: {}", value.to_str().ok()?)))
        .collect();
    let query = request.uri().query().unwrap_or("");
    let api_version = query
        .split('&')
        .find(|pair| pair.starts_with("api-version="))
        .map(str::to_owned);
    extras.extend(api_version.clone());
    let has_key = headers.contains_key("api-key");
    shared
        .counters()
        .note(format!("{} {path}", request.method()), extras);
    if shared.config.require_api_key && !(has_key && api_version.is_some()) {
        let answer = faults::azure_access_denied(has_key);
        return send(&shared, Instant::now(), None, Plan::now(answer), None).await;
    }
    // The Files and Batches calls refuse an invalid key as the requests do.
    let batch_call = path.starts_with("/v1/files") || path.starts_with("/v1/batches");
    if let Some(bad) = shared.invalid_key(headers).filter(|_| batch_call) {
        let answer = faults::invalid_api_key(bad);
        return send(&shared, Instant::now(), None, Plan::now(answer), None).await;
    }
    next.run(request).await
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer_post(shared, Endpoint::Chat, headers, body).await
}

async fn responses(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer_post(shared, Endpoint::Responses, headers, body).await
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer_post(shared, Endpoint::Embeddings, headers, body).await
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer_post(shared, Endpoint::Completions, headers, body).await
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let answer = match shared.invalid_key(&headers) {
        Some(key) => faults::invalid_api_key(key),
        None => {
            let data: Vec<Value> = MODELS.iter().map(|id| model_entry(id)).collect();
            Answer::json(
                StatusCode::OK,
                json!({"object": "list", "data": data}).to_string(),
            )
        }
    };
    send(
        &shared,
        started,
        None,
        Plan::now(answer),
        presented_key(&headers),
    )
    .await
}

/// `GET /v1/models/{id}`: the model, or 404 `model_not_found` for one it does not list.
async fn model(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let answer = if MODELS.contains(&id.as_str()) {
        Answer::json(StatusCode::OK, model_entry(&id).to_string())
    } else {
        faults::model_not_found(&id)
    };
    send(&shared, Instant::now(), None, Plan::now(answer), None).await
}

/// `DELETE /v1/models/{id}` (deleting a fine-tuned model): always "deleted", nothing changes.
async fn delete_model(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let answer = Answer::json(
        StatusCode::OK,
        json!({"id": id, "object": "model", "deleted": true}).to_string(),
    );
    send(&shared, Instant::now(), None, Plan::now(answer), None).await
}

/// One entry of the `GET /v1/models` list.
fn model_entry(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_715_367_049, "owned_by": "system"})
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.stats()).into_response()
}

async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let answer = faults::invalid_url(method.as_str(), uri.path());
    send(&shared, Instant::now(), None, Plan::now(answer), None).await
}

async fn method_not_allowed(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
) -> Response {
    let answer = faults::invalid_method(method.as_str(), uri.path());
    send(&shared, Instant::now(), None, Plan::now(answer), None).await
}

/// What to answer, and how long to wait first.
struct Plan {
    answer: Answer,
    /// Whether to hang ([`MockConfig::hang`]) after the latency.
    hang: bool,
    /// The latency before the answer.
    wait: Wait,
}

/// How long an answer waits before it is sent (a hang comes on top).
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// A latency drawn when the answer is sent, numbered by arrival: for answers without a
    /// body to key the draw by.
    Draw,
    /// This long: a latency drawn for the request's body and attempt (reproducible whatever
    /// the arrival order), or none for a rate-limit refusal, which OpenAI answers at once.
    For(Duration),
}

impl Plan {
    fn now(answer: Answer) -> Self {
        Self {
            answer,
            hang: false,
            wait: Wait::Draw,
        }
    }
}

async fn answer_post(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let started = Instant::now();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let key = body.as_ref().map(body_key);
    let (attempt, quota_exhausted) = {
        let mut counters = shared.counters();
        let attempt = key.as_deref().map_or(0, |key| counters.arrive(key));
        (attempt, counters.quota_exhausted(shared.config.quota_after))
    };
    let plan = decide(
        &shared,
        endpoint,
        &headers,
        body.as_ref(),
        key.as_deref(),
        attempt,
        quota_exhausted,
    );
    let mut plan = admit(&shared, plan, endpoint, body.as_ref());
    if let (Wait::Draw, Some(key)) = (plan.wait, key.as_deref()) {
        let draw = latency::number(key, attempt);
        plan.wait = Wait::For(latency::draw(
            &shared.config,
            draw,
            shared.started.elapsed(),
        ));
    }
    if let Some(body) = body.as_ref() {
        plan.answer = plan.answer.directed(body);
    }
    let presented = presented_key(&headers).map(str::to_owned);
    send(&shared, started, key.as_deref(), plan, presented.as_deref()).await
}

/// The answer for one POST request, in precedence order.
fn decide(
    shared: &Shared,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Option<&Value>,
    key: Option<&str>,
    attempt: u64,
    quota_exhausted: bool,
) -> Plan {
    let config = &shared.config;
    if let Some(bad) = shared.invalid_key(headers) {
        return Plan::now(faults::invalid_api_key(bad));
    }
    if presented_key(headers).is_some_and(|key| config.forbidden_keys.iter().any(|k| k == key)) {
        return Plan::now(faults::forbidden(echo::model_of(
            body.unwrap_or(&Value::Null),
        )));
    }
    if quota_exhausted {
        return Plan::now(faults::insufficient_quota());
    }
    let (Some(body), Some(key)) = (body, key) else {
        return Plan::now(faults::invalid_json());
    };
    if let Some(presented) = presented_key(headers)
        && faults::flaps(config, presented, key, attempt)
    {
        return Plan::now(faults::missing_scope());
    }
    let model = echo::model_of(body);
    if let Some(raw) = body.get("mock_status")
        && let Some(mut answer) = faults::forced(raw, model)
    {
        if let Some(message) = body.get("mock_message").and_then(Value::as_str) {
            answer.replace_error_message(message);
        }
        return Plan::now(answer);
    }
    if let Some(first) = body.get("mock_rate_limited_first").and_then(Value::as_u64)
        && attempt < first
    {
        // Only the message's hint: a test adds the headers it means to test with `mock_headers`.
        return Plan::now(faults::rate_limited(
            model,
            Duration::from_millis(10),
            super::RetryAfterStyle::Message,
        ));
    }
    if config.unknown_models.iter().any(|m| m == model) {
        return Plan::now(faults::model_not_found(model));
    }
    let fault = shared
        .active_spike()
        .or_else(|| faults::draw(config, key, attempt));
    match fault {
        Some(fault) => Plan {
            answer: faults::answer_for(fault, model, config),
            hang: fault == Fault::Hang,
            wait: Wait::Draw,
        },
        None => Plan::now(success(endpoint, body, key, attempt, config)),
    }
}

/// The success answer: JSON, or for a chat request with `"stream": true` an event stream (cut
/// half-way for the first [`MockConfig::cut_streams`] attempts of the body, then ended by an
/// error event for the next [`MockConfig::stream_errors`]).
fn success(
    endpoint: Endpoint,
    body: &Value,
    key: &str,
    attempt: u64,
    config: &MockConfig,
) -> Answer {
    let text = echo::success(endpoint, body, key, attempt);
    let events = (endpoint == Endpoint::Chat && stream::wants_stream(body))
        .then(|| serde_json::from_str::<Value>(&text).ok())
        .flatten()
        .and_then(|completion| stream::chat_chunks(body, &completion));
    let ending = if attempt < config.cut_streams {
        StreamEnding::Cut
    } else if attempt < config.cut_streams + config.stream_errors {
        StreamEnding::Error
    } else {
        StreamEnding::Whole
    };
    match events {
        Some(events) => Answer::stream(events, ending),
        None => Answer::json(StatusCode::OK, text),
    }
}

/// Puts the request through the server-side rate limits, when on: counts the verdict, and
/// turns a refusal into its 429 (answered at once, without the latency).
fn admit(shared: &Shared, plan: Plan, endpoint: Endpoint, body: Option<&Value>) -> Plan {
    let second = || shared.started.elapsed().as_secs();
    let Some(limits) = &shared.limits else {
        shared
            .counters()
            .admission(&Admission::Admitted, 0, second());
        return plan;
    };
    let lock = || limits.lock().unwrap_or_else(PoisonError::into_inner);
    // Counted outside the lock: tiktoken on a long prompt takes a while.
    let counts_tokens = lock().counts_tokens();
    let cost = match body {
        Some(body) if counts_tokens => tokens::cost(endpoint.path(), body, DEFAULT_OUTPUT).total(),
        Some(_) | None => 0,
    };
    let verdict = lock().admit(cost, Instant::now());
    shared
        .counters()
        .admission(&verdict.admission, cost, second());
    limited(
        plan,
        verdict,
        body.map_or(echo::DEFAULT_MODEL, echo::model_of),
    )
}

/// Applies the rate limits' verdict: its 429 when refused (without latency or hang), and its
/// headers on every answer.
fn limited(plan: Plan, verdict: Verdict, model: &str) -> Plan {
    let mut plan = match verdict.refusal(model) {
        Some(answer) => Plan {
            answer,
            hang: false,
            wait: Wait::For(Duration::ZERO),
        },
        None => plan,
    };
    for (name, value) in verdict.headers() {
        plan.answer = plan.answer.with_header(&name, value);
    }
    plan
}

/// Waits the latency (and the hang), counts the answer and sends it.
///
/// A success whose turn comes after the quota ran out meanwhile becomes `insufficient_quota`, so
/// `quota_after` is exact even under concurrency.
async fn send(
    shared: &Shared,
    started: Instant,
    key: Option<&str>,
    plan: Plan,
    presented: Option<&str>,
) -> Response {
    let latency = shared.latency(plan.wait);
    // A slot is held while the answer is "computed"; the semaphore is never closed.
    let slot = match &shared.slots {
        Some(slots) => slots.acquire().await.ok(),
        None => None,
    };
    shared.pause(latency).await;
    drop(slot);
    if plan.hang {
        shared.pause(shared.config.hang).await;
    }
    let mut answer = plan.answer;
    if !latency.is_zero() {
        // What was drawn, for tests and benchmarks that check the draws without a clock.
        answer = answer.with_header("x-mock-latency-us", latency.as_micros().to_string());
    }
    if shared.config.absurd_rate_headers {
        let number = shared.absurd_answers.fetch_add(1, Ordering::Relaxed);
        for (name, value) in faults::absurd_rate_headers(number) {
            answer = answer.with_header(name, value.to_owned());
        }
    }
    {
        let mut counters = shared.counters();
        if answer.is_success() && counters.quota_exhausted(shared.config.quota_after) {
            answer = faults::insufficient_quota();
        }
        let second = shared.started.elapsed().as_secs();
        counters.record(
            key,
            answer.status.as_u16(),
            answer.is_success(),
            second,
            presented,
        );
    }
    tracing::debug!(status = answer.status.as_u16(), "mock answer");
    answer.into_response(&request_id(), started.elapsed())
}

/// The key a request presents: `Authorization: Bearer <key>`, or Azure's `api-key` header.
///
/// A request without a key is served normally: the mock checks only keys it was told are bad.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| headers.get("api-key").and_then(|value| value.to_str().ok()))
}

impl BatchHost for Shared {
    fn batches(&self) -> &BatchApi {
        &self.batch
    }

    /// Decides as for a request sent alone (faults, `mock_status`, quota), counts it, and turns
    /// what cannot be a JSON body into one: a 200 whose body would be malformed becomes 500
    /// `server_error`, a stream becomes the whole answer.
    fn answer_line(&self, url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let endpoint = match url {
            "/v1/chat/completions" => Endpoint::Chat,
            "/v1/responses" => Endpoint::Responses,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/completions" => Endpoint::Completions,
            other => return line_json(faults::invalid_url("POST", other)),
        };
        let body_text = body_key(body);
        let (attempt, quota_exhausted) = {
            let mut counters = self.counters();
            let attempt = counters.arrive(&body_text);
            (attempt, counters.quota_exhausted(self.config.quota_after))
        };
        let mut headers = HeaderMap::new();
        if let Some(Ok(value)) =
            key.map(|key| axum::http::HeaderValue::from_str(&format!("Bearer {key}")))
        {
            headers.insert(AUTHORIZATION, value);
        }
        let plan = decide(
            self,
            endpoint,
            &headers,
            Some(body),
            Some(&body_text),
            attempt,
            quota_exhausted,
        );
        let answer = match plan.answer.body {
            Body::Stream { .. } => Answer::json(
                StatusCode::OK,
                echo::success(endpoint, body, &body_text, attempt),
            ),
            Body::Text { .. } if plan.answer.status == StatusCode::OK => faults::server_error(),
            Body::Json(_) | Body::Padded { .. } | Body::Text { .. } => plan.answer,
        };
        let second = self.started.elapsed().as_secs();
        self.counters().record(
            Some(&body_text),
            answer.status.as_u16(),
            answer.is_success(),
            second,
            key,
        );
        line_json(answer)
    }

    fn missing_scope(&self, scope: &str) -> (u16, String) {
        let answer = faults::missing_scope_for(scope);
        let status = answer.status.as_u16();
        match answer.body {
            Body::Json(text) | Body::Padded { json: text, .. } | Body::Text { text, .. } => {
                (status, text)
            }
            Body::Stream { .. } => (status, String::new()),
        }
    }
}

/// An answer as a batch output line's `status_code` and `body` (text that is not JSON becomes a
/// JSON string).
fn line_json(answer: Answer) -> (u16, Value) {
    let status = answer.status.as_u16();
    let body = match answer.body {
        Body::Json(text) | Body::Padded { json: text, .. } | Body::Text { text, .. } => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        Body::Stream { events, .. } => Value::String(events.join("\n")),
    };
    (status, body)
}
