//! The keypoint encoder: each frame's joints flattened → linear → sinusoidal positions over time
//! → pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig, LinearConfig};
use burn::prelude::*;

use super::frame_tokens::FrameTokenEncoder;
use crate::chain::ChainConfig;
use crate::layers::encoder::{EncoderBlock, EncoderBlockConfig};
use crate::summary::{InputShape, LayerSummary, rows};

/// Configuration of a [`KeypointEncoder`].
#[derive(Config, Debug)]
pub struct KeypointEncoderConfig {
    /// Joints per frame.
    pub joints: usize,
    /// Every encoder block's configuration (its `dim` is the token width D).
    pub block: EncoderBlockConfig,
    /// Encoder blocks.
    pub layers: usize,
}

impl KeypointEncoderConfig {
    /// The keypoint transformer `model.transformer_*` describes, over the joints of
    /// `data.keypoint_indices`.
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            config.data.keypoint_indices.len(),
            EncoderBlockConfig::from_vidtrain(model),
            model.transformer_layers,
        )
    }

    /// Builds the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> KeypointEncoder<B> {
        let dim = self.block.dim;
        FrameTokenEncoder {
            embedding: LinearConfig::new(self.joints * 3, dim).init(device),
            blocks: (0..self.layers).map(|_| self.block.init(device)).collect(),
            norm: LayerNormConfig::new(dim)
                .with_epsilon(crate::precision::LAYER_NORM_EPSILON)
                .init(device),
        }
    }
}

/// Keypoint sequence → feature vector through pre-norm encoder blocks. No batch statistics
/// anywhere, so its gradients do not depend on how samples are grouped into micro-batches.
pub type KeypointEncoder<B> = FrameTokenEncoder<B, EncoderBlock<B>, LayerNorm<B>>;

impl ChainConfig for KeypointEncoderConfig {
    fn dim(&self) -> usize {
        self.block.dim
    }

    fn dropout(&self) -> f64 {
        self.block.dropout
    }

    fn keypoint_joints(&self) -> Option<usize> {
        Some(self.joints)
    }

    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary> {
        let t = input.frames;
        let blocks = rows::encoder_blocks(prefix, self.layers, &self.block, clips, t);
        rows::frame_token_chain(prefix, [clips, t, self.dim()], self.joints, blocks)
    }
}
