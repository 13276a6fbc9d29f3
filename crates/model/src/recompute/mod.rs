//! Activation recompute (gradient checkpointing) for Burn, which has no per-block checkpoint API.
//!
//! The encoders are chains of segments (stem convolutions and normalisations, a bridge, encoder
//! blocks). A recomputed segment runs on the model with gradient tracking off, so it records no
//! graph and its internal activations are freed as it goes; only its input is kept. Consecutive
//! kept segments run tracked as one stretch and keep their graph. The loss is differentiated
//! down to the chains' last outputs, then each stretch is walked backwards: a recomputed segment
//! is replayed (with the same dropout seed) and `sum(output · upstream)` is differentiated to get
//! the parameter gradients and the gradient of its input, the upstream of the stretch before.
//! Gradients equal those of one plain backward.
//!
//! Replays are shaped to keep their own peak small: a per-clip segment (ViViT's tubelet
//! embedding) is replayed one clip at a time, an encoder block's attention one query block at
//! a time, so the `[batch, heads, tokens, tokens]` scores never exist whole, and a Mamba block's
//! selective scan one chunk at a time, so its `[batch, tokens, inner, state]` states never do.
//!
//! The seed stem's steps (convolutions, BatchNorm + ReLU) are neither kept nor replayed: in every
//! mode each runs untracked, keeps only its input, and is differentiated by hand
//! ([`crate::StemStep::gradients`]), which is faster on burn-flex than Burn's generic backward and
//! keeps less than autodiff would.
//!
//! As with PyTorch's checkpointing, a recomputed BatchNorm updates its running statistics a
//! second time (batch statistics, and so gradients, are unaffected).

mod replay;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::CheckpointMode;

use crate::ActionModel;
use crate::layers::encoder::query_blocks;
use replay::{replay_encoder_block, replay_mamba_block};

/// What a segment is: decides whether a [`CheckpointMode`] recomputes it, and how it is replayed.
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
    /// A cheap reshaping step between the two (never recomputed).
    Bridge,
}

impl SegmentKind {
    /// Whether `mode` recomputes segments of this kind.
    pub fn recomputed_by(self, mode: CheckpointMode) -> bool {
        matches!(
            (self, mode),
            (
                SegmentKind::StemPerClip | SegmentKind::StemBatch,
                CheckpointMode::Stem | CheckpointMode::All
            ) | (
                SegmentKind::Block,
                CheckpointMode::Encoder | CheckpointMode::All
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

impl<B: AutodiffBackend> Activation<B> {
    fn detach(self) -> Self {
        match self {
            Activation::Clips(tensor) => Activation::Clips(tensor.detach()),
            Activation::Joints(tensor) => Activation::Joints(tensor.detach()),
            Activation::Tokens(tensor) => Activation::Tokens(tensor.detach()),
        }
    }

    /// A detached leaf that records its gradient.
    fn leaf(self) -> Self {
        match self {
            Activation::Clips(tensor) => Activation::Clips(tensor.detach().require_grad()),
            Activation::Joints(tensor) => Activation::Joints(tensor.detach().require_grad()),
            Activation::Tokens(tensor) => Activation::Tokens(tensor.detach().require_grad()),
        }
    }

    /// This leaf's gradient in `grads`, as a constant of the autodiff backend.
    fn gradient(&self, grads: &B::Gradients) -> Option<Activation<B>> {
        Some(match self {
            Activation::Clips(tensor) => Activation::Clips(Tensor::from_inner(tensor.grad(grads)?)),
            Activation::Joints(tensor) => {
                Activation::Joints(Tensor::from_inner(tensor.grad(grads)?))
            }
            Activation::Tokens(tensor) => {
                Activation::Tokens(Tensor::from_inner(tensor.grad(grads)?))
            }
        })
    }

    /// `sum(self · upstream)`: differentiating it pushes `upstream` through this output's graph.
    fn dot(self, upstream: Activation<B>) -> Tensor<B, 1> {
        match (self, upstream) {
            (Activation::Clips(a), Activation::Clips(g)) => (a * g).sum(),
            (Activation::Joints(a), Activation::Joints(g)) => (a * g).sum(),
            (Activation::Tokens(a), Activation::Tokens(g)) => (a * g).sum(),
            (a, g) => panic!("gradient of the wrong kind: {a:?} vs {g:?}"),
        }
    }
}

/// Which encoder of the model a chain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    Rgb,
    Keypoints,
}

/// One recomputed segment, one stem step, or a stretch of consecutive kept segments: its input,
/// and how it is differentiated.
struct Saved<B: AutodiffBackend> {
    input: Activation<B>,
    backward: StretchBackward<B>,
    /// Index of its (first) segment.
    first: usize,
    /// Dropout seed of its first segment.
    seed: u64,
}

/// How a saved stretch is differentiated.
enum StretchBackward<B: AutodiffBackend> {
    /// Kept segments: their output, whose graph autodiff walks.
    Graph(Activation<B>),
    /// A recomputed segment: replayed from its input.
    Replay,
    /// A stem step (convolution, BatchNorm + ReLU): run untracked, differentiated by hand from
    /// its input ([`crate::StemStep::gradients`]); nothing is replayed.
    ByHand,
}

/// Sums per-segment gradients into the model's parameter gradients.
struct Gradients<'a, B: AutodiffBackend> {
    model: &'a ActionModel<B>,
    sum: GradientsAccumulator<ActionModel<B>>,
}

impl<B: AutodiffBackend> Gradients<'_, B> {
    fn add(&mut self, mut grads: B::Gradients) {
        self.add_params(GradientsParams::from_module(&mut grads, self.model));
    }

    fn add_params(&mut self, params: GradientsParams) {
        self.sum.accumulate(self.model, params);
    }
}

impl<B: AutodiffBackend> ActionModel<B> {
    /// One micro-batch's weighted loss gradients with activation recompute per `mode`.
    ///
    /// `loss` maps class scores to the (unweighted, mean) loss; the gradients are those of
    /// `weight · loss`. Dropout is reseeded per segment from `seed`, so a recomputed segment draws
    /// the masks of its first run. Returns the loss value and the parameter gradients.
    pub fn loss_and_gradients(
        &self,
        video: Option<Tensor<B, 6>>,
        keypoints: Option<Tensor<B, 5>>,
        loss: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 1>,
        weight: f64,
        mode: CheckpointMode,
        seed: u64,
    ) -> (f32, GradientsParams) {
        let (inputs, batch, views) = self.chain_inputs(video, keypoints);
        let device = inputs[0].1.device();
        let mut gradients = Gradients {
            model: self,
            sum: GradientsAccumulator::new(),
        };
        // The same weights with gradient tracking off: a segment run on it with an untracked input
        // records no graph at all (BatchNorm and dropout still behave as in training, because the
        // backend is the autodiff one), so its internal activations are freed as it goes.
        let untracked = self.clone().no_grad();

        // Forward, segment by segment. A recomputed segment runs untracked and keeps only its
        // input; consecutive kept segments run as one tracked stretch (cutting it at every segment
        // would hold each inner boundary twice: in the graph and as a saved input).
        let mut chains = Vec::with_capacity(inputs.len());
        for (chain_number, (chain, input)) in inputs.into_iter().enumerate() {
            let segment_seed =
                |index: usize| seed ^ ((chain_number as u64) << 48) ^ ((index as u64) << 32);
            let count = self.segment_count(chain);
            let mut saved: Vec<Saved<B>> = Vec::new();
            let mut x = input;
            let mut index = 0;
            while index < count {
                let kind = self.segment_kind(chain, index);
                let first = index;
                let input = x.detach();
                if let Some(step) = untracked.stem_step(chain, index, &input) {
                    // Whatever the mode, a stem step keeps only its input and is differentiated
                    // by hand, without a replay.
                    x = Activation::Clips(step.forward_untracked());
                    saved.push(Saved {
                        input,
                        backward: StretchBackward::ByHand,
                        first,
                        seed: segment_seed(first),
                    });
                    index += 1;
                } else if kind.recomputed_by(mode) {
                    let seed = segment_seed(index);
                    B::seed(&device, seed);
                    let output = if kind == SegmentKind::StemPerClip {
                        Activation::cat(
                            (0..input.clips())
                                .map(|clip| {
                                    untracked.run_segment(chain, index, input.clip(clip), seed)
                                })
                                .collect(),
                        )
                    } else {
                        untracked.run_segment(chain, index, input.clone(), seed)
                    };
                    index += 1;
                    x = output;
                    // The output's (empty) graph is dropped here; only the input is kept.
                    saved.push(Saved {
                        input,
                        backward: StretchBackward::Replay,
                        first,
                        seed: segment_seed(first),
                    });
                } else {
                    let input = if index == 0 { input } else { input.leaf() };
                    let mut output = input.clone();
                    while index < count
                        && !self.segment_kind(chain, index).recomputed_by(mode)
                        && self.stem_step(chain, index, &output).is_none()
                    {
                        let seed = segment_seed(index);
                        B::seed(&device, seed);
                        output = self.run_segment(chain, index, output, seed);
                        index += 1;
                    }
                    x = output.clone().detach();
                    saved.push(Saved {
                        input,
                        backward: StretchBackward::Graph(output),
                        first,
                        seed: segment_seed(first),
                    });
                }
            }
            chains.push((chain, saved, x.leaf()));
        }

        // The head and the loss, differentiated down to each chain's last output.
        B::seed(&device, seed ^ (u64::MAX >> 8));
        let features: Vec<(Chain, Tensor<B, 2>)> = chains
            .iter()
            .map(|(chain, _, last)| (*chain, self.finish(*chain, last.clone().into_tokens())))
            .collect();
        let scores = self.head_from_features(features, batch, views);
        let loss_value = loss(scores) * weight;
        let value: f32 = loss_value.clone().into_scalar().elem();
        let grads = loss_value.backward();
        let last_gradients: Vec<Option<Activation<B>>> = chains
            .iter()
            .map(|(_, _, last)| last.gradient(&grads))
            .collect();
        gradients.add(grads);

        // Backward through each chain's stretches, last first.
        for ((chain, saved, _), upstream) in chains.into_iter().zip(last_gradients) {
            let Some(mut upstream) = upstream else {
                continue;
            };
            for stretch in saved.into_iter().rev() {
                // The first segment's input is the data: no gradient wanted.
                let wants_input_gradient = stretch.first > 0;
                let input_gradient = match stretch.backward {
                    StretchBackward::Graph(output) => {
                        let grads = output.dot(upstream).backward();
                        let input_gradient = stretch.input.gradient(&grads);
                        gradients.add(grads);
                        input_gradient
                    }
                    StretchBackward::ByHand => {
                        let step = self
                            .stem_step(chain, stretch.first, &stretch.input)
                            .expect("a stretch differentiated by hand is a stem step");
                        let (params, input_gradient) =
                            step.gradients(upstream.into_clips(), wants_input_gradient);
                        gradients.add_params(params);
                        // Only a chain's first step reads its input rearranged, and no gradient
                        // is wanted there.
                        input_gradient.map(Activation::Clips)
                    }
                    StretchBackward::Replay => self.replay_segment(
                        chain,
                        stretch.first,
                        stretch.input,
                        upstream,
                        stretch.seed,
                        wants_input_gradient,
                        &mut gradients,
                    ),
                };
                if !wants_input_gradient {
                    break;
                }
                upstream = input_gradient
                    .expect("a stretch input after the first is a leaf that records gradients");
            }
        }
        (value / weight as f32, gradients.sum.grads())
    }

    /// Runs segment `index`; an encoder block seeds its attention dropout per query block from
    /// the segment's `seed`, so that a replay can draw one query block's masks alone.
    fn run_segment(
        &self,
        chain: Chain,
        index: usize,
        input: Activation<B>,
        seed: u64,
    ) -> Activation<B> {
        match self.encoder_block(chain, index) {
            Some(block) => {
                Activation::Tokens(block.forward_seeded(input.into_tokens(), Some(seed)))
            }
            None => self.forward_segment(chain, index, input),
        }
    }

    /// Recomputes a segment whose graph was dropped and pushes `upstream` (the gradient of its
    /// output) through it: parameter gradients go to `gradients`; returns its input's gradient.
    #[allow(clippy::too_many_arguments)]
    fn replay_segment(
        &self,
        chain: Chain,
        index: usize,
        input: Activation<B>,
        upstream: Activation<B>,
        seed: u64,
        wants_input_gradient: bool,
        gradients: &mut Gradients<'_, B>,
    ) -> Option<Activation<B>> {
        let device = input.device();
        let track = |input: Activation<B>| {
            if wants_input_gradient {
                input.leaf()
            } else {
                input
            }
        };
        B::seed(&device, seed);
        if let Some(block) = self.mamba_block(chain, index) {
            return replay_mamba_block(
                block,
                input.into_tokens(),
                upstream.into_tokens(),
                wants_input_gradient,
                gradients,
            )
            .map(Activation::Tokens);
        }
        let query_block_count = match &input {
            Activation::Tokens(tokens) => query_blocks(tokens.dims()[1]).len(),
            _ => 1,
        };
        match (
            self.segment_kind(chain, index),
            self.encoder_block(chain, index),
        ) {
            // A block whose attention fits one query block is replayed whole, like any segment.
            (SegmentKind::Block, Some(block)) if query_block_count > 1 => {
                let input = input.into_tokens();
                let upstream = upstream.into_tokens();
                replay_encoder_block(
                    block,
                    input,
                    upstream,
                    seed,
                    wants_input_gradient,
                    gradients,
                )
                .map(Activation::Tokens)
            }
            (SegmentKind::StemPerClip, _) => {
                let mut input_gradients = Vec::new();
                for clip in 0..input.clips() {
                    let clip_input = track(input.clip(clip));
                    let output = self.forward_segment(chain, index, clip_input.clone());
                    let grads = output.dot(upstream.clip(clip)).backward();
                    input_gradients.extend(clip_input.gradient(&grads));
                    gradients.add(grads);
                }
                wants_input_gradient.then(|| Activation::cat(input_gradients))
            }
            _ => {
                let input = track(input);
                let output = self.run_segment(chain, index, input.clone(), seed);
                let grads = output.dot(upstream).backward();
                let input_gradient = input.gradient(&grads);
                gradients.add(grads);
                input_gradient
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::encoder::QUERY_BLOCK_TOKENS;
    use crate::layers::graph::Skeleton;
    use crate::{
        ActionModelConfig, BackboneConfig, KeypointEncoderConfig, KeypointMambaConfig,
        MambaBlockConfig, Resnet3dConfig, StgcnConfig, TestBackend, VideoMambaConfig,
        VideoTransformerConfig, VivitConfig,
    };
    use burn::backend::Autodiff;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::Distribution;
    use vidtrain_config::{Backbone, FusionMode, InputType, ModalityFusion};

    type B = Autodiff<TestBackend>;

    /// Every parameter's gradient, in visiting order.
    struct CollectGradients<'a>(&'a GradientsParams, Vec<Vec<f32>>);

    impl ModuleVisitor<B> for CollectGradients<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let gradient = self
                .0
                .get::<TestBackend, D>(param.id)
                .map(|tensor| tensor.into_data().to_vec::<f32>().unwrap())
                .unwrap_or_default();
            self.1.push(gradient);
        }
    }

    struct Case {
        model: ActionModel<B>,
        video: Option<Tensor<B, 6>>,
        keypoints: Option<Tensor<B, 5>>,
        labels: Tensor<B, 1, Int>,
    }

    /// The shapes of one gradient-check case.
    #[derive(Clone, Copy)]
    struct Shape {
        backbone: Backbone,
        /// Frames per clip (above `QUERY_BLOCK_TOKENS`, keypoint attention runs in blocks).
        frames: usize,
    }

    const SMALL: Shape = Shape {
        backbone: Backbone::Transformer,
        frames: 4,
    };

    fn case(input: InputType, fusion: FusionMode, dropout: f64) -> Case {
        case_of(SMALL, input, fusion, dropout)
    }

    fn case_of(shape: Shape, input: InputType, fusion: FusionMode, dropout: f64) -> Case {
        let device = Default::default();
        B::seed(&device, 3);
        let frames = shape.frames;
        let backbone = match shape.backbone {
            Backbone::Transformer => {
                BackboneConfig::Transformer(VideoTransformerConfig::new(8, 2, 2, 16, dropout))
            }
            // 4 frames of 32×32 in 2×8×8 tubelets: 2·4·4 = 32 tokens.
            Backbone::Vivit => BackboneConfig::Vivit(VivitConfig::new(
                8,
                2,
                2,
                16,
                dropout,
                [2, 8, 8],
                [frames, 32, 32],
            )),
            Backbone::Resnet3d | Backbone::Stgcn => {
                BackboneConfig::Resnet3d(Resnet3dConfig::new(10, 4, dropout))
            }
            // Chunks of 3 steps: 32 tokens in 11 chunks, the last one short.
            Backbone::Mamba => BackboneConfig::Mamba(
                VideoMambaConfig::new(mamba_block(), 2, [2, 8, 8], [frames, 32, 32])
                    .with_dropout(dropout),
            ),
        };
        let size = match shape.backbone {
            Backbone::Vivit | Backbone::Mamba => 32,
            _ => 16,
        };
        // ST-GCN as the keypoint encoder when asked for, on a 4-joint star.
        let keypoint_encoder = if shape.backbone == Backbone::Stgcn {
            let star = Skeleton {
                joints: 4,
                edges: vec![[1, 0], [1, 2], [1, 3]],
                center: 1,
            };
            StgcnConfig::for_skeleton(&star, 4, dropout).into()
        } else if shape.backbone == Backbone::Mamba {
            KeypointMambaConfig::new(4, mamba_block(), 2)
                .with_dropout(dropout)
                .into()
        } else {
            KeypointEncoderConfig::new(4, 8, 2, 2, 16, dropout).into()
        };
        let config = ActionModelConfig {
            backbone: (input != InputType::Kpt).then_some(backbone),
            keypoint_encoder: (input != InputType::Rgb).then_some(keypoint_encoder),
            views: 2,
            classes: 5,
            fusion,
            // Averaging needs equal widths: the transformers' are, the ResNet's and ST-GCN's not.
            modality_fusion: match shape.backbone {
                Backbone::Transformer | Backbone::Vivit | Backbone::Mamba => ModalityFusion::Mean,
                Backbone::Resnet3d | Backbone::Stgcn => ModalityFusion::Concat,
            },
            compute_dtype: burn::tensor::FloatDType::F32,
        };
        let model: ActionModel<B> = config.init(&device);
        model.materialize_parameters();
        Case {
            model,
            video: (input != InputType::Kpt).then(|| {
                Tensor::random(
                    [3, 2, frames, size, size, 3],
                    Distribution::Default,
                    &device,
                )
            }),
            keypoints: (input != InputType::Rgb)
                .then(|| Tensor::random([3, 2, frames, 4, 3], Distribution::Default, &device)),
            labels: Tensor::from_data(TensorData::new(vec![0i64, 3, 4], [3]), &device),
        }
    }

    fn mamba_block() -> MambaBlockConfig {
        MambaBlockConfig::new(8).with_state(4).with_chunk(3)
    }

    fn collect(model: &ActionModel<B>, grads: &GradientsParams) -> Vec<Vec<f32>> {
        let mut visitor = CollectGradients(grads, Vec::new());
        model.visit(&mut visitor);
        visitor.1
    }

    /// Gradients of `0.5 · loss` through one plain backward.
    /// `loss_and_gradients` of `case` (weight 0.5, seed 11), checking that the scores reaching
    /// the loss are f32 whatever the compute dtype.
    fn f32_loss_gradients(case: &Case, mode: CheckpointMode) -> (f32, GradientsParams) {
        case.model.loss_and_gradients(
            case.video.clone(),
            case.keypoints.clone(),
            |scores| {
                assert_eq!(scores.dtype(), burn::tensor::DType::F32);
                CrossEntropyLossConfig::new()
                    .init(&Default::default())
                    .forward(scores, case.labels.clone())
            },
            0.5,
            mode,
            11,
        )
    }

    fn plain(case: &Case) -> Vec<Vec<f32>> {
        let device = Default::default();
        let scores = case
            .model
            .forward(case.video.clone(), case.keypoints.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(scores, case.labels.clone());
        let grads = GradientsParams::from_grads((loss * 0.5).backward(), &case.model);
        collect(&case.model, &grads)
    }

    fn segmented(case: &Case, mode: CheckpointMode) -> Vec<Vec<f32>> {
        let device = Default::default();
        let labels = case.labels.clone();
        let (_, grads) = case.model.loss_and_gradients(
            case.video.clone(),
            case.keypoints.clone(),
            |scores| {
                CrossEntropyLossConfig::new()
                    .init(&device)
                    .forward(scores, labels)
            },
            0.5,
            mode,
            11,
        );
        collect(&case.model, &grads)
    }

    fn assert_equal(expected: &[Vec<f32>], got: &[Vec<f32>], what: &str) {
        assert_close(expected, got, 1e-5, 1e-6, what);
    }

    /// Every parameter's gradient within `relative` of `expected` (in L2 norm). A gradient whose
    /// true value is zero (a convolution bias under BatchNorm) must stay below `noise` times the
    /// model's largest gradient norm in both runs.
    fn assert_close(
        expected: &[Vec<f32>],
        got: &[Vec<f32>],
        relative: f64,
        noise: f64,
        what: &str,
    ) {
        assert_eq!(expected.len(), got.len());
        let norm = |values: &[f32]| {
            values
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let largest = expected
            .iter()
            .map(|gradient| norm(gradient))
            .fold(0.0, f64::max);
        for (index, (a, b)) in expected.iter().zip(got).enumerate() {
            assert_eq!(
                a.len(),
                b.len(),
                "{what}: parameter {index} has a gradient in only one run"
            );
            assert!(
                b.iter().all(|value| value.is_finite()),
                "{what}: parameter {index} has a non-finite gradient"
            );
            let difference: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let noise = noise * largest;
            if norm(a) <= noise {
                assert!(
                    norm(b) <= noise,
                    "{what}: parameter {index} has gradient {:e} where it should be 0",
                    norm(b)
                );
                continue;
            }
            let error = norm(&difference) / norm(a);
            assert!(
                error <= relative,
                "{what}: parameter {index} differs by {error:e} (norms {:e} vs {:e})",
                norm(a),
                norm(b)
            );
        }
    }

    #[test]
    fn recompute_gives_the_gradients_of_a_plain_backward() {
        let _rng = crate::rng_lock();
        for (input, fusion) in [
            (InputType::Rgb, FusionMode::LogitMean),
            (InputType::Rgb, FusionMode::FeatureConcat),
            (InputType::Rgb, FusionMode::ProbMean),
            (InputType::Kpt, FusionMode::FeatureMean),
            (InputType::RgbKpt, FusionMode::LogitMean),
        ] {
            let case = case(input, fusion, 0.0);
            let expected = plain(&case);
            // BatchNorm running statistics are visited like parameters but have no gradient.
            let with_gradient = expected
                .iter()
                .filter(|gradient| !gradient.is_empty())
                .count();
            assert!(
                with_gradient >= 20,
                "{input:?}: only {with_gradient} gradients"
            );
            for mode in MODES {
                assert_equal(
                    &expected,
                    &segmented(&case, mode),
                    &format!("{input:?} {fusion:?} {mode:?}"),
                );
            }
        }
    }

    const MODES: [CheckpointMode; 4] = [
        CheckpointMode::None,
        CheckpointMode::Encoder,
        CheckpointMode::Stem,
        CheckpointMode::All,
    ];

    #[test]
    fn vivit_recompute_gives_the_gradients_of_a_plain_backward() {
        let _rng = crate::rng_lock();
        let shape = Shape {
            backbone: Backbone::Vivit,
            frames: 4,
        };
        for (input, fusion) in [
            (InputType::Rgb, FusionMode::FeatureMean),
            (InputType::Rgb, FusionMode::ProbMean),
            (InputType::RgbKpt, FusionMode::FeatureConcat),
        ] {
            let case = case_of(shape, input, fusion, 0.0);
            let expected = plain(&case);
            for mode in MODES {
                assert_equal(
                    &expected,
                    &segmented(&case, mode),
                    &format!("vivit {input:?} {fusion:?} {mode:?}"),
                );
            }
        }
    }

    /// The 3-D ResNet (stem differentiated by hand, BasicBlocks replayed) and ST-GCN (input
    /// BatchNorm and blocks replayed), alone and fused with each other.
    #[test]
    fn resnet_and_stgcn_recompute_gives_the_gradients_of_a_plain_backward() {
        let _rng = crate::rng_lock();
        for (backbone, input, fusion) in [
            (Backbone::Resnet3d, InputType::Rgb, FusionMode::LogitMean),
            (
                Backbone::Resnet3d,
                InputType::Rgb,
                FusionMode::FeatureConcat,
            ),
            (Backbone::Stgcn, InputType::Kpt, FusionMode::ProbMean),
            (Backbone::Stgcn, InputType::RgbKpt, FusionMode::FeatureMean),
        ] {
            assert_every_mode_matches_a_plain_backward(backbone, input, fusion);
        }
    }

    /// Every recompute mode gives the gradients of a plain backward, and with dropout the
    /// replayed masks are those of the first run.
    fn assert_every_mode_matches_a_plain_backward(
        backbone: Backbone,
        input: InputType,
        fusion: FusionMode,
    ) {
        let shape = Shape {
            backbone,
            frames: 4,
        };
        let case = case_of(shape, input, fusion, 0.0);
        let expected = plain(&case);
        for mode in MODES {
            assert_equal(
                &expected,
                &segmented(&case, mode),
                &format!("{backbone:?} {input:?} {fusion:?} {mode:?}"),
            );
        }
        let case = case_of(shape, input, fusion, 0.3);
        assert_equal(
            &segmented(&case, CheckpointMode::None),
            &segmented(&case, CheckpointMode::All),
            &format!("{backbone:?} {input:?} with dropout 0.3"),
        );
    }

    /// VideoMamba and the keypoint Mamba: a recomputed block replays its scans chunk by chunk.
    #[test]
    fn mamba_recompute_gives_the_gradients_of_a_plain_backward() {
        let _rng = crate::rng_lock();
        for (input, fusion) in [
            (InputType::Rgb, FusionMode::LogitMean),
            (InputType::Kpt, FusionMode::FeatureConcat),
            (InputType::RgbKpt, FusionMode::FeatureMean),
        ] {
            assert_every_mode_matches_a_plain_backward(Backbone::Mamba, input, fusion);
        }
    }

    #[test]
    fn attention_replayed_in_query_blocks_gives_the_gradients_of_a_plain_backward() {
        let _rng = crate::rng_lock();
        // More tokens than one query block: attention runs and is replayed block by block.
        let shape = Shape {
            backbone: Backbone::Transformer,
            frames: QUERY_BLOCK_TOKENS + 44,
        };
        let case = case_of(shape, InputType::Kpt, FusionMode::LogitMean, 0.0);
        let expected = plain(&case);
        for mode in [CheckpointMode::None, CheckpointMode::All] {
            assert_equal(
                &expected,
                &segmented(&case, mode),
                &format!("{} tokens {mode:?}", shape.frames),
            );
        }
        // With dropout, the replay draws each block's masks again.
        let case = case_of(shape, InputType::Kpt, FusionMode::LogitMean, 0.3);
        assert_equal(
            &segmented(&case, CheckpointMode::None),
            &segmented(&case, CheckpointMode::All),
            "query blocks with dropout 0.3",
        );
    }

    /// Mixed precision plumbing, checked with f64 as the compute dtype, where the result is exact
    /// enough to compare tightly: every layer must cast, or a binary op between dtypes fails;
    /// gradients must arrive in f32 on the f32 master weights and equal the f32 ones up to f32
    /// rounding.
    #[test]
    fn compute_in_another_dtype_keeps_f32_master_gradients() {
        let _rng = crate::rng_lock();
        for backbone in [
            Backbone::Transformer,
            Backbone::Vivit,
            Backbone::Resnet3d,
            Backbone::Stgcn,
            Backbone::Mamba,
        ] {
            let shape = Shape {
                backbone,
                frames: 4,
            };
            let mut case = case_of(shape, InputType::RgbKpt, FusionMode::ProbMean, 0.0);
            let expected = plain(&case);
            case.model.compute_dtype = burn::tensor::FloatDType::F64;
            for mode in MODES {
                let (_, grads) = f32_loss_gradients(&case, mode);
                // The f32 reference carries f32 rounding through ten ST-GCN blocks plus the
                // ResNet: a few 1e-5 relative at most; a missing cast fails outright.
                assert_close(
                    &expected,
                    &collect(&case.model, &grads),
                    5e-5,
                    1e-6,
                    &format!("{backbone:?} f64 compute {mode:?}"),
                );
            }
            let scores = case
                .model
                .forward(case.video.clone(), case.keypoints.clone());
            assert_eq!(scores.dtype(), burn::tensor::DType::F32);
        }
    }

    /// Mixed precision for real on the CPU backend (burn-flex computes in f16 and bf16): for
    /// each model (Mamba's scans stay in f32) and every recompute mode, the f32 master gradients of a bf16 or f16 run are
    /// within a stated tolerance of the f32 run's — bf16 keeps 8 mantissa bits (relative
    /// rounding 2^-9), f16 11 (2^-12), and the errors of a few dozen ops add up — and the scores
    /// reaching the loss are f32.
    #[test]
    fn half_precision_gradients_are_close_to_f32() {
        let _rng = crate::rng_lock();
        use burn::tensor::FloatDType;
        for backbone in [Backbone::Transformer, Backbone::Vivit, Backbone::Mamba] {
            let shape = Shape {
                backbone,
                frames: 4,
            };
            let mut case = case_of(shape, InputType::RgbKpt, FusionMode::ProbMean, 0.0);
            let expected = plain(&case);
            for (dtype, relative) in [(FloatDType::BF16, 0.08), (FloatDType::F16, 0.01)] {
                case.model.compute_dtype = dtype;
                for mode in MODES {
                    let (loss, grads) = f32_loss_gradients(&case, mode);
                    assert!(
                        loss.is_finite(),
                        "{backbone:?} {dtype:?} {mode:?}: loss {loss}"
                    );
                    assert_close(
                        &expected,
                        &collect(&case.model, &grads),
                        relative,
                        relative,
                        &format!("{backbone:?} {dtype:?} compute {mode:?}"),
                    );
                }
            }
        }
    }

    #[test]
    fn recomputed_dropout_replays_the_first_masks() {
        let _rng = crate::rng_lock();
        let case = case(InputType::RgbKpt, FusionMode::FeatureConcat, 0.3);
        let kept = segmented(&case, CheckpointMode::None);
        assert_equal(
            &kept,
            &segmented(&case, CheckpointMode::None),
            "dropout 0.3 twice",
        );
        assert_equal(&kept, &segmented(&case, CheckpointMode::All), "dropout 0.3");
        // And dropout is really on: a plain backward (other masks) gives other gradients.
        let plain = plain(&case);
        assert!(kept.iter().zip(&plain).any(|(a, b)| a != b));
    }

    #[test]
    fn modes_recompute_the_segments_they_name() {
        let _rng = crate::rng_lock();
        use CheckpointMode::*;
        for stem in [SegmentKind::StemPerClip, SegmentKind::StemBatch] {
            assert!(stem.recomputed_by(Stem) && stem.recomputed_by(All));
            assert!(!stem.recomputed_by(Encoder) && !stem.recomputed_by(None));
        }
        assert!(
            SegmentKind::Block.recomputed_by(Encoder) && !SegmentKind::Block.recomputed_by(Stem)
        );
        assert!(!SegmentKind::Bridge.recomputed_by(All));
    }
}
