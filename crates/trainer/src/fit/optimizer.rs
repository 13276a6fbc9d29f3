//! The optimizer step's settings: `train.optimizer` (Adam, AdamW, SGD with momentum), the
//! learning rate with linear warm-up before the schedule, and the training loss (label
//! smoothing, class weights).

use std::path::Path;

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{ClassWeights, Config, OptimizerKind, balanced_class_weights};
use vidtrain_model::ActionModel;

use crate::Result;
use crate::persist::weights::{load_record, save_record};

/// The optimizer `train.optimizer` names, with its state.
#[derive(Clone)]
pub(crate) enum TrainingOptimizer<B: AutodiffBackend> {
    Adam(OptimizerAdaptor<Adam, ActionModel<B>, B>),
    AdamW(OptimizerAdaptor<AdamW, ActionModel<B>, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, ActionModel<B>, B>),
}

impl<B: AutodiffBackend> TrainingOptimizer<B> {
    /// A fresh optimizer as `train.*` configures it.
    pub(crate) fn from_config(config: &Config) -> Self {
        let train = &config.train;
        let decay =
            (train.weight_decay > 0.0).then(|| WeightDecayConfig::new(train.weight_decay as f32));
        match train.optimizer {
            OptimizerKind::Adam => Self::Adam(AdamConfig::new().with_weight_decay(decay).init()),
            OptimizerKind::Adamw => Self::AdamW(
                AdamWConfig::new()
                    .with_weight_decay(train.weight_decay as f32)
                    .init(),
            ),
            OptimizerKind::Sgd => {
                // PyTorch's SGD: no dampening (Burn's default is 0.1).
                let momentum = (train.momentum > 0.0).then(|| MomentumConfig {
                    momentum: train.momentum,
                    dampening: 0.0,
                    nesterov: train.nesterov,
                });
                Self::Sgd(
                    SgdConfig::new()
                        .with_momentum(momentum)
                        .with_weight_decay(decay)
                        .init(),
                )
            }
        }
    }

    /// One optimizer step at learning rate `lr`.
    pub(crate) fn step(
        &mut self,
        lr: f64,
        model: ActionModel<B>,
        grads: GradientsParams,
    ) -> ActionModel<B> {
        match self {
            Self::Adam(optimizer) => optimizer.step(lr, model, grads),
            Self::AdamW(optimizer) => optimizer.step(lr, model, grads),
            Self::Sgd(optimizer) => optimizer.step(lr, model, grads),
        }
    }

    /// Writes the optimizer's state (moments, momentum buffers) to `path`.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        match self {
            Self::Adam(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::AdamW(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::Sgd(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
        }
    }

    /// Restores the state [`TrainingOptimizer::save`] wrote (same `train.optimizer`).
    pub(crate) fn load(self, path: &Path, device: &B::Device) -> Result<Self> {
        Ok(match self {
            Self::Adam(optimizer) => {
                Self::Adam(optimizer.load_record(load_record::<B, _>(path, device)?))
            }
            Self::AdamW(optimizer) => {
                Self::AdamW(optimizer.load_record(load_record::<B, _>(path, device)?))
            }
            Self::Sgd(optimizer) => {
                Self::Sgd(optimizer.load_record(load_record::<B, _>(path, device)?))
            }
        })
    }
}

/// The learning rate of optimizer step `step` (0-based) of `total_steps`: linear warm-up from
/// `lr / warmup` to `lr` over the first `warmup` steps (`train.warmup_steps`, else
/// `train.warmup_fraction` of the run), then `train.lr_schedule` over the remaining steps.
pub(crate) fn learning_rate(config: &Config, step: usize, total_steps: usize) -> f64 {
    let train = &config.train;
    let warmup = if train.warmup_steps > 0 {
        train.warmup_steps
    } else {
        (train.warmup_fraction * total_steps as f64).round() as usize
    };
    if step < warmup {
        return train.lr * (step + 1) as f64 / warmup as f64;
    }
    train
        .lr_schedule
        .rate(train.lr, step - warmup, total_steps.saturating_sub(warmup))
}

/// The class weights of `train.class_weights` for a training split with `labels`.
pub(crate) fn class_weights(config: &Config, labels: &[usize]) -> Option<Vec<f64>> {
    match &config.train.class_weights {
        ClassWeights::None => None,
        ClassWeights::Balanced => {
            Some(balanced_class_weights(labels, config.model.model_class_num))
        }
        ClassWeights::Fixed(weights) => Some(weights.clone()),
    }
}

/// The training loss: cross-entropy with `train.label_smoothing` and the class weights.
pub(crate) fn training_loss<B: AutodiffBackend>(
    config: &Config,
    class_weights: Option<&[f64]>,
    device: &B::Device,
) -> CrossEntropyLoss<B> {
    let smoothing = config.train.label_smoothing;
    CrossEntropyLossConfig::new()
        .with_smoothing((smoothing > 0.0).then_some(smoothing as f32))
        .with_weights(class_weights.map(|weights| weights.iter().map(|&w| w as f32).collect()))
        .init(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(overrides: &[&str]) -> Config {
        vidtrain_config::ConfigLoader::new()
            .overrides(overrides)
            .unwrap()
            .load()
            .unwrap()
    }

    #[test]
    fn warm_up_rises_linearly_then_the_schedule_runs_over_the_remaining_steps() {
        let warm = config(&[
            "train.lr=0.1",
            "train.warmup_steps=4",
            "train.lr_schedule=cosine",
        ]);
        let rates: Vec<f64> = (0..14).map(|step| learning_rate(&warm, step, 14)).collect();
        for (step, expected) in [0.025, 0.05, 0.075, 0.1].iter().enumerate() {
            assert!((rates[step] - expected).abs() < 1e-12, "{rates:?}");
        }
        // Cosine over the 10 steps after the warm-up: the peak first, half way at step 4 + 5.
        assert!((rates[4] - 0.1).abs() < 1e-12);
        assert!((rates[9] - 0.05).abs() < 1e-12);
        assert!(rates[13] < 0.003);
        let fraction = config(&["train.lr=0.1", "train.warmup_fraction=0.2"]);
        assert!((learning_rate(&fraction, 0, 20) - 0.025).abs() < 1e-12);
        assert!((learning_rate(&fraction, 4, 20) - 0.1).abs() < 1e-12);
        let none = config(&["train.lr=0.1"]);
        assert_eq!(learning_rate(&none, 0, 20), 0.1);
    }
}
