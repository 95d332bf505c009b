//! Conversions between generated protocol messages and domain types, in one place.

use object_store::path::Path;

use super::pb;
use crate::dataset::decoded::DecodedPack;
use crate::dataset::{ClassSubset, Sample, SampleKey, SampleSource};
use crate::ids::JobId;
use crate::ids::SampleIndex;
use crate::job::{
    BatchingSpec, DataSpec, JobSpec, MemoryFormat, ModelSpec, OutputSpec, Precision, SaveLogits,
};
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

impl From<CropMode> for pb::CropMode {
    fn from(c: CropMode) -> Self {
        match c {
            CropMode::Center => pb::CropMode::Center,
            CropMode::Squish => pb::CropMode::Squish,
        }
    }
}

impl From<Precision> for pb::Precision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => pb::Precision::Fp32,
            Precision::Fp16 => pb::Precision::Fp16,
            Precision::Bf16 => pb::Precision::Bf16,
        }
    }
}

impl From<MemoryFormat> for pb::MemoryFormat {
    fn from(f: MemoryFormat) -> Self {
        match f {
            MemoryFormat::Auto => pb::MemoryFormat::Auto,
            MemoryFormat::Contiguous => pb::MemoryFormat::Contiguous,
            MemoryFormat::ChannelsLast => pb::MemoryFormat::ChannelsLast,
        }
    }
}

impl From<SaveLogits> for pb::SaveLogits {
    fn from(l: SaveLogits) -> Self {
        match l {
            SaveLogits::None => pb::SaveLogits::None,
            SaveLogits::Fp16 => pb::SaveLogits::Fp16,
            SaveLogits::Fp32 => pb::SaveLogits::Fp32,
        }
    }
}

/// An enum field's value, refusing unknown numbers and the unspecified 0.
fn known<E: TryFrom<i32>>(message: &'static str, field: &str, v: i32) -> Result<E, ConvertError> {
    E::try_from(v).map_err(|_| bad(message, format!("{field} {v} is not a known value")))
}

impl From<&PreprocessConfig> for pb::PreprocessSpec {
    fn from(p: &PreprocessConfig) -> Self {
        pb::PreprocessSpec {
            resolution: p.resolution,
            crop_pct: p.crop_pct,
            crop_mode: pb::CropMode::from(p.crop_mode).into(),
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
        let crop_mode = match known("PreprocessSpec", "crop_mode", p.crop_mode)? {
            pb::CropMode::Center => CropMode::Center,
            pb::CropMode::Squish => CropMode::Squish,
            pb::CropMode::Unspecified => {
                return Err(bad("PreprocessSpec", "crop_mode is unspecified"));
            }
        };
        let cfg = PreprocessConfig {
            resolution: p.resolution,
            crop_pct: p.crop_pct,
            crop_mode,
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
        let m = &j.model;
        pb::JobSpec {
            job_id: j.job_id.0.clone(),
            model: Some(pb::ModelSpec {
                model: m.model.clone(),
                weights: m.weights.clone(),
                weights_sha256: m.weights_sha256.clone(),
                precision: pb::Precision::from(m.precision).into(),
                fold_bn: m.fold_bn,
                leaky_slope: m.leaky_slope,
                num_classes: m.num_classes,
                synthetic: m.synthetic,
                measure_fold_bn: m.measure_fold_bn,
                memory_format: pb::MemoryFormat::from(m.memory_format).into(),
            }),
            data: Some(pb::DataSpec {
                data_url: j.data.data_url.clone(),
                format_json: serde_json::to_string(&j.data.format)
                    .expect("a dataset format always serialises"),
                dataset_fingerprint: j.data.dataset_fingerprint.clone(),
                dataset_samples: j.data.dataset_samples,
                listed_at_unix_ms: j.data.listed_at_unix_ms,
                class_subset: j
                    .data
                    .class_subset
                    .as_ref()
                    .map(|c| c.classes().to_vec())
                    .unwrap_or_default(),
                decoded_json: j
                    .data
                    .decoded
                    .as_ref()
                    .map(|d| serde_json::to_string(d).expect("a decoded pack always serialises"))
                    .unwrap_or_default(),
            }),
            preprocess: Some((&j.preprocess).into()),
            outputs: Some(pb::OutputSpec {
                top_k: j.outputs.top_k,
                save_logits: pb::SaveLogits::from(j.outputs.save_logits).into(),
                counts_only: j.outputs.counts_only,
            }),
            batching: Some(pb::BatchingSpec {
                batch_size: j.batching.batch_size,
                shard_size: j.batching.shard_size,
            }),
            // An evaluation; `tresnet-coordinator bench` builds its bench jobs itself.
            bench: None,
        }
    }
}

/// The job as a worker receives it: the same [`JobSpec`] the coordinator planned, checked for what a
/// worker relies on (a batch size, a top-k the model can produce, no logits in a counts-only job).
impl TryFrom<pb::JobSpec> for JobSpec {
    type Error = ConvertError;
    fn try_from(j: pb::JobSpec) -> Result<Self, ConvertError> {
        const M: &str = "JobSpec";
        let part = |what: &str| bad(M, format!("no {what} part"));
        let m = j.model.ok_or_else(|| part("model"))?;
        let d = j.data.ok_or_else(|| part("data"))?;
        let o = j.outputs.ok_or_else(|| part("outputs"))?;
        let b = j.batching.ok_or_else(|| part("batching"))?;
        let preprocess = j
            .preprocess
            .ok_or_else(|| bad(M, "no preprocess spec"))?
            .try_into()?;
        let precision = match known(M, "precision", m.precision)? {
            pb::Precision::Fp32 => Precision::Fp32,
            pb::Precision::Fp16 => Precision::Fp16,
            pb::Precision::Bf16 => Precision::Bf16,
            pb::Precision::Unspecified => return Err(bad(M, "precision is unspecified")),
        };
        let memory_format = match known(M, "memory_format", m.memory_format)? {
            pb::MemoryFormat::Auto => MemoryFormat::Auto,
            pb::MemoryFormat::Contiguous => MemoryFormat::Contiguous,
            pb::MemoryFormat::ChannelsLast => MemoryFormat::ChannelsLast,
        };
        let save_logits = match known(M, "save_logits", o.save_logits)? {
            pb::SaveLogits::None => SaveLogits::None,
            pb::SaveLogits::Fp16 => SaveLogits::Fp16,
            pb::SaveLogits::Fp32 => SaveLogits::Fp32,
            pb::SaveLogits::Unspecified => return Err(bad(M, "save_logits is unspecified")),
        };
        if b.batch_size == 0 {
            return Err(bad(M, "batch_size is 0"));
        }
        // An empty list is no subset; a given one must name distinct classes the model has, in
        // ascending order (positions are indices into it: a reordered list would relabel silently).
        let class_subset = match d.class_subset.is_empty() {
            true => None,
            false => {
                if d.class_subset.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(bad(M, "class_subset is not strictly ascending"));
                }
                let subset = ClassSubset::try_from(d.class_subset)
                    .map_err(|e| bad(M, format!("class_subset: {e}")))?;
                subset
                    .check_within(m.num_classes)
                    .map_err(|e| bad(M, e.to_string()))?;
                Some(subset)
            }
        };
        let scored = class_subset
            .as_ref()
            .map_or(m.num_classes, |s| s.len() as u32);
        if o.top_k == 0 || o.top_k > scored.max(1) {
            return Err(bad(M, format!("top_k {} with {scored} classes", o.top_k)));
        }
        if o.counts_only && save_logits != SaveLogits::None {
            return Err(bad(
                M,
                "counts_only jobs ship no per-sample data, so save_logits must be none",
            ));
        }
        let format = serde_json::from_str(&d.format_json)
            .map_err(|e| bad(M, format!("format_json {:?}: {e}", d.format_json)))?;
        let decoded: Option<DecodedPack> = match d.decoded_json.is_empty() {
            true => None,
            false => Some(
                serde_json::from_str(&d.decoded_json)
                    .map_err(|e| bad(M, format!("decoded_json {:?}: {e}", d.decoded_json)))?,
            ),
        };
        if let Some(pack) = &decoded {
            pack.check_job(&d.data_url, &preprocess)
                .map_err(|e| bad(M, e.to_string()))?;
        }
        Ok(JobSpec {
            job_id: JobId(j.job_id),
            model: ModelSpec {
                model: m.model,
                weights: m.weights,
                weights_sha256: m.weights_sha256,
                precision,
                fold_bn: m.fold_bn,
                leaky_slope: m.leaky_slope,
                num_classes: m.num_classes,
                synthetic: m.synthetic,
                measure_fold_bn: m.measure_fold_bn,
                memory_format,
            },
            data: DataSpec {
                data_url: d.data_url,
                format,
                dataset_fingerprint: d.dataset_fingerprint,
                dataset_samples: d.dataset_samples,
                listed_at_unix_ms: d.listed_at_unix_ms,
                class_subset,
                decoded,
            },
            preprocess,
            outputs: OutputSpec {
                top_k: o.top_k,
                save_logits,
                counts_only: o.counts_only,
            },
            batching: BatchingSpec {
                batch_size: b.batch_size,
                shard_size: b.shard_size,
            },
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
            crop_mode: 7,
            ..spec
        };
        assert!(PreprocessConfig::try_from(broken).is_err());
    }

    #[test]
    fn job_specs_round_trip_and_validate() {
        let mut job = crate::job::example_job();
        job.model.precision = Precision::Bf16;
        job.model.leaky_slope = Some(1e-6);
        job.outputs.save_logits = SaveLogits::Fp16;
        job.preprocess.dct_scaling = true;
        job.preprocess.max_pixels = 1000;
        job.data.listed_at_unix_ms = Some(1_700_000_000_000);
        let wire = pb::JobSpec::from(&job);
        assert_eq!(JobSpec::try_from(wire.clone()), Ok(job.clone()));
        let mut broken = wire.clone();
        broken.model.as_mut().unwrap().precision = 0;
        let e = JobSpec::try_from(broken).unwrap_err().to_string();
        assert!(e.contains("precision"), "{e}");
        let mut broken = wire.clone();
        broken.outputs.as_mut().unwrap().counts_only = true;
        let e = JobSpec::try_from(broken).unwrap_err().to_string();
        assert!(e.contains("counts_only"), "{e}");
        let mut broken = wire.clone();
        broken.batching = None;
        let e = JobSpec::try_from(broken).unwrap_err().to_string();
        assert!(e.contains("batching"), "{e}");

        // A class subset travels as its ascending list; top_k is bounded by its size.
        let mut subset = job.clone();
        subset.model.num_classes = 10;
        subset.data.class_subset = Some(crate::dataset::ClassSubset::try_from(vec![9, 3]).unwrap());
        let wire = pb::JobSpec::from(&subset);
        assert_eq!(wire.data.as_ref().unwrap().class_subset, [3, 9]);
        assert_eq!(JobSpec::try_from(wire.clone()), Ok(subset));
        for (list, needle) in [
            (vec![9, 3], "not strictly ascending"),
            (vec![3, 3], "not strictly ascending"),
            (vec![3, 10], "beyond the 10 classes"),
        ] {
            let mut broken = wire.clone();
            broken.data.as_mut().unwrap().class_subset = list;
            let e = JobSpec::try_from(broken).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut broken = wire;
        broken.data.as_mut().unwrap().class_subset = vec![3];
        let e = JobSpec::try_from(broken).unwrap_err().to_string();
        assert!(e.contains("top_k 2 with 1 classes"), "{e}");
    }
}
