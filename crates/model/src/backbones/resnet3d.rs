//! The 3-D ResNet (R3D) family exactly as torchvision's `r3d_18` builds it
//! (`torchvision.models.video.resnet`): stem Conv3d 3→w (3×7×7, stride 1×2×2, padding 1×3×3, no
//! bias) + BatchNorm + ReLU; four stages of BasicBlocks (w, 2w, 4w, 8w channels; 3×3×3
//! convolutions without bias; the first block of stages 2–4 has stride 2 in time and space and a
//! 1×1×1 convolution + BatchNorm on its shortcut); global average pool. torchvision's `fc` is
//! the model's shared classifier. Depth 10, 18 or 34 picks the blocks per stage; w = 64 is
//! torchvision's width.
//!
//! Field names follow torchvision's state dict up to a fixed renaming (`crate::pretrained`):
//! `stem.0` → `stem_conv`, `layer2.0.conv1.0` → `layer2.0.conv1`, `conv1.1` → `bn1`, …
//!
//! As a chain: the stem's convolution and BatchNorm + ReLU are stem steps differentiated by hand
//! (like the seed stem's), each BasicBlock is one block segment (recomputed by
//! `model.checkpoint = encoder | all`), and the pool is a bridge to `[n, 1, 8w]` tokens.

use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;

use crate::chain::{
    Activation, BlockChain, ChainBlock, ChainConfig, SegmentChain, SegmentKind, pooled_features,
};
use crate::layers::batch_norm::{batch_norm_channels, batch_norm_relu_channels};
use crate::layers::conv3d::{VideoConv3d, VideoConv3dConfig};
use crate::layers::relu::relu_block_output;
use crate::layers::stem::StemLayer;
use crate::precision::mean_dim_f32;
use crate::pytorch_names::PytorchNames;
use crate::summary::{InputShape, LayerRole, LayerSummary, rows};

/// torchvision's `VideoResNet` names (`stem.0`, `layer2.0.conv1.0`, `downsample.1`, `fc`).
pub(crate) const PYTORCH_NAMES: PytorchNames = PytorchNames {
    import: &[&[
        (r"^stem\.0\.", "backbone.stem_conv."),
        (r"^stem\.1\.", "backbone.stem_norm."),
        (r"^(layer[1-4]\.\d+)\.conv1\.0\.", "backbone.$1.conv1."),
        (r"^(layer[1-4]\.\d+)\.conv1\.1\.", "backbone.$1.bn1."),
        (r"^(layer[1-4]\.\d+)\.conv2\.0\.", "backbone.$1.conv2."),
        (r"^(layer[1-4]\.\d+)\.conv2\.1\.", "backbone.$1.bn2."),
        (
            r"^(layer[1-4]\.\d+)\.downsample\.0\.",
            "backbone.$1.downsample.conv.",
        ),
        (
            r"^(layer[1-4]\.\d+)\.downsample\.1\.",
            "backbone.$1.downsample.norm.",
        ),
        (r"^fc\.", "head."),
    ]],
    export: &[&[
        (r"^backbone\.stem_conv\.", "stem.0."),
        (r"^backbone\.stem_norm\.", "stem.1."),
        (r"^backbone\.(layer[1-4]\.\d+)\.conv1\.", "$1.conv1.0."),
        (r"^backbone\.(layer[1-4]\.\d+)\.bn1\.", "$1.conv1.1."),
        (r"^backbone\.(layer[1-4]\.\d+)\.conv2\.", "$1.conv2.0."),
        (r"^backbone\.(layer[1-4]\.\d+)\.bn2\.", "$1.conv2.1."),
        (
            r"^backbone\.(layer[1-4]\.\d+)\.downsample\.conv\.",
            "$1.downsample.0.",
        ),
        (
            r"^backbone\.(layer[1-4]\.\d+)\.downsample\.norm\.",
            "$1.downsample.1.",
        ),
        (r"^head\.", "fc."),
    ]],
};

/// Configuration of a [`Resnet3d`].
#[derive(Config, Debug)]
pub struct Resnet3dConfig {
    /// 10, 18 or 34.
    pub depth: usize,
    /// Channels of the stem and the first stage (torchvision: 64).
    pub width: usize,
    /// Dropout before the classifier (torchvision's R3D has none: 0).
    pub dropout: f64,
}

impl Resnet3dConfig {
    /// The R3D `model.resnet_depth` and `model.resnet_width` describe.
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            model.resnet_depth,
            model.resnet_width,
            model.transformer_dropout,
        )
    }

    /// BasicBlocks per stage, as torchvision's ResNets: `None` for an unsupported depth.
    pub fn blocks_per_stage(depth: usize) -> Option<[usize; 4]> {
        match depth {
            10 => Some([1, 1, 1, 1]),
            18 => Some([2, 2, 2, 2]),
            34 => Some([3, 4, 6, 3]),
            _ => None,
        }
    }

    /// Every block as `(stage, index in stage, channels in, channels out, stride)`.
    pub fn blocks(&self) -> Vec<(usize, usize, usize, usize, usize)> {
        let counts = Self::blocks_per_stage(self.depth)
            .expect("model.resnet_depth is checked by config validation");
        let mut blocks = Vec::new();
        let mut channels_in = self.width;
        for (stage, count) in counts.into_iter().enumerate() {
            let channels_out = self.width << stage;
            for index in 0..count {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                blocks.push((stage, index, channels_in, channels_out, stride));
                channels_in = channels_out;
            }
        }
        blocks
    }

    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Resnet3d<B> {
        let mut stages: [Vec<BasicBlock3d<B>>; 4] = Default::default();
        for (stage, _, channels_in, channels_out, stride) in self.blocks() {
            stages[stage].push(BasicBlock3d::new(channels_in, channels_out, stride, device));
        }
        let [layer1, layer2, layer3, layer4] = stages;
        Resnet3d {
            stem_conv: VideoConv3dConfig::new(3, self.width, [3, 7, 7], [1, 2, 2], [1, 3, 3])
                .with_bias(false)
                .init(device),
            stem_norm: BatchNormConfig::new(self.width).init(device),
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }
}

/// torchvision's `BasicBlock` with `Conv3DSimple`: conv–BN–ReLU–conv–BN, plus the shortcut,
/// then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock3d<B: Backend> {
    conv1: VideoConv3d<B>,
    bn1: BatchNorm<B>,
    conv2: VideoConv3d<B>,
    bn2: BatchNorm<B>,
    downsample: Option<Downsample3d<B>>,
}

/// The shortcut of a block that changes shape: 1×1×1 convolution (no bias) + BatchNorm.
#[derive(Module, Debug)]
pub struct Downsample3d<B: Backend> {
    conv: VideoConv3d<B>,
    norm: BatchNorm<B>,
}

impl<B: Backend> BasicBlock3d<B> {
    fn new(channels_in: usize, channels_out: usize, stride: usize, device: &B::Device) -> Self {
        let conv = |c_in: usize, stride: usize| {
            VideoConv3dConfig::new(c_in, channels_out, [3, 3, 3], [stride; 3], [1, 1, 1])
                .with_bias(false)
                .init(device)
        };
        let changes_shape = stride != 1 || channels_in != channels_out;
        Self {
            conv1: conv(channels_in, stride),
            bn1: BatchNormConfig::new(channels_out).init(device),
            conv2: conv(channels_out, 1),
            bn2: BatchNormConfig::new(channels_out).init(device),
            downsample: changes_shape.then(|| Downsample3d {
                conv: VideoConv3dConfig::new(
                    channels_in,
                    channels_out,
                    [1, 1, 1],
                    [stride; 3],
                    [0, 0, 0],
                )
                .with_bias(false)
                .init(device),
                norm: BatchNormConfig::new(channels_out).init(device),
            }),
        }
    }

    /// # Shapes
    /// - input: `[n, c_in, t, h, w]`
    /// - output: `[n, c_out, t/s, h/s, w/s]` (rounded up)
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let shortcut = match &self.downsample {
            Some(downsample) => {
                batch_norm_channels(&downsample.norm, downsample.conv.forward(x.clone()))
            }
            None => x.clone(),
        };
        let y = batch_norm_relu_channels(&self.bn1, self.conv1.forward(x));
        let y = batch_norm_channels(&self.bn2, self.conv2.forward(y));
        relu_block_output(y, Some(shortcut))
    }
}

/// Clip → feature vector, torchvision's R3D.
#[derive(Module, Debug)]
pub struct Resnet3d<B: Backend> {
    stem_conv: VideoConv3d<B>,
    stem_norm: BatchNorm<B>,
    layer1: Vec<BasicBlock3d<B>>,
    layer2: Vec<BasicBlock3d<B>>,
    layer3: Vec<BasicBlock3d<B>>,
    layer4: Vec<BasicBlock3d<B>>,
}

impl<B: Backend> Resnet3d<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values as given (torchvision's models expect the caller to
    ///   normalise)
    /// - output: `[n, 8·width]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        self.forward_chain(Activation::Clips(video))
    }
}

impl<B: Backend> ChainBlock<B> for BasicBlock3d<B> {
    fn forward_block(&self, input: Activation<B>) -> Activation<B> {
        Activation::Clips(self.forward(input.into_clips()))
    }
}

/// Segments, in order: the two stem steps, one per block, the pooling bridge.
impl<B: Backend> BlockChain<B> for Resnet3d<B> {
    type Block = BasicBlock3d<B>;
    const LEAD: usize = 2;
    const TAIL: usize = 1;

    fn lead_kind(&self, index: usize) -> SegmentKind {
        if index == 0 {
            SegmentKind::StemPerClip
        } else {
            SegmentKind::StemBatch
        }
    }

    fn lead_stem_layer(&self, index: usize) -> Option<StemLayer<'_, B>> {
        match index {
            0 => Some(StemLayer::Convolution(&self.stem_conv)),
            1 => Some(StemLayer::NormRelu(&self.stem_norm)),
            _ => None,
        }
    }

    fn forward_lead(&self, index: usize, input: Activation<B>) -> Activation<B> {
        let layer = self
            .lead_stem_layer(index)
            .expect("both lead segments are stem steps");
        Activation::Clips(layer.bind(index, input.into_clips()).forward())
    }

    fn blocks(&self) -> impl Iterator<Item = &BasicBlock3d<B>> {
        self.layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
    }

    /// Global average pool: `[n, c, t, h, w]` → `[n, 1, c]`.
    fn forward_tail(&self, input: Activation<B>) -> Activation<B> {
        let x = input.into_clips();
        let [n, c, t, h, w] = x.dims();
        Activation::Tokens(mean_dim_f32(x.reshape([n, c, t * h * w]), 2).reshape([n, 1, c]))
    }

    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        pooled_features(tokens)
    }
}

impl ChainConfig for Resnet3dConfig {
    fn architecture_keys(&self) -> Vec<&'static str> {
        vec!["model.resnet_depth", "model.resnet_width"]
    }

    /// The last stage's channels.
    fn dim(&self) -> usize {
        8 * self.width
    }

    fn dropout(&self) -> f64 {
        self.dropout
    }

    fn pytorch_names(&self) -> PytorchNames {
        PYTORCH_NAMES
    }

    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary> {
        let width = self.width;
        let stem_size = rows::conv_size(input.image, 7, 2, 3);
        let mut size = [input.frames, stem_size, stem_size];
        let shape = |channels: usize, [t, h, w]: [usize; 3]| vec![clips, channels, t, h, w];
        let mut summary = vec![
            LayerSummary {
                name: format!("{prefix}.stem_conv"),
                role: LayerRole::Conv3d {
                    taps: 3 * 7 * 7,
                    channels_in: 3,
                    reads_data: true,
                },
                params: 3 * 7 * 7 * 3 * width,
                output_shape: shape(width, size),
                segment: Some(SegmentKind::StemPerClip),
                ..LayerSummary::default()
            },
            LayerSummary {
                name: format!("{prefix}.stem_norm"),
                role: LayerRole::BatchNormRelu,
                params: rows::batch_norm_params(width),
                output_shape: shape(width, size),
                segment: Some(SegmentKind::StemBatch),
                ..LayerSummary::default()
            },
        ];
        for (stage, index, channels_in, channels_out, stride) in self.blocks() {
            size = size.map(|axis| rows::conv_size(axis, 3, stride, 1));
            let downsample = stride != 1 || channels_in != channels_out;
            let shortcut = if downsample {
                channels_in * channels_out + rows::batch_norm_params(channels_out)
            } else {
                0
            };
            summary.push(LayerSummary {
                name: format!("{prefix}.layer{}.{index}", stage + 1),
                role: LayerRole::ResidualBlock { downsample },
                params: 27 * channels_in * channels_out
                    + 27 * channels_out * channels_out
                    + 2 * rows::batch_norm_params(channels_out)
                    + shortcut,
                output_shape: shape(channels_out, size),
                segment: Some(SegmentKind::Block),
                ..LayerSummary::default()
            });
        }
        summary.extend(rows::pool_and_features(prefix, clips, self.dim()));
        summary
    }
}
