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
use burn::tensor::activation::relu;

use crate::layers::batch_norm::batch_norm_channels;
use crate::layers::conv3d::{VideoConv3d, VideoConv3dConfig};
use crate::layers::stem::StemStep;
use crate::precision::mean_dim_f32;
use crate::recompute::{Activation, SegmentKind};

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
    /// BasicBlocks per stage, as torchvision's ResNets: `None` for an unsupported depth.
    pub fn blocks_per_stage(depth: usize) -> Option<[usize; 4]> {
        match depth {
            10 => Some([1, 1, 1, 1]),
            18 => Some([2, 2, 2, 2]),
            34 => Some([3, 4, 6, 3]),
            _ => None,
        }
    }

    /// Width of the feature vector (the last stage's channels).
    pub fn dim(&self) -> usize {
        8 * self.width
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
        let y = relu(batch_norm_channels(&self.bn1, self.conv1.forward(x)));
        let y = batch_norm_channels(&self.bn2, self.conv2.forward(y));
        relu(y + shortcut)
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

/// Segments before the blocks: the stem's convolution and its BatchNorm + ReLU.
const STEM_STEPS: usize = 2;

impl<B: Backend> Resnet3d<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values as given (torchvision's models expect the caller to
    ///   normalise)
    /// - output: `[n, 8·width]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        let mut x = Activation::Clips(video);
        for index in 0..self.segment_count() {
            x = self.forward_segment(index, x);
        }
        self.finish(x.into_tokens())
    }

    fn blocks(&self) -> impl Iterator<Item = &BasicBlock3d<B>> {
        self.layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
    }

    fn block(&self, index: usize) -> Option<&BasicBlock3d<B>> {
        index
            .checked_sub(STEM_STEPS)
            .and_then(|block| self.blocks().nth(block))
    }

    /// Segments, in order: the two stem steps, one per block, the pooling bridge.
    pub fn segment_count(&self) -> usize {
        STEM_STEPS + self.blocks().count() + 1
    }

    /// What segment `index` is.
    pub fn segment_kind(&self, index: usize) -> SegmentKind {
        match index {
            0 => SegmentKind::StemPerClip,
            1 => SegmentKind::StemBatch,
            _ if self.block(index).is_some() => SegmentKind::Block,
            _ => SegmentKind::Bridge,
        }
    }

    /// The stem step that segment `index` is, if it is one, bound to `input`.
    pub fn stem_step(&self, index: usize, input: Tensor<B, 5>) -> Option<StemStep<'_, B>> {
        match index {
            // Decoded clips are frames-first; the convolution reads them channels-first.
            0 => Some(StemStep::Convolution(
                &self.stem_conv,
                input.swap_dims(1, 2),
            )),
            1 => Some(StemStep::NormRelu(&self.stem_norm, input)),
            _ => None,
        }
    }

    /// Runs segment `index` alone.
    pub fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B> {
        if let Some(step) = self.stem_step(index, input.clone().into_clips()) {
            return Activation::Clips(step.forward());
        }
        let x = input.into_clips();
        if let Some(block) = self.block(index) {
            return Activation::Clips(block.forward(x));
        }
        // Global average pool: [n, c, t, h, w] → [n, 1, c].
        let [n, c, t, h, w] = x.dims();
        Activation::Tokens(mean_dim_f32(x.reshape([n, c, t * h * w]), 2).reshape([n, 1, c]))
    }

    /// `[n, 1, dim]` → `[n, dim]`.
    pub fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, _, dim] = tokens.dims();
        tokens.reshape([n, dim])
    }
}
