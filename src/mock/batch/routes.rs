//! The Files and Batches routes: axum handlers that check each call, count it, and read or
//! change the batch state of [`BatchApi`](super::BatchApi) (which moves batches on).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    BatchApi, BatchHost, BatchOp, MAX_FILE_BYTES, MockBatch, batch_str, stored_file, unix_now,
};
use crate::mock::multipart;

/// Metadata pairs a batch may carry, and their sizes.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;
/// Endpoints a batch may name.
const ENDPOINTS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
];
/// `GET /v1/batches` without `limit`, and the most it returns.
const DEFAULT_LIST_LIMIT: usize = 20;
const MAX_LIST_LIMIT: usize = 100;

/// The Files and Batches routes, for the server to merge into its router.
pub(crate) fn router<S>(host: Arc<dyn BatchHost>) -> Router<S> {
    Router::new()
        .route(
            "/v1/files",
            post(upload).layer(DefaultBodyLimit::max(MAX_FILE_BYTES + 64 * 1024)),
        )
        .route("/v1/files/{id}", get(file).delete(delete_file))
        .route("/v1/files/{id}/content", get(content))
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
        .with_state(host)
}

type Host = State<Arc<dyn BatchHost>>;

fn json_answer(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error_answer(status: StatusCode, message: &str, param: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}});
    json_answer(status, &body)
}

fn not_found(kind: &str, id: &str) -> Response {
    error_answer(
        StatusCode::NOT_FOUND,
        &format!("No such {kind}: '{id}'"),
        Some("id"),
    )
}

fn scope_answer(host: &dyn BatchHost, scope: &str) -> Response {
    let (status, body) = host.missing_scope(scope);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn upload(State(host): Host, headers: HeaderMap, body: Bytes) -> Response {
    let api = host.batches();
    let call = {
        let mut state = api.lock();
        state.upload_calls += 1;
        state.upload_calls
    };
    if call <= api.missing_scope_uploads {
        return scope_answer(host.as_ref(), "api.files.write");
    }
    let Some(boundary) = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary)
    else {
        return error_answer(
            StatusCode::BAD_REQUEST,
            "Uploads must be multipart/form-data with the fields purpose and file.",
            None,
        );
    };
    let parts = match multipart::parse(&body, &boundary) {
        Ok(parts) => parts,
        Err(why) => return error_answer(StatusCode::BAD_REQUEST, &why, None),
    };
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| p.data.clone());
    let file = parts.into_iter().find(|p| p.name == "file");
    let (Some(purpose), Some(file)) = (purpose, file) else {
        return error_answer(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'purpose' and 'file' are required.",
            Some("file"),
        );
    };
    if purpose != b"batch" {
        return error_answer(
            StatusCode::BAD_REQUEST,
            "The mock accepts only purpose=batch.",
            Some("purpose"),
        );
    }
    let filename = file.filename.unwrap_or_else(|| "upload.jsonl".to_owned());
    let stored = stored_file(file.data, &filename, "batch");
    let object = stored.object.clone();
    {
        let mut state = api.lock();
        state.counts.uploads += 1;
        let id = object["id"].as_str().unwrap_or_default().to_owned();
        state.files.insert(id, stored);
    }
    if let Some(stall) = api.stall(BatchOp::Upload) {
        tokio::time::sleep(stall).await;
    }
    json_answer(StatusCode::OK, &object)
}

async fn file(State(host): Host, Path(id): Path<String>) -> Response {
    match host.batches().lock().files.get(&id) {
        Some(file) => json_answer(StatusCode::OK, &file.object),
        None => not_found("file", &id),
    }
}

async fn content(State(host): Host, Path(id): Path<String>) -> Response {
    let content = {
        let mut state = host.batches().lock();
        let content = state.files.get(&id).map(|file| Arc::clone(&file.content));
        if content.is_some() {
            state.counts.downloads += 1;
        }
        content
    };
    let Some(content) = content else {
        return not_found("file", &id);
    };
    let body = match host.batches().stall(BatchOp::Download) {
        // Half the file now, the rest after the stall.
        Some(stall) => {
            let half = content.len() / 2;
            let first = Bytes::copy_from_slice(&content[..half]);
            let rest = Bytes::copy_from_slice(&content[half..]);
            let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(first)]).chain(
                futures::stream::once(async move {
                    tokio::time::sleep(stall).await;
                    Ok(rest)
                }),
            );
            Body::from_stream(stream)
        }
        None => Body::from(content.as_ref().clone()),
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

async fn delete_file(State(host): Host, Path(id): Path<String>) -> Response {
    let mut state = host.batches().lock();
    match state.files.remove(&id) {
        Some(_) => {
            state.counts.deletes += 1;
            json_answer(
                StatusCode::OK,
                &json!({"id": id, "object": "file", "deleted": true}),
            )
        }
        None => not_found("file", &id),
    }
}

/// The body of `POST /v1/batches`.
#[derive(Debug, Deserialize)]
struct CreateBody {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

async fn create(State(host): Host, headers: HeaderMap, body: Bytes) -> Response {
    let api = host.batches();
    let call = {
        let mut state = api.lock();
        state.create_calls += 1;
        state.create_calls
    };
    if call <= api.missing_scope_creates {
        return scope_answer(host.as_ref(), "api.batch.write");
    }
    let request: CreateBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error_answer(
                StatusCode::BAD_REQUEST,
                &format!("Invalid batch request: {e}"),
                None,
            );
        }
    };
    if !ENDPOINTS.contains(&request.endpoint.as_str()) {
        let message = format!(
            "Unsupported endpoint {}; use one of {ENDPOINTS:?}.",
            request.endpoint
        );
        return error_answer(StatusCode::BAD_REQUEST, &message, Some("endpoint"));
    }
    if request.completion_window != "24h" {
        return error_answer(
            StatusCode::BAD_REQUEST,
            "completion_window must be '24h'.",
            Some("completion_window"),
        );
    }
    let metadata = request.metadata.unwrap_or_default();
    if metadata.len() > MAX_METADATA_PAIRS
        || metadata.iter().any(|(k, v)| {
            k.chars().count() > MAX_METADATA_KEY || v.chars().count() > MAX_METADATA_VALUE
        })
    {
        return error_answer(
            StatusCode::BAD_REQUEST,
            "metadata takes at most 16 pairs, keys up to 64 characters and values up to 512.",
            Some("metadata"),
        );
    }
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let object = {
        let mut state = api.lock();
        if !state.files.contains_key(&request.input_file_id) {
            drop(state);
            return not_found("file", &request.input_file_id);
        }
        let open = state
            .batches
            .iter()
            .filter(|b| !matches!(b.status(), "completed" | "failed" | "expired" | "cancelled"))
            .count();
        if api.max_open.is_some_and(|max| open >= max) {
            drop(state);
            let body = json!({"error": {"message": "Enqueued token limit reached for the model in this project. Wait for earlier batches to finish.", "type": "invalid_request_error", "param": null, "code": "token_limit_exceeded"}});
            return json_answer(StatusCode::BAD_REQUEST, &body);
        }
        let ordinal = state.batches.len();
        let fate = api.fates.get(ordinal).copied().unwrap_or_default();
        let now = unix_now();
        let id = format!("batch_{:024x}", fastrand::u128(..) >> 32);
        let object = json!({
            "id": id, "object": "batch", "endpoint": request.endpoint, "errors": null,
            "input_file_id": request.input_file_id, "completion_window": "24h",
            "status": "validating", "output_file_id": null, "error_file_id": null,
            "created_at": now, "in_progress_at": null, "expires_at": now + 24 * 3600,
            "finalizing_at": null, "completed_at": null, "failed_at": null, "expired_at": null,
            "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        });
        let object = match object {
            Value::Object(object) => object,
            // `json!` of an object literal is always an object.
            _ => serde_json::Map::new(),
        };
        state.batches.push(MockBatch {
            object: object.clone(),
            started: Instant::now(),
            fate,
            key,
            lines: Vec::new(),
            results: Vec::new(),
            cancelling_since: None,
        });
        state.counts.batches_created += 1;
        Value::Object(object)
    };
    if let Some(stall) = api.stall(BatchOp::Create) {
        tokio::time::sleep(stall).await;
    }
    json_answer(StatusCode::OK, &object)
}

/// The index of batch `id`, counting a poll.
fn find_batch(api: &BatchApi, id: &str) -> Option<usize> {
    let mut state = api.lock();
    state.counts.polls += 1;
    state.batches.iter().position(|b| batch_str(b, "id") == id)
}

async fn retrieve(State(host): Host, Path(id): Path<String>) -> Response {
    let api = host.batches();
    let Some(index) = find_batch(api, &id) else {
        return not_found("batch", &id);
    };
    api.advance(host.as_ref(), index);
    let object = Value::Object(api.lock().batches[index].object.clone());
    json_answer(StatusCode::OK, &object)
}

/// `GET /v1/batches` query: `limit` and `after` (ids need no percent-decoding). Read by hand:
/// axum's `Query` extractor is a feature this crate does not build.
#[derive(Debug, Default)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> ListQuery {
        let mut parsed = ListQuery::default();
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("limit", value)) => parsed.limit = value.parse().ok(),
                Some(("after", value)) => parsed.after = Some(value.to_owned()),
                Some(_) | None => {}
            }
        }
        parsed
    }
}

async fn list(State(host): Host, RawQuery(query): RawQuery) -> Response {
    let query = ListQuery::parse(query.as_deref());
    let api = host.batches();
    let count = {
        let mut state = api.lock();
        state.counts.polls += 1;
        state.batches.len()
    };
    for index in 0..count {
        api.advance(host.as_ref(), index);
    }
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let state = api.lock();
    let newest_first = state.batches.iter().rev();
    let skip = match &query.after {
        Some(after) => match state
            .batches
            .iter()
            .rev()
            .position(|b| batch_str(b, "id") == after)
        {
            Some(at) => at + 1,
            None => return not_found("batch", after),
        },
        None => 0,
    };
    let page: Vec<Value> = newest_first
        .skip(skip)
        .take(limit + 1)
        .map(|b| Value::Object(b.object.clone()))
        .collect();
    let has_more = page.len() > limit;
    let page: Vec<Value> = page.into_iter().take(limit).collect();
    let id_of = |v: Option<&Value>| v.map(|v| v["id"].clone()).unwrap_or(Value::Null);
    let body = json!({
        "object": "list", "first_id": id_of(page.first()), "last_id": id_of(page.last()),
        "has_more": has_more, "data": page,
    });
    json_answer(StatusCode::OK, &body)
}

async fn cancel(State(host): Host, Path(id): Path<String>) -> Response {
    let api = host.batches();
    let Some(index) = find_batch(api, &id) else {
        return not_found("batch", &id);
    };
    api.advance(host.as_ref(), index);
    let mut state = api.lock();
    let batch = &mut state.batches[index];
    match batch.status() {
        "validating" | "in_progress" | "finalizing" => {
            batch.set_status("cancelling", "cancelling_at");
            batch.cancelling_since = Some(Instant::now());
        }
        "cancelling" => {}
        other => {
            let message = format!("Cannot cancel a batch with status '{other}'.");
            drop(state);
            return error_answer(StatusCode::CONFLICT, &message, None);
        }
    }
    json_answer(StatusCode::OK, &Value::Object(batch.object.clone()))
}
