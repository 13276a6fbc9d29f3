//! Value types of the training controls: augmentation presets, sampler, optimizer, class
//! weights and the monitored metric's direction.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Config, SkeletonLayout};

/// `data.augment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentPreset {
    /// No augmentation (the keys keep their defaults: off).
    None,
    /// Horizontal flip (p = 0.5) and temporal jitter.
    Light,
    /// `light` plus random resized crop (area 0.6–1) and colour jitter (0.2 each).
    Standard,
}

impl AugmentPreset {
    /// The preset's name as written in a config.
    pub fn name(self) -> &'static str {
        match self {
            AugmentPreset::None => "none",
            AugmentPreset::Light => "light",
            AugmentPreset::Standard => "standard",
        }
    }

    /// The keys this preset sets, as a TOML layer between the defaults and the user's layers.
    pub fn as_toml(self) -> Option<&'static str> {
        match self {
            AugmentPreset::None => None,
            AugmentPreset::Light => Some("[data]\nhflip_prob = 0.5\ntemporal_jitter = true\n"),
            AugmentPreset::Standard => Some(
                "[data]\nhflip_prob = 0.5\ntemporal_jitter = true\ncrop_scale = [0.6, 1.0]\n\
                 color_jitter = [0.2, 0.2, 0.2]\n",
            ),
        }
    }
}

/// `data.sampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// A seeded permutation of the training split each epoch.
    Shuffle,
    /// As many seeded draws with replacement, each class equally likely (PyTorch's
    /// `WeightedRandomSampler` with weights 1 / class count).
    Balanced,
}

/// `train.optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (β 0.9/0.999, ε 1e-5).
    Adam,
    /// AdamW: Adam with weight decay decoupled from the gradient.
    Adamw,
    /// Stochastic gradient descent with optional (Nesterov) momentum.
    Sgd,
}

impl OptimizerKind {
    /// The config value (`"adam"`, `"adamw"`, `"sgd"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Adam => "adam",
            Self::Adamw => "adamw",
            Self::Sgd => "sgd",
        }
    }
}

/// `train.optimizer_state`: how optimizer moments are stored between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerStateFormat {
    /// 4 bytes a value.
    #[serde(rename = "f32")]
    F32,
    /// bfloat16: 2 bytes a value, f32's range with 8 bits of mantissa.
    #[serde(rename = "bf16")]
    Bf16,
    /// Block-wise 8-bit: 1 byte a value on bitsandbytes' dynamic (non-linear) code, one f32
    /// scale (the block's largest magnitude) per block of 2048 values.
    #[serde(rename = "8bit")]
    Blockwise8,
}

impl OptimizerStateFormat {
    /// The config value (`"f32"`, `"bf16"`, `"8bit"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Blockwise8 => "8bit",
        }
    }
}

/// `train.monitor_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMode {
    /// `min` for metrics whose name ends in `loss`, otherwise `max`.
    Auto,
    /// Larger is better.
    Max,
    /// Smaller is better.
    Min,
}

impl MonitorMode {
    /// Whether larger values of `metric` are better.
    pub fn maximises(self, metric: &str) -> bool {
        match self {
            MonitorMode::Auto => !metric.ends_with("loss"),
            MonitorMode::Max => true,
            MonitorMode::Min => false,
        }
    }
}

/// `train.class_weights`: `"none"`, `"balanced"` or one weight per class.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassWeights {
    /// Every class weighs 1.
    None,
    /// n_samples / (n_classes · count) over the training split.
    Balanced,
    /// Given weights, one per class.
    Fixed(Vec<f64>),
}

impl Serialize for ClassWeights {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ClassWeights::None => serializer.serialize_str("none"),
            ClassWeights::Balanced => serializer.serialize_str("balanced"),
            ClassWeights::Fixed(weights) => weights.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ClassWeights {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelling {
            Name(String),
            Weights(Vec<f64>),
        }
        match Spelling::deserialize(deserializer)? {
            Spelling::Name(name) if name == "none" => Ok(ClassWeights::None),
            Spelling::Name(name) if name == "balanced" => Ok(ClassWeights::Balanced),
            Spelling::Name(name) => Err(serde::de::Error::custom(format!(
                "`{name}` is not a class weighting: use \"none\", \"balanced\" or a list with \
                 one weight per class"
            ))),
            Spelling::Weights(weights) => Ok(ClassWeights::Fixed(weights)),
        }
    }
}

/// The metrics `train.monitor` may name (numbers of the epoch line of `metrics.jsonl`).
pub const MONITORABLE_METRICS: [&str; 5] = [
    "val_accuracy",
    "val_macro_f1",
    "val_loss",
    "val_macro_auroc",
    "train_loss",
];

impl SkeletonLayout {
    /// Left/right joint pairs in the keypoint files' joint numbers (`None` for `custom`).
    pub fn flip_pairs(self) -> Option<Vec<[usize; 2]>> {
        match self {
            // MHR70 (SAM-3D-body): eyes, ears, shoulders, elbows, hips, knees, ankles, the six
            // foot points, the two hands (21 joints each, same order), olecranons, cubital
            // fossae, acromions.
            SkeletonLayout::Sam3dBody52 => Some(
                [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14]]
                    .into_iter()
                    .chain((15..18).map(|joint| [joint, joint + 3]))
                    .chain((21..42).map(|joint| [joint, joint + 21]))
                    .chain([[63, 64], [65, 66], [67, 68]])
                    .collect(),
            ),
            SkeletonLayout::Coco17 => Some(
                [
                    [1, 2],
                    [3, 4],
                    [5, 6],
                    [7, 8],
                    [9, 10],
                    [11, 12],
                    [13, 14],
                    [15, 16],
                ]
                .to_vec(),
            ),
            SkeletonLayout::Custom => None,
        }
    }
}

impl Config {
    /// The joint pairs a flip exchanges, as positions in `data.keypoint_indices`: pairs with a
    /// joint that is not kept are left out (nothing to exchange it with).
    pub fn flip_joint_positions(&self) -> Vec<[usize; 2]> {
        let pairs = if self.data.flip_joint_pairs.is_empty() {
            self.model.skeleton.flip_pairs().unwrap_or_default()
        } else {
            self.data.flip_joint_pairs.clone()
        };
        let position = |joint: usize| {
            self.data
                .keypoint_indices
                .iter()
                .position(|&kept| kept == joint)
        };
        pairs
            .iter()
            .filter_map(|&[a, b]| Some([position(a)?, position(b)?]))
            .collect()
    }

    /// Whether training draws any augmentation.
    pub fn augments(&self) -> bool {
        let data = &self.data;
        data.hflip_prob > 0.0
            || data.crop_scale != [1.0, 1.0]
            || data.color_jitter.iter().any(|&strength| strength > 0.0)
            || data.temporal_jitter
    }

    pub(crate) fn validate_training_controls(&self) -> crate::Result<()> {
        let invalid = |key: &str, message: String| {
            Err(crate::Error::Invalid {
                key: key.to_string(),
                message,
            })
        };
        let (data, train) = (&self.data, &self.train);
        if !(0.0..=1.0).contains(&data.hflip_prob) {
            return invalid(
                "data.hflip_prob",
                format!("must be in 0..=1, got {}", data.hflip_prob),
            );
        }
        let [low, high] = data.crop_scale;
        if !(low > 0.0 && low <= high && high <= 1.0) {
            return invalid(
                "data.crop_scale",
                format!("needs 0 < low ≤ high ≤ 1, got {:?}", data.crop_scale),
            );
        }
        let [low, high] = data.crop_ratio;
        if !(low > 0.0 && low <= high && high.is_finite()) {
            return invalid(
                "data.crop_ratio",
                format!("needs 0 < low ≤ high, got {:?}", data.crop_ratio),
            );
        }
        if data
            .color_jitter
            .iter()
            .any(|strength| !(0.0..=1.0).contains(strength))
        {
            return invalid(
                "data.color_jitter",
                format!(
                    "each strength must be in 0..=1, got {:?}",
                    data.color_jitter
                ),
            );
        }
        if !(data.eval_crop > 0.0 && data.eval_crop <= 1.0) {
            return invalid(
                "data.eval_crop",
                format!("must be in (0, 1], got {}", data.eval_crop),
            );
        }
        // The default pairs name the seed's classes: checked only where a flip can happen, so a
        // dataset with other classes needs no setting until it turns flipping on.
        if data.hflip_prob > 0.0 {
            for pair in &data.flip_label_pairs {
                if let Some(name) = pair.iter().find(|name| !data.class_names.contains(name)) {
                    return invalid(
                        "data.flip_label_pairs",
                        format!(
                            "`{name}` is not one of the {} data.class_names; list the pairs of \
                             classes a horizontal flip exchanges (`[]` when none does)",
                            data.class_names.len()
                        ),
                    );
                }
            }
        }
        for pair in &data.flip_view_pairs {
            if let Some(name) = pair
                .iter()
                .find(|name| !crate::KNOWN_VIEWS.contains(&name.as_str()))
            {
                return invalid(
                    "data.flip_view_pairs",
                    format!("`{name}` is not a view; views are {:?}", crate::KNOWN_VIEWS),
                );
            }
        }
        if data.load_kpt
            && data.hflip_prob > 0.0
            && data.flip_joint_pairs.is_empty()
            && self.model.skeleton.flip_pairs().is_none()
        {
            return invalid(
                "data.flip_joint_pairs",
                "a flip must know which joints are left and right: list them (joint numbers of \
                 the keypoint files) for model.skeleton = \"custom\", or set data.hflip_prob = 0"
                    .into(),
            );
        }
        if !(train.weight_decay >= 0.0 && train.weight_decay.is_finite()) {
            return invalid(
                "train.weight_decay",
                format!("must be ≥ 0, got {}", train.weight_decay),
            );
        }
        for (key, value) in [
            ("train.momentum", train.momentum),
            ("train.label_smoothing", train.label_smoothing),
            ("train.warmup_fraction", train.warmup_fraction),
        ] {
            if !(0.0..1.0).contains(&value) {
                return invalid(key, format!("must be in 0..1, got {value}"));
            }
        }
        if train.nesterov && (train.optimizer != OptimizerKind::Sgd || train.momentum == 0.0) {
            return invalid(
                "train.nesterov",
                "Nesterov momentum needs train.optimizer = \"sgd\" and train.momentum > 0".into(),
            );
        }
        if let ClassWeights::Fixed(weights) = &train.class_weights {
            if weights.len() != self.model.model_class_num {
                return invalid(
                    "train.class_weights",
                    format!(
                        "{} weights for {} classes (model.model_class_num); give one per class",
                        weights.len(),
                        self.model.model_class_num
                    ),
                );
            }
            if weights
                .iter()
                .any(|&weight| !(weight >= 0.0 && weight.is_finite()))
            {
                return invalid(
                    "train.class_weights",
                    format!("weights must be finite and ≥ 0, got {weights:?}"),
                );
            }
        }
        if !MONITORABLE_METRICS.contains(&train.monitor.as_str()) {
            return invalid(
                "train.monitor",
                format!(
                    "`{}` is not a logged epoch metric; use one of {:?}",
                    train.monitor, MONITORABLE_METRICS
                ),
            );
        }
        if self.eval.clips == 0 {
            return invalid("eval.clips", "must be at least 1, got 0".into());
        }
        Ok(())
    }
}
