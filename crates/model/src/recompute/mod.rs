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
//! A Mamba block is replayed in every mode, `none` included (`SegmentKind::ScanBlock`): kept by
//! autodiff, its chunked scan held `(2·log₂ chunk + 3)` state-sized values per direction.
//!
//! What is kept outside Burn's graph — the stem steps' inputs, every recomputed segment's input
//! — can be kept in fewer bits (`model.activation_bits`, [`KeptActivations`]): block-wise codes
//! with stochastic rounding ([`crate::quantize`]), restored for the replay, or read piece by
//! piece by the stem's CPU kernels, with a BatchNorm + ReLU step's ReLU gate kept exactly beside
//! them. The forward, and so the loss, is untouched; only gradients see the rounding.
//!
//! As with PyTorch's checkpointing, a recomputed BatchNorm updates its running statistics a
//! second time (batch statistics, and so gradients, are unaffected).

mod kept;
mod pull_back;
mod replay;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::StemStep;
use crate::chain::{Activation, SegmentChain, SegmentKind};
use crate::gradient_sums::GradientsAccumulator;
use crate::layers::batch_norm::ReluGate;
use crate::layers::encoder::query_blocks;
use crate::quantize::CompressedKeeping;
pub use kept::KeptActivations;
use kept::{KeptInput, ReluMask, flatten};
use replay::{replay_encoder_block, replay_mamba_block};

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

    /// A scalar whose gradient with respect to this output is `upstream`: differentiating it
    /// pushes `upstream` through this output's graph. `sum(self · upstream)`, or on the CPU an op
    /// that hands `upstream` over without computing it ([`pull_back`]).
    fn dot(self, upstream: Activation<B>) -> Tensor<B, 1> {
        fn scalar<B: Backend, const D: usize>(a: Tensor<B, D>, g: Tensor<B, D>) -> Tensor<B, 1> {
            pull_back::pulled_back(a, g).unwrap_or_else(|(a, g)| (a * g).sum())
        }
        match (self, upstream) {
            (Activation::Clips(a), Activation::Clips(g)) => scalar(a, g),
            (Activation::Joints(a), Activation::Joints(g)) => scalar(a, g),
            (Activation::Tokens(a), Activation::Tokens(g)) => scalar(a, g),
            (a, g) => panic!("gradient of the wrong kind: {a:?} vs {g:?}"),
        }
    }
}

/// One recomputed segment, one stem step, or a stretch of consecutive kept segments: its input,
/// and how it is differentiated.
struct Saved<B: AutodiffBackend> {
    input: KeptInput<B>,
    /// A BatchNorm + ReLU step's gate, kept when its input is compressed.
    gate: Option<ReluMask<B::InnerBackend>>,
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
struct Gradients<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    model: &'a M,
    sum: GradientsAccumulator,
    backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Gradients<'_, B, M> {
    fn add(&mut self, mut grads: B::Gradients) {
        self.add_params(GradientsParams::from_module(&mut grads, self.model));
    }

    fn add_params(&mut self, params: GradientsParams) {
        self.sum.accumulate(self.model, params);
    }
}

/// One encoder of a model in a recompute step: its chain, the same chain on the weights with
/// gradient tracking off, and its input.
pub(crate) struct ChainInput<'a, B: AutodiffBackend> {
    pub(crate) tracked: &'a dyn SegmentChain<B>,
    /// A segment run on it with an untracked input records no graph at all (BatchNorm and
    /// dropout still behave as in training, because the backend is the autodiff one), so its
    /// internal activations are freed as it goes.
    pub(crate) untracked: &'a dyn SegmentChain<B>,
    pub(crate) input: Activation<B>,
}

/// One micro-batch's weighted loss gradients for `model`, whose encoders are `chains` and whose
/// fusion and classifier are `head` (from each chain's feature vector, in order), with activation
/// recompute and compression per `keeping`.
///
/// `loss` maps class scores to the (unweighted, mean) loss; the gradients are those of
/// `weight · loss`. Dropout is reseeded per segment from `seed`, so a recomputed segment draws
/// the masks of its first run. Returns the loss value and the parameter gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_and_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    chains: Vec<ChainInput<'_, B>>,
    head: impl FnOnce(Vec<Tensor<B, 2>>) -> Tensor<B, 2>,
    loss: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 1>,
    weight: f64,
    keeping: KeptActivations,
    seed: u64,
) -> (f32, GradientsParams) {
    let KeptActivations {
        recompute: mode,
        bits,
    } = keeping;
    let device = chains[0].input.device();
    let mut gradients = Gradients {
        model,
        sum: GradientsAccumulator::default(),
        backend: std::marker::PhantomData,
    };

    // Forward, segment by segment. A recomputed segment runs untracked and keeps only its
    // input; consecutive kept segments run as one tracked stretch (cutting it at every segment
    // would hold each inner boundary twice: in the graph and as a saved input).
    let mut runs = Vec::with_capacity(chains.len());
    for (chain_number, chain) in chains.into_iter().enumerate() {
        let ChainInput {
            tracked,
            untracked,
            input,
        } = chain;
        let segment_seed =
            |index: usize| seed ^ ((chain_number as u64) << 48) ^ ((index as u64) << 32);
        let count = tracked.segment_count();
        let mut saved: Vec<Saved<B>> = Vec::new();
        // The map of the last step, when it was BatchNorm + ReLU on the CPU kernels.
        let mut norm_map = None;
        let mut x = input;
        let mut index = 0;
        while index < count {
            let kind = tracked.segment_kind(index);
            let first = index;
            let input = x.detach();
            let norm_before = norm_map.take();
            if let Some(step) = untracked.stem_step(index, &input) {
                // Whatever the mode, a stem step keeps only its input and is differentiated by
                // hand, without a replay.
                let gated = bits < 32 && matches!(step, StemStep::NormRelu(..));
                let kept = match (norm_before, &step) {
                    // A convolution after BatchNorm + ReLU on the CPU kernels keeps nothing: its
                    // backward makes its input again from that step's.
                    (Some(map), StemStep::Convolution(..)) => KeptInput::Normalized(map),
                    // Compressed before the step runs: then nothing but the step holds its
                    // input, and BatchNorm + ReLU writes its output over it.
                    _ => KeptInput::new(input, bits, segment_seed(first)),
                };
                let (output, map) = step.forward_untracked();
                norm_map = map;
                let gate = gated.then(|| ReluMask::of(flatten(output.clone())));
                x = Activation::Clips(output);
                saved.push(Saved {
                    gate,
                    input: kept,
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
                            .map(|clip| run_segment(untracked, index, input.clip(clip), seed))
                            .collect(),
                    )
                } else {
                    run_segment(untracked, index, input.clone(), seed)
                };
                index += 1;
                x = output;
                // The output's (empty) graph is dropped here; only the input is kept.
                saved.push(Saved {
                    gate: None,
                    input: KeptInput::new(input, bits, segment_seed(first)),
                    backward: StretchBackward::Replay,
                    first,
                    seed: segment_seed(first),
                });
            } else {
                let input = if index == 0 { input } else { input.leaf() };
                let mut output = input.clone();
                while index < count
                    && !tracked.segment_kind(index).recomputed_by(mode)
                    && tracked.stem_step(index, &output).is_none()
                {
                    let seed = segment_seed(index);
                    B::seed(&device, seed);
                    // The CPU's tracked ops keep their tensors in `bits` bits, rounded from
                    // the segment's seed.
                    let _compressing = (bits < 32).then(|| CompressedKeeping::begin(bits, seed));
                    output = run_segment(tracked, index, output, seed);
                    index += 1;
                }
                x = output.clone().detach();
                // Its backward reads only the input's gradient: where the stretch's ops kept
                // codes, the values need not outlive them (r3d_18 at 112 px: 49 MiB).
                let input = if bits < 32 {
                    input.without_values()
                } else {
                    input
                };
                saved.push(Saved {
                    gate: None,
                    input: KeptInput::Whole(input),
                    backward: StretchBackward::Graph(output),
                    first,
                    seed: segment_seed(first),
                });
            }
        }
        runs.push((tracked, saved, x.leaf()));
    }

    // The head and the loss, differentiated down to each chain's last output.
    B::seed(&device, seed ^ (u64::MAX >> 8));
    let features = runs
        .iter()
        .map(|(chain, _, last)| chain.finish(last.clone().into_tokens()))
        .collect();
    let loss_value = loss(head(features)) * weight;
    let value: f32 = loss_value.clone().into_scalar().elem();
    let grads = loss_value.backward();
    crate::memory_probe::at::<B>(&device);
    let last_gradients: Vec<Option<Activation<B>>> = runs
        .iter()
        .map(|(_, _, last)| last.gradient(&grads))
        .collect();
    gradients.add(grads);

    // Backward through each chain's stretches, last first.
    for ((chain, saved, _), upstream) in runs.into_iter().zip(last_gradients) {
        let Some(mut upstream) = upstream else {
            continue;
        };
        let mut saved = saved;
        while let Some(stretch) = saved.pop() {
            // The first segment's input is the data: no gradient wanted.
            let wants_input_gradient = stretch.first > 0;
            let input_gradient = match stretch.backward {
                StretchBackward::Graph(output) => {
                    let input = stretch.input.restore();
                    let grads = output.dot(upstream).backward();
                    let input_gradient = input.gradient(&grads);
                    gradients.add(grads);
                    input_gradient
                }
                StretchBackward::ByHand => {
                    let upstream = upstream.into_clips();
                    let (upstream, gate) = match stretch.gate {
                        Some(mask) => {
                            let dims = upstream.dims();
                            let gated = mask.apply(flatten(upstream)).reshape(dims);
                            (Tensor::from_inner(gated), ReluGate::Applied)
                        }
                        None => (upstream, ReluGate::FromInput),
                    };
                    // Only a chain's first step reads its input rearranged, and no gradient is
                    // wanted there: a later step's compressed input is read piece by piece.
                    let codes = stretch.input.host_codes().filter(|_| wants_input_gradient);
                    let layer = || {
                        chain
                            .stem_layer(stretch.first)
                            .expect("a stretch differentiated by hand is a stem step")
                    };
                    let (params, input_gradient) = match (&stretch.input, codes) {
                        (KeptInput::Normalized(map), _) => {
                            // The BatchNorm + ReLU step before still holds its input.
                            let source = saved
                                .last()
                                .and_then(|before| before.input.as_conv_input())
                                .expect("a convolution made from a norm's output follows it");
                            layer().gradients_of_normalized(
                                source,
                                map,
                                upstream,
                                wants_input_gradient,
                            )
                        }
                        (_, Some(codes)) => {
                            layer().gradients_of_codes(codes, upstream, wants_input_gradient, gate)
                        }
                        (_, None) => {
                            let input = stretch.input.restore();
                            chain
                                .stem_step(stretch.first, &input)
                                .expect("a stretch differentiated by hand is a stem step")
                                .gradients(upstream, wants_input_gradient, gate)
                        }
                    };
                    gradients.add_params(params);
                    input_gradient.map(Activation::Clips)
                }
                StretchBackward::Replay => replay_segment(
                    chain,
                    stretch.first,
                    stretch.input.restore(),
                    upstream,
                    stretch.seed,
                    wants_input_gradient,
                    &mut gradients,
                ),
            };
            // The stretch's input gradient beside its upstream one.
            crate::memory_probe::at::<B>(&device);
            if !wants_input_gradient {
                break;
            }
            upstream = input_gradient
                .expect("a stretch input after the first is a leaf that records gradients");
        }
    }
    (value / weight as f32, gradients.sum.grads())
}

/// Runs segment `index`; an encoder block seeds its attention dropout per query block from the
/// segment's `seed`, so that a replay can draw one query block's masks alone.
fn run_segment<B: Backend>(
    chain: &dyn SegmentChain<B>,
    index: usize,
    input: Activation<B>,
    seed: u64,
) -> Activation<B> {
    match chain.encoder_block(index) {
        Some(block) => Activation::Tokens(block.forward_seeded(input.into_tokens(), Some(seed))),
        None => chain.forward_segment(index, input),
    }
}

/// Recomputes a segment whose graph was dropped and pushes `upstream` (the gradient of its
/// output) through it: parameter gradients go to `gradients`; returns its input's gradient.
fn replay_segment<B: AutodiffBackend, M: AutodiffModule<B>>(
    chain: &dyn SegmentChain<B>,
    index: usize,
    input: Activation<B>,
    upstream: Activation<B>,
    seed: u64,
    wants_input_gradient: bool,
    gradients: &mut Gradients<'_, B, M>,
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
    if let Some(block) = chain.mamba_block(index) {
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
    match (chain.segment_kind(index), chain.encoder_block(index)) {
        // A block whose attention fits one query block is replayed whole, like any segment.
        (SegmentKind::Block, Some(block)) if query_block_count > 1 => replay_encoder_block(
            block,
            input.into_tokens(),
            upstream.into_tokens(),
            seed,
            wants_input_gradient,
            gradients,
        )
        .map(Activation::Tokens),
        (SegmentKind::StemPerClip, _) => {
            let mut input_gradients = Vec::new();
            for clip in 0..input.clips() {
                let clip_input = track(input.clip(clip));
                let output = chain.forward_segment(index, clip_input.clone());
                let grads = output.dot(upstream.clip(clip)).backward();
                input_gradients.extend(clip_input.gradient(&grads));
                gradients.add(grads);
            }
            wants_input_gradient.then(|| Activation::cat(input_gradients))
        }
        _ => {
            let input = track(input);
            let output = run_segment(chain, index, input.clone(), seed);
            let grads = output.dot(upstream).backward();
            let input_gradient = input.gradient(&grads);
            gradients.add(grads);
            input_gradient
        }
    }
}

#[cfg(test)]
mod tests;
