//! Sending one attempt: one `reqwest::Client` (connection pool, timeouts, auth headers) per key.
//! Answers are read within `--max-response-bytes` and the process's answer budget: a body the
//! budget cannot hold is spooled to a private file (see [`super::body::read_answer`]).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::body::{self, Body, BodyError, Spooling};
use super::classify::TransportFailure;
use super::redact::Redactor;
use super::sse::{Assembled, StreamAssembler, StreamError, is_event_stream};
use crate::util::spool::Budget;
use crate::util::sync::lock;

/// Bytes of a streamed answer kept raw beside the assembled body, so that a stream that cannot be
/// read still shows the user what came back.
const STREAM_HEAD_BYTES: usize = 1024;

pub use super::key::ApiKey;

/// How the key is sent.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI and every compatible server).
    #[default]
    Bearer,
    /// `api-key: KEY` (Azure OpenAI).
    Azure,
}

impl AuthStyle {
    /// The style a base URL implies when none is asked for: Azure for `*.openai.azure.com`.
    pub fn for_url(base_url: &str) -> AuthStyle {
        let azure = reqwest::Url::parse(base_url).ok().is_some_and(|url| {
            url.host_str()
                .is_some_and(|host| host.to_ascii_lowercase().ends_with(".openai.azure.com"))
        });
        if azure {
            AuthStyle::Azure
        } else {
            AuthStyle::Bearer
        }
    }
}

/// Connection settings of a job.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Whole-request timeout (connect, send, wait, read).
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    pub project: Option<String>,
    /// The longest answer body read (`--max-response-bytes`; the bytes of an event stream,
    /// counted as they arrive); a longer one is [`Sent::TooLarge`].
    pub max_body_bytes: usize,
    /// How the key is sent.
    pub auth: AuthStyle,
    /// `api-version` query parameter of every request (Azure OpenAI).
    pub api_version: Option<String>,
    /// The job's extra headers (`--header`), checked, lower-case names.
    pub headers: Vec<(String, String)>,
}

/// An HTTP answer, any status.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body: in memory, or spooled when the answer budget could not hold it; of a streamed
    /// answer only its first bytes (see [`Answer::stream`]).
    pub body: Body,
    /// A 2xx `text/event-stream` answer, read through a [`StreamAssembler`] as it arrived.
    pub stream: Option<Streamed>,
}

/// How a streamed answer (`"stream": true`) ended.
#[derive(Debug)]
pub enum Streamed {
    /// It reached its end marker (or an error event): one body, as if it had not been streamed.
    Assembled(Assembled),
    /// It stopped before its end marker: the server may have finished the request.
    Cut {
        /// What was assembled before the cut (`Value::Null` when nothing was).
        partial: Value,
        /// Why it stopped, for the journal.
        message: String,
    },
    /// The bytes are not a streamed OpenAI answer.
    Unreadable {
        /// What is wrong with them.
        message: String,
    },
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What sending produced.
#[derive(Debug)]
// One per attempt, moved once from the client to the attempt's reading: boxing the answer
// would add an allocation per request to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Sent {
    /// The server answered.
    Answer(Answer),
    /// The server answered with a body over [`ClientSettings::max_body_bytes`]: reading
    /// stopped there and the connection was dropped, so memory stays bounded.
    TooLarge {
        /// Status code (the request was answered, and a 2xx may be billed).
        status: u16,
        /// Response headers.
        headers: HeaderMap,
        /// The limit, in bytes.
        cap: usize,
        /// The announced `Content-Length`, or the bytes received when reading stopped.
        at_least: u64,
    },
    /// No answer.
    Failed {
        /// How it failed.
        failure: TransportFailure,
        /// The error chain, for the journal.
        message: String,
    },
}

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A header value (org, project, key) has characters HTTP does not allow.
    #[error("{name} contains characters that cannot be sent in an HTTP header")]
    BadHeader {
        /// Which setting.
        name: &'static str,
    },
    /// reqwest could not build the client (TLS setup).
    #[error("cannot set up the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Sends attempts for one key.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base_url: String,
    key_fingerprint: Option<String>,
    max_body_bytes: usize,
    api_version: Option<String>,
    /// The job's headers; the client sends them by default, a line's own replace them.
    headers: Vec<(String, String)>,
    /// The last path sent to and its parsed URL: a job sends to one path (a few at most), and
    /// parsing the URL string again for every request shows in profiles.
    last_url: Mutex<Option<(String, reqwest::Url)>>,
    /// Finds the key in what the server says, to put its fingerprint there instead.
    redactor: Option<Redactor>,
    /// The answer budget bodies in memory take from.
    budget: &'static Budget,
    /// Where bodies the budget cannot hold are spooled.
    spool_dir: PathBuf,
}

impl ApiClient {
    /// Builds the client and its connection pool.
    ///
    /// # Errors
    /// [`ClientError`] for unusable header values or TLS setup failure.
    pub fn new(settings: &ClientSettings, key: Option<&ApiKey>) -> Result<ApiClient, ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = key {
            let (name, text) = match settings.auth {
                AuthStyle::Bearer => (AUTHORIZATION, format!("Bearer {}", key.secret())),
                AuthStyle::Azure => (HeaderName::from_static("api-key"), key.secret().to_owned()),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| ClientError::BadHeader {
                name: "the API key",
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        for (name, value, setting) in [
            (
                "openai-organization",
                &settings.organization,
                "OPENAI_ORG_ID",
            ),
            ("openai-project", &settings.project, "OPENAI_PROJECT_ID"),
        ] {
            if let Some(value) = value {
                let value = HeaderValue::from_str(value)
                    .map_err(|_| ClientError::BadHeader { name: setting })?;
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        // The job's own headers go with every request: checked when they were read, so one
        // that no longer parses is left out, as it always was.
        for (name, value) in &settings.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let http = reqwest::Client::builder()
            // reqwest would send a request again after some protocol refusals, unseen by the
            // journal; every attempt is the runner's to make and record. It also spares a copy
            // of every request made in case of such a retry.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            // A redirect is an answer, never followed: following it would send the body, the
            // job's headers and (with `--auth azure`) the key to wherever the server points, as
            // an attempt the journal never sees. A 3xx fails the request (the taxonomy's row
            // 22), with its status and `Location` in the journal.
            .redirect(reqwest::redirect::Policy::none())
            // A header line the HTTP parser refuses (a control character in a value) is left
            // out of the answer instead of failing it: the answer was given, and may be billed.
            .http1_ignore_invalid_headers_in_responses(true)
            .default_headers(headers)
            .user_agent(concat!("runner/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(ApiClient {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            key_fingerprint: key.map(|k| k.fingerprint().to_owned()),
            redactor: key.and_then(Redactor::new),
            max_body_bytes: settings.max_body_bytes,
            api_version: settings.api_version.clone(),
            headers: settings.headers.clone(),
            last_url: Mutex::new(None),
            budget: Budget::global(),
            spool_dir: std::env::temp_dir(),
        })
    }

    /// This client with its answers under `budget` and spooled into `dir` (tests; a client
    /// otherwise uses [`Budget::global`] and the temporary directory).
    #[must_use]
    pub fn with_spooling(mut self, budget: &'static Budget, dir: PathBuf) -> ApiClient {
        self.budget = budget;
        self.spool_dir = dir;
        self
    }

    /// Puts the key's fingerprint wherever `text` (something the server said) holds the key.
    pub fn redact(&self, text: &mut String) {
        let Some(redactor) = &self.redactor else {
            return;
        };
        if let Some(bytes) = redactor.replaced(text.as_bytes()) {
            // The key is ASCII, so the text stays UTF-8.
            *text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }

    /// [`ApiClient::redact`] for bytes not yet read as text.
    pub fn redact_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        match &self.redactor {
            Some(redactor) => redactor.replaced(&bytes).unwrap_or(bytes),
            None => bytes,
        }
    }

    /// [`ApiClient::redact_bytes`] for a body. A spooled body was redacted as it was written.
    pub fn redact_body(&self, body: Body) -> Body {
        match (&self.redactor, body) {
            (Some(redactor), Body::Memory { bytes, held }) => Body::Memory {
                bytes: redactor.replaced(&bytes).unwrap_or(bytes),
                held,
            },
            (_, body) => body,
        }
    }

    /// The fingerprint of the key this client sends, if any.
    pub fn key_fingerprint(&self) -> Option<&str> {
        self.key_fingerprint.as_deref()
    }

    /// The full URL for a request path, without doubling `/v1` when both carry it, with the
    /// `api-version` query parameter when one is set.
    pub fn url_for(&self, path: &str) -> String {
        let url = join_url(&self.base_url, path);
        let Some(version) = &self.api_version else {
            return url;
        };
        // The setting wins over an `api-version` the base URL or the line's path carries.
        let (head, query) = url.split_once('?').unwrap_or((&url, ""));
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("api-version="))
            .collect();
        let ours = format!("api-version={version}");
        params.push(&ours);
        format!("{head}?{}", params.join("&"))
    }

    /// [`ApiClient::url_for`] parsed, from the one-entry cache when `path` is the last one.
    fn parsed_url(&self, path: &str) -> Option<reqwest::Url> {
        if let Some((cached, url)) = lock(&self.last_url).as_ref()
            && cached == path
        {
            return Some(url.clone());
        }
        let url = reqwest::Url::parse(&self.url_for(path)).ok()?;
        *lock(&self.last_url) = Some((path.to_owned(), url.clone()));
        Some(url)
    }

    /// POSTs one body and reads the answer, at most `max_body_bytes` of it. Never fails: a
    /// transport error is a value.
    pub async fn post(&self, path: &str, body: String) -> Sent {
        self.send(&Method::POST, path, Some(body), None).await
    }

    /// Sends one request and reads the whole answer; a 2xx event stream is assembled as it
    /// arrives. `body` is sent as is (`None`: no body, as for `GET` and `DELETE`); the job's
    /// headers go with it, and the line's own (`line_headers`, checked JSON object text) over
    /// them. Never fails: a transport error is a value.
    pub async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<String>,
        line_headers: Option<&str>,
    ) -> Sent {
        let mut request = match self.parsed_url(path) {
            Some(url) => self.http.request(method.clone(), url),
            // reqwest says why the URL is unusable when the request is sent.
            None => self.http.request(method.clone(), self.url_for(path)),
        };
        for (name, value) in super::headers::over_job(&self.headers, line_headers, path) {
            // Checked when they were read; one that no longer parses is skipped, not sent.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                request = request.header(name, value);
            }
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(&e),
        };
        let status = response.status().as_u16();
        let streamed = (200..300).contains(&status)
            && is_event_stream(
                response
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok()),
            );
        if streamed {
            let mut response = response;
            let headers = std::mem::take(response.headers_mut());
            return match read_stream(response, self.max_body_bytes).await {
                Ok((head, stream)) => Sent::Answer(Answer {
                    status,
                    headers,
                    body: head.into(),
                    stream: Some(stream),
                }),
                Err(at_least) => Sent::TooLarge {
                    status,
                    headers,
                    cap: self.max_body_bytes,
                    at_least,
                },
            };
        }
        self.read_whole(response).await
    }

    /// Reads a plain (not streamed) answer, at most `max_body_bytes` of it, spooling it when the
    /// answer budget cannot hold it. A spooled body has the key redacted already.
    async fn read_whole(&self, mut response: reqwest::Response) -> Sent {
        let status = response.status().as_u16();
        // Taken, not cloned: reading the body needs none of them (its length comes from the
        // framing), and a clone of every header per answer showed in profiles.
        let headers = std::mem::take(response.headers_mut());
        let spooling = Spooling {
            budget: self.budget,
            dir: &self.spool_dir,
            redactor: self.redactor.as_ref(),
        };
        match body::read_answer(response, self.max_body_bytes, spooling).await {
            Ok(body) => Sent::Answer(Answer {
                status,
                headers,
                body,
                stream: None,
            }),
            Err(e) => self.unread(status, headers, e),
        }
    }

    /// A request to `path` with the job's headers, for calls that read their answer themselves
    /// (the Files and Batches calls of [`super::batch`]).
    pub(super) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, self.url_for(path));
        for (name, value) in super::headers::over_job(&self.headers, None, path) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                request = request.header(name, value);
            }
        }
        request
    }

    /// The longest answer body read.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// GETs a path (used by the mock server's tests and by `doctor`-style probes). The answer
    /// is read whole into memory (never spooled), at most `max_body_bytes` of it: its body is
    /// always [`Body::Memory`].
    pub async fn get(&self, path: &str) -> Sent {
        let mut response = match self.http.get(self.url_for(path)).send().await {
            Ok(response) => response,
            Err(e) => return failed(&e),
        };
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        match body::read_capped(response, self.max_body_bytes).await {
            Ok(bytes) => Sent::Answer(Answer {
                status,
                headers,
                body: self.redact_bytes(bytes).into(),
                stream: None,
            }),
            Err(e) => self.unread(status, headers, e),
        }
    }

    /// What an answer whose body could not be read amounts to.
    fn unread(&self, status: u16, headers: HeaderMap, e: BodyError) -> Sent {
        match e {
            BodyError::TooLarge { cap, at_least } => Sent::TooLarge {
                status,
                headers,
                cap,
                at_least,
            },
            // The body could not be kept: the answer is lost as if the connection had broken.
            e @ BodyError::Spool { .. } => {
                tracing::warn!(error = %e, "an answer could not be spooled");
                Sent::Failed {
                    failure: TransportFailure::Other,
                    message: e.to_string(),
                }
            }
            // The status line arrived, so the request was sent: the outcome is unknown.
            BodyError::Transport(e) => Sent::Failed {
                failure: if e.is_timeout() {
                    TransportFailure::Timeout
                } else {
                    TransportFailure::Other
                },
                message: error_chain(&e),
            },
        }
    }
}

/// Reads an event stream chunk by chunk into a [`StreamAssembler`]: memory holds the answer being
/// built, never the raw stream. Returns the stream's first bytes and how it ended.
///
/// # Errors
/// The bytes received when the stream outgrew `cap` (`--max-response-bytes`, counted on the
/// stream as it arrives, as for a plain body): reading stops there and the connection is
/// dropped, so a stream that never ends cannot grow the answer without bound.
async fn read_stream(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, Streamed), u64> {
    let mut assembler = StreamAssembler::new();
    let mut head: Vec<u8> = Vec::new();
    let mut received: u64 = 0;
    let broken = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                if received > cap as u64 {
                    return Err(received);
                }
                if head.len() < STREAM_HEAD_BYTES {
                    let take = chunk.len().min(STREAM_HEAD_BYTES - head.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                if let Err(e) = assembler.push(&chunk) {
                    let message = e.to_string();
                    return Ok((head, Streamed::Unreadable { message }));
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(error_chain(&e)),
        }
    };
    let streamed = match assembler.finish() {
        Ok(assembled) => Streamed::Assembled(assembled),
        Err(StreamError::Cut { partial }) => Streamed::Cut {
            partial,
            message: match broken {
                Some(cause) => format!("the event stream broke before its end marker: {cause}"),
                None => "the event stream ended before its end marker (no data: [DONE])".to_owned(),
            },
        },
        Err(
            e @ (StreamError::TooLong { .. }
            | StreamError::Json { .. }
            | StreamError::Unexpected { .. }),
        ) => Streamed::Unreadable {
            message: e.to_string(),
        },
    };
    Ok((head, streamed))
}

fn failed(e: &reqwest::Error) -> Sent {
    Sent::Failed {
        failure: transport_failure(e),
        message: error_chain(e),
    }
}

/// How a request that got no answer failed: never connected, timed out, or cut off.
pub(super) fn transport_failure(e: &reqwest::Error) -> TransportFailure {
    if e.is_connect() {
        TransportFailure::Connect
    } else if e.is_timeout() {
        TransportFailure::Timeout
    } else {
        TransportFailure::Other
    }
}

/// `e` and its sources, joined: reqwest's own message alone hides the cause.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Joins a base URL and a request path. Batch lines carry `/v1/...` and base URLs usually end
/// in `/v1`: the overlap is written once.
pub fn join_url(base: &str, path: &str) -> String {
    // A query on the base URL (`…/openai/v1?api-version=…`) goes after the joined path, not
    // inside it.
    let (base, base_query) = match base.split_once('?') {
        Some((base, query)) => (base, Some(query).filter(|q| !q.is_empty())),
        None => (base, None),
    };
    let base = base.trim_end_matches('/');
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    // Azure OpenAI's classic endpoints (`…/openai/deployments/NAME/chat/completions`) take the
    // OpenAI path without its `/v1`, like a base URL that ends with `/v1` does.
    let v1_in_base = base.ends_with("/v1") || base.contains("/openai/deployments/");
    let joined = if v1_in_base && (path.starts_with("/v1/") || path == "/v1") {
        format!("{base}{}", &path[3..])
    } else {
        format!("{base}{path}")
    };
    match base_query {
        Some(query) if joined.contains('?') => format!("{joined}&{query}"),
        Some(query) => format!("{joined}?{query}"),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "https://api.openai.com/v1",
        "/v1/chat/completions",
        "https://api.openai.com/v1/chat/completions"
    )]
    #[case(
        "https://api.openai.com/v1/",
        "/v1/embeddings",
        "https://api.openai.com/v1/embeddings"
    )]
    #[case(
        "http://localhost:8000",
        "/v1/chat/completions",
        "http://localhost:8000/v1/chat/completions"
    )]
    #[case(
        "http://localhost:8000/v1",
        "/chat/completions",
        "http://localhost:8000/v1/chat/completions"
    )]
    #[case("http://h/openai/v1", "v1/responses", "http://h/openai/v1/responses")]
    #[case(
        "http://h/openai/v1?api-version=2024-10-21",
        "/v1/chat/completions",
        "http://h/openai/v1/chat/completions?api-version=2024-10-21"
    )]
    #[case(
        "http://h/v1/?a=1",
        "/v1/embeddings?b=2",
        "http://h/v1/embeddings?b=2&a=1"
    )]
    #[case("http://h/v1?", "/v1/models", "http://h/v1/models")]
    #[case(
        "https://r.openai.azure.com/openai/deployments/mydep",
        "/v1/chat/completions",
        "https://r.openai.azure.com/openai/deployments/mydep/chat/completions"
    )]
    #[case(
        "https://r.openai.azure.com/openai/deployments/mydep?api-version=2024-10-21",
        "/chat/completions",
        "https://r.openai.azure.com/openai/deployments/mydep/chat/completions?api-version=2024-10-21"
    )]
    #[case(
        "https://r.openai.azure.com/openai",
        "/deployments/mydep/chat/completions",
        "https://r.openai.azure.com/openai/deployments/mydep/chat/completions"
    )]
    fn joins_urls(#[case] base: &str, #[case] path: &str, #[case] expected: &str) {
        assert_eq!(join_url(base, path), expected);
    }

    #[test]
    fn the_api_version_setting_wins_over_the_base_urls() {
        let settings = ClientSettings {
            base_url: "http://h/openai/deployments/d?api-version=2024-06-01&x=1".into(),
            timeout: std::time::Duration::from_secs(1),
            connect_timeout: std::time::Duration::from_secs(1),
            organization: None,
            project: None,
            max_body_bytes: super::body::DEFAULT_MAX_BODY_BYTES,
            auth: AuthStyle::Azure,
            api_version: Some("2024-10-21".into()),
            headers: Vec::new(),
        };
        let client = ApiClient::new(&settings, None).expect("client");
        assert_eq!(
            client.url_for("/v1/chat/completions"),
            "http://h/openai/deployments/d/chat/completions?x=1&api-version=2024-10-21"
        );
        assert_eq!(
            client.url_for("/v1/chat/completions?api-version=1&y=2"),
            "http://h/openai/deployments/d/chat/completions?y=2&x=1&api-version=2024-10-21"
        );
    }

    #[test]
    fn a_clients_debug_output_never_shows_its_key() {
        let key = ApiKey::new("sk-proj-SECRET-debug-check-0000000000");
        let settings = ClientSettings {
            base_url: "http://127.0.0.1:9/v1".into(),
            timeout: std::time::Duration::from_secs(1),
            connect_timeout: std::time::Duration::from_secs(1),
            organization: Some("org-x".into()),
            project: Some("proj-x".into()),
            max_body_bytes: super::body::DEFAULT_MAX_BODY_BYTES,
            auth: AuthStyle::Bearer,
            api_version: None,
            headers: Vec::new(),
        };
        let client = ApiClient::new(&settings, Some(&key)).expect("client");
        let debug = format!("{client:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
    }

    #[rstest]
    #[case("sk-proj-abcdefghijklmnopWXYZ", "sk-proj-…WXYZ")]
    #[case("sk-svcacct-0123456789abcd", "sk-svcacct-…abcd")]
    #[case("sk-0123456789abcdefghij", "sk-…ghij")]
    #[case("local-token-123456", "…3456")]
    #[case("sk-short", "sk-…")]
    fn fingerprints_never_show_the_key(#[case] key: &str, #[case] expected: &str) {
        let key = ApiKey::new(key);
        assert_eq!(key.fingerprint(), expected);
        assert!(!format!("{key:?}").contains(key.secret()));
    }
}
