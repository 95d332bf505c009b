//! Scoring rules both sides must apply identically: per-sample top-k, loss and confidence from a row of
//! logits (computed on the host in f64 with a fixed tie rule, so every worker, `rescore` and the reference
//! scripts agree exactly), the report's top-5 and its calibration bins.

/// The report's "top-5": hits within the first `TOP5` predictions.
pub const TOP5: u32 = 5;

/// Calibration bins for ECE, as torchmetrics and most papers use: a top-1 confidence `c` lands in bin
/// `ceil(ECE_BINS·c) - 1` (0 in the first).
pub const ECE_BINS: usize = 15;

/// The k of the report's top-5: `min(5, top_k, classes)`, so a job keeping fewer predictions, or a
/// dataset of fewer classes, still has a well-defined top-5.
pub fn top5_k(top_k: u32, num_classes: u32) -> usize {
    TOP5.min(top_k).min(num_classes) as usize
}

/// The calibration bin of a top-1 confidence in [0, 1].
pub fn ece_bin(confidence: f64) -> usize {
    ((confidence * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1
}

/// Top-k classes in descending logit order; equal logits rank the lower class index first (the rule
/// the reports document, unlike `torch.topk`, whose tie order is unspecified).
pub fn top_k(logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(logits.len());
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    let vals = idx.iter().map(|&i| logits[i as usize]).collect();
    (idx, vals)
}

/// Cross-entropy of `label` and the softmax probability of the top-1 class, via log-sum-exp in f64.
pub fn loss_and_confidence(logits: &[f32], label: u32) -> (f64, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let loss = match logits.get(label as usize) {
        Some(&v) => lse - v as f64,
        None => f64::NAN,
    };
    (loss, (max - lse).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_and_bins() {
        assert_eq!(top5_k(5, 1000), 5);
        assert_eq!(top5_k(3, 1000), 3);
        assert_eq!(top5_k(5, 2), 2);
        assert_eq!(ece_bin(0.0), 0);
        assert_eq!(ece_bin(1.0 / 15.0), 0);
        assert_eq!(ece_bin(1.0), ECE_BINS - 1);
    }

    #[test]
    fn ties_prefer_the_lower_class() {
        let (i, v) = top_k(&[1.0, 3.0, 3.0, 0.5, 3.0], 3);
        assert_eq!(i, vec![1, 2, 4]);
        assert_eq!(v, vec![3.0, 3.0, 3.0]);
        let (i, _) = top_k(&[0.0, 1.0], 5);
        assert_eq!(i, vec![1, 0]);
    }

    #[test]
    fn loss_matches_definition() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        let (loss, conf) = loss_and_confidence(&l, 0);
        assert!((loss - (z.ln() - 1.0)).abs() < 1e-12);
        assert!((conf - 3f64.exp() / z).abs() < 1e-12);
    }
}
