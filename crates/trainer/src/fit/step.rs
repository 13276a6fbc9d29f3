//! One training step: micro-batches in (forward, backward, accumulate), then one optimizer step
//! per accumulation group (unscale, clip, step), and the conversion of loaded batches to tensors.

use burn::nn::loss::CrossEntropyLoss;
use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::CheckpointMode;
use vidtrain_data::Batch;
use vidtrain_memutil::{MemorySampler, Phase};
use vidtrain_model::ActionModel;

use crate::BackendChoice;
use crate::fit::optimizer::TrainingOptimizer;
use crate::fit::precision::{LossScaler, StepDecision};

/// The model, its optimizer and the gradients of the accumulation group in progress.
pub(crate) struct Learner<B: AutodiffBackend> {
    /// Always `Some` between calls; taken by the optimizer step, which consumes the model so
    /// that its tensors can be updated in place.
    model: Option<ActionModel<B>>,
    pub optimizer: TrainingOptimizer<B>,
    accumulator: GradientsAccumulator<ActionModel<B>>,
    loss: CrossEntropyLoss<B>,
    recompute: CheckpointMode,
}

/// Where a micro-batch's memory readings go.
pub(crate) struct MemoryProbe<'a> {
    pub memory: &'a MemorySampler,
    pub backend: BackendChoice,
}

impl MemoryProbe<'_> {
    fn sample_device(&self) {
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
        recompute: CheckpointMode,
    ) -> Self {
        Self {
            model: Some(model),
            optimizer,
            accumulator: GradientsAccumulator::new(),
            loss,
            recompute,
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
        let plain = self.recompute == CheckpointMode::None;
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
        let (loss_value, grads) = model.loss_and_gradients(
            video,
            keypoints,
            |scores| {
                let loss = loss_function.forward(scores, labels);
                if plain {
                    // The graph is whole here: the device's in-use peak of a step without
                    // recompute.
                    probe.sample_device();
                    probe.memory.phase(Phase::Backward);
                }
                loss
            },
            weight,
            self.recompute,
            segment_seed,
        );
        if !plain {
            // Recompute's peaks are inside the replays; this reads what remains after them.
            probe.sample_device();
        }
        if loss_value.is_finite() {
            self.accumulator.accumulate(model, grads);
        }
        loss_value
    }

    /// Ends the accumulation group: unscales (fp16) and clips the summed gradients, then steps
    /// at `lr`, or skips the step when fp16 gradients overflowed. Returns the loss scale that
    /// overflowed when it skipped.
    pub(crate) fn optimizer_step(
        &mut self,
        lr: f64,
        scaler: &mut LossScaler,
        clip: f64,
    ) -> Option<f64> {
        let grads = self.accumulator.grads();
        match scaler.unscale::<B, _>(self.model(), grads, clip) {
            StepDecision::Step(grads) => {
                let model = self
                    .model
                    .take()
                    .expect("the model is back after every step");
                self.model = Some(self.optimizer.step(lr, model, grads));
                None
            }
            StepDecision::Skip { scale } => Some(scale),
        }
    }
}

/// u8 frames → f32 in 0..1, `[batch, views, t, h, w, 3]` (`None` when RGB is not loaded).
pub(crate) fn video_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Option<Tensor<B, 6>> {
    let shape = batch.shape;
    if !shape.rgb {
        return None;
    }
    let values: Vec<f32> = batch
        .video
        .iter()
        .map(|&byte| f32::from(byte) * (1.0 / 255.0))
        .collect();
    let dims = [
        batch.len(),
        shape.views,
        shape.frames,
        shape.img_size,
        shape.img_size,
        3,
    ];
    Some(Tensor::from_data(TensorData::new(values, dims), device))
}

/// Keypoints `[batch, views, t, joints, 3]`, moved out of the batch (`None` when keypoints are
/// not loaded).
pub(crate) fn keypoint_tensor<B: Backend>(
    batch: &mut Batch,
    device: &B::Device,
) -> Option<Tensor<B, 5>> {
    let shape = batch.shape;
    (shape.joints > 0).then(|| {
        let dims = [batch.len(), shape.views, shape.frames, shape.joints, 3];
        let values = std::mem::take(&mut batch.keypoints);
        Tensor::from_data(TensorData::new(values, dims), device)
    })
}

pub(crate) fn labels_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 1, Int> {
    let labels: Vec<i64> = batch.labels.iter().map(|&label| label as i64).collect();
    Tensor::from_data(TensorData::new(labels, [batch.len()]), device)
}
