//! The keypoint encoders over frames: one token per frame (its joints flattened, a linear layer,
//! sinusoidal positions over time), a stack of blocks, a final norm, the mean over time. The
//! keypoint transformer ([`super::keypoint_transformer`]) and the keypoint Mamba
//! ([`super::mamba`]) are this chain with encoder blocks + LayerNorm and with Mamba blocks +
//! RMSNorm; their configurations live in their own files.

use burn::nn::Linear;
use burn::prelude::*;

use crate::chain::{Activation, BlockChain, ChainBlock, SegmentChain, SegmentKind, norm_and_mean};
use crate::layers::encoder::sinusoidal_positions;
use crate::precision::{like, linear};

/// A norm over the last axis of `[n, tokens, dim]` tokens, as a chain's finish applies it.
pub(crate) trait TokenNorm<B: Backend> {
    fn normalize(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3>;
}

impl<B: Backend> TokenNorm<B> for burn::nn::LayerNorm<B> {
    fn normalize(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::precision::layer_norm(self, tokens)
    }
}

impl<B: Backend> TokenNorm<B> for crate::layers::mamba::RmsNorm<B> {
    fn normalize(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward(tokens)
    }
}

/// Keypoint sequence → feature vector, one token per frame, through blocks of type `K` and a
/// final norm of type `N`. The field names are the weights' names (`embedding`, `blocks.<i>`,
/// `norm`), as they were before the two encoders shared this type.
#[derive(Module, Debug)]
pub struct FrameTokenEncoder<B: Backend, K, N> {
    pub(crate) embedding: Linear<B>,
    pub(crate) blocks: Vec<K>,
    pub(crate) norm: N,
}

impl<B: Backend, K, N> FrameTokenEncoder<B, K, N>
where
    Self: SegmentChain<B>,
{
    /// # Shapes
    /// - input: `[n, t, joints, 3]`
    /// - output: `[n, dim]`
    pub fn forward(&self, keypoints: Tensor<B, 4>) -> Tensor<B, 2> {
        let _span = tracing::trace_span!("keypoint_encoder").entered();
        self.forward_chain(Activation::Joints(keypoints))
    }
}

/// Segments, in order: the embedding bridge, one per block.
impl<B, K, N> BlockChain<B> for FrameTokenEncoder<B, K, N>
where
    B: Backend,
    K: ChainBlock<B> + Module<B>,
    N: TokenNorm<B> + Module<B>,
{
    type Block = K;
    const LEAD: usize = 1;

    fn lead_kind(&self, _index: usize) -> SegmentKind {
        SegmentKind::Bridge
    }

    fn forward_lead(&self, _index: usize, input: Activation<B>) -> Activation<B> {
        Activation::Tokens(frame_tokens(&self.embedding, input.into_joints()))
    }

    fn blocks(&self) -> impl Iterator<Item = &K> {
        self.blocks.iter()
    }

    /// Final norm and mean over time: `[n, t, dim]` → `[n, dim]`.
    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        norm_and_mean(tokens, |tokens| self.norm.normalize(tokens))
    }
}

/// One token per frame: the frame's joints flattened, `embedding`, sinusoidal positions over time.
///
/// # Shapes
/// - input: `[n, t, joints, 3]`
/// - output: `[n, t, dim]`
fn frame_tokens<B: Backend>(embedding: &Linear<B>, keypoints: Tensor<B, 4>) -> Tensor<B, 3> {
    let [n, t, joints, channels] = keypoints.dims();
    let x = linear(embedding, keypoints.reshape([n, t, joints * channels]));
    let dim = x.dims()[2];
    let positions = like(sinusoidal_positions::<B>(t, dim, &x.device()), &x);
    x + positions.unsqueeze::<3>()
}
