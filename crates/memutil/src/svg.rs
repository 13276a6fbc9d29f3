//! `memory.svg`: the run's memory over time as a stand-alone SVG line plot — host RSS, device
//! memory in use and reserved when measured, validation phases shaded, marks as ticks.

use std::fmt::Write as _;

use crate::MemoryReport;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 360.0;
/// Margins: 70 px on the left for the byte labels, 30 above for the legend, 40 below for the
/// time axis.
const AREA: PlotArea = PlotArea::inside([WIDTH, HEIGHT], [70.0, 30.0, 20.0, 40.0]);

/// The rectangle a plot draws its values in (pixels), and where a value falls in it.
#[derive(Debug, Clone, Copy)]
pub struct PlotArea {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl PlotArea {
    /// The area inside `[left, top, right, bottom]` margins of a drawing `[width, height]`.
    pub const fn inside([width, height]: [f64; 2], [left, top, right, bottom]: [f64; 4]) -> Self {
        Self {
            left,
            top,
            width: width - left - right,
            height: height - top - bottom,
        }
    }

    /// The x of `fraction` (0 to 1) of the way across.
    pub fn x(&self, fraction: f64) -> f64 {
        self.left + self.width * fraction
    }

    /// The y of `fraction` (0 to 1) of the way up.
    pub fn y(&self, fraction: f64) -> f64 {
        self.top + self.height * (1.0 - fraction)
    }

    pub fn right(&self) -> f64 {
        self.left + self.width
    }

    pub fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

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
    let x = |t: f64| AREA.x(t / end_s);
    let y = |bytes: u64| AREA.y(bytes as f64 / top_bytes);
    let mut svg = document_start(WIDTH, HEIGHT, 11);
    // Validation phases: from a mark naming validation to the next mark (or the end).
    for (index, mark) in report.marks.iter().enumerate() {
        if !mark.label.contains("validation") {
            continue;
        }
        let until = report.marks.get(index + 1).map_or(end_s, |next| next.t_s);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{}" width="{:.1}" height="{:.1}" fill="#fde9c9"><title>{}</title></rect>"##,
            x(mark.t_s),
            AREA.top,
            (x(until) - x(mark.t_s)).max(0.5),
            AREA.height,
            escape(&mark.label)
        );
    }
    // Axes, gridlines every fifth of the range.
    for step in 0..=4 {
        let bytes = (top_bytes * step as f64 / 4.0) as u64;
        let _ = writeln!(
            svg,
            r##"<line x1="{}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            AREA.left,
            AREA.right(),
            y(bytes),
            y(bytes),
            AREA.left - 6.0,
            y(bytes) + 4.0,
            crate::format_bytes(bytes)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds (0 – {end_s:.1}); shaded: validation</text>"#,
        AREA.x(0.5),
        HEIGHT - 10.0
    );
    for mark in &report.marks {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#bbb"><title>{3}</title></line>"##,
            x(mark.t_s),
            AREA.bottom(),
            AREA.bottom() + 5.0,
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
            AREA.left + 8.0 + 230.0 * row as f64,
            AREA.top - 10.0,
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
