//! The circuit breaker: when most recent attempts fail, stop sending for a cool-down, then let a
//! single probe through; close on its success, open again (longer) on its failure.
//!
//! This is what keeps a 401 spike from burning thousands of requests: at concurrency C, the
//! window of `2·C` outcomes trips after about C failures, the C requests already in flight come
//! back, and from then on one probe per cool-down goes out. The state machine is pure (time is
//! passed in), so it is tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::domain::EventKind;

/// Breaker settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Outcomes remembered (a sliding window by count, not time: a fast server fills a time
    /// window with thousands of old successes and would trip far too late).
    pub window: usize,
    /// Outcomes needed before the breaker may trip.
    pub min_samples: usize,
    /// Share of failures in the window that trips it.
    pub threshold: f64,
    /// First cool-down; doubled on each failed probe.
    pub cooldown: Duration,
    /// Longest cool-down: the probe interval during a long outage.
    pub max_cooldown: Duration,
}

impl BreakerSettings {
    /// Defaults for a pool of `concurrency` workers.
    pub fn for_concurrency(concurrency: usize) -> BreakerSettings {
        let window = (2 * concurrency).max(20);
        BreakerSettings {
            window,
            min_samples: window / 2,
            threshold: 0.5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(10),
        }
    }
}

/// Whether an attempt may go out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Go,
    /// Send it as the single probe: report its outcome with `probe = true`.
    Probe,
    /// Not before this instant.
    WaitUntil(Instant),
    /// A probe is out: wait for its outcome.
    WaitForProbe,
}

/// A change of state, to journal and display.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// Tripped (or re-tripped after a failed probe): no sends for `cooldown`.
    Opened {
        /// Failure share that tripped it (1.0 for a failed probe).
        failure_rate: f64,
        /// How long it stays open.
        cooldown: Duration,
    },
    /// The cool-down ended: one probe goes out.
    HalfOpened,
    /// The probe succeeded: sending resumes.
    Closed,
}

impl Transition {
    /// The event kind stored in the journal.
    pub fn kind(&self) -> EventKind {
        match self {
            Transition::Opened { .. } => EventKind::BreakerOpen,
            Transition::HalfOpened => EventKind::BreakerHalfOpen,
            Transition::Closed => EventKind::BreakerClosed,
        }
    }

    /// Human detail for the journal and the log.
    pub fn detail(&self) -> String {
        match self {
            Transition::Opened {
                failure_rate,
                cooldown,
            } => format!(
                "{:.0}% of recent attempts failed: pausing for {:.1}s",
                failure_rate * 100.0,
                cooldown.as_secs_f64()
            ),
            Transition::HalfOpened => "sending one probe".to_owned(),
            Transition::Closed => "probe succeeded: resuming".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probe_out: bool, cooldown: Duration },
}

/// The breaker. Callers hold it behind a mutex for a few instructions at a time.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    window: VecDeque<bool>,
    failures: usize,
    state: State,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            window: VecDeque::with_capacity(settings.window),
            failures: 0,
            state: State::Closed,
            settings,
        }
    }

    /// Whether an attempt may go out at `now`; may move Open → HalfOpen.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            State::Closed => (Admission::Go, None),
            State::Open { until, .. } if now < until => (Admission::WaitUntil(until), None),
            State::Open { cooldown, .. } => {
                self.state = State::HalfOpen {
                    probe_out: true,
                    cooldown,
                };
                (Admission::Probe, Some(Transition::HalfOpened))
            }
            State::HalfOpen {
                probe_out: true, ..
            } => (Admission::WaitForProbe, None),
            State::HalfOpen {
                probe_out: false,
                cooldown,
            } => {
                self.state = State::HalfOpen {
                    probe_out: true,
                    cooldown,
                };
                (Admission::Probe, None)
            }
        }
    }

    /// A probe admitted by [`Breaker::admit`] was never sent (shutdown): let another go.
    pub fn probe_withdrawn(&mut self) {
        if let State::HalfOpen { cooldown, .. } = self.state {
            self.state = State::HalfOpen {
                probe_out: false,
                cooldown,
            };
        }
    }

    /// Records an attempt's outcome. `failed` is true for the classes that say the service is
    /// unwell (transient, auth-transient); `probe` for the probe admitted in half-open state.
    pub fn record(&mut self, failed: bool, probe: bool, now: Instant) -> Option<Transition> {
        match self.state {
            State::HalfOpen { cooldown, .. } if probe => {
                if failed {
                    let cooldown = (cooldown * 2).min(self.settings.max_cooldown);
                    self.state = State::Open {
                        until: now + cooldown,
                        cooldown,
                    };
                    Some(Transition::Opened {
                        failure_rate: 1.0,
                        cooldown,
                    })
                } else {
                    self.state = State::Closed;
                    self.window.clear();
                    self.failures = 0;
                    Some(Transition::Closed)
                }
            }
            // Stragglers sent before the trip say nothing new about the service.
            State::Open { .. } | State::HalfOpen { .. } => None,
            State::Closed => {
                self.push(failed);
                let samples = self.window.len();
                let rate = self.failures as f64 / samples as f64;
                if samples >= self.settings.min_samples && rate >= self.settings.threshold {
                    let cooldown = self.settings.cooldown;
                    self.state = State::Open {
                        until: now + cooldown,
                        cooldown,
                    };
                    Some(Transition::Opened {
                        failure_rate: rate,
                        cooldown,
                    })
                } else {
                    None
                }
            }
        }
    }

    /// Whether sending is paused (open, or half-open waiting on its probe).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    fn push(&mut self, failed: bool) {
        if self.window.len() == self.settings.window && self.window.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.window.push_back(failed);
        self.failures += usize::from(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings::for_concurrency(10)
    }

    #[test]
    fn trips_when_half_the_window_fails() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        for _ in 0..20 {
            assert_eq!(b.record(false, false, t), None);
        }
        // 20 successes then failures: 50% of 20 is reached at the 10th failure.
        for i in 1..10 {
            assert_eq!(b.record(true, false, t), None, "failure {i}");
        }
        let opened = b.record(true, false, t);
        assert!(
            matches!(opened, Some(Transition::Opened { cooldown, .. }) if cooldown == Duration::from_secs(1))
        );
        assert_eq!(
            b.admit(t).0,
            Admission::WaitUntil(t + Duration::from_secs(1))
        );
    }

    #[test]
    fn does_not_trip_on_a_few_failures_or_a_low_rate() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        for _ in 0..5 {
            b.record(true, false, t);
        }
        assert!(!b.is_open(), "below min_samples");
        let mut b = Breaker::new(settings());
        for i in 0..1000 {
            // 10% failures, like the random missing_scope of the incident.
            b.record(i % 10 == 0, false, t);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn probes_once_per_cooldown_and_backs_off_to_the_cap() {
        let mut b = Breaker::new(settings());
        let mut t = Instant::now();
        for _ in 0..20 {
            b.record(true, false, t);
        }
        assert!(b.is_open());
        let mut cooldowns = Vec::new();
        for _ in 0..6 {
            let (admission, _) = b.admit(t);
            let Admission::WaitUntil(until) = admission else {
                panic!("open breaker admitted: {admission:?}");
            };
            cooldowns.push((until - t).as_secs());
            t = until;
            assert_eq!(b.admit(t), (Admission::Probe, Some(Transition::HalfOpened)));
            assert_eq!(b.admit(t).0, Admission::WaitForProbe, "one probe at a time");
            assert_eq!(b.record(true, false, t), None, "stragglers are ignored");
            assert!(matches!(
                b.record(true, true, t),
                Some(Transition::Opened { .. })
            ));
        }
        assert_eq!(cooldowns, [1, 2, 4, 8, 10, 10]);
        let (_, _) = b.admit(t + Duration::from_secs(10));
        assert_eq!(b.record(false, true, t), Some(Transition::Closed));
        assert_eq!(b.admit(t).0, Admission::Go);
        // After closing, the window starts afresh: one failure does not re-trip.
        assert_eq!(b.record(true, false, t), None);
    }

    #[test]
    fn a_withdrawn_probe_lets_another_go() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        for _ in 0..20 {
            b.record(true, false, t);
        }
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later).0, Admission::Probe);
        b.probe_withdrawn();
        assert_eq!(b.admit(later).0, Admission::Probe);
    }

    #[test]
    fn transitions_have_journal_names() {
        let opened = Transition::Opened {
            failure_rate: 0.75,
            cooldown: Duration::from_secs(2),
        };
        assert_eq!(opened.kind(), EventKind::BreakerOpen);
        assert_eq!(
            opened.detail(),
            "75% of recent attempts failed: pausing for 2.0s"
        );
        assert_eq!(Transition::Closed.kind(), EventKind::BreakerClosed);
    }
}
