//! `runner status` and `runner jobs`: read-only views of the journal, safe while a job runs.

use std::io::Write;

use serde_json::json;

use crate::cli::{JobsArgs, StatusArgs};
use crate::export::rfc3339;
use crate::store::lease::{self, LeaseOwner};
use crate::store::{self, db};
use crate::worker::now_ms;

/// Events listed in full by `status`: enough to see the last spike's breaker cycle.
const RECENT_EVENTS: usize = 10;

/// Prints one job's state, request counts, attempts by class and token totals.
///
/// # Errors
/// Unknown job or database; a write failure.
pub fn status(args: &StatusArgs, mut out: impl Write) -> anyhow::Result<()> {
    let conn = store::open_read_only(&args.db.db)?;
    let job = db::resolve_job(&conn, args.job.as_deref())?;
    let counts = db::counts(&conn, job.id)?;
    let classes = db::attempts_by_class(&conn, job.id)?;
    let (prompt, completion, total) = db::token_totals(&conn, job.id)?;
    let attempts: u64 = classes.iter().map(|(_, n)| n).sum();
    let (event_counts, recent) = db::events(&conn, job.id, RECENT_EVENTS)?;
    let runner = lease::holder(&conn, job.id)?.map(|(owner, until)| {
        let alive = until > now_ms()
            && !owner
                .parse::<LeaseOwner>()
                .is_ok_and(|holder| lease::holder_is_gone(&holder, &LeaseOwner::current()));
        (owner, until, alive)
    });
    if args.json {
        let value = json!({
            "job": job.name,
            "state": job.state,
            "state_reason": job.state_reason,
            "input_path": job.input_path,
            "created_at": rfc3339(job.created_at),
            "updated_at": rfc3339(job.updated_at),
            "requests": counts,
            "attempts": {"total": attempts, "by_class": classes.iter().map(|(c, n)| (c.clone(), json!(n))).collect::<serde_json::Map<_, _>>()},
            "tokens": {"prompt": prompt, "completion": completion, "total": total},
            "events": {
                "by_kind": event_counts.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "recent": recent.iter().map(|e| json!({"at": rfc3339(e.at), "kind": e.kind, "detail": e.detail})).collect::<Vec<_>>(),
            },
            "runner": runner.as_ref().map(|(owner, until, alive)| json!({
                "owner": owner, "lease_until": rfc3339(*until), "alive": alive,
            })),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    writeln!(out, "job       {} ({})", job.name, job.state)?;
    if let Some(reason) = &job.state_reason {
        writeln!(out, "reason    {reason}")?;
    }
    writeln!(out, "input     {}", job.input_path)?;
    if let Some((owner, until, alive)) = &runner {
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
    )?;
    writeln!(
        out,
        "requests  {} total · {} succeeded · {} failed · {} pending ({} awaiting retry) · {} in flight",
        counts.total,
        counts.succeeded,
        counts.failed,
        counts.pending,
        counts.retrying,
        counts.in_flight
    )?;
    let by_class: Vec<String> = classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    writeln!(out, "attempts  {attempts} total: {}", by_class.join(" · "))?;
    writeln!(
        out,
        "tokens    {prompt} prompt · {completion} completion · {total} total"
    )?;
    let by_kind: Vec<String> = event_counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    writeln!(out, "events    {}", by_kind.join(" · "))?;
    for event in &recent {
        writeln!(
            out,
            "          {} {:<18} {}",
            rfc3339(event.at),
            event.kind,
            event.detail.as_deref().unwrap_or("")
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
