//! Classification metrics, as scikit-learn defines them: accuracy, macro precision, recall and
//! F1 over the classes seen in the labels or the predictions, the confusion matrix (rows: the
//! true class), and ROC AUC for two classes (the Mann-Whitney statistic, ties counted half).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub examples: usize,
    pub accuracy: f64,
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    /// Two classes only: precision, recall and F1 of class 1 (the positive: speech, say).
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Two classes only.
    pub roc_auc: Option<f64>,
    /// The classes seen in the labels or the predictions, in order: the rows and columns of
    /// `confusion`.
    pub classes: Vec<i64>,
    /// `confusion[true][predicted]`, over `classes`; empty past [`MAX_CONFUSION_CLASSES`]
    /// classes, where the matrix would be the size of the class count squared.
    pub confusion: Vec<Vec<u64>>,
}

/// The most classes the confusion matrix is given for.
pub const MAX_CONFUSION_CLASSES: usize = 256;

/// `scores`, when given, is one score per example for class 1 (two classes only). Everything is
/// counted over the classes seen, so memory grows with the examples, never with a label's value.
pub fn classification(labels: &[i64], predicted: &[i64], scores: Option<&[f64]>) -> Classification {
    // Per class seen: true positives, how often predicted, how often the truth.
    let mut counts: BTreeMap<i64, (u64, u64, u64)> = BTreeMap::new();
    for (&truth, &guess) in labels.iter().zip(predicted) {
        counts.entry(truth).or_default().2 += 1;
        counts.entry(guess).or_default().1 += 1;
        if truth == guess {
            counts.entry(truth).or_default().0 += 1;
        }
    }
    let classes: Vec<i64> = counts.keys().copied().collect();
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let binary = classes.iter().all(|class| (0..2).contains(class));
    let (mut precision, mut recall, mut f1) = (0.0, 0.0, 0.0);
    let mut positive = None;
    for (&class, &(tp, predicted_c, actual_c)) in &counts {
        let p = ratio(tp, predicted_c);
        let r = ratio(tp, actual_c);
        precision += p;
        recall += r;
        let f = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        f1 += f;
        if class == 1 && binary {
            positive = Some((p, r, f));
        }
    }
    let n = classes.len().max(1) as f64;
    let correct: u64 = counts.values().map(|(tp, _, _)| tp).sum();
    let roc_auc = match scores {
        Some(scores) if binary => roc_auc(labels, scores),
        _ => None,
    };
    let confusion = if classes.len() <= MAX_CONFUSION_CLASSES {
        let index = |class: i64| classes.binary_search(&class).unwrap_or(0);
        let mut matrix = vec![vec![0u64; classes.len()]; classes.len()];
        for (&truth, &guess) in labels.iter().zip(predicted) {
            matrix[index(truth)][index(guess)] += 1;
        }
        matrix
    } else {
        Vec::new()
    };
    Classification {
        examples: labels.len(),
        accuracy: ratio(correct, labels.len() as u64),
        precision_macro: precision / n,
        recall_macro: recall / n,
        f1_macro: f1 / n,
        precision: positive.map(|(p, _, _)| p),
        recall: positive.map(|(_, r, _)| r),
        f1: positive.map(|(_, _, f)| f),
        roc_auc,
        classes,
        confusion,
    }
}

/// The chance that a positive example scores above a negative one; `None` without both.
pub fn roc_auc(labels: &[i64], scores: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Ranks from 1, ties given the mean of their ranks.
    let mut ranks = vec![0.0; labels.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean = (start + end + 1) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = mean;
        }
        start = end;
    }
    let positives = labels.iter().filter(|&&l| l == 1).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let rank_sum: f64 = labels
        .iter()
        .zip(&ranks)
        .filter(|(l, _)| **l == 1)
        .map(|(_, r)| r)
        .sum();
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// The `q` quantile of `values` (nearest rank), `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_scikit_learn() {
        // Figures from sklearn.metrics (accuracy_score; precision_score, recall_score and
        // f1_score with average="macro", zero_division=0) on the same labels.
        let m = classification(&[0, 1, 2, 2, 1], &[0, 2, 2, 1, 1], None);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        for value in [m.precision_macro, m.recall_macro, m.f1_macro] {
            assert!((value - 2.0 / 3.0).abs() < 1e-12, "{m:?}");
        }
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![0, 1, 1], vec![0, 1, 1]]
        );
        // A class never predicted, and one predicted for the wrong examples.
        let m = classification(&[0, 1, 2, 2, 1, 3], &[0, 2, 2, 1, 1, 0], None);
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        assert!((m.precision_macro - 0.375).abs() < 1e-12, "{m:?}");
        assert!((m.recall_macro - 0.5).abs() < 1e-12, "{m:?}");
        assert!(
            (m.f1_macro - 0.416_666_666_666_666_6).abs() < 1e-12,
            "{m:?}"
        );
    }

    #[test]
    fn a_huge_label_costs_what_the_examples_cost() {
        let labels: Vec<i64> = (0..20)
            .map(|i| if i == 7 { 99_999 } else { i % 3 })
            .collect();
        let predicted: Vec<i64> = (0..20).map(|i| i % 3).collect();
        let m = classification(&labels, &predicted, None);
        assert_eq!(m.classes, [0, 1, 2, 99_999]);
        assert_eq!(m.confusion.len(), 4);
        assert!((m.accuracy - 19.0 / 20.0).abs() < 1e-12, "{m:?}");
        // Past the bound of a readable matrix, the metrics stay and the matrix goes.
        let many: Vec<i64> = (0..1000).collect();
        let m = classification(&many, &many, None);
        assert!(m.confusion.is_empty());
        assert!((m.f1_macro - 1.0).abs() < 1e-12);
    }

    #[test]
    fn roc_auc_counts_ties_half() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert_eq!(roc_auc(&[0, 0, 1, 1], &[0.1, 0.4, 0.35, 0.8]), Some(0.75));
        assert_eq!(roc_auc(&[0, 1], &[0.5, 0.5]), Some(0.5));
        assert_eq!(roc_auc(&[1, 1], &[0.5, 0.7]), None);
    }
}
