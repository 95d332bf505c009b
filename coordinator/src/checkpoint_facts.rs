//! What planning reads from the checkpoint before any worker starts: its SHA-256 (part of the job
//! identity), that every weight is finite, and the width of its classifier (the class count when the
//! dataset does not fix one; see [`crate::classes`]).

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tresnet_common::checkpoint::{load_state_dict_from_bytes, non_finite_tensors, to_timm_layout};

/// The checkpoint as planning sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFacts {
    pub sha256: String,
    /// Rows of `head.fc.weight`; `None` when the file does not parse or has no such 2-D tensor, in
    /// which case the workers' strict load reports what is wrong with it, by worker.
    pub head_classes: Option<u32>,
}

/// Reads the checkpoint at `path` once: hashes it, and refuses it when a weight is NaN or infinite
/// (its logits would rank NaN first and give a made-up accuracy), naming the tensor.
pub fn inspect(path: &Path) -> anyhow::Result<CheckpointFacts> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read weights {}", path.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let Ok(sd) = load_state_dict_from_bytes(path, &bytes) else {
        return Ok(CheckpointFacts {
            sha256,
            head_classes: None,
        });
    };
    let (sd, _) = to_timm_layout(sd);
    let bad = non_finite_tensors(&sd);
    if let Some(first) = bad.first() {
        anyhow::bail!(
            "checkpoint {}: {first} (and {} more such tensors); the weights are damaged, so nothing \
             evaluated with them would mean anything",
            path.display(),
            bad.len() - 1
        );
    }
    let head_classes = sd.get("head.fc.weight").and_then(|t| match t.shape[..] {
        [classes, _] => u32::try_from(classes).ok(),
        _ => None,
    });
    Ok(CheckpointFacts {
        sha256,
        head_classes,
    })
}
