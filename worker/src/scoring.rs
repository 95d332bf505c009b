//! Per-sample scores from a row of logits: the rules live in `tresnet_common::scoring`, shared with the
//! coordinator's `rescore`, so a rescored run ranks and scores exactly as the workers do.

pub use tresnet_common::scoring::{loss_and_confidence, top_k};
