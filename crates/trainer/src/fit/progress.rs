//! Progress display: a bar on a terminal, plain periodic lines otherwise (logs, CI, pipes).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::metrics::ClassificationMetrics;

/// Reports training progress on stderr.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    epochs: usize,
    batches_per_epoch: usize,
    epoch: usize,
    batches_seen: usize,
    last_line: Instant,
}

const PLAIN_LINE_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub(crate) fn new(use_bar: bool, epochs: usize, batches_per_epoch: usize) -> Self {
        let bar = use_bar.then(|| {
            let bar = ProgressBar::new((epochs * batches_per_epoch) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} batches {elapsed_precise} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            epochs,
            batches_per_epoch,
            epoch: 0,
            batches_seen: 0,
            last_line: Instant::now(),
        }
    }

    pub(crate) fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
        self.batches_seen = 0;
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("epoch {epoch}/{}", self.epochs));
        }
    }

    pub(crate) fn batch(&mut self, loss: f32, step: usize) {
        self.batches_seen += 1;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("loss {loss:.4} step {step}"));
            }
            None if self.last_line.elapsed() >= PLAIN_LINE_EVERY => {
                self.last_line = Instant::now();
                eprintln!(
                    "epoch {}/{} batch {}/{} step {step} loss {loss:.4}",
                    self.epoch, self.epochs, self.batches_seen, self.batches_per_epoch
                );
            }
            None => {}
        }
    }

    pub(crate) fn end_epoch(
        &mut self,
        epoch: usize,
        train_loss: f64,
        val_loss: f64,
        metrics: &ClassificationMetrics,
    ) {
        let line = format!(
            "epoch {epoch}/{}: train_loss {train_loss:.4} val_loss {val_loss:.4} val_accuracy {:.3} val_macro_f1 {:.3}",
            self.epochs, metrics.accuracy, metrics.macro_f1
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        self.last_line = Instant::now();
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
