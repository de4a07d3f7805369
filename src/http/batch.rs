//! The hosted Batch API's Files and Batches calls (`OPENAI-FACTS.md`, "Hosted Batch API"):
//! upload an input file, create a batch, poll it, cancel it, download its output and error files
//! (streamed into a writer), delete files. Reading the files' lines is [`BatchResult`].
//!
//! Every call either returns the typed object or a [`BatchApiError`] carrying what the taxonomy
//! needs ([`BatchApiError::class`]): a failed Files or Batches call is classified like a failed
//! request, so a 401 `missing_scope` on upload is `auth_transient`, not a dead key.

use std::collections::BTreeMap;

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body;
use super::classify::{ApiError, Class, Observation, Payload, TransportFailure, classify};
use super::client::{ApiClient, error_chain, transport_failure};

pub use super::batch_output::{BatchResult, BatchResultError, LineError};

/// A File object (`POST /v1/files`, `GET /v1/files/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// The name it was uploaded under.
    #[serde(default)]
    pub filename: String,
    /// `batch` for inputs, `batch_output` for results.
    pub purpose: String,
}

/// Where a batch is. Every status OpenAI documents; an unknown one fails to parse rather than
/// being guessed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// The input file is being checked.
    Validating,
    /// The input file was refused: see [`Batch::errors`].
    Failed,
    /// Lines are being answered.
    InProgress,
    /// The output files are being written.
    Finalizing,
    /// Done: every line is in the output or the error file.
    Completed,
    /// Not done within the completion window: finished lines are in the files, the rest in none.
    Expired,
    /// A cancel was asked for.
    Cancelling,
    /// Cancelled: finished lines are in the files.
    Cancelled,
}

impl BatchStatus {
    /// The status as the API names it (what serde reads and writes).
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the batch will not change any more (its files, if any, are final).
    pub fn is_terminal(self) -> bool {
        match self {
            BatchStatus::Failed
            | BatchStatus::Completed
            | BatchStatus::Expired
            | BatchStatus::Cancelled => true,
            BatchStatus::Validating
            | BatchStatus::InProgress
            | BatchStatus::Finalizing
            | BatchStatus::Cancelling => false,
        }
    }
}

/// `request_counts` of a batch. Only shown, never trusted: a count that is missing, `null` or
/// negative reads as 0 rather than making the batch unreadable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Lines in the input file.
    #[serde(default, deserialize_with = "count")]
    pub total: u64,
    /// Lines answered successfully.
    #[serde(default, deserialize_with = "count")]
    pub completed: u64,
    /// Lines that failed.
    #[serde(default, deserialize_with = "count")]
    pub failed: u64,
}

/// A count as a server may send it: missing, `null`, negative or a float read as 0 or cut.
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(d)?;
    Ok(value
        .and_then(|n| n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0))
}

/// A field the server may send as `null`: its default then, as when it is missing.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One validation error of a `failed` batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLineError {
    /// e.g. `mismatched_model`.
    #[serde(default)]
    pub code: Option<String>,
    /// What is wrong.
    #[serde(default)]
    pub message: Option<String>,
    /// The parameter at fault, if named.
    #[serde(default)]
    pub param: Option<String>,
    /// The input file line (1-based), if one is at fault.
    #[serde(default)]
    pub line: Option<u64>,
}

/// `errors` of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrors {
    /// The errors.
    #[serde(default)]
    pub data: Vec<BatchLineError>,
}

/// A Batch object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// `batch_…`.
    pub id: String,
    /// Where it is.
    pub status: BatchStatus,
    /// e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The uploaded input file.
    pub input_file_id: String,
    /// `24h`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_window: String,
    /// Successful lines, once the batch has ended with any.
    #[serde(default)]
    pub output_file_id: Option<String>,
    /// Failed lines, once the batch has ended with any.
    #[serde(default)]
    pub error_file_id: Option<String>,
    /// Validation errors of a `failed` batch.
    #[serde(default)]
    pub errors: Option<BatchErrors>,
    /// Progress (servers other than OpenAI's send `null` before it is known).
    #[serde(default, deserialize_with = "null_as_default")]
    pub request_counts: RequestCounts,
    /// Unix seconds, as are the other `*_at` fields.
    pub created_at: i64,
    /// When validation passed.
    #[serde(default)]
    pub in_progress_at: Option<i64>,
    /// When the completion window ends.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When finalizing began.
    #[serde(default)]
    pub finalizing_at: Option<i64>,
    /// When it completed.
    #[serde(default)]
    pub completed_at: Option<i64>,
    /// When validation failed.
    #[serde(default)]
    pub failed_at: Option<i64>,
    /// When it expired.
    #[serde(default)]
    pub expired_at: Option<i64>,
    /// When a cancel was asked for.
    #[serde(default)]
    pub cancelling_at: Option<i64>,
    /// When it was cancelled.
    #[serde(default)]
    pub cancelled_at: Option<i64>,
    /// The metadata given at creation.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A page of `GET /v1/batches`, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchList {
    /// The batches.
    pub data: Vec<Batch>,
    /// Whether older batches follow: ask again with `after = last_id`.
    #[serde(default)]
    pub has_more: bool,
    /// Id of the first batch of the page.
    #[serde(default)]
    pub first_id: Option<String>,
    /// Id of the last batch of the page.
    #[serde(default)]
    pub last_id: Option<String>,
}

/// A Files or Batches call that did not produce its object.
#[derive(Debug, thiserror::Error)]
pub enum BatchApiError {
    /// The server answered with an error status.
    #[error("{operation} was answered {status}: {}", error.message.as_deref().unwrap_or("no message"))]
    Api {
        /// Which call, e.g. `uploading the batch file`.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// The parsed error body.
        error: ApiError,
        /// The `x-should-retry` header, when `true` or `false`.
        should_retry: Option<bool>,
    },
    /// No answer (connect error, timeout, broken body).
    #[error("{operation} got no answer: {message}; check the base URL and the network")]
    Transport {
        /// Which call.
        operation: &'static str,
        /// How it failed.
        failure: TransportFailure,
        /// The error chain.
        message: String,
    },
    /// A 2xx answer that is not the expected object.
    #[error(
        "{operation} was answered {status} with a body that is not the expected object: {message}"
    )]
    Decode {
        /// Which call.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// What serde said.
        message: String,
    },
    /// Writing a downloaded file into its sink failed.
    #[error("writing the downloaded file {file_id} failed: {source}; check the disk")]
    Sink {
        /// The file being downloaded.
        file_id: String,
        /// The write error.
        source: std::io::Error,
    },
}

impl BatchApiError {
    /// What the failure means, in the taxonomy of [`classify`]; `None` for a local write error,
    /// which says nothing about the API.
    pub fn class(&self) -> Option<Class> {
        match self {
            BatchApiError::Api {
                status,
                error,
                should_retry,
                ..
            } => Some(classify(Observation::Answer {
                status: *status,
                error,
                payload: Payload::Error,
                should_retry: *should_retry,
            })),
            BatchApiError::Transport { failure, .. } => {
                Some(classify(Observation::Transport(*failure)))
            }
            BatchApiError::Decode { .. } => Some(Class::InvalidResponse),
            BatchApiError::Sink { .. } => None,
        }
    }
}

/// The `completion_window` the hosted Batch API accepts.
pub const COMPLETION_WINDOW: &str = "24h";

impl ApiClient {
    /// `POST /v1/files` with `purpose=batch`: uploads an input file (JSONL).
    ///
    /// # Errors
    /// [`BatchApiError`] when the upload is refused or not answered.
    pub async fn upload_batch_file(
        &self,
        bytes: Vec<u8>,
        filename: &str,
    ) -> Result<FileObject, BatchApiError> {
        let (content_type, form) = multipart_form(&bytes, filename);
        let request = self
            .request(Method::POST, "/v1/files")
            .header(CONTENT_TYPE, content_type)
            .body(form);
        self.call("uploading the batch file", request).await
    }

    /// `POST /v1/files` with `purpose=batch`, the file's `len` bytes coming from `file` as they
    /// are made (never whole in memory). A stream that ends early or fails aborts the upload.
    ///
    /// # Errors
    /// [`BatchApiError`] when the upload is refused or not answered.
    pub async fn upload_batch_stream<S>(
        &self,
        file: S,
        len: u64,
        filename: &str,
    ) -> Result<FileObject, BatchApiError>
    where
        S: futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
    {
        let boundary = format!("runner-{:032x}", fastrand::u128(..));
        let (head, tail) = form_parts(&boundary, filename);
        let length = head.len() as u64 + len + tail.len() as u64;
        use futures::StreamExt as _;
        let body = futures::stream::iter([Ok(head)])
            .chain(file)
            .chain(futures::stream::iter([Ok(tail)]));
        let request = self
            .request(Method::POST, "/v1/files")
            .header(
                CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(body));
        self.call("uploading the batch file", request).await
    }

    /// `POST /v1/batches` over an uploaded file, with the 24h window.
    ///
    /// # Errors
    /// [`BatchApiError`] when creation is refused or not answered.
    pub async fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Batch, BatchApiError> {
        let body = serde_json::json!({
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
            "metadata": metadata,
        });
        let request = self
            .request(Method::POST, "/v1/batches")
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.call("creating the batch", request).await
    }

    /// `GET /v1/batches/{id}`: one poll.
    ///
    /// # Errors
    /// [`BatchApiError`] when the poll fails.
    pub async fn retrieve_batch(&self, id: &str) -> Result<Batch, BatchApiError> {
        let request = self.request(Method::GET, &format!("/v1/batches/{id}"));
        self.call("polling the batch", request).await
    }

    /// `GET /v1/batches?limit=&after=`: a page, newest first.
    ///
    /// # Errors
    /// [`BatchApiError`] when listing fails.
    pub async fn list_batches(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<BatchList, BatchApiError> {
        let path = match after {
            Some(after) => format!("/v1/batches?limit={limit}&after={after}"),
            None => format!("/v1/batches?limit={limit}"),
        };
        self.call("listing batches", self.request(Method::GET, &path))
            .await
    }

    /// `POST /v1/batches/{id}/cancel`: the batch goes `cancelling`, then `cancelled`.
    ///
    /// # Errors
    /// [`BatchApiError`] when the cancel is refused (e.g. 409 for a batch that has ended).
    pub async fn cancel_batch(&self, id: &str) -> Result<Batch, BatchApiError> {
        let request = self.request(Method::POST, &format!("/v1/batches/{id}/cancel"));
        self.call("cancelling the batch", request).await
    }

    /// `DELETE /v1/files/{id}`.
    ///
    /// # Errors
    /// [`BatchApiError`] when deleting fails.
    pub async fn delete_file(&self, id: &str) -> Result<(), BatchApiError> {
        let request = self.request(Method::DELETE, &format!("/v1/files/{id}"));
        self.call::<Value>("deleting the file", request)
            .await
            .map(drop)
    }

    /// `GET /v1/files/{id}/content`, written chunk by chunk into `sink` (never whole in
    /// memory). Returns the bytes written.
    ///
    /// # Errors
    /// [`BatchApiError`] when the download fails or `sink` cannot be written; the sink may then
    /// hold part of the file.
    pub async fn download_file<W: AsyncWrite + Unpin>(
        &self,
        id: &str,
        sink: &mut W,
    ) -> Result<u64, BatchApiError> {
        const OPERATION: &str = "downloading the file";
        let request = self.request(Method::GET, &format!("/v1/files/{id}/content"));
        let mut response = self.answered(OPERATION, request).await?;
        let mut written = 0u64;
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| transport(OPERATION, &e))?;
            let Some(chunk) = chunk else { break };
            let sink_error = |source| BatchApiError::Sink {
                file_id: id.to_owned(),
                source,
            };
            sink.write_all(&chunk).await.map_err(sink_error)?;
            written += chunk.len() as u64;
        }
        sink.flush().await.map_err(|source| BatchApiError::Sink {
            file_id: id.to_owned(),
            source,
        })?;
        Ok(written)
    }

    /// Sends `request` and reads its JSON answer as `T`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, BatchApiError> {
        let response = self.answered(operation, request).await?;
        let status = response.status().as_u16();
        let body = body::read_capped(response, self.max_body_bytes())
            .await
            .map_err(|e| BatchApiError::Transport {
                operation,
                failure: TransportFailure::Other,
                message: e.to_string(),
            })?;
        let body = self.redact_bytes(body);
        serde_json::from_slice(&body).map_err(|e| BatchApiError::Decode {
            operation,
            status,
            message: e.to_string(),
        })
    }

    /// Sends `request`; a 2xx response is returned unread, anything else becomes an error.
    async fn answered(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BatchApiError> {
        let response = request.send().await.map_err(|e| transport(operation, &e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let should_retry = response
            .headers()
            .get("x-should-retry")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<bool>().ok());
        // An error body is small; read a bounded amount of it, and whatever arrives is enough.
        let body = self.redact_bytes(
            body::read_capped(response, ERROR_BODY_BYTES)
                .await
                .unwrap_or_default(),
        );
        Err(BatchApiError::Api {
            operation,
            status,
            error: ApiError::parse(&body),
            should_retry,
        })
    }
}

/// The most of an error answer's body read.
const ERROR_BODY_BYTES: usize = 64 * 1024;

fn transport(operation: &'static str, e: &reqwest::Error) -> BatchApiError {
    BatchApiError::Transport {
        operation,
        failure: transport_failure(e),
        message: error_chain(e),
    }
}

/// A `multipart/form-data` body with `purpose=batch` and the file, and its content type.
///
/// Built by hand (RFC 7578) rather than with reqwest's `multipart` feature: two fixed fields do
/// not justify the extra dependencies. The boundary is random and checked not to occur in the
/// file.
fn multipart_form(bytes: &[u8], filename: &str) -> (String, Vec<u8>) {
    let boundary = loop {
        let candidate = format!("runner-{:032x}", fastrand::u128(..));
        let delimiter = format!("--{candidate}");
        if !bytes
            .windows(delimiter.len())
            .any(|window| window == delimiter.as_bytes())
        {
            break candidate;
        }
    };
    let (head, tail) = form_parts(&boundary, filename);
    let mut form = Vec::with_capacity(head.len() + bytes.len() + tail.len());
    form.extend_from_slice(&head);
    form.extend_from_slice(bytes);
    form.extend_from_slice(&tail);
    (format!("multipart/form-data; boundary={boundary}"), form)
}

/// What comes before and after the file's bytes in the form: the `purpose` field and the
/// file part's header, then the closing delimiter. A random 128-bit boundary does not occur in
/// a file by chance.
fn form_parts(boundary: &str, filename: &str) -> (Vec<u8>, Vec<u8>) {
    let filename: String = filename
        .chars()
        .filter(|c| *c != '"' && *c != '\r' && *c != '\n')
        .collect();
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    (head.into_bytes(), tail.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts are only shown: a server's `null`, negative or fractional counts (and a `null`
    /// completion window) leave the batch readable.
    #[test]
    fn a_batch_with_null_or_odd_counts_is_read() {
        let batch = |counts: Value, window: Value| -> Batch {
            serde_json::from_value(serde_json::json!({
                "id": "batch_1", "status": "in_progress", "endpoint": "/v1/chat/completions",
                "input_file_id": "file-1", "completion_window": window, "created_at": 1,
                "request_counts": counts,
            }))
            .expect("readable")
        };
        assert_eq!(
            batch(Value::Null, Value::Null).request_counts,
            RequestCounts::default()
        );
        let odd = batch(
            serde_json::json!({"total": 5, "completed": -1, "failed": 2.0}),
            Value::from("24h"),
        );
        assert_eq!(
            odd.request_counts,
            RequestCounts {
                total: 5,
                completed: 0,
                failed: 2
            }
        );
        let partial = batch(serde_json::json!({"total": 5, "failed": null}), Value::Null);
        assert_eq!(partial.request_counts.total, 5);
        assert_eq!(partial.completion_window, "");
    }

    #[test]
    fn every_status_parses_and_knows_if_it_is_final() {
        let all = [
            ("validating", false),
            ("failed", true),
            ("in_progress", false),
            ("finalizing", false),
            ("completed", true),
            ("expired", true),
            ("cancelling", false),
            ("cancelled", true),
        ];
        for (name, terminal) in all {
            let status: BatchStatus = serde_json::from_value(Value::from(name)).unwrap();
            assert_eq!(status.is_terminal(), terminal, "{name}");
            assert_eq!(status.as_str(), name, "as_str names it as serde does");
        }
    }

    #[test]
    fn a_missing_scope_on_a_batch_call_is_auth_transient() {
        let body = br#"{"error":{"message":"Missing scopes: api.files.write","type":"invalid_request_error","param":null,"code":"missing_scope"}}"#;
        let error = BatchApiError::Api {
            operation: "uploading the batch file",
            status: 401,
            error: ApiError::parse(body),
            should_retry: None,
        };
        assert_eq!(error.class(), Some(Class::AuthTransient));
    }

    #[test]
    fn the_form_carries_purpose_and_file() {
        let (content_type, form) = multipart_form(b"{\"a\":1}\n", "in.jsonl");
        let boundary = content_type.split("boundary=").nth(1).unwrap();
        let text = String::from_utf8(form).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"purpose\"\r\n\r\nbatch\r\n"));
        assert!(text.contains("filename=\"in.jsonl\""));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
    }
}
