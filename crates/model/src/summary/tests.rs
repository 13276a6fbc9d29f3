//! The layer summary equals the built model: parameter counts and every segment's output shape.

use super::*;
use crate::EncoderBlockConfig;
use crate::chain::Activation;
use crate::{
    KeypointEncoderConfig, KeypointMambaConfig, MambaBlockConfig, Resnet3dConfig, StgcnConfig,
    VideoMambaConfig,
};
use crate::{TestBackend, TubeletGrid, VideoTransformerConfig, VivitConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use vidtrain_config::ModalityFusion;

fn config(
    backbone: BackboneConfig,
    keypoint_encoder: KeypointBackboneConfig,
    fusion: FusionMode,
) -> ActionModelConfig {
    ActionModelConfig {
        backbone: Some(backbone),
        keypoint_encoder: Some(keypoint_encoder),
        views: 2,
        classes: 7,
        fusion,
        modality_fusion: ModalityFusion::Concat,
        compute_dtype: burn::tensor::FloatDType::F32,
    }
}

/// Parameter counts equal Burn's, and every output shape equals the shape a real forward
/// produces, segment by segment.
#[test]
fn summary_matches_the_built_model() {
    let _rng = crate::rng_lock();
    let device = Default::default();
    let input = InputShape {
        batch: 3,
        frames: 4,
        image: 32,
    };
    let transformer: KeypointBackboneConfig =
        KeypointEncoderConfig::new(5, EncoderBlockConfig::new(12, 2, 20, 0.0), 1).into();
    let star = crate::Skeleton {
        joints: 5,
        edges: vec![[0, 1], [0, 2], [0, 3], [0, 4]],
        center: 0,
    };
    let stgcn: KeypointBackboneConfig = StgcnConfig::for_skeleton(&star, 4, 0.0).into();
    for (backbone, keypoint_encoder, fusion) in [
        (
            BackboneConfig::Transformer(VideoTransformerConfig::new(
                EncoderBlockConfig::new(16, 2, 24, 0.0),
                2,
            )),
            transformer.clone(),
            FusionMode::FeatureConcat,
        ),
        (
            BackboneConfig::Vivit(VivitConfig::new(
                EncoderBlockConfig::new(16, 2, 24, 0.0),
                2,
                TubeletGrid::new([2, 8, 8], [4, 32, 32]),
            )),
            transformer.clone(),
            FusionMode::LogitMean,
        ),
        (
            BackboneConfig::Resnet3d(Resnet3dConfig::new(10, 4, 0.0)),
            stgcn.clone(),
            FusionMode::FeatureConcat,
        ),
        (
            BackboneConfig::Resnet3d(Resnet3dConfig::new(34, 2, 0.0)),
            transformer.clone(),
            FusionMode::ProbMean,
        ),
        (
            BackboneConfig::Mamba(VideoMambaConfig::new(
                MambaBlockConfig::new(16).with_state(4),
                2,
                TubeletGrid::new([2, 8, 8], [4, 32, 32]),
            )),
            KeypointMambaConfig::new(5, MambaBlockConfig::new(12).with_bidirectional(false), 1)
                .into(),
            FusionMode::FeatureConcat,
        ),
    ] {
        let config = config(backbone, keypoint_encoder, fusion);
        let summary = config.summary(input);
        let model = config.init::<TestBackend>(&device);
        // Burn counts BatchNorm's running mean and variance, and ST-GCN's fixed adjacency.
        let running_statistics = |channels: usize| 2 * channels;
        let rgb_buffers = match &config.backbone {
            Some(BackboneConfig::Transformer(c)) => 2 * (c.block.dim / 2) + 2 * c.block.dim,
            Some(BackboneConfig::Resnet3d(c)) => {
                running_statistics(c.width)
                    + c.blocks()
                        .iter()
                        .map(|&(_, _, c_in, c_out, stride)| {
                            let norms = if c_in != c_out || stride != 1 { 3 } else { 2 };
                            norms * running_statistics(c_out)
                        })
                        .sum::<usize>()
            }
            _ => 0,
        };
        let keypoint_buffers = match &config.keypoint_encoder {
            Some(KeypointBackboneConfig::Stgcn(c)) => {
                running_statistics(3 * c.joints)
                    + c.blocks()
                        .iter()
                        .map(|&(c_in, c_out, stride, residual)| {
                            let residual_conv = residual && (c_in != c_out || stride != 1);
                            (2 + usize::from(residual_conv)) * running_statistics(c_out)
                                + 3 * c.joints * c.joints
                        })
                        .sum::<usize>()
            }
            _ => 0,
        };
        assert_eq!(
            summary.params() + rgb_buffers + keypoint_buffers,
            model.num_params()
        );

        let video =
            Tensor::<TestBackend, 6>::random([3, 2, 4, 32, 32, 3], Distribution::Default, &device);
        let keypoints =
            Tensor::<TestBackend, 5>::random([3, 2, 4, 5, 3], Distribution::Default, &device);
        let (inputs, _, _) = model.chain_inputs(Some(video.clone()), Some(keypoints.clone()));
        let mut shapes = Vec::new();
        for (chain, input) in inputs {
            let mut x = input;
            let chain = model.encoder(chain);
            for index in 0..chain.segment_count() {
                x = chain.forward_segment(index, x);
                shapes.push(match &x {
                    Activation::Clips(t) => t.dims().to_vec(),
                    Activation::Joints(t) => t.dims().to_vec(),
                    Activation::Tokens(t) => t.dims().to_vec(),
                });
            }
            shapes.push(chain.finish(x.into_tokens()).dims().to_vec());
        }
        shapes.push(model.forward(Some(video), Some(keypoints)).dims().to_vec());
        let expected: Vec<Vec<usize>> = summary
            .layers
            .iter()
            .map(|layer| layer.output_shape.clone())
            .collect();
        assert_eq!(shapes, expected);
    }
}
