//! `runner estimate FILE` (and `runner submit --dry-run`): what a file would cost and how long
//! it would take, before anything is sent.
//!
//! The file is read and checked as `submit` reads it (the same flags, the same errors, a
//! repeated custom_id included); nothing is sent and nothing is written. Each request's prompt
//! is counted with the model's tokenizer, as the pacing counts it ([`crate::domain::tokens`]),
//! and its output as a range: at most what the request allows (`max_tokens`,
//! `max_completion_tokens`, `max_output_tokens`, else `--default-output-tokens`), and a stated
//! expectation: [`EXPECTED_OUTPUT_SHARE`] of that, or the average answer of a finished job
//! (`--like JOB`). Both are priced directly and through the hosted Batch API.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{EstimateArgs, SubmitArgs};
use crate::engine::config::{ApiEnv, JobSettings};
use crate::engine::destination;
use crate::engine::rate_limit::Limits;
use crate::http::key::ApiKey;
pub use crate::input::tally::{EXPECTED_OUTPUT_SHARE, Group, Range};
use crate::input::tally::{Share, Tally};
use crate::input::{InputError, InputReader};
use crate::inspect::prices::{PriceTable, Usd};
use crate::store::{self, db, journal};

/// What `estimate` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// The file read.
    pub file: String,
    /// Requests in all (lines that are not requests, with `--skip-invalid`, are not counted).
    pub requests: u64,
    /// Lines recorded as failed by `--skip-invalid` instead of refusing the file.
    pub invalid_lines: u64,
    /// Per endpoint and model.
    pub groups: Vec<Group>,
    /// Sum of the priced groups, USD, sent directly.
    pub usd_direct: Range,
    /// The same through the hosted Batch API.
    pub usd_batch: Range,
    /// Models with no price: not in the sums.
    pub unpriced: Vec<String>,
    /// Where the expected output comes from.
    pub expectation: String,
    /// What the prices are.
    pub prices: String,
    /// The limits the time is computed at, when any is known, and where they come from.
    pub limits: Option<(String, String)>,
    /// Seconds the job needs at least at those limits.
    pub seconds_at_limits: Option<u64>,
    /// Seconds per 1,000 requests a minute of limit, when no limit is known.
    pub seconds_per_1000_rpm: u64,
}

/// `runner estimate`.
///
/// # Errors
/// The file's first error (as `submit` would say it), bad flags, a `--like` job that is not
/// there, an unreadable prices file.
pub fn estimate(args: &EstimateArgs, env: &ApiEnv, out: &mut dyn Write) -> anyhow::Result<()> {
    let estimate = compute(
        &args.submit,
        args.like.as_deref(),
        args.prices.as_deref(),
        env,
    )?;
    match args.json {
        true => {
            // Written as text, so that a closed pipe is the io::Error it is.
            writeln!(out, "{}", serde_json::to_string_pretty(&estimate)?)?;
        }
        false => write_text(&estimate, out)?,
    }
    Ok(())
}

/// Reads `args.file` as `submit` would and prices it.
///
/// # Errors
/// As [`estimate`].
pub fn compute(
    args: &SubmitArgs,
    like: Option<&str>,
    prices_file: Option<&Path>,
    env: &ApiEnv,
) -> anyhow::Result<Estimate> {
    let mut settings = JobSettings::defaults(env);
    if let Some(endpoint) = &args.endpoint {
        settings.endpoint.clone_from(endpoint);
    }
    if let Some(model) = &args.model {
        settings.model = Some(model.clone());
    }
    settings.apply(&args.run);
    settings.apply_input(args)?;
    settings.max_line_bytes = args.max_line_bytes;
    destination::settle(&mut settings, false, &args.run, env);
    let table = PriceTable::with_overrides(prices_file, &args.run.price)?;
    let share = match like {
        Some(job) => Share::Like(average_answer(&args.db.db, job)?),
        None => Share::Fraction(EXPECTED_OUTPUT_SHARE),
    };
    let reader =
        InputReader::open(&args.file, settings.input_options())?.skip_invalid(args.skip_invalid);
    let default_output = u64::from(settings.default_output_tokens);
    let (mut estimate, tally) = read(reader, &args.file, default_output, share)?;
    estimate.expectation = match share {
        Share::Fraction(f) => format!(
            "{:.0}% of each request's largest answer (--like JOB uses a finished job's answers)",
            f * 100.0
        ),
        Share::Like(avg) => format!(
            "the average answer of job {}: {avg:.0} tokens",
            like.unwrap_or_default()
        ),
    };
    price(&mut estimate, tally, &table);
    time(&mut estimate, args, &settings, env);
    Ok(estimate)
}

/// The average `completion_tokens` of a finished job's successful requests.
fn average_answer(db_path: &Path, job: &str) -> anyhow::Result<f64> {
    let conn = store::open_read_only(db_path).with_context(|| format!("--like {job}"))?;
    let found = db::find_job(&conn, job)?
        .with_context(|| format!("--like {job}: no job named {job} in {}", db_path.display()))?;
    let tokens = journal::tokens_by_model(&conn, found.id)?;
    let requests: u64 = tokens.iter().map(|t| t.requests).sum();
    let completion: i64 = tokens.iter().map(|t| t.completion).sum();
    anyhow::ensure!(
        requests > 0,
        "--like {job}: the job has no successful request with usage to learn from"
    );
    Ok(completion.max(0) as f64 / requests as f64)
}

/// Counts every request of the file, by endpoint and model.
fn read(
    reader: InputReader,
    file: &Path,
    default_output: u64,
    share: Share,
) -> Result<(Estimate, Tally), InputError> {
    let skips = reader.skips_invalid();
    let mut tally = Tally::new(default_output, share, true);
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut estimate = Estimate {
        file: file.display().to_string(),
        ..Estimate::default()
    };
    for read in reader {
        let prompt = match read {
            Ok(prompt) => prompt,
            Err(e) if skips && e.is_invalid_line() => {
                estimate.invalid_lines += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(id) = &prompt.custom_id
            && let Some(first_line) = ids.insert(id.clone(), prompt.line)
        {
            return Err(InputError::DuplicateCustomId {
                path: file.to_owned(),
                custom_id: id.clone(),
                first_line,
                line: prompt.line,
            });
        }
        tally.add(&prompt);
    }
    estimate.requests = tally.requests;
    Ok((estimate, tally))
}

/// Puts the priced tally into the estimate.
fn price(estimate: &mut Estimate, tally: Tally, table: &PriceTable) {
    estimate.prices = table.source();
    let priced = tally.price(table);
    estimate.groups = priced.groups;
    estimate.usd_direct = priced.usd_direct;
    estimate.usd_batch = priced.usd_batch;
    estimate.unpriced = priced.unpriced;
}

/// The time at the limits known: `--rpm`/`--tpm`, else the limits the same job was last told
/// by its server, else those the same server told another job sent with the same key (all
/// journaled); else the time per 1,000 requests a minute.
fn time(estimate: &mut Estimate, args: &SubmitArgs, settings: &JobSettings, env: &ApiEnv) {
    let given = Limits {
        requests: args.run.rpm.map(|n| u64::from(n.get())),
        tokens: args.run.tpm.map(|n| u64::from(n.get())),
    };
    let known = match (given.requests, given.tokens) {
        (None, None) => journaled_limits(args, settings, env),
        _ => Some((given, "--rpm/--tpm".to_owned())),
    };
    let requests = estimate.requests as f64;
    estimate.seconds_per_1000_rpm = (requests / 1000.0 * 60.0).ceil() as u64;
    let Some((limits, source)) = known else {
        return;
    };
    // The API admits a request against the token limit at its prompt plus its largest answer.
    let admitted: u64 = estimate
        .groups
        .iter()
        .map(|g| g.input_tokens + g.output_tokens_max)
        .sum();
    let by_requests = limits.requests.map(|rpm| requests / rpm as f64 * 60.0);
    let by_tokens = limits.tokens.map(|tpm| admitted as f64 / tpm as f64 * 60.0);
    let seconds = by_requests.into_iter().chain(by_tokens).fold(0.0, f64::max);
    estimate.seconds_at_limits = Some(seconds.ceil() as u64);
    estimate.limits = Some((limits.describe(), source));
}

/// The limits last journaled for the job this file would go into, else the last ones the same
/// server announced to any job of the database sent with the same key; and where they come
/// from.
fn journaled_limits(
    args: &SubmitArgs,
    settings: &JobSettings,
    env: &ApiEnv,
) -> Option<(Limits, String)> {
    let name = match &args.job {
        Some(name) => name.clone(),
        None => args.file.file_stem()?.to_str()?.to_owned(),
    };
    // Read only: an estimate writes nothing, and creates no file.
    let conn = store::open_read_only(&args.db.db).ok()?;
    let own = db::find_job(&conn, &name)
        .ok()
        .flatten()
        .and_then(|job| {
            journal::last_event_detail(&conn, job.id, crate::domain::EventKind::Limits).ok()?
        })
        .map(|detail| (detail, "announced to this job's last run".to_owned()));
    let (detail, source) = own.or_else(|| {
        let key = env.api_key.as_ref().map(ApiKey::fingerprint);
        let (job, detail) = journal::last_limits_at(&conn, &settings.base_url, key).ok()??;
        Some((
            detail,
            format!("announced by {} to job {job}", settings.base_url),
        ))
    })?;
    let limits = Limits::parse(&detail);
    (limits.requests.is_some() || limits.tokens.is_some()).then_some((limits, source))
}

fn write_text(e: &Estimate, out: &mut dyn Write) -> std::io::Result<()> {
    let n = |v: u64| indicatif::HumanCount(v).to_string();
    writeln!(
        out,
        "{}: {} requests{}",
        e.file,
        n(e.requests),
        match e.invalid_lines {
            0 => String::new(),
            k => format!(" ({} invalid lines left out: --skip-invalid)", n(k)),
        }
    )?;
    for g in &e.groups {
        let model = g.model.as_deref().unwrap_or("(no model)");
        let cost = match g.usd_direct {
            Some(usd) => format!("≈ {} (at most {})", Usd(usd.expected), Usd(usd.at_most)),
            None => "no price".to_owned(),
        };
        writeln!(
            out,
            "  {} × {model} to {}: {} input tokens, {} output tokens expected (at most {}); {cost}",
            n(g.requests),
            g.endpoint,
            n(g.input_tokens),
            n(g.output_tokens_expected),
            n(g.output_tokens_max),
        )?;
    }
    writeln!(
        out,
        "cost, sent directly: ≈ {} (at most {})",
        Usd(e.usd_direct.expected),
        Usd(e.usd_direct.at_most)
    )?;
    writeln!(
        out,
        "cost, --via batch:   ≈ {} (at most {}): half, answered within 24 hours",
        Usd(e.usd_batch.expected),
        Usd(e.usd_batch.at_most)
    )?;
    if !e.unpriced.is_empty() {
        writeln!(
            out,
            "not priced (not in the sums): {}: pass --price MODEL=IN,OUT (USD per 1M tokens) or --prices FILE",
            e.unpriced.join(", ")
        )?;
    }
    writeln!(out, "expected output: {}", e.expectation)?;
    writeln!(out, "prices: {}", e.prices)?;
    match (&e.limits, e.seconds_at_limits) {
        (Some((limits, source)), Some(seconds)) => writeln!(
            out,
            "time: at least {} at {limits} ({source})",
            human(seconds)
        )?,
        _ => writeln!(
            out,
            "time: {} at 1,000 requests/min, {} at 10,000 (no limit known: --rpm, --tpm, or a run's announced limits)",
            human(e.seconds_per_1000_rpm),
            human(e.seconds_per_1000_rpm.div_ceil(10)),
        )?,
    }
    Ok(())
}

fn human(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(1))).to_string()
}
