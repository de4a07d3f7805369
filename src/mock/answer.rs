//! An answer as the mock decided it, before it becomes an HTTP response.
//!
//! Keeping the decision as data lets the server count it (status, success) and swap it (quota
//! exhausted meanwhile) before anything is written to the socket.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Content type of every well-formed answer.
const JSON: &str = "application/json";

/// The body of an answer.
#[derive(Debug)]
pub(crate) enum Body {
    /// Serialized JSON, sent as `application/json`.
    Json(String),
    /// Anything else (malformed bodies, `RBAC: access denied`), with its own content type.
    Text {
        content_type: &'static str,
        text: String,
    },
}

/// Status, body and extra headers of one answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Body,
    /// Extra headers such as `retry-after-ms`: built by the mock, or asked for by a request's
    /// `mock_headers` (any name and value HTTP allows; others are dropped).
    pub(crate) headers: Vec<(String, String)>,
}

impl Answer {
    /// A JSON answer.
    pub(crate) fn json(status: StatusCode, body: String) -> Self {
        Self {
            status,
            body: Body::Json(body),
            headers: Vec::new(),
        }
    }

    /// A non-JSON answer with the given content type.
    pub(crate) fn text(status: StatusCode, content_type: &'static str, text: String) -> Self {
        Self {
            status,
            body: Body::Text { content_type, text },
            headers: Vec::new(),
        }
    }

    /// Adds an extra header.
    pub(crate) fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    /// A 200 with a well-formed JSON body: the only answers counted as successes.
    pub(crate) fn is_success(&self) -> bool {
        match self.body {
            Body::Json(_) => self.status == StatusCode::OK,
            Body::Text { .. } => false,
        }
    }

    /// Turns the answer into a response with the headers every OpenAI answer carries.
    pub(crate) fn into_response(self, request_id: &str, processing: Duration) -> Response {
        let (content_type, text) = match self.body {
            Body::Json(text) => (JSON, text),
            Body::Text { content_type, text } => (content_type, text),
        };
        let mut response = (self.status, text).into_response();
        let headers = response.headers_mut();
        // Content types are string constants of this module tree, all valid header values.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let common = [
            ("x-request-id", request_id.to_owned()),
            ("openai-processing-ms", processing.as_millis().to_string()),
            ("openai-organization", "org-mock".to_owned()),
            ("openai-version", "2020-10-01".to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value));
        for (name, value) in common.into_iter().chain(self.headers) {
            // A name or value HTTP does not allow (only possible through `mock_headers`) is
            // dropped rather than a panic.
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// A fresh `req_<32 hex>` id. Random rather than derived, like OpenAI's, so retries differ.
pub(crate) fn request_id() -> String {
    format!("req_{:032x}", fastrand::u128(..))
}
