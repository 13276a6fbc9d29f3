//! The files `vidtrain eval` and `vidtrain predict` write: `metrics.json`, `predictions.csv`
//! (one `p_<class>` column per class) and `confusion.svg`; windows as CSV or JSON. CSV goes
//! through the `csv` crate (decision 0004), so a recording, label or class name holding a comma
//! or a quote stays one field.

use std::path::Path;

use vidtrain_config::Config;

use super::{EvalReport, WindowPrediction};
use crate::{Error, Result};

/// `metrics.json`, `predictions.csv` and `confusion.svg` of an evaluation into `out`, each
/// written whole.
pub fn write_evaluation(out: &Path, config: &Config, report: &EvalReport) -> Result<()> {
    let metrics = serde_json::to_string_pretty(report).expect("the report serialises");
    crate::write_atomically(&out.join("metrics.json"), metrics.as_bytes())?;
    let rows = report.predictions.iter().map(|sample| {
        (
            vec![
                sample.recording.clone(),
                sample.start_frame.to_string(),
                sample.end_frame.to_string(),
                sample.label.clone(),
                sample.predicted.clone(),
            ],
            Some(sample.probabilities.as_slice()),
        )
    });
    let csv = probability_csv(
        &[
            "recording",
            "start_frame",
            "end_frame",
            "label",
            "predicted",
        ],
        &config.data.class_names,
        rows,
    )?;
    crate::write_atomically(&out.join("predictions.csv"), &csv)?;
    let svg = crate::report::confusion_svg::confusion_matrix_svg(
        &config.data.class_names,
        &report.metrics.confusion,
        &format!("{} ({} samples)", report.weights.display(), report.samples),
    );
    crate::write_atomically(&out.join("confusion.svg"), svg.as_bytes())
}

/// The windows of `vidtrain predict` as CSV (a skipped window: `predicted` = `skipped`, empty
/// probabilities) or, with `json`, as a JSON array.
pub fn windows_text(config: &Config, windows: &[WindowPrediction], json: bool) -> Result<Vec<u8>> {
    if json {
        let text = serde_json::to_string_pretty(windows).expect("predictions serialise") + "\n";
        return Ok(text.into_bytes());
    }
    let rows = windows.iter().map(|window| {
        (
            vec![
                window.video.display().to_string(),
                window.window.to_string(),
                window.start_frame.to_string(),
                window.end_frame.to_string(),
                window.predicted.clone().unwrap_or_else(|| "skipped".into()),
            ],
            window.probabilities.as_deref(),
        )
    });
    probability_csv(
        &["video", "window", "start_frame", "end_frame", "predicted"],
        &config.data.class_names,
        rows,
    )
}

/// A CSV table: `header` and one `p_<class>` column per class, then each row's leading fields
/// and its class probabilities to six decimals (empty fields for a row without them).
fn probability_csv<'a>(
    header: &[&str],
    class_names: &[String],
    rows: impl Iterator<Item = (Vec<String>, Option<&'a [f32]>)>,
) -> Result<Vec<u8>> {
    let failed = |error: csv::Error| Error::Unsupported {
        key: "output".into(),
        message: format!("could not write CSV: {error}"),
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    let columns = header
        .iter()
        .map(|name| name.to_string())
        .chain(class_names.iter().map(|class| format!("p_{class}")));
    writer.write_record(columns).map_err(failed)?;
    for (fields, probabilities) in rows {
        let probabilities: Vec<String> = match probabilities {
            Some(values) => values.iter().map(|p| format!("{p:.6}")).collect(),
            None => vec![String::new(); class_names.len()],
        };
        writer
            .write_record(fields.iter().chain(&probabilities))
            .map_err(failed)?;
    }
    writer
        .into_inner()
        .map_err(|error| failed(error.into_error().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_and_quotes_stay_one_field() {
        let classes = vec!["walk".to_string(), "sit, then stand".to_string()];
        let rows = [(
            vec!["a \"b\", c.mp4".to_string(), "walk".to_string()],
            Some(&[0.25f32, 0.75][..]),
        )];
        let bytes = probability_csv(&["video", "predicted"], &classes, rows.into_iter()).unwrap();
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(
            header,
            ["video", "predicted", "p_walk", "p_sit, then stand"]
        );
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(&row[0], "a \"b\", c.mp4");
        assert_eq!(&row[3], "0.750000");
    }
}
