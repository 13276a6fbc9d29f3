//! Pre-norm transformer encoder blocks over time and the sinusoidal positional encoding.

use crate::layers::gelu::gelu;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::layers::dropout::{DropMask, dropout};
use crate::precision::{layer_norm, linear, softmax_f32};
use std::ops::Range;

mod tracked_attention;

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
    /// The block `model.transformer_*` describes (the seed transformer's, ViViT's and the
    /// keypoint transformer's).
    pub fn from_vidtrain(model: &vidtrain_config::ModelConfig) -> Self {
        Self::new(
            model.transformer_dim,
            model.transformer_heads,
            model.transformer_ff_dim,
            model.transformer_dropout,
        )
    }

    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> EncoderBlock<B> {
        EncoderBlock {
            norm_attention: LayerNormConfig::new(self.dim)
                .with_epsilon(crate::precision::LAYER_NORM_EPSILON)
                .init(device),
            qkv: LinearConfig::new(self.dim, 3 * self.dim).init(device),
            projection: LinearConfig::new(self.dim, self.dim).init(device),
            norm_feed_forward: LayerNormConfig::new(self.dim)
                .with_epsilon(crate::precision::LAYER_NORM_EPSILON)
                .init(device),
            feed_forward_in: LinearConfig::new(self.dim, self.ff_dim).init(device),
            feed_forward_out: LinearConfig::new(self.ff_dim, self.dim).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            heads: self.heads,
        }
    }
}

/// Queries per attention block. Scores are computed `[batch, heads, QUERY_BLOCK_TOKENS, tokens]`
/// at a time, so an untracked (recomputed) forward never holds the `[batch, heads, tokens, tokens]`
/// matrix, and activation recompute replays attention one query block at a time in backward. At
/// 256, ViViT-S at 224 px / 16 frames (1568 tokens, batch 4, 6 heads) holds 38 MB of scores
/// instead of 236 MB.
pub const QUERY_BLOCK_TOKENS: usize = 256;

/// `x + attention(norm(x))`, then `x + feed_forward(norm(x))` (PyTorch's `norm_first=True`).
///
/// The block is also exposed in three steps for activation recompute: [`Self::query_key_value`],
/// [`Self::attention`] (query block by query block: [`Self::attention_rows`]) and
/// [`Self::after_attention`].
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
        self.forward_seeded(input, None)
    }

    /// [`Self::forward`] whose attention dropout, when attention runs in several query blocks,
    /// is seeded per block from `dropout_seed` (see [`Self::attention`]), so that activation
    /// recompute can replay a single block's masks.
    pub fn forward_seeded(&self, input: Tensor<B, 3>, dropout_seed: Option<u64>) -> Tensor<B, 3> {
        let _span = tracing::trace_span!("encoder_block").entered();
        let qkv = self.query_key_value(input.clone());
        let context = self.attention(qkv, dropout_seed);
        self.after_attention(input, context)
    }

    /// `norm(x)` projected to queries, keys and values: `[batch, tokens, 3·dim]`.
    pub fn query_key_value(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.qkv, layer_norm(&self.norm_attention, input))
    }

    /// Attention context `[batch, tokens, dim]` (before the output projection), computed in query
    /// blocks of [`QUERY_BLOCK_TOKENS`]. With `dropout_seed` and more than one block, block
    /// `number`'s attention dropout is seeded with [`query_block_seed`], so that a replay can draw
    /// one block's masks alone with [`Self::attention_rows`]; without it, masks come from the
    /// generator's stream as it is.
    pub fn attention(&self, qkv: Tensor<B, 3>, dropout_seed: Option<u64>) -> Tensor<B, 3> {
        let tokens = qkv.dims()[1];
        let blocks = query_blocks(tokens);
        if blocks.len() == 1 {
            return self.attention_rows(qkv, 0..tokens, None);
        }
        let contexts = blocks
            .into_iter()
            .enumerate()
            .map(|(number, rows)| {
                let seed = dropout_seed.map(|seed| query_block_seed(seed, number));
                self.attention_rows(qkv.clone(), rows, seed)
            })
            .collect();
        Tensor::cat(contexts, 1)
    }

    /// Attention context of the query rows `rows` against every key: `[batch, rows, dim]`. When
    /// `dropout_seed` is given, the backend generator is seeded with it before the dropout.
    pub fn attention_rows(
        &self,
        qkv: Tensor<B, 3>,
        rows: Range<usize>,
        dropout_seed: Option<u64>,
    ) -> Tensor<B, 3> {
        let device = qkv.device();
        if !crate::cpu_kernels::host_float(qkv.dtype())
            || !crate::cpu_kernels::host_tensors::<B>(&device)
        {
            return self.attention_rows_composed(qkv, rows, dropout_seed);
        }
        let [batch, tokens, width] = qkv.dims();
        let geometry = tracked_attention::Geometry {
            batch,
            tokens,
            dim: width / 3,
            heads: self.heads,
            rows: rows.clone(),
        };
        if let Some(seed) = dropout_seed {
            B::seed(&device, seed);
        }
        let qkv = if B::ad_enabled(&device) {
            let prob = self.dropout.prob;
            let mask = (prob > 0.0).then(|| DropMask::draw::<B>(prob, &device));
            match tracked_attention::attention_tracked(qkv, geometry, mask) {
                Ok(context) => return context,
                // Not burn-flex under autodiff after all: the composition draws its own mask.
                Err(qkv) => qkv,
            }
        } else if crate::cpu_kernels::enabled::<B>(&device) {
            match tracked_attention::attention_on_host(qkv, geometry) {
                Ok(context) => return context,
                Err(qkv) => qkv,
            }
        } else {
            qkv
        };
        self.attention_rows_composed(qkv, rows, dropout_seed)
    }

    /// [`Self::attention_rows`] as Burn's composition: scores, softmax in f32, dropout and the
    /// weighted values as separate ops (devices, `VIDTRAIN_CPU_KERNELS=reference`, and the
    /// reference the CPU op is tested against).
    pub(crate) fn attention_rows_composed(
        &self,
        qkv: Tensor<B, 3>,
        rows: Range<usize>,
        dropout_seed: Option<u64>,
    ) -> Tensor<B, 3> {
        let [batch, tokens, width] = qkv.dims();
        let dim = width / 3;
        let head_dim = dim / self.heads;
        let split = |tensor: Tensor<B, 3>, length: usize| {
            tensor
                .reshape([batch, length, self.heads, head_dim])
                .swap_dims(1, 2) // [batch, heads, length, head_dim]
        };
        let query = split(
            qkv.clone().slice([0..batch, rows.clone(), 0..dim]),
            rows.len(),
        );
        let key = split(
            qkv.clone().slice([0..batch, 0..tokens, dim..2 * dim]),
            tokens,
        );
        let value = split(qkv.slice([0..batch, 0..tokens, 2 * dim..3 * dim]), tokens);
        let scores = query.matmul(key.swap_dims(2, 3)) / (head_dim as f64).sqrt(); // [b, h, r, n]
        if let Some(seed) = dropout_seed {
            B::seed(&scores.device(), seed);
        }
        let weights = dropout(&self.dropout, softmax_f32(scores, 3));
        let context = weights.matmul(value); // [b, h, r, head_dim]
        context.swap_dims(1, 2).reshape([batch, rows.len(), dim])
    }

    /// Output projection, residual, and the feed-forward half: from the block input and the
    /// attention context to the block output.
    pub fn after_attention(&self, input: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let attended = linear(&self.projection, context);
        let x = input + dropout(&self.dropout, attended);
        let hidden = gelu(linear(
            &self.feed_forward_in,
            layer_norm(&self.norm_feed_forward, x.clone()),
        ));
        let hidden = linear(&self.feed_forward_out, dropout(&self.dropout, hidden));
        x + dropout(&self.dropout, hidden)
    }
}

/// The query rows of each attention block.
pub fn query_blocks(tokens: usize) -> Vec<Range<usize>> {
    (0..tokens)
        .step_by(QUERY_BLOCK_TOKENS)
        .map(|start| start..(start + QUERY_BLOCK_TOKENS).min(tokens))
        .collect()
}

/// The attention dropout seed of query block `number` of a block seeded with `seed`. Known on the
/// host from the segment's seed, so no generator state is read back from the device.
pub fn query_block_seed(seed: u64, number: usize) -> u64 {
    seed ^ 0xa77e_0000_0000 ^ (number as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::Distribution;

    #[test]
    fn attention_in_query_blocks_equals_attention_over_all_queries_at_once() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let block: EncoderBlock<TestBackend> = EncoderBlockConfig::new(8, 2, 16, 0.0).init(&device);
        let tokens = 2 * QUERY_BLOCK_TOKENS + 7;
        assert_eq!(query_blocks(tokens).len(), 3);
        let input =
            Tensor::<TestBackend, 3>::random([2, tokens, 8], Distribution::Default, &device);
        let blocked = block.forward(input.clone());
        let qkv = block.query_key_value(input.clone());
        let whole = block.after_attention(input, block.attention_rows(qkv, 0..tokens, None));
        let difference = (blocked - whole).abs().max().into_scalar();
        assert!(difference < 1e-5, "{difference}");
    }
}
