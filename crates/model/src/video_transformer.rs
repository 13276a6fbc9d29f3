//! The seed's video transformer: conv stem → spatial mean → sinusoidal positions over time →
//! pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
use crate::stem::{VideoStem, VideoStemConfig};

/// Configuration of a [`VideoTransformer`].
#[derive(Config, Debug)]
pub struct VideoTransformerConfig {
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

impl VideoTransformerConfig {
    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VideoTransformer<B> {
        let block = EncoderBlockConfig::new(self.dim, self.heads, self.ff_dim, self.dropout);
        VideoTransformer {
            stem: VideoStemConfig::new(3, self.dim).init(device),
            blocks: (0..self.layers).map(|_| block.init(device)).collect(),
            norm: LayerNormConfig::new(self.dim).init(device),
        }
    }
}

/// Clip → feature vector.
#[derive(Module, Debug)]
pub struct VideoTransformer<B: Backend> {
    stem: VideoStem<B>,
    blocks: Vec<EncoderBlock<B>>,
    norm: LayerNorm<B>,
}

impl<B: Backend> VideoTransformer<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        let x = self.stem.forward(video); // [n, t, dim, h/4, w/4]
        let [n, t, dim, h, w] = x.dims();
        let x = x
            .reshape([n, t, dim, h * w])
            .mean_dim(3)
            .reshape([n, t, dim]); // [n, t, dim]
        let positions = sinusoidal_positions::<B>(t, dim, &x.device());
        let mut x = x + positions.unsqueeze::<3>();
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.norm.forward(x);
        x.mean_dim(1).reshape([n, dim]) // [n, dim]
    }

    /// Frames, height and width of the tokens for an input clip of `[t, h, w]`.
    pub fn stem_output_size(&self, input: [usize; 3]) -> [usize; 3] {
        self.stem.output_size(input)
    }
}
