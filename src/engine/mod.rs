//! Running a job: everything between "these requests are pending" and "each has its outcome
//! journaled".
//!
//! - [`job`]: `submit`, `resume` and `retry-failed`: open the store, ingest, take the lease,
//!   recover what a crash left in flight, run the pool, record how the job ended.
//! - [`feed`]: a new job's file read into it while the pool sends its first requests.
//! - [`config`]: the job's checked settings (stored with the job) and the `OPENAI_*` environment.
//! - [`destination`]: which base URL wins (flag, environment, stored), plain http:// refused
//!   for a key to another host, the host named on stderr.
//! - [`pool`]: the dispatcher: claims due requests and passes each through the gates.
//! - [`context`]: what every attempt task shares (store handle, keys, breaker, pacer, stop).
//! - [`attempt`]: one attempt: read what came back, decide the request's fate, record it.
//! - [`retry`]: the retry policy (budgets, backoff, server-requested waits).
//! - [`breaker`]: the pool-wide circuit breaker over auth flaps and outages.
//! - [`rate_limit`]: `--rpm`/`--tpm` ceilings and the pacer that follows the server's limits.
//! - [`keys`]: the key pool (cool-down, quarantine) and the keys file.
//! - [`progress`]: the bar or summary lines on stderr.
//! - [`shutdown`]: two-stage Ctrl-C handling.
//! - [`batch`]: `--via batch`: chunks, their batches on the server, and their results imported.

pub mod attempt;
pub mod batch;
pub mod breaker;
pub mod config;
pub mod context;
pub mod deadline;
pub mod destination;
pub mod ending;
pub mod feed;
pub mod job;
pub mod keys;
pub mod outlook;
pub mod pacers;
pub mod pool;
pub mod progress;
pub mod rate_limit;
pub mod retry;
pub mod shutdown;
pub mod sizing;
pub mod spend;
