//! Job-level events: what the `events` table records beside the attempts.

use super::names::named;
use super::state::JobState;

/// What happened to a job as a whole, at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A run started ([`JobState::Running`]).
    Running,
    /// A run ended with every request done.
    Completed,
    /// A run ended on a job-level stop; the detail says why.
    Stopped,
    /// A run ended on a signal.
    Interrupted,
    /// The circuit breaker opened: dispatch paused for a cool-down.
    BreakerOpen,
    /// The cool-down ended: one probe request goes out.
    BreakerHalfOpen,
    /// The probe succeeded: dispatch resumed.
    BreakerClosed,
    /// A key is cooling down after auth flaps; traffic moved to the others.
    KeyCooling,
    /// A key was rejected and is not used again in this run.
    KeyQuarantined,
    /// A chunk's batch was created on the server (`--via batch`); the detail names it.
    BatchSubmitted,
    /// A chunk's batch changed status (validating, in progress, finalizing, …, or its end).
    BatchStatus,
    /// The server announced rate limits other than the last it announced; the detail lists
    /// them (`requests 3000/min, tokens 300000/min`), and a resume paces by them from its
    /// first request.
    Limits,
    /// A rate-limit header held a value no limit can be (noted once per header and run).
    HeaderIgnored,
    /// Two keys announced different limits: from then on each key is paced by its own.
    KeyLimits,
    /// A run's pacing, as it ended: what bound it, the limits known, the pool's largest size.
    Pacing,
    /// What a submit estimated its new file would cost, before sending (the detail is the
    /// line it said).
    Estimate,
    /// `--via auto`: a run's plan: the deadline, what direct sending needs, the switch time.
    Plan,
    /// `--via auto`: the switch: open batches cancelled, the rest sent directly.
    Switch,
}

named!(EventKind, "event kind", {
    Running => "running",
    Completed => "completed",
    Stopped => "stopped",
    Interrupted => "interrupted",
    BreakerOpen => "breaker_open",
    BreakerHalfOpen => "breaker_half_open",
    BreakerClosed => "breaker_closed",
    KeyCooling => "key_cooling",
    KeyQuarantined => "key_quarantined",
    BatchSubmitted => "batch_submitted",
    BatchStatus => "batch_status",
    Limits => "limits",
    HeaderIgnored => "header_ignored",
    KeyLimits => "key_limits",
    Pacing => "pacing",
    Estimate => "estimate",
    Plan => "plan",
    Switch => "switch",
});

impl EventKind {
    /// Whether the event is about one key of the pool.
    pub fn is_key(self) -> bool {
        match self {
            EventKind::KeyCooling | EventKind::KeyQuarantined => true,
            EventKind::Running
            | EventKind::Completed
            | EventKind::Stopped
            | EventKind::Interrupted
            | EventKind::BreakerOpen
            | EventKind::BreakerHalfOpen
            | EventKind::BreakerClosed
            | EventKind::BatchSubmitted
            | EventKind::BatchStatus
            | EventKind::Limits
            | EventKind::HeaderIgnored
            | EventKind::KeyLimits
            | EventKind::Pacing
            | EventKind::Estimate
            | EventKind::Plan
            | EventKind::Switch => false,
        }
    }

    /// Whether the event ends a run of the job.
    pub fn ends_run(self) -> bool {
        match self {
            EventKind::Completed | EventKind::Stopped | EventKind::Interrupted => true,
            EventKind::Running
            | EventKind::BreakerOpen
            | EventKind::BreakerHalfOpen
            | EventKind::BreakerClosed
            | EventKind::KeyCooling
            | EventKind::KeyQuarantined
            | EventKind::BatchSubmitted
            | EventKind::BatchStatus
            | EventKind::Limits
            | EventKind::HeaderIgnored
            | EventKind::KeyLimits
            | EventKind::Pacing
            | EventKind::Estimate
            | EventKind::Plan
            | EventKind::Switch => false,
        }
    }
}

impl From<JobState> for EventKind {
    /// A job's change of state is journaled as the event of the same name.
    fn from(state: JobState) -> EventKind {
        match state {
            JobState::Running => EventKind::Running,
            JobState::Completed => EventKind::Completed,
            JobState::Stopped => EventKind::Stopped,
            JobState::Interrupted => EventKind::Interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_are_events_of_the_same_name() {
        for state in JobState::ALL {
            assert_eq!(EventKind::from(*state).as_str(), state.as_str());
        }
        let ends: Vec<EventKind> = EventKind::ALL
            .iter()
            .copied()
            .filter(|k| k.ends_run())
            .collect();
        assert_eq!(
            ends,
            [
                EventKind::Completed,
                EventKind::Stopped,
                EventKind::Interrupted
            ]
        );
    }
}
