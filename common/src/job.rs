//! The job spec: everything that determines a run's numbers. Stored as `job.json` in the run directory
//! (resume refuses a different spec) and sent to workers at registration.

use serde::{Deserialize, Serialize};

use crate::dataset::DatasetFormat;
use crate::ids::JobId;
use crate::preprocess::PreprocessConfig;

/// Whether and how full logits travel back with each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveLogits {
    #[default]
    None,
    Fp16,
    Fp32,
}

impl std::str::FromStr for SaveLogits {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "" => Ok(Self::None),
            "fp16" => Ok(Self::Fp16),
            "fp32" => Ok(Self::Fp32),
            other => Err(format!(
                "unknown logits mode {other:?} (expected none, fp16 or fp32)"
            )),
        }
    }
}

impl SaveLogits {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Fp16 => "fp16",
            Self::Fp32 => "fp32",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: JobId,
    /// timm model name (`tresnet_m`, ...).
    pub model: String,
    /// Checkpoint path or URL as readable by the workers.
    pub weights: String,
    /// SHA-256 of the checkpoint bytes; empty in synthetic mode.
    pub weights_sha256: String,
    /// Dataset location; sample paths are absolute within its store.
    pub data_url: String,
    pub format: DatasetFormat,
    pub dataset_fingerprint: String,
    pub dataset_samples: u64,
    pub num_classes: u32,
    pub preprocess: PreprocessConfig,
    pub top_k: u32,
    pub save_logits: SaveLogits,
    /// `fp32`, `fp16` or `bf16`.
    pub precision: String,
    pub fold_bn: bool,
    pub batch_size: u32,
    pub shard_size: u64,
    pub leaky_slope: Option<f64>,
    /// Benchmark mode: workers produce logits without a network. Never usable for accuracy.
    pub synthetic: bool,
    /// Workers ship reduced per-shard counts, not per-sample results: no predictions.parquet.
    #[serde(default)]
    pub counts_only: bool,
}

impl JobSpec {
    /// Fields whose change makes old results invalid, with their values, for resume checks. The job id
    /// and knobs that cannot change any number (batch size, shard size) are left out.
    pub fn identity(&self) -> Vec<(&'static str, String)> {
        vec![
            ("model", self.model.clone()),
            ("weights_sha256", self.weights_sha256.clone()),
            ("data_url", self.data_url.clone()),
            ("format", format!("{:?}", self.format)),
            ("dataset_fingerprint", self.dataset_fingerprint.clone()),
            ("preprocess", format!("{:?}", self.preprocess)),
            ("top_k", self.top_k.to_string()),
            ("save_logits", self.save_logits.as_str().to_string()),
            ("precision", self.precision.clone()),
            ("fold_bn", self.fold_bn.to_string()),
            ("leaky_slope", format!("{:?}", self.leaky_slope)),
            ("synthetic", self.synthetic.to_string()),
            ("counts_only", self.counts_only.to_string()),
        ]
    }

    /// A digest of [`Self::identity`]: what a journal record is sealed with, so that a record of one
    /// job is never counted in another (coordinator/src/journal.rs).
    pub fn identity_digest(&self) -> JobIdentity {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Length-prefixed, so that no two different identities encode to the same bytes.
        for (name, value) in self.identity() {
            for part in [name.as_bytes(), value.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
        JobIdentity(h.finalize().into())
    }

    /// Human-readable differences between two specs' identities; empty when compatible.
    pub fn differences(&self, other: &JobSpec) -> Vec<String> {
        self.identity()
            .into_iter()
            .zip(other.identity())
            .filter(|(a, b)| a.1 != b.1)
            .map(|((name, a), (_, b))| format!("{name}: {a} -> {b}"))
            .collect()
    }
}

/// SHA-256 of a job's identity ([`JobSpec::identity_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobIdentity(pub [u8; 32]);

impl std::fmt::Display for JobIdentity {
    /// The first 12 hex digits: enough to tell jobs apart in a message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
