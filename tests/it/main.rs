//! The integration tests, one module per subject, in one test binary (`cargo test --test it`):
//! linking one binary instead of one per file is most of what a change to the crate costs on a
//! small machine. Run one module's tests with `cargo test --test it submit::`.
//!
//! Helpers shared by the modules (the mock server, scratch directories, in-process runs, the real
//! binary) live in [`support`]; data files in `tests/fixtures/`.

// A test crate: the `[lints]` table's ban on unwrap, expect, panic and `eprintln!` is for
// shipped code (a test's stderr is captured).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod support;

mod architecture;
mod batch_api;
mod batch_jobs;
mod batch_recovery;
mod big_answers;
mod busy;
mod chaos;
mod cli;
mod deadline;
mod destination;
mod doctor;
mod endpoints;
mod estimate;
mod export;
mod export_paths;
mod failures;
mod fencing;
mod hostile;
mod input;
mod lease;
mod pacing;
mod private_db;
mod reading;
mod report;
mod shared_db;
mod signals;
mod spend;
mod spreadsheet;
mod storage;
mod submit;
mod third_signal;
mod upgrade;
mod what_happened;
