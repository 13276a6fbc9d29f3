//! vidtrain's models as Burn modules, generic over the backend: RGB backbones (the seed's video
//! transformer, ViViT, torchvision's 3-D ResNet, VideoMamba) and keypoint encoders (a
//! transformer, ST-GCN, Mamba)
//! in `backbones/`, the layers they share in `layers/`, multi-view and RGB+keypoint fusion
//! (here), activation recompute and compression (`recompute`, `quantize`), mixed precision (`precision`), the layer summary
//! the memory plan prices (`summary`) and PyTorch parameter names (`pytorch_names`).

pub mod backbones;
pub mod chain;
pub mod cpu_kernels;
mod fast_math;
pub mod gemm_bf16;
pub mod gemm_f32;
mod gradient_sums;
pub mod layers;
pub mod memory_probe;
mod precision;
pub mod pytorch_names;
pub mod quantize;
mod recompute;
mod summary;
mod tracked_ops;

use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::softmax;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{FusionMode, InputType, ModalityFusion};

use crate::layers::dropout::dropout;

pub use backbones::keypoint_transformer::{KeypointEncoder, KeypointEncoderConfig};
pub use backbones::mamba::{KeypointMamba, KeypointMambaConfig, VideoMamba, VideoMambaConfig};
pub use backbones::resnet3d::{Resnet3d, Resnet3dConfig};
pub use backbones::stgcn::{Stgcn, StgcnConfig};
pub use backbones::video_transformer::{VideoTransformer, VideoTransformerConfig};
pub use backbones::vivit::{TubeletGrid, Vivit, VivitConfig};
pub use backbones::{BackboneConfig, KeypointBackboneConfig, VideoBackbone};
pub use chain::{Activation, ChainConfig, SegmentChain, SegmentKind};
pub use gradient_sums::GradientsAccumulator;
pub use layers::conv3d::{VideoConv3d, VideoConv3dConfig};
pub use layers::encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
pub use layers::graph::Skeleton;
pub use layers::mamba::{MambaBlock, MambaBlockConfig};
pub use layers::stem::{StemLayer, StemStep, VideoStem, VideoStemConfig};
pub use recompute::KeptActivations;
pub use summary::{CompressedSaved, InputShape, LayerRole, LayerSummary, ModelSummary};

/// The backend unit tests run on.
#[cfg(test)]
pub(crate) type TestBackend = burn::backend::Flex;

/// The CPU backend's random generator is one global: tests that seed it or draw from it hold
/// this lock, so that parallel tests do not interleave their draws.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The skeleton `model.skeleton` names (or `model.skeleton_edges` gives), over the joints of
/// `data.keypoint_indices`. Config validation has checked that they fit.
pub fn skeleton(config: &vidtrain_config::Config) -> Skeleton {
    use vidtrain_config::SkeletonLayout;
    match config.model.skeleton {
        SkeletonLayout::Sam3dBody52 => Skeleton::sam3d_body_52(),
        SkeletonLayout::Coco17 => Skeleton::coco17(),
        SkeletonLayout::Custom => Skeleton {
            joints: config.data.keypoint_indices.len(),
            edges: config.model.skeleton_edges.clone(),
            center: config.model.skeleton_center,
        },
    }
}

/// Configuration of an [`ActionModel`]: per-view encoders shared by all views, modality fusion,
/// view fusion, classifier.
#[derive(Debug, Clone)]
pub struct ActionModelConfig {
    /// The RGB backbone (absent when `model.input_type = "kpt"`).
    pub backbone: Option<BackboneConfig>,
    /// The keypoint encoder (absent when `model.input_type = "rgb"`).
    pub keypoint_encoder: Option<KeypointBackboneConfig>,
    /// Views per sample.
    pub views: usize,
    /// Classes.
    pub classes: usize,
    /// How per-view outputs are combined.
    pub fusion: FusionMode,
    /// How RGB and keypoint features are combined (both encoders present).
    pub modality_fusion: ModalityFusion,
    /// The dtype activations are computed in (weights stay f32): `F32`, or `BF16`/`F16` for
    /// mixed precision on a backend that has them (see the `precision` module).
    pub compute_dtype: FloatDType,
}

impl ActionModelConfig {
    /// The model a resolved vidtrain config asks for.
    pub fn from_config(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        let uses_rgb = model.input_type != InputType::Kpt;
        let uses_keypoints = model.input_type != InputType::Rgb;
        let backbone = BackboneConfig::from_vidtrain(config);
        let keypoint_encoder = KeypointBackboneConfig::from_vidtrain(config);
        Self {
            backbone: backbone.filter(|_| uses_rgb),
            keypoint_encoder: uses_keypoints.then_some(keypoint_encoder),
            views: config.active_views().len(),
            classes: model.model_class_num,
            fusion: model.fusion_mode,
            modality_fusion: model.modality_fusion,
            compute_dtype: FloatDType::F32,
        }
    }

    /// Width of one view's feature vector.
    pub fn view_feature_dim(&self) -> usize {
        let rgb = self.backbone.as_ref().map_or(0, |c| c.as_chain().dim());
        let keypoints = self
            .keypoint_encoder
            .as_ref()
            .map_or(0, |c| c.as_chain().dim());
        match (rgb, keypoints, self.modality_fusion) {
            (0, dim, _) | (dim, 0, _) => dim,
            (rgb, keypoints, ModalityFusion::Concat) => rgb + keypoints,
            (rgb, _, ModalityFusion::Mean) => rgb,
        }
    }

    /// Dropout probability before the classifier.
    pub(crate) fn dropout(&self) -> f64 {
        self.backbone
            .as_ref()
            .map(|c| c.as_chain().dropout())
            .or(self
                .keypoint_encoder
                .as_ref()
                .map(|c| c.as_chain().dropout()))
            .unwrap_or(0.0)
    }

    /// Builds the model with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ActionModel<B> {
        let feature_dim = match self.fusion {
            FusionMode::FeatureConcat => self.views * self.view_feature_dim(),
            _ => self.view_feature_dim(),
        };
        let model = ActionModel {
            backbone: self.backbone.as_ref().map(|config| config.init(device)),
            keypoint_encoder: None,
            keypoint_gcn: None,
            keypoint_mamba: None,
            dropout: DropoutConfig::new(self.dropout()).init(),
            head: LinearConfig::new(feature_dim, self.classes).init(device),
            fusion: self.fusion,
            modality_fusion: self.modality_fusion,
            compute_dtype: self.compute_dtype,
        };
        match &self.keypoint_encoder {
            Some(config) => model.with_keypoint_encoder(config, device),
            None => model,
        }
    }
}

/// Multi-view (and optionally multi-modal) action classifier.
#[derive(Module, Debug)]
pub struct ActionModel<B: Backend> {
    backbone: Option<VideoBackbone<B>>,
    keypoint_encoder: Option<KeypointEncoder<B>>,
    /// ST-GCN, when it is the keypoint encoder (a field of its own, so that weights saved
    /// before it existed still load).
    keypoint_gcn: Option<Stgcn<B>>,
    /// Mamba over frames, when it is the keypoint encoder.
    keypoint_mamba: Option<KeypointMamba<B>>,
    dropout: Dropout,
    head: Linear<B>,
    #[module(skip)]
    fusion: FusionMode,
    #[module(skip)]
    modality_fusion: ModalityFusion,
    #[module(skip)]
    compute_dtype: FloatDType,
}

impl<B: Backend> ActionModel<B> {
    /// Class scores; for `prob_mean` these are log mean probabilities, so cross-entropy applies
    /// unchanged (`log_softmax` of log-probabilities is the identity). Each input must be given
    /// when the model has the matching encoder.
    ///
    /// # Shapes
    /// - video: `[batch, views, t, h, w, 3]` as decoded (rgb24 order), values in 0..1
    /// - keypoints: `[batch, views, t, joints, 3]`
    /// - output: `[batch, classes]`
    pub fn forward(
        &self,
        video: Option<Tensor<B, 6>>,
        keypoints: Option<Tensor<B, 5>>,
    ) -> Tensor<B, 2> {
        let (inputs, batch, views) = self.chain_inputs(video, keypoints);
        let features = inputs
            .into_iter()
            .map(|(modality, input)| self.encoder(modality).forward_chain(input))
            .collect();
        self.head_from_features(features, batch, views)
    }

    /// Draws every lazily initialised parameter now. Burn initialises a parameter on first use,
    /// from whatever state the backend's random generator is in then; doing it right after
    /// seeding makes the initial weights depend on the seed alone, not on later dropout seeding.
    pub fn materialize_parameters(&self) {
        struct Touch;
        impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
                let _ = param.val();
            }
        }
        self.visit(&mut Touch);
    }

    /// The encoder that reads `modality`.
    pub(crate) fn encoder(&self, modality: Modality) -> &dyn SegmentChain<B> {
        match modality {
            Modality::Rgb => self
                .backbone
                .as_ref()
                .expect("the model has an RGB backbone")
                .as_chain(),
            Modality::Keypoints => self
                .keypoint_chain()
                .expect("the model has a keypoint encoder"),
        }
    }

    /// Each encoder's input with views folded into the batch, and `(batch, views)`.
    pub(crate) fn chain_inputs(
        &self,
        video: Option<Tensor<B, 6>>,
        keypoints: Option<Tensor<B, 5>>,
    ) -> (Vec<(Modality, Activation<B>)>, usize, usize) {
        let mut inputs = Vec::with_capacity(2);
        let mut shape = (0, 0);
        if self.backbone.is_some() {
            let video = video.expect("the model has an RGB backbone: pass video");
            let [batch, views, t, h, w, c] = video.dims();
            let frames = cpu_kernels::cast(video, self.compute_dtype)
                .reshape([batch * views, t, h, w, c])
                .permute([0, 1, 4, 2, 3]); // [b·v, t, 3, h, w]
            inputs.push((Modality::Rgb, Activation::Clips(frames)));
            shape = (batch, views);
        }
        if self.keypoint_chain().is_some() {
            let keypoints = keypoints.expect("the model has a keypoint encoder: pass keypoints");
            let [batch, views, t, joints, c] = keypoints.dims();
            let joints = cpu_kernels::cast(keypoints, self.compute_dtype).reshape([
                batch * views,
                t,
                joints,
                c,
            ]); // [b·v, t, joints, 3]
            inputs.push((Modality::Keypoints, Activation::Joints(joints)));
            shape = (batch, views);
        }
        (inputs, shape.0, shape.1)
    }

    /// Modality fusion, view fusion and the classifier, from per-encoder `[b·v, dim]` features.
    pub(crate) fn head_from_features(
        &self,
        features: Vec<Tensor<B, 2>>,
        batch: usize,
        views: usize,
    ) -> Tensor<B, 2> {
        // The classifier and everything after it run in f32 (the loss wants f32 scores).
        let mut features = features
            .into_iter()
            .map(|features| features.cast(FloatDType::F32));
        let first = features
            .next()
            .expect("an ActionModel has at least one encoder");
        let features = match features.next() {
            None => first,
            Some(second) => match self.modality_fusion {
                ModalityFusion::Concat => Tensor::cat(vec![first, second], 1),
                ModalityFusion::Mean => (first + second) / 2.0,
            },
        };
        let dim = features.dims()[1];
        let features = features.reshape([batch, views, dim]); // [b, v, dim]
        match self.fusion {
            FusionMode::LogitMean => {
                let logits = self.head.forward(dropout(&self.dropout, features)); // [b, v, classes]
                logits.mean_dim(1).squeeze_dim(1)
            }
            FusionMode::ProbMean => {
                let logits = self.head.forward(dropout(&self.dropout, features));
                let probabilities = softmax(logits, 2).mean_dim(1).squeeze_dim(1); // [b, classes]
                probabilities.clamp_min(1e-12).log()
            }
            FusionMode::FeatureMean => {
                let fused = features.mean_dim(1).squeeze_dim(1); // [b, dim]
                self.head.forward(dropout(&self.dropout, fused))
            }
            FusionMode::FeatureConcat => {
                let fused = features.reshape([batch, views * dim]); // [b, v·dim]
                self.head.forward(dropout(&self.dropout, fused))
            }
        }
    }
}

impl<B: AutodiffBackend> ActionModel<B> {
    /// One micro-batch's weighted loss gradients with activation recompute and compression per
    /// `keeping` (see `crate::recompute`): `loss` maps class scores to the (unweighted, mean) loss, the gradients
    /// are those of `weight · loss`, dropout is reseeded per segment from `seed`. Returns the loss
    /// value and the parameter gradients, equal to those of one plain backward.
    pub fn loss_and_gradients(
        &self,
        video: Option<Tensor<B, 6>>,
        keypoints: Option<Tensor<B, 5>>,
        loss: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 1>,
        weight: f64,
        keeping: impl Into<KeptActivations>,
        seed: u64,
    ) -> (f32, GradientsParams) {
        let (inputs, batch, views) = self.chain_inputs(video, keypoints);
        let untracked = self.clone().no_grad();
        let chains = inputs
            .into_iter()
            .map(|(modality, input)| recompute::ChainInput {
                tracked: self.encoder(modality),
                untracked: untracked.encoder(modality),
                input,
            })
            .collect();
        recompute::loss_and_gradients(
            self,
            chains,
            |features| self.head_from_features(features, batch, views),
            loss,
            weight,
            keeping.into(),
            seed,
        )
    }
}

/// Which input an encoder of the model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modality {
    Rgb,
    Keypoints,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn config(
        input: InputType,
        fusion: FusionMode,
        modality_fusion: ModalityFusion,
    ) -> ActionModelConfig {
        ActionModelConfig {
            backbone: (input != InputType::Kpt).then(|| {
                BackboneConfig::Transformer(VideoTransformerConfig::new(
                    EncoderBlockConfig::new(16, 2, 32, 0.0),
                    1,
                ))
            }),
            keypoint_encoder: (input != InputType::Rgb).then(|| {
                KeypointEncoderConfig::new(5, EncoderBlockConfig::new(16, 2, 32, 0.0), 1).into()
            }),
            views: 3,
            classes: 9,
            fusion,
            modality_fusion,
            compute_dtype: FloatDType::F32,
        }
    }

    #[test]
    fn every_input_and_fusion_mode_gives_one_score_per_class() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        for input in [InputType::Rgb, InputType::Kpt, InputType::RgbKpt] {
            for fusion in [
                FusionMode::LogitMean,
                FusionMode::ProbMean,
                FusionMode::FeatureMean,
                FusionMode::FeatureConcat,
            ] {
                for modality_fusion in [ModalityFusion::Concat, ModalityFusion::Mean] {
                    let model = config(input, fusion, modality_fusion).init::<TestBackend>(&device);
                    let video = (input != InputType::Kpt).then(|| {
                        Tensor::random([2, 3, 4, 16, 16, 3], Distribution::Default, &device)
                    });
                    let keypoints = (input != InputType::Rgb)
                        .then(|| Tensor::random([2, 3, 4, 5, 3], Distribution::Default, &device));
                    let scores = model.forward(video, keypoints);
                    assert_eq!(scores.dims(), [2, 9]);
                    let values = scores.into_data().to_vec::<f32>().unwrap();
                    assert!(
                        values.iter().all(|v| v.is_finite()),
                        "{input:?} {fusion:?}: {values:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn prob_mean_scores_are_log_probabilities() {
        let _rng = crate::rng_lock();
        let device = Default::default();
        let model = config(InputType::Kpt, FusionMode::ProbMean, ModalityFusion::Concat)
            .init::<TestBackend>(&device);
        let keypoints = Tensor::random([2, 3, 4, 5, 3], Distribution::Default, &device);
        let sums = model
            .forward(None, Some(keypoints))
            .exp()
            .sum_dim(1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(sums.iter().all(|sum| (sum - 1.0).abs() < 1e-5), "{sums:?}");
    }
}
