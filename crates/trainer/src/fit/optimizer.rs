//! The optimizer step's settings: `train.optimizer` (Adam, AdamW, SGD with momentum) and the
//! learning rate with linear warm-up before the schedule (the loss is `loss.rs`).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{Config, LrSchedule, OptimizerKind, OptimizerStateFormat};
use vidtrain_model::ActionModel;

use crate::Result;
use crate::optimizer_state::update::{CompactAdam, CompactSgd, HostAdam, HostAdamW};
use crate::persist::weights::{load_record, save_record};

/// The optimizer `train.optimizer` names, with its state, for a module `M` (the model).
#[derive(Clone)]
pub(crate) enum TrainingOptimizer<B: AutodiffBackend, M: AutodiffModule<B> = ActionModel<B>> {
    Adam(OptimizerAdaptor<Adam, M, B>),
    AdamW(OptimizerAdaptor<AdamW, M, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
    /// Adam or AdamW with bf16 or 8-bit state (`train.optimizer_state`).
    CompactAdam(OptimizerAdaptor<CompactAdam, M, B>),
    /// SGD with momentum, its buffer in bf16 or 8 bits.
    CompactSgd(OptimizerAdaptor<CompactSgd, M, B>),
    /// Adam with f32 state where the backend computes on the host: Burn's state, one parallel
    /// pass per tensor.
    HostAdam(OptimizerAdaptor<HostAdam, M, B>),
    /// AdamW likewise.
    HostAdamW(OptimizerAdaptor<HostAdamW, M, B>),
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> TrainingOptimizer<B, M> {
    /// A fresh optimizer as `train.*` configures it.
    pub(crate) fn from_config(config: &Config) -> Self {
        let train = &config.train;
        let decay =
            (train.weight_decay > 0.0).then(|| WeightDecayConfig::new(train.weight_decay as f32));
        let format = train.optimizer_state;
        let has_state = train.optimizer != OptimizerKind::Sgd || train.momentum > 0.0;
        if format != OptimizerStateFormat::F32 && has_state {
            let weight_decay = train.weight_decay as f32;
            return match train.optimizer {
                OptimizerKind::Adam => Self::CompactAdam(OptimizerAdaptor::from(CompactAdam::new(
                    format,
                    weight_decay,
                    false,
                ))),
                OptimizerKind::Adamw => Self::CompactAdam(OptimizerAdaptor::from(
                    CompactAdam::new(format, weight_decay, true),
                )),
                OptimizerKind::Sgd => Self::CompactSgd(OptimizerAdaptor::from(CompactSgd {
                    momentum: train.momentum as f32,
                    nesterov: train.nesterov,
                    weight_decay,
                    format,
                })),
            };
        }
        // Burn's state either way: a checkpoint resumes on the other backend.
        let on_host = vidtrain_model::cpu_kernels::host_tensors::<B>(&Default::default());
        match train.optimizer {
            OptimizerKind::Adam if on_host => Self::HostAdam(OptimizerAdaptor::from(HostAdam(
                CompactAdam::new(format, train.weight_decay as f32, false),
            ))),
            OptimizerKind::Adamw if on_host => Self::HostAdamW(OptimizerAdaptor::from(HostAdamW(
                CompactAdam::new(format, train.weight_decay as f32, true),
            ))),
            OptimizerKind::Adam => Self::Adam(AdamConfig::new().with_weight_decay(decay).init()),
            OptimizerKind::Adamw => Self::AdamW(
                AdamWConfig::new()
                    .with_weight_decay(train.weight_decay as f32)
                    .init(),
            ),
            OptimizerKind::Sgd => {
                // PyTorch's SGD: no dampening (Burn's default is 0.1).
                let momentum = (train.momentum > 0.0).then_some(MomentumConfig {
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
    pub(crate) fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        match self {
            Self::Adam(optimizer) => optimizer.step(lr, model, grads),
            Self::AdamW(optimizer) => optimizer.step(lr, model, grads),
            Self::Sgd(optimizer) => optimizer.step(lr, model, grads),
            Self::CompactAdam(optimizer) => optimizer.step(lr, model, grads),
            Self::CompactSgd(optimizer) => optimizer.step(lr, model, grads),
            Self::HostAdam(optimizer) => optimizer.step(lr, model, grads),
            Self::HostAdamW(optimizer) => optimizer.step(lr, model, grads),
        }
    }

    /// Writes the optimizer's state (moments, momentum buffers) to `path`.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        match self {
            Self::Adam(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::AdamW(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::Sgd(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::CompactAdam(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::CompactSgd(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::HostAdam(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
            Self::HostAdamW(optimizer) => save_record::<B, _>(optimizer.to_record(), path),
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
            Self::CompactAdam(optimizer) => {
                Self::CompactAdam(optimizer.load_record(load_record::<B, _>(path, device)?))
            }
            Self::CompactSgd(optimizer) => {
                Self::CompactSgd(optimizer.load_record(load_record::<B, _>(path, device)?))
            }
            Self::HostAdam(optimizer) => {
                Self::HostAdam(optimizer.load_record(load_record::<B, _>(path, device)?))
            }
            Self::HostAdamW(optimizer) => {
                Self::HostAdamW(optimizer.load_record(load_record::<B, _>(path, device)?))
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
    scheduled_rate(
        train.lr_schedule,
        train.lr,
        step - warmup,
        total_steps.saturating_sub(warmup),
    )
}

/// `schedule`'s learning rate for optimizer step `step` (0-based) of `total_steps`, from `peak`.
fn scheduled_rate(schedule: LrSchedule, peak: f64, step: usize, total_steps: usize) -> f64 {
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Cosine => {
            let progress = step as f64 / total_steps.max(1) as f64;
            peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Tensor;

    type B = Autodiff<Flex>;

    /// A 3 → 2 linear layer and the gradients of sum(layer(x)) at x = 1: 1 for every weight.
    fn layer_and_unit_gradients(layer: Option<Linear<B>>) -> (Linear<B>, GradientsParams) {
        let device = Default::default();
        let layer = layer.unwrap_or_else(|| LinearConfig::new(3, 2).init(&device));
        let inputs = layer.weight.dims()[0];
        let loss = layer
            .forward(Tensor::<B, 2>::ones([1, inputs], &device))
            .sum();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        (layer, grads)
    }

    fn weights(layer: &Linear<B>) -> Vec<f32> {
        layer.weight.val().into_data().to_vec().unwrap()
    }

    /// The weights after `steps` optimizer steps at `lr` with unit gradients, and before.
    fn stepped(overrides: &[&str], lr: f64, steps: usize) -> (Vec<f32>, Vec<f32>) {
        let mut optimizer = TrainingOptimizer::<B, Linear<B>>::from_config(&config(overrides));
        let (mut layer, _) = layer_and_unit_gradients(None);
        let before = weights(&layer);
        for _ in 0..steps {
            let (current, grads) = layer_and_unit_gradients(Some(layer));
            layer = optimizer.step(lr, current, grads);
        }
        (before, weights(&layer))
    }

    fn assert_update(before: &[f32], after: &[f32], expected: impl Fn(f32) -> f32) {
        for (old, new) in before.iter().zip(after) {
            assert!(
                (new - expected(*old)).abs() < 1e-5,
                "{old} → {new}, expected {}",
                expected(*old)
            );
        }
    }

    #[test]
    fn sgd_follows_pytorch_momentum_nesterov_and_weight_decay() {
        let lr = 0.1f32;
        // Momentum 0.9, no dampening: buffers 1, then 1.9.
        let (before, after) = stepped(&["train.optimizer=sgd"], lr.into(), 2);
        assert_update(&before, &after, |w| w - lr * (1.0 + 1.9));
        // Nesterov: the update is g + 0.9 · buffer: 1.9, then 1 + 0.9 · 1.9.
        let (before, after) = stepped(
            &["train.optimizer=sgd", "train.nesterov=true"],
            lr.into(),
            2,
        );
        assert_update(&before, &after, |w| w - lr * (1.9 + 1.0 + 0.9 * 1.9));
        // L2 weight decay: g + wd · w.
        let (before, after) = stepped(
            &[
                "train.optimizer=sgd",
                "train.momentum=0",
                "train.weight_decay=0.5",
            ],
            lr.into(),
            1,
        );
        assert_update(&before, &after, |w| w - lr * (1.0 + 0.5 * w));
    }

    #[test]
    fn adamw_decays_weights_apart_from_the_adam_step() {
        let lr = 0.01f32;
        // One Adam step with bias correction moves every weight by lr · g / (|g| + ε) ≈ lr.
        let (before, after) = stepped(&["train.optimizer=adam"], lr.into(), 1);
        assert_update(&before, &after, |w| w - lr);
        let (before, after) = stepped(
            &["train.optimizer=adamw", "train.weight_decay=0.5"],
            lr.into(),
            1,
        );
        assert_update(&before, &after, |w| w * (1.0 - lr * 0.5) - lr);
    }

    #[test]
    fn optimizer_state_survives_a_save_and_load_in_every_format() {
        let folder = std::env::temp_dir().join(format!("vidtrain-optim-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let device = Default::default();
        for (number, overrides) in [
            &["train.optimizer=sgd", "train.nesterov=true"][..],
            &["train.optimizer=adam"],
            &["train.optimizer=sgd", "train.optimizer_state=8bit"],
            &["train.optimizer=adam", "train.optimizer_state=8bit"],
            &["train.optimizer=adamw", "train.optimizer_state=bf16"],
        ]
        .into_iter()
        .enumerate()
        {
            let path = folder.join(format!("optimizer-{number}.mpk"));
            let config = config(overrides);
            let mut optimizer = TrainingOptimizer::<B, Linear<B>>::from_config(&config);
            // 128 × 64 weights: past the size under which state stays f32.
            let layer = LinearConfig::new(128, 64).init(&device);
            let (layer, grads) = layer_and_unit_gradients(Some(layer));
            let layer = optimizer.step(0.1, layer, grads);
            optimizer.save(&path).unwrap();
            if overrides == ["train.optimizer=adam", "train.optimizer_state=8bit"] {
                // Two moments of the weight (8192 codes, 4 scales each), the bias's in f32, and
                // the record's names: one byte a code on disk too.
                let state = 2 * (8192 + 4 * 4) + 2 * 64 * 4;
                let saved = std::fs::metadata(&path).unwrap().len() as usize;
                assert!(
                    (state..state + 4096).contains(&saved),
                    "8-bit state of {state} bytes saved in {saved}"
                );
            }
            let restored = TrainingOptimizer::<B, Linear<B>>::from_config(&config)
                .load(&path, &device)
                .unwrap();
            let next = |mut optimizer: TrainingOptimizer<B, Linear<B>>| {
                let (current, grads) = layer_and_unit_gradients(Some(layer.clone()));
                weights(&optimizer.step(0.1, current, grads))
            };
            assert_eq!(next(optimizer), next(restored), "{overrides:?}");
        }
        let _ = std::fs::remove_dir_all(&folder);
    }

    /// On the CPU, Adam's f32 state is stepped by vidtrain's pass but stored as Burn's: a
    /// checkpoint of either resumes in the other (a run moved between the CPU and a GPU) and
    /// steps on as it would have.
    #[test]
    fn host_adam_checkpoints_are_burns_adam_checkpoints() {
        let folder = std::env::temp_dir().join(format!("vidtrain-adam-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let device = Default::default();
        for (kind, burns) in [
            ("adam", TrainingOptimizer::Adam(AdamConfig::new().init())),
            (
                "adamw",
                TrainingOptimizer::AdamW(AdamWConfig::new().with_weight_decay(0.0).init()),
            ),
        ] {
            let config = config(&[&format!("train.optimizer={kind}"), "train.weight_decay=0"]);
            let mut host = TrainingOptimizer::<B, Linear<B>>::from_config(&config);
            assert!(matches!(
                host,
                TrainingOptimizer::HostAdam(_) | TrainingOptimizer::HostAdamW(_)
            ));
            let layer = LinearConfig::new(128, 64).init(&device);
            let (layer, grads) = layer_and_unit_gradients(Some(layer));
            let layer = host.step(0.1, layer, grads);
            let path = folder.join(format!("{kind}.mpk"));
            host.save(&path).unwrap();
            let next = |mut optimizer: TrainingOptimizer<B, Linear<B>>| {
                let (current, grads) = layer_and_unit_gradients(Some(layer.clone()));
                weights(&optimizer.step(0.1, current, grads))
            };
            let by_burn = next(burns.clone().load(&path, &device).unwrap());
            let by_host = next(host);
            for (a, b) in by_burn.iter().zip(&by_host) {
                assert!((a - b).abs() < 1e-6, "{kind}: {a} against {b}");
            }
            // And back: Burn's checkpoint into the host optimizer.
            let mut burns = burns;
            let (current, grads) = layer_and_unit_gradients(Some(layer.clone()));
            burns.step(0.1, current, grads);
            burns.save(&path).unwrap();
            TrainingOptimizer::<B, Linear<B>>::from_config(&config)
                .load(&path, &device)
                .unwrap();
        }
        let _ = std::fs::remove_dir_all(&folder);
    }

    fn config(overrides: &[&str]) -> Config {
        vidtrain_config::ConfigLoader::with_overrides(overrides).unwrap()
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
