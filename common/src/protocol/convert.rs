//! Conversions between generated protocol messages and domain types, in one place.

use object_store::path::Path;

use super::pb;
use crate::dataset::{Sample, SampleKey, SampleSource};
use crate::ids::SampleIndex;
use crate::job::{JobSpec, SaveLogits};
use crate::preprocess::{CropMode, PreprocessConfig};
use crate::software::WorkerSoftware;

/// A message that parses but makes no sense; names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed {message}: {reason}")]
pub struct ConvertError {
    pub message: &'static str,
    pub reason: String,
}

fn bad(message: &'static str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        message,
        reason: reason.into(),
    }
}

impl From<&PreprocessConfig> for pb::PreprocessSpec {
    fn from(p: &PreprocessConfig) -> Self {
        pb::PreprocessSpec {
            resolution: p.resolution,
            crop_pct: p.crop_pct,
            crop_mode: match p.crop_mode {
                CropMode::Center => "center".into(),
                CropMode::Squish => "squish".into(),
            },
            mean: p.mean.to_vec(),
            std: p.std.to_vec(),
            max_pixels: p.max_pixels,
            dct_scaling: p.dct_scaling,
        }
    }
}

impl TryFrom<pb::PreprocessSpec> for PreprocessConfig {
    type Error = ConvertError;
    fn try_from(p: pb::PreprocessSpec) -> Result<Self, ConvertError> {
        let three = |v: Vec<f32>, field: &str| -> Result<[f32; 3], ConvertError> {
            v.try_into().map_err(|v: Vec<f32>| {
                bad(
                    "PreprocessSpec",
                    format!("{field} has {} values, expected 3", v.len()),
                )
            })
        };
        let cfg = PreprocessConfig {
            resolution: p.resolution,
            crop_pct: p.crop_pct,
            crop_mode: p
                .crop_mode
                .parse()
                .map_err(|e: String| bad("PreprocessSpec", e))?,
            mean: three(p.mean, "mean")?,
            std: three(p.std, "std")?,
            max_pixels: p.max_pixels,
            dct_scaling: p.dct_scaling,
        };
        cfg.validate()
            .map_err(|e| bad("PreprocessSpec", e.to_string()))?;
        Ok(cfg)
    }
}

impl From<&JobSpec> for pb::JobSpec {
    fn from(j: &JobSpec) -> Self {
        pb::JobSpec {
            job_id: j.job_id.0.clone(),
            model: j.model.clone(),
            weights: j.weights.clone(),
            weights_sha256: j.weights_sha256.clone(),
            data_url: j.data_url.clone(),
            preprocess: Some((&j.preprocess).into()),
            top_k: j.top_k,
            save_logits: j.save_logits.as_str().into(),
            precision: j.precision.clone(),
            fold_bn: j.fold_bn,
            batch_size: j.batch_size,
            num_classes: j.num_classes,
            synthetic: j.synthetic,
            leaky_slope: j.leaky_slope,
            counts_only: j.counts_only,
            dataset_fingerprint: j.dataset_fingerprint.clone(),
        }
    }
}

/// What a worker needs of the job, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerJob {
    pub job_id: String,
    pub model: String,
    pub weights: String,
    pub weights_sha256: String,
    pub data_url: String,
    pub preprocess: PreprocessConfig,
    pub top_k: u32,
    pub save_logits: SaveLogits,
    pub precision: String,
    pub fold_bn: bool,
    pub batch_size: u32,
    pub num_classes: u32,
    pub synthetic: bool,
    pub leaky_slope: Option<f64>,
    pub counts_only: bool,
    pub dataset_fingerprint: String,
}

impl TryFrom<pb::JobSpec> for WorkerJob {
    type Error = ConvertError;
    fn try_from(j: pb::JobSpec) -> Result<Self, ConvertError> {
        let preprocess = j
            .preprocess
            .ok_or_else(|| bad("JobSpec", "no preprocess spec"))?
            .try_into()?;
        if j.batch_size == 0 {
            return Err(bad("JobSpec", "batch_size is 0"));
        }
        if j.top_k == 0 || j.top_k > j.num_classes.max(1) {
            return Err(bad(
                "JobSpec",
                format!("top_k {} with {} classes", j.top_k, j.num_classes),
            ));
        }
        if j.counts_only && j.save_logits != "none" && !j.save_logits.is_empty() {
            return Err(bad(
                "JobSpec",
                "counts_only jobs ship no per-sample data, so save_logits must be none",
            ));
        }
        Ok(WorkerJob {
            job_id: j.job_id,
            model: j.model,
            weights: j.weights,
            weights_sha256: j.weights_sha256,
            data_url: j.data_url,
            preprocess,
            top_k: j.top_k,
            save_logits: j
                .save_logits
                .parse()
                .map_err(|e: String| bad("JobSpec", e))?,
            precision: j.precision,
            fold_bn: j.fold_bn,
            batch_size: j.batch_size,
            num_classes: j.num_classes,
            synthetic: j.synthetic,
            leaky_slope: j.leaky_slope,
            counts_only: j.counts_only,
            dataset_fingerprint: j.dataset_fingerprint,
        })
    }
}

impl From<&WorkerSoftware> for pb::WorkerSoftware {
    fn from(s: &WorkerSoftware) -> Self {
        pb::WorkerSoftware {
            libtorch: s.libtorch.clone().unwrap_or_default(),
            cuda_available: s.cuda_available,
            cudnn_available: s.cudnn_available,
            device_names: s.device_names.clone(),
        }
    }
}

impl From<pb::WorkerSoftware> for WorkerSoftware {
    fn from(s: pb::WorkerSoftware) -> Self {
        WorkerSoftware {
            libtorch: (!s.libtorch.is_empty()).then_some(s.libtorch),
            cuda_available: s.cuda_available,
            cudnn_available: s.cudnn_available,
            device_names: s.device_names,
        }
    }
}

pub fn sample_to_pb(index: SampleIndex, s: &Sample) -> pb::SampleRef {
    use pb::sample_ref::Source;
    let source = match &s.source {
        SampleSource::Object { size, .. } => Source::Whole(pb::Whole { size: *size }),
        SampleSource::Range { offset, len, .. } => Source::Range(pb::ByteRange {
            offset: *offset,
            length: *len,
        }),
        SampleSource::CifarRecord { offset, .. } => {
            Source::Cifar(pb::CifarRecord { offset: *offset })
        }
    };
    pb::SampleRef {
        index: index.0,
        key: s.key.0.clone(),
        label: s.label,
        path: s.source.path().to_string(),
        source: Some(source),
    }
}

pub fn sample_from_pb(r: pb::SampleRef) -> Result<(SampleIndex, Sample), ConvertError> {
    use pb::sample_ref::Source;
    let path =
        Path::parse(&r.path).map_err(|e| bad("SampleRef", format!("path {:?}: {e}", r.path)))?;
    // `Path::parse` drops leading and trailing `/`; the coordinator never sends them, so a path that
    // does not come back as sent is refused rather than quietly read as another object's name.
    if path.as_ref() != r.path {
        return Err(bad(
            "SampleRef",
            format!(
                "path {:?} is not canonical (leading or trailing '/')",
                r.path
            ),
        ));
    }
    let source = match r.source.ok_or_else(|| bad("SampleRef", "no source"))? {
        Source::Whole(w) => SampleSource::Object { path, size: w.size },
        Source::Range(b) => {
            b.offset
                .checked_add(b.length)
                .ok_or_else(|| bad("SampleRef", "byte range overflows"))?;
            SampleSource::Range {
                path,
                offset: b.offset,
                len: b.length,
            }
        }
        Source::Cifar(c) => SampleSource::CifarRecord {
            path,
            offset: c.offset,
        },
    };
    Ok((
        SampleIndex(r.index),
        Sample {
            key: SampleKey(r.key),
            label: r.label,
            source,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip() {
        let samples = [
            Sample {
                key: "n01/a.JPEG".into(),
                label: 3,
                source: SampleSource::Object {
                    path: Path::from("val/n01/a.JPEG"),
                    size: Some(10),
                },
            },
            Sample {
                key: "shard-0.tar:x".into(),
                label: 0,
                source: SampleSource::Range {
                    path: Path::from("shards/shard-0.tar"),
                    offset: 512,
                    len: 99,
                },
            },
            Sample {
                key: "test_batch.bin:00002".into(),
                label: 9,
                source: SampleSource::CifarRecord {
                    path: Path::from("c/test_batch.bin"),
                    offset: 3073 * 2 + 1,
                },
            },
        ];
        for (i, s) in samples.iter().enumerate() {
            let back = sample_from_pb(sample_to_pb(SampleIndex(i as u64), s)).unwrap();
            assert_eq!(back, (SampleIndex(i as u64), s.clone()));
        }
    }

    /// Found by the `protocol` fuzz target (fuzz/regressions/protocol/): `/a/b` was accepted as `a/b`.
    #[test]
    fn non_canonical_sample_paths_are_refused() {
        for path in ["/val/a.JPEG", "val/a.JPEG/", "/"] {
            let r = pb::SampleRef {
                index: 0,
                key: "a".into(),
                label: 0,
                path: path.into(),
                source: Some(pb::sample_ref::Source::Whole(pb::Whole { size: None })),
            };
            let err = sample_from_pb(r).unwrap_err().to_string();
            assert!(
                err.starts_with("malformed SampleRef: path"),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn preprocess_round_trips_and_validates() {
        let p = PreprocessConfig::tresnet(448);
        let spec: pb::PreprocessSpec = (&p).into();
        assert_eq!(PreprocessConfig::try_from(spec.clone()).unwrap(), p);
        let broken = pb::PreprocessSpec {
            mean: vec![0.0],
            ..spec.clone()
        };
        assert!(
            PreprocessConfig::try_from(broken)
                .unwrap_err()
                .to_string()
                .contains("mean")
        );
        let broken = pb::PreprocessSpec {
            crop_mode: "zoom".into(),
            ..spec
        };
        assert!(PreprocessConfig::try_from(broken).is_err());
    }
}
