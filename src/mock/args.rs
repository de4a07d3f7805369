//! The `runner mock-server` flags and their conversion into a checked [`MockConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use super::{BatchFate, BatchOp, Fault, MockConfig, RetryAfterStyle, SlowDown, Spike};

/// Flags of `runner mock-server`: a fault-injecting mock of the OpenAI API.
#[derive(clap::Args, Debug, Clone)]
pub struct MockArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub addr: SocketAddr,

    /// Latency added to every answer (e.g. 20ms, 1s); with --latency-spread, the median
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,

    /// Spread latencies lognormally around --latency with this sigma (0: fixed; 1: the middle half between about half and twice the median)
    #[arg(long, value_name = "SIGMA", default_value_t = 0.0)]
    pub latency_spread: f64,

    /// From this long after start, multiply every latency by --slow-down-factor (e.g. 30s)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub slow_down_at: Option<Duration>,

    /// What --slow-down-at multiplies latencies by (e.g. 10: from 1s to 10s an answer)
    #[arg(long, value_name = "FACTOR")]
    pub slow_down_factor: Option<f64>,

    /// Seed for the fault draws: the same seed replays the same faults for the same bodies
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Share of requests answered 401 missing_scope (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    pub missing_scope_rate: f64,

    /// Share of requests answered 429 rate_limit_exceeded (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,

    /// Wait announced by rate-limit 429s (retry-after-ms and retry-after)
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_after: Duration,

    /// Share of requests answered 500 server_error (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    pub server_error_rate: f64,

    /// Share of requests answered 200 with a body that is not JSON (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    pub malformed_rate: f64,

    /// Share of requests that hang for --hang, then answer 500 (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,

    /// How long a hanging request sleeps before it answers
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub hang: Duration,

    /// Window, from server start, where every request fails: FROM..TO or FROM..TO:FAULT,
    /// e.g. 5s..10s (missing-scope) or 2s..4s:server-error. FAULT is one of missing-scope,
    /// rbac-denied, rate-limited, server-error, malformed, hang. Repeatable
    #[arg(long = "spike", value_name = "FROM..TO[:FAULT]")]
    pub spikes: Vec<String>,

    /// Bearer key answered 401 invalid_api_key on every request. Repeatable
    #[arg(long = "invalid-key", value_name = "KEY")]
    pub invalid_keys: Vec<String>,

    /// Key answered 403 (the project may not use the model) on every request. Repeatable
    #[arg(long = "forbidden-key", value_name = "KEY")]
    pub forbidden_keys: Vec<String>,

    /// After this many successful answers, answer every request 429 insufficient_quota
    #[arg(long, value_name = "N")]
    pub quota_after: Option<u64>,

    /// A key that flaps: KEY=RATE answers that share of its requests 401 missing_scope. Repeatable
    #[arg(long = "flaky-key", value_name = "KEY=RATE")]
    pub flaky_keys: Vec<String>,

    /// Which wait hints rate-limit 429s carry
    #[arg(long, value_enum, default_value_t = RetryAfterArg::All)]
    pub retry_after_style: RetryAfterArg,

    /// A model this server does not have: requests naming it get 404 model_not_found. Repeatable
    #[arg(long = "unknown-model", value_name = "MODEL")]
    pub unknown_models: Vec<String>,

    /// Enforce this many requests per second (429 above it, x-ratelimit headers on every answer)
    #[arg(long, value_name = "N")]
    pub requests_per_second: Option<f64>,

    /// Enforce this many requests per minute: --requests-per-second N/60
    #[arg(long, value_name = "N")]
    pub requests_per_minute: Option<f64>,

    /// Enforce this many tokens per minute, counted as prompt plus the most output asked for (429 above it, x-ratelimit-*-tokens headers on every answer)
    #[arg(long, value_name = "N")]
    pub tokens_per_minute: Option<f64>,

    /// Send absurd rate-limit and retry headers on every answer (1e-300, -3, forever, NaN, …), as a broken proxy might
    #[arg(long)]
    pub absurd_rate_headers: bool,

    /// Serve at most N requests at once; the rest queue for a slot, as on llama.cpp or vLLM
    #[arg(long, value_name = "N")]
    pub slots: Option<std::num::NonZeroUsize>,

    /// Cut streamed answers ("stream": true) half-way for the first N attempts of each body
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub cut_streams: u64,

    /// After the cut ones, end the next N streamed answers of each body half-way with a server_error event
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub stream_errors: u64,

    /// Answer like Azure OpenAI: 401 without an api-key header, 404 without an api-version query parameter
    #[arg(long)]
    pub require_api_key: bool,

    /// Hosted Batch API: time from creating a batch to its completion (e.g. 2s, 1m)
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub batch_processing: Duration,

    /// Hosted Batch API: answer the first N file uploads 401 missing_scope
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub batch_missing_scope_uploads: u64,

    /// Hosted Batch API: answer the first N batch creations 401 missing_scope
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub batch_missing_scope_creates: u64,

    /// Hosted Batch API: fates of the 1st, 2nd, … batch created, comma-separated: complete, fail-validation, expire, output-gone, error-then-success, stall (half its lines, then stuck until cancelled)
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub batch_fates: Vec<String>,

    /// Hosted Batch API: calls whose first occurrence does its work and then stalls before answering, comma-separated: upload, create, download (half the file is sent first)
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub batch_stall: Vec<String>,

    /// Hosted Batch API: batches that may be unfinished at once; a create beyond them is refused 400 token_limit_exceeded (as over the enqueued-token limit)
    #[arg(long, value_name = "N")]
    pub batch_max_open: Option<usize>,

    /// Hosted Batch API: how long a --batch-stall call waits
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub batch_stall_for: Duration,
}

/// `--retry-after-style` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfterArg {
    /// retry-after-ms, retry-after, x-ratelimit-reset-requests and the message
    All,
    /// Only retry-after-ms
    Millis,
    /// Only retry-after in seconds
    Seconds,
    /// Only retry-after as an HTTP date
    HttpDate,
    /// Only x-ratelimit-reset-requests
    ResetHeader,
    /// Only "Please try again in …" in the message
    Message,
}

impl From<RetryAfterArg> for RetryAfterStyle {
    fn from(arg: RetryAfterArg) -> Self {
        match arg {
            RetryAfterArg::All => RetryAfterStyle::All,
            RetryAfterArg::Millis => RetryAfterStyle::Millis,
            RetryAfterArg::Seconds => RetryAfterStyle::Seconds,
            RetryAfterArg::HttpDate => RetryAfterStyle::HttpDate,
            RetryAfterArg::ResetHeader => RetryAfterStyle::ResetHeader,
            RetryAfterArg::Message => RetryAfterStyle::Message,
        }
    }
}

impl MockArgs {
    /// The address to listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why the `runner mock-server` flags do not make a valid [`MockConfig`].
#[derive(Debug, thiserror::Error)]
pub enum MockArgsError {
    /// A `--flaky-key` that is not `KEY=RATE` with a rate in 0..=1.
    #[error("--flaky-key must be KEY=RATE with RATE between 0 and 1, got {spec:?}")]
    FlakyKey {
        /// The value given (it holds a test key, never a real one).
        spec: String,
    },
    /// A rate outside 0..=1 (or not a number).
    #[error("--{flag} must be between 0 and 1, got {value}")]
    RateOutOfRange {
        /// The flag, without dashes, e.g. `hang-rate`.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// The rates together exceed 1, so their shares cannot all be honoured.
    #[error(
        "the fault rates add up to {sum}, more than 1: lower some of --missing-scope-rate, \
         --rate-limit-rate, --server-error-rate, --malformed-rate and --hang-rate"
    )]
    RatesOverOne {
        /// The sum of all rates.
        sum: f64,
    },
    /// A `--requests-per-second` that is not a positive, finite number.
    #[error("--requests-per-second must be a positive number such as 100 or 0.5, got {value}")]
    RequestsPerSecond {
        /// The value given.
        value: f64,
    },
    /// A `--requests-per-minute` or `--tokens-per-minute` that is not a positive, finite number.
    #[error("--{flag} must be a positive number such as 500 or 30000, got {value}")]
    PerMinute {
        /// The flag, without dashes.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// Both `--requests-per-second` and `--requests-per-minute`: two values for one limit.
    #[error(
        "--requests-per-second and --requests-per-minute set the same limit; give only one \
         (--requests-per-minute N is --requests-per-second N/60)"
    )]
    TwoRequestLimits,
    /// A `--latency-spread` that is negative or not a finite number.
    #[error(
        "--latency-spread must be 0 (fixed latency) or a positive sigma such as 0.5, got {value}"
    )]
    LatencySpread {
        /// The value given.
        value: f64,
    },
    /// A `--slow-down-factor` that is not a positive, finite number.
    #[error("--slow-down-factor must be a positive number such as 10 or 0.5, got {value}")]
    SlowDownFactor {
        /// The value given.
        value: f64,
    },
    /// Only one of `--slow-down-at` and `--slow-down-factor`.
    #[error("--{given} needs --{missing} too: write e.g. --slow-down-at 30s --slow-down-factor 10")]
    SlowDownHalf {
        /// The flag given, without dashes.
        given: &'static str,
        /// The flag missing, without dashes.
        missing: &'static str,
    },
    /// A `--spike` that is not `FROM..TO[:FAULT]`.
    #[error("--spike {spec:?} is not FROM..TO[:FAULT]; write e.g. 5s..10s or 2s..4s:server-error")]
    SpikeSyntax {
        /// The value given.
        spec: String,
    },
    /// A `--spike` bound humantime cannot read.
    #[error("--spike {spec:?} has a bad duration {bound:?}: {source}; write e.g. 500ms, 5s or 1m")]
    SpikeDuration {
        /// The value given.
        spec: String,
        /// The bound that failed to parse.
        bound: String,
        /// Why humantime rejected it.
        source: humantime::DurationError,
    },
    /// A `--spike` whose window is empty.
    #[error("--spike {spec:?} ends before it starts: TO must be later than FROM")]
    SpikeEmpty {
        /// The value given.
        spec: String,
    },
    /// A `--batch-stall` entry the mock does not know.
    #[error("--batch-stall names an unknown call {name:?}; use upload, create or download")]
    BatchStall {
        /// The entry.
        name: String,
    },
    /// A `--batch-fates` entry the mock does not know.
    #[error(
        "--batch-fates names an unknown fate {name:?}; use complete, fail-validation, expire, output-gone, error-then-success or stall"
    )]
    BatchFate {
        /// The name given.
        name: String,
    },
    /// A `--spike` naming a fault the mock does not know.
    #[error(
        "--spike {spec:?} names an unknown fault {name:?}; use one of missing-scope, \
         rbac-denied, rate-limited, server-error, malformed, hang"
    )]
    UnknownFault {
        /// The value given.
        spec: String,
        /// The fault name that was not recognised.
        name: String,
    },
}

impl TryFrom<&MockArgs> for MockConfig {
    type Error = MockArgsError;

    /// Checks the rates (each in 0..=1, sum at most 1), the limits (positive, one request
    /// limit), the latency shape (spread finite and at least 0, slow-down both halves and a
    /// positive factor), and parses the spikes.
    fn try_from(args: &MockArgs) -> Result<Self, Self::Error> {
        let rates = [
            ("missing-scope-rate", args.missing_scope_rate),
            ("rate-limit-rate", args.rate_limit_rate),
            ("server-error-rate", args.server_error_rate),
            ("malformed-rate", args.malformed_rate),
            ("hang-rate", args.hang_rate),
        ];
        for (flag, value) in rates {
            if !(0.0..=1.0).contains(&value) {
                return Err(MockArgsError::RateOutOfRange { flag, value });
            }
        }
        if let Some(value) = args.requests_per_second
            && !positive(value)
        {
            return Err(MockArgsError::RequestsPerSecond { value });
        }
        for (flag, value) in [
            ("requests-per-minute", args.requests_per_minute),
            ("tokens-per-minute", args.tokens_per_minute),
        ] {
            if let Some(value) = value
                && !positive(value)
            {
                return Err(MockArgsError::PerMinute { flag, value });
            }
        }
        let requests_per_second = match (args.requests_per_second, args.requests_per_minute) {
            (Some(_), Some(_)) => return Err(MockArgsError::TwoRequestLimits),
            (per_second, None) => per_second,
            (None, Some(per_minute)) => Some(per_minute / 60.0),
        };
        if !(args.latency_spread.is_finite() && args.latency_spread >= 0.0) {
            return Err(MockArgsError::LatencySpread {
                value: args.latency_spread,
            });
        }
        let slow_down = match (args.slow_down_at, args.slow_down_factor) {
            (Some(_), Some(value)) if !positive(value) => {
                return Err(MockArgsError::SlowDownFactor { value });
            }
            (Some(at), Some(factor)) => Some(SlowDown { at, factor }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(MockArgsError::SlowDownHalf {
                    given: "slow-down-at",
                    missing: "slow-down-factor",
                });
            }
            (None, Some(_)) => {
                return Err(MockArgsError::SlowDownHalf {
                    given: "slow-down-factor",
                    missing: "slow-down-at",
                });
            }
        };
        let sum: f64 = rates.iter().map(|(_, value)| value).sum();
        // A little slack so that e.g. 0.7 + 0.2 + 0.1 is not rejected for rounding.
        if sum > 1.0 + 1e-9 {
            return Err(MockArgsError::RatesOverOne { sum });
        }
        let spikes = args
            .spikes
            .iter()
            .map(|spec| parse_spike(spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MockConfig {
            latency: args.latency,
            latency_spread: args.latency_spread,
            slow_down,
            seed: args.seed,
            missing_scope_rate: args.missing_scope_rate,
            rate_limit_rate: args.rate_limit_rate,
            retry_after: args.retry_after,
            server_error_rate: args.server_error_rate,
            malformed_rate: args.malformed_rate,
            hang_rate: args.hang_rate,
            hang: args.hang,
            spikes,
            invalid_keys: args.invalid_keys.clone(),
            forbidden_keys: args.forbidden_keys.clone(),
            quota_after: args.quota_after,
            flaky_keys: args
                .flaky_keys
                .iter()
                .map(|spec| parse_flaky_key(spec))
                .collect::<Result<Vec<_>, _>>()?,
            retry_after_style: args.retry_after_style.into(),
            unknown_models: args.unknown_models.clone(),
            requests_per_second,
            tokens_per_minute: args.tokens_per_minute,
            absurd_rate_headers: args.absurd_rate_headers,
            slots: args.slots.map(std::num::NonZeroUsize::get),
            cut_streams: args.cut_streams,
            stream_errors: args.stream_errors,
            require_api_key: args.require_api_key,
            batch_processing: args.batch_processing,
            batch_missing_scope_uploads: args.batch_missing_scope_uploads,
            batch_missing_scope_creates: args.batch_missing_scope_creates,
            batch_fates: args
                .batch_fates
                .iter()
                .map(|name| {
                    BatchFate::from_name(name)
                        .ok_or_else(|| MockArgsError::BatchFate { name: name.clone() })
                })
                .collect::<Result<Vec<_>, _>>()?,
            batch_stalls: args
                .batch_stall
                .iter()
                .map(|name| {
                    BatchOp::from_name(name)
                        .ok_or_else(|| MockArgsError::BatchStall { name: name.clone() })
                })
                .collect::<Result<Vec<_>, _>>()?,
            batch_stall_for: args.batch_stall_for,
            batch_max_open: args.batch_max_open,
        })
    }
}

/// Whether a rate is a positive, finite number.
fn positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

/// Parses `KEY=RATE`.
fn parse_flaky_key(spec: &str) -> Result<(String, f64), MockArgsError> {
    let bad = || MockArgsError::FlakyKey {
        spec: spec.to_owned(),
    };
    let (key, rate) = spec.rsplit_once('=').ok_or_else(bad)?;
    let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
    if key.is_empty() || !(0.0..=1.0).contains(&rate) {
        return Err(bad());
    }
    Ok((key.to_owned(), rate))
}

/// Parses `FROM..TO[:FAULT]`; the fault defaults to missing-scope.
fn parse_spike(spec: &str) -> Result<Spike, MockArgsError> {
    let (window, fault) = match spec.split_once(':') {
        Some((window, name)) => {
            let fault = Fault::from_name(name).ok_or_else(|| MockArgsError::UnknownFault {
                spec: spec.to_owned(),
                name: name.to_owned(),
            })?;
            (window, fault)
        }
        None => (spec, Fault::MissingScope),
    };
    let (from, to) = window
        .split_once("..")
        .ok_or_else(|| MockArgsError::SpikeSyntax {
            spec: spec.to_owned(),
        })?;
    let bound = |text: &str| {
        humantime::parse_duration(text.trim()).map_err(|source| MockArgsError::SpikeDuration {
            spec: spec.to_owned(),
            bound: text.to_owned(),
            source,
        })
    };
    let (start, end) = (bound(from)?, bound(to)?);
    if end <= start {
        return Err(MockArgsError::SpikeEmpty {
            spec: spec.to_owned(),
        });
    }
    Ok(Spike { start, end, fault })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    fn parse(args: &[&str]) -> MockArgs {
        let argv = std::iter::once("runner").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").mock
    }

    #[test]
    fn defaults_make_a_healthy_server_with_latency() {
        let args = parse(&[]);
        assert_eq!(args.addr(), "127.0.0.1:8089".parse().expect("addr"));
        let config = MockConfig::try_from(&args).expect("valid");
        assert_eq!(config.latency, Duration::from_millis(20));
        assert_eq!(config.retry_after, Duration::from_secs(1));
        assert_eq!(config.hang, Duration::from_secs(30));
        assert_eq!(config.missing_scope_rate, 0.0);
        assert!(config.spikes.is_empty());
        assert_eq!(config.quota_after, None);
    }

    #[test]
    fn all_flags_are_carried_over() {
        let args = parse(&[
            "--addr=0.0.0.0:9000",
            "--latency=5ms",
            "--seed=7",
            "--missing-scope-rate=0.1",
            "--rate-limit-rate=0.2",
            "--retry-after=1500ms",
            "--server-error-rate=0.3",
            "--malformed-rate=0.2",
            "--hang-rate=0.2",
            "--hang=2s",
            "--spike=5s..10s",
            "--spike=2s..4s:server-error",
            "--spike=0ms..1m:rbac",
            "--invalid-key=sk-revoked-0000000000",
            "--invalid-key=sk-other-00000000000",
            "--quota-after=12",
        ]);
        let config = MockConfig::try_from(&args).expect("valid");
        assert_eq!(args.addr().port(), 9000);
        assert_eq!(config.latency, Duration::from_millis(5));
        assert_eq!(config.seed, 7);
        assert_eq!(config.retry_after, Duration::from_millis(1500));
        assert_eq!(config.hang, Duration::from_secs(2));
        assert_eq!(config.hang_rate, 0.2);
        let secs = Duration::from_secs;
        assert_eq!(
            config.spikes,
            vec![
                Spike {
                    start: secs(5),
                    end: secs(10),
                    fault: Fault::MissingScope
                },
                Spike {
                    start: secs(2),
                    end: secs(4),
                    fault: Fault::ServerError
                },
                Spike {
                    start: secs(0),
                    end: secs(60),
                    fault: Fault::RbacDenied
                },
            ]
        );
        assert_eq!(config.invalid_keys.len(), 2);
        assert_eq!(config.quota_after, Some(12));
    }

    #[test]
    fn every_fault_name_round_trips() {
        for fault in Fault::ALL {
            assert_eq!(Fault::from_name(fault.name()), Some(fault));
            let spike = parse_spike(&format!("1s..2s:{fault}")).expect("valid spike");
            assert_eq!(spike.fault, fault);
        }
        assert_eq!(Fault::from_name("Server_Error"), Some(Fault::ServerError));
    }

    #[test]
    fn a_rate_outside_zero_to_one_is_refused() {
        for bad in ["1.5", "-0.1", "NaN"] {
            let args = parse(&[&format!("--hang-rate={bad}")]);
            let error = MockConfig::try_from(&args).expect_err("out of range");
            assert!(
                matches!(
                    error,
                    MockArgsError::RateOutOfRange {
                        flag: "hang-rate",
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("--hang-rate must be between 0 and 1")
            );
        }
    }

    #[test]
    fn rates_adding_up_to_more_than_one_are_refused() {
        let ok = parse(&[
            "--missing-scope-rate=0.7",
            "--rate-limit-rate=0.2",
            "--hang-rate=0.1",
        ]);
        assert!(MockConfig::try_from(&ok).is_ok());
        let args = parse(&["--missing-scope-rate=0.6", "--server-error-rate=0.5"]);
        let error = MockConfig::try_from(&args).expect_err("sum over one");
        assert!(
            matches!(error, MockArgsError::RatesOverOne { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("add up to 1.1"), "{error}");
    }

    #[test]
    fn limits_and_latency_shapes_are_carried_over() {
        let args = parse(&[
            "--requests-per-minute=600",
            "--tokens-per-minute=30000",
            "--latency=1s",
            "--latency-spread=0.5",
            "--slow-down-at=30s",
            "--slow-down-factor=10",
            "--absurd-rate-headers",
        ]);
        let config = MockConfig::try_from(&args).expect("valid");
        assert_eq!(config.requests_per_second, Some(10.0));
        assert_eq!(config.tokens_per_minute, Some(30_000.0));
        assert_eq!(config.latency_spread, 0.5);
        assert_eq!(
            config.slow_down,
            Some(SlowDown {
                at: Duration::from_secs(30),
                factor: 10.0
            })
        );
        assert!(config.absurd_rate_headers);
        let defaults = MockConfig::try_from(&parse(&[])).expect("valid");
        assert_eq!(defaults.latency_spread, 0.0);
        assert_eq!(defaults.slow_down, None);
        assert_eq!(defaults.tokens_per_minute, None);
        assert!(!defaults.absurd_rate_headers);
    }

    #[rstest::rstest]
    #[case(&["--tokens-per-minute=0"], "--tokens-per-minute must be a positive number")]
    #[case(&["--tokens-per-minute=NaN"], "--tokens-per-minute must be a positive number")]
    #[case(&["--requests-per-minute=-5"], "--requests-per-minute must be a positive number")]
    #[case(&["--requests-per-second=inf"], "--requests-per-second must be a positive number")]
    #[case(
        &["--requests-per-second=1", "--requests-per-minute=60"],
        "--requests-per-second and --requests-per-minute set the same limit"
    )]
    #[case(&["--latency-spread=-0.1"], "--latency-spread must be 0")]
    #[case(&["--latency-spread=inf"], "--latency-spread must be 0")]
    #[case(&["--slow-down-at=1s", "--slow-down-factor=0"], "--slow-down-factor must be a positive")]
    #[case(&["--slow-down-at=1s", "--slow-down-factor=NaN"], "--slow-down-factor must be a positive")]
    #[case(&["--slow-down-at=1s"], "--slow-down-at needs --slow-down-factor")]
    #[case(&["--slow-down-factor=2"], "--slow-down-factor needs --slow-down-at")]
    fn bad_limits_and_latency_shapes_are_refused(#[case] flags: &[&str], #[case] expected: &str) {
        let error = MockConfig::try_from(&parse(flags)).expect_err("refused");
        assert!(error.to_string().starts_with(expected), "{error}");
    }

    #[test]
    fn bad_spikes_are_refused_with_a_clear_message() {
        let cases = [
            ("5s-10s", "is not FROM..TO[:FAULT]"),
            ("5x..10s", "has a bad duration \"5x\""),
            ("10s..5s", "ends before it starts"),
            ("1s..1s", "ends before it starts"),
            ("1s..2s:teapot", "unknown fault \"teapot\""),
        ];
        for (spec, expected) in cases {
            let args = parse(&[&format!("--spike={spec}")]);
            let error = MockConfig::try_from(&args).expect_err("bad spike");
            let message = error.to_string();
            assert!(message.contains(expected), "{spec}: {message}");
            assert!(message.starts_with("--spike"), "{message}");
        }
    }
}
