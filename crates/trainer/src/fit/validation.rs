//! Validation after each epoch: the model without autodiff over the validation split, with the
//! evaluation crop and `eval.clips` clips, as `vidtrain eval` scores it. In a data-parallel run
//! each rank scores every `size`-th sample and the scores are gathered, so every rank computes
//! the same metrics over the whole split.

use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::Config;
use vidtrain_data::Dataset;
use vidtrain_model::ActionModel;

use crate::distributed::World;
use crate::inference::Scores;
use crate::report::metrics::ClassificationMetrics;
use crate::{Error, Result};

/// Runs the model over `ids`; returns metrics, the mean loss and the samples skipped. Metrics
/// cover the samples that loaded (labels and predictions stay paired); a split where none
/// loads, or a non-finite loss, is an error rather than a metric.
pub(crate) fn validate<B: AutodiffBackend>(
    config: &Config,
    dataset: &Arc<Dataset>,
    ids: &[usize],
    model: &ActionModel<B>,
    world: &World,
    device: &B::Device,
) -> Result<(ClassificationMetrics, f64, usize)> {
    let shard: Vec<usize> = ids
        .iter()
        .skip(world.rank())
        .step_by(world.size())
        .copied()
        .collect();
    let scores = crate::inference::probabilities(config, dataset, &shard, &model.valid(), device)?;
    let classes = config.model.model_class_num;
    let scores = gather_scores(world, scores, ids, classes)?;
    let scores = crate::inference::usable(scores, ids.len(), "the validation split")?;
    let metrics = scores.metrics(dataset, classes);
    Ok((metrics, scores.mean_loss(), scores.skipped))
}

/// Every rank's scores, merged in the order of `ids` (as one rank would have scored them).
fn gather_scores(world: &World, scores: Scores, ids: &[usize], classes: usize) -> Result<Scores> {
    if world.size() == 1 {
        return Ok(scores);
    }
    // [loss sum, skipped, then per sample: its index in `ids`, its probabilities]
    let index_of: std::collections::HashMap<usize, usize> = ids
        .iter()
        .enumerate()
        .map(|(index, &id)| (id, index))
        .collect();
    let mut packed = vec![scores.loss_sum, scores.skipped as f64];
    for (row, id) in scores.ids.iter().enumerate() {
        packed.push(index_of[id] as f64);
        packed.extend(
            scores.probabilities[row * classes..(row + 1) * classes]
                .iter()
                .map(|&p| f64::from(p)),
        );
    }
    let mut merged = Scores::default();
    let mut rows: Vec<(usize, Vec<f32>)> = Vec::new();
    for (rank, packed) in world
        .gather_f64("the validation scores' gather", &packed)
        .into_iter()
        .enumerate()
    {
        let malformed = packed.len() < 2 || (packed.len() - 2) % (classes + 1) != 0;
        if malformed {
            return Err(Error::Distributed {
                rank: world.rank(),
                message: format!("rank {rank} sent {} validation values", packed.len()),
            });
        }
        merged.loss_sum += packed[0];
        merged.skipped += packed[1] as usize;
        for row in packed[2..].chunks(classes + 1) {
            let probabilities = row[1..].iter().map(|&p| p as f32).collect();
            rows.push((row[0] as usize, probabilities));
        }
    }
    rows.sort_by_key(|(index, _)| *index);
    for (index, probabilities) in rows {
        merged.ids.push(ids[index]);
        merged.probabilities.extend(probabilities);
    }
    Ok(merged)
}
