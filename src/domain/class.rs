//! The error taxonomy's vocabulary: what one attempt's result means ([`Class`], the verdict of
//! [`crate::http::classify::classify`]), why a verdict stops a whole job ([`StopCause`]), and the
//! class an attempt is journaled and counted under ([`AttemptClass`]).

use super::names::named;

/// Why an answer stops the whole job: nothing will succeed until a person acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopCause {
    /// 401 that is not the intermittent flap (`invalid_api_key`): this key is wrong or revoked.
    /// With other usable keys, only this key is set aside.
    KeyRejected,
    /// 403 that is not the scope flap (region, model access): this key (its project) may not do
    /// this. Like [`StopCause::KeyRejected`], with other usable keys only this key is set aside.
    Forbidden,
    /// 429 `insufficient_quota`: billing.
    Quota,
}

impl StopCause {
    /// What to tell the user to fix, before "then run `runner resume`".
    pub fn advice(self) -> &'static str {
        match self {
            StopCause::KeyRejected => {
                "authentication failed: check OPENAI_API_KEY, OPENAI_PROJECT_ID and OPENAI_ORG_ID"
            }
            StopCause::Forbidden => {
                "access is forbidden: check the project's model access and region"
            }
            StopCause::Quota => "the account is out of quota: check the plan and billing details",
        }
    }
}

/// What an attempt's result means for its request and for the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A 2xx answer with a body that parses.
    Succeeded,
    /// Worth retrying with backoff: connection errors, timeouts, a cut stream, 408, 409, 5xx, a
    /// 2xx carrying an error the server may not repeat.
    Transient,
    /// The intermittent 401 of the April 2026 incident ("Missing scopes", "RBAC: access denied"):
    /// the same request succeeds later, so it is requeued, never failed fast.
    AuthTransient,
    /// 429 `rate_limit_exceeded`: wait as the server says.
    RateLimited,
    /// This request is wrong (400, 404, 422, other 4xx, 429 "Request too large"): record it and go on.
    RequestFailed,
    /// A 2xx whose body is neither JSON nor a complete event stream: sent once more (a proxy may
    /// have mangled it), then failed with the body's first bytes as its message.
    InvalidResponse,
    /// Nothing will succeed until a person acts: stop dispatching and keep every unsent request
    /// pending.
    JobStop(StopCause),
}

impl Class {
    /// The class this verdict is journaled and counted under.
    pub fn journaled(self) -> AttemptClass {
        match self {
            Class::Succeeded => AttemptClass::Succeeded,
            Class::Transient => AttemptClass::Transient,
            Class::AuthTransient => AttemptClass::AuthTransient,
            Class::RateLimited => AttemptClass::RateLimited,
            Class::RequestFailed => AttemptClass::RequestFailed,
            Class::InvalidResponse => AttemptClass::InvalidResponse,
            Class::JobStop(_) => AttemptClass::JobStop,
        }
    }

    /// Whether another attempt of the same request can succeed.
    pub fn is_retryable(self) -> bool {
        self.journaled().is_retryable()
    }
}

/// The class an attempt (or a failed request) is journaled under: a verdict of the taxonomy, or
/// one of the two classes that are not verdicts: a line that never became a request, and an
/// attempt cut off by a crash or abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttemptClass {
    /// A 2xx answer that parsed.
    Succeeded,
    /// Connection errors, timeouts, cut streams, 5xx, 408/409.
    Transient,
    /// The intermittent 401 ("Missing scopes", "RBAC: access denied").
    AuthTransient,
    /// 429 `rate_limit_exceeded`.
    RateLimited,
    /// This request is wrong (4xx).
    RequestFailed,
    /// A 2xx whose body is neither JSON nor a complete event stream.
    InvalidResponse,
    /// Invalid key, 403, quota.
    JobStop,
    /// A line of the input that could not be read as a request (`--skip-invalid`): a failed
    /// request with no attempt.
    InvalidInput,
    /// Cut off by a crash or abort: no verdict.
    Interrupted,
}

named!(AttemptClass, "class", {
    Succeeded => "succeeded",
    Transient => "transient",
    AuthTransient => "auth_transient",
    RateLimited => "rate_limited",
    RequestFailed => "request_failed",
    InvalidResponse => "invalid_response",
    JobStop => "job_stop",
    InvalidInput => "invalid_input",
    Interrupted => "interrupted",
});

impl AttemptClass {
    /// The classes an attempt can be counted under, in chart order (stacked bottom-up).
    /// `invalid_input` is a request's class, never an attempt's.
    pub const ATTEMPTS: [AttemptClass; 8] = [
        AttemptClass::Succeeded,
        AttemptClass::Transient,
        AttemptClass::AuthTransient,
        AttemptClass::RateLimited,
        AttemptClass::RequestFailed,
        AttemptClass::InvalidResponse,
        AttemptClass::JobStop,
        AttemptClass::Interrupted,
    ];

    /// Whether another attempt of the same request can succeed.
    pub fn is_retryable(self) -> bool {
        match self {
            AttemptClass::Transient
            | AttemptClass::AuthTransient
            | AttemptClass::RateLimited
            | AttemptClass::InvalidResponse => true,
            AttemptClass::Succeeded
            | AttemptClass::RequestFailed
            | AttemptClass::JobStop
            | AttemptClass::InvalidInput
            | AttemptClass::Interrupted => false,
        }
    }

    /// Whether an attempt of this class got a verdict that is not success: what the error
    /// share counts. Interrupted attempts have no verdict and count neither way.
    pub fn is_error(self) -> bool {
        match self {
            AttemptClass::Transient
            | AttemptClass::AuthTransient
            | AttemptClass::RateLimited
            | AttemptClass::RequestFailed
            | AttemptClass::InvalidResponse
            | AttemptClass::JobStop
            | AttemptClass::InvalidInput => true,
            AttemptClass::Succeeded | AttemptClass::Interrupted => false,
        }
    }

    /// Position in [`AttemptClass::ALL`], for per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for class in AttemptClass::ALL {
            assert_eq!(class.as_str().parse::<AttemptClass>(), Ok(*class));
            assert_eq!(AttemptClass::ALL[class.index()], *class);
        }
        assert!("nonsense".parse::<AttemptClass>().is_err());
    }

    #[test]
    fn only_transient_kinds_retry() {
        let retryable: Vec<AttemptClass> = AttemptClass::ALL
            .iter()
            .copied()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                AttemptClass::Transient,
                AttemptClass::AuthTransient,
                AttemptClass::RateLimited,
                AttemptClass::InvalidResponse,
            ]
        );
        for cause in [
            StopCause::KeyRejected,
            StopCause::Forbidden,
            StopCause::Quota,
        ] {
            assert!(!Class::JobStop(cause).is_retryable());
            assert_eq!(Class::JobStop(cause).journaled(), AttemptClass::JobStop);
        }
    }
}
