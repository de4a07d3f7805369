//! Read-only commands: what a job did, from its journal. Nothing here sends a request or
//! changes a job (`doctor` sends one probe, never a job's request).
//!
//! - [`status`]: `status` and `jobs`; [`summary`]: the counts, cost and throughput they show;
//!   [`prices`]: the dated price table behind the cost estimate.
//! - [`attempts`]: `runner attempts`, every HTTP attempt with filters.
//! - [`timeline`]: buckets, spikes and the terminal chart (`runner timeline`).
//! - [`report`]: the self-contained HTML report.
//! - [`export`]: results as CSV or Batch-output JSONL.
//! - [`doctor`]: key, environment, reachability and one classified probe.
//! - [`estimate`]: what a file would cost and take, before anything is sent.

pub mod attempts;
pub mod doctor;
pub mod estimate;
pub mod export;
pub mod prices;
pub mod report;
pub mod status;
pub mod summary;
pub mod timeline;
