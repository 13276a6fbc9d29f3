//! The seed's video transformer: conv stem → spatial mean → sinusoidal positions over time →
//! pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::layers::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
use crate::layers::stem::{StemStep, VideoStem, VideoStemConfig};
use crate::precision::{layer_norm, like, mean_dim_f32};
use crate::recompute::{Activation, SegmentKind};

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
        let mut x = Activation::Clips(video);
        for index in 0..self.segment_count() {
            x = self.forward_segment(index, x);
        }
        self.finish(x.into_tokens())
    }

    /// Segments, in order: the four stem steps, the pooling bridge, one per encoder block.
    pub fn segment_count(&self) -> usize {
        VideoStem::<B>::STEPS + 1 + self.blocks.len()
    }

    /// What segment `index` is (decides whether and how it is recomputed).
    pub fn segment_kind(&self, index: usize) -> SegmentKind {
        match index {
            0 | 2 => SegmentKind::StemPerClip,
            1 | 3 => SegmentKind::StemBatch,
            4 => SegmentKind::Bridge,
            _ => SegmentKind::Block,
        }
    }

    /// The encoder block that segment `index` is, if it is one.
    pub fn encoder_block(&self, index: usize) -> Option<&EncoderBlock<B>> {
        index
            .checked_sub(VideoStem::<B>::STEPS + 1)
            .and_then(|block| self.blocks.get(block))
    }

    /// The stem step that segment `index` is, if it is one, bound to `input`.
    pub fn stem_step(&self, index: usize, input: Tensor<B, 5>) -> Option<StemStep<'_, B>> {
        (index < VideoStem::<B>::STEPS).then(|| self.stem.step(index, input))
    }

    /// Runs segment `index` alone.
    pub fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B> {
        if let Some(block) = self.encoder_block(index) {
            return Activation::Tokens(block.forward(input.into_tokens()));
        }
        if index < VideoStem::<B>::STEPS {
            return Activation::Clips(self.stem.forward_step(index, input.into_clips()));
        }
        let x = input.into_clips(); // [n, dim, t, h/4, w/4]
        let [n, dim, t, h, w] = x.dims();
        let x = mean_dim_f32(x.reshape([n, dim, t, h * w]), 3) // [n, dim, t, 1]
            .reshape([n, dim, t])
            .swap_dims(1, 2); // [n, t, dim]
        let positions = like(sinusoidal_positions::<B>(t, dim, &x.device()), &x);
        Activation::Tokens(x + positions.unsqueeze::<3>())
    }

    /// Final LayerNorm and mean over time: `[n, t, dim]` → `[n, dim]`.
    pub fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, _, dim] = tokens.dims();
        mean_dim_f32(layer_norm(&self.norm, tokens), 1).reshape([n, dim])
    }

    /// Frames, height and width of the tokens for an input clip of `[t, h, w]`.
    pub fn stem_output_size(&self, input: [usize; 3]) -> [usize; 3] {
        self.stem.output_size(input)
    }
}
