//! Training checkpoints: model, optimizer state and loop position, written as one folder that
//! replaces the previous one whole (`checkpoints/last/`), so a crash or Ctrl-C never leaves a
//! half-written checkpoint, and `train.resume` continues exactly where a run stopped.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vidtrain_config::Config;
use vidtrain_model::ActionModel;

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
}

const LAST: &str = "last";

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// Writes `checkpoints/last/` (model, optimizer, state) and returns its path.
pub(crate) fn save<B, O>(
    checkpoints: &Path,
    model: &ActionModel<B>,
    optimizer: &O,
    state: &TrainingState,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    O: Optimizer<ActionModel<B>, B>,
{
    let folder = checkpoints.join(LAST);
    let partial = checkpoints.join(format!("{LAST}.partial"));
    let previous = checkpoints.join(format!("{LAST}.old"));
    let checkpoint_error = |message: String| Error::Checkpoint {
        path: folder.clone(),
        message,
    };
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|error| Error::io(&partial, error))?;
    model
        .clone()
        .save_file(partial.join("model"), &recorder())
        .map_err(|error| checkpoint_error(format!("saving the model: {error}")))?;
    Recorder::<B>::record(
        &recorder(),
        optimizer.to_record(),
        partial.join("optimizer"),
    )
    .map_err(|error| checkpoint_error(format!("saving the optimizer: {error}")))?;
    let state_text = serde_json::to_string_pretty(state).expect("state serialises");
    crate::write_atomically(&partial.join("state.json"), state_text.as_bytes())?;
    // Swap folders: at every moment `last` or `last.old` is a complete checkpoint.
    let _ = std::fs::remove_dir_all(&previous);
    if folder.exists() {
        std::fs::rename(&folder, &previous).map_err(|error| Error::io(&folder, error))?;
    }
    std::fs::rename(&partial, &folder).map_err(|error| Error::io(&folder, error))?;
    let _ = std::fs::remove_dir_all(&previous);
    Ok(folder)
}

/// Loads a checkpoint folder into `model` and `optimizer`.
pub(crate) fn load<B, O>(
    folder: &Path,
    model: ActionModel<B>,
    optimizer: O,
    device: &B::Device,
) -> Result<(ActionModel<B>, O, TrainingState)>
where
    B: AutodiffBackend,
    O: Optimizer<ActionModel<B>, B>,
{
    let checkpoint_error = |message: String| Error::Checkpoint {
        path: folder.to_path_buf(),
        message,
    };
    let state_path = folder.join("state.json");
    let state_text = std::fs::read_to_string(&state_path)
        .map_err(|error| checkpoint_error(format!("reading state.json: {error}")))?;
    let state: TrainingState = serde_json::from_str(&state_text)
        .map_err(|error| checkpoint_error(format!("state.json: {error}")))?;
    let model = model
        .load_file(folder.join("model"), &recorder(), device)
        .map_err(|error| {
            checkpoint_error(format!(
                "the model does not match this config (resume with the run's own config.toml): {error}"
            ))
        })?;
    let record = Recorder::<B>::load(&recorder(), folder.join("optimizer"), device)
        .map_err(|error| checkpoint_error(format!("loading the optimizer: {error}")))?;
    Ok((model, optimizer.load_record(record), state))
}

/// The checkpoint folder `train.resume` names: `""` none; `last` the newest run of this
/// experiment (other than `current_run`) that has one; else a run folder or checkpoint folder.
pub(crate) fn resolve_resume(config: &Config, current_run: &Path) -> Result<Option<PathBuf>> {
    let resume = config.train.resume.trim();
    if resume.is_empty() {
        return Ok(None);
    }
    let complete = |folder: &Path| -> Option<PathBuf> {
        [LAST, "last.old"]
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
            .ok_or_else(|| Error::Checkpoint {
                path: experiment,
                message: "train.resume=last but no earlier run of this experiment has a \
                          checkpoint; check experiment and paths.run_dir"
                    .into(),
            });
    }
    let path = PathBuf::from(resume);
    let found = if path.join("state.json").is_file() {
        Some(path.clone())
    } else {
        complete(&path.join("checkpoints")).or_else(|| complete(&path))
    };
    found.map(Some).ok_or_else(|| Error::Checkpoint {
        path,
        message: "train.resume names no checkpoint (expected a run folder, its checkpoints/ \
                  folder, or a checkpoint folder with state.json)"
            .into(),
    })
}
