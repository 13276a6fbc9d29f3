//! The backbones: per-clip RGB encoders (the seed's video transformer, ViViT, a 3-D ResNet,
//! VideoMamba) and keypoint encoders (a transformer over frames, ST-GCN over the skeleton, Mamba
//! over frames). Each implements the chain protocol of `crate::chain` in its own file; the enums
//! here hold whichever is configured and hand it out as a `dyn SegmentChain` / `dyn ChainConfig`.

// One backbone per model, built once: boxing the larger variant of `VideoBackbone` (and of the
// record enum its derive generates) would buy nothing.
#![allow(clippy::large_enum_variant)]

pub mod frame_tokens;
pub mod keypoint_transformer;
pub mod mamba;
pub mod resnet3d;
pub mod stgcn;
pub mod video_transformer;
pub mod vivit;

use burn::prelude::*;
use vidtrain_config::{Backbone, Config, KeypointBackboneKind};

use crate::ActionModel;
use crate::chain::{Activation, ChainConfig, SegmentChain};
use keypoint_transformer::KeypointEncoderConfig;
use mamba::{KeypointMambaConfig, VideoMamba, VideoMambaConfig};
use resnet3d::{Resnet3d, Resnet3dConfig};
use stgcn::StgcnConfig;
use video_transformer::{VideoTransformer, VideoTransformerConfig};
use vivit::{Vivit, VivitConfig};

/// Generates everything that dispatches over the RGB backbones from one line per backbone
/// (`model.backbone` value => variant(config type, module type)): the configuration enum with its
/// `from_vidtrain`, `as_chain` and `init`, and the module enum with its `as_chain`. A new RGB
/// backbone is its file plus one line in the list below.
macro_rules! rgb_backbones {
    (
        rgb: [ $( $(#[$doc:meta])* $value:ident => $variant:ident($config:ident, $module:ident), )* ]
        keypoints_only: [ $( $keypoints_only:ident ),* ]
    ) => {
        /// Configuration of the RGB backbone.
        #[derive(Debug, Clone)]
        pub enum BackboneConfig {
            $( $(#[$doc])* $variant($config), )*
        }

        impl BackboneConfig {
            /// The RGB backbone `model.backbone` names (`None` for a backbone that reads
            /// keypoints only, such as ST-GCN: config validation insists on
            /// `model.input_type = "kpt"` with it).
            pub fn from_vidtrain(config: &Config) -> Option<Self> {
                match config.model.backbone {
                    $( Backbone::$value => Some(Self::$variant($config::from_vidtrain(config))), )*
                    $( Backbone::$keypoints_only => None, )*
                }
            }

            /// The configuration as the chain protocol sees it.
            pub fn as_chain(&self) -> &dyn ChainConfig {
                match self {
                    $( Self::$variant(config) => config, )*
                }
            }

            /// Builds the backbone.
            pub fn init<B: Backend>(&self, device: &B::Device) -> VideoBackbone<B> {
                match self {
                    $( Self::$variant(config) => VideoBackbone::$variant(config.init(device)), )*
                }
            }
        }

        /// The RGB backbone: clip `[n, t, 3, h, w]` → feature `[n, dim]`, as a chain of
        /// segments.
        #[derive(Module, Debug)]
        pub enum VideoBackbone<B: Backend> {
            $( $(#[$doc])* $variant($module<B>), )*
        }

        impl<B: Backend> VideoBackbone<B> {
            /// The backbone as a chain of segments.
            pub fn as_chain(&self) -> &dyn SegmentChain<B> {
                match self {
                    $( Self::$variant(model) => model, )*
                }
            }
        }
    };
}

rgb_backbones! {
    rgb: [
        /// The seed's conv-stem video transformer.
        Transformer => Transformer(VideoTransformerConfig, VideoTransformer),
        /// ViViT with joint space-time attention.
        Vivit => Vivit(VivitConfig, Vivit),
        /// torchvision's 3-D ResNet.
        Resnet3d => Resnet3d(Resnet3dConfig, Resnet3d),
        /// VideoMamba.
        Mamba => Mamba(VideoMambaConfig, VideoMamba),
    ]
    keypoints_only: [Stgcn]
}

impl<B: Backend> VideoBackbone<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        self.as_chain().forward_chain(Activation::Clips(video))
    }
}

/// Generates everything that dispatches over the keypoint encoders from one line per encoder
/// (`model.keypoint_backbone` value => variant(config type) in the `ActionModel` field that
/// holds it): the configuration enum with its `From` conversions, `from_vidtrain`, `as_chain`,
/// and the model's `keypoint_chain` / `with_keypoint_encoder`. Each encoder has a field of its
/// own in `ActionModel` (declared there, `None` in its constructor) so that weights files saved
/// before an encoder existed still load; a new keypoint encoder is its file, one line below and
/// that field.
macro_rules! keypoint_backbones {
    ( $( $(#[$doc:meta])* $value:ident => $variant:ident($config:ident) in $field:ident, )* ) => {
        /// Configuration of the keypoint encoder.
        #[derive(Debug, Clone)]
        pub enum KeypointBackboneConfig {
            $( $(#[$doc])* $variant($config), )*
        }

        $(
            impl From<$config> for KeypointBackboneConfig {
                fn from(config: $config) -> Self {
                    Self::$variant(config)
                }
            }
        )*

        impl KeypointBackboneConfig {
            /// The keypoint encoder in effect (`model.keypoint_backbone`, or ST-GCN when it is
            /// `model.backbone`).
            pub fn from_vidtrain(config: &Config) -> Self {
                match config.model.keypoint_encoder() {
                    $( KeypointBackboneKind::$value => Self::$variant($config::from_vidtrain(config)), )*
                }
            }

            /// The configuration as the chain protocol sees it.
            pub fn as_chain(&self) -> &dyn ChainConfig {
                match self {
                    $( Self::$variant(config) => config, )*
                }
            }
        }

        impl<B: Backend> ActionModel<B> {
            /// The keypoint encoder, whichever field holds it.
            pub(crate) fn keypoint_chain(&self) -> Option<&dyn SegmentChain<B>> {
                None $( .or(self.$field.as_ref().map(|encoder| encoder as &dyn SegmentChain<B>)) )*
            }

            /// The model with the encoder `config` describes, freshly initialised, in its field.
            pub(crate) fn with_keypoint_encoder(
                mut self,
                config: &KeypointBackboneConfig,
                device: &B::Device,
            ) -> Self {
                match config {
                    $( KeypointBackboneConfig::$variant(config) => {
                        self.$field = Some(config.init(device))
                    } )*
                }
                self
            }
        }
    };
}

keypoint_backbones! {
    /// A transformer over frames (each frame's joints flattened into one token).
    Transformer => Transformer(KeypointEncoderConfig) in keypoint_encoder,
    /// ST-GCN over the skeleton.
    Stgcn => Stgcn(StgcnConfig) in keypoint_gcn,
    /// Mamba blocks over frames.
    Mamba => Mamba(KeypointMambaConfig) in keypoint_mamba,
}
