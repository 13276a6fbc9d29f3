//! The training loop, generic over the autodiff backend: each epoch's training pass (`epoch`:
//! shuffled or class-balanced micro-batches, exact gradient accumulation, optimizer steps from
//! `step` and `optimizer`), validation (`validation`), model selection and early stopping
//! (`selection`), and observers that log and draw the run (`observers`). This file builds the
//! model, resumes, runs the epochs and writes the summary.

mod epoch;
pub(crate) mod loss;
mod observers;
pub(crate) mod optimizer;
mod progress;
mod selection;
pub(crate) mod step;
mod summary;
mod validation;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{Config, Precision};
use vidtrain_data::Dataset;
use vidtrain_memutil::{MemorySampler, Phase};
use vidtrain_model::{ActionModel, ActionModelConfig, InputShape};

use crate::device::memory as device_memory;
use crate::fit::epoch::{Schedule, Training, train_pass};
use crate::fit::loss::{class_weights, training_loss};
use crate::fit::observers::{
    EpochRecord, MetricsLog, Pictures, RunObserver, TensorBoardLog, epochs_logged,
};
use crate::fit::optimizer::TrainingOptimizer;
use crate::fit::progress::Progress;
use crate::fit::selection::ModelSelection;
use crate::fit::step::Learner;
pub(crate) use crate::fit::step::kept_activations;
use crate::persist::checkpoint::{self, TrainingState};
use crate::persist::run_dir::RunDir;
use crate::precision::{LossScaler, compute_dtype};
use crate::report::curves_svg::EpochPoint;
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
fn model_for_training<B: AutodiffBackend>(
    context: &RunContext<'_>,
    device: &B::Device,
) -> Result<ActionModel<B>> {
    let config = context.config;
    let mut model: ActionModel<B> = crate::build_model(config, device);
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
    let model_config = ActionModelConfig::from_config(config);
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
        compute_dtype(config.trainer.precision),
        config.model.effective_recompute(),
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
        counts[dataset.chunks.samples[id].class] += 1;
    }
    counts
}

/// Logs the samples per class of both splits and the loss weights in use.
fn log_class_counts(
    config: &Config,
    train_counts: &[usize],
    val_counts: &[usize],
    weights: Option<&[f64]>,
) {
    let counts = config
        .data
        .class_names
        .iter()
        .zip(train_counts.iter().zip(val_counts))
        .map(|(name, (train, val))| format!("{name} {train}/{val}"))
        .collect::<Vec<_>>()
        .join(", ");
    let weights = weights.map_or(String::new(), |weights| {
        let rounded: Vec<f64> = weights
            .iter()
            .map(|w| (w * 1000.0).round() / 1000.0)
            .collect();
        format!("; loss weights {rounded:?}")
    });
    tracing::info!("class counts (train / validation): {counts}{weights}");
}

/// Where training starts: fresh, or where `train.resume` names.
struct Resumed<B: AutodiffBackend> {
    model: ActionModel<B>,
    optimizer: TrainingOptimizer<B>,
    state: TrainingState,
    /// Epochs of the resumed run, for `curves.svg`.
    earlier_epochs: Vec<EpochPoint>,
    /// The resumed run's best epoch (its `checkpoints/best/` is copied into this run's).
    best_metrics: Option<serde_json::Value>,
}

fn resume_or_start<B: AutodiffBackend>(
    context: &RunContext<'_>,
    model: ActionModel<B>,
    checkpoints: &std::path::Path,
    device: &B::Device,
) -> Result<Resumed<B>> {
    let config = context.config;
    let optimizer = TrainingOptimizer::<B>::from_config(config);
    let Some(folder) = checkpoint::resolve_resume(config, context.run_dir.path())? else {
        return Ok(Resumed {
            model,
            optimizer,
            state: TrainingState::start(
                LossScaler::new(context.precision),
                context.options.world.size(),
            ),
            earlier_epochs: Vec::new(),
            best_metrics: None,
        });
    };
    let (model, optimizer, mut state) =
        checkpoint::load(&folder, model, optimizer, config, device)?;
    tracing::info!(
        "resuming from {} at epoch {}, step {}",
        folder.display(),
        state.epoch,
        state.step
    );
    let world_size = context.options.world.size();
    if state.world_size != world_size {
        let per_rank = config.data.batch_size * config.train.accumulate_grad_batches;
        tracing::warn!(
            "the checkpoint was written by {} ranks and this run has {world_size}: each optimizer \
             step now averages {} samples instead of {} (and the learning-rate schedule is \
             recounted); epoch {} continues at sample {} of its order, so the steps from here \
             differ from an uninterrupted {}-rank run. Resume with the same number of ranks for \
             an exact continuation.",
            state.world_size,
            per_rank * world_size,
            per_rank * state.world_size,
            state.epoch,
            state.position,
            state.world_size
        );
        state.world_size = world_size;
    }
    let mut earlier_epochs = crate::inference::run_folder_of(&folder)
        .map(|run_folder| epochs_logged(&run_folder))
        .unwrap_or_default();
    earlier_epochs.retain(|point| point.epoch < state.epoch);
    let best_metrics = match folder.parent() {
        Some(earlier_checkpoints) if context.run_dir.writes() => {
            checkpoint::carry_best(earlier_checkpoints, checkpoints)?
        }
        Some(earlier_checkpoints) => checkpoint::read_best_metrics(earlier_checkpoints),
        None => None,
    };
    Ok(Resumed {
        model,
        optimizer,
        state,
        earlier_epochs,
        best_metrics,
    })
}

/// Every rank's peak host RSS, rank 0 first (what each rank's replica, optimizer and pipeline
/// cost; on one machine their sum is the run's footprint).
fn peak_rss_per_rank(world: &crate::distributed::World, own: Option<u64>) -> Vec<Option<u64>> {
    let own = own.map_or(-1.0, |bytes| bytes as f64);
    world
        .gather_f64("the peak memory gather", &[own])
        .into_iter()
        .map(|values| {
            values
                .first()
                .filter(|bytes| **bytes >= 0.0)
                .map(|bytes| *bytes as u64)
        })
        .collect()
}

/// Trains and validates; returns the summary (also written to `summary.json`).
/// What the epochs leave for the summary.
pub(crate) struct RunTotals {
    /// Training samples of the run this one resumed (throughput counts this process's).
    samples_before: usize,
    train_time: Duration,
    /// The last validation's metrics and loss.
    last_metrics: Option<(ClassificationMetrics, f64)>,
    best_checkpoint: Option<PathBuf>,
    best_metrics: Option<serde_json::Value>,
    stopped_early: bool,
    epochs_done: usize,
    skipped_sample_loads: usize,
}

/// The split's class counts and the loss's class weights (`train.class_weights`), logged.
struct SplitClasses {
    train_counts: Vec<usize>,
    val_counts: Vec<usize>,
    weights: Option<Vec<f64>>,
}

impl SplitClasses {
    fn of(context: &RunContext<'_>) -> Self {
        let config = context.config;
        let classes = config.model.model_class_num;
        let train_counts = class_counts(&context.dataset, &context.train_ids, classes);
        let val_counts = class_counts(&context.dataset, &context.val_ids, classes);
        let train_labels: Vec<usize> = context
            .train_ids
            .iter()
            .map(|&id| context.dataset.chunks.samples[id].class)
            .collect();
        let weights = class_weights(config, &train_labels);
        log_class_counts(config, &train_counts, &val_counts, weights.as_deref());
        Self {
            train_counts,
            val_counts,
            weights,
        }
    }
}

/// Optimizer steps per group and in the whole run (`train.max_epochs`, `train.max_steps`).
fn schedule(context: &RunContext<'_>) -> Schedule {
    let config = context.config;
    let world = &context.options.world;
    let batch_size = config.data.batch_size;
    let accumulate = config.train.accumulate_grad_batches;
    let max_steps = usize::try_from(config.train.max_steps).ok();
    let global_batch = batch_size * accumulate * world.size();
    if world.size() > 1 {
        tracing::info!(
            "data parallel: {} ranks × batch_size {batch_size} × accumulate_grad_batches \
             {accumulate} = {global_batch} samples per optimizer step",
            world.size()
        );
    }
    let steps_per_epoch = context.train_ids.len().div_ceil(global_batch);
    Schedule {
        group_samples: batch_size * accumulate,
        total_steps: max_steps
            .unwrap_or(usize::MAX)
            .min(steps_per_epoch * config.train.max_epochs),
        max_steps,
    }
}

/// Rank 0 logs, draws and reports for the whole run (its numbers are every rank's means).
fn observers(
    context: &RunContext<'_>,
    earlier_epochs: Vec<EpochPoint>,
) -> Result<Vec<Box<dyn RunObserver>>> {
    let config = context.config;
    let world = &context.options.world;
    let mut observers: Vec<Box<dyn RunObserver>> = Vec::new();
    if world.is_leader() {
        observers.push(Box::new(MetricsLog));
        observers.push(Box::new(Pictures::new(config, earlier_epochs)));
        if config.trainer.tensorboard {
            observers.push(Box::new(TensorBoardLog::create(&context.run_dir, config)?));
        }
        observers.push(Box::new(Progress::new(
            context.options.progress_bar,
            config.train.max_epochs,
            context
                .train_ids
                .len()
                .div_ceil(config.data.batch_size * world.size()),
        )));
    }
    Ok(observers)
}

/// Trains `context`'s split on `device`: builds (or resumes) the model, runs the epochs —
/// training pass, validation, model selection, checkpoints — and writes `summary.json`.
pub(crate) fn fit<B: AutodiffBackend>(
    mut context: RunContext<'_>,
    device: B::Device,
) -> Result<RunSummary> {
    let config = context.config;
    let world = context.options.world.clone();
    B::seed(&device, config.train.seed);
    let model = model_for_training::<B>(&context, &device)?;
    let parameters = model.num_params();
    let classes = SplitClasses::of(&context);
    let schedule = schedule(&context);
    let checkpoints = context.run_dir.checkpoints();
    let Resumed {
        model,
        optimizer,
        state,
        earlier_epochs,
        best_metrics,
    } = resume_or_start(&context, model, &checkpoints, &device)?;
    let model = crate::distributed::replicate_model(&world, model, &device)?;
    let loss_function = training_loss::<B>(config, classes.weights.as_deref(), &device);
    let mut training = Training {
        learner: Learner::new(model, optimizer, loss_function, kept_activations(config)),
        state,
        last_checkpoint: None,
        saves: world.is_leader(),
    };
    let mut observers = observers(&context, earlier_epochs)?;
    let selection = ModelSelection::from_config(config);
    let mut totals = RunTotals {
        samples_before: training.state.train_samples,
        train_time: Duration::ZERO,
        last_metrics: None,
        best_checkpoint: None,
        best_metrics,
        stopped_early: false,
        epochs_done: training.state.epoch.saturating_sub(1),
        skipped_sample_loads: 0,
    };

    while training.state.epoch <= config.train.max_epochs
        && !schedule.reached_max_steps(training.state.step)
    {
        let epoch = training.state.epoch;
        context.memory.mark(format!("epoch {epoch} train"));
        observers
            .iter_mut()
            .for_each(|observer| observer.epoch_started(epoch));
        let epoch_started = Instant::now();
        let pass = train_pass(
            &mut context,
            &mut training,
            &mut observers,
            &schedule,
            &device,
        )?;
        totals.skipped_sample_loads += pass.skipped_loads;
        totals.train_time += epoch_started.elapsed();
        if pass.interrupted {
            let folder = training.save_last(config, &checkpoints)?;
            observers
                .iter_mut()
                .for_each(|observer| observer.finished());
            return Err(Error::Interrupted { checkpoint: folder });
        }
        totals.epochs_done = epoch;
        let epoch_finished = training.state.position >= pass.epoch_samples;
        let ended = end_epoch(
            &mut context,
            &mut training,
            &mut observers,
            &selection,
            &mut totals,
            epoch_finished,
            epoch_started,
            &device,
        )?;
        if ended || schedule.reached_max_steps(training.state.step) {
            break;
        }
    }
    observers
        .iter_mut()
        .for_each(|observer| observer.finished());
    summary::finish_run(context, training, totals, &selection, classes, parameters)
}

/// After an epoch's training pass: validation, model selection (saving `checkpoints/best` on an
/// improvement), observers, the epoch's bookkeeping, early stopping, `checkpoints/last`.
/// Returns whether the run stops early.
fn end_epoch<B: AutodiffBackend>(
    context: &mut RunContext<'_>,
    training: &mut Training<B>,
    observers: &mut [Box<dyn RunObserver>],
    selection: &ModelSelection,
    totals: &mut RunTotals,
    epoch_finished: bool,
    epoch_started: Instant,
    device: &B::Device,
) -> Result<bool> {
    let config = context.config;
    let world = context.options.world.clone();
    let checkpoints = context.run_dir.checkpoints();
    let state = &mut training.state;
    let epoch = state.epoch;
    let train_loss = state.epoch_loss_sum / state.epoch_loss_samples.max(1) as f64;
    state.last_train_loss = Some(train_loss);

    context.memory.mark(format!("epoch {epoch} validation"));
    context.memory.phase(Phase::Validation);
    release_device_cache(context.backend, "before validation");
    let (metrics, val_loss, val_skipped) = validation::validate(
        config,
        &context.dataset,
        &context.val_ids,
        training.learner.model(),
        &world,
        device,
    )?;
    totals.skipped_sample_loads += val_skipped;
    sample_device(&context.memory, context.backend);
    release_device_cache(context.backend, "after validation");
    context.memory.phase(Phase::Other);
    let state = &mut training.state;
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
    record.is_best = selection.consider(state, epoch, record.metric(&selection.monitor));
    if record.is_best && world.is_leader() {
        let best = serde_json::json!({
            "epoch": epoch, "step": state.step, "monitor": selection.monitor,
            "value": record.metric(&selection.monitor), "val_loss": val_loss,
            "val_accuracy": metrics.accuracy, "val_macro_f1": metrics.macro_f1,
            "val_macro_auroc": metrics.macro_auroc, "train_loss": train_loss,
        });
        totals.best_checkpoint = Some(checkpoint::save_best(
            &checkpoints,
            training.learner.model(),
            &best,
            config,
        )?);
        totals.best_metrics = Some(best);
    } else if record.is_best {
        totals.best_checkpoint = Some(checkpoints.join(checkpoint::BEST));
    }
    for observer in observers.iter_mut() {
        observer.epoch(&record, &mut context.run_dir)?;
    }
    totals.last_metrics = Some((metrics, val_loss));
    let state = &mut training.state;
    if epoch_finished {
        state.epoch += 1;
        state.position = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_loss_samples = 0;
    }
    let stop_early = epoch_finished && selection.should_stop(state, epoch);
    if stop_early {
        // The run is complete: a resume must not train on.
        state.epoch = config.train.max_epochs + 1;
    }
    training.save_last(config, &checkpoints)?;
    if stop_early {
        let (best_epoch, best_value) = training.state.best.unwrap_or_default();
        tracing::info!(
            "early stopping after epoch {epoch}: {} has not improved for {} epochs (best \
             {best_value:.4} at epoch {best_epoch})",
            selection.monitor,
            epoch - best_epoch
        );
        totals.stopped_early = true;
    }
    Ok(stop_early)
}
