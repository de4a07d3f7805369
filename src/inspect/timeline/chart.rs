//! The timeline for a terminal: one sparkline per class (a column per bucket, each row scaled to
//! its own peak, shown on the left), the error share on a fixed 0–100% scale, p90 latency,
//! breaker and key marks, the spikes, a time axis; then the spike list with its evidence.
//! Fits 100 columns for automatic bucket widths; no colour, so it pastes anywhere.

use std::io::{self, Write};

use crate::util::text::printable;

use serde_json::{Value, json};

use super::human_ms;
use super::{Bucket, MIN_SPIKE_SCORE, Timeline};
use crate::domain::{AttemptClass, EventKind};
use crate::util::clock::rfc3339;
use crate::util::clock::utc;

/// Sparkline levels; a zero is a blank so "nothing" and "a little" differ.
const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Width of the label column, then of the peak column, before the chart.
const LABEL: usize = 16;
const PEAK: usize = 6;

/// Marks of the breaker and keys rows.
const OPENED: char = '▼';
const CLOSED: char = '▲';
const BOTH: char = '◆';
const COOLING: char = '▽';
const QUARANTINED: char = '✕';
const NOTHING: char = '·';

/// Writes the chart and the spike list.
///
/// # Errors
/// Write failures (a closed pipe included).
pub fn render_text(t: &Timeline, out: &mut dyn Write) -> io::Result<()> {
    if t.buckets.is_empty() {
        return writeln!(out, "{}: no attempts yet: nothing to chart", t.job);
    }
    writeln!(
        out,
        "{} · {} → {} UTC ({}) · {} buckets · {} attempts",
        t.job,
        utc(t.start(), "[year]-[month]-[day] [hour]:[minute]:[second]"),
        utc(t.end(), "[hour]:[minute]:[second]"),
        human_ms(t.end() - t.start()),
        human_ms(t.width_ms),
        t.attempts()
    )?;
    writeln!(
        out,
        "{:LABEL$}{:>PEAK$}  one column per bucket; each row scaled to its peak per bucket",
        "", "peak"
    )?;
    let counts = |s: AttemptClass| -> Vec<u64> { t.buckets.iter().map(|b| b.count(s)).collect() };
    let all: Vec<u64> = t.buckets.iter().map(Bucket::total).collect();
    row(out, "attempts", &all)?;
    for series in AttemptClass::ATTEMPTS {
        if t.total(series) > 0 {
            row(out, &format!("  {}", series.as_str()), &counts(series))?;
        }
    }
    let shares: Vec<Option<f64>> = t.buckets.iter().map(Bucket::error_share).collect();
    let peak_share = shares.iter().flatten().fold(0.0, |a: f64, b| a.max(*b));
    let line: String = shares
        .iter()
        .map(|s| s.map_or(' ', |s| level(s, 1.0)))
        .collect();
    writeln!(
        out,
        "{:LABEL$}{:>PEAK$}  {line}",
        "error share",
        format!("{:.0}%", peak_share * 100.0)
    )?;
    let p90: Vec<u64> = t
        .buckets
        .iter()
        .map(|b| b.latency.map_or(0, |l| u64::from(l.p90)))
        .collect();
    let peak_p90 = p90.iter().copied().max().unwrap_or(0);
    writeln!(
        out,
        "{:LABEL$}{:>PEAK$}  {}",
        "p90 latency",
        human_ms(peak_p90 as i64),
        sparkline(&p90)
    )?;
    writeln!(
        out,
        "{:LABEL$}{:>PEAK$}  {}",
        "breaker",
        "",
        marks(t, breaker_mark)
    )?;
    if t.events.iter().any(|e| e.kind.is_key()) {
        writeln!(
            out,
            "{:LABEL$}{:>PEAK$}  {}",
            "keys",
            "",
            marks(t, key_mark)
        )?;
    }
    if !t.spikes.is_empty() {
        writeln!(out, "{:LABEL$}{:>PEAK$}  {}", "spikes", "", spike_row(t))?;
    }
    let (ticks, labels) = axis(t);
    writeln!(out, "{:LABEL$}{:>PEAK$}  {ticks}", "", "")?;
    writeln!(out, "{:LABEL$}{:>PEAK$}  {labels}", "", "UTC")?;
    writeln!(
        out,
        "{:LABEL$}{:>PEAK$}  breaker {OPENED} opened {CLOSED} closed {BOTH} both · keys {COOLING} cooling {QUARANTINED} quarantined",
        "", ""
    )?;
    writeln!(out)?;
    render_spikes(t, out)
}

/// The spike list.
fn render_spikes(t: &Timeline, out: &mut dyn Write) -> io::Result<()> {
    let rule = format!(
        "a spike: a stretch of attempts in which failures outnumber successes by {MIN_SPIKE_SCORE} or more, \
         from its first failure to its last"
    );
    if t.spikes.is_empty() {
        writeln!(out, "no spikes ({rule})")?;
        return Ok(());
    }
    writeln!(out, "spikes: {} ({rule})", t.spikes.len())?;
    for (n, spike) in t.spikes.iter().enumerate() {
        writeln!(
            out,
            "  #{}  {} → {} UTC  {}  peak {:.0}% failed · {} of {} attempts failed",
            n + 1,
            utc(spike.start, "[hour]:[minute]:[second]"),
            utc(spike.end, "[hour]:[minute]:[second]"),
            human_ms(spike.end - spike.start),
            spike.peak_share * 100.0,
            spike.errors,
            spike.attempts
        )?;
        if let Some(at) = spike.recovered_by.filter(|at| *at > spike.end) {
            writeln!(
                out,
                "      {:<13}{} UTC (the first success sent after it: the spike was over by then)",
                "recovered by",
                utc(at, "[hour]:[minute]:[second]")
            )?;
        }
        let statuses = spike.status_tally();
        for (label, tally) in [
            ("classes", &spike.class_tally()),
            ("statuses", &statuses),
            ("codes", &spike.codes),
            ("scopes", &spike.scopes),
            ("keys", &spike.keys),
        ] {
            if !tally.is_empty() {
                writeln!(out, "      {label:<13}{}", joined(tally))?;
            }
        }
        for (i, line) in wrap(&printable(&spike.verdict()), 100 - 19)
            .iter()
            .enumerate()
        {
            let label = if i == 0 { "verdict" } else { "" };
            writeln!(out, "      {label:<13}{line}")?;
        }
        for (i, pair) in spike.request_ids.chunks(2).enumerate() {
            let label = if i == 0 { "request ids" } else { "" };
            writeln!(out, "      {label:<13}{}", printable(&pair.join("  ")))?;
        }
    }
    if t.spikes.iter().any(|s| !s.request_ids.is_empty()) {
        writeln!(
            out,
            "quote the request ids to support; `runner attempts --since T --until T --errors` lists them all"
        )?;
    }
    Ok(())
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().map_or(0, |l| l.chars().count());
        if line > 0 && line + 1 + word.chars().count() > width {
            lines.push(String::new());
        }
        if let Some(last) = lines.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// `a 3 · b 1`, at most six entries.
fn joined(tally: &[(String, u64)]) -> String {
    let mut parts: Vec<String> = tally
        .iter()
        .take(6)
        .map(|(k, n)| format!("{} {n}", printable(k)))
        .collect();
    if tally.len() > 6 {
        parts.push(format!("… {} more", tally.len() - 6));
    }
    parts.join(" · ")
}

fn row(out: &mut dyn Write, label: &str, values: &[u64]) -> io::Result<()> {
    let peak = values.iter().copied().max().unwrap_or(0);
    writeln!(out, "{label:LABEL$}{peak:>PEAK$}  {}", sparkline(values))
}

/// One character per value, scaled to the largest.
pub fn sparkline(values: &[u64]) -> String {
    let peak = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|v| {
            if *v == 0 {
                ' '
            } else {
                level(*v as f64, peak as f64)
            }
        })
        .collect()
}

/// The block for `value` on a scale to `peak`; anything above zero shows.
fn level(value: f64, peak: f64) -> char {
    if value <= 0.0 || peak <= 0.0 {
        return LEVELS[if value > 0.0 { 1 } else { 0 }];
    }
    let index = ((value / peak) * 8.0).ceil().clamp(1.0, 8.0) as usize;
    LEVELS[index]
}

/// One mark per bucket from the events in it.
fn marks(t: &Timeline, mark: fn(&[EventKind]) -> Option<char>) -> String {
    let mut kinds: Vec<Vec<EventKind>> = vec![Vec::new(); t.buckets.len()];
    for event in &t.events {
        if let Some(i) = t.bucket_of(event.at) {
            kinds[i].push(event.kind);
        }
    }
    kinds.iter().map(|k| mark(k).unwrap_or(NOTHING)).collect()
}

fn breaker_mark(kinds: &[EventKind]) -> Option<char> {
    let opened = kinds.contains(&EventKind::BreakerOpen);
    let closed = kinds.contains(&EventKind::BreakerClosed);
    match (opened, closed) {
        (true, true) => Some(BOTH),
        (true, false) => Some(OPENED),
        (false, true) => Some(CLOSED),
        (false, false) => None,
    }
}

fn key_mark(kinds: &[EventKind]) -> Option<char> {
    if kinds.contains(&EventKind::KeyQuarantined) {
        Some(QUARANTINED)
    } else if kinds.contains(&EventKind::KeyCooling) {
        Some(COOLING)
    } else {
        None
    }
}

/// `━` under each spike's buckets, its number at the start.
fn spike_row(t: &Timeline) -> String {
    let mut cells = vec![' '; t.buckets.len()];
    for (n, spike) in t.spikes.iter().enumerate() {
        for cell in &mut cells[spike.first_bucket..=spike.last_bucket] {
            *cell = '━';
        }
        for (i, digit) in (n + 1).to_string().chars().enumerate() {
            if let Some(cell) = cells.get_mut(spike.first_bucket + i) {
                *cell = digit;
            }
        }
    }
    cells.into_iter().collect()
}

/// The tick line and the label line: ticks at round times, far enough apart for their labels.
fn axis(t: &Timeline) -> (String, String) {
    let format = if t.width_ms >= 86_400_000 {
        "[month]-[day]"
    } else if t.width_ms >= 60_000 {
        "[hour]:[minute]"
    } else {
        "[hour]:[minute]:[second]"
    };
    let label_len = utc(t.start(), format).chars().count();
    // Buckets per tick: a round number that leaves room for a label and two spaces.
    let every = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120]
        .into_iter()
        .find(|k| *k >= label_len + 2)
        .unwrap_or(label_len + 2) as i64;
    let n = t.buckets.len();
    let mut ticks = vec!['─'; n];
    let mut labels = vec![' '; n + label_len];
    for (i, bucket) in t.buckets.iter().enumerate() {
        if (bucket.start / t.width_ms).rem_euclid(every) == 0 {
            ticks[i] = '┬';
            for (j, c) in utc(bucket.start, format).chars().enumerate() {
                labels[i + j] = c;
            }
        }
    }
    let labels: String = labels.into_iter().collect();
    (ticks.into_iter().collect(), labels.trim_end().to_owned())
}

/// The timeline as JSON: buckets, keys, events and spikes.
pub fn to_json(t: &Timeline) -> Value {
    let buckets: Vec<Value> = t
        .buckets
        .iter()
        .map(|b| {
            let by_class: serde_json::Map<String, Value> = AttemptClass::ATTEMPTS
                .into_iter()
                .filter(|s| b.count(*s) > 0)
                .map(|s| (s.as_str().to_owned(), json!(b.count(s))))
                .collect();
            json!({
                "start": rfc3339(b.start),
                "start_ms": b.start,
                "attempts": b.total(),
                "errors": b.errors(),
                "error_share": b.error_share(),
                "by_class": by_class,
                "latency_ms": b.latency,
            })
        })
        .collect();
    let spikes: Vec<Value> = t
        .spikes
        .iter()
        .map(|s| {
            json!({
                "start": rfc3339(s.start),
                "end": rfc3339(s.end),
                "start_ms": s.start,
                "end_ms": s.end,
                "recovered_by": s.recovered_by.map(rfc3339),
                "attempts": s.attempts,
                "errors": s.errors,
                "peak_error_share": s.peak_share,
                "classes": pairs(&s.classes),
                "statuses": s.statuses.iter().map(|(k, n)| json!({"status": k, "errors": n})).collect::<Vec<_>>(),
                "codes": pairs(&s.codes),
                "scopes": pairs(&s.scopes),
                "keys": pairs(&s.keys),
                "request_ids": s.request_ids,
                "keys_in_use": s.keys_in_use.iter().map(|(k, a, e)| json!({"key": k, "attempts": a, "errors": e})).collect::<Vec<_>>(),
                "verdict": s.verdict(),
            })
        })
        .collect();
    let keys: Vec<Value> = t
        .keys
        .iter()
        .map(|k| json!({"key": k.key, "attempts": k.attempts, "errors": k.errors, "auth_transient": k.auth_transient}))
        .collect();
    json!({
        "job": t.job,
        "bucket_ms": t.width_ms,
        "start": (!t.buckets.is_empty()).then(|| rfc3339(t.start())),
        "end": (!t.buckets.is_empty()).then(|| rfc3339(t.end())),
        "attempts": t.attempts(),
        "buckets": buckets,
        "keys": keys,
        "events": t.events.iter().map(|e| json!({"at": rfc3339(e.at), "kind": e.kind, "detail": e.detail})).collect::<Vec<_>>(),
        "spikes": spikes,
    })
}

/// Counts by name as a JSON object (`{"name": count, …}`), in the tally's order.
pub fn pairs<K: std::fmt::Display>(tally: &[(K, u64)]) -> serde_json::Map<String, Value> {
    tally
        .iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_show_every_nonzero_value() {
        assert_eq!(sparkline(&[0, 1, 50, 100]), " ▁▄█");
        assert_eq!(sparkline(&[]), "");
        assert_eq!(sparkline(&[0, 0]), "  ");
    }
}
