//! `--via auto --deadline`: the lowest price that still meets the deadline.
//!
//! The job's batchable requests go through the hosted Batch API (half the price) until the
//! **switch time**: the deadline, less the time the requests not yet done need when sent
//! directly at the pace known (`--rpm`, else the limits the server announced, else
//! [`ASSUMED_RPM`]), less the switch margin (`--switch-margin`: the time a cancel takes to end,
//! up to OpenAI's 10 minutes, and a margin). At the switch time the open batches are cancelled,
//! what they finished is journaled, and the rest is sent directly; a batch that completes before
//! it ends the plan early. The plan is made again at every run from the journal, so a resume
//! (after a crash, a kill -9, a new `--deadline`) picks up where the job is.

use std::time::Duration;

use std::sync::Arc;

use crate::domain::{EventKind, JobId};
use crate::engine::batch::Mode;
use crate::engine::config::ConfigError;
use crate::engine::job::JobRun;
use crate::engine::pool::PoolExit;
use crate::engine::progress::Tally;
use crate::engine::rate_limit::Limits;
use crate::store::{StoreError, batches, db, journal};
use crate::util::clock::{now_ms, utc};

/// The direct pace assumed when none is known: a low tier's requests per minute, so that the
/// switch comes early rather than late.
pub const ASSUMED_RPM: u64 = 500;

/// The plan of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// When the job must be done, unix ms.
    pub deadline: i64,
    /// Requests not done yet.
    pub remaining: u64,
    /// The direct pace, requests per minute, and where it comes from.
    pub rpm: (u64, String),
    /// What sending them directly needs, ms.
    pub direct_ms: i64,
    /// When batches stop and the rest goes directly, unix ms.
    pub switch_at: i64,
}

impl Plan {
    /// The plan for `remaining` requests at `rpm`, with `margin_ms` kept before `deadline`.
    pub fn new(deadline: i64, remaining: u64, rpm: (u64, String), margin_ms: u64) -> Plan {
        let per_minute = rpm.0.max(1) as f64;
        let direct_ms = (remaining as f64 / per_minute * 60_000.0).ceil() as i64;
        let margin = i64::try_from(margin_ms).unwrap_or(i64::MAX);
        let switch_at = deadline.saturating_sub(direct_ms).saturating_sub(margin);
        Plan {
            deadline,
            remaining,
            rpm,
            direct_ms,
            switch_at,
        }
    }

    /// Whether batches have no time left at `now`.
    pub fn switched(&self, now: i64) -> bool {
        now >= self.switch_at
    }

    /// Whether even direct sending cannot meet the deadline from `now`.
    pub fn too_late(&self, now: i64) -> bool {
        now.saturating_add(self.direct_ms) > self.deadline
    }

    /// What the plan is, in one line (journaled, and shown by `status`).
    pub fn describe(&self) -> String {
        format!(
            "deadline {} UTC; {} requests to do need ≈ {} directly at {}/min ({}); batches until {} UTC, then directly",
            at(self.deadline),
            self.remaining,
            human(self.direct_ms),
            self.rpm.0,
            self.rpm.1,
            at(self.switch_at),
        )
    }
}

/// The direct pace: `--rpm`, else the requests limit the server last announced to this job or
/// to another one sent to it (journaled), else [`ASSUMED_RPM`].
///
/// # Errors
/// Store errors.
pub fn direct_rpm(
    conn: &rusqlite::Connection,
    job: JobId,
    rpm: Option<u32>,
    base_url: &str,
) -> Result<(u64, String), StoreError> {
    if let Some(rpm) = rpm {
        return Ok((u64::from(rpm), "--rpm".to_owned()));
    }
    let own = journal::last_event_detail(conn, job, crate::domain::EventKind::Limits)?;
    let announced = match own {
        Some(detail) => Some(detail),
        None => journal::last_limits_at(conn, base_url, None)?.map(|(_, detail)| detail),
    };
    match announced
        .map(|d| Limits::parse(&d))
        .and_then(|l| l.requests)
    {
        Some(rpm) => Ok((rpm, "the limit the server announced".to_owned())),
        None => Ok((
            ASSUMED_RPM,
            "assumed: no limit known, give --rpm".to_owned(),
        )),
    }
}

/// Requests of the job not done yet (pending, in flight or in a batch).
///
/// # Errors
/// Store errors.
pub fn remaining(conn: &rusqlite::Connection, job: JobId) -> Result<u64, StoreError> {
    let counts = db::counts(conn, job)?;
    Ok(counts
        .total
        .saturating_sub(counts.succeeded + counts.failed))
}

fn at(ms: i64) -> String {
    utc(ms, "[year]-[month]-[day] [hour]:[minute]:[second]")
}

/// `ms` for people, to the second above: `1m 5s`.
pub fn human(ms: i64) -> String {
    let rounded = Duration::from_secs(u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000));
    humantime::format_duration(rounded).to_string()
}

impl JobRun<'_> {
    /// `--via auto`: batches until the plan's switch time, then what they left directly (see
    /// the module's header).
    pub(super) async fn auto(&self, tally: Arc<Tally>) -> anyhow::Result<PoolExit> {
        let Some(deadline) = self.settings.batch.deadline_ms else {
            return Err(ConfigError::NoDeadline.into());
        };
        let (id, rpm, base_url) = (
            self.job.id,
            self.settings.rpm,
            self.settings.base_url.clone(),
        );
        let (remaining, pace) = self
            .store
            .call(move |c| Ok((remaining(c, id)?, direct_rpm(c, id, rpm, &base_url)?)))
            .await?;
        let plan = Plan::new(
            deadline,
            remaining,
            pace,
            self.settings.batch.switch_margin_ms,
        );
        let (job, now, described) = (&self.job.name, now_ms(), plan.describe());
        crate::say!("{job}: --via auto: {described}");
        self.journal_event(EventKind::Plan, described).await?;
        if plan.switched(now) {
            match plan.too_late(now) {
                true => crate::say!(
                    "{job}: the deadline cannot be met even directly (the rest needs ≈ {}): sending directly at once, to finish as early as possible",
                    human(plan.direct_ms)
                ),
                false => {
                    crate::say!("{job}: no time is left for batches: sending directly at once")
                }
            }
        } else {
            let ran = self
                .batches_until(Mode::Run, Arc::clone(&tally), Some(plan.switch_at))
                .await?;
            if let Some(exit) = ran {
                return Ok(exit);
            }
        }
        let open = self
            .store
            .call(move |c| batches::open_chunks(c, id))
            .await?
            .len();
        self.journal_event(
            EventKind::Switch,
            format!("{open} batches open cancelled; the rest goes directly"),
        )
        .await?;
        if open > 0 {
            crate::say!(
                "{job}: switch time: cancelling the {open} open batches; what they finished is kept, the rest goes directly"
            );
            match self.batches(Mode::Settle, Arc::clone(&tally)).await? {
                PoolExit::Drained => {}
                exit @ (PoolExit::Stopped(_) | PoolExit::OverBudget(_) | PoolExit::Interrupted) => {
                    return Ok(exit);
                }
            }
        }
        Ok(self.pool(tally).await?.run(self.shutdown).await?)
    }

    /// Appends a job-level event.
    async fn journal_event(&self, kind: EventKind, detail: String) -> anyhow::Result<()> {
        let (id, now) = (self.job.id, now_ms());
        self.store
            .call(move |c| db::record_event(c, id, kind, Some(&detail), now))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_leaves_room_for_the_rest_directly_and_the_margin() {
        let now = 1_000_000;
        let deadline = now + 3_600_000;
        // 30,000 requests at 3,000 a minute: 10 minutes; 10 minutes of margin.
        let plan = Plan::new(deadline, 30_000, (3_000, "--rpm".into()), 600_000);
        assert_eq!(plan.direct_ms, 600_000);
        assert_eq!(plan.switch_at, deadline - 1_200_000);
        assert!(!plan.switched(now));
        assert!(plan.switched(deadline - 1_200_000));
        assert!(!plan.too_late(now));
        // An hour of direct sending does not fit in the hour left.
        let late = Plan::new(deadline, 180_001, (3_000, "--rpm".into()), 600_000);
        assert!(late.switched(now) && late.too_late(now));
    }
}
