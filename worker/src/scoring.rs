//! Per-sample scores from a row of logits: the rules live in `tresnet_common::scoring`, shared with the
//! coordinator's `rescore`, so a rescored run ranks and scores exactly as the workers do.

pub use tresnet_common::scoring::{loss_and_confidence, top_k};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
