//! The configuration schema: every key, its type, its default and its meaning.
//!
//! Key names follow the seed system (Hydra/Lightning) so that its scenario commands work verbatim.
//! The doc comment on each field is the user documentation of that key.

use serde::{Deserialize, Serialize};

mod data;
mod model;
mod paths;
mod train;
mod trainer;

pub use data::*;
pub use model::*;
pub use paths::*;
pub use train::*;
pub use trainer::*;

/// The fully resolved configuration of one vidtrain run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of the experiment; runs are written to `paths.run_dir/<experiment>/<timestamp>/`.
    pub experiment: String,
    /// Data loading: decoding, sampling, selective loading, prefetch.
    pub data: DataConfig,
    /// The training loop: accumulation, epochs, learning rate, folds.
    pub train: TrainConfig,
    /// Numeric precision and device.
    pub trainer: TrainerConfig,
    /// Model architecture and activation recompute.
    pub model: ModelConfig,
    /// Where the dataset lives and where runs are written.
    pub paths: PathsConfig,
    /// Evaluation (`eval`, validation, `predict`).
    pub eval: EvalConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            experiment: "default".to_string(),
            data: DataConfig::default(),
            train: TrainConfig::default(),
            trainer: TrainerConfig::default(),
            model: ModelConfig::default(),
            paths: PathsConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// The views vidtrain knows.
pub const KNOWN_VIEWS: [&str; 3] = ["front", "left", "right"];

impl Config {
    /// Views actually used by this run, in `data.views` order.
    pub fn active_views(&self) -> Vec<String> {
        match self.train.view {
            ViewMode::Single => vec![self.train.view_name.clone()],
            ViewMode::Multi => self.data.views.clone(),
        }
    }

    /// Samples per forward pass of validation, `eval` and `predict` (`train.video_batch_size`,
    /// `"auto"` resolved to `data.batch_size`).
    pub fn inference_batch_size(&self) -> usize {
        match self.train.video_batch_size {
            InferenceBatch::Auto => self.data.batch_size,
            InferenceBatch::Samples(samples) => samples,
        }
    }

    /// The resolved config as TOML, as saved in the run directory and printed by `config show`.
    pub fn to_toml(&self) -> String {
        // Serialising a plain struct of strings, numbers and lists cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# not serialisable: {error}"))
    }
}
