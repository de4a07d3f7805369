//! `runner report`: one self-contained HTML file that shows what happened to a job.
//!
//! The page holds its CSS and its charts (inline SVG drawn in `svg.rs`); it loads nothing, runs no
//! script and opens offline in any browser. Sections: the job at a glance (cards), what happened
//! in plain words, attempts over time by class with spikes and breaker pauses, the error share
//! with the spike threshold, latency percentiles, the health of each key, the spikes with their
//! request ids, the events, and the counts behind it all.
//!
//! # Layout
//! - `mod.rs`: the command, HTML escaping.
//! - `page.rs`: the page, section by section, and its stylesheet.
//! - `svg.rs`: the charts.

mod page;
mod svg;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::cli::ReportArgs;
use crate::engine::config::JobSettings;
use crate::inspect::export::job_prices;
use crate::inspect::prices::PriceTable;
use crate::inspect::summary::JobSummary;
use crate::inspect::timeline::{self, Timeline};
use crate::store::{self, db, journal};
use crate::util::clock::now_ms;
use crate::util::fs::Replacement;
use svg::SpendSeries;

pub use page::render;

/// Runs `runner report`: reads the job, writes the page beside `--output` and renames it into
/// place (mode 0600: it quotes error messages and request ids). Says where on stderr.
///
/// # Errors
/// Unknown job or database, an unreadable prices file, a file that cannot be written.
pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let conn = store::open_read_only(&args.db.db)?;
    let job = db::resolve_job(&conn, args.job.as_deref())?;
    let prices =
        job_prices(&job).overridden_by(args.prices.prices.as_deref(), &args.prices.price)?;
    let cap = JobSettings::from_json(&job.config)
        .ok()
        .and_then(|s| s.max_cost);
    let timeline: Timeline = timeline::build(&conn, &job, args.bucket)?;
    let spend = spend_series(&conn, &job, &timeline, &prices, cap)?;
    let summary = JobSummary::load(&conn, job, &prices)?;
    let html = render(&summary, &timeline, &spend, now_ms());
    crate::inspect::export::refuse_database(&args.output, &args.db.db)?;
    write_atomically(&args.output, html.as_bytes())?;
    crate::say!(
        "{}: report written to {} ({} KB, {} spikes)",
        summary.job.name,
        args.output.display(),
        html.len().div_ceil(1024),
        timeline.spikes.len()
    );
    Ok(())
}

/// What the job's answers cost in each bucket of `t`, by when they succeeded.
fn spend_series(
    conn: &rusqlite::Connection,
    job: &db::Job,
    t: &Timeline,
    prices: &PriceTable,
    cap: Option<f64>,
) -> anyhow::Result<SpendSeries> {
    let mut per_bucket = vec![0.0; t.buckets.len()];
    let last = per_bucket.len().saturating_sub(1);
    journal::for_each_billed(conn, job.id, |billed| {
        let Some(usd) = billed
            .model
            .as_deref()
            .and_then(|m| prices.usage_cost(m, billed.tokens, billed.batch))
        else {
            return;
        };
        let index = (billed.finished_at - t.start()).max(0) / t.width_ms.max(1);
        if let Some(cell) = per_bucket.get_mut(usize::try_from(index).unwrap_or(last).min(last)) {
            *cell += usd;
        }
    })?;
    Ok(SpendSeries { per_bucket, cap })
}

/// Writes `bytes` beside `path`, then renames: a reader never sees half a page.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut replacement = Replacement::create(path)
        .with_context(|| format!("cannot create {}.partial", path.display()))?;
    replacement
        .file()
        .write_all(bytes)
        .with_context(|| format!("cannot write {}.partial", path.display()))?;
    replacement
        .commit()
        .with_context(|| format!("cannot create {}", path.display()))
}

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<b a="1">'x' & y</b>"#),
            "&lt;b a=&quot;1&quot;&gt;&#39;x&#39; &amp; y&lt;/b&gt;"
        );
    }
}
