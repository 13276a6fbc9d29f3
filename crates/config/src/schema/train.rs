//! `train.*` (the loop: accumulation, epochs, schedule, folds, resume) and `eval.*`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::controls::{ClassWeights, MonitorMode, OptimizerKind, OptimizerStateFormat};

/// `train.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Micro-batches whose gradients are summed before one optimizer step. The loss is scaled by
    /// 1/N, so `batch_size=1 accumulate_grad_batches=4` trains like `batch_size=4`.
    pub accumulate_grad_batches: usize,
    /// Passes over the training set.
    pub max_epochs: usize,
    /// Stop after this many optimizer steps; -1 means no limit (Lightning's convention).
    pub max_steps: i64,
    /// Adam learning rate (the peak rate when `train.lr_schedule = "cosine"`).
    pub lr: f64,
    /// Learning-rate schedule over the optimizer steps of the run: `constant` or `cosine`
    /// (half a cosine from `train.lr` down to 0).
    pub lr_schedule: LrSchedule,
    /// Cross-validation fold held out for validation (0-based, `< k_folds`), or `"all"`.
    pub fold: Fold,
    /// Number of cross-validation folds; persons are split into this many groups.
    pub k_folds: usize,
    /// Samples per forward pass in validation, `eval` and `predict`: `"auto"` (the default)
    /// uses `data.batch_size`, so these passes, which keep no gradients, never need more memory
    /// than a training micro-batch; a number asks for that many (faster when memory allows).
    pub video_batch_size: InferenceBatch,
    /// `multi` uses every view in `data.views`; `single` uses only `train.view_name`.
    pub view: ViewMode,
    /// The view used when `train.view = "single"`.
    pub view_name: String,
    /// Seed for initialisation, shuffling and dropout.
    pub seed: u64,
    /// Also save a resumable checkpoint every this many optimizer steps (0: only after each
    /// epoch). Checkpoints replace the previous one whole; an interrupted write leaves the old.
    pub checkpoint_every_steps: usize,
    /// Continue a run: `""` (start fresh), `"last"` (the newest run of this experiment with a
    /// checkpoint), or the path of a run folder or checkpoint folder. Use the same config.
    pub resume: String,
    /// `adam` (as before; L2 `weight_decay` added to the gradient, like `torch.optim.Adam`),
    /// `adamw` (decoupled weight decay) or `sgd` (with `train.momentum`, `train.nesterov`).
    pub optimizer: OptimizerKind,
    /// How the optimizer keeps its state (Adam's two moments, SGD's momentum): `"f32"` (as
    /// PyTorch), `"bf16"` (half the bytes) or `"8bit"` (block-wise quantized with dynamic codes,
    /// as bitsandbytes' 8-bit optimizers: about a quarter of the bytes). Parameters and the
    /// update arithmetic stay f32; tensors under 4096 values keep f32 state.
    pub optimizer_state: OptimizerStateFormat,
    /// Weight decay: L2 penalty for `adam`/`sgd`, decoupled decay for `adamw`.
    pub weight_decay: f64,
    /// SGD momentum (0 = plain SGD; dampening 0, as PyTorch).
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    pub nesterov: bool,
    /// Linear warm-up from 0 to `train.lr` over this many optimizer steps before the schedule.
    pub warmup_steps: usize,
    /// Warm-up as a share of the run's optimizer steps (used when `train.warmup_steps = 0`).
    pub warmup_fraction: f64,
    /// Label smoothing of the cross-entropy loss (`torch.nn.CrossEntropyLoss(label_smoothing)`).
    pub label_smoothing: f64,
    /// Class weights in the training loss: `"none"`, `"balanced"` (n_samples / (n_classes ·
    /// count) over the training split, as scikit-learn) or a list with one weight (> 0) per
    /// class. The weighted mean is taken per micro-batch, as PyTorch's, so with weights
    /// `batch_size = 4` and `batch_size = 1, accumulate_grad_batches = 4` differ slightly.
    pub class_weights: ClassWeights,
    /// Metric that chooses the best checkpoint and drives early stopping: any number of the
    /// epoch line of `metrics.jsonl` (`val_accuracy`, `val_macro_f1`, `val_loss`,
    /// `val_macro_auroc`, `train_loss`).
    pub monitor: String,
    /// Whether larger or smaller `train.monitor` is better; `auto` minimises losses and
    /// maximises the rest.
    pub monitor_mode: MonitorMode,
    /// Stop when `train.monitor` has not improved for this many epochs (0 = never stop early).
    pub early_stopping_patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            accumulate_grad_batches: 1,
            max_epochs: 10,
            max_steps: -1,
            lr: 1e-4,
            lr_schedule: LrSchedule::Constant,
            fold: Fold::Index(0),
            k_folds: 5,
            video_batch_size: InferenceBatch::Auto,
            view: ViewMode::Multi,
            view_name: "front".to_string(),
            seed: 42,
            checkpoint_every_steps: 0,
            resume: String::new(),
            optimizer: OptimizerKind::Adam,
            optimizer_state: OptimizerStateFormat::F32,
            weight_decay: 0.0,
            momentum: 0.9,
            nesterov: false,
            warmup_steps: 0,
            warmup_fraction: 0.0,
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            monitor: "val_accuracy".to_string(),
            monitor_mode: MonitorMode::Auto,
            early_stopping_patience: 0,
        }
    }
}

/// `train.lr_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `train.lr` at every step.
    Constant,
    /// `train.lr · ½(1 + cos(π · step / total_steps))`.
    Cosine,
}

/// `train.view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewMode {
    /// One view, `train.view_name`.
    Single,
    /// All views in `data.views`, fused per `model.fusion_mode`.
    Multi,
}

/// `train.fold`: one fold index or every fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Hold out this fold.
    Index(usize),
    /// Run every fold in turn.
    All,
}

/// Serialize and Deserialize for an enum of a number (`$number(usize)`) or one keyword
/// (`$keyword`, a unit variant): through [`serialize_number_or`] and [`deserialize_number_or`].
macro_rules! number_or_keyword {
    ($name:ident, $number:path, $keyword:path, $text:literal, $expected:literal) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let number = match self {
                    $number(number) => Some(*number),
                    $keyword => None,
                };
                serialize_number_or(serializer, number, $text)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                let number = deserialize_number_or(deserializer, $text, $expected)?;
                Ok(number.map_or($keyword, $number))
            }
        }
    };
}

number_or_keyword!(
    Fold,
    Fold::Index,
    Fold::All,
    "all",
    "expected a fold index (0, 1, ...) or \"all\""
);

/// A key that takes a whole number or one keyword (`"all"`, `"auto"`): the number, or `None`
/// for the keyword. A number written as text (`"3"`, as environment overrides give it) counts.
fn deserialize_number_or<'de, D: Deserializer<'de>>(
    deserializer: D,
    keyword: &str,
    expected: &str,
) -> std::result::Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer).map_err(|_| serde::de::Error::custom(expected))? {
        Raw::Number(number) => Ok(Some(number as usize)),
        Raw::Text(text) if text == keyword => Ok(None),
        Raw::Text(text) => text
            .parse::<usize>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{expected}, got \"{text}\""))),
    }
}

/// The other direction of [`deserialize_number_or`].
fn serialize_number_or<S: Serializer>(
    serializer: S,
    number: Option<usize>,
    keyword: &str,
) -> std::result::Result<S::Ok, S::Error> {
    match number {
        Some(number) => serializer.serialize_u64(number as u64),
        None => serializer.serialize_str(keyword),
    }
}

/// `train.video_batch_size`: samples per forward pass of validation, `eval` and `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferenceBatch {
    /// As many as a training micro-batch (`data.batch_size`).
    Auto,
    /// This many.
    Samples(usize),
}

number_or_keyword!(
    InferenceBatch,
    InferenceBatch::Samples,
    InferenceBatch::Auto,
    "auto",
    "expected a number of samples (1, 2, ...) or \"auto\" (data.batch_size)"
);

/// `eval.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Temporal clips per segment whose class probabilities are averaged (multi-clip testing):
    /// clip k of N samples each frame at (k + ½)/N of its share of the segment; 1 keeps the
    /// uniform subsample of training.
    pub clips: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { clips: 1 }
    }
}
