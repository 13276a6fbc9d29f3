//! The end of a run: `memory.json` and `memory.svg`, then the run's [`RunSummary`] assembled
//! from what the epochs left ([`RunTotals`]) and written as `summary.json`.

use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use vidtrain_memutil::MemorySampler;

use super::epoch::Training;
use super::selection::ModelSelection;
use super::{RunContext, RunTotals, SplitClasses, peak_rss_per_rank};
use crate::persist::checkpoint;
use crate::report::metrics::ClassificationMetrics;
use crate::{Result, RunSummary};

/// Writes the run's memory report and `summary.json`, and returns the summary.
pub(super) fn finish_run<B: AutodiffBackend>(
    mut context: RunContext<'_>,
    training: Training<B>,
    totals: RunTotals,
    selection: &ModelSelection,
    classes_of_split: SplitClasses,
    parameters: usize,
) -> Result<RunSummary> {
    let config = context.config;
    let world = &context.options.world;
    let checkpoints = context.run_dir.checkpoints();
    let classes = config.model.model_class_num;
    let (metrics, val_loss) = totals
        .last_metrics
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
    let Training {
        state,
        last_checkpoint,
        ..
    } = training;
    let split_persons = match config.train.fold {
        vidtrain_config::Fold::Index(fold) => context
            .dataset
            .index
            .split_persons(fold, config.train.k_folds),
        vidtrain_config::Fold::All => (Vec::new(), Vec::new()),
    };
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
        best_metrics: totals.best_metrics,
        best_checkpoint: totals
            .best_checkpoint
            .or_else(|| best_exists.then(|| checkpoints.join(checkpoint::BEST))),
        stopped_early: totals.stopped_early,
        class_names: config.data.class_names.clone(),
        class_counts_train: classes_of_split.train_counts,
        class_counts_val: classes_of_split.val_counts,
        epochs: totals.epochs_done,
        steps: state.step,
        train_samples: state.train_samples,
        train_size: context.train_ids.len(),
        val_size: context.val_ids.len(),
        train_persons: split_persons.0,
        val_persons: split_persons.1,
        train_samples_this_run: state.train_samples - totals.samples_before,
        samples_per_s: (state.train_samples - totals.samples_before) as f64
            / totals.train_time.as_secs_f64().max(1e-9),
        wall_s: context.started.elapsed().as_secs_f64(),
        world_size: world.size(),
        global_batch: config.data.batch_size * config.train.accumulate_grad_batches * world.size(),
        collective_s: world.collective_seconds(),
        gradient_sync_s: world.gradient_sync_seconds(),
        peak_host_rss_bytes: memory.peak_host_rss_bytes,
        peak_host_rss_bytes_per_rank: peak_rss_per_rank(world, memory.peak_host_rss_bytes),
        host_allocator: vidtrain_memutil::reuse_pool::stats(),
        peak_process_tree_rss_bytes: (memory.peak_process_tree_rss_bytes > 0)
            .then_some(memory.peak_process_tree_rss_bytes),
        peak_device_bytes: memory.peak_device_in_use_bytes,
        peak_device_reserved_bytes: memory.peak_device_reserved_bytes,
        parameters,
        skipped_sample_loads: totals.skipped_sample_loads,
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
