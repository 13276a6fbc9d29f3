//! vidtrain's models as Burn modules, generic over the backend: the seed's video transformer
//! (with a GEMM convolution stem that trains fast on the CPU backend) and multi-view fusion.

mod conv;
mod encoder;
mod stem;
mod video_transformer;

use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use vidtrain_config::{Backbone, FusionMode};

pub use conv::{Conv3dGemm, Conv3dGemmConfig};
pub use encoder::{EncoderBlock, EncoderBlockConfig, sinusoidal_positions};
pub use stem::{VideoStem, VideoStemConfig};
pub use video_transformer::{VideoTransformer, VideoTransformerConfig};

/// The backend unit tests run on.
#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;

/// Configuration of an [`ActionModel`]: a backbone shared by all views, view fusion, classifier.
#[derive(Debug, Clone)]
pub struct ActionModelConfig {
    /// The per-view backbone.
    pub backbone: VideoTransformerConfig,
    /// Views per sample.
    pub views: usize,
    /// Classes.
    pub classes: usize,
    /// How per-view outputs are combined.
    pub fusion: FusionMode,
}

impl ActionModelConfig {
    /// The model a resolved vidtrain config asks for.
    pub fn from_config(config: &vidtrain_config::Config) -> Self {
        let model = &config.model;
        match model.backbone {
            Backbone::Transformer => Self {
                backbone: VideoTransformerConfig::new(
                    model.transformer_dim,
                    model.transformer_layers,
                    model.transformer_heads,
                    model.transformer_ff_dim,
                    model.transformer_dropout,
                ),
                views: config.active_views().len(),
                classes: model.model_class_num,
                fusion: model.fusion_mode,
            },
        }
    }

    /// Builds the model with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ActionModel<B> {
        let feature_dim = match self.fusion {
            FusionMode::FeatureConcat => self.views * self.backbone.dim,
            _ => self.backbone.dim,
        };
        ActionModel {
            backbone: self.backbone.init(device),
            dropout: DropoutConfig::new(self.backbone.dropout).init(),
            head: LinearConfig::new(feature_dim, self.classes).init(device),
            fusion: self.fusion,
        }
    }
}

/// Multi-view action classifier.
#[derive(Module, Debug)]
pub struct ActionModel<B: Backend> {
    backbone: VideoTransformer<B>,
    dropout: Dropout,
    head: Linear<B>,
    #[module(skip)]
    fusion: FusionMode,
}

impl<B: Backend> ActionModel<B> {
    /// Class scores; for `prob_mean` these are log mean probabilities, so cross-entropy applies
    /// unchanged (`log_softmax` of log-probabilities is the identity).
    ///
    /// # Shapes
    /// - video: `[batch, views, t, h, w, 3]` as decoded (rgb24 order), values in 0..1
    /// - output: `[batch, classes]`
    pub fn forward(&self, video: Tensor<B, 6>) -> Tensor<B, 2> {
        let [batch, views, t, h, w, c] = video.dims();
        let frames = video
            .reshape([batch * views, t, h, w, c])
            .permute([0, 1, 4, 2, 3]); // [b·v, t, 3, h, w]
        let features = self.backbone.forward(frames); // [b·v, dim]
        let dim = features.dims()[1];
        let features = features.reshape([batch, views, dim]); // [b, v, dim]
        match self.fusion {
            FusionMode::LogitMean => {
                let logits = self.head.forward(self.dropout.forward(features)); // [b, v, classes]
                logits.mean_dim(1).squeeze_dim(1)
            }
            FusionMode::ProbMean => {
                let logits = self.head.forward(self.dropout.forward(features));
                let probabilities = softmax(logits, 2).mean_dim(1).squeeze_dim(1); // [b, classes]
                probabilities.clamp_min(1e-12).log()
            }
            FusionMode::FeatureMean => {
                let fused = features.mean_dim(1).squeeze_dim(1); // [b, dim]
                self.head.forward(self.dropout.forward(fused))
            }
            FusionMode::FeatureConcat => {
                let fused = features.reshape([batch, views * dim]); // [b, v·dim]
                self.head.forward(self.dropout.forward(fused))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn every_fusion_mode_gives_one_score_per_class() {
        let device = Default::default();
        for fusion in [
            FusionMode::LogitMean,
            FusionMode::ProbMean,
            FusionMode::FeatureMean,
            FusionMode::FeatureConcat,
        ] {
            let config = ActionModelConfig {
                backbone: VideoTransformerConfig::new(16, 1, 2, 32, 0.0),
                views: 3,
                classes: 9,
                fusion,
            };
            let model = config.init::<TestBackend>(&device);
            let video = Tensor::random([2, 3, 4, 16, 16, 3], Distribution::Default, &device);
            let scores = model.forward(video);
            assert_eq!(scores.dims(), [2, 9]);
            let values = scores.into_data().to_vec::<f32>().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{fusion:?}: {values:?}"
            );
        }
    }
}
