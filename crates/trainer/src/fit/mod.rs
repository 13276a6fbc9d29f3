//! The training loop, generic over the autodiff backend: epochs of shuffled (or class-balanced)
//! micro-batches with exact gradient accumulation and optimizer steps (`step`), validation
//! (`validation`), model selection and early stopping (`selection`), and observers that log and
//! draw the run (`observers`). This file holds the loop that ties them together.

mod observers;
pub(crate) mod optimizer;
pub(crate) mod precision;
mod progress;
mod selection;
mod step;
mod validation;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{Config, Precision, Sampler};
use vidtrain_data::{Dataset, Pipeline, Transforms, class_balanced, shuffled};
use vidtrain_memutil::{MemorySampler, Phase};
use vidtrain_model::{ActionModel, ActionModelConfig, InputShape};

use crate::device::memory as device_memory;
use crate::fit::observers::{
    EpochRecord, MetricsLog, Pictures, RunObserver, StepRecord, TensorBoardLog, epochs_logged,
};
use crate::fit::optimizer::{TrainingOptimizer, class_weights, learning_rate, training_loss};
use crate::fit::precision::{LossScaler, compute_dtype};
use crate::fit::progress::Progress;
use crate::fit::selection::ModelSelection;
use crate::fit::step::{Learner, MemoryProbe};
use crate::persist::checkpoint::{self, TrainingState};
use crate::persist::run_dir::RunDir;
use crate::report::metrics::ClassificationMetrics;
use crate::{BackendChoice, Error, Result, RunSummary, TrainOptions};

/// Everything a run needs that does not depend on the backend.
pub(crate) struct RunContext<'a> {
    pub config: &'a Config,
    pub options: &'a TrainOptions,
    pub dataset: Arc<Dataset>,
    pub train_ids: Vec<usize>,
    pub val_ids: Vec<usize>,
    pub run_dir: RunDir,
    pub memory: MemorySampler,
    pub backend_name: &'static str,
    /// The precision actually trained in (32 where a fallback applied).
    pub precision: Precision,
    /// The backend, for device memory readings.
    pub backend: BackendChoice,
    pub started: Instant,
}

/// Records a device memory reading (nothing on the CPU backend).
pub(crate) fn sample_device(memory: &MemorySampler, backend: BackendChoice) {
    if let Some(reading) = device_memory::read(backend) {
        memory.device_sample(
            reading.in_use_bytes,
            reading.reserved_bytes,
            reading.driver_used_bytes,
        );
    }
}

/// Returns the device's cached pool memory between phases and logs how much came back.
fn release_device_cache(backend: BackendChoice, when: &str) {
    if let Some(released) = device_memory::release_cached(backend) {
        tracing::info!(
            "{when}: returned {} of cached device memory",
            vidtrain_memutil::format_bytes(released)
        );
    }
}

/// Builds the model (with `model.pretrained` loaded) and logs its summary.
fn build_model<B: AutodiffBackend>(
    context: &RunContext<'_>,
    device: &B::Device,
) -> Result<ActionModel<B>> {
    let config = context.config;
    let mut model_config = ActionModelConfig::from_config(config);
    model_config.compute_dtype = compute_dtype(context.precision);
    let mut model: ActionModel<B> = model_config.init(device);
    model.materialize_parameters();
    if !config.model.pretrained.is_empty() {
        let path = std::path::Path::new(&config.model.pretrained);
        let report = crate::persist::pretrained::load(&mut model, config, path)?;
        match report.head_reinitialised_from {
            Some(file_classes) => tracing::info!(
                "model.pretrained: {} tensors from {}; its classifier has {file_classes} classes, \
                 this model {}: the classifier starts fresh",
                report.loaded,
                path.display(),
                config.model.model_class_num
            ),
            None => tracing::info!(
                "model.pretrained: {} tensors from {}",
                report.loaded,
                path.display()
            ),
        }
    }
    let summary = model_config.summary(InputShape {
        batch: config.data.batch_size,
        frames: config.data.uniform_temporal_subsample_num,
        image: config.data.img_size,
    });
    tracing::info!(
        "model: {:?} backbone, {} views, fusion {:?}, compute {:?}, recompute {:?}; per \
         micro-batch of {}:\n{}",
        config.model.backbone,
        model_config.views,
        model_config.fusion,
        model_config.compute_dtype,
        config.model.effective_checkpoint(),
        config.data.batch_size,
        summary.table()
    );
    context.run_dir.write_json("model-summary.json", &summary)?;
    Ok(model)
}

/// Samples per class of `ids`.
fn class_counts(dataset: &Dataset, ids: &[usize], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &id in ids {
        counts[dataset.plan.samples[id].class] += 1;
    }
    counts
}

/// The training order of epoch `epoch`: a permutation, or class-balanced draws.
fn epoch_order(
    config: &Config,
    dataset: &Dataset,
    train_ids: &[usize],
    epoch: usize,
) -> Vec<usize> {
    let seed = config.train.seed ^ ((epoch as u64) << 32);
    match config.data.sampler {
        Sampler::Shuffle => shuffled(train_ids, seed),
        Sampler::Balanced => class_balanced(train_ids, |id| dataset.plan.samples[id].class, seed),
    }
}

/// What the training samples of epoch `epoch` go through: augmentation (and the evaluation crop
/// it falls back to) when any is configured.
fn training_transforms(config: &Config, epoch: usize) -> Transforms {
    if config.augments() || config.data.eval_crop < 1.0 {
        Transforms::Training {
            epoch_seed: config.train.seed ^ ((epoch as u64) << 32) ^ 0xa06e_2026,
        }
    } else {
        Transforms::None
    }
}

/// Trains and validates; returns the summary (also written to `summary.json`).
pub(crate) fn fit<B: AutodiffBackend>(
    mut context: RunContext<'_>,
    device: B::Device,
) -> Result<RunSummary> {
    let config = context.config;
    B::seed(&device, config.train.seed);
    let model = build_model::<B>(&context, &device)?;
    let parameters = model.num_params();
    let classes = config.model.model_class_num;
    let train_counts = class_counts(&context.dataset, &context.train_ids, classes);
    let val_counts = class_counts(&context.dataset, &context.val_ids, classes);
    let train_labels: Vec<usize> = context
        .train_ids
        .iter()
        .map(|&id| context.dataset.plan.samples[id].class)
        .collect();
    let weights = class_weights(config, &train_labels);
    tracing::info!(
        "class counts (train / validation): {}{}",
        config
            .data
            .class_names
            .iter()
            .enumerate()
            .map(|(class, name)| format!("{name} {}/{}", train_counts[class], val_counts[class]))
            .collect::<Vec<_>>()
            .join(", "),
        weights.as_ref().map_or(String::new(), |weights| format!(
            "; loss weights {:?}",
            weights
                .iter()
                .map(|w| (w * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        ))
    );
    let batch_size = config.data.batch_size;
    let accumulate = config.train.accumulate_grad_batches;
    let max_steps = usize::try_from(config.train.max_steps).ok();
    let steps_per_epoch = context
        .train_ids
        .len()
        .div_ceil(batch_size)
        .div_ceil(accumulate);
    let total_steps = max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.train.max_epochs);

    let checkpoints = context.run_dir.checkpoints();
    let mut state = TrainingState::start(LossScaler::new(context.precision));
    let mut model = model;
    let mut optimizer = TrainingOptimizer::<B>::from_config(config);
    let mut earlier_epochs = Vec::new();
    let mut best_metrics: Option<serde_json::Value> = None;
    if let Some(folder) = checkpoint::resolve_resume(config, context.run_dir.path())? {
        let (restored_model, restored_optimizer, restored_state) =
            checkpoint::load(&folder, model, optimizer, config, &device)?;
        tracing::info!(
            "resuming from {} at epoch {}, step {}",
            folder.display(),
            restored_state.epoch,
            restored_state.step
        );
        if let Some(run_folder) = crate::inference::run_folder_of(&folder) {
            earlier_epochs = epochs_logged(&run_folder);
            earlier_epochs.retain(|point| point.epoch < restored_state.epoch);
        }
        if let Some(earlier_checkpoints) = folder.parent() {
            best_metrics = checkpoint::carry_best(earlier_checkpoints, &checkpoints)?;
        }
        (model, optimizer, state) = (restored_model, restored_optimizer, restored_state);
    }
    let recompute = config.model.effective_checkpoint();
    let loss_function = training_loss::<B>(config, weights.as_deref(), &device);
    let mut learner = Learner::new(model, optimizer, loss_function, recompute);
    let save_last = |learner: &Learner<B>, state: &TrainingState| {
        checkpoint::save(
            &checkpoints,
            learner.model(),
            &learner.optimizer,
            state,
            config,
        )
    };

    let mut observers: Vec<Box<dyn RunObserver>> = vec![
        Box::new(MetricsLog),
        Box::new(Pictures::new(config, earlier_epochs)),
    ];
    if config.trainer.tensorboard {
        observers.push(Box::new(TensorBoardLog::create(&context.run_dir, config)?));
    }
    observers.push(Box::new(Progress::new(
        context.options.progress_bar,
        config.train.max_epochs,
        context.train_ids.len().div_ceil(batch_size),
    )));
    let selection = ModelSelection::from_config(config);

    // Throughput counts what this process trained, not the samples of the run it resumed.
    let samples_before = state.train_samples;
    let mut train_time = Duration::ZERO;
    let mut last_metrics: Option<(ClassificationMetrics, f64)> = None;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut best_checkpoint: Option<PathBuf> = None;
    let mut stopped_early = false;
    let mut epochs_done = state.epoch.saturating_sub(1);
    let mut skipped_sample_loads = 0usize;
    let reached_max_steps = |step: usize| max_steps.is_some_and(|max| step >= max);
    let stop_requested = || {
        context
            .options
            .stop
            .as_ref()
            .is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Relaxed))
    };
    // Accumulation groups are fixed by position in the epoch's order, so the loss weight of each
    // micro-batch is its share of its group's samples: a last, smaller group steps with the
    // right scale, and `batch_size=4` equals `batch_size=1 accumulate_grad_batches=4`.
    let group_samples = batch_size * accumulate;

    'epochs: while state.epoch <= config.train.max_epochs && !reached_max_steps(state.step) {
        let epoch = state.epoch;
        context.memory.mark(format!("epoch {epoch} train"));
        observers
            .iter_mut()
            .for_each(|observer| observer.epoch_started(epoch));
        let epoch_started = Instant::now();
        let order = epoch_order(config, &context.dataset, &context.train_ids, epoch);
        let resumed_at = state.position;
        let mut pipeline = Pipeline::builder_for(&config.data)
            .transforms(training_transforms(config, epoch))
            .build(Arc::clone(&context.dataset), order[resumed_at..].to_vec());
        let mut group_loss = 0.0f64;
        let mut interrupted = false;

        let mut batches = pipeline.by_ref().peekable();
        loop {
            context.memory.phase(Phase::DataWait);
            let Some(batch) = batches.next() else {
                break;
            };
            let mut batch = batch?;
            let first_position = resumed_at + batch.positions[0];
            let group = first_position / group_samples;
            let group_start = group * group_samples;
            let group_len = group_samples.min(order.len() - group_start);
            let weight = batch.len() as f64 / group_len as f64;

            // Dropout masks depend only on the seed and the sample position, so a resumed run
            // draws exactly the masks the uninterrupted run would have drawn.
            B::seed(
                &device,
                config.train.seed ^ ((epoch as u64) << 40) ^ first_position as u64,
            );
            let segment_seed =
                config.train.seed ^ 0x5eed ^ ((epoch as u64) << 40) ^ first_position as u64;
            // fp16: gradients of `scale × weight × loss`; unscaled at the group's end.
            let loss_value = learner.micro_batch(
                &mut batch,
                weight * state.loss_scaler.scale,
                segment_seed,
                &MemoryProbe {
                    memory: &context.memory,
                    backend: context.backend,
                },
                &device,
            );
            if !loss_value.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value: loss_value,
                    step: state.step + 1,
                    epoch,
                    last_checkpoint,
                });
            }
            group_loss += loss_value as f64 * weight;
            state.epoch_loss_sum += loss_value as f64 * batch.len() as f64;
            state.epoch_loss_samples += batch.len();
            state.train_samples += batch.len();
            for observer in observers.iter_mut() {
                observer.micro_batch(loss_value, state.step);
            }

            // The group ends when the next batch belongs to another group (or nothing follows).
            let group_ends = match batches.peek() {
                Some(Ok(next)) => (resumed_at + next.positions[0]) / group_samples != group,
                _ => true,
            };
            if !group_ends {
                continue;
            }
            let lr = learning_rate(config, state.step, total_steps);
            context.memory.phase(Phase::OptimizerStep);
            let overflowed = learner.optimizer_step(
                lr,
                &mut state.loss_scaler,
                config.trainer.gradient_clip_val,
            );
            if let Some(scale) = overflowed {
                tracing::warn!(
                    "step {}: inf/NaN gradients at loss scale {scale}; step skipped, scale \
                     now {} ({} skipped so far)",
                    state.step + 1,
                    state.loss_scaler.scale,
                    state.loss_scaler.skipped_steps
                );
            }
            state.step += 1;
            state.position = group_start + group_len;
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
            group_loss = 0.0;
            let every = config.train.checkpoint_every_steps;
            if every > 0 && state.step.is_multiple_of(every) {
                last_checkpoint = Some(save_last(&learner, &state)?);
            }
            if stop_requested() {
                interrupted = true;
                break;
            }
            if reached_max_steps(state.step) {
                break;
            }
        }
        drop(batches);
        skipped_sample_loads += pipeline.skipped();
        drop(pipeline);
        train_time += epoch_started.elapsed();
        if interrupted {
            let folder = save_last(&learner, &state)?;
            observers
                .iter_mut()
                .for_each(|observer| observer.finished());
            return Err(Error::Interrupted { checkpoint: folder });
        }
        let epoch_finished = state.position >= order.len();
        let train_loss = state.epoch_loss_sum / state.epoch_loss_samples.max(1) as f64;
        state.last_train_loss = Some(train_loss);
        epochs_done = epoch;

        context.memory.mark(format!("epoch {epoch} validation"));
        context.memory.phase(Phase::Validation);
        release_device_cache(context.backend, "before validation");
        let (metrics, val_loss, val_skipped) = validation::validate(
            config,
            &context.dataset,
            &context.val_ids,
            learner.model(),
            &device,
        )?;
        skipped_sample_loads += val_skipped;
        sample_device(&context.memory, context.backend);
        release_device_cache(context.backend, "after validation");
        context.memory.phase(Phase::Other);
        let mut record = EpochRecord {
            epoch,
            step: state.step,
            train_loss,
            val_loss,
            metrics: &metrics,
            val_skipped,
            epoch_train_s: epoch_started.elapsed().as_secs_f64(),
            host_rss_bytes: vidtrain_memutil::current_rss_bytes(),
            peak_host_rss_bytes: context.memory.peak_sampled(),
            is_best: false,
        };
        record.is_best = selection.consider(&mut state, epoch, record.metric(&selection.monitor));
        if record.is_best {
            let best = serde_json::json!({
                "epoch": epoch, "step": state.step, "monitor": selection.monitor,
                "value": record.metric(&selection.monitor), "val_loss": val_loss,
                "val_accuracy": metrics.accuracy, "val_macro_f1": metrics.macro_f1,
                "val_macro_auroc": metrics.macro_auroc, "train_loss": train_loss,
            });
            best_checkpoint = Some(checkpoint::save_best(
                &checkpoints,
                learner.model(),
                &best,
                config,
            )?);
            best_metrics = Some(best);
        }
        for observer in observers.iter_mut() {
            observer.epoch(&record, &mut context.run_dir)?;
        }
        last_metrics = Some((metrics, val_loss));
        if epoch_finished {
            state.epoch += 1;
            state.position = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_loss_samples = 0;
        }
        let stop_early = epoch_finished && selection.should_stop(&state, epoch);
        if stop_early {
            // The run is complete: a resume must not train on.
            state.epoch = config.train.max_epochs + 1;
        }
        last_checkpoint = Some(save_last(&learner, &state)?);
        if stop_early {
            let (best_epoch, best_value) = state.best.unwrap_or_default();
            tracing::info!(
                "early stopping after epoch {epoch}: {} has not improved for {} epochs (best \
                 {best_value:.4} at epoch {best_epoch})",
                selection.monitor,
                epoch - best_epoch
            );
            stopped_early = true;
            break 'epochs;
        }
        if reached_max_steps(state.step) {
            break 'epochs;
        }
    }
    observers
        .iter_mut()
        .for_each(|observer| observer.finished());

    let (metrics, val_loss) = last_metrics
        .unwrap_or_else(|| (ClassificationMetrics::compute(&[], &[], classes), f64::NAN));
    let memory = std::mem::replace(
        &mut context.memory,
        MemorySampler::start(Duration::from_secs(3600)),
    )
    .finish();
    context.run_dir.write_json("memory.json", &memory)?;
    context
        .run_dir
        .write("memory.svg", memory.svg().as_bytes())?;
    let best_exists = checkpoints.join(checkpoint::BEST).is_dir();
    let summary = RunSummary {
        run_dir: context.run_dir.path().to_path_buf(),
        backend: context.backend_name.to_string(),
        precision: context.precision.to_string(),
        skipped_optimizer_steps: state.loss_scaler.skipped_steps,
        final_loss_scale: state.loss_scaler.enabled.then_some(state.loss_scaler.scale),
        val_accuracy: metrics.accuracy,
        val_macro_f1: metrics.macro_f1,
        val_loss,
        val_macro_auroc: metrics.macro_auroc,
        val_confusion: metrics.confusion.clone(),
        train_loss_final: state.last_train_loss.unwrap_or(f64::NAN),
        monitor: selection.monitor.clone(),
        best_epoch: state.best.map(|(epoch, _)| epoch),
        best_value: state.best.map(|(_, value)| value),
        best_metrics,
        best_checkpoint: best_checkpoint
            .or_else(|| best_exists.then(|| checkpoints.join(checkpoint::BEST))),
        stopped_early,
        class_names: config.data.class_names.clone(),
        class_counts_train: train_counts,
        class_counts_val: val_counts,
        epochs: epochs_done,
        steps: state.step,
        train_samples: state.train_samples,
        train_size: context.train_ids.len(),
        val_size: context.val_ids.len(),
        train_samples_this_run: state.train_samples - samples_before,
        samples_per_s: (state.train_samples - samples_before) as f64
            / train_time.as_secs_f64().max(1e-9),
        wall_s: context.started.elapsed().as_secs_f64(),
        peak_host_rss_bytes: memory.peak_host_rss_bytes,
        peak_process_tree_rss_bytes: (memory.peak_process_tree_rss_bytes > 0)
            .then_some(memory.peak_process_tree_rss_bytes),
        peak_device_bytes: memory.peak_device_in_use_bytes,
        peak_device_reserved_bytes: memory.peak_device_reserved_bytes,
        parameters,
        skipped_sample_loads,
        data_problems: context
            .dataset
            .index
            .problem_counts()
            .into_iter()
            .map(|(kind, count)| (kind.name().to_string(), count))
            .collect(),
        non_finite_keypoint_values: context.dataset.non_finite_keypoint_values(),
        last_checkpoint,
    };
    context.run_dir.write_json("summary.json", &summary)?;
    Ok(summary)
}
