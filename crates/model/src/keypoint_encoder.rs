//! The keypoint encoder: each frame's joints flattened → linear → sinusoidal positions over time
//! → pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};

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
        let [n, t, joints, channels] = keypoints.dims();
        let x = self
            .embedding
            .forward(keypoints.reshape([n, t, joints * channels])); // [n, t, dim]
        let dim = x.dims()[2];
        let positions = sinusoidal_positions::<B>(t, dim, &x.device());
        let mut x = x + positions.unsqueeze::<3>();
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x).mean_dim(1).reshape([n, dim]) // [n, dim]
    }
}
