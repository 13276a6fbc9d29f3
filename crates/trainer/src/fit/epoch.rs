//! One epoch's training pass: the epoch's sample order (shuffled or class-balanced) and its
//! augmentation, micro-batches grouped for accumulation, one optimizer step per group, observers
//! told of every step, and checkpoints every `train.checkpoint_every_steps`.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{Config, Sampler};
use vidtrain_data::{Dataset, Pipeline, Transforms, class_balanced, shuffled};
use vidtrain_memutil::Phase;

use crate::distributed::GroupShards;
use crate::fit::RunContext;
use crate::fit::observers::{RunObserver, StepRecord};
use crate::fit::optimizer::learning_rate;
use crate::fit::step::{Learner, MemoryProbe};
use crate::persist::checkpoint::{self, TrainingState};
use crate::{Error, Result};

/// The training order of epoch `epoch`: a permutation, or class-balanced draws.
pub(crate) fn epoch_order(
    config: &Config,
    dataset: &Dataset,
    train_ids: &[usize],
    epoch: usize,
) -> Vec<usize> {
    let seed = config.train.seed ^ ((epoch as u64) << 32);
    match config.data.sampler {
        Sampler::Shuffle => shuffled(train_ids, seed),
        Sampler::Balanced => class_balanced(train_ids, |id| dataset.chunks.samples[id].class, seed),
    }
}

/// What the training samples of epoch `epoch` go through: augmentation (and the evaluation crop
/// it falls back to) when any is configured.
pub(crate) fn training_transforms(config: &Config, epoch: usize) -> Transforms {
    if config.augments() || config.data.eval_crop < 1.0 {
        Transforms::Training {
            epoch_seed: config.train.seed ^ ((epoch as u64) << 32) ^ 0xa06e_2026,
        }
    } else {
        Transforms::None
    }
}

/// The loop's fixed numbers.
pub(crate) struct Schedule {
    /// Samples per accumulation group of one rank (`batch_size × accumulate_grad_batches`).
    pub group_samples: usize,
    /// Optimizer steps of the whole run (for the learning-rate schedule).
    pub total_steps: usize,
    /// `train.max_steps`, when set.
    pub max_steps: Option<usize>,
}

impl Schedule {
    pub(crate) fn reached_max_steps(&self, step: usize) -> bool {
        self.max_steps.is_some_and(|max| step >= max)
    }
}

/// What is being trained: the model and optimizer, the loop's position, the last checkpoint.
pub(crate) struct Training<B: AutodiffBackend> {
    pub learner: Learner<B>,
    pub state: TrainingState,
    pub last_checkpoint: Option<PathBuf>,
    /// Whether this rank saves checkpoints (rank 0 only; the replicas are equal).
    pub saves: bool,
}

impl<B: AutodiffBackend> Training<B> {
    /// Saves `checkpoints/last/` and remembers it.
    pub(crate) fn save_last(
        &mut self,
        config: &Config,
        checkpoints: &std::path::Path,
    ) -> Result<PathBuf> {
        if !self.saves {
            let folder = checkpoints.join(checkpoint::LAST);
            self.last_checkpoint = Some(folder.clone());
            return Ok(folder);
        }
        let folder = checkpoint::save(
            checkpoints,
            self.learner.model(),
            &self.learner.optimizer,
            &self.state,
            config,
        )?;
        self.last_checkpoint = Some(folder.clone());
        Ok(folder)
    }
}

/// How an epoch's training pass ended.
pub(crate) struct PassEnd {
    /// Stopped by a request (Ctrl-C, SIGTERM) after an optimizer step.
    pub interrupted: bool,
    /// Samples in the epoch's order.
    pub epoch_samples: usize,
    /// Sample loads skipped by the pipeline.
    pub skipped_loads: usize,
}

/// Trains epoch `training.state.epoch` from `training.state.position` on: this rank's shard of
/// each accumulation group in micro-batches, then one optimizer step on the gradients summed
/// over the ranks; observers told of every step. Ends at the epoch's end, at `train.max_steps`,
/// or after the step during which a stop was requested (on any rank).
pub(crate) fn train_pass<B: AutodiffBackend>(
    context: &mut RunContext<'_>,
    training: &mut Training<B>,
    observers: &mut [Box<dyn RunObserver>],
    schedule: &Schedule,
    device: &B::Device,
) -> Result<PassEnd> {
    let config = context.config;
    let world = context.options.world.clone();
    let epoch = training.state.epoch;
    let order = epoch_order(config, &context.dataset, &context.train_ids, epoch);
    // Accumulation groups are fixed by position in the epoch's order, so the loss weight of
    // each micro-batch is its share of its group's samples (all ranks): a last, smaller group
    // steps with the right scale, `batch_size=4` equals `batch_size=1
    // accumulate_grad_batches=4`, and 2 ranks of 2 equal one rank of 4.
    let shards = GroupShards::new(
        order.len(),
        training.state.position,
        schedule.group_samples,
        world.rank(),
        world.size(),
    );
    let positions = shards.positions();
    let mut pipeline = Pipeline::builder_for(&config.data)
        .transforms(training_transforms(config, epoch))
        .build(
            Arc::clone(&context.dataset),
            positions.iter().map(|&position| order[position]).collect(),
        );
    let stop_requested = || context.options.stop_requested();
    let mut interrupted = false;
    let mut batches = pipeline.by_ref().peekable();
    for group in 0..shards.groups() {
        let group_range = shards.group_range(group);
        let group_len = group_range.len();
        // This rank's share of the group: Σ loss × weight, Σ loss × samples, samples.
        let mut shard_loss = [0.0f64; 3];
        loop {
            context.memory.phase(Phase::DataWait);
            // A rank may have no micro-batch in a short last group (or all its loads skipped);
            // it still takes part in the group's all-reduce.
            let Some(batch) = batches.next_if(|next| match next {
                Ok(batch) => shards.group_of(positions[batch.positions[0]]) == group,
                Err(_) => true,
            }) else {
                break;
            };
            let mut batch = batch?;
            let state = &mut training.state;
            let first_position = positions[batch.positions[0]];
            let weight = batch.len() as f64 / group_len as f64;

            // Dropout masks depend only on the seed and the sample position, so a resumed run
            // draws exactly the masks the uninterrupted run would have drawn.
            B::seed(
                device,
                config.train.seed ^ ((epoch as u64) << 40) ^ first_position as u64,
            );
            let segment_seed =
                config.train.seed ^ 0x5eed ^ ((epoch as u64) << 40) ^ first_position as u64;
            // fp16: gradients of `scale × weight × loss`; unscaled at the group's end.
            let loss_value = training.learner.micro_batch(
                &mut batch,
                weight * state.loss_scaler.scale,
                segment_seed,
                &MemoryProbe {
                    memory: &context.memory,
                    backend: context.backend,
                },
                device,
            );
            if !loss_value.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value: loss_value,
                    step: state.step + 1,
                    epoch,
                    last_checkpoint: training.last_checkpoint.clone(),
                });
            }
            shard_loss[0] += loss_value as f64 * weight;
            shard_loss[1] += loss_value as f64 * batch.len() as f64;
            shard_loss[2] += batch.len() as f64;
            for observer in observers.iter_mut() {
                observer.micro_batch(loss_value, state.step);
            }
        }

        // The group's losses over all ranks, and whether any rank was asked to stop, so that
        // every rank logs the same numbers and all stop after the same step.
        let mut totals = [
            shard_loss[0],
            shard_loss[1],
            shard_loss[2],
            f64::from(u8::from(stop_requested())),
        ];
        world.sum_f64("the step's loss all-reduce", &mut totals);
        let [group_loss, loss_sum, samples, stops] = totals;
        let state = &mut training.state;
        if samples == 0.0 {
            // Every load of the group was skipped (`data.on_bad_sample = "skip"`): no step.
            state.position = group_range.end;
            interrupted = stops > 0.0;
            if interrupted {
                break;
            }
            continue;
        }
        state.epoch_loss_sum += loss_sum;
        state.epoch_loss_samples += samples as usize;
        state.train_samples += samples as usize;
        let lr = learning_rate(config, state.step, schedule.total_steps);
        context.memory.phase(Phase::OptimizerStep);
        let overflowed = training.learner.optimizer_step(
            lr,
            &mut state.loss_scaler,
            config.trainer.gradient_clip_val,
            &world,
            device,
        );
        if let Some(scale) = overflowed {
            tracing::warn!(
                "step {}: inf/NaN gradients at loss scale {scale}; step skipped, scale now {} \
                 ({} skipped so far)",
                state.step + 1,
                state.loss_scaler.scale,
                state.loss_scaler.skipped_steps
            );
        }
        state.step += 1;
        state.position = group_range.end;
        let record = StepRecord {
            epoch,
            step: state.step,
            loss: group_loss,
            lr,
            loss_scale: state.loss_scaler.enabled.then_some(state.loss_scaler.scale),
            skipped: overflowed.is_some(),
        };
        for observer in observers.iter_mut() {
            observer.step(&record, &mut context.run_dir)?;
        }
        let every = config.train.checkpoint_every_steps;
        if every > 0 && state.step.is_multiple_of(every) {
            let checkpoints = context.run_dir.checkpoints();
            training.save_last(config, &checkpoints)?;
        }
        if stops > 0.0 {
            interrupted = true;
            break;
        }
        if schedule.reached_max_steps(training.state.step) {
            break;
        }
    }
    drop(batches);
    let mut skipped = [pipeline.skipped() as f64];
    world.sum_f64("the skipped-sample count", &mut skipped);
    Ok(PassEnd {
        interrupted,
        epoch_samples: order.len(),
        skipped_loads: skipped[0] as usize,
    })
}
