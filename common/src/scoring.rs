//! Scoring rules both sides must apply identically: the report's top-5 and its calibration bins.

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
}
