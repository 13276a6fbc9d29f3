//! One training step: micro-batches in (forward, backward, accumulate), then one optimizer step
//! per accumulation group (unscale, clip, step).

use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{Config, RecomputeMode};
use vidtrain_data::Batch;
use vidtrain_memutil::{MemorySampler, Phase};
use vidtrain_model::{ActionModel, GradientsAccumulator, KeptActivations};

use crate::BackendChoice;
use crate::batch_tensors::{keypoint_tensor, labels_tensor, video_tensor};
use crate::distributed::{World, all_reduce_gradients};
use crate::fit::optimizer::TrainingOptimizer;
use crate::precision::{LossScaler, StepDecision};

/// The model, its optimizer and the gradients of the accumulation group in progress.
pub(crate) struct Learner<B: AutodiffBackend> {
    /// Always `Some` between calls; taken by the optimizer step, which consumes the model so
    /// that its tensors can be updated in place.
    model: Option<ActionModel<B>>,
    pub optimizer: TrainingOptimizer<B>,
    accumulator: GradientsAccumulator,
    loss: CrossEntropyLoss<B>,
    /// What backward keeps: recompute and activation compression.
    keeping: KeptActivations,
}

/// What the config asks backward to keep: `model.checkpoint` and `model.activation_bits`.
pub(crate) fn kept_activations(config: &Config) -> KeptActivations {
    KeptActivations {
        recompute: config.model.effective_recompute(),
        bits: config.model.activation_bits,
    }
}

/// Where a micro-batch's memory readings go.
pub(crate) struct MemoryProbe<'a> {
    pub memory: &'a MemorySampler,
    pub backend: BackendChoice,
}

impl MemoryProbe<'_> {
    /// Reads the device's memory once the queued work has run: Burn's fusion (on with CUDA and
    /// wgpu) runs operations lazily, so without the sync the reading would miss what the
    /// forward still has to allocate (lavapipe read 6.1 MiB in use of a 8.6 MiB plan).
    fn sample_device<B: AutodiffBackend>(&self, device: &B::Device) {
        if self.backend.on_device() {
            // A failed sync surfaces at the step's next read of a value, with its cause.
            let _ = B::sync(device);
        }
        crate::fit::sample_device(self.memory, self.backend);
    }
}

impl<B: AutodiffBackend> Learner<B> {
    /// The model being trained.
    pub(crate) fn model(&self) -> &ActionModel<B> {
        self.model
            .as_ref()
            .expect("the model is back after every step")
    }
    pub(crate) fn new(
        model: ActionModel<B>,
        optimizer: TrainingOptimizer<B>,
        loss: CrossEntropyLoss<B>,
        keeping: KeptActivations,
    ) -> Self {
        Self {
            model: Some(model),
            optimizer,
            accumulator: GradientsAccumulator::default(),
            loss,
            keeping,
        }
    }

    /// Forward and backward of one micro-batch whose loss weighs `weight` (its share of the
    /// accumulation group, times the fp16 loss scale); adds its gradients to the group's.
    /// Returns the micro-batch's (unweighted) loss.
    pub(crate) fn micro_batch(
        &mut self,
        batch: &mut Batch,
        weight: f64,
        segment_seed: u64,
        probe: &MemoryProbe<'_>,
        device: &B::Device,
    ) -> f32 {
        let labels = labels_tensor::<B>(batch, device);
        let video = video_tensor::<B>(batch, device);
        let keypoints = keypoint_tensor::<B>(batch, device);
        // Every mode goes through `loss_and_gradients`: it differentiates the convolutions by
        // hand (faster than autodiff's generic conv backward), and without recompute it is one
        // forward and one backward, like a plain `backward()`.
        let plain = self.keeping.recompute == RecomputeMode::None;
        probe.memory.phase(if plain {
            Phase::Forward
        } else {
            Phase::ForwardBackward
        });
        let loss_function = &self.loss;
        let model = self
            .model
            .as_ref()
            .expect("the model is back after every step");
        let ((loss_value, grads), inside) =
            crate::device::memory::probing_inside(probe.backend, || {
                let forward_backward = || {
                    model.loss_and_gradients(
                        video,
                        keypoints,
                        |scores| {
                            let loss = loss_function.forward(scores, labels);
                            if plain {
                                // The graph is whole here: the device's in-use peak of a step
                                // without recompute, as far as a step's outside shows it.
                                probe.sample_device::<B>(device);
                                probe.memory.phase(Phase::Backward);
                            }
                            loss
                        },
                        weight,
                        self.keeping,
                        segment_seed,
                    )
                };
                crate::backend::on_compute_threads::<B, _>(device, forward_backward)
            });
        if let Some(reading) = inside {
            probe
                .memory
                .device_sample(reading.in_use_bytes, reading.reserved_bytes, None);
        }
        if !plain {
            // Recompute's peaks are inside the replays; this reads what remains after them.
            probe.sample_device::<B>(device);
        }
        if loss_value.is_finite() {
            let accumulator = &mut self.accumulator;
            crate::backend::on_compute_threads::<B, _>(device, || {
                accumulator.accumulate(model, grads)
            });
        }
        loss_value
    }

    /// Ends the accumulation group: sums the gradients over the ranks, unscales (fp16) and
    /// clips them, then steps at `lr`, or skips the step when fp16 gradients overflowed (on
    /// every rank alike: an inf on one rank is in everyone's sum). Returns the loss scale that
    /// overflowed when it skipped.
    pub(crate) fn optimizer_step(
        &mut self,
        lr: f64,
        scaler: &mut LossScaler,
        clip: f64,
        world: &World,
        device: &B::Device,
    ) -> Option<f64> {
        let grads = self.accumulator.grads();
        let grads = all_reduce_gradients::<B, _>(world, self.model(), grads, device);
        // The update's passes on the pool's threads, as the micro-batches' (the all-reduce
        // above stays on the thread that initialised MPI).
        let update = || match scaler.unscale::<B, _>(self.model(), grads, clip) {
            StepDecision::Step(grads) => {
                let model = self
                    .model
                    .take()
                    .expect("the model is back after every step");
                self.model = Some(self.optimizer.step(lr, model, grads));
                None
            }
            StepDecision::Skip { scale } => Some(scale),
        };
        crate::backend::on_compute_threads::<B, _>(device, update)
    }
}
