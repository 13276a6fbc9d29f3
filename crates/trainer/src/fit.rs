//! The training loop, generic over the autodiff backend: epochs of shuffled micro-batches with
//! exact gradient accumulation, Adam steps, validation, metrics lines and checkpoints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;
use vidtrain_config::{Config, OnBadSample};
use vidtrain_data::{Batch, Dataset, Pipeline, shuffled};
use vidtrain_memutil::MemorySampler;
use vidtrain_model::{ActionModel, ActionModelConfig};

use crate::metrics::ClassificationMetrics;
use crate::progress::Progress;
use crate::run_dir::RunDir;
use crate::{Error, Result, RunSummary, TrainOptions};

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
    pub started: Instant,
}

/// Trains and validates; returns the summary (also written to `summary.json`).
pub(crate) fn fit<B: AutodiffBackend>(
    mut context: RunContext<'_>,
    device: B::Device,
) -> Result<RunSummary> {
    let config = context.config;
    B::seed(&device, config.train.seed);
    let model_config = ActionModelConfig::from_config(config);
    let mut model: ActionModel<B> = model_config.init(&device);
    let parameters = model.num_params();
    tracing::info!(
        "model: {:?} backbone, {} parameters ({}), {} views, fusion {:?}",
        config.model.backbone,
        parameters,
        vidtrain_memutil::format_bytes(parameters as u64 * 4),
        model_config.views,
        model_config.fusion
    );
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

    let mut step = 0usize;
    let mut train_samples = 0usize;
    let mut train_time = Duration::ZERO;
    let mut last_train_loss = f64::NAN;
    let mut best: Option<(usize, f64)> = None;
    let mut last_metrics: Option<(ClassificationMetrics, f64)> = None;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut epochs_done = 0usize;
    let mut skipped_sample_loads = 0usize;
    let mut progress = Progress::new(
        context.options.progress_bar,
        config.train.max_epochs,
        context.train_ids.len().div_ceil(batch_size),
    );

    'epochs: for epoch in 1..=config.train.max_epochs {
        context.memory.mark(format!("epoch {epoch} train"));
        progress.start_epoch(epoch);
        let epoch_started = Instant::now();
        let order = shuffled(
            &context.train_ids,
            config.train.seed ^ ((epoch as u64) << 32),
        );
        // Accumulation groups are fixed by position in the order, so the loss weight of each
        // micro-batch is its share of its group's samples: a last, smaller group steps with the
        // right scale, and `batch_size=4` equals `batch_size=1 accumulate_grad_batches=4`.
        let group_samples = batch_size * accumulate;
        let mut position_of = vec![0usize; context.dataset.len()];
        for (position, &id) in order.iter().enumerate() {
            position_of[id] = position;
        }
        let mut pipeline = build_pipeline(config, &context.dataset, order.clone());
        let mut accumulator = GradientsAccumulator::<ActionModel<B>>::new();
        let mut pending_group: Option<usize> = None;
        let mut epoch_loss_sum = 0.0f64;
        let mut epoch_loss_samples = 0usize;

        for batch in &mut pipeline {
            let batch = batch?;
            let group = position_of[batch.sample_ids[0]] / group_samples;
            if let Some(previous) = pending_group
                && previous != group
            {
                model = optimizer.step(learning_rate(step), model, accumulator.grads());
                step += 1;
                pending_group = None;
                if max_steps.is_some_and(|max| step >= max) {
                    break;
                }
            }
            let group_start = group * group_samples;
            let group_len = group_samples.min(order.len() - group_start);
            let weight = batch.len() as f64 / group_len as f64;

            let labels = labels_tensor::<B>(&batch, &device);
            let logits = model.forward(
                video_tensor::<B>(&batch, &device),
                keypoint_tensor::<B>(&batch, &device),
            );
            let loss = loss_function.forward(logits, labels);
            let loss_value: f32 = loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value: loss_value,
                    step: step + 1,
                    epoch,
                    last_checkpoint,
                });
            }
            let grads = (loss * weight).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
            pending_group = Some(group);
            epoch_loss_sum += loss_value as f64 * batch.len() as f64;
            epoch_loss_samples += batch.len();
            train_samples += batch.len();
            progress.batch(loss_value, step);
        }
        skipped_sample_loads += pipeline.skipped();
        drop(pipeline);
        if pending_group.is_some() {
            model = optimizer.step(learning_rate(step), model, accumulator.grads());
            step += 1;
        }
        train_time += epoch_started.elapsed();
        epochs_done = epoch;
        let train_loss = epoch_loss_sum / epoch_loss_samples.max(1) as f64;
        last_train_loss = train_loss;

        context.memory.mark(format!("epoch {epoch} validation"));
        let (metrics, val_loss) =
            validate(config, &context.dataset, &context.val_ids, &model, &device)?;
        let improved = best.is_none_or(|(_, accuracy)| metrics.accuracy > accuracy);
        if improved {
            best = Some((epoch, metrics.accuracy));
        }
        last_checkpoint = Some(save_checkpoint(&model, &context.run_dir, "model-last")?);
        if improved {
            save_checkpoint(&model, &context.run_dir, "model-best")?;
        }
        context.run_dir.log_metrics(&json!({
            "event": "epoch",
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": metrics.accuracy,
            "val_macro_f1": metrics.macro_f1,
            "val_per_class_f1": metrics.per_class_f1,
            "val_confusion": metrics.confusion,
            "val_samples": metrics.samples,
            "epoch_train_s": epoch_started.elapsed().as_secs_f64(),
            "host_rss_bytes": vidtrain_memutil::current_rss_bytes(),
        }))?;
        progress.end_epoch(epoch, train_loss, val_loss, &metrics);
        last_metrics = Some((metrics, val_loss));
        if max_steps.is_some_and(|max| step >= max) {
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
    let summary = RunSummary {
        run_dir: context.run_dir.path().to_path_buf(),
        backend: context.backend_name.to_string(),
        precision: config.trainer.precision.to_string(),
        val_accuracy: metrics.accuracy,
        val_macro_f1: metrics.macro_f1,
        val_loss,
        val_confusion: metrics.confusion.clone(),
        train_loss_final: last_train_loss,
        best_epoch: best.map(|(epoch, _)| epoch),
        epochs: epochs_done,
        steps: step,
        train_samples,
        train_size: context.train_ids.len(),
        val_size: context.val_ids.len(),
        samples_per_s: train_samples as f64 / train_time.as_secs_f64().max(1e-9),
        wall_s: context.started.elapsed().as_secs_f64(),
        peak_host_rss_bytes: memory.peak_host_rss_bytes,
        peak_device_bytes: None,
        parameters,
        skipped_sample_loads,
        last_checkpoint,
    };
    context.run_dir.write_json("summary.json", &summary)?;
    Ok(summary)
}

fn build_pipeline(config: &Config, dataset: &Arc<Dataset>, order: Vec<usize>) -> Pipeline {
    Pipeline::builder()
        .workers(config.data.num_workers)
        .prefetch_depth(config.data.prefetch_depth)
        .batch_size(config.data.batch_size)
        .skip_bad_samples(config.data.on_bad_sample == OnBadSample::Skip)
        .build(Arc::clone(dataset), order)
}

/// Runs the model without autodiff over `ids`; returns metrics and the mean loss.
fn validate<B: AutodiffBackend>(
    config: &Config,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    model: &ActionModel<B>,
    device: &B::Device,
) -> Result<(ClassificationMetrics, f64)> {
    let model = model.valid();
    let loss_function = CrossEntropyLossConfig::new().init(device);
    let mut labels = Vec::with_capacity(ids.len());
    let mut predictions = Vec::with_capacity(ids.len());
    let mut loss_sum = 0.0f64;
    let pipeline = Pipeline::builder()
        .workers(config.data.num_workers)
        .prefetch_depth(config.data.prefetch_depth)
        .batch_size(config.train.video_batch_size)
        .skip_bad_samples(config.data.on_bad_sample == OnBadSample::Skip)
        .build(Arc::clone(dataset), ids.to_vec());
    for batch in pipeline {
        let batch = batch?;
        let logits = model.forward(
            video_tensor::<B::InnerBackend>(&batch, device),
            keypoint_tensor::<B::InnerBackend>(&batch, device),
        );
        let loss: f32 = loss_function
            .forward(
                logits.clone(),
                labels_tensor::<B::InnerBackend>(&batch, device),
            )
            .into_scalar()
            .elem();
        loss_sum += loss as f64 * batch.len() as f64;
        let predicted = logits.argmax(1).into_data();
        predictions.extend(predicted.iter::<i64>().map(|class| class as usize));
        labels.extend_from_slice(&batch.labels);
    }
    let metrics =
        ClassificationMetrics::compute(&labels, &predictions, config.model.model_class_num);
    Ok((metrics, loss_sum / labels.len().max(1) as f64))
}

/// u8 frames → f32 in 0..1, `[batch, views, t, h, w, 3]` (`None` when RGB is not loaded).
fn video_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Option<Tensor<B, 6>> {
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

/// Keypoints `[batch, views, t, joints, 3]` (`None` when keypoints are not loaded).
fn keypoint_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Option<Tensor<B, 5>> {
    let shape = batch.shape;
    (shape.joints > 0).then(|| {
        let dims = [batch.len(), shape.views, shape.frames, shape.joints, 3];
        Tensor::from_data(TensorData::new(batch.keypoints.clone(), dims), device)
    })
}

fn labels_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 1, Int> {
    let labels: Vec<i64> = batch.labels.iter().map(|&label| label as i64).collect();
    Tensor::from_data(TensorData::new(labels, [batch.len()]), device)
}

/// Saves the model's weights as `checkpoints/<name>.mpk`, whole or not at all.
fn save_checkpoint<B: AutodiffBackend>(
    model: &ActionModel<B>,
    run_dir: &RunDir,
    name: &str,
) -> Result<PathBuf> {
    let folder = run_dir.checkpoints();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    // The recorder adds `.mpk`; write under a temporary name and rename over the old file.
    let temporary = folder.join(format!("{name}-partial"));
    let final_path = folder.join(format!("{name}.mpk"));
    model
        .clone()
        .save_file(&temporary, &recorder)
        .map_err(|error| Error::Checkpoint {
            path: final_path.clone(),
            message: error.to_string(),
        })?;
    std::fs::rename(temporary.with_extension("mpk"), &final_path)
        .map_err(|error| Error::io(&final_path, error))?;
    Ok(final_path)
}
