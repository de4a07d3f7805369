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
///
/// pending ──cut into a chunk (--via batch)──▶ batched ──its batch's result──▶ (as above)
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
    /// In a chunk sent through the hosted Batch API (`--via batch`), waiting for its batch's
    /// result. A crash leaves it there: the batch goes on running on the server.
    Batched,
}

named!(RequestState, "request state", {
    Pending => "pending",
    InFlight => "in_flight",
    Succeeded => "succeeded",
    Failed => "failed",
    Batched => "batched",
});

/// Where a chunk of a `--via batch` job is. Each step that calls the server is recorded before
/// the call (`uploading`, `creating`) and after it, so that a crash at any point is resumed
/// without a second batch for the chunk.
///
/// ```text
/// cut ─▶ uploading ─▶ uploaded ─▶ creating ─▶ submitted ─▶ ended ─▶ imported
///  │        (crash: upload again)   (crash: find it by metadata, else create)
///  └─▶ dropped (its requests went back to pending before it reached the server)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkState {
    /// Its requests are chosen and its file's hash recorded; nothing sent yet.
    Cut,
    /// The input file is being uploaded.
    Uploading,
    /// The input file is on the server.
    Uploaded,
    /// The batch is being created: on restart, look for it before creating one.
    Creating,
    /// The batch exists and is not finished.
    Submitted,
    /// The batch finished (completed, failed, expired or cancelled); its results are not all
    /// imported yet.
    Ended,
    /// Every line's result is journaled.
    Imported,
    /// Given up before any batch existed; its requests are pending again.
    Dropped,
}

named!(ChunkState, "chunk state", {
    Cut => "cut",
    Uploading => "uploading",
    Uploaded => "uploaded",
    Creating => "creating",
    Submitted => "submitted",
    Ended => "ended",
    Imported => "imported",
    Dropped => "dropped",
});

impl ChunkState {
    /// Whether the chunk needs no more work.
    pub fn is_final(self) -> bool {
        match self {
            ChunkState::Imported | ChunkState::Dropped => true,
            ChunkState::Cut
            | ChunkState::Uploading
            | ChunkState::Uploaded
            | ChunkState::Creating
            | ChunkState::Submitted
            | ChunkState::Ended => false,
        }
    }

    /// Whether a batch may exist on the server for this chunk and is not known to be finished.
    pub fn may_run_on_server(self) -> bool {
        match self {
            ChunkState::Creating | ChunkState::Submitted => true,
            ChunkState::Cut
            | ChunkState::Uploading
            | ChunkState::Uploaded
            | ChunkState::Ended
            | ChunkState::Imported
            | ChunkState::Dropped => false,
        }
    }
}

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
        for state in ChunkState::ALL {
            assert_eq!(state.as_str().parse::<ChunkState>(), Ok(*state));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(outcome.as_str().parse::<AttemptOutcome>(), Ok(*outcome));
        }
        let e = "done".parse::<RequestState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown request state 'done': expected one of pending, in_flight, succeeded, failed, batched"
        );
    }
}
