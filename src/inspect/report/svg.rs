//! The report's charts as inline SVG, drawn here from the [`Timeline`]: no script, no library,
//! nothing fetched. Every chart shares the time axis; hovering a bar or a cell shows its numbers
//! (SVG `<title>`).

use std::fmt::Write as _;

use super::escape;
use crate::domain::price::Usd;
use crate::domain::{AttemptClass, EventKind};
use crate::inspect::timeline::{Bucket, Timeline, human_ms};
use crate::util::clock::utc;

/// Drawing width of every chart (the SVG scales to the page).
const WIDTH: f64 = 1000.0;
/// Room for the y labels on the left, and on the right.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
/// Room for the x labels below.
const BOTTOM: f64 = 26.0;

/// The colour of each series, in [`AttemptClass::ATTEMPTS`] order.
pub const COLOURS: [&str; 7] = [
    "#2f9e68", "#f59f00", "#e03131", "#7048e8", "#a0522d", "#212529", "#adb5bd",
];

/// The colour of `series`.
pub fn colour(series: AttemptClass) -> &'static str {
    let index = AttemptClass::ATTEMPTS
        .iter()
        .position(|s| *s == series)
        .unwrap_or(0);
    COLOURS[index]
}

/// Maps buckets and times to x.
struct Frame<'t> {
    t: &'t Timeline,
    top: f64,
    bottom: f64,
}

impl Frame<'_> {
    fn x_of(&self, at: i64) -> f64 {
        let span = (self.t.end() - self.t.start()).max(1) as f64;
        LEFT + (at - self.t.start()) as f64 / span * (WIDTH - LEFT - RIGHT)
    }

    fn bucket_width(&self) -> f64 {
        (WIDTH - LEFT - RIGHT) / self.t.buckets.len().max(1) as f64
    }

    /// Grid lines and labels of the time axis.
    fn time_axis(&self, svg: &mut String) {
        let span = self.t.end() - self.t.start();
        let steps = [
            1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
            900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000,
            86_400_000,
        ];
        let step = steps
            .into_iter()
            .find(|s| span / s <= 10)
            .unwrap_or(86_400_000 * (span / 86_400_000 / 10 + 1));
        let format = if step >= 86_400_000 {
            "[month]-[day]"
        } else if step >= 60_000 && self.t.width_ms >= 60_000 {
            "[hour]:[minute]"
        } else {
            "[hour]:[minute]:[second]"
        };
        let mut at = self.t.start().div_euclid(step) * step;
        while at <= self.t.end() {
            let x = self.x_of(at);
            // A label past the right edge would be cut: the grid line alone is enough there.
            if at >= self.t.start() && x <= WIDTH - RIGHT - 24.0 {
                let _ = write!(
                    svg,
                    r#"<line class="grid" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    self.top,
                    self.bottom,
                    self.bottom + 16.0,
                    utc(at, format)
                );
            }
            at += step;
        }
    }

    /// Horizontal grid lines at `ticks` (value, y, label).
    fn value_axis(&self, svg: &mut String, ticks: &[(f64, String)]) {
        for (y, label) in ticks {
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0
            );
        }
    }
}

/// 1, 2 or 5 × 10ⁿ, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0);
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|n| *n >= v)
        .unwrap_or(10.0 * magnitude)
}

fn open_svg(id: &str, height: f64, label: &str) -> String {
    format!(
        r#"<svg id="{id}" class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{}">"#,
        escape(label)
    )
}

/// Breaker-open spans: from each `breaker_open` to the next `breaker_closed` (or the end).
fn breaker_spans(t: &Timeline) -> Vec<(i64, i64)> {
    let mut spans = Vec::new();
    let mut open: Option<i64> = None;
    for event in &t.events {
        match event.kind {
            EventKind::BreakerOpen => {
                open.get_or_insert(event.at);
            }
            EventKind::BreakerClosed => {
                if let Some(start) = open.take() {
                    spans.push((start, event.at));
                }
            }
            EventKind::Running
            | EventKind::Completed
            | EventKind::Stopped
            | EventKind::Interrupted
            | EventKind::BreakerHalfOpen
            | EventKind::KeyCooling
            | EventKind::KeyQuarantined
            | EventKind::BatchSubmitted
            | EventKind::BatchStatus
            | EventKind::Limits
            | EventKind::HeaderIgnored
            | EventKind::KeyLimits
            | EventKind::Pacing
            | EventKind::Estimate
            | EventKind::Plan
            | EventKind::Switch => {}
        }
    }
    if let Some(start) = open {
        spans.push((start, t.end()));
    }
    spans
}

/// Attempts per bucket stacked by class, spikes shaded, breaker-open spans in a lane on top.
pub fn attempts_chart(t: &Timeline) -> String {
    let height = 300.0;
    let f = Frame {
        t,
        top: 30.0,
        bottom: height - BOTTOM,
    };
    let peak = t.buckets.iter().map(Bucket::total).max().unwrap_or(0) as f64;
    let max = nice_ceiling(peak);
    let y_of = |v: f64| f.bottom - v / max * (f.bottom - f.top);
    let mut svg = open_svg("chart-attempts", height, "attempts over time by class");
    for (n, spike) in t.spikes.iter().enumerate() {
        let (x0, x1) = (f.x_of(spike.start), f.x_of(spike.end));
        let _ = write!(
            svg,
            r#"<rect class="spike-band" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/><text class="spike-label" x="{:.1}" y="{:.1}">spike #{}</text>"#,
            f.top,
            (x1 - x0).max(2.0),
            f.bottom - f.top,
            x0 + 6.0,
            f.top + 12.0,
            n + 1
        );
    }
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            let v = max * f64::from(i) / 4.0;
            (y_of(v), format!("{v:.0}"))
        })
        .collect();
    f.value_axis(&mut svg, &ticks);
    f.time_axis(&mut svg);
    let bw = f.bucket_width();
    let gap = if bw > 4.0 { bw * 0.15 } else { 0.0 };
    for (i, b) in t.buckets.iter().enumerate() {
        if b.total() == 0 {
            continue;
        }
        let x = LEFT + i as f64 * bw + gap / 2.0;
        let mut title = format!(
            "{} · {} attempts",
            utc(b.start, "[hour]:[minute]:[second]"),
            b.total()
        );
        let mut rects = String::new();
        let mut base = 0.0;
        for series in AttemptClass::ATTEMPTS {
            let n = b.count(series) as f64;
            if n == 0.0 {
                continue;
            }
            let (y0, y1) = (y_of(base), y_of(base + n));
            let _ = write!(
                rects,
                r#"<rect class="bar" x="{x:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                (bw - gap).max(0.5),
                (y0 - y1).max(0.5),
                colour(series)
            );
            let _ = write!(title, " · {} {n}", series.as_str());
            base += n;
        }
        let _ = write!(svg, "<g><title>{}</title>{rects}</g>", escape(&title));
    }
    breaker_lane(&f, &mut svg);
    switch_marks(&f, &mut svg);
    svg.push_str("</svg>");
    svg
}

/// `--via auto`: a dashed line where the batches were cancelled and the rest went directly.
fn switch_marks(f: &Frame<'_>, svg: &mut String) {
    for event in f.t.events.iter().filter(|e| e.kind == EventKind::Switch) {
        let x = f.x_of(event.at);
        let _ = write!(
            svg,
            r#"<g class="switch"><title>switch to direct sending at {}: {}</title><line class="cap" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}"/><text class="spike-label" x="{:.1}" y="{:.1}">switch</text></g>"#,
            utc(event.at, "[hour]:[minute]:[second]"),
            escape(event.detail.as_deref().unwrap_or("")),
            f.top,
            f.bottom,
            x + 4.0,
            f.bottom - 6.0
        );
    }
}

/// The breaker lane above the plot: a dark span per open period, a label on the first.
fn breaker_lane(f: &Frame<'_>, svg: &mut String) {
    let _ = write!(
        svg,
        r#"<text class="lane-label" x="{:.1}" y="18" text-anchor="end">breaker</text><line class="lane" x1="{LEFT}" y1="14" x2="{:.1}" y2="14"/>"#,
        LEFT - 6.0,
        WIDTH - RIGHT
    );
    for (start, end) in breaker_spans(f.t) {
        let (x0, x1) = (f.x_of(start), f.x_of(end));
        let _ = write!(
            svg,
            r#"<g><title>breaker open {} → {} ({})</title><rect class="breaker-open" x="{x0:.1}" y="8" width="{:.1}" height="12" rx="2"/><line class="breaker-mark" x1="{x0:.1}" y1="20" x2="{x0:.1}" y2="{:.1}"/></g>"#,
            utc(start, "[hour]:[minute]:[second]"),
            utc(end, "[hour]:[minute]:[second]"),
            human_ms(end - start),
            (x1 - x0).max(3.0),
            f.bottom
        );
    }
}

/// The error share per bucket, with the spike threshold.
pub fn error_share_chart(t: &Timeline) -> String {
    let height = 150.0;
    let f = Frame {
        t,
        top: 10.0,
        bottom: height - BOTTOM,
    };
    let y_of = |share: f64| f.bottom - share * (f.bottom - f.top);
    let mut svg = open_svg("chart-errors", height, "share of attempts that failed");
    let ticks: Vec<(f64, String)> = [0.0, 0.5, 1.0]
        .into_iter()
        .map(|s| (y_of(s), format!("{:.0}%", s * 100.0)))
        .collect();
    f.value_axis(&mut svg, &ticks);
    f.time_axis(&mut svg);
    let bw = f.bucket_width();
    for (i, b) in t.buckets.iter().enumerate() {
        let Some(share) = b.error_share() else {
            continue;
        };
        let x = LEFT + i as f64 * bw;
        let class = if share > crate::inspect::timeline::SPIKE_ERROR_SHARE {
            "share-high"
        } else {
            "share-low"
        };
        let _ = write!(
            svg,
            r#"<rect class="{class}" x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{} · {:.0}% of {} failed</title></rect>"#,
            y_of(share),
            bw.max(0.5),
            (f.bottom - y_of(share)).max(0.5),
            utc(b.start, "[hour]:[minute]:[second]"),
            share * 100.0,
            b.judged()
        );
    }
    let _ = write!(
        svg,
        r#"<line class="threshold" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="threshold-label" x="{:.1}" y="{:.1}" text-anchor="end">half failed</text></svg>"#,
        WIDTH - RIGHT,
        WIDTH - RIGHT - 4.0,
        y_of(crate::inspect::timeline::SPIKE_ERROR_SHARE) - 4.0,
        y = y_of(crate::inspect::timeline::SPIKE_ERROR_SHARE)
    );
    svg
}

/// Picks one percentile.
type Pick = fn(&crate::inspect::timeline::Latency) -> u32;

/// p50, p90 and p99 latency per bucket on a log scale.
pub fn latency_chart(t: &Timeline) -> String {
    let height = 220.0;
    let f = Frame {
        t,
        top: 12.0,
        bottom: height - BOTTOM,
    };
    let values = t.buckets.iter().filter_map(|b| b.latency);
    let (low, high) = values.fold((u32::MAX, 0), |(lo, hi), l| (lo.min(l.p50), hi.max(l.p99)));
    let mut svg = open_svg("chart-latency", height, "latency percentiles over time");
    if high == 0 {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no answered attempts</text></svg>"#,
            WIDTH / 2.0,
            height / 2.0
        );
        return svg;
    }
    // Whole decades around the data: 10 ms … 10 s reads at a glance.
    let lo = 10f64.powf(f64::from(low.max(1)).log10().floor());
    let hi = 10f64
        .powf(f64::from(high.max(2)).log10().ceil())
        .max(lo * 10.0);
    let y_of = |ms: f64| {
        let share = (ms.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10());
        f.bottom - share * (f.bottom - f.top)
    };
    let mut ticks = Vec::new();
    let mut decade = lo;
    while decade <= hi * 1.001 {
        ticks.push((y_of(decade), human_ms(decade as i64)));
        decade *= 10.0;
    }
    f.value_axis(&mut svg, &ticks);
    f.time_axis(&mut svg);
    let bw = f.bucket_width();
    let lines: [(&str, Pick); 3] = [("p99", |l| l.p99), ("p90", |l| l.p90), ("p50", |l| l.p50)];
    for (name, pick) in lines {
        let mut path = String::new();
        let mut dots = String::new();
        let mut pen_down = false;
        for (i, b) in t.buckets.iter().enumerate() {
            match &b.latency {
                Some(l) => {
                    let (x, y) = (LEFT + (i as f64 + 0.5) * bw, y_of(f64::from(pick(l))));
                    let command = if pen_down { 'L' } else { 'M' };
                    let _ = write!(path, "{command}{x:.1},{y:.1} ");
                    let _ = write!(
                        dots,
                        r#"<circle class="dot {name}" cx="{x:.1}" cy="{y:.1}" r="2.2"/>"#
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            r#"<path class="line {name}" d="{}"/>{dots}"#,
            path.trim_end()
        );
    }
    for (i, b) in t.buckets.iter().enumerate() {
        if let Some(l) = &b.latency {
            let _ = write!(
                svg,
                r#"<rect class="hover" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{} · p50 {} · p90 {} · p99 {}</title></rect>"#,
                LEFT + i as f64 * bw,
                f.top,
                bw,
                f.bottom - f.top,
                utc(b.start, "[hour]:[minute]:[second]"),
                human_ms(i64::from(l.p50)),
                human_ms(i64::from(l.p90)),
                human_ms(i64::from(l.p99))
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// One strip per key: a cell per bucket coloured by its error share, key events marked.
pub fn keys_chart(t: &Timeline) -> String {
    let row = 22.0;
    let top = 6.0;
    let height = top + row * t.keys.len() as f64 + BOTTOM;
    let f = Frame {
        t,
        top,
        bottom: height - BOTTOM,
    };
    let mut svg = open_svg("chart-keys", height, "health of each key over time");
    f.time_axis(&mut svg);
    let bw = f.bucket_width();
    for (k, key) in t.keys.iter().enumerate() {
        let y = top + k as f64 * row;
        let _ = write!(
            svg,
            r#"<text class="key-label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + row * 0.65,
            escape(&shorten(&key.key, 10))
        );
        for (i, (attempts, errors)) in key.per_bucket.iter().enumerate() {
            if *attempts == 0 {
                continue;
            }
            let share = f64::from(*errors) / f64::from(*attempts);
            let _ = write!(
                svg,
                r#"<rect class="cell" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} · {} · {} of {} failed</title></rect>"#,
                LEFT + i as f64 * bw,
                y + 2.0,
                bw.max(0.5),
                row - 4.0,
                health_colour(share),
                escape(&key.key),
                utc(t.buckets[i].start, "[hour]:[minute]:[second]"),
                errors,
                attempts
            );
        }
        for event in t.events.iter().filter(|e| {
            e.kind.is_key()
                && e.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with(&format!("{}:", key.key)))
        }) {
            let x = f.x_of(event.at);
            let _ = write!(
                svg,
                r#"<g><title>{} {}</title><path class="key-event {}" d="M{x:.1},{:.1} l-5,-7 h10 z"/></g>"#,
                escape(event.kind.as_str()),
                escape(event.detail.as_deref().unwrap_or("")),
                event.kind,
                y + row - 1.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Green when all is well, amber at a quarter failing, red from half.
fn health_colour(share: f64) -> &'static str {
    match share {
        s if s >= 0.5 => "#e03131",
        s if s >= 0.25 => "#f76707",
        s if s > 0.05 => "#fcc419",
        _ => "#2f9e68",
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max - 1).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(90.0), 100.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(nice_ceiling(450.0), 500.0);
    }
}

/// What the job spent over time: the cost of the answers journaled in each bucket (by when they
/// ended), and the cap if it has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpendSeries {
    /// USD per bucket, in the timeline's buckets.
    pub per_bucket: Vec<f64>,
    /// `--max-cost`, USD.
    pub cap: Option<f64>,
}

/// The spend so far as a rising line, with the cap as a dashed line across.
pub fn spend_chart(t: &Timeline, spend: &SpendSeries) -> String {
    let height = 200.0;
    let f = Frame {
        t,
        top: 14.0,
        bottom: height - BOTTOM,
    };
    let mut svg = open_svg("chart-spend", height, "spend over time");
    let total: f64 = spend.per_bucket.iter().sum();
    let high = total.max(spend.cap.unwrap_or(0.0));
    if high <= 0.0 {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">nothing priced was spent</text></svg>"#,
            WIDTH / 2.0,
            height / 2.0
        );
        return svg;
    }
    let top = high * 1.08;
    let y_of = |usd: f64| f.bottom - usd / top * (f.bottom - f.top);
    let ticks: Vec<(f64, String)> = [0.0, high / 2.0, high]
        .into_iter()
        .map(|usd| (y_of(usd), Usd(usd).to_string()))
        .collect();
    f.value_axis(&mut svg, &ticks);
    f.time_axis(&mut svg);
    let bw = f.bucket_width();
    let mut path = format!("M{LEFT:.1},{:.1} ", y_of(0.0));
    let mut so_far = 0.0;
    for (i, usd) in spend.per_bucket.iter().enumerate() {
        so_far += usd;
        let x = LEFT + (i as f64 + 1.0) * bw;
        let _ = write!(path, "L{x:.1},{:.1} ", y_of(so_far));
        let _ = write!(
            svg,
            r#"<rect class="hover" x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}"><title>{} · {} in this bucket · {} so far</title></rect>"#,
            LEFT + i as f64 * bw,
            f.top,
            f.bottom - f.top,
            utc(
                t.start() + i as i64 * t.width_ms,
                "[hour]:[minute]:[second]"
            ),
            Usd(*usd),
            Usd(so_far)
        );
    }
    let _ = write!(svg, r#"<path class="line spent" d="{}"/>"#, path.trim_end());
    if let Some(cap) = spend.cap {
        let y = y_of(cap);
        let _ = write!(
            svg,
            r#"<line class="cap" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">--max-cost {}</text>"#,
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            y - 5.0,
            Usd(cap)
        );
    }
    svg.push_str("</svg>");
    svg
}
