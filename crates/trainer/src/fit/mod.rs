//! The training loop, generic over the autodiff backend: epochs of shuffled micro-batches with
//! exact gradient accumulation, Adam steps, validation, metrics lines and checkpoints.

pub(crate) mod precision;
mod progress;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsAccumulator, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;
use vidtrain_config::{CheckpointMode, Config, Precision};
use vidtrain_data::{Batch, Dataset, Pipeline, shuffled};
use vidtrain_memutil::{MemorySampler, Phase};
use vidtrain_model::{ActionModel, ActionModelConfig, InputShape};

use crate::device::memory as device_memory;
use crate::fit::precision::{LossScaler, StepDecision, compute_dtype};
use crate::fit::progress::Progress;
use crate::persist::checkpoint::{self, TrainingState};
use crate::persist::run_dir::RunDir;
use crate::report::confusion_svg::confusion_matrix_svg;
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
fn sample_device(memory: &MemorySampler, backend: BackendChoice) {
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

/// Trains and validates; returns the summary (also written to `summary.json`).
pub(crate) fn fit<B: AutodiffBackend>(
    mut context: RunContext<'_>,
    device: B::Device,
) -> Result<RunSummary> {
    let config = context.config;
    B::seed(&device, config.train.seed);
    let mut model_config = ActionModelConfig::from_config(config);
    model_config.compute_dtype = compute_dtype(context.precision);
    let mut model: ActionModel<B> = model_config.init(&device);
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
    let parameters = model.num_params();
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
    let mut optimizer = AdamConfig::new().init::<B, ActionModel<B>>();
    let loss_function = CrossEntropyLossConfig::new().init(&device);
    let batch_size = config.data.batch_size;
    let accumulate = config.train.accumulate_grad_batches;
    let max_steps = usize::try_from(config.train.max_steps).ok();
    let classes = config.model.model_class_num;
    let steps_per_epoch = context
        .train_ids
        .len()
        .div_ceil(batch_size)
        .div_ceil(accumulate);
    let total_steps = max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.train.max_epochs);
    let learning_rate = |step: usize| {
        config
            .train
            .lr_schedule
            .rate(config.train.lr, step, total_steps)
    };

    let checkpoints = context.run_dir.checkpoints();
    let save_last = |model: &ActionModel<B>, optimizer: &_, state: &TrainingState| {
        checkpoint::save(&checkpoints, model, optimizer, state, config)
    };
    let mut state = TrainingState {
        epoch: 1,
        position: 0,
        step: 0,
        train_samples: 0,
        epoch_loss_sum: 0.0,
        epoch_loss_samples: 0,
        best: None,
        last_train_loss: None,
        loss_scaler: LossScaler::new(context.precision),
    };
    if let Some(folder) = checkpoint::resolve_resume(config, context.run_dir.path())? {
        let (restored_model, restored_optimizer, restored_state) =
            checkpoint::load(&folder, model, optimizer, config, &device)?;
        tracing::info!(
            "resuming from {} at epoch {}, step {}",
            folder.display(),
            restored_state.epoch,
            restored_state.step
        );
        (model, optimizer, state) = (restored_model, restored_optimizer, restored_state);
    }
    // Throughput counts what this process trained, not the samples of the run it resumed.
    let samples_before = state.train_samples;
    let mut train_time = Duration::ZERO;
    let mut last_metrics: Option<(ClassificationMetrics, f64)> = None;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut epochs_done = state.epoch.saturating_sub(1);
    let mut skipped_sample_loads = 0usize;
    let mut progress = Progress::new(
        context.options.progress_bar,
        config.train.max_epochs,
        context.train_ids.len().div_ceil(batch_size),
    );
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
    let recompute = config.model.effective_checkpoint();

    'epochs: while state.epoch <= config.train.max_epochs && !reached_max_steps(state.step) {
        let epoch = state.epoch;
        context.memory.mark(format!("epoch {epoch} train"));
        progress.start_epoch(epoch);
        let epoch_started = Instant::now();
        let order = shuffled(
            &context.train_ids,
            config.train.seed ^ ((epoch as u64) << 32),
        );
        let mut position_of = vec![0usize; context.dataset.len()];
        for (position, &id) in order.iter().enumerate() {
            position_of[id] = position;
        }
        let mut pipeline = Pipeline::builder_for(&config.data).build(
            Arc::clone(&context.dataset),
            order[state.position..].to_vec(),
        );
        let mut accumulator = GradientsAccumulator::<ActionModel<B>>::new();
        let mut group_loss = 0.0f64;
        let mut interrupted = false;

        let mut batches = pipeline.by_ref().peekable();
        loop {
            context.memory.phase(Phase::DataWait);
            let Some(batch) = batches.next() else {
                break;
            };
            let mut batch = batch?;
            let first_position = position_of[batch.sample_ids[0]];
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
            let labels = labels_tensor::<B>(&batch, &device);
            let video = video_tensor::<B>(&batch, &device);
            let keypoints = keypoint_tensor::<B>(&mut batch, &device);
            // fp16: gradients of `scale × weight × loss`; unscaled at the group's end.
            let scaled_weight = weight * state.loss_scaler.scale;
            // Every mode goes through `loss_and_gradients`: it differentiates the convolutions
            // by hand (faster than autodiff's generic conv backward), and without recompute it
            // is one forward and one backward, like a plain `backward()`.
            let plain = recompute == CheckpointMode::None;
            context.memory.phase(if plain {
                Phase::Forward
            } else {
                Phase::ForwardBackward
            });
            let segment_seed =
                config.train.seed ^ 0x5eed ^ ((epoch as u64) << 40) ^ first_position as u64;
            let (loss_value, grads) = model.loss_and_gradients(
                video,
                keypoints,
                |scores| {
                    let loss = loss_function.forward(scores, labels);
                    if plain {
                        // The graph is whole here: the device's in-use peak of a step without
                        // recompute.
                        sample_device(&context.memory, context.backend);
                        context.memory.phase(Phase::Backward);
                    }
                    loss
                },
                scaled_weight,
                recompute,
                segment_seed,
            );
            if !plain {
                // Recompute's peaks are inside the replays; this reads what remains after them.
                sample_device(&context.memory, context.backend);
            }
            if !loss_value.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value: loss_value,
                    step: state.step + 1,
                    epoch,
                    last_checkpoint,
                });
            }
            accumulator.accumulate(&model, grads);
            group_loss += loss_value as f64 * weight;
            state.epoch_loss_sum += loss_value as f64 * batch.len() as f64;
            state.epoch_loss_samples += batch.len();
            state.train_samples += batch.len();
            progress.batch(loss_value, state.step);

            // The group ends when the next batch belongs to another group (or nothing follows).
            let group_ends = match batches.peek() {
                Some(Ok(next)) => position_of[next.sample_ids[0]] / group_samples != group,
                _ => true,
            };
            if !group_ends {
                continue;
            }
            let lr = learning_rate(state.step);
            context.memory.phase(Phase::OptimizerStep);
            let decision = state.loss_scaler.unscale::<B, _>(
                &model,
                accumulator.grads(),
                config.trainer.gradient_clip_val,
            );
            let skipped = match decision {
                StepDecision::Step(grads) => {
                    model = optimizer.step(lr, model, grads);
                    false
                }
                StepDecision::Skip { scale } => {
                    tracing::warn!(
                        "step {}: inf/NaN gradients at loss scale {scale}; step skipped, scale \
                         now {} ({} skipped so far)",
                        state.step + 1,
                        state.loss_scaler.scale,
                        state.loss_scaler.skipped_steps
                    );
                    true
                }
            };
            state.step += 1;
            state.position = group_start + group_len;
            context.run_dir.log_metrics(&json!({
                "event": "step", "epoch": epoch, "step": state.step, "loss": group_loss, "lr": lr,
                "loss_scale": state.loss_scaler.enabled.then_some(state.loss_scaler.scale),
                "skipped": skipped,
            }))?;
            group_loss = 0.0;
            let every = config.train.checkpoint_every_steps;
            if every > 0 && state.step.is_multiple_of(every) {
                last_checkpoint = Some(save_last(&model, &optimizer, &state)?);
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
            let folder = save_last(&model, &optimizer, &state)?;
            progress.finish();
            return Err(Error::Interrupted { checkpoint: folder });
        }
        let epoch_finished = state.position >= order.len();
        let train_loss = state.epoch_loss_sum / state.epoch_loss_samples.max(1) as f64;
        state.last_train_loss = Some(train_loss);
        epochs_done = epoch;

        context.memory.mark(format!("epoch {epoch} validation"));
        context.memory.phase(Phase::Validation);
        release_device_cache(context.backend, "before validation");
        let (metrics, val_loss, val_skipped) =
            validate(config, &context.dataset, &context.val_ids, &model, &device)?;
        skipped_sample_loads += val_skipped;
        sample_device(&context.memory, context.backend);
        release_device_cache(context.backend, "after validation");
        context.memory.phase(Phase::Other);
        let improved = state
            .best
            .is_none_or(|(_, accuracy)| metrics.accuracy > accuracy);
        if improved {
            state.best = Some((epoch, metrics.accuracy));
            crate::persist::weights::save(&model, &checkpoints.join("model-best.mpk"), config)?;
        }
        context.run_dir.log_metrics(&json!({
            "event": "epoch",
            "epoch": epoch,
            "step": state.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": metrics.accuracy,
            "val_macro_f1": metrics.macro_f1,
            "val_per_class_f1": metrics.per_class_f1,
            "val_confusion": metrics.confusion,
            "val_macro_auroc": metrics.macro_auroc,
            "val_per_class_auroc": metrics.per_class_auroc,
            "val_samples": metrics.samples,
            "val_skipped": val_skipped,
            "epoch_train_s": epoch_started.elapsed().as_secs_f64(),
            "host_rss_bytes": vidtrain_memutil::current_rss_bytes(),
        }))?;
        context.run_dir.write(
            "confusion.svg",
            confusion_matrix_svg(
                &config.data.class_names,
                &metrics.confusion,
                &format!(
                    "{} — validation, epoch {epoch}: accuracy {:.3}",
                    config.experiment, metrics.accuracy
                ),
            )
            .as_bytes(),
        )?;
        progress.end_epoch(epoch, train_loss, val_loss, &metrics);
        last_metrics = Some((metrics, val_loss));
        if epoch_finished {
            state.epoch += 1;
            state.position = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_loss_samples = 0;
        }
        last_checkpoint = Some(save_last(&model, &optimizer, &state)?);
        if reached_max_steps(state.step) {
            break 'epochs;
        }
    }
    progress.finish();

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
        best_epoch: state.best.map(|(epoch, _)| epoch),
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

/// Runs the model without autodiff over `ids`; returns metrics, the mean loss and the samples
/// skipped. Metrics cover the samples that loaded (labels and predictions stay paired); a split
/// where none loads, or a non-finite loss, is an error rather than a metric.
fn validate<B: AutodiffBackend>(
    config: &Config,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    model: &ActionModel<B>,
    device: &B::Device,
) -> Result<(ClassificationMetrics, f64, usize)> {
    let scores = crate::inference::probabilities(config, dataset, ids, &model.valid(), device)?;
    let scores = crate::inference::usable(scores, ids.len(), "the validation split")?;
    let labels: Vec<usize> = scores
        .ids
        .iter()
        .map(|&id| dataset.plan.samples[id].class)
        .collect();
    let metrics = ClassificationMetrics::from_probabilities(
        &labels,
        &scores.probabilities,
        config.model.model_class_num,
    );
    Ok((metrics, scores.mean_loss(), scores.skipped))
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
