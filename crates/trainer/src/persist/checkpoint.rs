//! Training checkpoints: model, optimizer state and loop position, written as one folder that
//! replaces the previous one whole (`checkpoints/last/`), so a crash or Ctrl-C never leaves a
//! half-written checkpoint, and `train.resume` continues exactly where a run stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vidtrain_config::{Config, OptimizerKind, OptimizerStateFormat};
use vidtrain_model::ActionModel;

use crate::fit::optimizer::TrainingOptimizer;
use crate::precision::LossScaler;
use crate::{Error, Result};

/// Where the training loop stands; restoring it (with the model and optimizer) continues the run
/// as if it had never stopped: shuffles, accumulation groups and dropout masks are all derived
/// from the seed and these positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainingState {
    /// The epoch to continue in (1-based).
    pub epoch: usize,
    /// Samples of that epoch's order already trained on (always a group boundary).
    pub position: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Training samples processed in all epochs so far.
    pub train_samples: usize,
    /// Loss sum and samples of the current epoch so far (for its mean).
    pub epoch_loss_sum: f64,
    pub epoch_loss_samples: usize,
    /// Best epoch and its validation accuracy.
    pub best: Option<(usize, f64)>,
    /// Mean training loss of the last finished epoch.
    pub last_train_loss: Option<f64>,
    /// The fp16 loss scaler (scale, clean-step count, skipped steps).
    #[serde(default)]
    pub loss_scaler: LossScaler,
    /// Ranks that trained (data parallel); a resume with another count changes the global batch.
    #[serde(default = "one_rank")]
    pub world_size: usize,
    /// The optimizer and state format that wrote `optimizer.mpk` (stamped on save; absent in
    /// checkpoints of earlier versions, which knew f32 state only).
    #[serde(default)]
    pub optimizer: Option<OptimizerIdentity>,
}

/// `train.optimizer` and `train.optimizer_state`: an optimizer state file is readable only by
/// the optimizer and format that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OptimizerIdentity {
    pub optimizer: OptimizerKind,
    pub optimizer_state: OptimizerStateFormat,
}

impl OptimizerIdentity {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            optimizer: config.train.optimizer,
            optimizer_state: config.train.optimizer_state,
        }
    }

    fn keys(self) -> String {
        format!(
            "train.optimizer={} train.optimizer_state={}",
            self.optimizer.name(),
            self.optimizer_state.name()
        )
    }
}

fn one_rank() -> usize {
    1
}

pub(crate) const LAST: &str = "last";
/// The best epoch's model by `train.monitor`.
pub(crate) const BEST: &str = "best";
/// A complete earlier checkpoint, present only if a kill fell between the two renames of
/// [`save`].
pub(crate) const LAST_OLD: &str = "last.old";

/// Writes `checkpoints/last/` (model, optimizer, state) and returns its path.
pub(crate) fn save<B: AutodiffBackend>(
    checkpoints: &Path,
    model: &ActionModel<B>,
    optimizer: &TrainingOptimizer<B>,
    state: &TrainingState,
    config: &Config,
) -> Result<PathBuf> {
    replace_folder(checkpoints, LAST, |partial| {
        crate::persist::weights::save(model, &partial.join("model.mpk"), config)?;
        optimizer.save(&partial.join("optimizer.mpk"))?;
        let state = TrainingState {
            optimizer: Some(OptimizerIdentity::of(config)),
            ..state.clone()
        };
        let state_text = serde_json::to_string_pretty(&state).expect("state serialises");
        crate::write_atomically(&partial.join("state.json"), state_text.as_bytes())
    })
}

/// Writes `checkpoints/best/`: the model and `metrics.json` (the epoch and its metrics).
pub(crate) fn save_best<B: AutodiffBackend>(
    checkpoints: &Path,
    model: &ActionModel<B>,
    metrics: &serde_json::Value,
    config: &Config,
) -> Result<PathBuf> {
    replace_folder(checkpoints, BEST, |partial| {
        crate::persist::weights::save(model, &partial.join("model.mpk"), config)?;
        let text = serde_json::to_string_pretty(metrics).expect("metrics serialise");
        crate::write_atomically(&partial.join("metrics.json"), text.as_bytes())
    })
}

/// Copies a resumed run's `checkpoints/best/` into this run's (the best epoch so far may be one
/// of the earlier run); returns its `metrics.json`. Nothing when the earlier run has none.
pub(crate) fn carry_best(
    from_checkpoints: &Path,
    checkpoints: &Path,
) -> Result<Option<serde_json::Value>> {
    let from = from_checkpoints.join(BEST);
    if from == checkpoints.join(BEST) || !from.join("metrics.json").is_file() {
        return Ok(None);
    }
    let files: Vec<PathBuf> = std::fs::read_dir(&from)
        .map_err(|error| Error::io(&from, error))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    replace_folder(checkpoints, BEST, |partial| {
        for file in &files {
            let name = file.file_name().unwrap_or_default();
            std::fs::copy(file, partial.join(name)).map_err(|error| Error::io(file, error))?;
        }
        Ok(())
    })?;
    let text = std::fs::read_to_string(from.join("metrics.json"))
        .map_err(|error| Error::io(&from, error))?;
    Ok(serde_json::from_str(&text).ok())
}

/// The `metrics.json` of an earlier run's best epoch, read without copying anything (ranks
/// other than 0 of a data-parallel run, which write nothing).
pub(crate) fn read_best_metrics(from_checkpoints: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(from_checkpoints.join(BEST).join("metrics.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `checkpoints/<name>/` whole: `write` fills `<name>.partial/`, which then replaces the
/// folder by renames, so that at every moment `<name>` or `<name>.old` is complete.
/// Checkpoint folders being written now (a counter: `last/` and `best/` may overlap on
/// different threads in principle).
static WRITES_IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// Waits until no checkpoint folder is being written, at most `limit`; returns whether none is.
/// A "stop now" (a second Ctrl-C) calls it before ending the process, so it never cuts a
/// checkpoint in half or ends the run between its steps and the save that keeps them.
pub fn wait_for_checkpoint_writes(limit: std::time::Duration) -> bool {
    let started = std::time::Instant::now();
    while WRITES_IN_PROGRESS.load(Ordering::SeqCst) > 0 {
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Counts a checkpoint write for [`wait_for_checkpoint_writes`] while it lives.
struct WriteInProgress;

impl WriteInProgress {
    fn start() -> Self {
        WRITES_IN_PROGRESS.fetch_add(1, Ordering::SeqCst);
        WriteInProgress
    }
}

impl Drop for WriteInProgress {
    fn drop(&mut self) {
        WRITES_IN_PROGRESS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn replace_folder(
    checkpoints: &Path,
    name: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let _counted = WriteInProgress::start();
    let folder = checkpoints.join(name);
    let partial = checkpoints.join(format!("{name}.partial"));
    let previous = checkpoints.join(format!("{name}.old"));
    let _ = std::fs::remove_dir_all(&partial);
    let written = std::fs::create_dir_all(&partial)
        .map_err(|error| Error::io(&partial, error))
        .and_then(|()| write(&partial));
    if let Err(error) = written {
        // A full disk: free what was written; the folder still holds the previous version.
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    let _ = std::fs::remove_dir_all(&previous);
    if folder.exists() {
        std::fs::rename(&folder, &previous).map_err(|error| Error::io(&folder, error))?;
    }
    std::fs::rename(&partial, &folder).map_err(|error| Error::io(&folder, error))?;
    let _ = std::fs::remove_dir_all(&previous);
    Ok(folder)
}

pub(crate) fn load<B: AutodiffBackend>(
    folder: &Path,
    model: ActionModel<B>,
    optimizer: TrainingOptimizer<B>,
    config: &Config,
    device: &B::Device,
) -> Result<(ActionModel<B>, TrainingOptimizer<B>, TrainingState)> {
    let state = read_state(folder)?;
    let asked = OptimizerIdentity::of(config);
    let written = state.optimizer.unwrap_or(OptimizerIdentity {
        optimizer: config.train.optimizer,
        optimizer_state: OptimizerStateFormat::F32,
    });
    if written != asked {
        return Err(Error::Checkpoint {
            path: folder.to_path_buf(),
            message: format!(
                "its optimizer state was written with {} and this run asks for {}; resume \
                 with {} (the state is stored in that format)",
                written.keys(),
                asked.keys(),
                written.keys()
            ),
        });
    }
    let model = crate::persist::weights::load(model, &folder.join("model.mpk"), config, device)?;
    let optimizer = optimizer.load(&folder.join("optimizer.mpk"), device)?;
    Ok((model, optimizer, state))
}

pub(crate) fn read_state(folder: &Path) -> Result<TrainingState> {
    let checkpoint_error = |message: String| Error::Checkpoint {
        path: folder.to_path_buf(),
        message,
    };
    let state_text = std::fs::read_to_string(folder.join("state.json"))
        .map_err(|error| checkpoint_error(format!("reading state.json: {error}")))?;
    serde_json::from_str(&state_text)
        .map_err(|error| checkpoint_error(format!("state.json: {error}")))
}

impl TrainingState {
    /// The state of a run that has not trained yet.
    pub(crate) fn start(loss_scaler: LossScaler, world_size: usize) -> Self {
        TrainingState {
            epoch: 1,
            position: 0,
            step: 0,
            train_samples: 0,
            epoch_loss_sum: 0.0,
            epoch_loss_samples: 0,
            best: None,
            last_train_loss: None,
            loss_scaler,
            world_size,
            optimizer: None,
        }
    }

    /// Whether a run at this position has nothing left to do under `config`'s limits.
    pub(crate) fn is_finished(&self, config: &Config) -> bool {
        let steps_done = usize::try_from(config.train.max_steps).is_ok_and(|max| self.step >= max);
        self.epoch > config.train.max_epochs || steps_done
    }
}

/// The checkpoint folder `train.resume` names: `""` none; `last` the newest run of this
/// experiment (other than `current_run`) that has one; else a run folder or checkpoint folder.
pub(crate) fn resolve_resume(config: &Config, current_run: &Path) -> Result<Option<PathBuf>> {
    let resume = config.train.resume.trim();
    if resume.is_empty() {
        return Ok(None);
    }
    let complete = |folder: &Path| -> Option<PathBuf> {
        [LAST, LAST_OLD]
            .iter()
            .map(|name| folder.join(name))
            .find(|candidate| candidate.join("state.json").is_file())
    };
    if resume == "last" {
        let experiment = config.paths.run_dir.join(&config.experiment);
        let mut runs: Vec<PathBuf> = std::fs::read_dir(&experiment)
            .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        runs.sort();
        return runs
            .iter()
            .rev()
            .filter(|run| run.as_path() != current_run)
            .find_map(|run| complete(&run.join("checkpoints")))
            .map(Some)
            .ok_or_else(|| Error::Setting {
                key: "train.resume".into(),
                message: format!(
                    "is \"last\" but no earlier run of this experiment has a checkpoint in {}; \
                     check experiment and paths.run_dir",
                    experiment.display()
                ),
            });
    }
    let path = PathBuf::from(resume);
    let found = if path.join("state.json").is_file() {
        Some(path.clone())
    } else {
        complete(&path.join("checkpoints")).or_else(|| complete(&path))
    };
    found.map(Some).ok_or_else(|| Error::Setting {
        key: "train.resume".into(),
        message: format!(
            "{} is no checkpoint{}: expected a run folder, its checkpoints/ folder, or a \
             checkpoint folder with state.json",
            path.display(),
            if path.exists() {
                ""
            } else {
                " (it does not exist)"
            }
        ),
    })
}
