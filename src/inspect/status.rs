//! `runner status` and `runner jobs`: read-only views of the journal, safe while a job runs.
//! The numbers come from [`crate::inspect::summary`]; the timeline from [`crate::inspect::timeline`].

use std::io::Write;

use serde_json::{Value, json};

use crate::cli::{JobsArgs, StatusArgs, TimelineArgs};
use crate::domain::EventKind;
use crate::inspect::prices::{CostEstimate, Usd};
use crate::inspect::summary::{JobSummary, RunnerLease};
use crate::inspect::timeline::{self, human_ms, pairs, status_label};
use crate::store::batches::ChunkRow;
use crate::store::{self, db, journal};
use crate::util::clock::{rfc3339, utc};
use crate::util::text::printable;

/// Prints one job's state, requests by state, attempts by class and by HTTP status, tokens and
/// their estimated cost, throughput and recent events; with `--timeline`, the timeline too.
///
/// # Errors
/// Unknown job or database, an unreadable prices file; a write failure.
pub fn status(args: &StatusArgs, mut out: impl Write) -> anyhow::Result<()> {
    let conn = store::open_read_only(&args.db.db)?;
    let job = db::resolve_job(&conn, args.job.as_deref())?;
    // The prices the job was run with (`--price`, stored), under the ones given here, as
    // `export` and `report` layer them.
    let stored = crate::engine::config::JobSettings::from_json(&job.config).ok();
    let prices = crate::inspect::export::job_prices(&job)
        .overridden_by(args.prices.prices.as_deref(), &args.prices.price)?;
    let max_cost = stored.as_ref().and_then(|s| s.max_cost);
    let auto = match stored.as_ref().map(|s| (s.batch.via, s.batch.deadline_ms)) {
        Some((crate::engine::config::Via::Auto, Some(deadline))) => Some(Auto {
            deadline,
            plan: journal::last_event_detail(&conn, job.id, EventKind::Plan)?,
            switch: journal::last_event_detail(&conn, job.id, EventKind::Switch)?,
        }),
        _ => None,
    };
    let timeline = if args.timeline {
        Some(timeline::build(&conn, &job, args.bucket)?)
    } else {
        None
    };
    let summary = JobSummary::load(&conn, job, &prices)?;
    if args.json {
        let mut value = summary_json(&summary);
        value["cost"]["max_cost_usd"] = json!(max_cost);
        if let Some(auto) = &auto {
            let (by_batch, directly) = ways(&summary);
            value["deadline"] = json!({
                "deadline": rfc3339(auto.deadline),
                "plan": auto.plan,
                "switch": auto.switch,
                "succeeded_by_batch": by_batch,
                "succeeded_directly": directly,
            });
        }
        if let Some(t) = &timeline {
            value["timeline"] = timeline::to_json(t);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    write_summary(&summary, &mut out)?;
    if let Some(cap) = max_cost {
        writeln!(
            out,
            "cap       --max-cost {}: ≈ {} spent, {} left",
            Usd(cap),
            Usd(summary.cost.usd),
            Usd((cap - summary.cost.usd).max(0.0))
        )?;
    }
    if let Some(auto) = &auto {
        let (by_batch, directly) = ways(&summary);
        writeln!(
            out,
            "deadline  {} UTC (--via auto): {by_batch} succeeded by batch, {directly} directly",
            utc(
                auto.deadline,
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            )
        )?;
        if let Some(plan) = &auto.plan {
            writeln!(out, "          plan: {}", printable(plan))?;
        }
        if let Some(switch) = &auto.switch {
            writeln!(out, "          switched: {}", printable(switch))?;
        }
    }
    if let Some(t) = &timeline {
        writeln!(out)?;
        timeline::render_text(t, &mut out)?;
    }
    Ok(())
}

/// A `--via auto` job's deadline and what its runs planned and did.
struct Auto {
    deadline: i64,
    plan: Option<String>,
    switch: Option<String>,
}

/// Requests that succeeded through the Batch API, and directly.
fn ways(s: &JobSummary) -> (u64, u64) {
    s.tokens
        .iter()
        .fold((0, 0), |(batch, direct), t| match t.batch {
            true => (batch + t.requests, direct),
            false => (batch, direct + t.requests),
        })
}

/// `runner timeline`: the chart and spike list (or JSON) of one job.
///
/// # Errors
/// Unknown job or database, a bucket far too small; a write failure.
pub fn timeline(args: &TimelineArgs, out: impl Write) -> anyhow::Result<()> {
    let conn = store::open_read_only(&args.db.db)?;
    let job = db::resolve_job(&conn, args.job.as_deref())?;
    let timeline = timeline::build(&conn, &job, args.bucket)?;
    let chunks = store::batches::chunks(&conn, job.id)?;
    let mut out = std::io::BufWriter::new(out);
    if args.json {
        let mut value = timeline::to_json(&timeline);
        value["batches"] = json!(chunks);
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        timeline::render_text(&timeline, &mut out)?;
        if !chunks.is_empty() {
            writeln!(out)?;
            write_batches(&chunks, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The summary as JSON (the shape `runner status --json` prints).
pub fn summary_json(s: &JobSummary) -> Value {
    let (prompt, completion, total) = s.token_totals();
    let by_status: serde_json::Map<String, Value> = s
        .statuses
        .iter()
        .map(|(status, n)| {
            (
                status.map_or_else(|| "none".to_owned(), |c| c.to_string()),
                json!(n),
            )
        })
        .collect();
    json!({
        "job": s.job.name,
        "state": s.job.state,
        "state_reason": s.job.state_reason,
        "input_path": s.job.input_path,
        "reading_input": s.job.reading_input,
        "created_at": rfc3339(s.job.created_at),
        "updated_at": rfc3339(s.job.updated_at),
        "requests": s.counts,
        "attempts": {"total": s.attempts(), "by_class": pairs(&s.classes), "by_status": by_status},
        "tokens": {"prompt": prompt, "completion": completion, "total": total, "by_model": s.tokens},
        "cost": {
            "estimate_usd": s.cost.usd,
            "is_estimate": true,
            "prices": s.cost.source,
            "by_model": s.cost.models,
            "unpriced_models": s.cost.unpriced,
            "estimated_at_submit": s.estimate,
            "batch_saving_usd": s.cost.batch_saving,
        },
        "throughput": {
            "active_seconds": s.active_ms as f64 / 1000.0,
            "requests_per_second": s.requests_per_second(),
            "attempts_per_second": s.attempts_per_second(),
        },
        "pacing": {"last_run": s.pacing, "limits_announced": s.limits},
        "batches": s.batches,
        "runner": s.runner.as_ref().map(|r| json!({
            "owner": r.owner, "lease_until": rfc3339(r.until), "alive": r.alive,
        })),
        "events": {
            "by_kind": pairs(&s.event_counts),
            "recent": s.recent_events.iter().map(|e| json!({"at": rfc3339(e.at), "kind": e.kind, "detail": e.detail})).collect::<Vec<_>>(),
        },
    })
}

fn write_summary(s: &JobSummary, out: &mut impl Write) -> std::io::Result<()> {
    write_job(s, out)?;
    write_work(s, out)?;
    write_cost(s, out)?;
    write_activity(s, out)
}

/// The job itself: state, input, who runs it, when.
fn write_job(s: &JobSummary, out: &mut impl Write) -> std::io::Result<()> {
    let job = &s.job;
    writeln!(out, "job       {} ({})", job.name, job.state)?;
    if let Some(reason) = &job.state_reason {
        writeln!(out, "reason    {}", printable(reason))?;
    }
    writeln!(out, "input     {}", job.input_path)?;
    if job.reading_input {
        let how = if s.runner.as_ref().is_some_and(|r| r.alive) {
            "being read into the job while its first requests are sent"
        } else {
            "not read to its end: `runner resume` reads the rest"
        };
        writeln!(out, "          {how}")?;
    }
    if let Some(RunnerLease {
        owner,
        until,
        alive,
    }) = &s.runner
    {
        let note = if *alive {
            ""
        } else {
            " · not running any more: `runner resume` takes over"
        };
        writeln!(
            out,
            "runner    {owner} · lease until {}{note}",
            rfc3339(*until)
        )?;
    }
    writeln!(
        out,
        "times     created {} · updated {}",
        rfc3339(job.created_at),
        rfc3339(job.updated_at)
    )
}

/// Requests by state, attempts by class and by status.
fn write_work(s: &JobSummary, out: &mut impl Write) -> std::io::Result<()> {
    let counts = &s.counts;
    writeln!(
        out,
        "requests  {} total · {} succeeded · {} failed · {} pending ({} awaiting retry) · {} in flight{}",
        counts.total,
        counts.succeeded,
        counts.failed,
        counts.pending,
        counts.retrying,
        counts.in_flight,
        match counts.batched {
            0 => String::new(),
            n => format!(" · {n} in batches"),
        }
    )?;
    write_batches(&s.batches, out)?;
    let by_class: Vec<String> = s.classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    writeln!(
        out,
        "attempts  {} total: {}",
        s.attempts(),
        by_class.join(" · ")
    )?;
    let by_status: Vec<String> = s
        .statuses
        .iter()
        .map(|(status, n)| format!("{} {n}", status_label(*status)))
        .collect();
    writeln!(out, "statuses  {}", by_status.join(" · "))
}

/// Batches listed one per line, at most; the rest are counted.
const LISTED_BATCHES: usize = 20;

/// The job's chunks and their batches (`--via batch`): id, status, counts, times.
fn write_batches(batches: &[ChunkRow], out: &mut impl Write) -> std::io::Result<()> {
    if batches.is_empty() {
        return Ok(());
    }
    let open = batches.iter().filter(|c| !c.state.is_final()).count();
    writeln!(
        out,
        "batches   {} chunks · {open} open · {} imported",
        batches.len(),
        batches
            .iter()
            .filter(|c| c.state == crate::domain::ChunkState::Imported)
            .count()
    )?;
    let skip = batches.len().saturating_sub(LISTED_BATCHES);
    if skip > 0 {
        writeln!(out, "          … {skip} earlier chunks")?;
    }
    for c in batches.iter().skip(skip) {
        let times = [
            ("created", c.submitted_at),
            ("ended", c.ended_at),
            ("imported", c.imported_at),
        ]
        .into_iter()
        .filter_map(|(what, at)| at.map(|at| format!("{what} {}", rfc3339(at))))
        .collect::<Vec<_>>()
        .join(" · ");
        writeln!(
            out,
            "          #{} {} {} · {} lines · {} · {}/{} done, {} failed{}{}",
            c.seq,
            printable(c.batch_id.as_deref().unwrap_or("(no batch yet)")),
            c.state,
            c.lines,
            printable(c.batch_status.as_deref().unwrap_or("-")),
            c.completed.unwrap_or(0) + c.failed.unwrap_or(0),
            c.total.unwrap_or(c.lines),
            c.failed.unwrap_or(0),
            if times.is_empty() { "" } else { " · " },
            times
        )?;
    }
    Ok(())
}

/// Tokens and their estimated cost.
fn write_cost(s: &JobSummary, out: &mut impl Write) -> std::io::Result<()> {
    let (prompt, completion, total) = s.token_totals();
    writeln!(
        out,
        "tokens    {prompt} prompt · {completion} completion · {total} total"
    )?;
    for m in s.tokens.iter().filter(|_| s.tokens.len() > 1) {
        writeln!(
            out,
            "          {}{}: {} prompt · {} completion ({} requests)",
            printable(m.model.as_deref().unwrap_or("(unnamed)")),
            if m.batch { " (batch)" } else { "" },
            m.prompt,
            m.completion,
            m.requests
        )?;
    }
    writeln!(out, "cost      {}", cost_line(&s.cost))?;
    if let Some(estimate) = &s.estimate {
        writeln!(
            out,
            "          estimated at submit: {}",
            printable(estimate)
        )?;
    }
    if s.cost.batch_saving > 0.0 {
        writeln!(
            out,
            "          the Batch API saved ≈ {} against sending them directly",
            Usd(s.cost.batch_saving)
        )?;
    }
    if !s.cost.unpriced.is_empty() {
        writeln!(
            out,
            "          no price for {}: add --price MODEL=IN,OUT (USD per 1M tokens) or --prices FILE",
            s.cost.unpriced.join(", ")
        )?;
    }
    Ok(())
}

/// "≈ $1.23 estimated (built-in prices of 2025-08-07; gpt-4o $1.00 · …)": the sum, the prices
/// used with their dates, and each model's share.
fn cost_line(cost: &CostEstimate) -> String {
    let priced: Vec<String> = cost
        .models
        .iter()
        .map(|m| {
            let via = if m.batch { " (batch, half price)" } else { "" };
            format!("{}{via} {}", printable(&m.model), Usd(m.usd))
        })
        .collect();
    let mut line = format!("≈ {} estimated ({}", Usd(cost.usd), cost.source);
    if !priced.is_empty() {
        line.push_str(&format!("; {}", priced.join(" · ")));
    }
    line.push(')');
    line
}

/// Speed and the job's events.
fn write_activity(s: &JobSummary, out: &mut impl Write) -> std::io::Result<()> {
    match (s.requests_per_second(), s.attempts_per_second()) {
        (Some(requests), Some(attempts)) => writeln!(
            out,
            "speed     {requests:.1} requests/s · {attempts:.1} attempts/s over {} running",
            human_ms(s.active_ms)
        )?,
        _ => writeln!(out, "speed     not started yet")?,
    }
    if let Some(pacing) = &s.pacing {
        writeln!(out, "pacing    {}", printable(pacing))?;
    } else if let Some(limits) = &s.limits {
        writeln!(
            out,
            "limits    {} (announced by the server)",
            printable(limits)
        )?;
    }
    let by_kind: Vec<String> = s
        .event_counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    writeln!(out, "events    {}", by_kind.join(" · "))?;
    for event in &s.recent_events {
        writeln!(
            out,
            "          {} {:<18} {}",
            rfc3339(event.at),
            event.kind,
            printable(event.detail.as_deref().unwrap_or(""))
        )?;
    }
    Ok(())
}

/// Lists the jobs of a database, newest first.
///
/// # Errors
/// Unknown database; a write failure.
pub fn jobs(args: &JobsArgs, mut out: impl Write) -> anyhow::Result<()> {
    let conn = store::open_read_only(&args.db.db)?;
    let jobs = db::list_jobs(&conn)?;
    writeln!(
        out,
        "{:<24} {:<12} {:>9} {:>9} {:>9} {:>9}  updated",
        "job", "state", "total", "ok", "failed", "pending"
    )?;
    for job in jobs {
        let c = db::counts(&conn, job.id)?;
        writeln!(
            out,
            "{:<24} {:<12} {:>9} {:>9} {:>9} {:>9}  {}",
            job.name,
            job.state,
            c.total,
            c.succeeded,
            c.failed,
            c.pending + c.in_flight,
            rfc3339(job.updated_at)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::prices::PriceTable;
    use crate::store::journal::ModelTokens;

    #[test]
    fn the_cost_line_dates_each_model_by_the_price_it_used() {
        let tokens = |model: &str| ModelTokens {
            cached: 0,
            model: Some(model.into()),
            requests: 1,
            prompt: 1_000_000,
            completion: 0,
            total: 1_000_000,
            batch: false,
        };
        let table = PriceTable::built_in();
        let line = cost_line(&CostEstimate::new(
            &table,
            &[tokens("gpt-4o"), tokens("gpt-5.1")],
        ));
        assert_eq!(
            line,
            "≈ $3.75 estimated (built-in prices of 2025-08-07 for gpt-4o, of 2026-12-01 for \
             gpt-5.1; gpt-4o $2.50 · gpt-5.1 $1.25)"
        );
        let line = cost_line(&CostEstimate::new(&table, &[tokens("gpt-5.1-2025-11-13")]));
        assert!(line.contains("(built-in prices of 2026-12-01; "), "{line}");
    }
}
