//! The training loss: cross-entropy with `train.label_smoothing` and `train.class_weights`
//! (none, scikit-learn's `balanced` over the training split, or fixed weights).

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::backend::AutodiffBackend;
use vidtrain_config::{ClassWeights, Config};

/// Weights n_samples / (n_classes · count) per class (scikit-learn's `balanced`); a class absent
/// from `labels` gets 1 (no sample carries it; the loss needs positive weights).
fn balanced_class_weights(labels: &[usize], classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    for &label in labels {
        counts[label] += 1;
    }
    counts
        .iter()
        .map(|&count| {
            if count == 0 {
                1.0
            } else {
                labels.len() as f64 / (classes * count) as f64
            }
        })
        .collect()
}

/// The class weights of `train.class_weights` for a training split with `labels`.
pub(crate) fn class_weights(config: &Config, labels: &[usize]) -> Option<Vec<f64>> {
    match &config.train.class_weights {
        ClassWeights::None => None,
        ClassWeights::Balanced => {
            Some(balanced_class_weights(labels, config.model.model_class_num))
        }
        ClassWeights::Fixed(weights) => Some(weights.clone()),
    }
}

/// The training loss: cross-entropy with `train.label_smoothing` and the class weights.
pub(crate) fn training_loss<B: AutodiffBackend>(
    config: &Config,
    class_weights: Option<&[f64]>,
    device: &B::Device,
) -> CrossEntropyLoss<B> {
    let smoothing = config.train.label_smoothing;
    CrossEntropyLossConfig::new()
        .with_smoothing((smoothing > 0.0).then_some(smoothing as f32))
        .with_weights(class_weights.map(|weights| weights.iter().map(|&w| w as f32).collect()))
        .init(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tensor;

    type B = Autodiff<Flex>;

    fn config(overrides: &[&str]) -> Config {
        vidtrain_config::ConfigLoader::with_overrides(overrides).unwrap()
    }

    #[test]
    fn the_training_loss_smooths_labels_and_weighs_classes_as_pytorch() {
        let device = Default::default();
        let logits = Tensor::<B, 2>::from_floats([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], &device);
        let labels = Tensor::<B, 1, burn::tensor::Int>::from_ints([0, 1], &device);
        let log_softmax = |row: [f64; 3]| {
            let total = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            row.map(|x| x - total)
        };
        let rows = [log_softmax([2.0, 0.0, -1.0]), log_softmax([0.5, 1.5, 0.0])];
        let loss_of = |overrides: &[&str], weights: Option<&[f64]>| -> f64 {
            let loss = training_loss::<B>(&config(overrides), weights, &device);
            f64::from(loss.forward(logits.clone(), labels.clone()).into_scalar())
        };
        // torch.nn.CrossEntropyLoss(label_smoothing=0.3): targets 0.7 + 0.1 on the label, 0.1
        // elsewhere.
        let smoothed: f64 = rows
            .iter()
            .zip([0, 1])
            .map(|(row, label)| {
                -(0..3)
                    .map(|class| row[class] * if class == label { 0.8 } else { 0.1 })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        assert!((loss_of(&["train.label_smoothing=0.3"], None) - smoothed).abs() < 1e-5);
        // torch.nn.CrossEntropyLoss(weight=w): Σ w_y · nll / Σ w_y.
        let weights = [3.0, 1.0, 1.0];
        let weighted = -(3.0 * rows[0][0] + 1.0 * rows[1][1]) / 4.0;
        assert!((loss_of(&[], Some(&weights)) - weighted).abs() < 1e-5);
        let plain = -(rows[0][0] + rows[1][1]) / 2.0;
        assert!((loss_of(&[], None) - plain).abs() < 1e-5);
        // `balanced` weights come from the training labels.
        let balanced = config(&["train.class_weights=balanced"]);
        let mut expected = vec![1.0; 9];
        expected[..2].copy_from_slice(&[4.0 / 27.0, 4.0 / 9.0]);
        assert_eq!(class_weights(&balanced, &[0, 0, 0, 1]), Some(expected));
        assert_eq!(class_weights(&config(&[]), &[0, 1]), None);
    }

    #[test]
    fn balanced_weights_are_scikit_learns_and_an_absent_class_weighs_one() {
        assert_eq!(
            balanced_class_weights(&[0, 0, 0, 1], 3),
            vec![4.0 / 9.0, 4.0 / 3.0, 1.0]
        );
    }
}
