//! The backbone protocol. Every encoder — an RGB backbone or a keypoint encoder — is a chain of
//! segments: a backbone says how many segments it has, what kind each is, runs one segment, and
//! finishes the chain into a feature vector ([`SegmentChain`]). Its configuration says the same
//! without tensors: feature width, dropout and its layer-table rows ([`ChainConfig`]).
//!
//! Everything above a backbone drives these two traits and nothing else: the plain forward
//! ([`SegmentChain::forward_chain`], written once here), activation recompute
//! (`crate::recompute`, which runs, keeps, drops and replays segments by their kind), the layer
//! summary the memory plan prices (`crate::summary`) and the model's fusion and head
//! (`crate::ActionModel`). A new backbone is one file under `backbones/` implementing both traits
//! plus its arms in `backbones/mod.rs` (see `docs/architecture.md`).

use burn::prelude::*;
use vidtrain_config::RecomputeMode;

use crate::layers::encoder::EncoderBlock;
use crate::layers::mamba::MambaBlock;
use crate::layers::stem::{StemLayer, StemStep};
use crate::precision::mean_dim_f32;
use crate::pytorch_names::{PytorchLayout, PytorchNames};
use crate::summary::{InputShape, LayerSummary};

/// One encoder as a chain of segments.
///
/// `forward_segment(0..segment_count())` then `finish` is the encoder's forward. The optional
/// accessors name segments that `crate::recompute` treats specially: an encoder block's attention
/// is replayed one query block at a time, a Mamba block's scan one chunk at a time, and a stem
/// step (convolution, BatchNorm + ReLU) is differentiated by hand instead of through autodiff.
pub trait SegmentChain<B: Backend> {
    /// Segments, in order.
    fn segment_count(&self) -> usize;

    /// What segment `index` is (decides whether and how it is recomputed).
    fn segment_kind(&self, index: usize) -> SegmentKind;

    /// Runs segment `index` alone.
    fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B>;

    /// The last segment's tokens `[n, tokens, dim]` → the feature vector `[n, dim]`.
    fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2>;

    /// The transformer encoder block that segment `index` is, if it is one.
    fn encoder_block(&self, _index: usize) -> Option<&EncoderBlock<B>> {
        None
    }

    /// The Mamba block that segment `index` is, if it is one.
    fn mamba_block(&self, _index: usize) -> Option<&MambaBlock<B>> {
        None
    }

    /// The stem step that segment `index` is, if it is one, bound to `input`.
    fn stem_step(&self, _index: usize, _input: &Activation<B>) -> Option<StemStep<'_, B>> {
        None
    }

    /// The layer of the stem step that segment `index` is, if it is one, unbound: what
    /// differentiates an input kept compressed ([`StemLayer::gradients_of_codes`]).
    fn stem_layer(&self, _index: usize) -> Option<StemLayer<'_, B>> {
        None
    }

    /// The whole chain: `input` (clips or keypoints) → `[n, dim]`. Without gradient tracking
    /// (validation, inference) a per-clip segment runs one clip at a time, so that a large
    /// evaluation batch never holds the whole batch's convolution patch matrix.
    fn forward_chain(&self, input: Activation<B>) -> Tensor<B, 2> {
        let per_clip = !B::ad_enabled(&input.device());
        let mut x = input;
        for index in 0..self.segment_count() {
            x = if per_clip && self.segment_kind(index) == SegmentKind::StemPerClip {
                Activation::cat(
                    (0..x.clips())
                        .map(|clip| self.forward_segment(index, x.clip(clip)))
                        .collect(),
                )
            } else {
                self.forward_segment(index, x)
            };
        }
        self.finish(x.into_tokens())
    }
}

/// An encoder's configuration, seen from above: what the model, the summary and the memory plan
/// need to know without building it.
pub trait ChainConfig {
    /// Width of the feature vector `finish` returns.
    fn dim(&self) -> usize;

    /// Dropout probability (the model's classifier dropout follows its encoders').
    fn dropout(&self) -> f64;

    /// How the chain's PyTorch reference names its parameters (and the classifier's), for
    /// `model.pretrained` and `vidtrain export`.
    fn pytorch_names(&self) -> PytorchNames {
        PytorchNames::VIDTRAIN
    }

    /// Tensors its PyTorch reference lays out differently (beyond burn-store's `Linear`
    /// transpose), converted on export and on import.
    fn pytorch_layouts(&self) -> Vec<PytorchLayout> {
        Vec::new()
    }

    /// The config keys besides the model's common ones (`model.backbone`, the transformer
    /// sizes, views, joints, classes, fusion) that decide this chain's weight shapes: saved
    /// beside every weights file (`<name>.architecture.json`) and compared on load.
    fn architecture_keys(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Joints per frame of a keypoint encoder; `None` for a chain that reads video.
    fn keypoint_joints(&self) -> Option<usize> {
        None
    }

    /// Elements of one clip's input (`t · h · w · 3` video, `t · joints · 3` keypoints).
    fn input_elements_per_clip(&self, input: InputShape) -> usize {
        match self.keypoint_joints() {
            Some(joints) => input.frames * joints * 3,
            None => input.frames * input.image * input.image * 3,
        }
    }

    /// The layer-table rows of the chain, in execution order, for `clips` clips of `input`:
    /// each segment's name (under `prefix`), parameters, output shape, kind and layer role; the
    /// last row is the finish. Activation costs are filled in by the summary from the roles.
    fn summary_rows(&self, prefix: &str, clips: usize, input: InputShape) -> Vec<LayerSummary>;
}

/// How every backbone is laid out: a few lead segments (a stem, an embedding, a pooling
/// bridge), then its blocks, then optionally one tail segment (a global pool), then a finish.
/// Implementing it implements [`SegmentChain`]: a backbone says what its lead segments are,
/// where its blocks are and how it finishes; the indexing is written once, here.
pub(crate) trait BlockChain<B: Backend> {
    /// The blocks' type (an encoder block, a Mamba block, a BasicBlock, an ST-GCN block).
    type Block: ChainBlock<B>;

    /// Segments before the blocks.
    const LEAD: usize;

    /// Segments after the blocks (0, or 1: a pooling bridge to `[n, 1, dim]` tokens).
    const TAIL: usize = 0;

    /// What lead segment `index` is.
    fn lead_kind(&self, index: usize) -> SegmentKind;

    /// Runs lead segment `index` alone.
    fn forward_lead(&self, index: usize, input: Activation<B>) -> Activation<B>;

    /// The layer of the stem step that lead segment `index` is, if it is one (lead segment 0
    /// reads the decoded clips: [`StemLayer::bind`]).
    fn lead_stem_layer(&self, _index: usize) -> Option<StemLayer<'_, B>> {
        None
    }

    /// The blocks, in order.
    fn blocks(&self) -> impl Iterator<Item = &Self::Block>;

    /// Blocks in the chain.
    fn block_count(&self) -> usize {
        self.blocks().count()
    }

    /// Runs the tail segment (only called when `TAIL` is 1).
    fn forward_tail(&self, input: Activation<B>) -> Activation<B> {
        input
    }

    /// The last segment's tokens `[n, tokens, dim]` → `[n, dim]`.
    fn finish_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2>;

    /// The block that segment `index` is, if it is one.
    fn block(&self, index: usize) -> Option<&Self::Block> {
        index
            .checked_sub(Self::LEAD)
            .and_then(|block| self.blocks().nth(block))
    }
}

/// A block of a [`BlockChain`]: one activation in, one out, and what `crate::recompute` replays
/// it as.
pub(crate) trait ChainBlock<B: Backend> {
    fn forward_block(&self, input: Activation<B>) -> Activation<B>;

    fn as_encoder_block(&self) -> Option<&EncoderBlock<B>> {
        None
    }

    fn as_mamba_block(&self) -> Option<&MambaBlock<B>> {
        None
    }
}

impl<B: Backend> ChainBlock<B> for EncoderBlock<B> {
    fn forward_block(&self, input: Activation<B>) -> Activation<B> {
        Activation::Tokens(self.forward(input.into_tokens()))
    }

    fn as_encoder_block(&self) -> Option<&EncoderBlock<B>> {
        Some(self)
    }
}

impl<B: Backend> ChainBlock<B> for MambaBlock<B> {
    fn forward_block(&self, input: Activation<B>) -> Activation<B> {
        Activation::Tokens(self.forward(input.into_tokens()))
    }

    fn as_mamba_block(&self) -> Option<&MambaBlock<B>> {
        Some(self)
    }
}

impl<B: Backend, C: BlockChain<B>> SegmentChain<B> for C {
    fn segment_count(&self) -> usize {
        C::LEAD + self.block_count() + C::TAIL
    }

    fn segment_kind(&self, index: usize) -> SegmentKind {
        if index < C::LEAD {
            self.lead_kind(index)
        } else if index < C::LEAD + self.block_count() {
            match self.mamba_block(index) {
                Some(_) => SegmentKind::ScanBlock,
                None => SegmentKind::Block,
            }
        } else {
            SegmentKind::Bridge
        }
    }

    fn forward_segment(&self, index: usize, input: Activation<B>) -> Activation<B> {
        if index < C::LEAD {
            return self.forward_lead(index, input);
        }
        match self.block(index) {
            Some(block) => block.forward_block(input),
            None => self.forward_tail(input),
        }
    }

    fn finish(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        self.finish_tokens(tokens)
    }

    fn encoder_block(&self, index: usize) -> Option<&EncoderBlock<B>> {
        self.block(index)?.as_encoder_block()
    }

    fn mamba_block(&self, index: usize) -> Option<&MambaBlock<B>> {
        self.block(index)?.as_mamba_block()
    }

    fn stem_step(&self, index: usize, input: &Activation<B>) -> Option<StemStep<'_, B>> {
        match input {
            Activation::Clips(clips) => {
                Some(self.lead_stem_layer(index)?.bind(index, clips.clone()))
            }
            _ => None,
        }
    }

    fn stem_layer(&self, index: usize) -> Option<StemLayer<'_, B>> {
        self.lead_stem_layer(index)
    }
}

/// A chain's usual finish: `norm` (LayerNorm or RMSNorm), then the mean over tokens in f32:
/// `[n, tokens, dim]` → `[n, dim]`.
pub(crate) fn norm_and_mean<B: Backend>(
    tokens: Tensor<B, 3>,
    norm: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 2> {
    let [n, _, dim] = tokens.dims();
    mean_dim_f32(norm(tokens), 1).reshape([n, dim])
}

/// The finish of a chain that pooled already: `[n, 1, dim]` → `[n, dim]`.
pub(crate) fn pooled_features<B: Backend>(tokens: Tensor<B, 3>) -> Tensor<B, 2> {
    let [n, _, dim] = tokens.dims();
    tokens.reshape([n, dim])
}

/// What a segment is: decides whether a [`RecomputeMode`] recomputes it, and how it is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// A stem step that treats each clip on its own (a convolution, a patch embedding), with no
    /// randomness: recomputed by `stem` and `all`, run and replayed one clip at a time. (The seed
    /// stem's convolutions have this kind but are differentiated by hand in every mode.)
    StemPerClip,
    /// A stem step with batch statistics (BatchNorm + ReLU): recomputed by `stem` and `all`,
    /// replayed whole. (The seed stem's are differentiated by hand in every mode.)
    StemBatch,
    /// A backbone block (recomputed by `encoder` and `all`): a transformer encoder block,
    /// replayed in three steps with attention one query block at a time; a 3-D ResNet
    /// BasicBlock or an ST-GCN block, replayed whole.
    Block,
    /// A Mamba block, replayed in every mode (`replay_mamba_block`): its selective scan is
    /// differentiated one chunk at a time from the chunk carries, as Mamba's own kernel
    /// recomputes its states in backward, so the `[n, tokens, inner, state]` states never exist
    /// whole (kept by autodiff they made VideoMamba-Ti at 128 px × 16 frames a 40 GiB step).
    ScanBlock,
    /// A cheap reshaping step between the two (never recomputed).
    Bridge,
}

impl SegmentKind {
    /// Whether `mode` recomputes segments of this kind.
    pub fn recomputed_by(self, mode: RecomputeMode) -> bool {
        self == SegmentKind::ScanBlock
            || matches!(
                (self, mode),
                (
                    SegmentKind::StemPerClip | SegmentKind::StemBatch,
                    RecomputeMode::Stem | RecomputeMode::All
                ) | (
                    SegmentKind::Block,
                    RecomputeMode::Encoder | RecomputeMode::All
                )
            )
    }
}

/// The tensor passed between segments.
#[derive(Debug, Clone)]
pub enum Activation<B: Backend> {
    /// Video clips: `[n, t, c, h, w]` as decoded, `[n, c, t, h, w]` inside the conv stem.
    Clips(Tensor<B, 5>),
    /// Keypoints: `[n, t, joints, 3]` as loaded, `[n, c, t, joints]` inside ST-GCN.
    Joints(Tensor<B, 4>),
    /// Tokens `[n, t, dim]`.
    Tokens(Tensor<B, 3>),
}

impl<B: Backend> Activation<B> {
    /// The clips; a segment fed the wrong kind is a bug in the chain, not an input error.
    pub fn into_clips(self) -> Tensor<B, 5> {
        match self {
            Activation::Clips(tensor) => tensor,
            other => panic!("segment expected clips, got {other:?}"),
        }
    }

    /// The keypoints.
    pub fn into_joints(self) -> Tensor<B, 4> {
        match self {
            Activation::Joints(tensor) => tensor,
            other => panic!("segment expected keypoints, got {other:?}"),
        }
    }

    /// The tokens.
    pub fn into_tokens(self) -> Tensor<B, 3> {
        match self {
            Activation::Tokens(tensor) => tensor,
            other => panic!("segment expected tokens, got {other:?}"),
        }
    }

    /// Clips (items on the first axis) in the activation.
    pub fn clips(&self) -> usize {
        match self {
            Activation::Clips(tensor) => tensor.dims()[0],
            Activation::Joints(tensor) => tensor.dims()[0],
            Activation::Tokens(tensor) => tensor.dims()[0],
        }
    }

    /// Clip `index` alone (first axis of length 1).
    pub(crate) fn clip(&self, index: usize) -> Self {
        match self {
            Activation::Clips(tensor) => Activation::Clips(tensor.clone().narrow(0, index, 1)),
            Activation::Joints(tensor) => Activation::Joints(tensor.clone().narrow(0, index, 1)),
            Activation::Tokens(tensor) => Activation::Tokens(tensor.clone().narrow(0, index, 1)),
        }
    }

    /// Concatenates per-clip activations back into one batch.
    pub(crate) fn cat(parts: Vec<Self>) -> Self {
        match parts.first() {
            Some(Activation::Clips(_)) => Activation::Clips(Tensor::cat(
                parts.into_iter().map(Self::into_clips).collect(),
                0,
            )),
            Some(Activation::Joints(_)) => Activation::Joints(Tensor::cat(
                parts.into_iter().map(Self::into_joints).collect(),
                0,
            )),
            Some(Activation::Tokens(_)) => Activation::Tokens(Tensor::cat(
                parts.into_iter().map(Self::into_tokens).collect(),
                0,
            )),
            None => panic!("no activations to concatenate"),
        }
    }

    pub(crate) fn device(&self) -> B::Device {
        match self {
            Activation::Clips(tensor) => tensor.device(),
            Activation::Joints(tensor) => tensor.device(),
            Activation::Tokens(tensor) => tensor.device(),
        }
    }
}
