//! A job at a glance: requests by state, attempts by class and by HTTP status, tokens and their
//! estimated cost, throughput, events. Read from one snapshot of the journal; `status` prints it
//! and `report` puts it at the top of the page.

use rusqlite::Connection;

use crate::domain::{AttemptClass, Counts, EventKind};
use crate::inspect::prices::{CostEstimate, PriceTable};
use crate::store::StoreError;
use crate::store::batches::{self, ChunkRow};
use crate::store::db::{self, Event, Job, Tallies};
use crate::store::journal::{self, ModelTokens};
use crate::store::lease::{self, LeaseOwner};
use crate::util::clock::now_ms;

/// Events listed in full: enough to see the last spike's breaker cycle.
pub const RECENT_EVENTS: usize = 10;

/// Everything `status` shows about one job.
#[derive(Clone, Debug)]
pub struct JobSummary {
    /// The job row.
    pub job: Job,
    /// Requests by state.
    pub counts: Counts,
    /// Attempts by class (`interrupted` for attempts cut off), most first.
    pub classes: Tallies<AttemptClass>,
    /// Attempts by HTTP status (`None`: no answer), most first.
    pub statuses: Vec<(Option<u16>, u64)>,
    /// Token usage of successful requests, per model.
    pub tokens: Vec<ModelTokens>,
    /// Their estimated cost.
    pub cost: CostEstimate,
    /// Time the job has spent running, ms (see [`journal::active_ms`]).
    pub active_ms: i64,
    /// Events by kind.
    pub event_counts: Tallies<EventKind>,
    /// The last [`RECENT_EVENTS`] events, oldest first.
    pub recent_events: Vec<Event>,
    /// Who holds the job's lease, when someone does.
    pub runner: Option<RunnerLease>,
    /// Its chunks and their batches (`--via batch`), in order.
    pub batches: Vec<ChunkRow>,
    /// How the last run that sent anything was paced: what bound it, the limits, the pool
    /// (the detail of its `pacing` event).
    pub pacing: Option<String>,
    /// The rate limits the server announced last (the detail of the last `limits` event).
    pub limits: Option<String>,
    /// What the submit of its file estimated (the detail of the last `estimate` event).
    pub estimate: Option<String>,
}

/// The runner holding a job's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerLease {
    /// e.g. `pid 1234 on host h (…)`.
    pub owner: String,
    /// Unix ms when the lease lapses unless renewed.
    pub until: i64,
    /// Whether that runner still seems to be working (lease current, process alive).
    pub alive: bool,
}

impl JobSummary {
    /// Reads the summary of `job` from one snapshot.
    ///
    /// # Errors
    /// Database errors.
    pub fn load(
        conn: &Connection,
        job: Job,
        prices: &PriceTable,
    ) -> Result<JobSummary, StoreError> {
        // One read transaction: the numbers agree with each other while the job writes.
        let snapshot = conn.unchecked_transaction()?;
        let counts = db::counts(&snapshot, job.id)?;
        let classes = db::attempts_by_class(&snapshot, job.id)?;
        let statuses = journal::attempts_by_status(&snapshot, job.id)?;
        let tokens = journal::tokens_by_model(&snapshot, job.id)?;
        let active_ms = journal::active_ms(&snapshot, job.id)?;
        let (event_counts, recent_events) = db::events(&snapshot, job.id, RECENT_EVENTS)?;
        let runner = lease::holder(&snapshot, job.id)?.map(|(owner, until)| {
            let alive = until > now_ms()
                && !owner
                    .parse::<LeaseOwner>()
                    .is_ok_and(|holder| lease::holder_is_gone(&holder, &LeaseOwner::current()));
            RunnerLease {
                owner,
                until,
                alive,
            }
        });
        let batches = batches::chunks(&snapshot, job.id)?;
        let pacing = journal::last_event_detail(&snapshot, job.id, EventKind::Pacing)?;
        let limits = journal::last_event_detail(&snapshot, job.id, EventKind::Limits)?;
        let estimate = journal::last_event_detail(&snapshot, job.id, EventKind::Estimate)?;
        let cost = CostEstimate::new(prices, &tokens);
        Ok(JobSummary {
            job,
            counts,
            classes,
            statuses,
            tokens,
            cost,
            active_ms,
            event_counts,
            recent_events,
            runner,
            batches,
            pacing,
            limits,
            estimate,
        })
    }

    /// Attempts journaled.
    pub fn attempts(&self) -> u64 {
        self.classes.iter().map(|(_, n)| n).sum()
    }

    /// Token totals over all models: (prompt, completion, total).
    pub fn token_totals(&self) -> (i64, i64, i64) {
        self.tokens.iter().fold((0, 0, 0), |(p, c, t), m| {
            (p + m.prompt, c + m.completion, t + m.total)
        })
    }

    /// Finished requests (succeeded or failed) per second of running time.
    pub fn requests_per_second(&self) -> Option<f64> {
        self.per_second(self.counts.done())
    }

    /// Attempts per second of running time.
    pub fn attempts_per_second(&self) -> Option<f64> {
        self.per_second(self.attempts())
    }

    fn per_second(&self, n: u64) -> Option<f64> {
        (self.active_ms > 0).then(|| n as f64 * 1000.0 / self.active_ms as f64)
    }
}
