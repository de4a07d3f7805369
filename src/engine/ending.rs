//! How a run of a job ended: the job's new state, the exit code, and the closing line.

use crate::domain::{Counts, Exit, JobState};
use crate::engine::pool::PoolExit;
use crate::util::text::printable;

/// How a run ended: the job's new state, the exit code, and what to tell the user.
pub(crate) struct Ending {
    pub(crate) state: JobState,
    pub(crate) reason: Option<String>,
    pub(crate) exit: Exit,
    pub(crate) label: &'static str,
}

impl Ending {
    pub(crate) fn of(exit: &PoolExit, counts: &Counts) -> Ending {
        let ending = |state, reason, exit, label| Ending {
            state,
            reason,
            exit,
            label,
        };
        match exit {
            // Drained, yet requests are left (another runner's doing, or a bug): never call
            // such a job completed.
            PoolExit::Drained if counts.open() > 0 => ending(
                JobState::Stopped,
                Some(format!(
                    "{} requests are still pending, in flight or in a batch: `runner resume` sends them",
                    counts.open()
                )),
                Exit::Stopped,
                "stopped",
            ),
            PoolExit::Drained if counts.failed > 0 => ending(
                JobState::Completed,
                None,
                Exit::SomeFailed,
                "finished with failures",
            ),
            PoolExit::Drained => ending(JobState::Completed, None, Exit::Success, "completed"),
            PoolExit::Stopped(reason) => ending(
                JobState::Stopped,
                Some(reason.clone()),
                Exit::Stopped,
                "stopped",
            ),
            PoolExit::OverBudget(reason) => ending(
                JobState::Stopped,
                Some(reason.clone()),
                Exit::BudgetReached,
                "stopped at the spending cap",
            ),
            PoolExit::Interrupted => ending(
                JobState::Interrupted,
                None,
                Exit::Interrupted,
                "interrupted",
            ),
        }
    }

    /// How a `runner cancel` ended: its batches settled, the job stopped with what is left
    /// pending (or completed, when nothing is).
    pub(crate) fn of_cancel(exit: &PoolExit, counts: &Counts) -> Ending {
        match exit {
            PoolExit::Drained if counts.open() > 0 => Ending {
                state: JobState::Stopped,
                reason: Some(format!(
                    "its batches were cancelled (`runner cancel`): `runner resume` sends the {} requests left",
                    counts.open()
                )),
                exit: Exit::Success,
                label: "cancelled",
            },
            PoolExit::Drained
            | PoolExit::Stopped(_)
            | PoolExit::OverBudget(_)
            | PoolExit::Interrupted => Ending::of(exit, counts),
        }
    }

    /// The closing line on stderr, when there is something to say.
    pub(crate) fn tell(&self, job: &str, counts: &Counts) {
        match (self.exit, &self.reason) {
            (Exit::SomeFailed, _) => crate::say!(
                "{job}: {} requests failed for good: `runner export --job {job}` shows why; `runner status` sums it up",
                counts.failed
            ),
            (Exit::Stopped | Exit::BudgetReached, Some(reason)) => crate::say!(
                "{job}: stopped with {} requests pending: {}",
                counts.open(),
                printable(reason)
            ),
            (Exit::Interrupted, _) => crate::say!(
                "{job}: interrupted with {} requests pending: `runner resume --job {job}` continues",
                counts.open()
            ),
            (Exit::Success, Some(reason)) => crate::say!("{job}: {}", printable(reason)),
            (Exit::Success | Exit::Stopped | Exit::BudgetReached, None) => {}
        }
        if counts.succeeded + counts.failed > 0 {
            crate::say!(
                "{job}: next: `runner export --job {job} --format csv --output {job}-results.csv` · `runner status --job {job}` (with --db as given here)"
            );
        }
    }
}
