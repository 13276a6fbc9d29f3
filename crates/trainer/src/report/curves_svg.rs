//! `curves.svg`: the run's learning curves per epoch as a stand-alone SVG — training and
//! validation loss on the left, validation accuracy and macro-F1 (0–1) on the right.

use std::fmt::Write as _;

use vidtrain_memutil::{PlotArea, svg_document_start, svg_escape as escape};

/// One epoch's points.
#[derive(Debug, Clone, Copy)]
pub struct EpochPoint {
    /// Epoch number (1-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Validation macro-F1.
    pub val_macro_f1: f64,
}

/// One plotted line: its name, its colour and how to read its value from an epoch.
type Series = (&'static str, &'static str, fn(&EpochPoint) -> f64);

const HEIGHT: f64 = 320.0;
/// Left of each panel, for its value labels.
const LEFT: f64 = 56.0;
const GAP: f64 = 40.0;
/// The left panel: 440 px wide, 40 px above for the legend and below for the axis title.
const PANEL: PlotArea = PlotArea::inside([LEFT + 440.0, HEIGHT], [LEFT, 40.0, 0.0, 40.0]);

/// The SVG text of `points` with `title` above both panels.
pub fn curves_svg(points: &[EpochPoint], title: &str) -> String {
    let width = 2.0 * PANEL.right() + GAP;
    let mut svg = svg_document_start(width, HEIGHT, 11);
    let _ = writeln!(
        svg,
        r#"<text x="8" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let last_epoch = points.iter().map(|point| point.epoch).max().unwrap_or(1);
    let top_loss = points
        .iter()
        .flat_map(|point| [point.train_loss, point.val_loss])
        .filter(|value| value.is_finite())
        .fold(1e-9, f64::max)
        * 1.05;
    let losses: [Series; 2] = [
        ("train loss", "#1f77b4", |point| point.train_loss),
        ("val loss", "#d62728", |point| point.val_loss),
    ];
    let scores: [Series; 2] = [
        ("val accuracy", "#2ca02c", |point| point.val_accuracy),
        ("val macro-F1", "#9467bd", |point| point.val_macro_f1),
    ];
    panel(
        &mut svg, PANEL, points, last_epoch, top_loss, "loss", &losses,
    );
    let right_panel = PlotArea {
        left: PANEL.right() + GAP + LEFT,
        ..PANEL
    };
    panel(
        &mut svg,
        right_panel,
        points,
        last_epoch,
        1.0,
        "score",
        &scores,
    );
    svg.push_str("</svg>\n");
    svg
}

fn panel(
    svg: &mut String,
    area: PlotArea,
    points: &[EpochPoint],
    last_epoch: usize,
    top: f64,
    axis: &str,
    series: &[Series],
) {
    let x = |epoch: usize| area.x(epoch.saturating_sub(1) as f64 / (last_epoch.max(2) - 1) as f64);
    let y = |value: f64| area.y(value / top);
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        area.left, area.top, area.width, area.height
    );
    for tick in 0..=4 {
        let value = top * tick as f64 / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{value:.2}</text>"#,
            area.left - 4.0,
            y(value) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">epoch (1–{last_epoch}) · {axis}</text>"#,
        area.x(0.5),
        HEIGHT - 12.0
    );
    for (number, (name, colour, value_of)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .filter(|point| value_of(point).is_finite())
            .map(|point| format!("{:.1},{:.1}", x(point.epoch), y(value_of(point))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for point in points.iter().filter(|point| value_of(point).is_finite()) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"><title>{name}, epoch {}: {:.4}</title></circle>"#,
                x(point.epoch),
                y(value_of(point)),
                point.epoch,
                value_of(point)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{name}</text>"#,
            area.left + 8.0 + 110.0 * number as f64,
            area.top - 6.0
        );
    }
}
