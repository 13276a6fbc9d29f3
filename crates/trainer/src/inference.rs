//! Inference from a saved model: `vidtrain eval` (metrics on a dataset split, a per-sample CSV and
//! a confusion-matrix image) and `vidtrain predict` (sliding windows over long, unlabelled videos).
//! Both stream micro-batches of `train.video_batch_size` samples through the bounded pipeline, so
//! memory stays bounded by the batch, not by the video's length.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::activation::softmax;
use serde::Serialize;
use vidtrain_config::{Config, Fold};
use vidtrain_data::{Dataset, Pipeline};
use vidtrain_model::{ActionModel, ActionModelConfig};

use crate::fit::{keypoint_tensor, labels_tensor, video_tensor};
use crate::metrics::ClassificationMetrics;
use crate::precision::compute_dtype;
use crate::{BackendChoice, Error, Result, effective_precision, resolve_backend};

/// The weights file a `--checkpoint` argument names: a `.mpk` file, a checkpoint folder
/// (`checkpoints/last` → its `model.mpk`), a run's `checkpoints/` folder or the run folder itself
/// (→ `model-best.mpk`, else `last/model.mpk`).
pub fn resolve_weights(checkpoint: &Path) -> Result<PathBuf> {
    let candidates = [
        checkpoint.to_path_buf(),
        checkpoint.join("model.mpk"),
        checkpoint.join("model-best.mpk"),
        checkpoint.join("last/model.mpk"),
        checkpoint.join("checkpoints/model-best.mpk"),
        checkpoint.join("checkpoints/last/model.mpk"),
    ];
    candidates
        .into_iter()
        .find(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "mpk"))
        .ok_or_else(|| Error::Checkpoint {
            path: checkpoint.to_path_buf(),
            message: "no model weights here: pass a run folder, its checkpoints/ or \
                      checkpoints/last folder, or a .mpk file"
                .into(),
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
    backend: BackendChoice,
) -> Result<ActionModel<B>> {
    let mut model_config = ActionModelConfig::from_config(config);
    model_config.compute_dtype = compute_dtype(effective_precision(config, backend));
    let model: ActionModel<B> = model_config.init(device);
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    model
        .load_file(weights.with_extension(""), &recorder, device)
        .map_err(|error| Error::Checkpoint {
            path: weights.to_path_buf(),
            message: format!(
                "the weights do not fit the model this config describes (use the run's own \
                 config.toml): {error}"
            ),
        })
}

/// Class probabilities of every sample of `ids`, in order, `video_batch_size` at a time, and the
/// sum of their cross-entropy losses.
pub(crate) fn probabilities<B: Backend>(
    config: &Config,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    model: &ActionModel<B>,
    device: &B::Device,
) -> Result<(Vec<f32>, f64)> {
    let classes = config.model.model_class_num;
    let loss_function = CrossEntropyLossConfig::new().init(device);
    let mut probabilities = Vec::with_capacity(ids.len() * classes);
    let mut loss_sum = 0.0f64;
    let pipeline = Pipeline::builder_for(&config.data)
        .batch_size(config.train.video_batch_size)
        .build(Arc::clone(dataset), ids.to_vec());
    for batch in pipeline {
        let mut batch = batch?;
        let scores = model.forward(
            video_tensor::<B>(&batch, device),
            keypoint_tensor::<B>(&mut batch, device),
        );
        let loss: f32 = loss_function
            .forward(scores.clone(), labels_tensor::<B>(&batch, device))
            .into_scalar()
            .elem();
        loss_sum += loss as f64 * batch.len() as f64;
        probabilities.extend(softmax(scores, 1).into_data().iter::<f32>());
    }
    Ok((probabilities, loss_sum))
}

/// Loads the weights and scores `ids`: class probabilities in order, and the loss sum.
fn weighted_probabilities<B: Backend>(
    config: &Config,
    weights: &Path,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    device: &B::Device,
    backend: BackendChoice,
) -> Result<(Vec<f32>, f64)> {
    let model = load_model::<B>(config, weights, device, backend)?;
    probabilities(config, dataset, ids, &model, device)
}

/// Calls `$function::<Backend>(args…, &device, backend)` for the backend chosen at run time.
macro_rules! dispatch {
    ($backend:expr, $body:ident, $($arg:expr),*) => {
        match $backend {
            BackendChoice::Cpu => $body::<crate::CpuBackend>(
                $($arg,)* &crate::FlexDevice, $backend),
            #[cfg(feature = "cuda")]
            BackendChoice::Cuda => $body::<burn::backend::Cuda<f32>>(
                $($arg,)* &burn::backend::cuda::CudaDevice::default(), $backend),
            #[cfg(not(feature = "cuda"))]
            BackendChoice::Cuda => unreachable!("resolve_backend returns Cuda only in cuda builds"),
        }
    };
}

/// Class probabilities and loss sum of `ids` with the weights at `weights`, on the backend the
/// config resolves to.
fn score(
    config: &Config,
    weights: &Path,
    dataset: &Arc<Dataset>,
    ids: &[usize],
) -> Result<(Vec<f32>, f64)> {
    let backend = resolve_backend(config)?;
    crate::configure_compute_threads(config);
    dispatch!(
        backend,
        weighted_probabilities,
        config,
        weights,
        dataset,
        ids
    )
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
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy, F1, AUROC and the confusion matrix.
    pub metrics: ClassificationMetrics,
    /// Per sample.
    #[serde(skip)]
    pub predictions: Vec<SamplePrediction>,
}

/// Scores `split` of the dataset `config` names with the weights at `checkpoint`.
pub fn evaluate(config: &Config, checkpoint: &Path, split: EvalSplit) -> Result<EvalReport> {
    let weights = resolve_weights(checkpoint)?;
    let dataset = Arc::new(Dataset::open(config)?);
    let ids: Vec<usize> = match (split, config.train.fold) {
        (EvalSplit::All, _) => (0..dataset.len()).collect(),
        (EvalSplit::Validation, Fold::Index(fold)) => {
            dataset
                .plan
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
    let (probabilities, loss_sum) = score(config, &weights, &dataset, &ids)?;
    let classes = config.model.model_class_num;
    let labels: Vec<usize> = ids
        .iter()
        .map(|&id| dataset.plan.samples[id].class)
        .collect();
    let metrics = ClassificationMetrics::from_probabilities(&labels, &probabilities, classes);
    let name = |class: usize| class_name(config, class);
    let predictions = ids
        .iter()
        .zip(probabilities.chunks(classes))
        .map(|(&id, probabilities)| {
            let sample = &dataset.plan.samples[id];
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
        samples: ids.len(),
        loss: loss_sum / ids.len() as f64,
        metrics,
        predictions,
    })
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
    /// The most probable class.
    pub predicted: String,
    /// Probability per class, in `data.class_names` order.
    pub probabilities: Vec<f32>,
}

/// Predicts every `window`-frame window (every `stride` frames) of each of `videos`.
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
        config.train.video_batch_size
    );
    let (probabilities, _) = score(config, &weights, &dataset, &ids)?;
    let classes = config.model.model_class_num;
    Ok(ids
        .iter()
        .zip(probabilities.chunks(classes))
        .map(|(&id, probabilities)| {
            let sample = &dataset.plan.samples[id];
            WindowPrediction {
                video: videos[sample.recording].clone(),
                window: sample.chunk,
                start_frame: sample.start,
                end_frame: sample.end,
                predicted: class_name(config, argmax(probabilities)),
                probabilities: probabilities.to_vec(),
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
