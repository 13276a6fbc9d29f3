//! Validation after each epoch: the model without autodiff over the validation split, with the
//! evaluation crop and `eval.clips` clips, as `vidtrain eval` scores it.

use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::Config;
use vidtrain_data::Dataset;
use vidtrain_model::ActionModel;

use crate::Result;
use crate::report::metrics::ClassificationMetrics;

/// Runs the model over `ids`; returns metrics, the mean loss and the samples skipped. Metrics
/// cover the samples that loaded (labels and predictions stay paired); a split where none
/// loads, or a non-finite loss, is an error rather than a metric.
pub(crate) fn validate<B: AutodiffBackend>(
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
