//! The configuration schema: every key, its type, its default and its meaning.
//!
//! Key names follow the seed system (Hydra/Lightning) so that its scenario commands work verbatim.
//! The doc comment on each field is the user documentation of that key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::controls::{AugmentPreset, ClassWeights, MonitorMode, OptimizerKind, Sampler};
use crate::{Error, Result};

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

/// `data.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Samples (labelled segments) per micro-batch. Lower it, and raise
    /// `train.accumulate_grad_batches`, to cut activation memory at the same effective batch.
    pub batch_size: usize,
    /// Decoder worker threads (0 = decode on the training thread). Each worker holds one sample
    /// in flight, so host memory grows with this number.
    pub num_workers: usize,
    /// Side of the square frames fed to the model, in pixels; ffmpeg scales to it while decoding.
    pub img_size: usize,
    /// Frames sampled uniformly from each labelled segment (the model's `T`).
    pub uniform_temporal_subsample_num: usize,
    /// Longest stretch of a video treated as one chunk; a longer video is cut into chunks and only
    /// the sampled frames of one chunk's segments are decoded at a time.
    pub max_video_frames: usize,
    /// Load and decode RGB frames. `false` spawns no ffmpeg at all.
    pub load_rgb: bool,
    /// Load body keypoints. `false` opens no keypoint file at all.
    pub load_kpt: bool,
    /// Ready micro-batches queued between the decoders and the trainer (bounded channel).
    pub prefetch_depth: usize,
    /// Camera views used, any subset of `front`, `left`, `right`.
    pub views: Vec<String>,
    /// What to do with a bad sample (unreadable video, range past the end, unknown label):
    /// `skip` logs it, counts it and carries on; `error` stops the run.
    pub on_bad_sample: OnBadSample,
    /// A recording that lacks one of several views: `skip` leaves it out (listed by `data
    /// inspect`); `use_present` trains and evaluates it on the views it has, which the mean
    /// fusions (`logit_mean`, `prob_mean`, `feature_mean`) allow: its samples go through the
    /// model in micro-batches of their own view count.
    pub missing_view: MissingView,
    /// Joints kept from each keypoint frame (the seed keeps 52 of 70).
    pub keypoint_indices: Vec<usize>,
    /// Longest time one ffmpeg decode (or one ffprobe of a video) may take before it is killed,
    /// in seconds.
    pub decode_timeout_s: u64,
    /// Timeline label names in class-id order; labels not listed are reported as unknown.
    pub class_names: Vec<String>,
    /// Keep decoded samples in host memory, up to this many MiB, so later epochs do not decode
    /// again. 0 (the default) keeps nothing: host memory stays bounded by the prefetch depth.
    pub cache_decoded_mib: usize,
    /// Augmentation preset for training (validation, `eval` and `predict` never augment):
    /// `none`, `light` (flip, temporal jitter) or `standard` (`light` plus random resized crop and
    /// colour jitter). A preset sets the augmentation keys below; any of them set explicitly (in
    /// a file, the environment or on the command line) wins over the preset.
    pub augment: AugmentPreset,
    /// Probability of flipping a training sample horizontally: frames mirrored by ffmpeg's
    /// `hflip`, labels swapped by `data.flip_label_pairs`, views by `data.flip_view_pairs`,
    /// keypoints mirrored (`data.keypoint_flip_width`, `data.flip_joint_pairs`).
    pub hflip_prob: f64,
    /// Random resized crop: the crop's share of the frame's area is drawn from this range
    /// (torchvision's `scale`); `[1.0, 1.0]` turns cropping off. ffmpeg crops before it scales to
    /// `data.img_size`, in the same decode.
    pub crop_scale: [f64; 2],
    /// Random resized crop: range of the crop's aspect ratio, width / height (torchvision's
    /// `ratio`), drawn log-uniformly.
    pub crop_ratio: [f64; 2],
    /// Colour jitter strengths `[brightness, contrast, saturation]`: each factor is drawn from
    /// `[1 − s, 1 + s]` per sample (the same for all its frames and views), applied to the
    /// decoded u8 frames as torchvision's `adjust_*`. `[0, 0, 0]` turns it off.
    pub color_jitter: [f64; 3],
    /// Draw each sampled frame at a random position within its share of the segment (TSN
    /// segment sampling) instead of the fixed uniform subsample. Training only.
    pub temporal_jitter: bool,
    /// Centre crop for validation, `eval` and `predict`: the crop's side as a share of the
    /// width and height (1.0 = the whole frame, the default).
    pub eval_crop: f64,
    /// Class pairs a horizontal flip exchanges (a `left` gaze seen mirrored is a `right` gaze).
    pub flip_label_pairs: Vec<[String; 2]>,
    /// Camera views a horizontal flip exchanges (the left camera's mirror image is the right's).
    pub flip_view_pairs: Vec<[String; 2]>,
    /// Joint pairs (joint numbers of the keypoint files, as in `data.keypoint_indices`) a flip
    /// exchanges; empty uses the pairs of `model.skeleton` (SAM-3D-body / MHR70 or COCO-17).
    pub flip_joint_pairs: Vec<[usize; 2]>,
    /// A flip maps a keypoint's x to `keypoint_flip_width − x`: 0 for camera-centred 3D
    /// keypoints (SAM-3D-body), the frame width for pixel coordinates, 1 for normalised ones.
    pub keypoint_flip_width: f64,
    /// Order of training samples each epoch: `shuffle` (each sample once) or `balanced` (as many
    /// draws, with replacement, each class equally likely).
    pub sampler: Sampler,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            batch_size: 4,
            num_workers: 2,
            img_size: 224,
            uniform_temporal_subsample_num: 8,
            max_video_frames: 1000,
            load_rgb: true,
            load_kpt: false,
            prefetch_depth: 2,
            views: vec!["front".into(), "left".into(), "right".into()],
            on_bad_sample: OnBadSample::Skip,
            missing_view: MissingView::Skip,
            keypoint_indices: seed_keypoint_indices(),
            decode_timeout_s: 120,
            class_names: seed_class_names(),
            cache_decoded_mib: 0,
            augment: AugmentPreset::None,
            hflip_prob: 0.0,
            crop_scale: [1.0, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            color_jitter: [0.0, 0.0, 0.0],
            temporal_jitter: false,
            eval_crop: 1.0,
            flip_label_pairs: seed_flip_label_pairs(),
            flip_view_pairs: vec![["left".into(), "right".into()]],
            flip_joint_pairs: Vec::new(),
            keypoint_flip_width: 0.0,
            sampler: Sampler::Shuffle,
        }
    }
}

/// The 52 of 70 SAM-3D-body joints the seed's models keep: head 0–4, shoulders 5–6,
/// both hands 21–62, acromions and neck 67–69.
pub fn seed_keypoint_indices() -> Vec<usize> {
    (0..=6).chain(21..=62).chain(67..=69).collect()
}

/// The seed's nine head-direction classes, in class-id order.
pub fn seed_class_names() -> Vec<String> {
    [
        "left",
        "right",
        "down",
        "up",
        "right_up",
        "right_down",
        "left_down",
        "left_up",
        "front",
    ]
    .map(String::from)
    .to_vec()
}

/// The seed's classes a horizontal flip exchanges.
pub fn seed_flip_label_pairs() -> Vec<[String; 2]> {
    [
        ["left", "right"],
        ["left_up", "right_up"],
        ["left_down", "right_down"],
    ]
    .map(|pair| pair.map(String::from))
    .to_vec()
}

/// `data.on_bad_sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadSample {
    /// Log the sample with the file and reason, count it, continue.
    Skip,
    /// Stop with an error naming the file.
    Error,
}

/// `data.missing_view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingView {
    /// Leave the recording out (listed as a problem).
    Skip,
    /// Use the views the recording has (mean fusions only).
    UsePresent,
}

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

impl LrSchedule {
    /// The learning rate for optimizer step `step` (0-based) of `total_steps`.
    pub fn rate(self, peak: f64, step: usize, total_steps: usize) -> f64 {
        match self {
            LrSchedule::Constant => peak,
            LrSchedule::Cosine => {
                let progress = step as f64 / total_steps.max(1) as f64;
                peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
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

impl Serialize for Fold {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Fold::Index(index) => serializer.serialize_u64(*index as u64),
            Fold::All => serializer.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Fold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Index(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("expected a fold index (0, 1, ...) or \"all\""))?
        {
            Raw::Index(index) => Ok(Fold::Index(index as usize)),
            Raw::Text(text) if text == "all" => Ok(Fold::All),
            Raw::Text(text) => text.parse::<usize>().map(Fold::Index).map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected a fold index (0, 1, ...) or \"all\", got \"{text}\""
                ))
            }),
        }
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

impl Serialize for InferenceBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            InferenceBatch::Samples(samples) => serializer.serialize_u64(*samples as u64),
            InferenceBatch::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for InferenceBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Samples(u64),
            Text(String),
        }
        let expected = "expected a number of samples (1, 2, ...) or \"auto\" (data.batch_size)";
        match Raw::deserialize(deserializer).map_err(|_| serde::de::Error::custom(expected))? {
            Raw::Samples(samples) => Ok(InferenceBatch::Samples(samples as usize)),
            Raw::Text(text) if text == "auto" => Ok(InferenceBatch::Auto),
            Raw::Text(text) => text
                .parse::<usize>()
                .map(InferenceBatch::Samples)
                .map_err(|_| serde::de::Error::custom(format!("{expected}, got \"{text}\""))),
        }
    }
}

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

/// `trainer.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// Numeric precision: `32`, `16` / `16-mixed` (fp16 compute, loss scaling), `bf16` /
    /// `bf16-mixed`. Both backends (CPU and CUDA) run all four: activations in 2 bytes, f32
    /// master weights, Adam state, norms and loss.
    pub precision: Precision,
    /// Where to train: `auto` (CUDA when built with it and a GPU is present, else CPU), `cpu`, `cuda`.
    pub accelerator: Accelerator,
    /// Train in 32-bit instead of failing when half precision is asked for on a backend without it
    /// (both backends of this build have it, so today this never changes a run).
    pub precision_fallback: bool,
    /// Threads for tensor compute on the CPU backend (0 = every core; under mpiexec/srun, the
    /// machine's cores divided among the ranks it runs). Decoder workers and their
    /// ffmpeg processes run beside them; set it to leave cores to decoding. Applies once per
    /// process: the first run of a process sizes the pool.
    pub compute_threads: usize,
    /// How much the host allocator's reuse pool may add to the peak RSS, in percent of the peak
    /// of live tensor-sized blocks. Freed blocks of 1 MiB or more are kept and reused instead of
    /// being mapped, zeroed and unmapped by the kernel on every op (which took a third of a CPU
    /// step); 0 reuses only what never raises the peak (leanest, slower). Cached bytes are part
    /// of every RSS figure vidtrain prints. Applies to the `vidtrain` binary.
    pub allocator_slack_percent: u32,
    /// Clip gradients to this global L2 norm before each optimizer step (after fp16 loss-scale
    /// unscaling), as Lightning's `gradient_clip_val`; 0 turns clipping off.
    pub gradient_clip_val: f64,
    /// Write TensorBoard event files (`tensorboard/` in the run directory) beside
    /// `metrics.jsonl`: `tensorboard --logdir runs`.
    pub tensorboard: bool,
    /// Data-parallel runs (`mpiexec -n N vidtrain train`): seconds one rank waits in a
    /// collective (gradient all-reduce, weight broadcast, metric gather) for the others before
    /// it ends every rank with an error naming the collective. A dead or hung rank then stops
    /// the run instead of hanging it; raise it when validation or checkpoints take longer.
    pub collective_timeout_s: f64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            precision: Precision::Full,
            accelerator: Accelerator::Auto,
            precision_fallback: false,
            compute_threads: 0,
            allocator_slack_percent: 25,
            gradient_clip_val: 0.0,
            tensorboard: true,
            collective_timeout_s: 600.0,
        }
    }
}

/// `trainer.precision`, accepting the seed's (Lightning's) spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout (`32`, `32-true`).
    Full,
    /// fp16 compute, f32 master weights, dynamic loss scaling (`16`, `16-mixed`).
    Half,
    /// bf16 compute, f32 master weights (`bf16`, `bf16-mixed`).
    BHalf,
}

impl Precision {
    /// The canonical spelling, as written back by `config show`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Full => "32",
            Precision::Half => "16-mixed",
            Precision::BHalf => "bf16-mixed",
        }
    }

    /// Parses every spelling Lightning accepts for these three modes.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "32" | "32-true" => Some(Precision::Full),
            "16" | "16-mixed" => Some(Precision::Half),
            "bf16" | "bf16-mixed" => Some(Precision::BHalf),
            _ => None,
        }
    }

    /// Whether compute runs in a 16-bit float type.
    pub fn is_half(self) -> bool {
        self != Precision::Full
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Precision {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        const EXPECTED: &str = "one of 32, 16, 16-mixed, bf16, bf16-mixed";
        let raw = Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom(format!("expected {EXPECTED}")))?;
        let text = match raw {
            Raw::Number(number) => number.to_string(),
            Raw::Text(text) => text,
        };
        Precision::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("expected {EXPECTED}, got \"{text}\"")))
    }
}

/// `trainer.accelerator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// CUDA when the binary has it and a GPU answers, else the CPU.
    Auto,
    /// The CPU backend (burn-flex: f32, f16 and bf16).
    Cpu,
    /// The CUDA backend; an error if the binary was built without `--features cuda`.
    Cuda,
}

/// `model.*` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture: `transformer` (the seed's conv-stem video transformer), `vivit`, `3dcnn`
    /// (torchvision's 3-D ResNet, `model.resnet_depth`), `stgcn` (ST-GCN on keypoints, with
    /// `input_type = "kpt"`) or `mamba` (VideoMamba; with `input_type = "kpt"`, Mamba over frames).
    pub backbone: Backbone,
    /// Depth of the `3dcnn` backbone: 10, 18 (torchvision's `r3d_18`) or 34.
    pub resnet_depth: usize,
    /// Channels of the `3dcnn` stem and first stage (torchvision: 64; stages double it).
    pub resnet_width: usize,
    /// The keypoint encoder when keypoints are read: `transformer` (over frames), `stgcn` or
    /// `mamba` (over frames). `model.backbone = "stgcn"` implies `stgcn`, and `"mamba"` with
    /// `input_type = "kpt"` implies `mamba`.
    pub keypoint_backbone: KeypointBackboneKind,
    /// Channels of ST-GCN's first blocks (mmaction2: 64; blocks 5 and 8 double it).
    pub stgcn_width: usize,
    /// Token width D of the Mamba backbone (VideoMamba-Ti: 192).
    pub mamba_dim: usize,
    /// Mamba blocks (VideoMamba-Ti: 24).
    pub mamba_layers: usize,
    /// State size N of each channel's selective scan (16).
    pub mamba_state: usize,
    /// Inner width of a Mamba block as a multiple of `mamba_dim` (2).
    pub mamba_expand: usize,
    /// Kernel of a Mamba block's causal depthwise convolution (4).
    pub mamba_conv_kernel: usize,
    /// A backward scan beside the forward one in every block (VideoMamba); `false`: causal Mamba.
    pub mamba_bidirectional: bool,
    /// Steps per chunk of the selective scan: a recomputed block holds one chunk's states at a
    /// time, so smaller chunks lower the peak and add sequential carries.
    pub mamba_chunk: usize,
    /// ST-GCN's skeleton over the joints of `data.keypoint_indices`: `sam3d_body_52` (the seed's
    /// 52 SAM-3D-body joints), `coco17`, or `custom` (`model.skeleton_edges`).
    pub skeleton: SkeletonLayout,
    /// Edges `[a, b]` between joint positions (0-based, in `data.keypoint_indices` order) when
    /// `model.skeleton = "custom"`.
    pub skeleton_edges: Vec<[usize; 2]>,
    /// The centre joint of a custom skeleton (ST-GCN's spatial partition measures from it).
    pub skeleton_center: usize,
    /// A PyTorch state dict (`.pth`/`.pt`) or `.safetensors` file to start from (torchvision's
    /// `r3d_18`, mmaction2's ST-GCN, or vidtrain's own layout); the classifier is re-initialised
    /// when its class count differs. Empty: random initialisation.
    pub pretrained: String,
    /// ViViT tubelet `[frames, height, width]`; the clip's frames and `data.img_size` must be
    /// multiples of it.
    pub tubelet_size: [usize; 3],
    /// Number of classes (the seed's 9 head directions).
    pub model_class_num: usize,
    /// The seed's switch for activation recompute; `true` means `model.checkpoint = "all"`.
    pub use_gradient_checkpointing: bool,
    /// Where activations are recomputed in backward instead of kept: `none`, `encoder`, `stem`, `all`.
    pub checkpoint: CheckpointMode,
    /// Token width D of the transformer (the stem ends with D channels).
    pub transformer_dim: usize,
    /// Transformer encoder layers.
    pub transformer_layers: usize,
    /// Attention heads; must divide `transformer_dim`.
    pub transformer_heads: usize,
    /// Hidden width of each feed-forward block.
    pub transformer_ff_dim: usize,
    /// Dropout probability in the encoder and before the classifier.
    pub transformer_dropout: f64,
    /// Model input: `rgb`, `kpt` or `rgb_kpt`.
    pub input_type: InputType,
    /// How views are fused: `logit_mean`, `prob_mean`, `feature_mean`, `feature_concat`.
    pub fusion_mode: FusionMode,
    /// How RGB and keypoint features are fused when `input_type = "rgb_kpt"`: `concat` or `mean`.
    pub modality_fusion: ModalityFusion,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Transformer,
            resnet_depth: 18,
            resnet_width: 64,
            keypoint_backbone: KeypointBackboneKind::Transformer,
            stgcn_width: 64,
            mamba_dim: 192,
            mamba_layers: 24,
            mamba_state: 16,
            mamba_expand: 2,
            mamba_conv_kernel: 4,
            mamba_bidirectional: true,
            mamba_chunk: 16,
            skeleton: SkeletonLayout::Sam3dBody52,
            skeleton_edges: Vec::new(),
            skeleton_center: 0,
            pretrained: String::new(),
            tubelet_size: [2, 16, 16],
            model_class_num: 9,
            use_gradient_checkpointing: false,
            checkpoint: CheckpointMode::None,
            transformer_dim: 256,
            transformer_layers: 4,
            transformer_heads: 4,
            transformer_ff_dim: 1024,
            transformer_dropout: 0.1,
            input_type: InputType::Rgb,
            fusion_mode: FusionMode::LogitMean,
            modality_fusion: ModalityFusion::Concat,
        }
    }
}

impl ModelConfig {
    /// The recompute mode in effect: the seed's boolean switch turns everything on.
    pub fn effective_checkpoint(&self) -> CheckpointMode {
        if self.use_gradient_checkpointing {
            CheckpointMode::All
        } else {
            self.checkpoint
        }
    }

    /// The keypoint encoder in effect.
    pub fn keypoint_encoder(&self) -> KeypointBackboneKind {
        match (self.backbone, self.input_type) {
            (Backbone::Stgcn, _) => KeypointBackboneKind::Stgcn,
            (Backbone::Mamba, InputType::Kpt) => KeypointBackboneKind::Mamba,
            _ => self.keypoint_backbone,
        }
    }

    /// Spatial downsampling of the backbone: `img_size` must be a multiple of it.
    pub fn spatial_stride(&self) -> usize {
        match self.backbone {
            // Padded convolutions take any size (as torchvision's); ST-GCN reads no frames.
            Backbone::Resnet3d | Backbone::Stgcn => 1,
            Backbone::Mamba if self.input_type == InputType::Kpt => 1,
            // Two stride-2 convolutions in the stem.
            Backbone::Transformer => 4,
            // Square frames: a multiple of both the tubelet's height and width.
            Backbone::Vivit | Backbone::Mamba => {
                let [_, height, width] = self.tubelet_size;
                let gcd = |mut a: usize, mut b: usize| {
                    while b != 0 {
                        (a, b) = (b, a % b);
                    }
                    a
                };
                height / gcd(height, width).max(1) * width
            }
        }
    }
}

/// `model.backbone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// Conv3d stem → spatial mean → sinusoidal positions → transformer encoder → mean pool.
    Transformer,
    /// Tubelet embedding (`model.tubelet_size`) → learned positions → joint space-time
    /// transformer encoder → mean pool.
    Vivit,
    /// torchvision's 3-D ResNet (`r3d_18` at the defaults).
    #[serde(rename = "3dcnn", alias = "resnet3d")]
    Resnet3d,
    /// ST-GCN on the keypoints (`input_type = "kpt"`).
    Stgcn,
    /// VideoMamba: tubelet embedding → spatial and temporal positions → bidirectional Mamba
    /// blocks → mean pool; with `input_type = "kpt"`, Mamba blocks over frames.
    Mamba,
}

/// `model.keypoint_backbone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeypointBackboneKind {
    /// Each frame's joints flattened into a token → transformer encoder over time.
    Transformer,
    /// ST-GCN over the skeleton (`model.skeleton`).
    Stgcn,
    /// Each frame's joints flattened into a token → bidirectional Mamba blocks over time.
    Mamba,
}

/// `model.skeleton`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkeletonLayout {
    /// The seed's 52 SAM-3D-body joints (`data.keypoint_indices` at its default).
    #[serde(rename = "sam3d_body_52")]
    Sam3dBody52,
    /// COCO's 17 body keypoints.
    #[serde(rename = "coco17")]
    Coco17,
    /// `model.skeleton_edges` and `model.skeleton_center`.
    Custom,
}

impl SkeletonLayout {
    /// Joints of a named layout (`None` for `custom`).
    pub fn joints(self) -> Option<usize> {
        match self {
            SkeletonLayout::Sam3dBody52 => Some(52),
            SkeletonLayout::Coco17 => Some(17),
            SkeletonLayout::Custom => None,
        }
    }
}

/// `model.checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointMode {
    /// Keep every activation (fastest, most memory).
    None,
    /// Recompute the backbone's blocks (transformer encoder blocks, 3-D ResNet BasicBlocks,
    /// ST-GCN blocks).
    Encoder,
    /// Recompute the convolution stem stages.
    Stem,
    /// Recompute both.
    All,
}

impl CheckpointMode {
    /// The spelling in config files and overrides.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointMode::None => "none",
            CheckpointMode::Encoder => "encoder",
            CheckpointMode::Stem => "stem",
            CheckpointMode::All => "all",
        }
    }
}

/// `model.input_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    /// RGB frames only.
    Rgb,
    /// Body keypoints only.
    Kpt,
    /// Both, fused per `model.modality_fusion`.
    RgbKpt,
}

/// `model.fusion_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionMode {
    /// Mean of per-view logits.
    LogitMean,
    /// Mean of per-view class probabilities.
    ProbMean,
    /// Mean of per-view features, one classifier.
    FeatureMean,
    /// Concatenated per-view features, one classifier.
    FeatureConcat,
}

/// `model.modality_fusion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModalityFusion {
    /// Concatenate RGB and keypoint features.
    Concat,
    /// Average RGB and keypoint features.
    Mean,
}

/// `paths.*` keys. Relative dataset paths are resolved against `paths.root_path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Base folder of the dataset; relative `annotation_path`, `video_path` and `keypoint_path`
    /// are taken inside it. Empty means the current directory.
    pub root_path: PathBuf,
    /// Label Studio video-timeline JSON export. Empty means "no dataset configured": `vidtrain
    /// train` then generates and trains the bundled demo.
    pub annotation_path: PathBuf,
    /// Folder with one sub-folder per view (`front/`, `left/`, `right/`) holding the videos.
    pub video_path: PathBuf,
    /// Folder with one sub-folder per view holding `<video stem>.npy` keypoint arrays.
    pub keypoint_path: PathBuf,
    /// Optional CSV (`video,view,path[,person,env,keypoints]`) or JSON list naming each
    /// annotated video's file per view, for layouts other than `<video_path>/<view>/<name>`.
    /// Empty: no manifest.
    pub manifest: PathBuf,
    /// Where run directories are written (`<run_dir>/<experiment>/<timestamp>/`).
    pub run_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            root_path: PathBuf::new(),
            annotation_path: PathBuf::new(),
            video_path: PathBuf::new(),
            keypoint_path: PathBuf::new(),
            manifest: PathBuf::new(),
            run_dir: PathBuf::from("runs"),
        }
    }
}

impl PathsConfig {
    /// Whether a dataset is configured (an annotation file is named).
    pub fn has_dataset(&self) -> bool {
        !self.annotation_path.as_os_str().is_empty()
    }

    /// `path` resolved against `root_path` when relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || self.root_path.as_os_str().is_empty() {
            path.to_path_buf()
        } else {
            self.root_path.join(path)
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

    /// Rejects impossible or contradictory settings before any work starts.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &str, message: String| {
            Err(Error::Invalid {
                key: key.to_string(),
                message,
            })
        };
        let data = &self.data;
        if !data.load_rgb && !data.load_kpt {
            return invalid(
                "data.load_rgb",
                "both data.load_rgb and data.load_kpt are false: nothing would be loaded; \
                 set one of them to true"
                    .into(),
            );
        }
        for (key, value) in [
            ("data.batch_size", data.batch_size),
            ("data.img_size", data.img_size),
            (
                "data.uniform_temporal_subsample_num",
                data.uniform_temporal_subsample_num,
            ),
            ("data.max_video_frames", data.max_video_frames),
            ("data.prefetch_depth", data.prefetch_depth),
            (
                "train.accumulate_grad_batches",
                self.train.accumulate_grad_batches,
            ),
            ("train.max_epochs", self.train.max_epochs),
            ("train.k_folds", self.train.k_folds),
            (
                "train.video_batch_size",
                match self.train.video_batch_size {
                    InferenceBatch::Samples(samples) => samples,
                    InferenceBatch::Auto => 1,
                },
            ),
            ("model.model_class_num", self.model.model_class_num),
            ("model.transformer_dim", self.model.transformer_dim),
            ("model.transformer_heads", self.model.transformer_heads),
            ("model.transformer_ff_dim", self.model.transformer_ff_dim),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1, got 0".into());
            }
        }
        self.validate_backbones()?;
        self.validate_training_controls()?;
        if self.model.tubelet_size.contains(&0) {
            return invalid(
                "model.tubelet_size",
                format!(
                    "every size must be at least 1, got {:?}",
                    self.model.tubelet_size
                ),
            );
        }
        let tubelet_frames = self.model.tubelet_size[0];
        let tubelets = self.model.backbone == Backbone::Vivit
            || (self.model.backbone == Backbone::Mamba && self.model.input_type != InputType::Kpt);
        if tubelets
            && !data
                .uniform_temporal_subsample_num
                .is_multiple_of(tubelet_frames)
        {
            return invalid(
                "data.uniform_temporal_subsample_num",
                format!(
                    "must be a multiple of model.tubelet_size[0] = {tubelet_frames} for the {:?} \
                     backbone, got {}",
                    self.model.backbone, data.uniform_temporal_subsample_num
                ),
            );
        }
        let stride = self.model.spatial_stride();
        if !data.img_size.is_multiple_of(stride) {
            let lower = (data.img_size / stride).max(1) * stride;
            return invalid(
                "data.img_size",
                format!(
                    "must be a multiple of {stride} (the {:?} backbone's spatial stride), got {}; \
                     try {lower}",
                    self.model.backbone, data.img_size
                ),
            );
        }
        if data.uniform_temporal_subsample_num > data.max_video_frames {
            return invalid(
                "data.uniform_temporal_subsample_num",
                format!(
                    "samples {} frames per segment but data.max_video_frames is {}",
                    data.uniform_temporal_subsample_num, data.max_video_frames
                ),
            );
        }
        if !self
            .model
            .transformer_dim
            .is_multiple_of(self.model.transformer_heads)
        {
            return invalid(
                "model.transformer_heads",
                format!(
                    "must divide model.transformer_dim ({}), got {}",
                    self.model.transformer_dim, self.model.transformer_heads
                ),
            );
        }
        if !self.model.transformer_dim.is_multiple_of(2) {
            return invalid(
                "model.transformer_dim",
                format!(
                    "must be even (the stem's first stage has dim/2 channels), got {}",
                    self.model.transformer_dim
                ),
            );
        }
        if !(0.0..1.0).contains(&self.model.transformer_dropout) {
            return invalid(
                "model.transformer_dropout",
                format!("must be in [0, 1), got {}", self.model.transformer_dropout),
            );
        }
        let clip = self.trainer.gradient_clip_val;
        if !(clip >= 0.0 && clip.is_finite()) {
            return invalid(
                "trainer.gradient_clip_val",
                format!("must be 0 (off) or a positive norm, got {clip}"),
            );
        }
        if self.data.decode_timeout_s == 0 {
            return invalid(
                "data.decode_timeout_s",
                "must be at least 1 second: every decode and every probe would time out at once"
                    .to_string(),
            );
        }
        if self.trainer.allocator_slack_percent > 1000 {
            return invalid(
                "trainer.allocator_slack_percent",
                format!(
                    "must be at most 1000 (percent of the peak of live blocks), got {}; 0 never \
                     raises the peak",
                    self.trainer.allocator_slack_percent
                ),
            );
        }
        let timeout = self.trainer.collective_timeout_s;
        if !(timeout > 0.0 && timeout.is_finite()) {
            return invalid(
                "trainer.collective_timeout_s",
                format!("must be a positive number of seconds, got {timeout}"),
            );
        }
        if !(self.train.lr > 0.0 && self.train.lr.is_finite()) {
            return invalid(
                "train.lr",
                format!("must be a positive number, got {}", self.train.lr),
            );
        }
        if self.train.max_steps < -1 || self.train.max_steps == 0 {
            return invalid(
                "train.max_steps",
                format!(
                    "must be -1 (no limit) or at least 1, got {}",
                    self.train.max_steps
                ),
            );
        }
        if self.train.k_folds < 2 {
            return invalid(
                "train.k_folds",
                format!(
                    "must be at least 2 (folds split persons into training and validation), got {}",
                    self.train.k_folds
                ),
            );
        }
        if let Fold::Index(fold) = self.train.fold
            && fold >= self.train.k_folds
        {
            return invalid(
                "train.fold",
                format!(
                    "fold {fold} does not exist with train.k_folds = {}; use 0..{} or \"all\"",
                    self.train.k_folds,
                    self.train.k_folds - 1
                ),
            );
        }
        if data.class_names.len() != self.model.model_class_num {
            return invalid(
                "model.model_class_num",
                format!(
                    "is {} but data.class_names lists {} classes",
                    self.model.model_class_num,
                    data.class_names.len()
                ),
            );
        }
        if data.missing_view == MissingView::UsePresent
            && self.model.fusion_mode == FusionMode::FeatureConcat
        {
            return invalid(
                "data.missing_view",
                "is \"use_present\", but model.fusion_mode = \"feature_concat\" needs every \
                 view (its classifier takes one feature per view); use a mean fusion \
                 (logit_mean, prob_mean, feature_mean) or data.missing_view = \"skip\""
                    .into(),
            );
        }
        if data.views.is_empty() {
            return invalid(
                "data.views",
                "is empty; list at least one of front, left, right".into(),
            );
        }
        for view in data
            .views
            .iter()
            .chain(std::iter::once(&self.train.view_name))
        {
            if !KNOWN_VIEWS.contains(&view.as_str()) {
                let key = if view == &self.train.view_name {
                    "train.view_name"
                } else {
                    "data.views"
                };
                return invalid(
                    key,
                    format!("unknown view \"{view}\"; expected one of front, left, right"),
                );
            }
        }
        match self.model.input_type {
            InputType::Rgb if !data.load_rgb => {
                return invalid(
                    "model.input_type",
                    "is \"rgb\" but data.load_rgb = false; load RGB or use input_type = \"kpt\""
                        .into(),
                );
            }
            InputType::Kpt if !data.load_kpt => {
                return invalid(
                    "model.input_type",
                    "is \"kpt\" but data.load_kpt = false; set data.load_kpt = true".into(),
                );
            }
            InputType::RgbKpt if !(data.load_rgb && data.load_kpt) => {
                return invalid(
                    "model.input_type",
                    "is \"rgb_kpt\" but data.load_rgb or data.load_kpt is false".into(),
                );
            }
            InputType::Kpt | InputType::RgbKpt if data.keypoint_indices.is_empty() => {
                return invalid(
                    "data.keypoint_indices",
                    "is empty but the model reads keypoints; list the joints to keep".into(),
                );
            }
            InputType::Rgb | InputType::Kpt | InputType::RgbKpt => {}
        }
        Ok(())
    }

    /// The 3-D ResNet's depth and ST-GCN's input and skeleton.
    fn validate_backbones(&self) -> Result<()> {
        let invalid = |key: &str, message: String| {
            Err(Error::Invalid {
                key: key.to_string(),
                message,
            })
        };
        let model = &self.model;
        if model.backbone == Backbone::Resnet3d && ![10, 18, 34].contains(&model.resnet_depth) {
            return invalid(
                "model.resnet_depth",
                format!("must be 10, 18 or 34, got {}", model.resnet_depth),
            );
        }
        for (key, value) in [
            ("model.resnet_width", model.resnet_width),
            ("model.stgcn_width", model.stgcn_width),
            ("model.mamba_dim", model.mamba_dim),
            ("model.mamba_state", model.mamba_state),
            ("model.mamba_expand", model.mamba_expand),
            ("model.mamba_conv_kernel", model.mamba_conv_kernel),
            ("model.mamba_chunk", model.mamba_chunk),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1, got 0".into());
            }
        }
        if model.backbone == Backbone::Stgcn && model.input_type != InputType::Kpt {
            return invalid(
                "model.backbone",
                format!(
                    "stgcn reads keypoints only, but model.input_type is {:?}; set \
                     model.input_type = \"kpt\", or keep an RGB backbone and set \
                     model.keypoint_backbone = \"stgcn\"",
                    model.input_type
                ),
            );
        }
        if model.input_type == InputType::RgbKpt && model.modality_fusion == ModalityFusion::Mean {
            let rgb = match model.backbone {
                Backbone::Resnet3d => 8 * model.resnet_width,
                Backbone::Mamba => model.mamba_dim,
                _ => model.transformer_dim,
            };
            let keypoints = match model.keypoint_encoder() {
                KeypointBackboneKind::Stgcn => 4 * model.stgcn_width,
                KeypointBackboneKind::Transformer => model.transformer_dim,
                KeypointBackboneKind::Mamba => model.mamba_dim,
            };
            if rgb != keypoints {
                return invalid(
                    "model.modality_fusion",
                    format!(
                        "\"mean\" averages the RGB and keypoint features, but they are {rgb} and \
                         {keypoints} wide; use \"concat\", or match the widths \
                         (3dcnn: 8 × model.resnet_width, stgcn: 4 × model.stgcn_width, mamba: model.mamba_dim)"
                    ),
                );
            }
        }
        if model.input_type == InputType::Rgb
            || model.keypoint_encoder() != KeypointBackboneKind::Stgcn
        {
            return Ok(());
        }
        let joints = self.data.keypoint_indices.len();
        match model.skeleton.joints() {
            Some(layout) if layout != joints => invalid(
                "model.skeleton",
                format!(
                    "{:?} has {layout} joints but data.keypoint_indices keeps {joints}; list \
                     {layout} joints there, or describe the skeleton with model.skeleton = \
                     \"custom\" and model.skeleton_edges",
                    model.skeleton
                ),
            ),
            Some(_) => Ok(()),
            None => {
                if model.skeleton_edges.is_empty() {
                    return invalid(
                        "model.skeleton_edges",
                        "is empty but model.skeleton = \"custom\"; list the edges as [a, b] \
                         pairs of joint positions"
                            .into(),
                    );
                }
                if model.skeleton_center >= joints {
                    return invalid(
                        "model.skeleton_center",
                        format!("is {} but there are {joints} joints", model.skeleton_center),
                    );
                }
                match model
                    .skeleton_edges
                    .iter()
                    .find(|edge| edge.iter().any(|&joint| joint >= joints))
                {
                    Some(edge) => invalid(
                        "model.skeleton_edges",
                        format!(
                            "edge {edge:?} names a joint outside 0..{joints} (positions in \
                             data.keypoint_indices)"
                        ),
                    ),
                    None => Ok(()),
                }
            }
        }
    }

    /// The resolved config as TOML, as saved in the run directory and printed by `config show`.
    pub fn to_toml(&self) -> String {
        // Serialising a plain struct of strings, numbers and lists cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# not serialisable: {error}"))
    }
}
