//! Where a job, a request and an attempt are in their lives.

use super::names::named;

/// The life of a job as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// A runner is (or was, until it crashed) working on it.
    Running,
    /// Every request is done.
    Completed,
    /// A job-level condition stopped dispatch; requests are pending.
    Stopped,
    /// A signal stopped the runner; requests are pending.
    Interrupted,
}

named!(JobState, "job state", {
    Running => "running",
    Completed => "completed",
    Stopped => "stopped",
    Interrupted => "interrupted",
});

/// Where a request is in its life.
///
/// ```text
/// pending ──claim──▶ in_flight ──2xx──────────────▶ succeeded
///    ▲                  │ ├──retryable, budget left─┐
///    │                  │ └──permanent / budget out─▶ failed
///    └──────────────────┴──── retry due, job stop, crash recovery
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Waiting to be sent, possibly not before `next_attempt_at`.
    Pending,
    /// Claimed by a worker; on a crash it becomes an `interrupted` attempt and pending again.
    InFlight,
    /// Done with a 2xx answer. Never sent again.
    Succeeded,
    /// Done without success: a permanent error or an exhausted retry budget.
    Failed,
}

named!(RequestState, "request state", {
    Pending => "pending",
    InFlight => "in_flight",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// What is known about whether the server saw an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The server answered (any status).
    Answered,
    /// The request never left: the server cannot have processed it.
    NotSent,
    /// Sent, then timed out or was cut off: the server may have done (and billed) the work.
    OutcomeUnknown,
    /// The runner died or was aborted while the attempt was in flight.
    Interrupted,
}

named!(AttemptOutcome, "attempt outcome", {
    Answered => "answered",
    NotSent => "not_sent",
    OutcomeUnknown => "outcome_unknown",
    Interrupted => "interrupted",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for state in RequestState::ALL {
            assert_eq!(state.as_str().parse::<RequestState>(), Ok(*state));
        }
        for state in JobState::ALL {
            assert_eq!(state.to_string().parse::<JobState>(), Ok(*state));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<AttemptOutcome>(), Ok(*outcome));
        }
        let e = "done".parse::<RequestState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown request state 'done': expected one of pending, in_flight, succeeded, failed"
        );
    }
}
