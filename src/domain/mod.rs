//! The domain's vocabulary, shared by every layer: ids, the request state machine, the error
//! taxonomy's classes, job events, and the records an attempt leaves (an answer's body among
//! them, in memory or spooled: [`ResponseBody`]). Each vocabulary is one enum, converted to and
//! from text only where it meets SQL or output (`names`).

mod class;
mod event;
mod exit;
pub(crate) mod names;
pub mod price;
mod state;
pub mod tokens;

pub use class::{AttemptClass, Class, StopCause};
pub use event::EventKind;
pub use exit::Exit;
pub use names::UnknownName;
pub use price::{BadPrice, Price, PriceOverride};
pub use state::{AttemptOutcome, ChunkState, JobState, RequestState};

use crate::util::spool::{Held, Spooled};

/// A job's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub i64);

/// A request's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub i64);

/// A request claimed for sending: everything a worker needs.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Row id.
    pub id: RequestId,
    /// custom_id or derived key.
    pub key: String,
    /// HTTP method: `POST`, `GET` or `DELETE` (the last two send no body).
    pub method: String,
    /// Path joined to the base URL.
    pub url: String,
    /// JSON body, sent as is.
    pub body: String,
    /// The line's own headers (JSON object text), merged over the job's when sent.
    pub headers: Option<String>,
    /// Attempts journaled before this one.
    pub attempts: u32,
    /// Of those, per retried class, since the budget was last reset.
    pub spent: Spent,
}

impl Claimed {
    /// The bytes it holds while it waits to be sent: body, headers, URL and key.
    pub fn bytes(&self) -> usize {
        self.body.len()
            + self.url.len()
            + self.key.len()
            + self.headers.as_ref().map_or(0, String::len)
    }
}

/// Attempts a request spent per retried class: what its retry budgets are measured against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    /// `transient` attempts.
    pub transient: u32,
    /// `auth_transient` attempts.
    pub auth_transient: u32,
    /// `rate_limited` attempts.
    pub rate_limited: u32,
    /// `invalid_response` attempts.
    pub invalid_response: u32,
}

impl Spent {
    /// Attempts spent on `class` so far (0 for classes without a budget).
    pub fn of(&self, class: Class) -> u32 {
        match class {
            Class::Transient => self.transient,
            Class::AuthTransient => self.auth_transient,
            Class::RateLimited => self.rate_limited,
            Class::InvalidResponse => self.invalid_response,
            Class::Succeeded | Class::RequestFailed | Class::JobStop(_) => 0,
        }
    }
}

impl Usage {
    /// The tokens billed, for [`price::PriceTable::usage_cost`].
    pub fn billed(&self) -> price::UsageTokens {
        price::UsageTokens {
            prompt: self.prompt_tokens,
            cached: self.cached_tokens,
            completion: self.completion_tokens,
        }
    }
}

/// Token usage and model read from a success body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// `model` of the answer.
    pub model: Option<String>,
    /// `prompt_tokens` or `input_tokens`.
    pub prompt_tokens: Option<i64>,
    /// `completion_tokens` or `output_tokens`.
    pub completion_tokens: Option<i64>,
    /// `total_tokens`.
    pub total_tokens: Option<i64>,
    /// The prompt tokens read from the prompt cache (`prompt_tokens_details.cached_tokens`
    /// or `input_tokens_details.cached_tokens`), billed at the cached-input price.
    pub cached_tokens: Option<i64>,
}

/// Where a request goes after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done, successfully.
    Succeeded,
    /// Done, failed with this attempt's error.
    Failed,
    /// Pending again, not before this time (unix ms).
    RetryAt(i64),
    /// Pending again at once; the job is stopping and keeps it for a resume.
    Requeue,
}

/// An answer's body as the journal keeps it (its `response`): text in memory, or a spool file
/// when the answer budget could not hold it. Either way it is dropped once journaled, which
/// gives its memory back to the budget or deletes its file.
#[derive(Debug)]
pub enum ResponseBody {
    /// Text in memory, with the share of the answer budget it holds.
    Text {
        /// The text.
        text: String,
        /// Its share of the budget.
        held: Held,
    },
    /// A spool file, the key redacted already: journaled piece by piece as text, each invalid
    /// UTF-8 sequence replaced, as `String::from_utf8_lossy` does for text in memory.
    Spooled(Spooled),
}

impl ResponseBody {
    /// The text of a body in memory; `None` when it is spooled.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ResponseBody::Text { text, .. } => Some(text),
            ResponseBody::Spooled(_) => None,
        }
    }

    /// The bytes of its text.
    pub fn text_len(&self) -> u64 {
        match self {
            ResponseBody::Text { text, .. } => text.len() as u64,
            ResponseBody::Spooled(spooled) => spooled.text_len(),
        }
    }
}

impl From<String> for ResponseBody {
    /// Text holding no budget (a streamed answer's assembly, tests).
    fn from(text: String) -> ResponseBody {
        ResponseBody::Text {
            text,
            held: Held::none(),
        }
    }
}

impl From<&str> for ResponseBody {
    fn from(text: &str) -> ResponseBody {
        ResponseBody::from(text.to_owned())
    }
}

/// One finished attempt and its request's new state: written in one transaction.
#[derive(Debug)]
pub struct Completion {
    /// The request.
    pub request: RequestId,
    /// Its job.
    pub job: JobId,
    /// 1-based attempt number.
    pub number: u32,
    /// Unix ms when sending started.
    pub started_at: i64,
    /// Unix ms when the answer (or failure) arrived.
    pub finished_at: i64,
    /// Whether the server saw it.
    pub outcome: AttemptOutcome,
    /// HTTP status, when answered.
    pub http_status: Option<u16>,
    /// The taxonomy's verdict.
    pub class: Class,
    /// `error.code`, or a transport error's kind.
    pub error_code: Option<String>,
    /// `error.message`, or a transport error's text.
    pub error_message: Option<String>,
    /// `x-request-id` of the answer.
    pub x_request_id: Option<String>,
    /// Which key sent it: a label or `sk-…last4`, never the key.
    pub key_fingerprint: Option<String>,
    /// The answer's body (success or error), when there is one.
    pub response: Option<ResponseBody>,
    /// Usage, for successes.
    pub usage: Usage,
    /// What happens to the request now.
    pub disposition: Disposition,
}

impl Completion {
    /// Milliseconds from send to answer.
    pub fn latency_ms(&self) -> i64 {
        self.finished_at - self.started_at
    }
}

/// Requests of a job by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Every request of the job.
    pub total: u64,
    /// Waiting to be sent (first time or retry).
    pub pending: u64,
    /// Pending after at least one attempt: waiting for a retry.
    pub retrying: u64,
    /// Claimed by a worker.
    pub in_flight: u64,
    /// Waiting in a batch on the server (`--via batch`).
    #[serde(default)]
    pub batched: u64,
    /// Done with success.
    pub succeeded: u64,
    /// Done without success.
    pub failed: u64,
}

impl Counts {
    /// Requests that need no more work.
    pub fn done(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Requests that still need work: pending, in flight or waiting in a batch.
    pub fn open(&self) -> u64 {
        self.pending + self.in_flight + self.batched
    }
}
