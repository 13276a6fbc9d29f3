//! `model.*`: the network (backbone, sizes, fusion, recompute, pretrained weights).

use serde::{Deserialize, Serialize};

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
    /// Where activations are recomputed in backward instead of kept: `none`, `encoder`, `stem`,
    /// `all` (the key is `model.checkpoint`, as the seed's users type it; inside the code this
    /// is recompute, "checkpoint" being the saved training state).
    #[serde(rename = "checkpoint")]
    pub recompute: RecomputeMode,
    /// Bits per value of the activations kept for backward outside Burn's autodiff graph (the
    /// convolution stem's inputs, every recomputed segment's input): 32 keeps them as computed;
    /// 16 as bf16; 8, 4 or 2 as block-wise codes with stochastic rounding (unbiased gradients,
    /// ActNN-style). Composes with `model.checkpoint`: recompute decides what is kept, this
    /// how small.
    pub activation_bits: u32,
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
            recompute: RecomputeMode::None,
            activation_bits: 32,
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
    pub fn effective_recompute(&self) -> RecomputeMode {
        if self.use_gradient_checkpointing {
            RecomputeMode::All
        } else {
            self.recompute
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
pub enum RecomputeMode {
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

impl RecomputeMode {
    /// The spelling in config files and overrides.
    pub fn as_str(self) -> &'static str {
        match self {
            RecomputeMode::None => "none",
            RecomputeMode::Encoder => "encoder",
            RecomputeMode::Stem => "stem",
            RecomputeMode::All => "all",
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
