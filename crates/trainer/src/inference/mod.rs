//! Inference from a saved model: `vidtrain eval` (metrics on a dataset split, a per-sample CSV and
//! a confusion-matrix image) and `vidtrain predict` (sliding windows over long, unlabelled videos).
//! Both stream micro-batches of `train.video_batch_size` samples through the bounded pipeline, so
//! memory stays bounded by the batch, not by the video's length.

mod output;

pub use output::{windows_text, write_evaluation};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::Serialize;
use vidtrain_config::{Config, Fold};
use vidtrain_data::{Dataset, Pipeline, Transforms};
use vidtrain_model::ActionModel;

use crate::batch_tensors::{keypoint_tensor, labels_tensor, video_tensor};
use crate::report::metrics::ClassificationMetrics;
use crate::{Error, Result, resolve_backend};

/// The weights file a `--checkpoint` argument names: a `.mpk` file, a checkpoint folder
/// (`checkpoints/last` or `checkpoints/best` → its `model.mpk`), a run's `checkpoints/` folder or
/// the run folder itself (→ the best epoch's `best/model.mpk` by `train.monitor`, else
/// `model-best.mpk` of runs before it, else `last/model.mpk`, else `last.old/model.mpk`: the
/// complete earlier checkpoint a kill between the two renames of a checkpoint save leaves).
pub fn resolve_weights(checkpoint: &Path) -> Result<PathBuf> {
    let within = |folder: &Path| {
        [
            "best/model.mpk",
            "best.old/model.mpk",
            "model-best.mpk",
            "last/model.mpk",
            "last.old/model.mpk",
        ]
        .map(|name| folder.join(name))
    };
    let candidates = [checkpoint.to_path_buf(), checkpoint.join("model.mpk")]
        .into_iter()
        .chain(within(checkpoint))
        .chain(within(&checkpoint.join("checkpoints")));
    let found = candidates
        .into_iter()
        .find(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "mpk"))
        .ok_or_else(|| Error::Checkpoint {
            path: checkpoint.to_path_buf(),
            message: "no model weights here: pass a run folder, its checkpoints/ or \
                      checkpoints/last folder, or a .mpk file"
                .into(),
        })?;
    // A run folder scores its best epoch; when there is none (no validation, a copy without
    // best/), say that the last one is scored instead of passing it off as the best.
    if let Some(warning) = last_instead_of_best(checkpoint, &found) {
        tracing::warn!("{warning}");
    }
    Ok(found)
}

/// The warning due when `checkpoint` (a run folder or its `checkpoints/`) resolved to a last
/// checkpoint because it has no best one.
fn last_instead_of_best(checkpoint: &Path, found: &Path) -> Option<String> {
    let names_a_run = found.starts_with(checkpoint.join("checkpoints"))
        || (found.parent()?.parent()? == checkpoint
            && checkpoint
                .file_name()
                .is_some_and(|name| name == "checkpoints"));
    let folder = found.parent()?.file_name()?.to_string_lossy().into_owned();
    (names_a_run && folder.starts_with("last")).then(|| {
        format!(
            "{} has no best checkpoint (checkpoints/best/, written when validation runs): \
             scoring the last one, {}",
            checkpoint.display(),
            found.display()
        )
    })
}

/// The run folder a checkpoint belongs to (the nearest ancestor holding `config.toml`).
pub fn run_folder_of(checkpoint: &Path) -> Option<PathBuf> {
    checkpoint
        .ancestors()
        .find(|folder| folder.join("config.toml").is_file())
        .map(Path::to_path_buf)
}

fn load_model<B: Backend>(
    config: &Config,
    weights: &Path,
    device: &B::Device,
) -> Result<ActionModel<B>> {
    let model: ActionModel<B> = crate::build_model(config, device);
    crate::persist::weights::load(model, weights, config, device)
}

/// What scoring a list of samples produced: the samples that loaded, in order, with their class
/// probabilities; the ones that failed to load (`data.on_bad_sample = "skip"`) are left out of
/// `ids`, so `ids[i]` always owns row `i` of `probabilities`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scores {
    /// Sample ids scored, in the order asked for, without the skipped ones.
    pub ids: Vec<usize>,
    /// `probabilities[i · classes + c]`: class `c` of sample `ids[i]`.
    pub probabilities: Vec<f32>,
    /// Sum of the cross-entropy losses of the scored samples.
    pub loss_sum: f64,
    /// Samples that failed to load and were skipped.
    pub skipped: usize,
}

impl Scores {
    /// Accuracy, F1, AUROC and the confusion matrix of these scores against the samples' labels.
    pub(crate) fn metrics(&self, dataset: &Dataset, classes: usize) -> ClassificationMetrics {
        let labels: Vec<usize> = self
            .ids
            .iter()
            .map(|&id| dataset.chunks.samples[id].class)
            .collect();
        ClassificationMetrics::from_probabilities(&labels, &self.probabilities, classes)
    }

    /// Mean loss of the scored samples (`NaN` when none was scored).
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.ids.len() as f64
    }
}

/// Class probabilities of every sample of `ids` that loads, in order, `video_batch_size` at a
/// time, and the sum of their cross-entropy losses. With `eval.clips = N > 1` each sample is
/// scored on N temporal clips whose probabilities are averaged (a sample counts when every clip
/// loaded); its loss is then −ln of the averaged probability of its class.
pub(crate) fn probabilities<B: Backend>(
    config: &Config,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    model: &ActionModel<B>,
    device: &B::Device,
) -> Result<Scores> {
    let clips = config.eval.clips.max(1);
    if clips == 1 {
        return clip_probabilities(config, dataset, ids, model, device, 0, 1);
    }
    let classes = config.model.model_class_num;
    let mut sums: Vec<Option<(usize, Vec<f32>)>> = vec![None; dataset.len()];
    for clip in 0..clips {
        let scores = clip_probabilities(config, dataset, ids, model, device, clip, clips)?;
        for (row, &id) in scores.ids.iter().enumerate() {
            let values = &scores.probabilities[row * classes..(row + 1) * classes];
            let (count, sum) = sums[id].get_or_insert_with(|| (0, vec![0.0; classes]));
            *count += 1;
            sum.iter_mut()
                .zip(values)
                .for_each(|(total, value)| *total += value);
        }
    }
    let mut scores = Scores::default();
    for &id in ids {
        let Some((count, sum)) = &sums[id] else {
            continue;
        };
        if *count < clips {
            continue;
        }
        let mean: Vec<f32> = sum.iter().map(|total| total / clips as f32).collect();
        let label = dataset.chunks.samples[id].class;
        scores.loss_sum -= f64::from(mean[label].max(f32::MIN_POSITIVE)).ln();
        scores.probabilities.extend(mean);
        scores.ids.push(id);
    }
    scores.skipped = ids.len() - scores.ids.len();
    Ok(scores)
}

/// [`probabilities`] of clip `clip` of `clips`.
fn clip_probabilities<B: Backend>(
    config: &Config,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    model: &ActionModel<B>,
    device: &B::Device,
    clip: usize,
    clips: usize,
) -> Result<Scores> {
    let classes = config.model.model_class_num;
    let loss_function = CrossEntropyLossConfig::new().init(device);
    let mut scores = Scores {
        ids: Vec::with_capacity(ids.len()),
        probabilities: Vec::with_capacity(ids.len() * classes),
        ..Scores::default()
    };
    let mut pipeline = Pipeline::builder_for(&config.data)
        .batch_size(config.inference_batch_size())
        .transforms(Transforms::Evaluation { clip, clips })
        .build(Arc::clone(dataset), ids.to_vec());
    for batch in pipeline.by_ref() {
        let mut batch = batch?;
        let inputs = (
            video_tensor::<B>(&batch, device),
            keypoint_tensor::<B>(&mut batch, device),
        );
        let forward = || model.forward(inputs.0, inputs.1);
        let logits = crate::backend::on_compute_threads::<B, _>(device, forward);
        let loss: f32 = loss_function
            .forward(logits.clone(), labels_tensor::<B>(&batch, device))
            .into_scalar()
            .elem();
        scores.loss_sum += loss as f64 * batch.len() as f64;
        scores
            .probabilities
            .extend(softmax(logits, 1).into_data().iter::<f32>());
        scores.ids.extend_from_slice(&batch.sample_ids);
    }
    scores.skipped = pipeline.skipped();
    Ok(scores)
}

/// Loads the weights and scores `ids`.
fn weighted_probabilities<B: Backend>(
    config: &Config,
    weights: &Path,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    device: &B::Device,
) -> Result<Scores> {
    let model = load_model::<B>(config, weights, device)?;
    probabilities(config, dataset, ids, &model, device)
}

/// Scores `ids` with the weights at `weights`, on the backend the config resolves to.
fn score(config: &Config, weights: &Path, dataset: &Arc<Dataset>, ids: &[usize]) -> Result<Scores> {
    let backend = resolve_backend(config)?;
    crate::configure_compute_threads(config);
    on_backend!(backend, |B, device| {
        weighted_probabilities::<B>(config, weights, dataset, ids, &device)
    })
}

/// Which samples `vidtrain eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    /// The validation persons of `train.fold` (what training validated on).
    Validation,
    /// Every sample of the dataset.
    All,
}

/// One evaluated sample.
#[derive(Debug, Clone, Serialize)]
pub struct SamplePrediction {
    /// The recording's video file name.
    pub recording: String,
    /// First and last frame of the labelled segment.
    pub start_frame: usize,
    /// Last frame (inclusive).
    pub end_frame: usize,
    /// The annotated class.
    pub label: String,
    /// The most probable class.
    pub predicted: String,
    /// Probability per class, in `data.class_names` order.
    pub probabilities: Vec<f32>,
}

/// What `vidtrain eval` measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The weights evaluated.
    pub weights: PathBuf,
    /// Samples scored.
    pub samples: usize,
    /// Samples that failed to load and were skipped (not in `samples` or the metrics).
    pub skipped: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy, F1, AUROC and the confusion matrix.
    pub metrics: ClassificationMetrics,
    /// Per sample.
    #[serde(skip)]
    pub predictions: Vec<SamplePrediction>,
}

/// Refuses to score a validation split whose persons are not the ones the run that wrote
/// `checkpoint` validated (its `summary.json`, `val_persons`): a dataset that changed since
/// (a person dropped or added, another `train.k_folds`) would otherwise score persons the model
/// was trained on, and the accuracy would look like a validation accuracy. Runs written before
/// `val_persons` existed are not checked.
fn check_validation_persons(
    checkpoint: &Path,
    dataset: &Dataset,
    fold: usize,
    k_folds: usize,
) -> Result<()> {
    let Some(summary_path) = run_folder_of(checkpoint).map(|run| run.join("summary.json")) else {
        return Ok(());
    };
    let Some(recorded) = std::fs::read_to_string(&summary_path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|summary| summary.get("val_persons").cloned())
        .and_then(|persons| serde_json::from_value::<Vec<String>>(persons).ok())
    else {
        return Ok(());
    };
    let (_, val_now) = dataset.index.split_persons(fold, k_folds);
    if val_now == recorded {
        return Ok(());
    }
    let trained_on: Vec<&String> = val_now
        .iter()
        .filter(|person| !recorded.contains(person))
        .collect();
    let list = |persons: &[String]| {
        if persons.is_empty() {
            "nobody".to_string()
        } else {
            persons.join(", ")
        }
    };
    Err(Error::Setting {
        key: "eval --split validation".into(),
        message: format!(
            "the run validated {} ({}), but fold {fold} of {k_folds} of this dataset now holds {}{}; \
             the dataset changed since training (see `vidtrain data inspect`). Score every \
             sample with --split all, or restore the dataset",
            list(&recorded),
            summary_path.display(),
            list(&val_now),
            if trained_on.is_empty() {
                String::new()
            } else {
                format!(
                    " — of those, {} were not held out by the run",
                    trained_on
                        .iter()
                        .map(|person| person.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    })
}

/// Scores `split` of the dataset `config` names with the weights at `checkpoint`.
pub fn evaluate(config: &Config, checkpoint: &Path, split: EvalSplit) -> Result<EvalReport> {
    let weights = resolve_weights(checkpoint)?;
    let dataset = Arc::new(Dataset::open(config)?);
    let ids: Vec<usize> = match (split, config.train.fold) {
        (EvalSplit::All, _) => (0..dataset.len()).collect(),
        (EvalSplit::Validation, Fold::Index(fold)) => {
            check_validation_persons(checkpoint, &dataset, fold, config.train.k_folds)?;
            dataset
                .chunks
                .fold_samples(&dataset.index, fold, config.train.k_folds, true)
        }
        (EvalSplit::Validation, Fold::All) => {
            return Err(Error::Unsupported {
                key: "train.fold".into(),
                message:
                    "is \"all\"; evaluate one fold's model with train.fold=N, or pass --split all"
                        .into(),
            });
        }
    };
    if ids.is_empty() {
        return Err(vidtrain_data::Error::NoSamples(format!(
            "nothing to evaluate in {split:?} of the dataset"
        ))
        .into());
    }
    let scores = score(config, &weights, &dataset, &ids)?;
    let scores = usable(scores, ids.len(), &format!("the {split:?} split"))?;
    let classes = config.model.model_class_num;
    let metrics = scores.metrics(&dataset, classes);
    let name = |class: usize| class_name(config, class);
    let predictions = scores
        .ids
        .iter()
        .zip(scores.probabilities.chunks(classes))
        .map(|(&id, probabilities)| {
            let sample = &dataset.chunks.samples[id];
            SamplePrediction {
                recording: dataset.index.recordings[sample.recording].name.clone(),
                start_frame: sample.start,
                end_frame: sample.end,
                label: name(sample.class),
                predicted: name(argmax(probabilities)),
                probabilities: probabilities.to_vec(),
            }
        })
        .collect();
    Ok(EvalReport {
        weights,
        samples: scores.ids.len(),
        skipped: scores.skipped,
        loss: scores.mean_loss(),
        metrics,
        predictions,
    })
}

/// `scores` when they can be reported: at least one of the `asked` samples loaded, and every
/// probability and the loss are finite (NaN inputs, such as NaN keypoints, must not become a
/// metric printed with exit 0).
pub(crate) fn usable(scores: Scores, asked: usize, what: &str) -> Result<Scores> {
    if scores.ids.is_empty() {
        return Err(vidtrain_data::Error::NoSamples(format!(
            "none of the {asked} samples of {what} could be loaded ({} skipped; the warnings \
             above name the files)",
            scores.skipped
        ))
        .into());
    }
    if !scores.loss_sum.is_finite() || scores.probabilities.iter().any(|p| !p.is_finite()) {
        return Err(Error::NonFiniteScores {
            what: what.to_string(),
            loss: scores.mean_loss(),
        });
    }
    Ok(scores)
}

/// One window of `vidtrain predict`.
#[derive(Debug, Clone, Serialize)]
pub struct WindowPrediction {
    /// The video given.
    pub video: PathBuf,
    /// Window number within the video.
    pub window: usize,
    /// First frame of the window.
    pub start_frame: usize,
    /// Last frame (inclusive).
    pub end_frame: usize,
    /// The most probable class (`None` when the window could not be loaded).
    pub predicted: Option<String>,
    /// Probability per class, in `data.class_names` order (`None` when skipped).
    pub probabilities: Option<Vec<f32>>,
    /// Whether the window failed to load and was skipped (`data.on_bad_sample = "skip"`).
    pub skipped: bool,
}

/// Predicts every `window`-frame window (every `stride` frames) of each of `videos`: one row per
/// window, in order, each carrying its own window; a window that failed to load is a row marked
/// skipped, never a shifted neighbour.
pub fn predict(
    config: &Config,
    checkpoint: &Path,
    videos: &[PathBuf],
    window: usize,
    stride: usize,
) -> Result<Vec<WindowPrediction>> {
    let weights = resolve_weights(checkpoint)?;
    let dataset = Arc::new(Dataset::windows(config, videos, window, stride)?);
    let ids: Vec<usize> = (0..dataset.len()).collect();
    tracing::info!(
        "{} windows of {window} frames (stride {stride}) in {} videos, {} at a time",
        ids.len(),
        videos.len(),
        config.inference_batch_size()
    );
    let scores = score(config, &weights, &dataset, &ids)?;
    let scores = usable(scores, ids.len(), "the videos' windows")?;
    if scores.skipped > 0 {
        tracing::warn!(
            "{} of {} windows could not be loaded; their rows are marked skipped",
            scores.skipped,
            ids.len()
        );
    }
    let classes = config.model.model_class_num;
    let mut rows_of = vec![None; dataset.len()];
    for (row, &id) in scores.ids.iter().enumerate() {
        rows_of[id] = Some(&scores.probabilities[row * classes..(row + 1) * classes]);
    }
    Ok(ids
        .iter()
        .map(|&id| {
            let sample = &dataset.chunks.samples[id];
            let probabilities = rows_of[id];
            WindowPrediction {
                video: videos[sample.recording].clone(),
                window: sample.chunk,
                start_frame: sample.start,
                end_frame: sample.end,
                predicted: probabilities.map(|p| class_name(config, argmax(p))),
                probabilities: probabilities.map(<[f32]>::to_vec),
                skipped: probabilities.is_none(),
            }
        })
        .collect())
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index)
}

fn class_name(config: &Config, class: usize) -> String {
    config
        .data
        .class_names
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class_{class}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_best_resolves_to_last_and_says_so() {
        let run = std::env::temp_dir().join(format!("vidtrain-resolve-{}", std::process::id()));
        let last = run.join("checkpoints/last");
        std::fs::create_dir_all(&last).unwrap();
        std::fs::write(last.join("model.mpk"), b"x").unwrap();
        for named in [run.clone(), run.join("checkpoints")] {
            let found = resolve_weights(&named).unwrap();
            assert_eq!(found, last.join("model.mpk"));
            let warning = last_instead_of_best(&named, &found).expect("a warning");
            assert!(warning.contains("no best checkpoint"), "{warning}");
        }
        // Naming the last checkpoint itself is what the user asked for: no warning.
        let found = resolve_weights(&last).unwrap();
        assert!(last_instead_of_best(&last, &found).is_none());
        // With a best checkpoint there is nothing to say.
        let best = run.join("checkpoints/best");
        std::fs::create_dir_all(&best).unwrap();
        std::fs::write(best.join("model.mpk"), b"x").unwrap();
        let found = resolve_weights(&run).unwrap();
        assert_eq!(found, best.join("model.mpk"));
        assert!(last_instead_of_best(&run, &found).is_none());
        std::fs::remove_dir_all(&run).unwrap();
    }
}
