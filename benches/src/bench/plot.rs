//! `--plot FILE`: a self-contained SVG of one or more results: throughput per second over time,
//! the p99 (solid) and p50 (dashed) latency of each second over time (what shows the effect of
//! an event during the run, such as a node joining), and the latency distribution by
//! percentile (x axis in "nines", as HdrHistogram plots do).
//! Written by hand: two line charts do not need a plotting crate.

use std::fmt::Write as _;

use crate::bench::report::{RunResult, fmt_count, fmt_us};

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Height of one legend entry (two lines).
const LEGEND_LINE: f64 = 36.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
/// Seconds covered for less than this (the end of a run) are left out of the throughput line.
const MIN_SPAN_S: f64 = 0.25;
/// Percentiles beyond 99.999 are drawn at 99.999 (x = 5 nines).
const MAX_NINES: f64 = 5.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Tick values from 0 covering `max`: steps of 1, 2 or 5 × 10^k, about five ticks.
pub fn nice_ticks(max: f64) -> Vec<f64> {
    if !(max.is_finite() && max > 0.0) {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// The x position of a percentile, in "nines": 90 → 1, 99 → 2, 99.9 → 3.
pub fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        return MAX_NINES;
    }
    (-(1.0 - percentile / 100.0).log10()).clamp(0.0, MAX_NINES)
}

struct Panel {
    top: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, value: f64) -> f64 {
        LEFT + value / self.x_max * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: f64) -> f64 {
        self.top + PANEL_HEIGHT - value / self.y_max * PANEL_HEIGHT
    }
}

fn polyline(out: &mut String, points: &[(f64, f64)], color: &str) {
    polyline_styled(out, points, color, "");
}

/// A polyline with extra attributes (`style`, e.g. a dash pattern).
fn polyline_styled(out: &mut String, points: &[(f64, f64)], color: &str, style: &str) {
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2"{style} points="{}"/>"#,
        coords.join(" ")
    );
}

fn axes(
    out: &mut String,
    panel: &Panel,
    title: &str,
    x_label: &str,
    y_ticks: &[f64],
    y_fmt: &dyn Fn(f64) -> String,
) {
    let bottom = panel.top + PANEL_HEIGHT;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="16" font-weight="bold">{}</text>"#,
        LEFT,
        panel.top - 20.0,
        escape(title)
    );
    for &tick in y_ticks {
        let y = panel.y(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&y_fmt(tick))
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="#333"/>"##,
        WIDTH - RIGHT,
        panel.top
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        bottom + 40.0,
        escape(x_label)
    );
}

/// The SVG document for `results` (each drawn in its own colour, named by its label).
pub fn svg(results: &[&RunResult]) -> String {
    let height = 3.0 * (PANEL_HEIGHT + TOP + BOTTOM) + LEGEND_LINE * results.len() as f64 + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);

    // Throughput over time.
    let x_max = results
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.second as f64 + s.span_s))
        .fold(1.0, f64::max);
    let y_max = results
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.ops_per_s))
        .fold(0.0, f64::max);
    let y_ticks = nice_ticks(y_max);
    let throughput = Panel {
        top: TOP,
        x_max,
        y_max: *y_ticks.last().unwrap_or(&1.0),
    };
    // Warmup: shaded.
    if let Some(warmup_end) = results
        .iter()
        .filter_map(|r| {
            r.timeline
                .iter()
                .filter(|s| s.warmup)
                .map(|s| s.second + 1)
                .max()
        })
        .max()
    {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{PANEL_HEIGHT}" fill="#f2f2f2"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#888">warmup</text>"##,
            throughput.x(warmup_end as f64) - LEFT,
            LEFT + 4.0,
            TOP + 14.0
        );
    }
    axes(
        &mut out,
        &throughput,
        "Throughput (answers per second)",
        "seconds since start",
        &y_ticks,
        &fmt_count,
    );
    for tick in nice_ticks(x_max) {
        if tick <= x_max {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{tick}</text>"#,
                throughput.x(tick),
                TOP + PANEL_HEIGHT + 16.0
            );
        }
    }
    for (i, result) in results.iter().enumerate() {
        // Each second's rate drawn at the middle of the part of the second it covers; a last
        // sliver of a second (the final answers trickling in) would only draw noise.
        let points: Vec<(f64, f64)> = result
            .timeline
            .iter()
            .filter(|s| s.span_s >= MIN_SPAN_S)
            .map(|s| {
                (
                    throughput.x(s.second as f64 + s.span_s / 2.0),
                    throughput.y(s.ops_per_s),
                )
            })
            .collect();
        polyline(&mut out, &points, COLORS[i % COLORS.len()]);
    }

    // p99 and p50 of each second over time.
    let top = TOP + PANEL_HEIGHT + BOTTOM + TOP;
    let seconds = |r: &'_ RunResult| -> Vec<crate::bench::report::SecondSample> {
        r.timeline
            .iter()
            .filter(|s| s.span_s >= MIN_SPAN_S && s.ops > s.errors)
            .copied()
            .collect()
    };
    let y_max = results
        .iter()
        .flat_map(|r| seconds(r).into_iter().map(|s| s.p99_us))
        .fold(0.0, f64::max);
    let y_ticks = nice_ticks(y_max);
    let over_time = Panel {
        top,
        x_max,
        y_max: *y_ticks.last().unwrap_or(&1.0),
    };
    axes(
        &mut out,
        &over_time,
        "Latency per second: p99 (solid), p50 (dashed)",
        "seconds since start",
        &y_ticks,
        &fmt_us,
    );
    for tick in nice_ticks(x_max) {
        if tick <= x_max {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{tick}</text>"#,
                over_time.x(tick),
                top + PANEL_HEIGHT + 16.0
            );
        }
    }
    for (i, result) in results.iter().enumerate() {
        let samples = seconds(result);
        let at = |s: &crate::bench::report::SecondSample, us: f64| {
            (
                over_time.x(s.second as f64 + s.span_s / 2.0),
                over_time.y(us),
            )
        };
        let color = COLORS[i % COLORS.len()];
        let p99: Vec<(f64, f64)> = samples.iter().map(|s| at(s, s.p99_us)).collect();
        polyline(&mut out, &p99, color);
        let p50: Vec<(f64, f64)> = samples.iter().map(|s| at(s, s.p50_us)).collect();
        polyline_styled(&mut out, &p50, color, r#" stroke-dasharray="6 4""#);
    }

    // Latency by percentile.
    let top = top + PANEL_HEIGHT + BOTTOM + TOP;
    let y_max = results
        .iter()
        .flat_map(|r| r.percentiles.iter().map(|p| p.latency_us))
        .fold(0.0, f64::max);
    let y_ticks = nice_ticks(y_max);
    let latency = Panel {
        top,
        x_max: MAX_NINES,
        y_max: *y_ticks.last().unwrap_or(&1.0),
    };
    axes(
        &mut out,
        &latency,
        "Latency by percentile",
        "percentile",
        &y_ticks,
        &fmt_us,
    );
    for (label, percentile) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
        ("99.999%", 99.999),
    ] {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{label}</text>"#,
            latency.x(nines(percentile)),
            top + PANEL_HEIGHT + 16.0
        );
    }
    for (i, result) in results.iter().enumerate() {
        let points: Vec<(f64, f64)> = result
            .percentiles
            .iter()
            .map(|p| (latency.x(nines(p.percentile)), latency.y(p.latency_us)))
            .collect();
        polyline(&mut out, &points, COLORS[i % COLORS.len()]);
    }

    // Legend: the label, and the workload on a line of its own below it.
    let legend_top = top + PANEL_HEIGHT + BOTTOM + 10.0;
    for (i, result) in results.iter().enumerate() {
        let y = legend_top + LEGEND_LINE * i as f64;
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text><text x="{:.1}" y="{:.1}" font-size="10" fill="#555">{}</text>"##,
            y - 4.0,
            COLORS[i % COLORS.len()],
            LEFT + 20.0,
            y + 2.0,
            escape(&result.label),
            LEFT + 20.0,
            y + 16.0,
            escape(&result.describe())
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample;

    #[test]
    fn ticks_cover_the_maximum_with_round_steps() {
        assert_eq!(nice_ticks(95.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let unit = nice_ticks(1.0);
        assert_eq!(unit.len(), 6);
        assert!((unit[5] - 1.0).abs() < 1e-12, "{unit:?}");
        assert_eq!(nice_ticks(0.0), vec![0.0, 1.0]);
        let ticks = nice_ticks(152_340.0);
        assert!(
            *ticks.last().unwrap() >= 152_340.0 && ticks.len() <= 7,
            "{ticks:?}"
        );
    }

    #[test]
    fn nines_place_percentiles_on_a_log_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }

    #[test]
    fn the_svg_has_one_line_per_result_and_panel() {
        let a = sample("ringcache <A>", "ringcache://127.0.0.1:7379", 40_000.0, 200);
        let b = sample("redis", "redis://127.0.0.1:6379", 80_000.0, 100);
        let svg = svg(&[&a, &b]);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Per result: throughput, p99 and p50 over time, the percentile curve.
        assert_eq!(svg.matches("<polyline").count(), 8);
        assert!(svg.contains("Latency per second") && svg.contains("stroke-dasharray"));
        assert!(svg.contains("ringcache &lt;A&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(svg.contains("99.9%") && svg.contains("warmup"));
    }
}
