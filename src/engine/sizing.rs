//! How many requests the pool keeps in flight when the user gave no `--concurrency`.
//!
//! A pool of fixed size sets its own pace: 32 in flight at 1.8 s per answer is 18 requests a
//! second, whatever the provider allows. So the pool sizes itself, within `--max-in-flight`:
//!
//! - **A rate is known** (`--rpm`, `--tpm`, or limits the server announced): the pacer meters
//!   the sends, and the pool only has to hold enough requests for that rate at the server's
//!   latency (Little's law: in flight = rate × latency), with headroom for the latency's
//!   spread. The latency is the larger of the answers' recent mean and what the requests in
//!   flight already waited (twice their mean age, which equals the latency in a steady
//!   state), so a model slowing from 2 s to 20 s grows the pool while the slow answers are
//!   still on their way, not after.
//! - **No rate is known** (llama.cpp, vLLM: no headers): the pool finds the server's capacity
//!   the way TCP finds a link's: it starts at one request, doubles each round trip while the
//!   latency stays near the lowest seen, grows gently after that, and shrinks when the latency
//!   doubles (requests queue at the server) or the server fails under load (5xx, timeouts, cut
//!   streams). The size where a failure came is a ceiling for a while, held longer each time
//!   it is hit again, so a server that drops requests when overloaded is not probed into
//!   failing them again and again.
//!
//! Pure: every method takes the time, so tests drive it with made-up instants.

use std::time::{Duration, Instant};

/// Requests in flight at most when `--max-in-flight` is not given (and the process may open
/// enough files): 10,000 requests a minute at 20 s an answer need ~3,300.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Open files kept for everything but the connections of requests in flight: the journal and
/// its WAL, the input file, spooled answers, the runtime.
const FILES_KEPT: u64 = 256;

/// The most requests a pool that sizes itself may hold: `given` (`--max-in-flight`) or
/// [`DEFAULT_MAX_IN_FLIGHT`], within the process's open-file limit (each request in flight
/// holds a connection). The soft limit is raised toward the hard one first, as far as needed.
pub fn max_in_flight(given: Option<usize>) -> usize {
    let wanted = given.unwrap_or(DEFAULT_MAX_IN_FLIGHT).max(1);
    let files = rlimit::increase_nofile_limit(wanted as u64 + FILES_KEPT).unwrap_or(u64::MAX);
    let allowed = usize::try_from(files.saturating_sub(FILES_KEPT)).unwrap_or(usize::MAX);
    if allowed < wanted {
        tracing::warn!(
            wanted,
            allowed,
            "the open-file limit allows fewer requests in flight than wanted: raise `ulimit -n`"
        );
    }
    wanted.min(allowed).max(1)
}

/// Little's law target = rate × latency × this, plus [`SPARE`]: room for the latency's spread
/// (a lognormal's mean age runs above half its mean), so the pool is not what binds.
const HEADROOM: f64 = 1.5;
/// Requests added to every target: a handful for the jitter of small pools.
const SPARE: f64 = 4.0;
/// Weight of a new answer's latency in the running mean.
const SMOOTHING: f64 = 0.1;
/// Without a known rate: the latency, relative to the lowest seen, under which the pool grows.
const GROW_BELOW: f64 = 1.5;
/// Without a known rate: the latency, relative to the lowest seen, over which the pool shrinks.
const SHRINK_ABOVE: f64 = 2.0;
/// Multiplicative decrease on a sign of overload.
const DECREASE: f64 = 0.7;
/// The shortest window over which answers are judged, without a known rate: a window lasts a
/// round trip (the mean latency), and holds at least half the pool's answers.
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// Latency differences below this are noise, not queueing: against a server that answers in a
/// millisecond, a ratio of latencies says nothing, and a queue that adds less than this to
/// answers that take seconds is no cost worth shrinking for.
const NOISE: f64 = 0.05;
/// Answers a window needs before it says anything.
const MIN_SAMPLES: u32 = 3;
/// How long a ceiling found by an overload holds the first time; each time it is hit again
/// the hold doubles, up to [`MAX_HOLD`].
const FIRST_HOLD: Duration = Duration::from_secs(30);
const MAX_HOLD: Duration = Duration::from_secs(600);

/// What one finished attempt says about the pool's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Answered normally (a success or a request's own error): its latency is a sample.
    Served,
    /// The server failed under load: a 5xx, a timeout, a cut stream.
    Overloaded,
    /// Nothing about the size: a 429 (the pacer's), an auth flap (the breaker's), a stop.
    Neutral,
}

impl Signal {
    /// What an attempt of `class` says.
    pub(crate) fn of(class: crate::domain::Class) -> Signal {
        use crate::domain::Class;
        match class {
            Class::Succeeded => Signal::Served,
            Class::Transient | Class::InvalidResponse => Signal::Overloaded,
            Class::RequestFailed
            | Class::AuthTransient
            | Class::RateLimited
            | Class::JobStop(_) => Signal::Neutral,
        }
    }
}

/// The pool's size: the user's, or found as the module doc says.
#[derive(Debug)]
pub(crate) enum Sizing {
    /// `--concurrency N`: obeyed as given.
    Fixed(usize),
    /// Sized from the pace and the latency.
    Adaptive(Box<Adaptive>),
}

/// The state of a pool that sizes itself.
#[derive(Debug)]
pub(crate) struct Adaptive {
    limit: f64,
    cap: usize,
    slow_start: bool,
    /// Mean latency of served answers, seconds (`None` before the first).
    latency: Option<f64>,
    in_flight: usize,
    /// Sum of the start times of the requests in flight, seconds after `epoch`.
    started_sum: f64,
    epoch: Instant,
    window: Window,
    /// The server's own latency, seconds: the lowest window mean seen, or that of the last
    /// window with one request at a time.
    baseline: Option<f64>,
    /// A size that overloaded the server, and until when growth stays below it.
    ceiling: Option<(f64, Instant)>,
    hold: Duration,
    /// The most requests in flight at once, for the run's summary.
    peak: usize,
}

/// Answers since the window began.
#[derive(Debug)]
struct Window {
    began: Instant,
    served: u32,
    latency_sum: f64,
    overloaded: bool,
    /// The most requests in flight during the window.
    busiest: usize,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            began: now,
            served: 0,
            latency_sum: 0.0,
            overloaded: false,
            busiest: 0,
        }
    }
}

impl Sizing {
    /// `--concurrency` when given, else a pool that sizes itself up to `cap`, starting at one
    /// second's share of `rate` (requests per second) when a rate is known, else at one.
    pub(crate) fn new(
        concurrency: Option<usize>,
        cap: usize,
        rate: Option<f64>,
        now: Instant,
    ) -> Sizing {
        match concurrency {
            Some(n) => Sizing::Fixed(n.max(1)),
            None => {
                let cap = cap.max(1);
                let first = rate.map_or(1.0, |r| r.clamp(1.0, cap as f64));
                Sizing::Adaptive(Box::new(Adaptive {
                    limit: first,
                    cap,
                    slow_start: true,
                    latency: None,
                    in_flight: 0,
                    started_sum: 0.0,
                    epoch: now,
                    window: Window::new(now),
                    baseline: None,
                    ceiling: None,
                    hold: FIRST_HOLD,
                    peak: 0,
                }))
            }
        }
    }

    /// Requests that may be in flight now.
    pub(crate) fn limit(&self) -> usize {
        match self {
            Sizing::Fixed(n) => *n,
            Sizing::Adaptive(a) => a.limit as usize,
        }
    }

    /// Whether the size follows the pace and latency (no `--concurrency`).
    pub(crate) fn is_adaptive(&self) -> bool {
        matches!(self, Sizing::Adaptive(_))
    }

    /// The most requests this run had in flight at once (a fixed pool: its size).
    pub(crate) fn peak(&self) -> usize {
        match self {
            Sizing::Fixed(n) => *n,
            Sizing::Adaptive(a) => a.peak,
        }
    }

    /// A request went out at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        if let Sizing::Adaptive(a) = self {
            a.in_flight += 1;
            a.peak = a.peak.max(a.in_flight);
            a.started_sum += now.saturating_duration_since(a.epoch).as_secs_f64();
            a.window.busiest = a.window.busiest.max(a.in_flight);
        }
    }

    /// A request sent at `started` finished at `now`; `rate` is the pace known now
    /// (requests per second), if any.
    pub(crate) fn finished(
        &mut self,
        started: Instant,
        now: Instant,
        signal: Signal,
        rate: Option<f64>,
    ) {
        let Sizing::Adaptive(a) = self else {
            return;
        };
        a.in_flight = a.in_flight.saturating_sub(1);
        a.started_sum -= started.saturating_duration_since(a.epoch).as_secs_f64();
        if a.in_flight == 0 {
            // Sums of floats drift; an empty pool has a sum of exactly zero.
            a.started_sum = 0.0;
        }
        let latency = now.saturating_duration_since(started).as_secs_f64();
        match signal {
            Signal::Served => {
                a.latency = Some(match a.latency {
                    Some(mean) => mean + SMOOTHING * (latency - mean),
                    None => latency,
                });
                a.window.served += 1;
                a.window.latency_sum += latency;
            }
            Signal::Overloaded => a.window.overloaded = true,
            Signal::Neutral => {}
        }
        a.resize(now, rate);
    }

    /// Looks again while nothing finishes: requests in flight that have waited long already
    /// say the latency rose. Called when the pool is full.
    pub(crate) fn refresh(&mut self, now: Instant, rate: Option<f64>) {
        if let Sizing::Adaptive(a) = self
            && rate.is_some()
        {
            a.resize(now, rate);
        }
    }
}

impl Adaptive {
    fn resize(&mut self, now: Instant, rate: Option<f64>) {
        match rate.filter(|r| r.is_finite() && *r > 0.0) {
            Some(rate) => self.follow_rate(now, rate),
            None => self.probe_capacity(now),
        }
        self.limit = self.limit.clamp(1.0, self.cap as f64);
    }

    /// Twice the mean age of the requests in flight: the latency they show so far.
    fn age_latency(&self, now: Instant) -> f64 {
        if self.in_flight == 0 {
            return 0.0;
        }
        let now = now.saturating_duration_since(self.epoch).as_secs_f64();
        2.0 * (now - self.started_sum / self.in_flight as f64).max(0.0)
    }

    /// A known rate: Little's law with headroom. Before any answer, the requests in flight
    /// say the latency is at least what they have waited: a model that takes 15 s to answer
    /// gets the pool its rate needs while the first answers are still coming, instead of one
    /// request at a time for the first 15 s.
    fn follow_rate(&mut self, now: Instant, rate: f64) {
        let Some(mean) = self.latency else {
            let waited = self.age_latency(now);
            self.limit = (self.limit + 1.0).max(rate * waited * HEADROOM + SPARE);
            return;
        };
        self.slow_start = false;
        // The age of the requests in flight says more than the answers only while the pool
        // is full: then nothing can go out until some come back. Otherwise the stragglers of
        // a long tail (the last of a job) would inflate it.
        let full = self.in_flight as f64 >= 0.9 * self.limit.floor();
        let latency = if full {
            mean.max(self.age_latency(now))
        } else {
            mean
        };
        let target = rate * latency * HEADROOM + SPARE;
        // Up at once (the pacer meters the sends), down gently (a dip in latency is often
        // noise, and shrinking does not cancel anything in flight anyway).
        self.limit = if target >= self.limit {
            target
        } else {
            (self.limit * 0.99).max(target)
        };
        self.window = Window::new(now);
    }

    /// No known rate: judge the window that just closed, as the module doc says.
    fn probe_capacity(&mut self, now: Instant) {
        let window_length = self.latency.map_or(MIN_WINDOW, |l| {
            Duration::from_secs_f64(l.min(600.0)).max(MIN_WINDOW)
        });
        let window = &self.window;
        let enough = (self.limit / 2.0).max(f64::from(MIN_SAMPLES));
        if !window.overloaded
            && (f64::from(window.served) < enough
                || now.saturating_duration_since(window.began) < window_length)
        {
            return;
        }
        let before = self.limit;
        if window.overloaded {
            self.limit = (self.limit * DECREASE).floor();
            self.slow_start = false;
            self.hold = match self.ceiling {
                Some((_, until)) if until > now => (self.hold * 2).min(MAX_HOLD),
                Some(_) | None => self.hold,
            };
            self.ceiling = Some((before, now + self.hold));
        } else {
            let mean = window.latency_sum / f64::from(window.served);
            // With one request at a time nothing queues: that window's latency is the
            // server's own, higher or lower than before (a model that became slower for good
            // is not read as overloaded forever). Otherwise the lowest seen stands.
            let baseline = match self.baseline {
                Some(b) if window.busiest > 1 => b.min(mean),
                Some(_) | None => mean,
            };
            self.baseline = Some(baseline);
            let busy = window.busiest as f64 >= 0.9 * before.floor();
            if mean > SHRINK_ABOVE * baseline && mean - baseline > NOISE {
                self.limit = (self.limit * DECREASE).max(1.0);
                self.slow_start = false;
            } else if (mean < GROW_BELOW * baseline || mean - baseline < NOISE) && busy {
                let grown = if self.slow_start {
                    self.limit * 2.0
                } else {
                    self.limit + (self.limit * 0.1).max(1.0)
                };
                self.limit = match self.ceiling {
                    Some((ceiling, until)) if until > now => {
                        grown.min((ceiling - 1.0).max(self.limit))
                    }
                    Some(_) | None => grown,
                };
            }
        }
        self.window = Window::new(now);
        self.window.busiest = self.in_flight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Runs a pool against a server that serves `slots` requests at once, each in `service`,
    /// queueing the rest (the shape of llama.cpp or vLLM), for `rounds` rounds; returns the
    /// sizes it went through.
    fn against_slots(
        sizing: &mut Sizing,
        now: &mut Instant,
        slots: usize,
        service: Duration,
        rounds: usize,
    ) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..rounds {
            let n = sizing.limit();
            // n in flight on `slots` slots: each waits for the ones ahead of it.
            let latency = service.mul_f64((n as f64 / slots as f64).ceil().max(1.0));
            let started = *now;
            for _ in 0..n {
                sizing.sent(started);
            }
            *now += latency;
            for _ in 0..n {
                sizing.finished(started, *now, Signal::Served, None);
            }
            sizes.push(sizing.limit());
        }
        sizes
    }

    #[test]
    fn a_given_concurrency_is_obeyed() {
        let now = Instant::now();
        let mut sizing = Sizing::new(Some(32), 4096, Some(1000.0), now);
        for _ in 0..100 {
            sizing.sent(now);
            sizing.finished(now, now + SECOND, Signal::Served, Some(1000.0));
        }
        assert_eq!(sizing.limit(), 32);
        assert!(!sizing.is_adaptive());
    }

    #[test]
    fn with_a_known_rate_the_pool_holds_rate_times_latency() {
        let mut now = Instant::now();
        let mut sizing = Sizing::new(None, 4096, Some(50.0), now);
        assert_eq!(sizing.limit(), 50, "one second's share before any answer");
        // Answers take 1.5 s: 50/s needs 75 in flight; the pool holds that with headroom.
        for _ in 0..200 {
            let started = now;
            sizing.sent(started);
            now += Duration::from_millis(20);
            sizing.finished(
                started,
                started + Duration::from_millis(1500),
                Signal::Served,
                Some(50.0),
            );
        }
        let limit = sizing.limit();
        assert!((75..=150).contains(&limit), "{limit}");
    }

    #[test]
    fn a_model_that_slows_down_grows_the_pool_before_its_answers_come_back() {
        let now = Instant::now();
        let rate = 50.0;
        let mut sizing = Sizing::new(None, 4096, Some(rate), now);
        let started = now;
        sizing.sent(started);
        sizing.finished(started, started + SECOND, Signal::Served, Some(rate));
        let before = sizing.limit();
        assert!(before < 100, "{before}");
        // 200 requests sent over 4 s and none answered after 10 s: the latency is 10 s now.
        for i in 0..200 {
            sizing.sent(now + Duration::from_millis(20 * i));
        }
        sizing.refresh(now + Duration::from_secs(10), Some(rate));
        let after = sizing.limit();
        assert!(after >= 2 * before, "{before} → {after}");
    }

    #[test]
    fn before_the_first_answer_the_wait_of_those_in_flight_sizes_the_pool() {
        let now = Instant::now();
        let rate = 50.0;
        let mut sizing = Sizing::new(None, 4096, Some(rate), now);
        assert_eq!(sizing.limit(), 50);
        // 50 sent in the first second, none answered after 6 s: the answers take 6 s at least,
        // and 50/s needs 300 in flight for that.
        for i in 0..50 {
            sizing.sent(now + Duration::from_millis(20 * i));
        }
        sizing.refresh(now + Duration::from_secs(6), Some(rate));
        let limit = sizing.limit();
        assert!(limit >= 300, "{limit}");
        // Without a rate nothing is known to pace by: no answer, no growth.
        let mut blind = Sizing::new(None, 4096, None, now);
        blind.sent(now);
        blind.refresh(now + Duration::from_secs(6), None);
        assert_eq!(blind.limit(), 1);
    }

    #[test]
    fn the_cap_is_never_exceeded() {
        let now = Instant::now();
        let mut sizing = Sizing::new(None, 100, Some(10_000.0), now);
        assert_eq!(sizing.limit(), 100);
        sizing.sent(now);
        sizing.finished(
            now,
            now + Duration::from_secs(30),
            Signal::Served,
            Some(10_000.0),
        );
        assert_eq!(sizing.limit(), 100);
    }

    #[test]
    fn without_a_rate_the_pool_grows_to_the_servers_slots_and_no_further() {
        let mut now = Instant::now();
        let mut sizing = Sizing::new(None, 4096, None, now);
        assert_eq!(sizing.limit(), 1, "starts at one");
        let sizes = against_slots(&mut sizing, &mut now, 8, Duration::from_millis(400), 200);
        let settled = &sizes[100..];
        assert!(
            settled.iter().all(|&n| (4..=16).contains(&n)),
            "stays near the 8 slots: {sizes:?}"
        );
        assert!(settled.iter().any(|&n| n >= 8), "reaches them: {sizes:?}");
    }

    #[test]
    fn a_server_with_one_slot_keeps_the_pool_small() {
        let mut now = Instant::now();
        let mut sizing = Sizing::new(None, 4096, None, now);
        let sizes = against_slots(&mut sizing, &mut now, 1, Duration::from_secs(2), 100);
        assert!(sizes.iter().all(|&n| n <= 2), "{sizes:?}");
    }

    #[test]
    fn overload_shrinks_the_pool_and_holds_a_ceiling() {
        let mut now = Instant::now();
        let mut sizing = Sizing::new(None, 4096, None, now);
        // Grow on a fast, roomy server.
        against_slots(&mut sizing, &mut now, 1000, Duration::from_millis(300), 12);
        let grown = sizing.limit();
        assert!(grown >= 64, "{grown}");
        // A cut stream: down by 30%, and growth stays below where it happened.
        sizing.sent(now);
        now += SECOND;
        sizing.finished(now - SECOND, now, Signal::Overloaded, None);
        let cut = sizing.limit();
        assert!(
            cut < grown && cut as f64 >= grown as f64 * 0.6,
            "{grown} → {cut}"
        );
        let held = against_slots(&mut sizing, &mut now, 1000, Duration::from_millis(300), 20);
        assert!(held.iter().all(|&n| n < grown), "{held:?}");
        // Once the hold has passed, it may grow again.
        now += FIRST_HOLD;
        let later = against_slots(&mut sizing, &mut now, 1000, Duration::from_millis(300), 20);
        assert!(later.iter().any(|&n| n >= grown), "{later:?}");
    }

    #[test]
    fn a_429_or_an_auth_flap_does_not_resize() {
        let now = Instant::now();
        let mut sizing = Sizing::new(None, 4096, None, now);
        for i in 0..50 {
            sizing.sent(now);
            sizing.finished(now, now + SECOND * i, Signal::Neutral, None);
        }
        assert_eq!(sizing.limit(), 1);
    }
}
