//! Live progress on stderr: an indicatif bar on a terminal, a summary line every few seconds
//! otherwise (or with `--no-progress`), and a final summary always. stdout is never touched.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::Counts;

/// How often the bar is redrawn.
const BAR_TICK: Duration = Duration::from_millis(200);
/// How often a summary line is printed when there is no bar.
pub const LINE_EVERY: Duration = Duration::from_secs(5);
/// The bar's indicatif template; a test checks that it parses.
const BAR_TEMPLATE: &str = "{prefix} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} {msg}";

/// What held the dispatcher back while it waited: the answer to "why was it slow".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Every slot of the pool was taken (a fixed `--concurrency`, or a pool at `--max-in-flight`
    /// or at the size the server's latency and capacity allow).
    Pool,
    /// The request pace: `--rpm`, or the server's announced or learned request limit.
    Requests,
    /// The token pace: `--tpm`, or the server's announced token limit.
    Tokens,
    /// The circuit breaker, a 429's pause, or keys cooling down.
    Breaker,
}

impl Bound {
    const ALL: [Bound; 4] = [Bound::Pool, Bound::Requests, Bound::Tokens, Bound::Breaker];

    /// As shown and journaled: `pool`, `requests`, `tokens`, `breaker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Pool => "pool",
            Bound::Requests => "requests",
            Bound::Tokens => "tokens",
            Bound::Breaker => "breaker",
        }
    }

    fn index(self) -> usize {
        match self {
            Bound::Pool => 0,
            Bound::Requests => 1,
            Bound::Tokens => 2,
            Bound::Breaker => 3,
        }
    }
}

/// Live counters, bumped by the workers, read by the reporter.
#[derive(Debug, Default)]
pub struct Tally {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retrying: AtomicI64,
    attempts: AtomicU64,
    /// A state worth showing, e.g. "breaker open 4s".
    note: Mutex<Option<String>>,
    /// Requests in flight, and how many may be.
    in_flight: AtomicU64,
    pool_size: AtomicU64,
    /// Microseconds the dispatcher waited on each [`Bound`].
    waited: [AtomicU64; 4],
}

impl Tally {
    /// Starts from what the store already holds (a resumed job).
    pub fn from_counts(counts: &Counts) -> Tally {
        Tally {
            succeeded: AtomicU64::new(counts.succeeded),
            failed: AtomicU64::new(counts.failed),
            retrying: AtomicI64::new(counts.retrying as i64),
            attempts: AtomicU64::new(0),
            note: Mutex::new(None),
            ..Tally::default()
        }
    }

    /// The dispatcher waited `for_` on `bound`.
    pub fn waited(&self, bound: Bound, for_: Duration) {
        let micros = u64::try_from(for_.as_micros()).unwrap_or(u64::MAX);
        self.waited[bound.index()].fetch_add(micros, Ordering::Relaxed);
    }

    /// Requests in flight now, and the pool's size now.
    pub fn set_pool(&self, in_flight: usize, size: usize) {
        self.in_flight.store(in_flight as u64, Ordering::Relaxed);
        self.pool_size.store(size as u64, Ordering::Relaxed);
    }

    /// What the dispatcher waited on most so far, with its share of all waiting (`None`: it
    /// never waited).
    pub fn bound_most(&self) -> Option<(Bound, f64)> {
        bound_most(&self.snapshot().waited, &[0; 4])
    }

    /// Requests counted failed were requeued (a configuration error's streak).
    pub fn unfail(&self, n: u64) {
        self.failed.fetch_sub(n, Ordering::Relaxed);
        self.retrying.fetch_add(n as i64, Ordering::Relaxed);
    }

    /// Shows `note` on the progress line until replaced (`None` clears it).
    pub fn set_note(&self, note: Option<String>) {
        *self.note.lock().unwrap_or_else(PoisonError::into_inner) = note;
    }

    /// An attempt was sent.
    pub fn attempt_started(&self, is_retry: bool) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if is_retry {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// `n` requests waiting for a retry went into a batch (`--via batch`): no longer waiting.
    pub fn batched_again(&self, n: u64) {
        self.retrying.fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// `n` attempts read from a batch's results were journaled (`--via batch`).
    pub fn attempts_journaled(&self, n: u64) {
        self.attempts.fetch_add(n, Ordering::Relaxed);
    }

    /// A request succeeded.
    pub fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    /// A request failed for good.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A request will be retried later.
    pub fn retry_scheduled(&self) {
        self.retrying.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retrying: self.retrying.load(Ordering::Relaxed).max(0) as u64,
            attempts: self.attempts.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            pool_size: self.pool_size.load(Ordering::Relaxed),
            waited: std::array::from_fn(|i| self.waited[i].load(Ordering::Relaxed)),
            note: self
                .note
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Snapshot {
    succeeded: u64,
    failed: u64,
    retrying: u64,
    attempts: u64,
    in_flight: u64,
    pool_size: u64,
    waited: [u64; 4],
    note: Option<String>,
}

/// The bound waited on most between two readings of the waits, and its share of the waiting.
fn bound_most(now: &[u64; 4], before: &[u64; 4]) -> Option<(Bound, f64)> {
    let spent: Vec<u64> = now
        .iter()
        .zip(before)
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    let total: u64 = spent.iter().sum();
    Bound::ALL
        .into_iter()
        .map(|bound| (bound, spent[bound.index()]))
        .filter(|(_, micros)| *micros > 0)
        .max_by_key(|(_, micros)| *micros)
        .map(|(bound, micros)| (bound, micros as f64 / total as f64))
}

impl Snapshot {
    fn done(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A live bar (stderr is a terminal).
    Bar,
    /// A line every [`LINE_EVERY`].
    Lines,
}

impl Display {
    /// The bar on a terminal unless `no_progress`; lines otherwise.
    pub fn choose(no_progress: bool) -> Display {
        if !no_progress && std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// The running reporter. [`Reporter::finish`] stops it and prints the final summary.
pub struct Reporter {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
    view: View,
}

#[derive(Clone)]
struct View {
    job: String,
    total: u64,
    tally: Arc<Tally>,
    start_done: u64,
    started: Instant,
}

impl View {
    /// The progress line; `before` is the reading of the waits the bound is judged since.
    fn line(&self, s: &Snapshot, before: &[u64; 4]) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            (s.done().saturating_sub(self.start_done)) as f64 / elapsed
        } else {
            0.0
        };
        let remaining = self.total.saturating_sub(s.done());
        let eta = if rate > 0.0 && remaining > 0 {
            format!(" · eta {}", format_secs(remaining as f64 / rate))
        } else {
            String::new()
        };
        let note = s
            .note
            .as_deref()
            .map(|n| format!(" · {n}"))
            .unwrap_or_default();
        let pool = if s.pool_size > 0 {
            format!(" · in flight {}/{}", s.in_flight, s.pool_size)
        } else {
            String::new()
        };
        let bound = bound_most(&s.waited, before)
            .map(|(bound, _)| format!(" · bound by {}", bound.as_str()))
            .unwrap_or_default();
        format!(
            "ok {} · failed {} · retrying {} · {:.1} req/s{pool}{bound}{eta}{note}",
            s.succeeded, s.failed, s.retrying, rate
        )
    }
}

fn format_secs(secs: f64) -> String {
    let secs = secs.round() as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

impl Reporter {
    /// Starts reporting on a job of `total` requests.
    pub fn start(job: &str, total: u64, tally: Arc<Tally>, display: Display) -> Reporter {
        let view = View {
            job: job.to_owned(),
            total,
            start_done: tally.snapshot().done(),
            tally,
            started: Instant::now(),
        };
        let cancel = CancellationToken::new();
        let bar = (display == Display::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            // The template is a constant checked by the tests; fall back to the default style.
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
            bar.set_prefix(view.job.clone());
            bar
        });
        let task = tokio::spawn(report(view.clone(), bar.clone(), cancel.clone()));
        Reporter {
            cancel,
            task,
            bar,
            view,
        }
    }

    /// Stops the live display and prints the final summary line to stderr.
    pub async fn finish(self, outcome: &str) {
        self.cancel.cancel();
        // The task only sleeps and draws; it ends at once when cancelled.
        let _ = self.task.await;
        let s = self.view.tally.snapshot();
        if let Some(bar) = &self.bar {
            bar.set_position(s.done());
            bar.finish_and_clear();
        }
        crate::say!(
            "{}: {outcome} · {}/{} done · {} · {} attempts in {}",
            self.view.job,
            s.done(),
            self.view.total,
            self.view.line(&s, &[0; 4]),
            s.attempts,
            format_secs(self.view.started.elapsed().as_secs_f64()),
        );
    }
}

async fn report(view: View, bar: Option<ProgressBar>, cancel: CancellationToken) {
    let every = if bar.is_some() { BAR_TICK } else { LINE_EVERY };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The bound shown is the one of the last few seconds, not of the whole run.
    let mut before = [0; 4];
    let mut judged = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let s = view.tally.snapshot();
        let line = view.line(&s, &before);
        if judged.elapsed() >= LINE_EVERY {
            before = s.waited;
            judged = Instant::now();
        }
        match &bar {
            Some(bar) => {
                bar.set_position(s.done());
                bar.set_message(line);
            }
            None if view.started.elapsed() >= every => {
                crate::say!("{}: {}/{} done · {}", view.job, s.done(), view.total, line);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_template_parses() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_secs(5.2), "5s");
        assert_eq!(format_secs(125.0), "2m05s");
        assert_eq!(format_secs(7300.0), "2h01m");
    }

    #[test]
    fn tally_counts_retries_down_when_sent() {
        let tally = Tally::from_counts(&Counts {
            retrying: 2,
            ..Counts::default()
        });
        tally.attempt_started(true);
        tally.retry_scheduled();
        tally.retry_scheduled();
        tally.succeeded();
        let s = tally.snapshot();
        assert_eq!((s.retrying, s.succeeded, s.attempts), (3, 1, 1));
    }

    #[test]
    fn the_bound_is_what_was_waited_on_most_lately() {
        let tally = Tally::default();
        assert_eq!(tally.bound_most(), None, "nothing waited");
        tally.waited(Bound::Requests, Duration::from_secs(3));
        tally.waited(Bound::Pool, Duration::from_secs(1));
        assert_eq!(tally.bound_most(), Some((Bound::Requests, 0.75)));
        let before = tally.snapshot().waited;
        tally.waited(Bound::Tokens, Duration::from_secs(1));
        assert_eq!(
            bound_most(&tally.snapshot().waited, &before),
            Some((Bound::Tokens, 1.0))
        );
    }
}
