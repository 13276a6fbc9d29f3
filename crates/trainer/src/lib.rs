//! vidtrain's training loop: picks the backend, opens the dataset and run directory, trains with
//! exact gradient accumulation, validates every epoch and writes `config.toml`, `metrics.jsonl`,
//! `memory.json`, `summary.json` and checkpoints into `runs/<experiment>/<timestamp>/`.

#[macro_use]
mod backend;
mod batch_tensors;
pub mod bench;
pub mod device;
pub mod distributed;
mod error;
mod fit;
pub mod inference;
pub mod optimizer_state;
pub mod persist;
pub mod plan;
pub mod precision;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vidtrain_config::{Config, Fold};
use vidtrain_data::Dataset;
use vidtrain_memutil::MemorySampler;

pub use backend::{
    BackendChoice, CpuBackend, FlexDevice, accelerator_backend, apply_precision_fallback,
    build_model, configure_compute_threads, resolve_backend,
};
pub use bench::pipeline::{PipelineBench, bench_pipeline};
pub use error::{Error, Result};
pub use persist::checkpoint::wait_for_checkpoint_writes;
pub use persist::run_dir::{RunDir, utc_timestamp, write_atomically};
pub use report::metrics::ClassificationMetrics;
/// How bf16 products compute on this CPU (`bench-model` prints it next to the training log).
pub use vidtrain_model::gemm_bf16::Path as Bf16ProductPath;
pub use vidtrain_model::gemm_f32::F32Path as F32ProductPath;

/// How a run reports progress (not part of the config: it does not change results).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Draw a progress bar (on a terminal) instead of plain periodic lines.
    pub progress_bar: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current optimizer step, save a
    /// checkpoint and return [`Error::Interrupted`].
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The ranks training this model together (one, unless started by `mpiexec`/`srun` in a
    /// build with the `mpi` feature).
    pub world: distributed::World,
}

impl TrainOptions {
    /// Whether a stop was requested ([`TrainOptions::stop`] is set).
    pub fn stop_requested(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What a finished run reports; also written to `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// `cpu (flex)` or `cuda`.
    pub backend: String,
    /// `trainer.precision` in effect (32 where the CPU backend fell back).
    pub precision: String,
    /// Optimizer steps skipped by fp16 loss scaling (inf/NaN gradients).
    pub skipped_optimizer_steps: u64,
    /// The fp16 loss scale at the end (`null` unless `trainer.precision=16`).
    pub final_loss_scale: Option<f64>,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: f64,
    /// Validation macro-F1 after the last epoch.
    pub val_macro_f1: f64,
    /// Mean validation loss after the last epoch.
    pub val_loss: f64,
    /// Validation one-vs-rest AUROC (mean over classes) after the last epoch.
    pub val_macro_auroc: Option<f64>,
    /// Validation confusion matrix after the last epoch (`[label][prediction]`).
    pub val_confusion: Vec<Vec<usize>>,
    /// Mean training loss of the last epoch.
    pub train_loss_final: f64,
    /// The metric that chose the best epoch (`train.monitor`).
    pub monitor: String,
    /// Epoch with the best `monitor` value.
    pub best_epoch: Option<usize>,
    /// That value.
    pub best_value: Option<f64>,
    /// The best epoch's metrics (`checkpoints/best/metrics.json`).
    pub best_metrics: Option<serde_json::Value>,
    /// `checkpoints/best/`: the best epoch's model (what `eval` and `predict` load by default).
    pub best_checkpoint: Option<PathBuf>,
    /// Whether early stopping ended the run before `train.max_epochs`.
    pub stopped_early: bool,
    /// `data.class_names`, the order of the class counts.
    pub class_names: Vec<String>,
    /// Samples per class in the training split (`data.class_names` order).
    pub class_counts_train: Vec<usize>,
    /// Samples per class in the validation split.
    pub class_counts_val: Vec<usize>,
    /// Epochs run.
    pub epochs: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Training samples processed (all epochs, including those of a run this one resumed).
    pub train_samples: usize,
    /// Training samples this process trained (a resumed run counts from where it resumed);
    /// `samples_per_s` divides these by the training time.
    pub train_samples_this_run: usize,
    /// Samples in the training split.
    pub train_size: usize,
    /// Samples in the validation split.
    pub val_size: usize,
    /// The persons whose samples were trained on (`train.fold` of `train.k_folds`).
    pub train_persons: Vec<String>,
    /// The persons held out for validation: `eval --split validation` checks that it scores
    /// these.
    pub val_persons: Vec<String>,
    /// Training throughput, samples per second of training time (validation excluded).
    pub samples_per_s: f64,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
    /// Ranks that trained together (`mpiexec -n N`; 1 otherwise).
    pub world_size: usize,
    /// Samples per optimizer step over all ranks: `batch_size × accumulate_grad_batches ×
    /// world_size`.
    pub global_batch: usize,
    /// Seconds this rank spent in collectives (gradient and loss all-reduces, broadcasts,
    /// gathers; waiting for slower ranks included); 0 with one rank.
    pub collective_s: f64,
    /// Of those, seconds in the gradient all-reduce itself (the ranks enter it together).
    pub gradient_sync_s: f64,
    /// Peak host RSS of the process, bytes.
    pub peak_host_rss_bytes: Option<u64>,
    /// Peak host RSS of every rank, rank 0 first (one entry with one rank).
    pub peak_host_rss_bytes_per_rank: Vec<Option<u64>>,
    /// The host allocator's reuse pool over the run (`trainer.allocator_slack_percent`): the most
    /// freed bytes it kept at once (resident, inside `peak_host_rss_bytes`), the peak of live
    /// tensor-sized blocks, hits and misses; `active` false when the pool is not this process's
    /// allocator (a library user's program).
    pub host_allocator: vidtrain_memutil::reuse_pool::PoolStats,
    /// Peak RSS of the process tree (vidtrain plus its ffmpeg decoders, summed at each 50 ms
    /// sample), bytes.
    pub peak_process_tree_rss_bytes: Option<u64>,
    /// Peak device memory in use, bytes (`null` on the CPU backend).
    pub peak_device_bytes: Option<u64>,
    /// Peak device memory reserved by the memory pools, bytes (`null` on the CPU backend).
    pub peak_device_reserved_bytes: Option<u64>,
    /// Trainable parameters.
    pub parameters: usize,
    /// Sample loads that failed and were skipped (`data.on_bad_sample = "skip"`), training and
    /// validation.
    pub skipped_sample_loads: usize,
    /// Dataset problems found while indexing, by kind (`vidtrain data inspect` lists them).
    pub data_problems: std::collections::BTreeMap<String, usize>,
    /// NaN/Inf keypoint values read (each became 0).
    pub non_finite_keypoint_values: usize,
    /// The last checkpoint folder written (`checkpoints/last`: model, optimizer, state).
    pub last_checkpoint: Option<PathBuf>,
}

/// One warning per kind of dataset problem, with its count and first case; `vidtrain data
/// inspect` lists them all.
fn warn_dataset_problems(index: &vidtrain_data::Index) {
    for (kind, count) in index.problem_counts() {
        let first = index
            .problems
            .iter()
            .find(|problem| problem.kind == kind)
            .expect("a counted kind has a problem");
        tracing::warn!(
            "dataset: {count} × {} (first: {}: {}); `vidtrain data inspect` lists them all",
            kind.name(),
            first.path.display(),
            first.message
        );
    }
}

/// Refuses a config whose planned host peak exceeds the machine's physical memory, before any
/// allocation: a typo such as `data.img_size=100000` must be a message, not an abort on a
/// terabyte-sized allocation. The dataset is not indexed for this (it may be large); the plan then
/// assumes full validation batches, which only matters for configs already near the limit.
pub fn refuse_plans_above_machine_memory(config: &Config, backend: BackendChoice) -> Result<()> {
    let Some(machine_bytes) = vidtrain_memutil::total_memory_bytes() else {
        return Ok(());
    };
    // Ranks started on this machine each hold all of it.
    let local_ranks = distributed::local_ranks_from_environment().unwrap_or(1);
    let plan = plan::plan_data_parallel(config, backend, None, local_ranks);
    if plan.host_peak_bytes_one_machine <= machine_bytes {
        return Ok(());
    }
    let largest = plan::largest_component(&plan.per_rank.host);
    Err(Error::ExceedsMachineMemory {
        planned_bytes: plan.host_peak_bytes_one_machine,
        machine_bytes,
        largest: if local_ranks > 1 {
            format!(
                "{local_ranks} ranks on this machine, {} each, most of it {largest}",
                vidtrain_memutil::format_bytes(plan.per_rank.host_peak_bytes)
            )
        } else {
            largest
        },
    })
}

/// The outcome of `train.fold=all`: one run per fold and their mean ± standard deviation.
#[derive(Debug, Clone, Serialize)]
pub struct CrossValidationSummary {
    /// Folds run.
    pub k_folds: usize,
    /// Mean and (population) standard deviation of the folds' final validation accuracy.
    pub val_accuracy_mean: f64,
    pub val_accuracy_std: f64,
    /// Mean and standard deviation of the folds' final validation macro-F1.
    pub val_macro_f1_mean: f64,
    pub val_macro_f1_std: f64,
    /// Each fold's summary, fold 0 first.
    pub folds: Vec<RunSummary>,
    /// Where this summary was written.
    pub summary_path: PathBuf,
}

/// Runs every fold in turn (each a normal run under `<run_dir>/<experiment>/fold-<i>/`) and
/// writes `<run_dir>/<experiment>/cross-validation-<timestamp>.json`.
pub fn train_all_folds(config: &Config, options: &TrainOptions) -> Result<CrossValidationSummary> {
    resolve_backend(config)?;
    let mut folds = Vec::with_capacity(config.train.k_folds);
    for fold in 0..config.train.k_folds {
        let mut fold_config = config.clone();
        fold_config.train.fold = Fold::Index(fold);
        fold_config.experiment = format!("{}/fold-{fold}", config.experiment);
        tracing::info!("fold {fold} of {}", config.train.k_folds);
        folds.push(train(&fold_config, options)?);
    }
    let mean_std = |values: Vec<f64>| {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values
            .iter()
            .map(|value| (value - mean).powi(2))
            .sum::<f64>()
            / values.len() as f64;
        (mean, variance.sqrt())
    };
    let (val_accuracy_mean, val_accuracy_std) =
        mean_std(folds.iter().map(|run| run.val_accuracy).collect());
    let (val_macro_f1_mean, val_macro_f1_std) =
        mean_std(folds.iter().map(|run| run.val_macro_f1).collect());
    let folder = config.paths.run_dir.join(&config.experiment);
    let summary_path = folder.join(format!(
        "cross-validation-{}.json",
        persist::run_dir::utc_timestamp()
    ));
    let summary = CrossValidationSummary {
        k_folds: config.train.k_folds,
        val_accuracy_mean,
        val_accuracy_std,
        val_macro_f1_mean,
        val_macro_f1_std,
        folds,
        summary_path: summary_path.clone(),
    };
    if options.world.is_leader() {
        let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
        write_atomically(&summary_path, text.as_bytes())?;
    }
    Ok(summary)
}

/// Rank 0 creates the run directory and tells the other ranks where it is.
fn open_run_dir(config: &Config, world: &distributed::World) -> Result<RunDir> {
    if world.is_leader() {
        let run_dir = RunDir::create(&config.paths.run_dir, &config.experiment)?;
        let path = run_dir.path().to_string_lossy().into_owned();
        world.broadcast_text("the run directory's path", &path)?;
        Ok(run_dir)
    } else {
        let path = world.broadcast_text("the run directory's path", "")?;
        Ok(RunDir::follower(PathBuf::from(path)))
    }
}

/// Trains a model as `config` says (one fold) and returns the summary.
pub fn train(config: &Config, options: &TrainOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let backend = resolve_backend(config)?;
    let threads = configure_compute_threads(config);
    if backend == BackendChoice::Cpu {
        tracing::info!(
            "CPU compute on {threads} threads (trainer.compute_threads); {}",
            vidtrain_model::cpu_kernels::VectorLevel::fastest().describe()
        );
        match config.trainer.precision {
            vidtrain_config::Precision::BHalf => {
                tracing::info!("{}", vidtrain_model::gemm_bf16::Path::describe_cpu_route())
            }
            vidtrain_config::Precision::Full => {
                tracing::info!(
                    "{}",
                    vidtrain_model::gemm_f32::F32Path::describe_cpu_route()
                )
            }
            vidtrain_config::Precision::Half => tracing::info!(
                "{}",
                vidtrain_model::gemm_f32::F32Path::describe_fp16_cpu_route()
            ),
        }
    }
    refuse_plans_above_machine_memory(config, backend)?;
    let memory = MemorySampler::start(Duration::from_millis(50));
    // A signal while indexing ends the probe in flight and the run, before any run folder.
    vidtrain_data::watch_stop_flag(options.stop.clone());
    let dataset = Arc::new(Dataset::open(config)?);
    if options.stop_requested() {
        return Err(vidtrain_data::Error::Stopped {
            path: config.paths.resolve(&config.paths.annotation_path),
        }
        .into());
    }
    warn_dataset_problems(&dataset.index);
    let Fold::Index(fold) = config.train.fold else {
        return Err(Error::Unsupported {
            key: "train.fold".into(),
            message: "\"all\" runs several trainings; call train_all_folds (the CLI does)".into(),
        });
    };
    let k_folds = config.train.k_folds;
    let persons = dataset.index.persons();
    if persons.len() < 2 {
        return Err(vidtrain_data::Error::NoSamples(format!(
            "cross-validation needs at least 2 persons, the dataset has {}",
            persons.len()
        ))
        .into());
    }
    let train_ids = dataset
        .chunks
        .fold_samples(&dataset.index, fold, k_folds, false);
    let val_ids = dataset
        .chunks
        .fold_samples(&dataset.index, fold, k_folds, true);
    if train_ids.is_empty() || val_ids.is_empty() {
        return Err(vidtrain_data::Error::NoSamples(format!(
            "fold {fold} of {k_folds} leaves {} training and {} validation samples ({} persons); \
             lower train.k_folds or add recordings",
            train_ids.len(),
            val_ids.len(),
            persons.len()
        ))
        .into());
    }
    tracing::info!(
        "dataset: {} recordings, {} persons, {} samples ({} train / {} validation, fold {fold} of {k_folds})",
        dataset.index.recordings.len(),
        persons.len(),
        dataset.len(),
        train_ids.len(),
        val_ids.len()
    );
    if let Some(folder) = persist::checkpoint::resolve_resume(config, Path::new(""))? {
        let state = persist::checkpoint::read_state(&folder)?;
        if state.is_finished(config) {
            return Err(Error::AlreadyFinished {
                checkpoint: folder,
                steps: state.step,
                max_epochs: config.train.max_epochs,
                max_steps: config.train.max_steps,
            });
        }
    }
    // A weights file that does not fit is refused before a run folder exists.
    persist::pretrained::check(config)?;
    let run_dir = open_run_dir(config, &options.world)?;
    // The fully resolved config goes in first, so every run can be reproduced from its folder.
    run_dir.write("config.toml", config.to_toml().as_bytes())?;
    let run_path = run_dir.path().to_path_buf();
    let outcome = fit_on_backend(
        backend,
        fit::RunContext {
            config,
            options,
            dataset,
            train_ids,
            val_ids,
            run_dir,
            memory,
            backend_name: backend.name(),
            precision: config.trainer.precision,
            backend,
            started,
        },
    );
    if let Err(error) = &outcome
        && options.world.is_leader()
        && !matches!(error, Error::Interrupted { .. })
    {
        remove_if_nothing_was_trained(&run_path);
    }
    outcome
}

/// A run that failed before its first step (weights that do not load, a backend that refuses)
/// leaves no folder behind: it would hold only its config and be taken for a run.
fn remove_if_nothing_was_trained(run_path: &Path) {
    let empty = |path: PathBuf| {
        std::fs::read_dir(&path).map_or(true, |mut entries| entries.next().is_none())
    };
    let no_steps = std::fs::metadata(run_path.join("metrics.jsonl")).map_or(true, |m| m.len() == 0);
    if no_steps && empty(run_path.join("checkpoints")) && std::fs::remove_dir_all(run_path).is_ok()
    {
        tracing::info!(
            "removed {} (the run failed before its first step)",
            run_path.display()
        );
    }
}

/// Runs the training loop on `backend`: on CUDA one GPU per rank of a machine (gradients summed
/// by NCCL between them), a device out-of-memory turned into advice.
fn fit_on_backend(backend: BackendChoice, context: fit::RunContext<'_>) -> Result<RunSummary> {
    let gpu = context.options.world.local_rank();
    on_backend!(backend, cuda_device = gpu, |B, device| {
        device::oom::catching_device_oom(context.config, backend, || {
            device::memory::persist_kernel_caches(backend);
            if backend == BackendChoice::Cuda {
                context.options.world.connect_gpus(gpu)?;
            }
            fit::fit::<burn::backend::Autodiff<B>>(context, device)
        })
    })
}
