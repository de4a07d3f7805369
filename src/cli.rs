//! The raw command-line flags (clap). [`crate::engine::config`] turns them into checked settings.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{AttemptClass, PriceOverride, UnknownName};
use crate::input::{DEFAULT_MAX_LINE_BYTES, InputFormat, Template};
use crate::mock::MockArgs;

pub mod docs;
mod examples;

/// Resilient batch runner for the OpenAI API and OpenAI-compatible servers.
///
/// Streams a JSONL file through a rate-limited worker pool, journals every attempt in SQLite,
/// retries what is transient (including the intermittent "401 Missing scopes"), and can be
/// killed at any moment and resumed without re-sending anything that succeeded.
///
/// The API key comes from OPENAI_API_KEY, never from a flag.
#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    propagate_version = true,
    after_help = examples::top_level()
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send every request of a JSONL, CSV, TSV or text file; submitting the same file again resumes its job
    #[command(after_help = examples::submit())]
    Submit(SubmitArgs),
    /// What a file would cost and how long it would take: read and checked as submit would, nothing sent or written
    Estimate(EstimateArgs),
    /// List the token prices in use: the built-in table with its dates, under your --prices and --price
    Prices(PricesArgs),
    /// Continue a job that was interrupted or stopped
    Resume(ResumeArgs),
    /// Requeue a job's failed requests (all, or one class) with fresh budgets, and run them
    RetryFailed(RetryFailedArgs),
    /// Cancel a --via batch job's batches on the server, wait for them to end, and journal what they finished
    Cancel(CancelArgs),
    /// Show a job's progress and what its attempts ran into
    Status(StatusArgs),
    /// Write a job's results as CSV or Batch API output JSONL
    Export(ExportArgs),
    /// List the jobs in a database
    Jobs(JobsArgs),
    /// Run the built-in fault-injecting mock of the OpenAI API
    MockServer(MockArgs),
    /// Run a sample job against the built-in mock (no key, no network)
    Demo(DemoArgs),
    /// List a job's attempts from the journal, filtered (status, class, key, time, request)
    Attempts(AttemptsArgs),
    /// Chart a job's attempts over time by class and list the spikes with their request ids
    Timeline(TimelineArgs),
    /// Write a job's report as one self-contained HTML file with charts
    Report(ReportArgs),
    /// Check the key, the environment and the API before a big job
    Doctor(DoctorArgs),
    /// Write the shell completion script for bash, zsh, fish, powershell or elvish to stdout
    Completions(CompletionsArgs),
    /// Write the man page (roff, runner.1) to stdout, or every page into a directory
    Man(ManArgs),
}

/// Where jobs live.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// SQLite file holding the jobs, their requests and the attempt journal
    #[arg(long, env = "RUNNER_DB", default_value = "runner.db")]
    pub db: PathBuf,
}

/// The groups of `submit --help` (and of `resume` and `retry-failed`, which flatten [`RunArgs`]).
/// The flags most runs need carry no heading: clap lists those first, under "Options", with
/// `--help` and `--version`; the groups below follow in the order their first flag is declared.
mod heading {
    pub const SPREADSHEETS: &str = "Spreadsheets and text files";
    pub const INPUT: &str = "Input";
    pub const PACING: &str = "Pacing";
    pub const RETRIES: &str = "Retries";
    pub const CONNECTION: &str = "Connection";
    pub const DISPLAY: &str = "Progress and Ctrl-C";
    pub const BATCH: &str = "Batch API";
}

/// Settings of a run; on resume, the job's stored value is used for any flag not given.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// API base URL.
    #[arg(
        long,
        value_name = "URL",
        help = "API base URL [default: $OPENAI_BASE_URL, else https://api.openai.com/v1]"
    )]
    pub base_url: Option<String>,
    /// Requests in flight, fixed [default: the pool sizes itself from the pace and the server's latency]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<NonZeroUsize>,
    /// Requests in flight at most when the pool sizes itself [default: 4096, within the open-file limit]
    #[arg(long, value_name = "N", help_heading = heading::PACING)]
    pub max_in_flight: Option<NonZeroUsize>,
    /// Requests per minute at most, retries included [default: no limit]
    #[arg(long, value_name = "N")]
    pub rpm: Option<NonZeroU32>,
    /// Tokens per minute at most: each request waits for its estimated prompt + output tokens [default: no limit]
    #[arg(long, value_name = "N")]
    pub tpm: Option<NonZeroU32>,
    /// Output tokens counted for --tpm when a request sets no max_tokens / max_completion_tokens / max_output_tokens [default: 256]
    #[arg(long, value_name = "N", help_heading = heading::PACING)]
    pub default_output_tokens: Option<u32>,
    /// Attempts per request for transient failures (connection, timeout, 5xx) [default: 10]
    #[arg(long, value_name = "N", help_heading = heading::RETRIES)]
    pub max_attempts: Option<NonZeroU32>,
    /// Attempt budget of one class per request, e.g. auth_transient=200 [defaults: transient=10, auth_transient=50, rate_limited=50]. Repeatable
    #[arg(long = "retry-budget", value_name = "CLASS=N", help_heading = heading::RETRIES)]
    pub retry_budgets: Vec<RetryBudget>,
    /// First backoff step; step n waits up to BASE·2ⁿ⁻¹, with full jitter [default: 500ms]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = heading::RETRIES)]
    pub backoff_base: Option<Duration>,
    /// Longest backoff step [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = heading::RETRIES)]
    pub backoff_cap: Option<Duration>,
    /// Longest wait honoured from retry-after and similar hints [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = heading::RETRIES)]
    pub max_wait: Option<Duration>,
    /// Longest pause of the circuit breaker between probes [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = heading::RETRIES)]
    pub breaker_max_cooldown: Option<Duration>,
    /// Stop the job after this many consecutive requests fail with the same permanent error, e.g. a wrong model name; 0 never stops [default: 20]
    #[arg(long, value_name = "N", help_heading = heading::RETRIES)]
    pub stop_after_same_error: Option<u32>,
    /// Keys to spread requests over: one per line, KEY or LABEL=KEY [default: $OPENAI_API_KEY]
    #[arg(long, value_name = "PATH", help_heading = heading::CONNECTION)]
    pub keys_file: Option<PathBuf>,
    /// Longest answer body read, in bytes; a longer answer fails its request with response_too_large (never retried) [default: 268435456, 256 MiB; at most 300000000]
    #[arg(long, value_name = "BYTES", help_heading = heading::CONNECTION)]
    pub max_response_bytes: Option<NonZeroU64>,
    /// Extra header sent with every request, as 'Name: value'; stored with the job, and a flag on resume replaces a stored header of the same name. Authorization and api-key are refused: keys come from the environment or --keys-file. Repeatable
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header, help_heading = heading::CONNECTION)]
    pub headers: Vec<(String, String)>,
    /// How the key is sent: bearer (Authorization: Bearer KEY) or azure (api-key: KEY) [default: azure for *.openai.azure.com hosts, else bearer]
    #[arg(long, value_enum, value_name = "STYLE", help_heading = heading::CONNECTION)]
    pub auth: Option<AuthStyle>,
    /// api-version query parameter added to every request (Azure OpenAI) [default: $OPENAI_API_VERSION]
    #[arg(long, value_name = "VERSION", help_heading = heading::CONNECTION)]
    pub api_version: Option<String>,
    /// Time limit of one attempt, e.g. 90s or 5m [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, help_heading = heading::CONNECTION)]
    pub timeout: Option<Duration>,
    /// Allow plain http:// to a host other than this machine while a key is set (the key then
    /// crosses the network in the clear). Not stored: say it again on every run
    #[arg(long, help_heading = heading::CONNECTION)]
    pub allow_insecure_http: bool,
    /// After Ctrl-C, how long requests in flight may take to finish
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s", help_heading = heading::DISPLAY)]
    pub grace: Duration,
    /// No progress bar: print a summary line every few seconds instead
    #[arg(long, help_heading = heading::DISPLAY)]
    pub no_progress: bool,
    /// How requests are sent: sync (each one directly), batch (through the hosted Batch API, at half the price, within 24 hours) or auto (batch until --deadline comes close, then directly). Stored with the job; `resume --via sync` finishes a batch job directly [default: sync]
    #[arg(long, value_enum, value_name = "MODE", help_heading = heading::BATCH)]
    pub via: Option<Via>,
    /// --via batch: lines per input file at most [default: 50000]
    #[arg(long, value_name = "N", help_heading = heading::BATCH)]
    pub batch_max_lines: Option<NonZeroUsize>,
    /// --via batch: bytes per input file at most [default: 209715200, 200 MB]
    #[arg(long, value_name = "BYTES", help_heading = heading::BATCH)]
    pub batch_max_bytes: Option<NonZeroUsize>,
    /// --via batch: longest time between two polls of a batch; the first polls come sooner [default: 1m]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, help_heading = heading::BATCH)]
    pub poll_interval: Option<Duration>,
    /// Stop sending before the job could spend more than this, in USD: what its answers cost (by their usage) plus the worst case of what is in flight stays under it. Stored with the job; `resume --max-cost` raises it
    #[arg(long, value_name = "USD", help_heading = "Cost")]
    pub max_cost: Option<MaxCost>,
    /// Price of one model in USD per 1M input and output tokens (and cached input), over the built-in table, e.g. my-model=0.5,1.5 (stored with the job; `runner prices` lists the table). Repeatable
    #[arg(
        long = "price",
        value_name = "MODEL=IN,OUT[,CACHED]",
        help_heading = "Cost"
    )]
    pub price: Vec<PriceOverride>,
    /// --via auto: when the job must be done, as a duration from now (6h, 90m) or an RFC 3339 time (2026-12-08T09:00:00Z). Stored with the job; `resume --deadline` changes it
    #[arg(long, value_name = "WHEN", value_parser = parse_deadline, help_heading = heading::BATCH)]
    pub deadline: Option<Deadline>,
    /// --via auto: the time kept before the deadline, beyond what sending the rest directly needs, for cancelling the open batches (OpenAI: up to 10 minutes) and a margin [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, help_heading = heading::BATCH)]
    pub switch_margin: Option<Duration>,
    /// --via batch: delete each batch's input, output and error files from the server once its results are journaled (stored with the job)
    #[arg(long, help_heading = heading::BATCH)]
    pub delete_batch_files: bool,
}

/// A `--max-cost`: a positive, finite number of USD.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxCost(pub f64);

impl FromStr for MaxCost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usd = s.trim().trim_start_matches('$');
        match crate::domain::price::parse_usd(usd) {
            Some(v) if v > 0.0 => Ok(MaxCost(v)),
            _ => Err(format!(
                "'{s}' is not an amount of USD above 0, e.g. --max-cost 25 or --max-cost 2.50"
            )),
        }
    }
}

/// How a job's requests reach the API.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Each request sent directly, as it is claimed.
    #[default]
    Sync,
    /// Requests grouped into input files and run by the hosted Batch API.
    Batch,
    /// Through the hosted Batch API until the deadline (`--deadline`) comes too close, then
    /// the rest directly: the lowest price that still meets the deadline.
    Auto,
}

/// How the key is sent.
pub use crate::http::client::AuthStyle;

/// A duration that must be more than zero: an attempt with no time at all, or a poll or a chart
/// bucket of zero, could only loop.
fn positive_duration(flag: &str) -> Result<Duration, String> {
    match humantime::parse_duration(flag) {
        Ok(d) if d.is_zero() => Err("must be more than 0, e.g. 30s".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A `--deadline`: unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub i64);

/// `6h` from now, or an RFC 3339 time.
fn parse_deadline(flag: &str) -> Result<Deadline, String> {
    let at = match humantime::parse_duration(flag) {
        Ok(d) => std::time::SystemTime::now() + d,
        Err(_) => humantime::parse_rfc3339_weak(flag).map_err(|_| {
            format!("'{flag}' is neither a duration (6h, 90m) nor an RFC 3339 time (2026-12-08T09:00:00Z)")
        })?,
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("'{flag}' is before 1970"))?
        .as_millis();
    Ok(Deadline(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Parses one `--header 'Name: value'`.
fn parse_header(flag: &str) -> Result<(String, String), String> {
    crate::http::headers::parse_flag(flag).map_err(|e| e.to_string())
}

/// One `--retry-budget CLASS=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// `transient`, `auth_transient` or `rate_limited`.
    pub class: AttemptClass,
    /// Attempts of that class a request may spend.
    pub attempts: u32,
}

impl FromStr for RetryBudget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (class, n) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not CLASS=N, e.g. auth_transient=200"))?;
        let class: AttemptClass = class
            .trim()
            .parse()
            .map_err(|e: UnknownName| e.to_string())?;
        let budgeted = match class {
            AttemptClass::Transient | AttemptClass::AuthTransient | AttemptClass::RateLimited => {
                true
            }
            // invalid_response is retried once, by design; the others are never retried.
            AttemptClass::Succeeded
            | AttemptClass::RequestFailed
            | AttemptClass::InvalidResponse
            | AttemptClass::JobStop
            | AttemptClass::InvalidInput
            | AttemptClass::Interrupted => false,
        };
        if !budgeted {
            return Err(format!(
                "class '{class}' is never retried: budgets exist for transient, auth_transient and rate_limited"
            ));
        }
        let attempts: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("'{n}' is not a positive number of attempts"))?;
        Ok(RetryBudget { class, attempts })
    }
}

/// A command line whose flags do not fit together, or do not fit the input they are given
/// with (`--template` with a JSONL file, say): exit code 2, as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `runner submit`.
#[derive(Args, Debug, Clone)]
pub struct SubmitArgs {
    /// The input: JSONL (Batch API lines or plain request bodies, one per line), a spreadsheet
    /// with a header row (.csv, .tsv: one chat request per row), or plain text (.txt: one prompt
    /// per line)
    pub file: PathBuf,
    /// How to read FILE [default: by its extension: .csv, .tsv, .txt; anything else is JSONL]
    #[arg(long, value_enum, value_name = "FORMAT", help_heading = heading::SPREADSHEETS)]
    pub format: Option<InputFormat>,
    /// CSV/TSV: the column that holds each row's prompt [default: the column named prompt, else the only column besides id]
    #[arg(long, value_name = "NAME", conflicts_with = "template", help_heading = heading::SPREADSHEETS)]
    pub prompt_column: Option<String>,
    /// CSV/TSV: write each row's prompt from its cells, e.g. 'Classify the review: {review}'; {{ and }} are a literal { and }
    #[arg(long, value_name = "TEXT", help_heading = heading::SPREADSHEETS)]
    pub template: Option<Template>,
    /// CSV/TSV/TXT: a system message sent before each prompt (stored with the job)
    #[arg(long, value_name = "TEXT", help_heading = heading::SPREADSHEETS)]
    pub system: Option<String>,
    /// max_tokens of every request that sets no output limit of its own (max_output_tokens for /v1/responses; stored with the job)
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<NonZeroU32>,
    /// Job name [default: the file's stem]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Endpoint for plain JSONL lines (Batch lines carry their own url; rows and text lines go to /v1/chat/completions) [default: /v1/chat/completions]
    #[arg(long, value_name = "PATH", help_heading = heading::INPUT)]
    pub endpoint: Option<String>,
    /// Model for bodies that name none (required for CSV, TSV and TXT input, unless stored with the job)
    // First in its group: a spreadsheet or text file cannot run without it.
    #[arg(long, value_name = "MODEL", display_order = 0)]
    pub model: Option<String>,
    /// Longest input line (or spreadsheet row) accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE_BYTES, help_heading = heading::INPUT)]
    pub max_line_bytes: usize,
    /// Record each line (or row) that is not a valid request as a failed request (error class
    /// invalid_input) and run the rest, instead of refusing the whole file. A repeated custom_id
    /// or a changed body is still refused
    #[arg(long, help_heading = heading::INPUT)]
    pub skip_invalid: bool,
    /// Read and check the file, print what it would cost and how long it would take (as `runner estimate`), and stop: nothing is sent or written
    #[arg(long)]
    pub dry_run: bool,
    /// Run settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `runner estimate`: submit's flags, and how to print.
#[derive(Args, Debug, Clone)]
pub struct EstimateArgs {
    /// The file and the flags submit would be given.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Expect each answer as long as the average answer of this finished job [default: half of each request's max_tokens]
    #[arg(long, value_name = "JOB")]
    pub like: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Prices file over the built-in table: JSON {"MODEL": {"input": IN, "output": OUT}} or CSV rows model,input,output (--price wins over it)
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

/// `runner resume`.
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Model for the requests still to send whose lines named none (a wrong --model is fixed in place; stored with the job)
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Run settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `runner retry-failed`.
#[derive(Args, Debug, Clone)]
pub struct RetryFailedArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only requests whose last error has this class, e.g. auth_transient or request_failed
    #[arg(long, value_name = "CLASS")]
    pub class: Option<AttemptClass>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Run settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `runner cancel`.
#[derive(Args, Debug, Clone)]
pub struct CancelArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Longest time between two polls while the batches end [default: the job's --poll-interval]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub poll_interval: Option<Duration>,
    /// Allow plain http:// to a host other than this machine while a key is set. Not stored
    #[arg(long)]
    pub allow_insecure_http: bool,
}

impl CancelArgs {
    /// The run settings `cancel` overrides: only the poll interval.
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            poll_interval: self.poll_interval,
            allow_insecure_http: self.allow_insecure_http,
            no_progress: true,
            ..RunArgs::default()
        }
    }
}

/// `runner status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Also chart the attempts over time and list the spikes (as `runner timeline`)
    #[arg(long)]
    pub timeline: bool,
    /// Timeline bucket width, e.g. 10s or 1m [default: chosen for ~20 to 75 buckets]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, requires = "timeline")]
    pub bucket: Option<Duration>,
    /// Prices for the cost estimate.
    #[command(flatten)]
    pub prices: PriceArgs,
}

/// Output formats of `runner export`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One row per request, with a header row
    Csv,
    /// The Batch API's output format, one line per finished request
    Jsonl,
}

/// Column layouts of a CSV export.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportLayout {
    /// A spreadsheet job's input columns first, in their order and with their names, then the answer columns
    Input,
    /// The fixed columns of every job (custom_id, status, …, metadata, prompt)
    Standard,
}

/// `runner export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// CSV columns [default: input for a job submitted from a .csv or .tsv file, else standard]
    #[arg(long, value_enum, value_name = "LAYOUT")]
    pub layout: Option<ExportLayout>,
    /// Write here (created with mode 0600) instead of stdout
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// CSV cells exactly as stored. By default a cell starting with =, +, -, @, tab or CR gets a
    /// leading ' so that spreadsheets show it instead of running it as a formula
    #[arg(long)]
    pub no_sanitize: bool,
    /// Prices for the cost_usd column.
    #[command(flatten)]
    pub prices: PriceArgs,
}

/// `runner jobs`.
#[derive(Args, Debug, Clone)]
pub struct JobsArgs {
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
}

/// `runner demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Database for the demo job (replaced on every run)
    #[arg(long, default_value = "runner-demo.db")]
    pub db: PathBuf,
    /// Where the results CSV goes
    #[arg(long, default_value = "demo-results.csv")]
    pub output: PathBuf,
    /// No progress bar: print a summary line every few seconds instead
    #[arg(long)]
    pub no_progress: bool,
    /// sync (each request sent directly) or batch (through the mock's Files and Batches API: chunks, a refused create, an expired batch)
    #[arg(long, value_enum, value_name = "MODE", default_value = "sync")]
    pub via: Via,
}

/// Token prices for the cost estimate (USD per 1M tokens), over the built-in table.
#[derive(Args, Debug, Clone, Default)]
pub struct PriceArgs {
    /// Prices file: JSON {"MODEL": {"input": IN, "output": OUT, "cached_input": CACHED}} or CSV rows model,input,output or model,input,output,cached_input
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Price of one model in USD per 1M input and output tokens (and cached input tokens), e.g. my-model=0.5,1.5. Repeatable
    #[arg(long = "price", value_name = "MODEL=IN,OUT[,CACHED]")]
    pub price: Vec<PriceOverride>,
}

/// `runner prices`.
#[derive(Args, Debug, Clone)]
pub struct PricesArgs {
    /// Your prices over the built-in ones.
    #[command(flatten)]
    pub prices: PriceArgs,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `runner attempts`.
#[derive(Args, Debug, Clone)]
pub struct AttemptsArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Only this request's attempts (its custom_id, or the derived key)
    #[arg(long, value_name = "ID")]
    pub custom_id: Option<String>,
    /// Only answers with this HTTP status, e.g. 401
    #[arg(long, value_name = "CODE")]
    pub status: Option<u16>,
    /// Only this class: succeeded, transient, auth_transient, rate_limited, request_failed, job_stop or interrupted
    #[arg(long, value_name = "CLASS")]
    pub class: Option<AttemptClass>,
    /// Only attempts sent with this key: its label, or its fingerprint as journaled (sk-proj-…abcd)
    #[arg(long, value_name = "LABEL")]
    pub key: Option<String>,
    /// Only attempts sent at or after T: RFC 3339 (2026-04-14T09:30:00Z) or a duration ago (10m, 2h)
    #[arg(long, value_name = "T")]
    pub since: Option<TimeArg>,
    /// Only attempts sent at or before T: RFC 3339 or a duration ago
    #[arg(long, value_name = "T")]
    pub until: Option<TimeArg>,
    /// Only attempts that did not succeed
    #[arg(long)]
    pub errors: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = AttemptsFormat::Table)]
    pub format: AttemptsFormat,
    /// Only the most recent N matching attempts (still listed oldest first)
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// `runner timeline`.
#[derive(Args, Debug, Clone)]
pub struct TimelineArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Bucket width, e.g. 10s or 1m [default: chosen for ~20 to 75 buckets]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub bucket: Option<Duration>,
    /// Print JSON instead of the chart
    #[arg(long)]
    pub json: bool,
}

/// `runner report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Job name [default: the most recent job]
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// The HTML file to write (self-contained: open it in any browser, offline)
    #[arg(long, short, value_name = "PATH")]
    pub output: PathBuf,
    /// Bucket width of the charts, e.g. 10s or 1m [default: chosen for ~20 to 75 buckets]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub bucket: Option<Duration>,
    /// Prices for the cost estimate.
    #[command(flatten)]
    pub prices: PriceArgs,
}

/// `runner doctor`.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// API base URL.
    #[arg(
        long,
        value_name = "URL",
        help = "API base URL to check [default: $OPENAI_BASE_URL, else https://api.openai.com/v1]"
    )]
    pub base_url: Option<String>,
    /// Keys file to check, one key per line as KEY or LABEL=KEY [default: $OPENAI_API_KEY]
    #[arg(long, value_name = "PATH")]
    pub keys_file: Option<PathBuf>,
    /// Time limit of each network check
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "10s")]
    pub timeout: Duration,
}

/// `runner completions`.
#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `runner man`.
#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write runner.1 and one page per command (runner-submit.1, ...) into this directory
    /// instead of runner.1 to stdout
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Output formats of `runner attempts`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptsFormat {
    /// Aligned columns for people (long custom_ids and messages are shortened)
    Table,
    /// One JSON object per attempt
    Jsonl,
    /// One row per attempt, with a header row
    Csv,
}

/// A point in time given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// An absolute time, unix ms.
    At(i64),
    /// This long before now.
    Ago(Duration),
}

impl TimeArg {
    /// Unix ms, with `now` for relative times.
    pub fn resolve(self, now: i64) -> i64 {
        match self {
            TimeArg::At(ms) => ms,
            TimeArg::Ago(d) => now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl FromStr for TimeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
            let ms = t.unix_timestamp_nanos() / 1_000_000;
            return i64::try_from(ms)
                .map(TimeArg::At)
                .map_err(|_| format!("'{s}' is out of range"));
        }
        humantime::parse_duration(s).map(TimeArg::Ago).map_err(|_| {
            format!(
                "'{s}' is neither an RFC 3339 time (2026-04-14T09:30:00Z) nor a duration ago (10m, 2h30m)"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("2026-04-14T09:30:00Z", TimeArg::At(1_776_159_000_000))]
    #[case("2026-04-14T11:30:00+02:00", TimeArg::At(1_776_159_000_000))]
    #[case("10m", TimeArg::Ago(Duration::from_secs(600)))]
    #[case("1h 30m", TimeArg::Ago(Duration::from_secs(5400)))]
    fn times_are_absolute_or_ago(#[case] text: &str, #[case] expected: TimeArg) {
        assert_eq!(text.parse::<TimeArg>(), Ok(expected));
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(
            TimeArg::Ago(Duration::from_secs(600)).resolve(1_000_000),
            400_000
        );
        let err = "yesterday".parse::<TimeArg>().expect_err("not a time");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn class_filters_accept_interrupted() {
        let cli =
            Cli::try_parse_from(["runner", "attempts", "--class", "interrupted"]).expect("parses");
        let Command::Attempts(args) = cli.command else {
            panic!("not attempts: {:?}", cli.command);
        };
        assert_eq!(args.class, Some(AttemptClass::Interrupted));
        let err = Cli::try_parse_from(["runner", "attempts", "--class", "oops"])
            .expect_err("unknown class");
        assert!(err.to_string().contains("auth_transient"), "{err}");
    }
}
