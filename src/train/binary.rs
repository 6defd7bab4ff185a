//! Metrics of a binary classifier from its scores: ROC AUC, and balanced
//! accuracy and F1 at a decision threshold.

use serde::{Deserialize, Serialize};

/// Area under the ROC curve: the probability that a random positive scores
/// above a random negative, ties counted one half (the Mann-Whitney U
/// statistic over the product of the class sizes). `None` without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 || scores.len() != labels.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks (1-based) of tied groups; the positives' rank sum gives U.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += mid * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos * n_neg) as f64)
}

/// Counts of a thresholded classifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
}

impl Confusion {
    /// Predicts positive where `score >= threshold`.
    pub fn at(scores: &[f64], labels: &[bool], threshold: f64) -> Confusion {
        let mut c = Confusion::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// Mean of sensitivity and specificity; a class that is absent counts
    /// as recalled perfectly.
    pub fn balanced_accuracy(&self) -> f64 {
        let rate = |hit: usize, miss: usize| {
            if hit + miss == 0 { 1.0 } else { hit as f64 / (hit + miss) as f64 }
        };
        (rate(self.tp, self.fn_) + rate(self.tn, self.fp)) / 2.0
    }

    /// `2 tp / (2 tp + fp + fn)`, 0 when there is nothing positive at all.
    pub fn f1(&self) -> f64 {
        let den = 2 * self.tp + self.fp + self.fn_;
        if den == 0 { 0.0 } else { 2.0 * self.tp as f64 / den as f64 }
    }
}

/// Mean and sample standard deviation (n - 1; 0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_half_ties() {
        // Pairs (pos, neg): 0.9 beats 0.1 and 0.5, 0.5 ties 0.5, 0.5 beats
        // 0.1: 3.5 of 4.
        let scores = [0.9, 0.5, 0.5, 0.1];
        let labels = [true, true, false, false];
        assert_eq!(roc_auc(&scores, &labels), Some(0.875));
        assert_eq!(roc_auc(&[0.1, 0.9], &[true, false]), Some(0.0));
        assert_eq!(roc_auc(&[0.3, 0.3, 0.3], &[true, false, false]), Some(0.5));
        assert_eq!(roc_auc(&[0.3, 0.4], &[true, true]), None);
    }

    #[test]
    fn auc_equals_the_pair_count_on_random_scores_with_ties() {
        // Scores on a coarse grid, so that many pairs tie.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for n in [2, 7, 40, 301] {
            let scores: Vec<f64> = (0..n).map(|_| (next() % 9) as f64 / 8.0).collect();
            let mut labels: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
            labels[0] = true;
            labels[1] = false;
            let (mut wins, mut pairs) = (0.0, 0.0);
            for i in (0..n).filter(|&i| labels[i]) {
                for j in (0..n).filter(|&j| !labels[j]) {
                    pairs += 1.0;
                    wins += match scores[i].total_cmp(&scores[j]) {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
                }
            }
            let auc = roc_auc(&scores, &labels).unwrap();
            assert!((auc - wins / pairs).abs() < 1e-12, "n = {n}: {auc} vs {}", wins / pairs);
        }
    }

    #[test]
    fn confusion_metrics() {
        let scores = [0.9, 0.6, 0.4, 0.2, 0.7];
        let labels = [true, true, true, false, false];
        let c = Confusion::at(&scores, &labels, 0.5);
        assert_eq!(c, Confusion { tp: 2, fp: 1, tn: 1, fn_: 1 });
        assert!((c.balanced_accuracy() - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        assert!((c.f1() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
    }
}
