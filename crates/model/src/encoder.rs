//! Pre-norm transformer encoder blocks over time and the sinusoidal positional encoding.

use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

/// Configuration of one [`EncoderBlock`].
#[derive(Config, Debug)]
pub struct EncoderBlockConfig {
    /// Token width.
    pub dim: usize,
    /// Attention heads (divide `dim`).
    pub heads: usize,
    /// Feed-forward hidden width.
    pub ff_dim: usize,
    /// Dropout on attention weights, after attention and in the feed-forward block.
    pub dropout: f64,
}

impl EncoderBlockConfig {
    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> EncoderBlock<B> {
        EncoderBlock {
            norm_attention: LayerNormConfig::new(self.dim).init(device),
            qkv: LinearConfig::new(self.dim, 3 * self.dim).init(device),
            projection: LinearConfig::new(self.dim, self.dim).init(device),
            norm_feed_forward: LayerNormConfig::new(self.dim).init(device),
            feed_forward_in: LinearConfig::new(self.dim, self.ff_dim).init(device),
            feed_forward_out: LinearConfig::new(self.ff_dim, self.dim).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            heads: self.heads,
        }
    }
}

/// `x + attention(norm(x))`, then `x + feed_forward(norm(x))` (PyTorch's `norm_first=True`).
#[derive(Module, Debug)]
pub struct EncoderBlock<B: Backend> {
    norm_attention: LayerNorm<B>,
    qkv: Linear<B>,
    projection: Linear<B>,
    norm_feed_forward: LayerNorm<B>,
    feed_forward_in: Linear<B>,
    feed_forward_out: Linear<B>,
    dropout: Dropout,
    heads: usize,
}

impl<B: Backend> EncoderBlock<B> {
    /// # Shapes
    /// - input: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        let _span = tracing::trace_span!("encoder_block").entered();
        let attended = self.attention(self.norm_attention.forward(input.clone()));
        let x = input + self.dropout.forward(attended);
        let hidden = gelu(
            self.feed_forward_in
                .forward(self.norm_feed_forward.forward(x.clone())),
        );
        let hidden = self.feed_forward_out.forward(self.dropout.forward(hidden));
        x + self.dropout.forward(hidden)
    }

    fn attention(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, tokens, dim] = x.dims();
        let head_dim = dim / self.heads;
        let qkv = self
            .qkv
            .forward(x)
            .reshape([batch, tokens, 3, self.heads, head_dim])
            .permute([2, 0, 3, 1, 4]); // [3, batch, heads, tokens, head_dim]
        let take = |index: usize| {
            qkv.clone()
                .narrow(0, index, 1)
                .reshape([batch, self.heads, tokens, head_dim])
        };
        let (query, key, value) = (take(0), take(1), take(2));
        let scores = query.matmul(key.swap_dims(2, 3)) / (head_dim as f64).sqrt(); // [b, h, n, n]
        let weights = self.dropout.forward(softmax(scores, 3));
        let context = weights.matmul(value); // [b, h, n, head_dim]
        let context = context.swap_dims(1, 2).reshape([batch, tokens, dim]);
        self.projection.forward(context)
    }
}

/// The fixed sinusoidal position encoding of "Attention is all you need", `[tokens, dim]`.
pub fn sinusoidal_positions<B: Backend>(
    tokens: usize,
    dim: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut values = vec![0f32; tokens * dim];
    for position in 0..tokens {
        for pair in 0..dim / 2 {
            let frequency = 1.0 / 10000f64.powf(2.0 * pair as f64 / dim as f64);
            let angle = position as f64 * frequency;
            values[position * dim + 2 * pair] = angle.sin() as f32;
            values[position * dim + 2 * pair + 1] = angle.cos() as f32;
        }
    }
    Tensor::from_data(TensorData::new(values, [tokens, dim]), device)
}
