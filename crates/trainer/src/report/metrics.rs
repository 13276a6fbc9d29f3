//! Classification metrics: accuracy, per-class and macro F1, confusion matrix.

use serde::Serialize;

/// Metrics of one evaluation pass.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassificationMetrics {
    /// Fraction of samples whose top class is the label.
    pub accuracy: f64,
    /// Mean F1 over the classes present in labels or predictions (scikit-learn's `macro`).
    pub macro_f1: f64,
    /// F1 per class id (0 for classes absent from labels and predictions).
    pub per_class_f1: Vec<f64>,
    /// `confusion[label][prediction]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// One-vs-rest ROC AUC per class (`None` where the labels hold only one side).
    pub per_class_auroc: Vec<Option<f64>>,
    /// Mean of the defined per-class AUROCs (`None` if none is defined).
    pub macro_auroc: Option<f64>,
    /// Samples evaluated.
    pub samples: usize,
}

impl ClassificationMetrics {
    /// Metrics of `predictions` against `labels`, over `classes` classes.
    pub fn compute(labels: &[usize], predictions: &[usize], classes: usize) -> Self {
        assert_eq!(labels.len(), predictions.len());
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&label, &prediction) in labels.iter().zip(predictions) {
            confusion[label][prediction] += 1;
        }
        let correct: usize = (0..classes).map(|class| confusion[class][class]).sum();
        let mut per_class_f1 = vec![0.0; classes];
        let mut present = 0usize;
        let mut f1_sum = 0.0;
        for class in 0..classes {
            let true_positive = confusion[class][class] as f64;
            let label_count: usize = confusion[class].iter().sum();
            let predicted_count: usize = confusion.iter().map(|row| row[class]).sum();
            if label_count + predicted_count == 0 {
                continue;
            }
            present += 1;
            let f1 = 2.0 * true_positive / (label_count + predicted_count) as f64;
            per_class_f1[class] = f1;
            f1_sum += f1;
        }
        let samples = labels.len();
        let per_class_auroc = vec![None; classes];
        Self {
            accuracy: if samples == 0 {
                0.0
            } else {
                correct as f64 / samples as f64
            },
            macro_f1: if present == 0 {
                0.0
            } else {
                f1_sum / present as f64
            },
            per_class_f1,
            confusion,
            per_class_auroc,
            macro_auroc: None,
            samples,
        }
    }

    /// Metrics from class probabilities (`probabilities[i · classes + c]`): predictions are the
    /// arg-max, and one-vs-rest AUROC is added.
    pub fn from_probabilities(labels: &[usize], probabilities: &[f32], classes: usize) -> Self {
        assert_eq!(probabilities.len(), labels.len() * classes);
        let predictions: Vec<usize> = probabilities
            .chunks(classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(class, _)| class)
            })
            .collect();
        let mut metrics = Self::compute(labels, &predictions, classes);
        metrics.per_class_auroc = (0..classes)
            .map(|class| {
                let scores: Vec<(f32, bool)> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, &label)| (probabilities[i * classes + class], label == class))
                    .collect();
                one_vs_rest_auroc(&scores)
            })
            .collect();
        let defined: Vec<f64> = metrics.per_class_auroc.iter().flatten().copied().collect();
        metrics.macro_auroc =
            (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
        metrics
    }
}

/// Area under the ROC curve of `(score, is_positive)` pairs: the probability that a random
/// positive scores above a random negative, ties counting half (Mann–Whitney U).
fn one_vs_rest_auroc(scores: &[(f32, bool)]) -> Option<f64> {
    let positives = scores.iter().filter(|(_, positive)| *positive).count();
    let negatives = scores.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks (1-based) over runs of equal scores.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start;
        while end + 1 < sorted.len() && sorted[end + 1].0 == sorted[start].0 {
            end += 1;
        }
        let average_rank = (start + end) as f64 / 2.0 + 1.0;
        let tied_positives = sorted[start..=end]
            .iter()
            .filter(|(_, positive)| *positive)
            .count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end + 1;
    }
    let u = positive_rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        // Class 0: 2 labels, both right. Class 1: 2 labels, one predicted as 2. Class 2: 0 labels.
        let metrics = ClassificationMetrics::compute(&[0, 0, 1, 1], &[0, 0, 1, 2], 4);
        assert_eq!(metrics.accuracy, 0.75);
        assert_eq!(metrics.confusion[1], vec![0, 1, 1, 0]);
        // F1: class 0 = 1, class 1 = 2·1/(2+1) = 2/3, class 2 = 0 (predicted once, never true).
        assert!((metrics.per_class_f1[1] - 2.0 / 3.0).abs() < 1e-12);
        assert!((metrics.macro_f1 - (1.0 + 2.0 / 3.0 + 0.0) / 3.0).abs() < 1e-12);
        assert_eq!(metrics.per_class_f1[3], 0.0);
    }

    #[test]
    fn auroc_matches_hand_computed_values() {
        // Perfect separation, reversed separation, and one tie (counted half).
        assert_eq!(
            one_vs_rest_auroc(&[(0.9, true), (0.8, true), (0.1, false)]),
            Some(1.0)
        );
        assert_eq!(one_vs_rest_auroc(&[(0.1, true), (0.9, false)]), Some(0.0));
        assert_eq!(
            one_vs_rest_auroc(&[(0.5, true), (0.5, false), (0.2, false)]),
            Some(0.75)
        );
        assert_eq!(one_vs_rest_auroc(&[(0.5, true), (0.4, true)]), None);
    }

    #[test]
    fn probabilities_give_argmax_predictions_and_auroc() {
        let probabilities = [0.7, 0.2, 0.1, 0.1, 0.8, 0.1, 0.3, 0.3, 0.4, 0.6, 0.3, 0.1];
        let metrics = ClassificationMetrics::from_probabilities(&[0, 1, 2, 1], &probabilities, 3);
        assert_eq!(metrics.accuracy, 0.75); // the last sample is predicted 0, labelled 1
        // Class 2: the one positive (0.4) outscores all three negatives (0.1, 0.1, 0.1).
        assert_eq!(metrics.per_class_auroc[2], Some(1.0));
        // Class 1: positives 0.8 and 0.3 against negatives 0.2 and 0.3: (1 + 1 + 1 + 0.5) / 4.
        assert_eq!(metrics.per_class_auroc[1], Some(0.875));
        assert!(metrics.macro_auroc.is_some());
    }
}
