//! Observers of a run: everything that watches the loop without changing it — the
//! `metrics.jsonl` lines (the machine contract), TensorBoard event files, the pictures
//! (`confusion.svg`, `curves.svg`) and the progress display. The loop reports each optimizer
//! step and each validated epoch to all of them through [`RunObserver`].

use serde_json::json;
use vidtrain_config::Config;

use crate::Result;
use crate::fit::progress::Progress;
use crate::persist::run_dir::RunDir;
use crate::report::confusion_svg::confusion_matrix_svg;
use crate::report::curves_svg::{EpochPoint, curves_svg};
use crate::report::metrics::ClassificationMetrics;
use crate::report::tensorboard::EventWriter;

/// One optimizer step, as reported.
#[derive(Debug, Clone)]
pub(crate) struct StepRecord {
    pub epoch: usize,
    pub step: usize,
    /// Loss of the accumulation group (its micro-batches' losses, weighted by their shares).
    pub loss: f64,
    pub lr: f64,
    /// The fp16 loss scale (`None` without loss scaling).
    pub loss_scale: Option<f64>,
    /// Whether the step was skipped (fp16 overflow).
    pub skipped: bool,
}

/// One validated epoch, as reported.
#[derive(Debug, Clone)]
pub(crate) struct EpochRecord<'a> {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub metrics: &'a ClassificationMetrics,
    pub val_skipped: usize,
    pub epoch_train_s: f64,
    pub host_rss_bytes: Option<u64>,
    pub peak_host_rss_bytes: u64,
    /// Whether this epoch is the best so far by `train.monitor`.
    pub is_best: bool,
}

impl EpochRecord<'_> {
    /// The epoch metric `name` (one of `vidtrain_config::MONITORABLE_METRICS`).
    pub(crate) fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "val_accuracy" => Some(self.metrics.accuracy),
            "val_macro_f1" => Some(self.metrics.macro_f1),
            "val_loss" => Some(self.val_loss),
            "val_macro_auroc" => self.metrics.macro_auroc,
            "train_loss" => Some(self.train_loss),
            _ => None,
        }
    }
}

/// Something that watches the loop. Every method has a do-nothing default.
pub(crate) trait RunObserver {
    /// An epoch's training starts.
    fn epoch_started(&mut self, _epoch: usize) {}

    /// A micro-batch was trained (`loss` is its unweighted loss).
    fn micro_batch(&mut self, _loss: f32, _step: usize) {}

    /// An optimizer step was taken (or skipped).
    fn step(&mut self, _record: &StepRecord, _run_dir: &mut RunDir) -> Result<()> {
        Ok(())
    }

    /// An epoch was validated.
    fn epoch(&mut self, _record: &EpochRecord<'_>, _run_dir: &mut RunDir) -> Result<()> {
        Ok(())
    }

    /// The loop ended (normally, by early stopping or by an interruption).
    fn finished(&mut self) {}
}

/// `metrics.jsonl`: one line per step and per epoch.
pub(crate) struct MetricsLog;

impl RunObserver for MetricsLog {
    fn step(&mut self, record: &StepRecord, run_dir: &mut RunDir) -> Result<()> {
        run_dir.log_metrics(&json!({
            "event": "step", "epoch": record.epoch, "step": record.step, "loss": record.loss,
            "lr": record.lr, "loss_scale": record.loss_scale, "skipped": record.skipped,
        }))
    }

    fn epoch(&mut self, record: &EpochRecord<'_>, run_dir: &mut RunDir) -> Result<()> {
        let metrics = record.metrics;
        run_dir.log_metrics(&json!({
            "event": "epoch",
            "epoch": record.epoch,
            "step": record.step,
            "train_loss": record.train_loss,
            "val_loss": record.val_loss,
            "val_accuracy": metrics.accuracy,
            "val_macro_f1": metrics.macro_f1,
            "val_per_class_f1": metrics.per_class_f1,
            "val_confusion": metrics.confusion,
            "val_macro_auroc": metrics.macro_auroc,
            "val_per_class_auroc": metrics.per_class_auroc,
            "val_samples": metrics.samples,
            "val_skipped": record.val_skipped,
            "epoch_train_s": record.epoch_train_s,
            "host_rss_bytes": record.host_rss_bytes,
            "is_best": record.is_best,
        }))
    }
}

/// TensorBoard scalars under `tensorboard/` (`trainer.tensorboard`).
pub(crate) struct TensorBoardLog {
    writer: EventWriter,
    classes: Vec<String>,
}

impl TensorBoardLog {
    pub(crate) fn create(run_dir: &RunDir, config: &Config) -> Result<Self> {
        Ok(Self {
            writer: EventWriter::create(&run_dir.path().join("tensorboard"))?,
            classes: config.data.class_names.clone(),
        })
    }
}

impl RunObserver for TensorBoardLog {
    fn step(&mut self, record: &StepRecord, _run_dir: &mut RunDir) -> Result<()> {
        let mut values = vec![("train/loss_step", record.loss), ("train/lr", record.lr)];
        if let Some(scale) = record.loss_scale {
            values.push(("train/loss_scale", scale));
        }
        self.writer.scalars(record.step as u64, &values)
    }

    fn epoch(&mut self, record: &EpochRecord<'_>, _run_dir: &mut RunDir) -> Result<()> {
        let metrics = record.metrics;
        let mut values = vec![
            ("epoch", record.epoch as f64),
            ("train/loss_epoch", record.train_loss),
            ("val/loss", record.val_loss),
            ("val/accuracy", metrics.accuracy),
            ("val/macro_f1", metrics.macro_f1),
            ("val/macro_auroc", metrics.macro_auroc.unwrap_or(f64::NAN)),
            (
                "memory/host_rss_mib",
                mib(record.host_rss_bytes.unwrap_or(0)),
            ),
            ("memory/peak_host_rss_mib", mib(record.peak_host_rss_bytes)),
        ];
        let per_class: Vec<(String, f64)> = self
            .classes
            .iter()
            .zip(&metrics.per_class_f1)
            .map(|(name, &f1)| (format!("val_f1/{name}"), f1))
            .collect();
        values.extend(per_class.iter().map(|(tag, value)| (tag.as_str(), *value)));
        self.writer.scalars(record.step as u64, &values)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `confusion.svg` (the latest epoch) and `curves.svg` (all epochs so far).
pub(crate) struct Pictures {
    title: String,
    class_names: Vec<String>,
    points: Vec<EpochPoint>,
}

impl Pictures {
    /// `points` holds the epochs of the run this one resumes (from `metrics.jsonl`).
    pub(crate) fn new(config: &Config, points: Vec<EpochPoint>) -> Self {
        Self {
            title: config.experiment.clone(),
            class_names: config.data.class_names.clone(),
            points,
        }
    }
}

impl RunObserver for Pictures {
    fn epoch(&mut self, record: &EpochRecord<'_>, run_dir: &mut RunDir) -> Result<()> {
        let metrics = record.metrics;
        run_dir.write(
            "confusion.svg",
            confusion_matrix_svg(
                &self.class_names,
                &metrics.confusion,
                &format!(
                    "{} — validation, epoch {}: accuracy {:.3}",
                    self.title, record.epoch, metrics.accuracy
                ),
            )
            .as_bytes(),
        )?;
        self.points.retain(|point| point.epoch != record.epoch);
        self.points.push(EpochPoint {
            epoch: record.epoch,
            train_loss: record.train_loss,
            val_loss: record.val_loss,
            val_accuracy: metrics.accuracy,
            val_macro_f1: metrics.macro_f1,
        });
        run_dir.write(
            "curves.svg",
            curves_svg(&self.points, &format!("{} — learning curves", self.title)).as_bytes(),
        )?;
        Ok(())
    }
}

impl RunObserver for Progress {
    fn epoch_started(&mut self, epoch: usize) {
        self.start_epoch(epoch);
    }

    fn micro_batch(&mut self, loss: f32, step: usize) {
        self.batch(loss, step);
    }

    fn epoch(&mut self, record: &EpochRecord<'_>, _run_dir: &mut RunDir) -> Result<()> {
        self.end_epoch(
            record.epoch,
            record.train_loss,
            record.val_loss,
            record.metrics,
        );
        Ok(())
    }

    fn finished(&mut self) {
        self.finish();
    }
}

/// The epochs in `run_folder`'s `metrics.jsonl` (a resumed run continues its curves).
pub(crate) fn epochs_logged(run_folder: &std::path::Path) -> Vec<EpochPoint> {
    let text = std::fs::read_to_string(run_folder.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["event"] == "epoch")
        .filter_map(|line| {
            Some(EpochPoint {
                epoch: line["epoch"].as_u64()? as usize,
                train_loss: line["train_loss"].as_f64()?,
                val_loss: line["val_loss"].as_f64().unwrap_or(f64::NAN),
                val_accuracy: line["val_accuracy"].as_f64()?,
                val_macro_f1: line["val_macro_f1"].as_f64()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_monitorable_metric_is_read_from_the_epoch_record() {
        let metrics = ClassificationMetrics::from_probabilities(&[0, 1], &[0.9, 0.1, 0.2, 0.8], 2);
        let record = EpochRecord {
            epoch: 1,
            step: 1,
            train_loss: 0.5,
            val_loss: 0.25,
            metrics: &metrics,
            val_skipped: 0,
            epoch_train_s: 1.0,
            host_rss_bytes: None,
            peak_host_rss_bytes: 0,
            is_best: false,
        };
        for name in vidtrain_config::MONITORABLE_METRICS {
            assert!(record.metric(name).is_some_and(f64::is_finite), "{name}");
        }
        assert_eq!(record.metric("val_loss"), Some(0.25));
        assert_eq!(record.metric("val_acc"), None);
    }
}
