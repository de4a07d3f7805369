//! How a command ends, as the process exit code (README, "Exit codes").

/// How a command ended, as the process exit code (see the README, "Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: every request succeeded (or the command had nothing to send).
    Success,
    /// 3: the job finished and some requests failed permanently.
    SomeFailed,
    /// 4: a job-level condition (bad key, quota, …) stopped it; requests are pending.
    Stopped,
    /// 5: the job stopped at its spending cap (`--max-cost`); requests are pending.
    BudgetReached,
    /// 130: interrupted by a signal; resumable.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::SomeFailed => 3,
            Exit::Stopped => 4,
            Exit::BudgetReached => 5,
            Exit::Interrupted => 130,
        }
    }
}
