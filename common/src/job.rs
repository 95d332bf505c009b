//! The job spec: everything that determines a run's numbers, as one typed value built from its parts
//! (model, data, preprocessing, outputs, batching). Stored as `job.json` in the run directory (resume
//! refuses a different spec), sent to workers at registration, and the source of both the job identity
//! (what a journal record is sealed with) and the worker's model-reload key, so a new field is covered
//! by both without anyone listing it.
//!
//! The parts that a user sets as they are (preprocessing, outputs, batching) are also the `run` flags
//! (`#[command(flatten)]`) and the sweep `[run]` keys (serde); the model and data parts are resolved
//! from the flags by planning (the checkpoint is hashed, the dataset listed).

use serde::{Deserialize, Serialize};

use crate::dataset::decoded::DecodedPack;
use crate::dataset::{ClassSubset, DatasetFormat};
use crate::ids::JobId;
use crate::preprocess::PreprocessConfig;

/// Numeric precision the model runs in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// Needs CUDA.
    Fp16,
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is none of a closed set's choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected {expected})")]
pub struct UnknownChoice {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl std::str::FromStr for Precision {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            "bf16" => Ok(Self::Bf16),
            other => Err(UnknownChoice {
                what: "precision",
                value: other.to_string(),
                expected: "fp32, fp16 or bf16",
            }),
        }
    }
}

/// How conv weights and activations are laid out in memory on the workers. `Auto` (the default) is
/// measured: each worker times the layouts on its device at model load and keeps the fastest
/// (`tresnet_worker::tuning`); the others force one layout and skip the measurement.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// Measured at model load on each device: the fastest of contiguous and channels-last.
    #[default]
    Auto,
    /// NCHW strides.
    Contiguous,
    /// NHWC strides (what cuDNN and oneDNN run fastest on the machines measured so far).
    ChannelsLast,
}

impl MemoryFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Contiguous => "contiguous",
            Self::ChannelsLast => "channels-last",
        }
    }

    /// The layouts a worker chooses among: both when measured, else the forced one.
    pub fn candidates(self) -> &'static [bool] {
        match self {
            Self::Auto => &[false, true],
            Self::Contiguous => &[false],
            Self::ChannelsLast => &[true],
        }
    }
}

impl std::fmt::Display for MemoryFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Whether and how full logits travel back with each sample.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SaveLogits {
    #[default]
    None,
    Fp16,
    Fp32,
}

impl std::str::FromStr for SaveLogits {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "none" | "" => Ok(Self::None),
            "fp16" => Ok(Self::Fp16),
            "fp32" => Ok(Self::Fp32),
            other => Err(UnknownChoice {
                what: "logits mode",
                value: other.to_string(),
                expected: "none, fp16 or fp32",
            }),
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

/// The network the workers run. A worker keeps its loaded model for the next job when this part is
/// equal (its reload key, `tresnet_worker::executor::ModelKey`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// timm model name (`tresnet_m`, ...).
    pub model: String,
    /// Checkpoint path or URL as readable by the workers.
    pub weights: String,
    /// SHA-256 of the checkpoint bytes; empty in synthetic mode.
    pub weights_sha256: String,
    pub precision: Precision,
    /// Fold BatchNorm into the convolutions; with `measure_fold_bn`, only the preferred candidate.
    pub fold_bn: bool,
    pub leaky_slope: Option<f64>,
    /// Model outputs (the classifier's width).
    pub num_classes: u32,
    /// Benchmark mode: workers produce logits without a network. Never usable for accuracy.
    pub synthetic: bool,
    /// Neither `--fold-bn` nor `--no-fold-bn` was given: each worker times BN folded and kept at
    /// model load and keeps the faster (every candidate is within the parity bound). Left out of
    /// job.json when false, and `memory_format` when `auto`, so that the identity of a job written
    /// before they existed is unchanged (docs/run-directory.md, "Measured model layout").
    #[serde(default, skip_serializing_if = "is_default")]
    pub measure_fold_bn: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory_format: MemoryFormat,
}

/// The dataset, as the listing found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Dataset location; sample paths are absolute within its store.
    pub data_url: String,
    pub format: DatasetFormat,
    /// DatasetIndex fingerprint (keys, labels, sizes).
    pub dataset_fingerprint: String,
    pub dataset_samples: u64,
    /// When this run's listing began (Unix ms): workers treat a local file modified later as a bad
    /// sample ("changed since listing"), as they do an object whose size differs from the listing.
    /// Sent to workers only, never stored (so never in the identity): each run, resumes included,
    /// lists anew and checks against its own listing.
    #[serde(skip)]
    pub listed_at_unix_ms: Option<u64>,
    /// The model classes the job is scored on (`--class-subset`, or implied by ImageNet-A/-R): workers
    /// keep only these logits before top-k, loss and confidence, and labels and predictions are the
    /// subset's positions. Absent from job.json when unset, so older runs keep their identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_subset: Option<ClassSubset>,
    /// The dataset is a decoded pack: its pixels came from this source dataset through these settings,
    /// and workers use them as they are (no decode). In the identity; absent from job.json otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<DecodedPack>,
}

/// What comes back per sample. Also the `run` flags and sweep `[run]` keys of the same names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct OutputSpec {
    /// Predictions kept per sample.
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    pub top_k: u32,
    /// Ship full logits back: none, fp16 or fp32.
    #[arg(long, value_enum, default_value_t = SaveLogits::None)]
    pub save_logits: SaveLogits,
    /// Workers reduce correct@1/@5, the confusion matrix, loss and calibration sums on their devices
    /// (all-reduced across a worker's GPUs) and ship only those per shard: every metric and per-class
    /// report, but no predictions.parquet (so no `compare`) and no logits.
    #[arg(long, conflicts_with = "save_logits")]
    pub counts_only: bool,
}

/// `run --top-k` default: the report's top-5 needs five.
pub const DEFAULT_TOP_K: u32 = 5;

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            top_k: DEFAULT_TOP_K,
            save_logits: SaveLogits::None,
            counts_only: false,
        }
    }
}

impl OutputSpec {
    /// The k of the report's top-5 for a model of `num_classes` outputs (see [`crate::scoring::top5_k`]).
    pub fn k5(&self, num_classes: u32) -> usize {
        crate::scoring::top5_k(self.top_k, num_classes)
    }
}

/// How the work is cut up. Also the `run` flags and sweep `[run]` keys of the same names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct BatchingSpec {
    /// Images per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: u32,
    /// Samples per shard (the unit of leasing and retry), as resolved for this dataset: the
    /// coordinator's `--shard-size` (a number or `auto`) is turned into it when the job is planned.
    #[arg(skip = DEFAULT_SHARD_SIZE)]
    pub shard_size: u64,
}

/// `run --batch-size` default: fits a 448 px TResNet-L in fp32 on a 16 GB GPU.
pub const DEFAULT_BATCH_SIZE: u32 = 32;
/// `run --shard-size` default: a few seconds of work per lease on one GPU, so a lost worker costs
/// little and leases stay few.
pub const DEFAULT_SHARD_SIZE: u64 = 256;

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            shard_size: DEFAULT_SHARD_SIZE,
        }
    }
}

/// The whole job. In `job.json` (and summary.json) the parts are flattened into one object, with
/// `preprocess` nested, as before the parts existed, so older run directories still resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: JobId,
    #[serde(flatten)]
    pub model: ModelSpec,
    #[serde(flatten)]
    pub data: DataSpec,
    pub preprocess: PreprocessConfig,
    #[serde(flatten)]
    pub outputs: OutputSpec,
    #[serde(flatten)]
    pub batching: BatchingSpec,
}

/// The fields of a job spec (keys of its `job.json`) that cannot change any number, so a run may
/// resume with other values: the job id (derived), the checkpoint's path (its SHA-256 is in the
/// identity), batch size and shard size. Every other field is part of the identity. This is the one
/// place a field opts out; `tests::every_result_changing_field_is_in_the_identity` checks it.
pub const NOT_IN_IDENTITY: &[&str] = &["job_id", "weights", "batch_size", "shard_size"];

impl JobSpec {
    /// How many classes the job is scored on: the class subset's size, else the model's outputs.
    pub fn scored_classes(&self) -> u32 {
        self.data
            .class_subset
            .as_ref()
            .map_or(self.model.num_classes, |s| s.len() as u32)
    }

    /// Fields whose change makes old results invalid, with their values, for resume checks: every
    /// field of the spec (nested ones as `preprocess.resolution`) but those in [`NOT_IN_IDENTITY`],
    /// sorted by name, values as JSON.
    pub fn identity(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("a job spec always serialises to JSON");
        let mut fields = Vec::new();
        leaves("", &value, &mut fields);
        fields.retain(|(name, _)| !NOT_IN_IDENTITY.contains(&name.as_str()));
        fields.sort();
        fields
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
        let theirs: std::collections::BTreeMap<String, String> =
            other.identity().into_iter().collect();
        let mine: std::collections::BTreeMap<String, String> =
            self.identity().into_iter().collect();
        let names: std::collections::BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
        let missing = String::from("(none)");
        names
            .into_iter()
            .filter_map(|name| {
                let (a, b) = (
                    mine.get(name).unwrap_or(&missing),
                    theirs.get(name).unwrap_or(&missing),
                );
                (a != b).then(|| format!("{name}: {a} -> {b}"))
            })
            .collect()
    }
}

/// The leaves of a JSON value with their dotted paths; strings unquoted, other values as JSON.
fn leaves(path: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(&p, child, out);
            }
        }
        serde_json::Value::String(s) => out.push((path.to_string(), s.clone())),
        other => out.push((path.to_string(), other.to_string())),
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

/// A spec with every field set, for tests of the code that reads or stores one.
pub fn example_job() -> JobSpec {
    JobSpec {
        job_id: JobId("j".into()),
        model: ModelSpec {
            model: "tresnet_m".into(),
            weights: "w.pth".into(),
            weights_sha256: "ab".into(),
            precision: Precision::Fp32,
            fold_bn: true,
            leaky_slope: None,
            num_classes: 2,
            synthetic: false,
            measure_fold_bn: true,
            memory_format: MemoryFormat::ChannelsLast,
        },
        data: DataSpec {
            data_url: "file:///d".into(),
            format: DatasetFormat::ImageFolder,
            dataset_fingerprint: "f".into(),
            dataset_samples: 3,
            listed_at_unix_ms: None,
            class_subset: None,
            decoded: None,
        },
        preprocess: PreprocessConfig::default(),
        outputs: OutputSpec {
            top_k: 2,
            save_logits: SaveLogits::None,
            counts_only: false,
        },
        batching: BatchingSpec {
            batch_size: 2,
            shard_size: 2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::decoded::DecodedPixels;
    use serde_json::Value;

    /// Every way to change one JSON leaf that still deserialises: other numbers, the other booleans,
    /// other strings (enum variants included), `null` and a number for options.
    fn perturbations(v: &Value) -> Vec<Value> {
        match v {
            Value::Bool(b) => vec![Value::Bool(!b)],
            Value::Number(n) => {
                let mut out = vec![];
                if let Some(u) = n.as_u64() {
                    out.push(Value::from(u + 1));
                    out.push(Value::from(u.saturating_sub(1)));
                }
                if let Some(f) = n.as_f64() {
                    out.push(Value::from(f * 0.5 + 0.125));
                }
                out.push(Value::Null);
                out
            }
            Value::String(s) => [
                "fp16",
                "bf16",
                "fp32",
                "none",
                "squish",
                "center",
                "tar",
                "contiguous",
            ]
            .iter()
            .map(|o| Value::from(*o))
            .chain([Value::from(format!("{s}x"))])
            .collect(),
            Value::Null => vec![Value::from(0.5), Value::from(1), Value::from("x")],
            Value::Array(items) => {
                let mut changed = items.clone();
                if let Some(first) = changed.first_mut() {
                    *first = Value::from(first.as_f64().unwrap_or(0.0) + 0.25);
                }
                let mut bumped = items.clone();
                if let Some(first) = bumped.first_mut().filter(|v| v.is_u64()) {
                    *first = Value::from(first.as_u64().unwrap_or(0) + 1);
                }
                vec![Value::Array(changed), Value::Array(bumped)]
            }
            Value::Object(_) => vec![],
        }
    }

    /// Sets the leaf at `path` in `v`.
    fn set(v: &mut Value, path: &[&str], to: Value) {
        match path {
            [last] => v[*last] = to,
            [first, rest @ ..] => set(&mut v[*first], rest, to),
            [] => unreachable!(),
        }
    }

    /// Perturbs every field of a spec through its JSON form: the identity must change unless the
    /// field is one of the few listed in [`NOT_IN_IDENTITY`] (and this list must be changed together
    /// with it). A field whose value does not reach the digest by any other means fails here.
    #[test]
    fn every_result_changing_field_is_in_the_identity() {
        assert_eq!(
            NOT_IN_IDENTITY,
            ["job_id", "weights", "batch_size", "shard_size"],
            "a field left the identity: is it really unable to change any result?"
        );
        let mut job = example_job();
        job.model.leaky_slope = Some(0.01);
        job.data.format = DatasetFormat::ImageNet {
            ground_truth: Some("gt.txt".into()),
            synset_map: None,
        };
        job.data.class_subset = Some(ClassSubset::try_from(vec![0, 5]).unwrap());
        job.data.decoded = Some(DecodedPack {
            source_fingerprint: "s".into(),
            source_format: DatasetFormat::ImageFolder,
            pixels: DecodedPixels::of(&job.preprocess),
        });
        let base = serde_json::to_value(&job).unwrap();
        let mut all = Vec::new();
        leaves("", &base, &mut all);
        assert!(all.len() >= 20, "{all:?}");
        let mut checked = 0;
        for (path, _) in &all {
            let parts: Vec<&str> = path.split('.').collect();
            let leaf = parts.iter().fold(&base, |v, p| &v[*p]);
            let mut changed_one = false;
            for to in perturbations(leaf) {
                let mut v = base.clone();
                set(&mut v, &parts, to.clone());
                let Ok(other) = serde_json::from_value::<JobSpec>(v) else {
                    continue;
                };
                if other == job {
                    continue;
                }
                changed_one = true;
                let in_identity = !NOT_IN_IDENTITY.contains(&path.as_str());
                assert_eq!(
                    other.identity_digest() != job.identity_digest(),
                    in_identity,
                    "{path} = {to}: in the identity {}",
                    !in_identity
                );
                assert_eq!(job.differences(&other).is_empty(), !in_identity, "{path}");
            }
            assert!(changed_one, "no perturbation of {path} deserialised");
            checked += 1;
        }
        assert_eq!(checked, all.len());
    }

    #[test]
    fn job_json_keeps_its_flat_layout() {
        let v = serde_json::to_value(example_job()).unwrap();
        for key in [
            "job_id",
            "model",
            "weights",
            "weights_sha256",
            "data_url",
            "format",
            "dataset_fingerprint",
            "dataset_samples",
            "num_classes",
            "top_k",
            "save_logits",
            "precision",
            "fold_bn",
            "batch_size",
            "shard_size",
            "leaky_slope",
            "synthetic",
            "counts_only",
        ] {
            assert!(v.get(key).is_some(), "job.json lost {key}: {v}");
        }
        assert_eq!(v["precision"], "fp32");
        assert_eq!(v["preprocess"]["resolution"], 224);
        let back: JobSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, example_job());
    }

    #[test]
    fn differences_name_the_field() {
        let a = example_job();
        let mut b = a.clone();
        b.outputs.top_k = 1;
        b.preprocess.dct_scaling = true;
        b.batching.batch_size = 64;
        assert_eq!(
            a.differences(&b),
            ["preprocess.dct_scaling: false -> true", "top_k: 2 -> 1"]
        );
    }
}
