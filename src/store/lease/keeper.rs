//! [`LeaseKeeper`]: renews a job's lease from a task while the job runs, and releases it.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{LeaseError, LeaseOwner, RENEW_EVERY, Renewal, release, renew};
use crate::domain::JobId;
use crate::store::db::Job;
use crate::store::{JobStore, StoreError};
use crate::util::clock::now_ms;

/// Keeps a lease renewed while a job runs. Dropping it stops the renewals (the lease then
/// expires); [`LeaseKeeper::finish`] also releases it.
pub struct LeaseKeeper {
    store: JobStore,
    job: JobId,
    name: String,
    me: LeaseOwner,
    stop: CancellationToken,
    task: JoinHandle<Option<String>>,
    /// Stops the task if the keeper is dropped without [`LeaseKeeper::finish`]: a task left
    /// running would keep a store handle, and the store thread would never end.
    _guard: DropGuard,
}

impl LeaseKeeper {
    /// Starts renewing `me`'s lease on `job` every [`RENEW_EVERY`]. If the lease is lost to
    /// another runner, both of `on_lost`'s tokens are cancelled: dispatch stops and requests in
    /// flight are cancelled at once (their results could not be journaled any more).
    pub fn start(store: &JobStore, job: &Job, me: LeaseOwner, on_lost: &OnLost) -> LeaseKeeper {
        Self::start_every(store, job, me, on_lost, RENEW_EVERY)
    }

    /// [`LeaseKeeper::start`] with another renewal period (tests).
    fn start_every(
        store: &JobStore,
        job: &Job,
        me: LeaseOwner,
        on_lost: &OnLost,
        every: Duration,
    ) -> LeaseKeeper {
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_renewed(
            store.clone(),
            job.id,
            me.clone(),
            stop.clone(),
            on_lost.clone(),
            every,
        ));
        LeaseKeeper {
            store: store.clone(),
            job: job.id,
            name: job.name.clone(),
            me,
            _guard: stop.clone().drop_guard(),
            stop,
            task,
        }
    }

    /// Stops renewing and releases the lease.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when another runner took the lease meanwhile; database errors.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.stop.cancel();
        let lost = self.task.await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the lease renewal task failed");
            None
        });
        if let Some(holder) = lost {
            return Err(LeaseError::Lost {
                job: self.name,
                holder,
            }
            .into());
        }
        let (job, me) = (self.job, self.me);
        self.store.call(move |c| release(c, job, &me)).await
    }
}

/// What a run cancels when it loses its job to another runner.
#[derive(Clone, Debug, Default)]
pub struct OnLost {
    /// Stops dispatch.
    pub stop: CancellationToken,
    /// Cancels requests in flight.
    pub abort: CancellationToken,
}

/// The renewal loop; returns the new holder if the lease was lost.
async fn keep_renewed(
    store: JobStore,
    job: JobId,
    me: LeaseOwner,
    stop: CancellationToken,
    on_lost: OnLost,
    every: Duration,
) -> Option<String> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the lease was just taken: skip it.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = ticks.tick() => {}
        }
        let owner = me.clone();
        let renewed = tokio::select! {
            _ = stop.cancelled() => return None,
            renewed = store.call(move |c| renew(c, job, &owner, now_ms())) => renewed,
        };
        match renewed {
            Ok(Renewal::Renewed) => {}
            // Lost(holder): the renewal found another owner. The fence: the renewal's batch found
            // a newer lease epoch. Either way nothing this runner does can be journaled any more:
            // requests in flight are cancelled at once rather than given a grace period.
            Ok(Renewal::Lost(holder)) | Err(StoreError::Lease(LeaseError::Lost { holder, .. })) => {
                tracing::error!(%holder, "another runner took over this job: stopping");
                on_lost.stop.cancel();
                on_lost.abort.cancel();
                return Some(holder);
            }
            Err(e) => {
                // The store refuses writes after a failure; the pool hits the same error and
                // reports it. The lease then lapses or is taken over once this process is gone.
                tracing::debug!(error = %e, "cannot renew the lease");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    use crate::store::lease::tests::{ALIVE, conn_with_job, owner};
    use crate::store::lease::{acquire_with, holder};

    /// Polls `check` (a store query) until it holds, for at most ten seconds.
    async fn eventually(store: &JobStore, what: &str, check: fn(&Connection) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !store.call(move |c| Ok(check(c))).await.expect("query") {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_keeper_renews_releases_and_stops_dispatch_when_the_lease_is_lost() {
        const EVERY: Duration = Duration::from_millis(10);
        let (conn, job) = conn_with_job();
        let me = owner(1, "a");
        // Taken at time 0: expired long ago, until a renewal moves it to now + 30 s.
        acquire_with(&conn, &job, &me, 0, ALIVE).expect("free");
        let (store, thread) = JobStore::start(conn).expect("start");
        let on_lost = OnLost::default();

        let keeper = LeaseKeeper::start_every(&store, &job, me.clone(), &on_lost, EVERY);
        eventually(&store, "a renewal", |c| {
            holder(c, JobId(1))
                .expect("query")
                .is_some_and(|(_, until)| until > now_ms())
        })
        .await;
        keeper.finish().await.expect("kept and released");
        let id = job.id;
        assert_eq!(
            store.call(move |c| holder(c, id)).await.expect("query"),
            None
        );
        assert!(!on_lost.stop.is_cancelled());

        let (again, lease_job) = (me.clone(), job.clone());
        store
            .call(move |c| acquire_with(c, &lease_job, &again, now_ms(), ALIVE))
            .await
            .expect("taken again");
        let keeper = LeaseKeeper::start_every(&store, &job, me, &on_lost, EVERY);
        let thief = owner(2, "b").to_string();
        store
            .call(move |c| {
                c.execute("UPDATE jobs SET lease_owner = ?1", [thief])?;
                Ok(())
            })
            .await
            .expect("steal");
        tokio::time::timeout(Duration::from_secs(10), on_lost.abort.cancelled())
            .await
            .expect("dispatch stops when the lease is lost");
        let err = keeper.finish().await.expect_err("lost");
        assert!(err.to_string().contains("took it over"), "{err}");
        drop(store);
        thread.join().await;
    }
}
