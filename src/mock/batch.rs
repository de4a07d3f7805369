//! The hosted Batch API: `/v1/files` and `/v1/batches`, as `OPENAI-FACTS.md` ("Hosted Batch
//! API") describes them.
//!
//! Everything lives in memory. A batch moves on when someone looks at it (a poll, a list, a
//! cancel, a download): its status follows from the time since its creation and
//! [`MockConfig::batch_processing`](super::MockConfig::batch_processing), so there is no
//! background task to track. Over the processing time a batch is `validating` (the first tenth),
//! `in_progress` (lines are answered in proportion to the time passed), `finalizing` (one more
//! tenth), then `completed`. Each line is answered by the server's own per-request decision
//! ([`BatchHost::answer_line`]), so fault rates and `mock_status` apply; successes go to the
//! output file and failures to the error file, both shuffled.
//!
//! Faults: the first N uploads and creations can get 401 `missing_scope`, and the Nth batch
//! created can be scripted by [`BatchFate`] to fail validation or to expire half-way.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod routes;

pub(crate) use routes::router;

/// Lines an input file may hold.
pub const MAX_LINES: usize = 50_000;
/// Bytes an input file may hold; also the upload body limit.
pub const MAX_FILE_BYTES: usize = 200 * 1024 * 1024;

/// What becomes of a batch, scripted per creation by [`MockConfig::batch_fates`](super::MockConfig::batch_fates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchFate {
    /// Processed normally (every line answered; the fault rates decide how).
    #[default]
    Complete,
    /// Fails validation whatever the file holds (`errors.data[]` names line 1).
    FailValidation,
    /// Expires half-way: only the lines answered by then are in the output and error files.
    Expire,
    /// Completes, but its output file is gone by the time it is downloaded (404), as after a
    /// delete or past the file's expiry; its error file, if any, is there.
    OutputGone,
    /// Completes, and its output file answers each successful line twice: a 500 line for the
    /// same `custom_id` first, then the success (a server that reports a retry it made).
    ErrorThenSuccess,
    /// Answers half its lines, then stays `in_progress` until it is cancelled (a batch stuck in
    /// OpenAI's queue); cancelled, it keeps the half it finished.
    Stall,
}

impl BatchFate {
    /// Parses `complete`, `fail-validation`, `expire`, `output-gone`, `error-then-success` or `stall`
    /// (the `--batch-fates` names).
    pub fn from_name(name: &str) -> Option<BatchFate> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "complete" => Some(BatchFate::Complete),
            "fail-validation" => Some(BatchFate::FailValidation),
            "expire" => Some(BatchFate::Expire),
            "output-gone" => Some(BatchFate::OutputGone),
            "error-then-success" => Some(BatchFate::ErrorThenSuccess),
            "stall" => Some(BatchFate::Stall),
            _ => None,
        }
    }
}

/// A Files or Batches call the mock can stall ([`MockConfig::batch_stalls`](super::MockConfig::batch_stalls)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchOp {
    /// `POST /v1/files`: the file is stored, then the answer waits.
    Upload,
    /// `POST /v1/batches`: the batch is created, then the answer waits.
    Create,
    /// `GET /v1/files/{id}/content`: half the file is sent, then the rest waits.
    Download,
}

impl BatchOp {
    /// Parses `upload`, `create` or `download` (the `--batch-stall` names).
    pub fn from_name(name: &str) -> Option<BatchOp> {
        match name.trim().to_ascii_lowercase().as_str() {
            "upload" => Some(BatchOp::Upload),
            "create" => Some(BatchOp::Create),
            "download" => Some(BatchOp::Download),
            _ => None,
        }
    }
}

/// Files and Batches calls the mock has answered (part of [`MockStats`](super::MockStats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    /// `POST /v1/files` answered 200.
    pub uploads: u64,
    /// `POST /v1/batches` answered 200.
    pub batches_created: u64,
    /// `GET /v1/batches/{id}` and `GET /v1/batches` calls.
    pub polls: u64,
    /// `GET /v1/files/{id}/content` answered 200.
    pub downloads: u64,
    /// `DELETE /v1/files/{id}` answered 200.
    pub deletes: u64,
}

/// How a line is answered: by the server's per-request decision.
pub(crate) trait BatchHost: Send + Sync + 'static {
    /// The batch state.
    fn batches(&self) -> &BatchApi;
    /// The status and JSON body the server would answer `body` on `url` with, for a key.
    fn answer_line(&self, url: &str, body: &Value, key: Option<&str>) -> (u16, Value);
    /// A JSON error answer for a Files or Batches call (`missing_scope` for `scope`).
    fn missing_scope(&self, scope: &str) -> (u16, String);
}

/// The Files and Batches state, and the batch faults.
#[derive(Debug)]
pub(crate) struct BatchApi {
    processing: Duration,
    missing_scope_uploads: u64,
    missing_scope_creates: u64,
    fates: Vec<BatchFate>,
    stalls: Vec<BatchOp>,
    stall_for: Duration,
    max_open: Option<usize>,
    /// Held for short, synchronous sections only; never while a line is answered.
    state: Mutex<BatchState>,
}

#[derive(Debug, Default)]
struct BatchState {
    files: BTreeMap<String, StoredFile>,
    /// In creation order.
    batches: Vec<MockBatch>,
    counts: BatchCounts,
    upload_calls: u64,
    create_calls: u64,
    /// The calls that have had their stall.
    stalled: HashSet<BatchOp>,
}

#[derive(Debug)]
struct StoredFile {
    object: Value,
    content: Arc<Vec<u8>>,
}

/// One input line, once validated.
#[derive(Debug, Deserialize)]
struct InputLine {
    custom_id: String,
    url: String,
    body: Value,
}

#[derive(Debug)]
struct MockBatch {
    object: serde_json::Map<String, Value>,
    started: Instant,
    fate: BatchFate,
    key: Option<String>,
    lines: Vec<InputLine>,
    /// Output lines so far: (line JSON, success).
    results: Vec<(String, bool)>,
    cancelling_since: Option<Instant>,
}

impl MockBatch {
    fn status(&self) -> &str {
        self.object
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("validating")
    }

    fn set_status(&mut self, status: &str, stamp: &str) {
        self.object.insert("status".into(), json!(status));
        self.object.insert(stamp.into(), json!(unix_now()));
    }

    fn counts(&mut self) {
        let completed = self.results.iter().filter(|(_, ok)| *ok).count();
        let failed = self.results.len() - completed;
        self.object.insert(
            "request_counts".into(),
            json!({"total": self.lines.len(), "completed": completed, "failed": failed}),
        );
    }
}

impl BatchApi {
    /// Batch state for this configuration.
    pub(crate) fn new(config: &super::MockConfig) -> BatchApi {
        BatchApi {
            processing: config.batch_processing,
            missing_scope_uploads: config.batch_missing_scope_uploads,
            missing_scope_creates: config.batch_missing_scope_creates,
            fates: config.batch_fates.clone(),
            stalls: config.batch_stalls.clone(),
            stall_for: config.batch_stall_for,
            max_open: config.batch_max_open,
            state: Mutex::new(BatchState::default()),
        }
    }

    /// The counters for [`MockStats`](super::MockStats).
    pub(crate) fn counts(&self) -> BatchCounts {
        self.lock().counts
    }

    /// How long this call of `op` stalls: the first one of a stalled kind does, once.
    fn stall(&self, op: BatchOp) -> Option<Duration> {
        (self.stalls.contains(&op) && self.lock().stalled.insert(op)).then_some(self.stall_for)
    }

    fn lock(&self) -> MutexGuard<'_, BatchState> {
        // The state stays usable after a panic elsewhere: keep serving, as the counters do.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves batch `index` on to where the time says it is, answering lines as it goes.
    fn advance(&self, host: &dyn BatchHost, index: usize) {
        let p = self.processing;
        loop {
            // Decide under the lock, answer lines without it, store under it again.
            let (todo, key) = {
                let mut guard = self.lock();
                let BatchState { files, batches, .. } = &mut *guard;
                let Some(batch) = batches.get_mut(index) else {
                    return;
                };
                let elapsed = batch.started.elapsed();
                let status = batch.status().to_owned();
                match status.as_str() {
                    "validating" if elapsed >= p / 10 => {
                        let content = files
                            .get(batch_str(batch, "input_file_id"))
                            .map(|file| Arc::clone(&file.content));
                        check(batch, content);
                        continue;
                    }
                    "in_progress" => {
                        let total = batch.lines.len();
                        let running = elapsed.saturating_sub(p / 10).as_secs_f64();
                        let span = (p.as_secs_f64() * 0.9).max(f64::EPSILON);
                        let share = (running / span).min(1.0);
                        // Lines are counted in whole numbers; the float only sets the pace.
                        let mut due = ((total as f64 * share).ceil() as usize).min(total);
                        if matches!(batch.fate, BatchFate::Expire | BatchFate::Stall) {
                            due = due.min(total / 2);
                        }
                        let done = batch.results.len();
                        if done >= due {
                            if batch.fate == BatchFate::Expire && elapsed >= p {
                                batch.set_status("expired", "expired_at");
                                finish(files, batch);
                            } else if done == total && elapsed >= p {
                                batch.set_status("finalizing", "finalizing_at");
                                continue;
                            }
                            return;
                        }
                        let todo: Vec<(String, String, Value)> = batch.lines[done..due]
                            .iter()
                            .map(|line| {
                                (line.custom_id.clone(), line.url.clone(), line.body.clone())
                            })
                            .collect();
                        (todo, batch.key.clone())
                    }
                    "finalizing" if elapsed >= p + p / 10 => {
                        batch.set_status("completed", "completed_at");
                        finish(files, batch);
                        return;
                    }
                    "cancelling"
                        if batch
                            .cancelling_since
                            .is_some_and(|since| since.elapsed() >= p / 10) =>
                    {
                        batch.set_status("cancelled", "cancelled_at");
                        finish(files, batch);
                        return;
                    }
                    _ => return,
                }
            };
            let answered: Vec<(String, bool)> = todo
                .into_iter()
                .map(|(custom_id, url, body)| {
                    let (status, body) = host.answer_line(&url, &body, key.as_deref());
                    (output_line(&custom_id, status, body), status == 200)
                })
                .collect();
            let mut state = self.lock();
            if let Some(batch) = state.batches.get_mut(index) {
                // A cancel that came in meanwhile still keeps what was answered.
                batch.results.extend(answered);
                batch.counts();
            }
        }
    }
}

/// Validates a batch's input file: `in_progress` with its lines, or `failed` with the errors.
fn check(batch: &mut MockBatch, content: Option<Arc<Vec<u8>>>) {
    let endpoint = batch_str(batch, "endpoint").to_owned();
    let checked = match (batch.fate, content) {
        (BatchFate::FailValidation, _) => Err(vec![line_error(
            "invalid_request",
            "This line was refused (the mock was told to fail this batch's validation).",
            1,
        )]),
        (
            BatchFate::Complete
            | BatchFate::Expire
            | BatchFate::OutputGone
            | BatchFate::ErrorThenSuccess
            | BatchFate::Stall,
            Some(content),
        ) => validate(&content, &endpoint),
        (
            BatchFate::Complete
            | BatchFate::Expire
            | BatchFate::OutputGone
            | BatchFate::ErrorThenSuccess
            | BatchFate::Stall,
            None,
        ) => Err(vec![line_error(
            "file_not_found",
            "The input file was deleted before validation.",
            0,
        )]),
    };
    match checked {
        Ok(lines) => {
            batch.lines = lines;
            batch.set_status("in_progress", "in_progress_at");
            batch.counts();
        }
        Err(errors) => {
            batch
                .object
                .insert("errors".into(), json!({"object": "list", "data": errors}));
            batch.set_status("failed", "failed_at");
        }
    }
}

/// Writes the output and error files of a batch that has ended, shuffled.
fn finish(files: &mut BTreeMap<String, StoredFile>, batch: &mut MockBatch) {
    batch.counts();
    let mut results = std::mem::take(&mut batch.results);
    fastrand::shuffle(&mut results);
    let batch_id = batch_str(batch, "id").to_owned();
    for (success, field, suffix) in [
        (true, "output_file_id", "output"),
        (false, "error_file_id", "error"),
    ] {
        let mut content = Vec::new();
        for (line, _) in results.iter().filter(|(_, ok)| *ok == success) {
            if success && batch.fate == BatchFate::ErrorThenSuccess {
                content.extend_from_slice(server_error_line(line).as_bytes());
                content.push(b'\n');
            }
            content.extend_from_slice(line.as_bytes());
            content.push(b'\n');
        }
        if content.is_empty() {
            continue;
        }
        let file = stored_file(
            content,
            &format!("{batch_id}_{suffix}.jsonl"),
            "batch_output",
        );
        let id = file.object["id"].as_str().unwrap_or_default().to_owned();
        batch.object.insert(field.into(), json!(id));
        if success && batch.fate == BatchFate::OutputGone {
            continue;
        }
        files.insert(id, file);
    }
    batch.results = results;
}

/// A 500 result line for the `custom_id` of `line` (an output line).
fn server_error_line(line: &str) -> String {
    let custom_id = serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("custom_id").cloned())
        .unwrap_or(Value::Null);
    json!({
        "id": "batch_req_mock_retry",
        "custom_id": custom_id,
        "response": {
            "status_code": 500,
            "request_id": "req_mock_retry",
            "body": {"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}},
        },
        "error": null,
    })
    .to_string()
}

fn batch_str<'b>(batch: &'b MockBatch, field: &str) -> &'b str {
    batch
        .object
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Checks an input file: JSON lines with the batch's endpoint, one model, unique custom ids, at
/// most [`MAX_LINES`].
fn validate(content: &[u8], endpoint: &str) -> Result<Vec<InputLine>, Vec<Value>> {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    let mut model: Option<String> = None;
    let text = String::from_utf8_lossy(content);
    for (n, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let number = n + 1;
        if number > MAX_LINES {
            errors.push(line_error(
                "too_many_requests",
                &format!("The input file has more than {MAX_LINES} requests; split it."),
                number,
            ));
            break;
        }
        let line: InputLine = match serde_json::from_str(raw) {
            Ok(line) => line,
            Err(e) => {
                errors.push(line_error(
                    "invalid_json_line",
                    &format!("This line is not a valid batch request: {e}."),
                    number,
                ));
                continue;
            }
        };
        if line.url != endpoint {
            errors.push(line_error(
                "mismatched_endpoint",
                &format!(
                    "The url {} does not match the batch endpoint {endpoint}.",
                    line.url
                ),
                number,
            ));
        }
        let this_model = line.body.get("model").and_then(Value::as_str).unwrap_or("");
        match &model {
            None => model = Some(this_model.to_owned()),
            Some(first) if first != this_model => errors.push(line_error(
                "mismatched_model",
                &format!("The model {this_model} differs from {first}: a batch takes one model."),
                number,
            )),
            Some(_) => {}
        }
        if !seen.insert(line.custom_id.clone()) {
            errors.push(line_error(
                "duplicate_custom_id",
                &format!("The custom_id {} is used more than once.", line.custom_id),
                number,
            ));
        }
        lines.push(line);
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(line_error(
            "empty_file",
            "The input file has no requests.",
            0,
        ));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

fn line_error(code: &str, message: &str, line: usize) -> Value {
    json!({"code": code, "message": message, "param": null, "line": line})
}

/// One line of an output or error file.
fn output_line(custom_id: &str, status: u16, body: Value) -> String {
    json!({
        "id": format!("batch_req_{:032x}", fastrand::u128(..)),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": super::answer::request_id(), "body": body},
        "error": null,
    })
    .to_string()
}

fn stored_file(content: Vec<u8>, filename: &str, purpose: &str) -> StoredFile {
    let id = format!("file-{:024x}", fastrand::u128(..) >> 32);
    StoredFile {
        object: json!({
            "id": id, "object": "file", "bytes": content.len(), "created_at": unix_now(),
            "filename": filename, "purpose": purpose,
        }),
        content: Arc::new(content),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, url: &str, model: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": url, "body": {"model": model}}).to_string()
    }

    #[test]
    fn a_good_file_validates() {
        let file = [
            line("a", "/v1/chat/completions", "m"),
            line("b", "/v1/chat/completions", "m"),
        ]
        .join("\n");
        let lines = validate(file.as_bytes(), "/v1/chat/completions").unwrap();
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn validation_names_each_bad_line() {
        let file = [
            line("a", "/v1/chat/completions", "m"),
            line("a", "/v1/chat/completions", "m"),
            line("c", "/v1/embeddings", "m"),
            line("d", "/v1/chat/completions", "other"),
            "{not json".to_owned(),
        ]
        .join("\n");
        let errors = validate(file.as_bytes(), "/v1/chat/completions").unwrap_err();
        let codes: Vec<(&str, u64)> = errors
            .iter()
            .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            codes,
            [
                ("duplicate_custom_id", 2),
                ("mismatched_endpoint", 3),
                ("mismatched_model", 4),
                ("invalid_json_line", 5)
            ]
        );
    }

    #[test]
    fn fates_parse_by_name() {
        assert_eq!(BatchFate::from_name("Expire"), Some(BatchFate::Expire));
        assert_eq!(
            BatchFate::from_name("fail_validation"),
            Some(BatchFate::FailValidation)
        );
        assert_eq!(
            BatchFate::from_name("output-gone"),
            Some(BatchFate::OutputGone)
        );
        assert_eq!(BatchFate::from_name("explode"), None);
    }
}
