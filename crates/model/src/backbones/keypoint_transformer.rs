//! The keypoint encoder: each frame's joints flattened → linear → sinusoidal positions over time
//! → pre-norm encoder blocks → LayerNorm → mean over time.

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::chain::{Activation, BlockChain, ChainConfig, SegmentChain, SegmentKind, norm_and_mean};
use crate::layers::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
use crate::precision::{layer_norm, like, linear};
use crate::summary::{InputShape, LayerSummary, rows};

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
    /// The keypoint transformer `model.transformer_*` describes, over the joints of
    /// `data.keypoint_indices`.
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            config.data.keypoint_indices.len(),
            model.transformer_dim,
            model.transformer_layers,
            model.transformer_heads,
            model.transformer_ff_dim,
            model.transformer_dropout,
        )
    }

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
        self.forward_chain(Activation::Joints(keypoints))
    }
}

/// Segments, in order: the embedding bridge, one per encoder block.
impl<B: Backend> BlockChain<B> for KeypointEncoder<B> {
    type Block = EncoderBlock<B>;
    const LEAD: usize = 1;

    fn lead_kind(&self, _index: usize) -> SegmentKind {
        SegmentKind::Bridge
    }

    fn forward_lead(&self, _index: usize, input: Activation<B>) -> Activation<B> {
        Activation::Tokens(frame_tokens(&self.embedding, input.into_joints()))
    }

    fn blocks(&self) -> impl Iterator<Item = &EncoderBlock<B>> {
        self.blocks.iter()
    }

    /// Final LayerNorm and mean over time: `[n, t, dim]` → `[n, dim]`.
    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        norm_and_mean(tokens, |tokens| layer_norm(&self.norm, tokens))
    }
}

impl ChainConfig for KeypointEncoderConfig {
    fn dim(&self) -> usize {
        self.dim
    }

    fn dropout(&self) -> f64 {
        self.dropout
    }

    fn keypoint_joints(&self) -> Option<usize> {
        Some(self.joints)
    }

    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary> {
        let t = input.frames;
        let mut rows = vec![rows::frame_embedding(
            prefix,
            clips,
            t,
            self.joints,
            self.dim,
        )];
        rows.extend(rows::encoder_blocks(
            prefix,
            self.layers,
            [clips, t, self.dim],
            self.heads,
            self.ff_dim,
        ));
        rows
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
