//! `memory.svg`: the run's memory over time as a stand-alone SVG line plot — host RSS, device
//! memory in use and reserved when measured, validation phases shaded, marks as ticks.

use std::fmt::Write as _;

use crate::MemoryReport;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// The opening of a stand-alone SVG drawing on white: `<svg …>` sized `width × height`, sans-serif
/// text of `font_size` pixels. The caller appends shapes and `</svg>`.
pub fn document_start(
    width: impl std::fmt::Display,
    height: impl std::fmt::Display,
    font_size: u32,
) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="{font_size}">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    svg
}

pub fn timeline_svg(report: &MemoryReport) -> String {
    let end_s = report
        .timeline
        .iter()
        .map(|sample| sample.t_s)
        .chain(report.device_timeline.iter().map(|sample| sample.t_s))
        .chain(report.marks.iter().map(|mark| mark.t_s))
        .fold(1e-9, f64::max);
    let top_bytes = report
        .timeline
        .iter()
        .map(|sample| sample.host_rss_bytes)
        .chain(report.peak_host_rss_bytes)
        .chain(
            report
                .device_timeline
                .iter()
                .map(|sample| sample.reserved_bytes),
        )
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.05;
    let x = |t: f64| LEFT + (WIDTH - LEFT - RIGHT) * t / end_s;
    let y = |bytes: u64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - bytes as f64 / top_bytes);
    let mut svg = document_start(WIDTH, HEIGHT, 11);
    // Validation phases: from a mark naming validation to the next mark (or the end).
    for (index, mark) in report.marks.iter().enumerate() {
        if !mark.label.contains("validation") {
            continue;
        }
        let until = report.marks.get(index + 1).map_or(end_s, |next| next.t_s);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#fde9c9"><title>{}</title></rect>"##,
            x(mark.t_s),
            (x(until) - x(mark.t_s)).max(0.5),
            HEIGHT - TOP - BOTTOM,
            escape(&mark.label)
        );
    }
    // Axes, gridlines every fifth of the range.
    for step in 0..=4 {
        let bytes = (top_bytes * step as f64 / 4.0) as u64;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            y(bytes),
            y(bytes),
            LEFT - 6.0,
            y(bytes) + 4.0,
            crate::format_bytes(bytes)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds (0 – {end_s:.1}); shaded: validation</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 10.0
    );
    for mark in &report.marks {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#bbb"><title>{3}</title></line>"##,
            x(mark.t_s),
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 5.0,
            escape(&mark.label)
        );
    }
    let mut line = |points: Vec<(f64, u64)>, colour: &str, name: &str, row: usize| {
        if points.is_empty() {
            return;
        }
        let coordinates: Vec<String> = points
            .iter()
            .map(|(t, bytes)| format!("{:.1},{:.1}", x(*t), y(*bytes)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            coordinates.join(" ")
        );
        let peak = points.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{name} (peak {})</text>"#,
            LEFT + 8.0 + 230.0 * row as f64,
            TOP - 10.0,
            crate::format_bytes(peak)
        );
    };
    line(
        report
            .timeline
            .iter()
            .map(|sample| (sample.t_s, sample.host_rss_bytes))
            .collect(),
        "#1f77b4",
        "host RSS",
        0,
    );
    line(
        report
            .device_timeline
            .iter()
            .map(|sample| (sample.t_s, sample.in_use_bytes))
            .collect(),
        "#d62728",
        "device in use",
        1,
    );
    line(
        report
            .device_timeline
            .iter()
            .map(|sample| (sample.t_s, sample.reserved_bytes))
            .collect(),
        "#ff9896",
        "device reserved",
        2,
    );
    svg.push_str("</svg>\n");
    svg
}

/// `text` made safe inside SVG/XML text and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
