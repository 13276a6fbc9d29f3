//! The confusion matrix as a stand-alone SVG image: rows are annotated classes, columns predicted
//! ones; each cell shows its count and is shaded by its share of the row (recall), so classes with
//! few samples read as clearly as large ones.

use std::fmt::Write as _;

use vidtrain_memutil::{svg_document_start, svg_escape as escape};

const CELL: usize = 44;
const LABEL_WIDTH: usize = 96;
const TOP: usize = 110;

/// The SVG text of `confusion` (`[label][prediction]` counts) with `class_names` on both axes.
pub fn confusion_matrix_svg(
    class_names: &[String],
    confusion: &[Vec<usize>],
    title: &str,
) -> String {
    let classes = confusion.len();
    let width = LABEL_WIDTH + classes * CELL + 20;
    let height = TOP + classes * CELL + 40;
    let mut svg = svg_document_start(width, height, 12);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        8,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">predicted</text>"#,
        LABEL_WIDTH + classes * CELL / 2,
        height - 12
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end" font-style="italic">annotated ↓</text>"#,
        LABEL_WIDTH - 6,
        TOP - 6
    );
    let name = |class: usize| {
        class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class_{class}"))
    };
    for column in 0..classes {
        let x = LABEL_WIDTH + column * CELL + CELL / 2;
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" transform="rotate(-60 {x} {})">{}</text>"#,
            TOP - 6,
            TOP - 6,
            escape(&name(column))
        );
    }
    for (row, counts) in confusion.iter().enumerate() {
        let y = TOP + row * CELL;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 6,
            y + CELL / 2 + 4,
            escape(&name(row))
        );
        let total: usize = counts.iter().sum();
        for (column, &count) in counts.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            // White → dark blue with the share of the row.
            let shade = |full: f64, none: f64| (none + (full - none) * share).round() as u8;
            let fill = format!(
                "#{:02x}{:02x}{:02x}",
                shade(8.0, 255.0),
                shade(48.0, 255.0),
                shade(107.0, 255.0)
            );
            let text = if share > 0.5 { "white" } else { "black" };
            let x = LABEL_WIDTH + column * CELL;
            let _ = writeln!(
                svg,
                r##"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#999"><title>{} → {}: {count}</title></rect>"##,
                escape(&name(row)),
                escape(&name(column))
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle" fill="{text}">{count}</text>"#,
                x + CELL / 2,
                y + CELL / 2 + 4
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_is_drawn_with_its_count_and_names() {
        let names = vec!["left".to_string(), "right".to_string(), "a<b".to_string()];
        let confusion = vec![vec![5, 1, 0], vec![0, 0, 0], vec![2, 0, 7]];
        let svg = confusion_matrix_svg(&names, &confusion, "fold 0");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 9);
        assert!(svg.contains("<title>left → right: 1</title>"));
        assert!(svg.contains("<title>a&lt;b → a&lt;b: 7</title>"));
        // The diagonal cell of a perfectly recalled row is the darkest shade; an empty row is white.
        assert!(svg.contains(r##"fill="#ffffff" stroke="#999"><title>right → right: 0"##));
        assert!(!svg.contains("a<b"));
    }
}
