//! The backbones: per-clip RGB encoders (the seed's video transformer, ViViT, a 3-D ResNet,
//! VideoMamba) and keypoint encoders (a transformer over frames, ST-GCN over the skeleton, Mamba
//! over frames). Each is a chain of
//! segments for `crate::recompute`; [`VideoBackbone`] and [`KeypointBackbone`] dispatch to them.

pub mod keypoint_transformer;
pub mod mamba;
pub mod resnet3d;
pub mod stgcn;
pub mod video_transformer;
pub mod vivit;

use burn::prelude::*;

use crate::layers::encoder::EncoderBlock;
use crate::layers::mamba::MambaBlock;
use crate::layers::stem::StemStep;
use crate::recompute::{Activation, SegmentKind};
use keypoint_transformer::{KeypointEncoder, KeypointEncoderConfig};
use mamba::{KeypointMamba, KeypointMambaConfig, VideoMamba, VideoMambaConfig};
use resnet3d::{Resnet3d, Resnet3dConfig};
use stgcn::{Stgcn, StgcnConfig};
use video_transformer::{VideoTransformer, VideoTransformerConfig};
use vivit::{Vivit, VivitConfig};

/// Configuration of the RGB backbone.
#[derive(Debug, Clone)]
pub enum BackboneConfig {
    /// The seed's conv-stem video transformer.
    Transformer(VideoTransformerConfig),
    /// ViViT with joint space-time attention.
    Vivit(VivitConfig),
    /// torchvision's 3-D ResNet.
    Resnet3d(Resnet3dConfig),
    /// VideoMamba.
    Mamba(VideoMambaConfig),
}

impl BackboneConfig {
    /// Width of the backbone's feature vector.
    pub fn dim(&self) -> usize {
        match self {
            BackboneConfig::Transformer(config) => config.dim,
            BackboneConfig::Vivit(config) => config.dim,
            BackboneConfig::Resnet3d(config) => config.dim(),
            BackboneConfig::Mamba(config) => config.dim(),
        }
    }

    /// Dropout probability of the backbone.
    pub fn dropout(&self) -> f64 {
        match self {
            BackboneConfig::Transformer(config) => config.dropout,
            BackboneConfig::Vivit(config) => config.dropout,
            BackboneConfig::Resnet3d(config) => config.dropout,
            BackboneConfig::Mamba(config) => config.dropout,
        }
    }

    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VideoBackbone<B> {
        match self {
            BackboneConfig::Transformer(config) => VideoBackbone::Transformer(config.init(device)),
            BackboneConfig::Vivit(config) => VideoBackbone::Vivit(config.init(device)),
            BackboneConfig::Resnet3d(config) => VideoBackbone::Resnet3d(config.init(device)),
            BackboneConfig::Mamba(config) => VideoBackbone::Mamba(config.init(device)),
        }
    }
}

/// The RGB backbone: clip `[n, t, 3, h, w]` → feature `[n, dim]`, as a chain of segments.
// One backbone per model, built once: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum VideoBackbone<B: Backend> {
    /// The seed's conv-stem video transformer.
    Transformer(VideoTransformer<B>),
    /// ViViT with joint space-time attention.
    Vivit(Vivit<B>),
    /// torchvision's 3-D ResNet.
    Resnet3d(Resnet3d<B>),
    /// VideoMamba.
    Mamba(VideoMamba<B>),
}

/// Calls `$method` on whichever RGB backbone `$self` holds.
macro_rules! each_video_backbone {
    ($self:expr, $model:ident => $call:expr) => {
        match $self {
            VideoBackbone::Transformer($model) => $call,
            VideoBackbone::Vivit($model) => $call,
            VideoBackbone::Resnet3d($model) => $call,
            VideoBackbone::Mamba($model) => $call,
        }
    };
}

impl<B: Backend> VideoBackbone<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        each_video_backbone!(self, model => model.forward(video))
    }

    pub(crate) fn segment_count(&self) -> usize {
        each_video_backbone!(self, model => model.segment_count())
    }

    pub(crate) fn segment_kind(&self, index: usize) -> SegmentKind {
        each_video_backbone!(self, model => model.segment_kind(index))
    }

    pub(crate) fn encoder_block(&self, index: usize) -> Option<&EncoderBlock<B>> {
        match self {
            VideoBackbone::Transformer(model) => model.encoder_block(index),
            VideoBackbone::Vivit(model) => model.encoder_block(index),
            VideoBackbone::Resnet3d(_) | VideoBackbone::Mamba(_) => None,
        }
    }

    pub(crate) fn mamba_block(&self, index: usize) -> Option<&MambaBlock<B>> {
        match self {
            VideoBackbone::Mamba(model) => model.mamba_block(index),
            _ => None,
        }
    }

    pub(crate) fn stem_step(&self, index: usize, input: Tensor<B, 5>) -> Option<StemStep<'_, B>> {
        match self {
            VideoBackbone::Transformer(model) => model.stem_step(index, input),
            VideoBackbone::Vivit(_) | VideoBackbone::Mamba(_) => None,
            VideoBackbone::Resnet3d(model) => model.stem_step(index, input),
        }
    }

    pub(crate) fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B> {
        each_video_backbone!(self, model => model.forward_segment(index, input))
    }

    pub(crate) fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        each_video_backbone!(self, model => model.finish(tokens))
    }
}

/// Configuration of the keypoint encoder.
#[derive(Debug, Clone)]
pub enum KeypointBackboneConfig {
    /// A transformer over frames (each frame's joints flattened into one token).
    Transformer(KeypointEncoderConfig),
    /// ST-GCN over the skeleton.
    Stgcn(StgcnConfig),
    /// Mamba blocks over frames.
    Mamba(KeypointMambaConfig),
}

impl From<KeypointEncoderConfig> for KeypointBackboneConfig {
    fn from(config: KeypointEncoderConfig) -> Self {
        KeypointBackboneConfig::Transformer(config)
    }
}

impl From<StgcnConfig> for KeypointBackboneConfig {
    fn from(config: StgcnConfig) -> Self {
        KeypointBackboneConfig::Stgcn(config)
    }
}

impl From<KeypointMambaConfig> for KeypointBackboneConfig {
    fn from(config: KeypointMambaConfig) -> Self {
        KeypointBackboneConfig::Mamba(config)
    }
}

impl KeypointBackboneConfig {
    /// Width of the feature vector.
    pub fn dim(&self) -> usize {
        match self {
            KeypointBackboneConfig::Transformer(config) => config.dim,
            KeypointBackboneConfig::Stgcn(config) => config.dim(),
            KeypointBackboneConfig::Mamba(config) => config.dim(),
        }
    }

    /// Joints per frame.
    pub fn joints(&self) -> usize {
        match self {
            KeypointBackboneConfig::Transformer(config) => config.joints,
            KeypointBackboneConfig::Stgcn(config) => config.joints,
            KeypointBackboneConfig::Mamba(config) => config.joints,
        }
    }

    /// Dropout probability.
    pub fn dropout(&self) -> f64 {
        match self {
            KeypointBackboneConfig::Transformer(config) => config.dropout,
            KeypointBackboneConfig::Stgcn(config) => config.dropout,
            KeypointBackboneConfig::Mamba(config) => config.dropout,
        }
    }
}

/// The keypoint encoder in use, borrowed from the model (which keeps each kind in a field of its
/// own, so that weights saved before ST-GCN existed still load).
pub(crate) enum KeypointBackbone<'a, B: Backend> {
    Transformer(&'a KeypointEncoder<B>),
    Stgcn(&'a Stgcn<B>),
    Mamba(&'a KeypointMamba<B>),
}

impl<'a, B: Backend> KeypointBackbone<'a, B> {
    pub(crate) fn segment_count(&self) -> usize {
        match self {
            KeypointBackbone::Transformer(model) => model.segment_count(),
            KeypointBackbone::Stgcn(model) => model.segment_count(),
            KeypointBackbone::Mamba(model) => model.segment_count(),
        }
    }

    pub(crate) fn segment_kind(&self, index: usize) -> SegmentKind {
        match self {
            KeypointBackbone::Transformer(model) => model.segment_kind(index),
            KeypointBackbone::Stgcn(model) => model.segment_kind(index),
            KeypointBackbone::Mamba(model) => model.segment_kind(index),
        }
    }

    pub(crate) fn encoder_block(&self, index: usize) -> Option<&'a EncoderBlock<B>> {
        match *self {
            KeypointBackbone::Transformer(model) => model.encoder_block(index),
            KeypointBackbone::Stgcn(_) | KeypointBackbone::Mamba(_) => None,
        }
    }

    pub(crate) fn mamba_block(&self, index: usize) -> Option<&'a MambaBlock<B>> {
        match *self {
            KeypointBackbone::Mamba(model) => model.mamba_block(index),
            _ => None,
        }
    }

    pub(crate) fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B> {
        match self {
            KeypointBackbone::Transformer(model) => model.forward_segment(index, input),
            KeypointBackbone::Stgcn(model) => model.forward_segment(index, input),
            KeypointBackbone::Mamba(model) => model.forward_segment(index, input),
        }
    }

    pub(crate) fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        match self {
            KeypointBackbone::Transformer(model) => model.finish(tokens),
            KeypointBackbone::Stgcn(model) => model.finish(tokens),
            KeypointBackbone::Mamba(model) => model.finish(tokens),
        }
    }
}
