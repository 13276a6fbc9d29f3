//! Mamba backbones. [`VideoMamba`] (Li et al. 2024): ViViT's linear tubelet embedding, learned
//! spatial positions plus learned temporal positions, a stack of bidirectional Mamba blocks over
//! the flattened (time, row, column) token sequence, RMSNorm, mean over tokens.
//! [`KeypointMamba`]: one token per frame (its joints flattened, a linear layer, sinusoidal
//! positions over time), the same blocks. VideoMamba-Ti is D 192, 24 blocks, state 16, expand 2.
//!
//! Each block is a `Block` segment; under recompute it is replayed with its selective scan one
//! chunk at a time (`crate::recompute`).

use burn::module::{Initializer, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use super::frame_tokens::FrameTokenEncoder;
use super::vivit::{TUBELET_CLIP_KEYS, TubeletGrid, tubelets};
use crate::chain::{Activation, BlockChain, ChainConfig, SegmentChain, SegmentKind, norm_and_mean};
use crate::layers::mamba::{MambaBlock, MambaBlockConfig, RmsNorm};
use crate::precision::{like, linear};
use crate::summary::{InputShape, LayerSummary, rows};

/// Configuration of a [`VideoMamba`].
#[derive(Config, Debug)]
pub struct VideoMambaConfig {
    /// Every block's configuration (its `dim` is the token width).
    pub block: MambaBlockConfig,
    /// Mamba blocks.
    pub layers: usize,
    /// The clip and its tubelets (the learned positions cover its tokens).
    pub grid: TubeletGrid,
    /// Dropout probability before the classifier.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl VideoMambaConfig {
    /// VideoMamba as `model.mamba_*` and `model.tubelet_size` describe it, its positions
    /// covering the clip of `data.uniform_temporal_subsample_num` × `data.img_size`².
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            MambaBlockConfig::from_vidtrain(model),
            model.mamba_layers,
            TubeletGrid::from_vidtrain(config),
        )
        .with_dropout(model.transformer_dropout)
    }

    /// Builds the backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VideoMamba<B> {
        let [frames, rows, columns] = self.grid.token_grid();
        let positions = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        VideoMamba {
            embedding: LinearConfig::new(self.grid.values(), self.dim()).init(device),
            spatial_positions: positions.init([rows * columns, self.dim()], device),
            temporal_positions: Initializer::Zeros.init([frames, self.dim()], device),
            blocks: (0..self.layers).map(|_| self.block.init(device)).collect(),
            norm: RmsNorm::new(self.dim(), device),
            tubelet: self.grid.tubelet,
        }
    }
}

/// Clip → feature vector.
#[derive(Module, Debug)]
pub struct VideoMamba<B: Backend> {
    embedding: Linear<B>,
    /// `[rows · columns, dim]`, shared by every frame.
    spatial_positions: Param<Tensor<B, 2>>,
    /// `[frames, dim]`, shared by every position (zeros at first, as VideoMamba's).
    temporal_positions: Param<Tensor<B, 2>>,
    blocks: Vec<MambaBlock<B>>,
    norm: RmsNorm<B>,
    #[module(skip)]
    tubelet: [usize; 3],
}

impl<B: Backend> VideoMamba<B> {
    /// # Shapes
    /// - input: `[n, t, 3, h, w]`, values in 0..1
    /// - output: `[n, dim]`
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 2> {
        let _span = tracing::trace_span!("video_mamba").entered();
        self.forward_chain(Activation::Clips(video))
    }

    /// Tubelets → tokens `[n, frames · rows · columns, dim]`, plus spatial and temporal positions.
    fn embed(&self, video: Tensor<B, 5>) -> Tensor<B, 3> {
        let tokens = linear(&self.embedding, tubelets(video, self.tubelet));
        let [n, count, dim] = tokens.dims();
        let [places, _] = self.spatial_positions.dims();
        let frames = count / places;
        let spatial = like(self.spatial_positions.val(), &tokens).reshape([1, 1, places, dim]);
        let temporal = like(self.temporal_positions.val(), &tokens).reshape([1, frames, 1, dim]);
        (tokens.reshape([n, frames, places, dim]) + spatial + temporal).reshape([n, count, dim])
    }
}

/// Segments, in order: the tubelet embedding, one per Mamba block.
impl<B: Backend> BlockChain<B> for VideoMamba<B> {
    type Block = MambaBlock<B>;
    const LEAD: usize = 1;

    fn lead_kind(&self, _index: usize) -> SegmentKind {
        SegmentKind::StemPerClip
    }

    fn forward_lead(&self, _index: usize, input: Activation<B>) -> Activation<B> {
        Activation::Tokens(self.embed(input.into_clips()))
    }

    fn blocks(&self) -> impl Iterator<Item = &MambaBlock<B>> {
        self.blocks.iter()
    }

    /// Final RMSNorm and mean over tokens: `[n, tokens, dim]` → `[n, dim]`.
    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        norm_and_mean(tokens, |tokens| self.norm.forward(tokens))
    }
}

impl ChainConfig for VideoMambaConfig {
    fn architecture_keys(&self) -> Vec<&'static str> {
        [MambaBlockConfig::ARCHITECTURE_KEYS, TUBELET_CLIP_KEYS].concat()
    }

    fn dim(&self) -> usize {
        self.block.dim
    }

    fn dropout(&self) -> f64 {
        self.dropout
    }

    fn summary_rows(&self, prefix: &str, clips: usize, _input: InputShape) -> Vec<LayerSummary> {
        let [frames, rows, columns] = self.grid.token_grid();
        let tokens = frames * rows * columns;
        let mut summary = vec![rows::tubelet_embedding(
            prefix,
            clips,
            tokens,
            self.grid.values(),
            self.dim(),
            (rows * columns + frames) * self.dim(),
        )];
        summary.extend(rows::mamba_blocks(
            prefix,
            self.layers,
            &self.block,
            clips,
            tokens,
        ));
        summary
    }
}

/// Configuration of a [`KeypointMamba`].
#[derive(Config, Debug)]
pub struct KeypointMambaConfig {
    /// Joints per frame.
    pub joints: usize,
    /// Every block's configuration.
    pub block: MambaBlockConfig,
    /// Mamba blocks.
    pub layers: usize,
    /// Dropout probability before the classifier.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl KeypointMambaConfig {
    /// The keypoint Mamba `model.mamba_*` describes, over the joints of `data.keypoint_indices`.
    pub fn from_vidtrain(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        Self::new(
            config.data.keypoint_indices.len(),
            MambaBlockConfig::from_vidtrain(model),
            model.mamba_layers,
        )
        .with_dropout(model.transformer_dropout)
    }

    /// Builds the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> KeypointMamba<B> {
        FrameTokenEncoder {
            embedding: LinearConfig::new(self.joints * 3, self.dim()).init(device),
            blocks: (0..self.layers).map(|_| self.block.init(device)).collect(),
            norm: RmsNorm::new(self.dim(), device),
        }
    }
}

/// Keypoint sequence → feature vector, one token per frame, through Mamba blocks.
pub type KeypointMamba<B> = FrameTokenEncoder<B, MambaBlock<B>, RmsNorm<B>>;

impl ChainConfig for KeypointMambaConfig {
    fn architecture_keys(&self) -> Vec<&'static str> {
        MambaBlockConfig::ARCHITECTURE_KEYS.to_vec()
    }

    fn dim(&self) -> usize {
        self.block.dim
    }

    fn dropout(&self) -> f64 {
        self.dropout
    }

    fn keypoint_joints(&self) -> Option<usize> {
        Some(self.joints)
    }

    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary> {
        let t = input.frames;
        let blocks = rows::mamba_blocks(prefix, self.layers, &self.block, clips, t);
        rows::frame_token_chain(prefix, [clips, t, self.dim()], self.joints, blocks)
    }
}
