//! Activation recompute (gradient checkpointing) for Burn, which has no per-block checkpoint API.
//!
//! The encoders are chains of segments (stem stages, a bridge, encoder blocks). A training step
//! runs every segment on a detached copy of its input. A recomputed segment runs on the model with
//! gradient tracking off, so it records no graph and its internal activations are freed as it
//! goes; only its input is kept. A kept segment runs tracked and keeps its graph. The loss is differentiated down to the chains' last outputs, then each segment is
//! walked backwards: recomputed (with the same dropout seed) if its graph was dropped, and
//! `sum(output · upstream)` is differentiated to get the parameter gradients and the gradient of
//! its input, the upstream of the segment before. Gradients equal those of one plain backward.
//!
//! As with PyTorch's checkpointing, a recomputed BatchNorm updates its running statistics a
//! second time (batch statistics, and so gradients, are unaffected).

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::CheckpointMode;

use crate::ActionModel;

/// What a segment is, which decides whether a [`CheckpointMode`] recomputes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// A convolution stem stage (recomputed by `stem` and `all`).
    Stem,
    /// A transformer encoder block (recomputed by `encoder` and `all`).
    Encoder,
    /// A cheap reshaping step between the two (never recomputed).
    Bridge,
}

impl SegmentKind {
    /// Whether `mode` recomputes segments of this kind.
    pub fn recomputed_by(self, mode: CheckpointMode) -> bool {
        matches!(
            (self, mode),
            (
                SegmentKind::Stem,
                CheckpointMode::Stem | CheckpointMode::All
            ) | (
                SegmentKind::Encoder,
                CheckpointMode::Encoder | CheckpointMode::All
            )
        )
    }
}

/// The tensor passed between segments.
#[derive(Debug, Clone)]
pub enum Activation<B: Backend> {
    /// Video clips `[n, t, c, h, w]`.
    Clips(Tensor<B, 5>),
    /// Keypoints `[n, t, joints, 3]`.
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

/// A segment's saved input, and its output graph when the segment is kept.
struct Saved<B: AutodiffBackend> {
    input: Activation<B>,
    output: Option<Activation<B>>,
    seed: u64,
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
        let device = match &inputs[0].1 {
            Activation::Clips(tensor) => tensor.device(),
            Activation::Joints(tensor) => tensor.device(),
            Activation::Tokens(tensor) => tensor.device(),
        };
        let mut accumulator = GradientsAccumulator::<ActionModel<B>>::new();
        // The same weights with gradient tracking off: a segment run on it with an untracked input
        // records no graph at all (BatchNorm and dropout still behave as in training, because the
        // backend is the autodiff one), so its internal activations are freed as it goes.
        let untracked = self.clone().no_grad();

        // Forward, segment by segment, keeping graphs only where nothing is recomputed.
        let mut chains = Vec::with_capacity(inputs.len());
        for (chain_number, (chain, input)) in inputs.into_iter().enumerate() {
            let mut saved: Vec<Saved<B>> = Vec::new();
            let mut x = input;
            for index in 0..self.segment_count(chain) {
                let segment_seed = seed ^ ((chain_number as u64) << 48) ^ ((index as u64) << 32);
                let recomputed = self.segment_kind(chain, index).recomputed_by(mode);
                B::seed(&device, segment_seed);
                let (input, output) = if recomputed {
                    let input = x.detach();
                    (
                        input.clone(),
                        untracked.forward_segment(chain, index, input),
                    )
                } else {
                    let input = if index == 0 { x } else { x.leaf() };
                    (input.clone(), self.forward_segment(chain, index, input))
                };
                x = output.clone().detach();
                saved.push(Saved {
                    input,
                    // Dropping a recomputed segment's output frees its graph right here.
                    output: (!recomputed).then_some(output),
                    seed: segment_seed,
                });
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
        let mut grads = loss_value.backward();
        accumulator.accumulate(self, GradientsParams::from_module(&mut grads, self));

        // Backward through each chain's segments, last first.
        for (chain, saved, last) in chains {
            let Some(mut upstream) = last.gradient(&grads) else {
                continue;
            };
            for (index, segment) in saved.into_iter().enumerate().rev() {
                let (input, output) = match segment.output {
                    Some(output) => (segment.input, output),
                    None => {
                        // Recompute with tracking; the first segment's input (the data) needs
                        // no gradient.
                        let input = if index == 0 {
                            segment.input
                        } else {
                            segment.input.leaf()
                        };
                        B::seed(&device, segment.seed);
                        let output = self.forward_segment(chain, index, input.clone());
                        (input, output)
                    }
                };
                let mut segment_grads = output.dot(upstream).backward();
                accumulator
                    .accumulate(self, GradientsParams::from_module(&mut segment_grads, self));
                if index == 0 {
                    break;
                }
                upstream = input
                    .gradient(&segment_grads)
                    .expect("a segment input after the first is a leaf that records gradients");
            }
        }
        (value / weight as f32, accumulator.grads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActionModelConfig, KeypointEncoderConfig, TestBackend, VideoTransformerConfig};
    use burn::backend::Autodiff;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::Distribution;
    use vidtrain_config::{FusionMode, InputType, ModalityFusion};

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

    fn case(input: InputType, fusion: FusionMode, dropout: f64) -> Case {
        let device = Default::default();
        B::seed(&device, 3);
        let config = ActionModelConfig {
            backbone: (input != InputType::Kpt)
                .then(|| VideoTransformerConfig::new(8, 2, 2, 16, dropout)),
            keypoint_encoder: (input != InputType::Rgb)
                .then(|| KeypointEncoderConfig::new(4, 8, 2, 2, 16, dropout)),
            views: 2,
            classes: 5,
            fusion,
            modality_fusion: ModalityFusion::Mean,
        };
        let model: ActionModel<B> = config.init(&device);
        model.materialize_parameters();
        Case {
            model,
            video: (input != InputType::Kpt)
                .then(|| Tensor::random([3, 2, 4, 16, 16, 3], Distribution::Default, &device)),
            keypoints: (input != InputType::Rgb)
                .then(|| Tensor::random([3, 2, 4, 4, 3], Distribution::Default, &device)),
            labels: Tensor::from_data(TensorData::new(vec![0i64, 3, 4], [3]), &device),
        }
    }

    fn collect(model: &ActionModel<B>, grads: &GradientsParams) -> Vec<Vec<f32>> {
        let mut visitor = CollectGradients(grads, Vec::new());
        model.visit(&mut visitor);
        visitor.1
    }

    /// Gradients of `0.5 · loss` through one plain backward.
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
        assert_eq!(expected.len(), got.len());
        let norm = |values: &[f32]| {
            values
                .iter()
                .map(|v| (*v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        for (index, (a, b)) in expected.iter().zip(got).enumerate() {
            assert_eq!(
                a.len(),
                b.len(),
                "{what}: parameter {index} has a gradient in only one run"
            );
            let difference: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let relative = norm(&difference) / norm(a).max(1e-12);
            assert!(
                relative <= 1e-5,
                "{what}: parameter {index} differs by {relative:e}"
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
            for mode in [
                CheckpointMode::None,
                CheckpointMode::Encoder,
                CheckpointMode::Stem,
                CheckpointMode::All,
            ] {
                assert_equal(
                    &expected,
                    &segmented(&case, mode),
                    &format!("{input:?} {fusion:?} {mode:?}"),
                );
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
        assert!(SegmentKind::Stem.recomputed_by(Stem) && SegmentKind::Stem.recomputed_by(All));
        assert!(
            !SegmentKind::Stem.recomputed_by(Encoder) && !SegmentKind::Stem.recomputed_by(None)
        );
        assert!(
            SegmentKind::Encoder.recomputed_by(Encoder)
                && !SegmentKind::Encoder.recomputed_by(Stem)
        );
        assert!(!SegmentKind::Bridge.recomputed_by(All));
    }
}
