//! The keypoint encoder: each frame's joints flattened → linear → sinusoidal positions over time
//! → pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::layers::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
use crate::precision::{layer_norm, like, linear, mean_dim_f32};
use crate::recompute::{Activation, SegmentKind};

/// Configuration of a [`KeypointEncoder`].
#[derive(Config, Debug)]
pub struct KeypointEncoderConfig {
    /// Joints per frame.
    pub joints: usize,
    /// Token width D.
    pub dim: usize,
    /// Encoder blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward hidden width.
    pub ff_dim: usize,
    /// Dropout probability.
    pub dropout: f64,
}

impl KeypointEncoderConfig {
    /// Builds the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> KeypointEncoder<B> {
        let block = EncoderBlockConfig::new(self.dim, self.heads, self.ff_dim, self.dropout);
        KeypointEncoder {
            embedding: LinearConfig::new(self.joints * 3, self.dim).init(device),
            blocks: (0..self.layers).map(|_| block.init(device)).collect(),
            norm: LayerNormConfig::new(self.dim).init(device),
        }
    }
}

/// Keypoint sequence → feature vector. No batch statistics anywhere, so its gradients do not
/// depend on how samples are grouped into micro-batches.
#[derive(Module, Debug)]
pub struct KeypointEncoder<B: Backend> {
    embedding: Linear<B>,
    blocks: Vec<EncoderBlock<B>>,
    norm: LayerNorm<B>,
}

impl<B: Backend> KeypointEncoder<B> {
    /// # Shapes
    /// - input: `[n, t, joints, 3]`
    /// - output: `[n, dim]`
    pub fn forward(&self, keypoints: Tensor<B, 4>) -> Tensor<B, 2> {
        let _span = tracing::trace_span!("keypoint_encoder").entered();
        let mut x = Activation::Joints(keypoints);
        for index in 0..self.segment_count() {
            x = self.forward_segment(index, x);
        }
        self.finish(x.into_tokens())
    }

    /// Segments, in order: the embedding bridge, one per encoder block.
    pub fn segment_count(&self) -> usize {
        1 + self.blocks.len()
    }

    /// What segment `index` is (decides whether it is recomputed).
    pub fn segment_kind(&self, index: usize) -> SegmentKind {
        if index == 0 {
            SegmentKind::Bridge
        } else {
            SegmentKind::Block
        }
    }

    /// The encoder block that segment `index` is, if it is one.
    pub fn encoder_block(&self, index: usize) -> Option<&EncoderBlock<B>> {
        index
            .checked_sub(1)
            .and_then(|block| self.blocks.get(block))
    }

    /// Runs segment `index` alone.
    pub fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B> {
        if let Some(block) = self.encoder_block(index) {
            return Activation::Tokens(block.forward(input.into_tokens()));
        }
        Activation::Tokens(frame_tokens(&self.embedding, input.into_joints()))
    }

    /// Final LayerNorm and mean over time: `[n, t, dim]` → `[n, dim]`.
    pub fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, _, dim] = tokens.dims();
        mean_dim_f32(layer_norm(&self.norm, tokens), 1).reshape([n, dim])
    }
}

/// One token per frame: the frame's joints flattened, `embedding`, sinusoidal positions over time
/// (the keypoint transformer's and the keypoint Mamba's first segment).
///
/// # Shapes
/// - input: `[n, t, joints, 3]`
/// - output: `[n, t, dim]`
pub(crate) fn frame_tokens<B: Backend>(
    embedding: &Linear<B>,
    keypoints: Tensor<B, 4>,
) -> Tensor<B, 3> {
    let [n, t, joints, channels] = keypoints.dims();
    let x = linear(embedding, keypoints.reshape([n, t, joints * channels]));
    let dim = x.dims()[2];
    let positions = like(sinusoidal_positions::<B>(t, dim, &x.device()), &x);
    x + positions.unsqueeze::<3>()
}
