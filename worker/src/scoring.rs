//! Per-sample scores from a row of logits, computed on the host in f64 with a fixed tie rule, so every
//! worker and the reference scripts agree exactly on top-k, loss and confidence.

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

/// Why a row of logits cannot be scored: NaN or infinite values make its ranking (NaN sorts above every
/// number) and its loss meaningless, so the sample is reported bad with this reason instead. `None`
/// when every value is finite.
pub fn non_finite_reason(logits: &[f32]) -> Option<String> {
    if logits.iter().all(|v| v.is_finite()) {
        return None;
    }
    let nan = logits.iter().filter(|v| v.is_nan()).count();
    let inf = logits.iter().filter(|v| v.is_infinite()).count();
    let what = match (nan, inf) {
        (n, 0) => format!("NaN in {n}"),
        (0, i) => format!("inf in {i}"),
        (n, i) => format!("NaN in {n} and inf in {i}"),
    };
    Some(format!(
        "logits are not finite ({what} of {} classes)",
        logits.len()
    ))
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
    fn ties_prefer_the_lower_class() {
        let (i, v) = top_k(&[1.0, 3.0, 3.0, 0.5, 3.0], 3);
        assert_eq!(i, vec![1, 2, 4]);
        assert_eq!(v, vec![3.0, 3.0, 3.0]);
        let (i, _) = top_k(&[0.0, 1.0], 5);
        assert_eq!(i, vec![1, 0]);
    }

    #[test]
    fn non_finite_rows_say_what_and_how_many() {
        assert_eq!(non_finite_reason(&[1.0, -2.0, 0.0]), None);
        assert_eq!(
            non_finite_reason(&[f32::NAN; 4]).unwrap(),
            "logits are not finite (NaN in 4 of 4 classes)"
        );
        assert_eq!(
            non_finite_reason(&[f32::INFINITY, 1.0, f32::NEG_INFINITY]).unwrap(),
            "logits are not finite (inf in 2 of 3 classes)"
        );
        assert_eq!(
            non_finite_reason(&[f32::NAN, f32::INFINITY, 0.0]).unwrap(),
            "logits are not finite (NaN in 1 and inf in 1 of 3 classes)"
        );
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
