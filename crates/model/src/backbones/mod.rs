//! The backbones: per-clip RGB encoders (the seed's video transformer, ViViT, a 3-D ResNet,
//! VideoMamba) and keypoint encoders (a transformer over frames, ST-GCN over the skeleton, Mamba
//! over frames). Each implements the chain protocol of `crate::chain` in its own file; the enums
//! here hold whichever is configured and hand it out as a `dyn SegmentChain` / `dyn ChainConfig`.

pub mod keypoint_transformer;
pub mod mamba;
pub mod resnet3d;
pub mod stgcn;
pub mod video_transformer;
pub mod vivit;

use burn::prelude::*;
use vidtrain_config::{Backbone, Config, KeypointBackboneKind};

use crate::chain::{Activation, ChainConfig, SegmentChain};
use keypoint_transformer::KeypointEncoderConfig;
use mamba::{KeypointMambaConfig, VideoMamba, VideoMambaConfig};
use resnet3d::{Resnet3d, Resnet3dConfig};
use stgcn::StgcnConfig;
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
    /// The RGB backbone `model.backbone` names (`None` for ST-GCN, which reads keypoints only:
    /// config validation insists on `model.input_type = "kpt"` with it).
    pub fn from_vidtrain(config: &Config) -> Option<Self> {
        Some(match config.model.backbone {
            Backbone::Transformer => {
                Self::Transformer(VideoTransformerConfig::from_vidtrain(config))
            }
            Backbone::Vivit => Self::Vivit(VivitConfig::from_vidtrain(config)),
            Backbone::Resnet3d => Self::Resnet3d(Resnet3dConfig::from_vidtrain(config)),
            Backbone::Mamba => Self::Mamba(VideoMambaConfig::from_vidtrain(config)),
            Backbone::Stgcn => return None,
        })
    }

    /// The configuration as the chain protocol sees it.
    pub fn as_chain(&self) -> &dyn ChainConfig {
        match self {
            BackboneConfig::Transformer(config) => config,
            BackboneConfig::Vivit(config) => config,
            BackboneConfig::Resnet3d(config) => config,
            BackboneConfig::Mamba(config) => config,
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

impl<B: Backend> VideoBackbone<B> {
    /// The backbone as a chain of segments.
    pub fn as_chain(&self) -> &dyn SegmentChain<B> {
        match self {
            VideoBackbone::Transformer(model) => model,
            VideoBackbone::Vivit(model) => model,
            VideoBackbone::Resnet3d(model) => model,
            VideoBackbone::Mamba(model) => model,
        }
    }

    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        self.as_chain().forward_chain(Activation::Clips(video))
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
    /// The keypoint encoder in effect (`model.keypoint_backbone`, or ST-GCN when it is
    /// `model.backbone`).
    pub fn from_vidtrain(config: &Config) -> Self {
        match config.model.keypoint_encoder() {
            KeypointBackboneKind::Transformer => {
                Self::Transformer(KeypointEncoderConfig::from_vidtrain(config))
            }
            KeypointBackboneKind::Stgcn => Self::Stgcn(StgcnConfig::from_vidtrain(config)),
            KeypointBackboneKind::Mamba => Self::Mamba(KeypointMambaConfig::from_vidtrain(config)),
        }
    }

    /// The configuration as the chain protocol sees it.
    pub fn as_chain(&self) -> &dyn ChainConfig {
        match self {
            KeypointBackboneConfig::Transformer(config) => config,
            KeypointBackboneConfig::Stgcn(config) => config,
            KeypointBackboneConfig::Mamba(config) => config,
        }
    }
}
