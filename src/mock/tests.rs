//! Real HTTP against the mock on 127.0.0.1:0.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

/// Upper bound for any single HTTP exchange in these tests.
const TIMEOUT: Duration = Duration::from_secs(2);

async fn start(config: MockConfig) -> MockServer {
    MockServer::start("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("mock binds")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("client")
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).expect("json body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .to_str()
            .expect("ascii header")
    }

    fn error_code(&self) -> Value {
        self.json()["error"]["code"].clone()
    }
}

async fn post_as(server: &MockServer, path: &str, key: &str, body: &Value) -> Reply {
    let response = client()
        .post(format!("{}{path}", server.base_url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    Reply {
        status,
        headers,
        text,
    }
}

async fn post(server: &MockServer, path: &str, body: &Value) -> Reply {
    post_as(server, path, "sk-test-key-000000000000", body).await
}

fn chat_body(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text},
    ]})
}

fn assert_request_id(reply: &Reply) {
    let id = reply.header("x-request-id");
    let hex = id.strip_prefix("req_").expect("req_ prefix");
    assert_eq!(hex.len(), 32, "{id}");
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    reply
        .header("openai-processing-ms")
        .parse::<u64>()
        .expect("processing ms");
}

#[tokio::test]
async fn chat_echoes_the_last_message_with_usage() {
    let server = start(MockConfig::default()).await;
    let first = post(
        &server,
        "/chat/completions",
        &chat_body("hello there world"),
    )
    .await;
    assert_eq!(first.status, 200);
    assert_request_id(&first);
    assert!(first.header("content-type").starts_with("application/json"));
    let body = first.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello there world"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(p.expect("p") + c.expect("c"))
    );
    // Same text, same usage; every answer has its own request id.
    let second = post(
        &server,
        "/chat/completions",
        &chat_body("hello there world"),
    )
    .await;
    assert_eq!(second.json()["usage"], first.json()["usage"]);
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"));
    server.shutdown().await;
}

#[tokio::test]
async fn responses_embeddings_and_completions_echo_their_input() {
    let server = start(MockConfig::default()).await;

    let text = post(
        &server,
        "/responses",
        &json!({"model": "gpt-4o", "input": "one two"}),
    )
    .await;
    assert_eq!(text.status, 200);
    assert_request_id(&text);
    let body = text.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(body["output"][0]["content"][0]["text"], "echo: one two");
    assert!(body["usage"]["input_tokens"].as_u64().is_some());
    assert!(body["usage"]["output_tokens"].as_u64().is_some());

    let items = json!({"model": "gpt-4o", "input": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "input_text", "text": "last item"}]},
    ]});
    let reply = post(&server, "/responses", &items).await;
    assert_eq!(
        reply.json()["output"][0]["content"][0]["text"],
        "echo: last item"
    );

    let embed = json!({"model": "text-embedding-3-small", "input": "some text"});
    let first = post(&server, "/embeddings", &embed).await;
    assert_eq!(first.status, 200);
    assert_request_id(&first);
    let body = first.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["index"], 0);
    let vector = body["data"][0]["embedding"]
        .as_array()
        .expect("vector")
        .clone();
    assert_eq!(vector.len(), 8);
    assert!(body["usage"]["prompt_tokens"].as_u64().is_some());
    let again = post(&server, "/embeddings", &embed).await;
    assert_eq!(again.json()["data"][0]["embedding"], Value::Array(vector));

    let prompt = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say this"});
    let reply = post(&server, "/completions", &prompt).await;
    assert_eq!(reply.status, 200);
    assert_request_id(&reply);
    let body = reply.json();
    assert_eq!(body["choices"][0]["text"], "echo: say this");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn models_unknown_paths_and_bad_json() {
    let server = start(MockConfig::default()).await;
    let models = client()
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .expect("models");
    assert_eq!(models.status(), 200);
    let list: Value = models.json().await.expect("json");
    assert!(list["data"].as_array().is_some_and(|data| !data.is_empty()));

    let missing = post(&server, "/no/such/thing", &json!({})).await;
    assert_eq!(missing.status, 404);
    assert_request_id(&missing);
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");

    let wrong_method = client()
        .get(format!("{}/chat/completions", server.base_url()))
        .send()
        .await
        .expect("get");
    assert_eq!(wrong_method.status(), 405);

    let garbage = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(garbage.status(), 400);
    let body: Value = garbage.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    server.shutdown().await;
}

#[tokio::test]
async fn mock_status_forces_the_status_on_every_attempt() {
    let server = start(MockConfig::default()).await;
    let cases = [
        (400, "invalid_request_error", Value::Null),
        (401, "invalid_request_error", json!("invalid_api_key")),
        (
            403,
            "request_forbidden",
            json!("unsupported_country_region_territory"),
        ),
        (404, "invalid_request_error", json!("model_not_found")),
        (422, "invalid_request_error", Value::Null),
        (429, "tokens", json!("rate_limit_exceeded")),
        (500, "server_error", Value::Null),
        (503, "server_error", Value::Null),
    ];
    for (status, kind, code) in cases {
        let body = json!({"model": "gpt-4o-mini", "input": "x", "mock_status": status});
        for _ in 0..2 {
            let reply = post(&server, "/responses", &body).await;
            assert_eq!(reply.status, status);
            assert_request_id(&reply);
            assert_eq!(reply.json()["error"]["type"], kind, "{status}");
            assert_eq!(reply.error_code(), code, "{status}");
        }
    }
    let forced_ok = json!({"model": "m", "input": "fine", "mock_status": 200});
    assert_eq!(post(&server, "/responses", &forced_ok).await.status, 200);
    let nonsense = json!({"model": "m", "input": "x", "mock_status": "soon"});
    let reply = post(&server, "/responses", &nonsense).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "mock_status");
    server.shutdown().await;
}

#[tokio::test]
async fn missing_scope_rate_one_fails_every_request_with_the_exact_body() {
    let server = start(MockConfig {
        missing_scope_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    for n in 0..3 {
        let reply = post(&server, "/chat/completions", &chat_body(&format!("q{n}"))).await;
        assert_eq!(reply.status, 401);
        assert_request_id(&reply);
        assert_eq!(reply.error_code(), "missing_scope");
        assert!(reply.text.starts_with(
            r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: model.request. Check that you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using a restricted API key, that it has the necessary scopes.","type":"invalid_request_error","param":null,"code":"missing_scope"}}"#
        ));
    }
    // GET /v1/models is not subject to random faults.
    let models = client()
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .expect("models");
    assert_eq!(models.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_spike_fails_everything_inside_its_window_only() {
    let server = start(MockConfig {
        spikes: vec![
            Spike {
                start: Duration::ZERO,
                end: Duration::from_millis(300),
                fault: Fault::RbacDenied,
            },
            Spike {
                start: Duration::from_secs(60),
                end: Duration::from_secs(61),
                fault: Fault::ServerError,
            },
        ],
        ..MockConfig::default()
    })
    .await;
    let body = chat_body("during the spike");
    let inside = post(&server, "/chat/completions", &body).await;
    assert_eq!(inside.status, 401);
    assert_eq!(inside.text, "RBAC: access denied");
    assert!(inside.header("content-type").starts_with("text/plain"));
    let deadline = Instant::now() + Duration::from_secs(2);
    let after = loop {
        let reply = post(&server, "/chat/completions", &body).await;
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.status, 200, "the spike should have ended");
    assert_eq!(server.stats().successes_for(&body), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_keys_are_refused_without_echoing_the_key() {
    let bad = "sk-proj-revoked-secret-abcd";
    let server = start(MockConfig {
        invalid_keys: vec![bad.to_owned()],
        // Precedence: the key check comes before mock_status and spikes.
        missing_scope_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let body = json!({"model": "m", "input": "x", "mock_status": 500});
    let reply = post_as(&server, "/responses", bad, &body).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), "invalid_api_key");
    let message = reply.json()["error"]["message"].clone();
    let message = message.as_str().expect("message");
    assert!(
        message.starts_with("Incorrect API key provided: sk-…abcd."),
        "{message}"
    );
    assert!(!reply.text.contains("revoked-secret"));
    let models = client()
        .get(format!("{}/models", server.base_url()))
        .bearer_auth(bad)
        .send()
        .await
        .expect("models");
    assert_eq!(models.status(), 401);
    // Another key goes on to the next rule.
    let other = post_as(&server, "/responses", "sk-good-key-0000000000", &body).await;
    assert_eq!(other.status, 500);
    server.shutdown().await;
}

#[tokio::test]
async fn quota_runs_out_after_the_configured_successes() {
    let server = start(MockConfig {
        quota_after: Some(2),
        ..MockConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    for n in 0..4 {
        let body = json!({"model": "m", "input": format!("q{n}"), "mock_status": 200});
        let reply = post(&server, "/responses", &body).await;
        if reply.status == 429 {
            assert_eq!(reply.error_code(), "insufficient_quota");
            assert!(reply.headers.get("retry-after").is_none());
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(server.stats().successes(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limits_carry_both_retry_headers() {
    let server = start(MockConfig {
        rate_limit_rate: 1.0,
        retry_after: Duration::from_millis(1500),
        ..MockConfig::default()
    })
    .await;
    let reply = post(&server, "/chat/completions", &chat_body("too fast")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after-ms"), "1500");
    assert_eq!(reply.header("retry-after"), "2");
    assert_eq!(reply.header("x-ratelimit-reset-requests"), "1.5s");
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "requests");
    assert_eq!(error["code"], "rate_limit_exceeded");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min \
             (RPM): Limit 500, Used 500, Requested 1. Please try again in 1.5s."
        ),
        "{message}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_answers_are_200_but_not_json_and_not_successes() {
    let server = start(MockConfig {
        malformed_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let body = chat_body("broken");
    let reply = post(&server, "/chat/completions", &body).await;
    assert_eq!(reply.status, 200);
    assert_request_id(&reply);
    assert!(serde_json::from_str::<Value>(&reply.text).is_err());
    let stats = server.stats();
    assert_eq!(stats.answers_for(&body), 1);
    assert_eq!(stats.successes_for(&body), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn hangs_answer_500_after_the_hang_and_do_not_block_shutdown() {
    let server = start(MockConfig {
        hang_rate: 1.0,
        hang: Duration::from_millis(200),
        ..MockConfig::default()
    })
    .await;
    let began = Instant::now();
    let reply = post(&server, "/chat/completions", &chat_body("slow")).await;
    assert_eq!(reply.status, 500);
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(server.stats().by_status.get(&500), Some(&1));
    server.shutdown().await;

    let server = start(MockConfig {
        hang_rate: 1.0,
        hang: Duration::from_secs(600),
        ..MockConfig::default()
    })
    .await;
    let url = format!("{}/chat/completions", server.base_url());
    let pending =
        tokio::spawn(async move { client().post(url).json(&chat_body("stuck")).send().await });
    // Shut down only once the request is in: on a busy machine a fixed sleep was not enough,
    // and a request that never reached the server gets no answer at all.
    let arrived = || {
        let routes = server.stats().routes;
        routes.contains_key("POST /v1/chat/completions")
    };
    for _ in 0..200 {
        if arrived() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(arrived(), "the hanging request never arrived");
    let began = Instant::now();
    tokio::time::timeout(TIMEOUT, server.shutdown())
        .await
        .expect("shutdown cuts the hang short");
    assert!(began.elapsed() < TIMEOUT);
    let reply = pending.await.expect("task").expect("answered");
    assert_eq!(reply.status(), 500);
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults() {
    let config = |seed| MockConfig {
        seed,
        missing_scope_rate: 0.2,
        rate_limit_rate: 0.2,
        server_error_rate: 0.2,
        malformed_rate: 0.1,
        retry_after: Duration::ZERO,
        ..MockConfig::default()
    };
    let body = chat_body("replay me");
    let mut runs = Vec::new();
    for seed in [7, 7, 8] {
        let server = start(config(seed)).await;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(post(&server, "/chat/completions", &body).await.status);
        }
        server.shutdown().await;
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[0], runs[2], "another seed draws differently");
    assert!(runs[0].contains(&200) && runs[0].iter().any(|status| *status != 200));
}

#[tokio::test]
async fn stats_count_answers_per_status_and_per_body() {
    let server = start(MockConfig::default()).await;
    let good = chat_body("good");
    let bad = json!({"model": "m", "messages": [], "mock_status": 422});
    post(&server, "/chat/completions", &good).await;
    post(&server, "/chat/completions", &good).await;
    post(&server, "/chat/completions", &bad).await;
    let stats = server.stats();
    assert_eq!(stats.answers, 3);
    assert_eq!(stats.by_status.get(&200), Some(&2));
    assert_eq!(stats.by_status.get(&422), Some(&1));
    assert_eq!(stats.answers_for(&good), 2);
    assert_eq!(stats.successes_for(&good), 2);
    assert_eq!(stats.answers_for(&bad), 1);
    assert_eq!(stats.successes_for(&bad), 0);
    assert_eq!(stats.successes(), 2);
    assert_eq!(stats.answers_for(&json!({"never": "sent"})), 0);
    // Key order does not matter: the key is canonical.
    let reordered = json!({"messages": [
        {"content": "be brief", "role": "system"},
        {"role": "user", "content": "good"},
    ], "model": "gpt-4o-mini"});
    assert_eq!(stats.successes_for(&reordered), 2);

    let served: Value = client()
        .get(format!("http://{}/mock/stats", server.addr()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(served["answers"], 3);
    assert_eq!(served["by_status"]["200"], 2);
    assert_eq!(served["per_body"][body_key(&good)]["successes"], 2);
    server.shutdown().await;
}

#[tokio::test]
async fn latency_is_added_to_every_answer() {
    let server = start(MockConfig {
        latency: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let began = Instant::now();
    let reply = post(&server, "/embeddings", &json!({"input": "x"})).await;
    assert_eq!(reply.status, 200);
    assert!(began.elapsed() >= Duration::from_millis(100));
    assert!(
        reply
            .header("openai-processing-ms")
            .parse::<u64>()
            .expect("ms")
            >= 100
    );
    server.shutdown().await;
}

#[test]
fn go_durations_look_like_openai_headers() {
    use super::faults::go_duration;
    let ms = Duration::from_millis;
    assert_eq!(go_duration(ms(120)), "120ms");
    assert_eq!(go_duration(ms(1000)), "1s");
    assert_eq!(go_duration(ms(1500)), "1.5s");
    assert_eq!(go_duration(ms(360_000)), "6m0s");
    assert_eq!(go_duration(ms(90_500)), "1m30.5s");
}

#[test]
fn body_key_ignores_key_order() {
    // Fails if a dependency ever turns on serde_json's `preserve_order` feature.
    let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).expect("json");
    let b: Value = serde_json::from_str(r#"{"a":{"c":3,"d":2},"b":1}"#).expect("json");
    assert_eq!(body_key(&a), body_key(&b));
}

/// The limit-refusal tests use small bodies: "be brief" and a short question.
fn chat_cost(body: &Value) -> u64 {
    crate::domain::tokens::cost("/v1/chat/completions", body, super::limit::DEFAULT_OUTPUT).total()
}

/// Whether `text` is a Go duration as OpenAI writes them: `120ms`, `1s`, `1.5s`, `6m0s`.
fn is_go_duration(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some(millis) = text.strip_suffix("ms") {
        return digits(millis);
    }
    let Some(rest) = text.strip_suffix('s') else {
        return false;
    };
    let seconds = match rest.split_once('m') {
        Some((minutes, seconds)) if digits(minutes) => seconds,
        Some(_) => return false,
        None => rest,
    };
    match seconds.split_once('.') {
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => digits(seconds),
    }
}

#[test]
fn the_go_duration_check_knows_the_forms() {
    for good in ["120ms", "1s", "1.5s", "6m0s", "1m30.5s", "0ms"] {
        assert!(is_go_duration(good), "{good}");
    }
    for bad in ["", "1", "-5s", "1s1s", "forever", "ms", "1.s", "m1s"] {
        assert!(!is_go_duration(bad), "{bad}");
    }
}

#[tokio::test]
async fn both_limits_announce_well_formed_headers_on_every_answer() {
    let server = start(MockConfig {
        requests_per_second: Some(100.0),
        tokens_per_minute: Some(60_000.0),
        ..MockConfig::default()
    })
    .await;
    let body = chat_body("how are the headers");
    let cost = chat_cost(&body);
    let reply = post(&server, "/chat/completions", &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-ratelimit-limit-requests"), "6000");
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), "5999");
    assert_eq!(reply.header("x-ratelimit-reset-requests"), "10ms");
    assert_eq!(reply.header("x-ratelimit-limit-tokens"), "60000");
    // The first request meets full buckets: the minute less its cost, back in cost/1000 s.
    assert_eq!(
        reply.header("x-ratelimit-remaining-tokens"),
        (60_000 - cost).to_string()
    );
    assert_eq!(
        reply.header("x-ratelimit-reset-tokens"),
        format!("{cost}ms")
    );
    for _ in 0..3 {
        let reply = post(&server, "/embeddings", &json!({"input": "x"})).await;
        for unit in ["requests", "tokens"] {
            let remaining = reply.header(&format!("x-ratelimit-remaining-{unit}"));
            remaining.parse::<u64>().expect("an integer");
            let reset = reply.header(&format!("x-ratelimit-reset-{unit}"));
            assert!(is_go_duration(reset), "{reset}");
        }
    }
    // No limit configured: no headers.
    let plain = start(MockConfig::default()).await;
    let reply = post(&plain, "/chat/completions", &body).await;
    assert!(reply.headers.get("x-ratelimit-limit-tokens").is_none());
    assert!(reply.headers.get("x-ratelimit-limit-requests").is_none());
    plain.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_token_limit_a_request_gets_429_type_tokens_at_once() {
    // 600 TPM: 10 tokens a second, a bucket of 10. The first request (over the bucket, within
    // the minute) is admitted into debt; the next is refused until the debt is paid.
    let server = start(MockConfig {
        tokens_per_minute: Some(600.0),
        latency: Duration::from_millis(30),
        ..MockConfig::default()
    })
    .await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    let cost = chat_cost(&body);
    assert!(cost > 10, "over the bucket: {cost}");
    let first = post(&server, "/chat/completions", &body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-mock-latency-us"), "30000");
    let second = post(&server, "/chat/completions", &body).await;
    assert_eq!(second.status, 429);
    assert!(
        second.headers.get("x-mock-latency-us").is_none(),
        "a refusal answers without the latency"
    );
    let error = &second.json()["error"];
    assert_eq!(error["type"], "tokens");
    assert_eq!(error["code"], "rate_limit_exceeded");
    let message = error["message"].as_str().expect("message");
    let wait: u64 = second.header("retry-after-ms").parse().expect("millis");
    // The debt (cost - 10 tokens) and a full bucket again, at 10 tokens a second.
    assert!(wait > 0 && wait <= cost * 100, "{wait}");
    let prefix = "Rate limit reached for gpt-4o-mini in organization org-mock on tokens per min \
                  (TPM): Limit 600, Used ";
    assert!(message.starts_with(prefix), "{message}");
    let hint = format!(
        ", Requested {cost}. Please try again in {}.",
        super::faults::go_duration(Duration::from_millis(wait))
    );
    assert!(message.contains(&hint), "{message} lacks {hint}");
    assert_eq!(second.header("x-ratelimit-limit-tokens"), "600");

    let stats: Value = client()
        .get(format!("http://{}/mock/stats", server.addr()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["admitted"], json!({"requests": 1, "tokens": cost}));
    assert_eq!(
        stats["limited"],
        json!({"requests": 0, "tokens": 1, "too_large": 0})
    );
    assert_eq!(stats["admitted_by_second"]["0"]["requests"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_over_the_whole_minute_is_too_large_and_takes_nothing() {
    let server = start(MockConfig {
        tokens_per_minute: Some(600.0),
        requests_per_second: Some(1.0),
        ..MockConfig::default()
    })
    .await;
    let huge = json!({"model": "gpt-4o", "max_completion_tokens": 1000,
        "messages": [{"role": "user", "content": "write a lot"}]});
    let cost = chat_cost(&huge);
    let reply = post(&server, "/chat/completions", &huge).await;
    assert_eq!(reply.status, 429);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "tokens");
    assert_eq!(error["code"], "rate_limit_exceeded");
    let message = error["message"].as_str().expect("message");
    let expected = format!(
        "Request too large for gpt-4o in organization org-mock on tokens per min (TPM): \
         Limit 600, Requested {cost}. "
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(
        reply.headers.get("retry-after-ms").is_none(),
        "waiting cannot help"
    );
    // Neither limit paid for it: a small request is admitted right after.
    let small =
        json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(post(&server, "/chat/completions", &small).await.status, 200);
    let stats = server.stats();
    assert_eq!(stats.limited.too_large, 1);
    assert_eq!(stats.admitted.requests, 1);
    assert_eq!(stats.admitted.tokens, chat_cost(&small));
    server.shutdown().await;
}

#[tokio::test]
async fn the_request_limit_refuses_with_type_requests_and_spares_the_tokens() {
    let server = start(MockConfig {
        requests_per_second: Some(1.0),
        tokens_per_minute: Some(1_000_000.0),
        ..MockConfig::default()
    })
    .await;
    let body = chat_body("one a second");
    assert_eq!(post(&server, "/chat/completions", &body).await.status, 200);
    let refused = post(&server, "/chat/completions", &body).await;
    assert_eq!(refused.status, 429);
    let error = &refused.json()["error"];
    assert_eq!(error["type"], "requests");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min \
             (RPM): Limit 60, Used 1, Requested 1. Please try again in "
        ),
        "{message}"
    );
    refused
        .header("retry-after-ms")
        .parse::<u64>()
        .expect("millis");
    let stats = server.stats();
    assert_eq!(stats.limited.requests, 1);
    assert_eq!(stats.limited.tokens, 0);
    assert_eq!(stats.admitted.requests, 1);
    assert_eq!(
        stats.admitted.tokens,
        chat_cost(&body),
        "the refused one cost nothing"
    );
    server.shutdown().await;
}

/// The latencies drawn for 25 distinct bodies, sent at once through one client.
async fn drawn_latencies(config: MockConfig) -> Vec<u64> {
    let server = start(config).await;
    let client = client();
    let url = format!("{}/chat/completions", server.base_url());
    let replies = futures::future::join_all((0..25).map(|n| {
        client
            .post(&url)
            .json(&chat_body(&format!("latency {n}")))
            .send()
    }))
    .await;
    server.shutdown().await;
    replies
        .into_iter()
        .map(|reply| {
            let reply = reply.expect("answered");
            reply.headers()["x-mock-latency-us"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("micros")
        })
        .collect()
}

#[tokio::test]
async fn spread_latencies_are_reproducible_for_a_seed_and_centred_on_the_median() {
    let config = |seed| MockConfig {
        latency: Duration::from_millis(20),
        latency_spread: 0.5,
        seed,
        ..MockConfig::default()
    };
    let first = drawn_latencies(config(7)).await;
    // Sent concurrently: a draw is keyed by body and attempt, not by arrival.
    assert_eq!(first, drawn_latencies(config(7)).await);
    assert_ne!(first, drawn_latencies(config(8)).await);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    assert!(
        (15_000..27_000).contains(&median),
        "median {median}µs of {sorted:?}"
    );
    assert!(sorted[0] < sorted[24], "spread: {sorted:?}");
    assert!(
        sorted[24] <= 400_000,
        "at most 20 times the median: {sorted:?}"
    );
}

#[tokio::test]
async fn a_slow_down_multiplies_the_latency_from_its_moment() {
    let slowed = |at| MockConfig {
        latency: Duration::from_millis(10),
        slow_down: Some(SlowDown { at, factor: 3.0 }),
        ..MockConfig::default()
    };
    let server = start(slowed(Duration::ZERO)).await;
    let began = Instant::now();
    let reply = post(&server, "/chat/completions", &chat_body("slow")).await;
    assert_eq!(reply.header("x-mock-latency-us"), "30000");
    assert!(began.elapsed() >= Duration::from_millis(30));
    // GET answers wait the same latency.
    let models = client()
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .expect("models");
    assert_eq!(models.headers()["x-mock-latency-us"], "30000");
    server.shutdown().await;
    let server = start(slowed(Duration::from_secs(3600))).await;
    let reply = post(&server, "/chat/completions", &chat_body("not yet")).await;
    assert_eq!(reply.header("x-mock-latency-us"), "10000");
    server.shutdown().await;
}

#[tokio::test]
async fn absurd_rate_headers_vary_answer_by_answer_on_normal_answers() {
    let server = start(MockConfig {
        absurd_rate_headers: true,
        requests_per_second: Some(1000.0),
        ..MockConfig::default()
    })
    .await;
    let first = post(&server, "/chat/completions", &chat_body("absurd")).await;
    assert_eq!(first.status, 200);
    first.json();
    let expected = [
        ("x-ratelimit-limit-requests", "1e-300"),
        ("x-ratelimit-remaining-requests", "-3"),
        ("x-ratelimit-reset-requests", "forever"),
        ("x-ratelimit-limit-tokens", "NaN"),
        ("x-ratelimit-remaining-tokens", "1e400"),
        ("x-ratelimit-reset-tokens", "-5s"),
        ("retry-after", "1e300"),
        ("retry-after-ms", "-1"),
    ];
    for (name, value) in expected {
        assert_eq!(first.header(name), value, "{name}");
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..16 {
        let reply = post(&server, "/embeddings", &json!({"input": format!("{n}")})).await;
        assert_eq!(reply.status, 200);
        seen.insert(reply.header("retry-after-ms").to_owned());
    }
    for value in ["0", "0.5", "99999999999999999999", "1s1s", ""] {
        assert!(seen.contains(value), "{value:?} not among {seen:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_300_mb_padded_body_streams_with_its_length_and_stays_json() {
    const SIZE: u64 = 300_000_000;
    let server = start(MockConfig::default()).await;
    let body = json!({"model": "gpt-4o-mini", "mock_body_bytes": SIZE,
        "messages": [{"role": "user", "content": "big"}]});
    let mut response = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(SIZE));
    let mut head = Vec::new();
    let mut total = 0u64;
    let mut last = 0u8;
    // Bounded: the server sends SIZE bytes, and each chunk has at least one.
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        total += chunk.len() as u64;
        assert!(total <= SIZE, "more than announced");
        if head.len() < 64 * 1024 {
            head.extend_from_slice(&chunk);
        } else {
            assert!(chunk.iter().all(|byte| *byte == b' '), "padding is spaces");
        }
        last = chunk.last().copied().unwrap_or(last);
    }
    assert_eq!(total, SIZE);
    assert_eq!(last, b' ');
    let mut values = serde_json::Deserializer::from_slice(&head).into_iter::<Value>();
    let answer = values.next().expect("a value").expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: big");
    let end = values.byte_offset();
    assert!(
        head[end..].iter().all(|byte| *byte == b' '),
        "only spaces after the JSON"
    );
    server.shutdown().await;
}
