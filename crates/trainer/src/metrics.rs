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
            samples,
        }
    }
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
}
