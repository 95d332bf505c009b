//! Whose fault a failure is. A sample is *bad* only when the sample itself is at fault (its object is
//! missing, its bytes do not decode, it is too large, its record is malformed); anything else is a
//! fault of the environment (store, network, coordinator, local disk, device), and the shard is handed
//! back to be retried rather than recorded with made-up bad samples. The types decide, never the text.

use tresnet_common::job::{JobSpec, Precision};
use tresnet_common::protocol::convert::ConvertError;
use tresnet_common::storage::StorageError;

use crate::preprocess::PreprocessError;

/// The sample itself cannot be evaluated: it is recorded as a bad sample with this reason.
#[derive(Debug, thiserror::Error)]
pub enum SampleFault {
    #[error(transparent)]
    Object(Box<StorageError>),
    #[error(transparent)]
    Image(PreprocessError),
    #[error("cifar record has {got} bytes, expected {expected}")]
    CifarRecord { got: usize, expected: usize },
    #[error("decoded sample has {got} bytes, expected {expected} (3 x {side} x {side})")]
    DecodedSize {
        got: usize,
        expected: usize,
        side: u32,
    },
    #[error(
        "object {url} has {got} bytes but the dataset listing said {listed} (changed since listing)"
    )]
    SizeChanged { url: String, got: u64, listed: u64 },
    #[error(
        "file {url} was modified at {modified} (Unix ms), after the dataset was listed at {listed} \
         (changed since listing)"
    )]
    ModifiedSinceListing {
        url: String,
        modified: i64,
        listed: u64,
    },
}

/// Something other than the sample failed; its samples must not be counted, the shard is retried.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentFault {
    #[error("fetching {url} failed after {attempts} attempts")]
    Store {
        url: String,
        attempts: u32,
        #[source]
        source: Box<StorageError>,
    },
    #[error("the image decoder cannot run")]
    Decoder(#[source] PreprocessError),
    #[cfg(feature = "torch")]
    #[error("executor failed: {0}")]
    Executor(crate::dispatch::DispatchError),
    #[error("coordinator: {0}")]
    Coordinator(String),
    #[error("malformed lease")]
    Lease(#[source] ConvertError),
    #[error("worker task failed: {0}")]
    Task(String),
}

/// A failure of one step that can be either party's.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error(transparent)]
    Sample(#[from] SampleFault),
    #[error(transparent)]
    Environment(#[from] EnvironmentFault),
}

impl From<PreprocessError> for Fault {
    fn from(e: PreprocessError) -> Self {
        match e {
            // The decoder or the job's settings failed, not this image: every image would fail alike.
            PreprocessError::DecoderInit(_) | PreprocessError::Config(_) => {
                EnvironmentFault::Decoder(e).into()
            }
            _ => SampleFault::Image(e).into(),
        }
    }
}

/// The model, not the data, is at fault: it produced non-finite logits (NaN or inf) for more than half
/// of the samples of one shard that it ran on. One such sample is a bad sample with its reason (an
/// fp16 overflow on one odd image); a majority of a shard means the weights or the precision are
/// wrong, so the worker hands the shard back and refuses the job, and the run fails naming this
/// instead of reporting an accuracy over the few samples left.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "model {model} at precision {precision} produced non-finite logits (NaN or inf) for {non_finite} \
     of the {evaluated} samples it ran on in shard {shard}: {hint}"
)]
pub struct ModelFault {
    pub model: String,
    pub precision: Precision,
    pub shard: u64,
    pub non_finite: u64,
    pub evaluated: u64,
    pub hint: &'static str,
}

/// Samples of one shard the model ran on, and how many of them gave non-finite logits.
#[derive(Debug, Default, Clone, Copy)]
pub struct ModelTally {
    pub evaluated: u64,
    pub non_finite: u64,
}

impl ModelTally {
    /// The [`ModelFault`] of a shard whose tally this is: more than half of its evaluated samples
    /// non-finite.
    pub fn fault(&self, job: &JobSpec, shard: u64) -> Option<ModelFault> {
        (self.non_finite * 2 > self.evaluated).then(|| ModelFault {
            model: job.model.model.clone(),
            precision: job.model.precision,
            shard,
            non_finite: self.non_finite,
            evaluated: self.evaluated,
            hint: match job.model.precision {
                Precision::Fp16 => {
                    "fp16 overflows (its largest value is 65504) somewhere in this network; \
                     try --precision bf16 or fp32"
                }
                Precision::Fp32 | Precision::Bf16 => {
                    "the weights are likely damaged (values so large that the forward pass \
                     overflows), or the input normalisation (--mean/--std) is far off"
                }
            },
        })
    }
}

/// Why a leased shard ends without a submitted result.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The shard is handed back with the reason and counts as a failed attempt.
    #[error(transparent)]
    Environment(#[from] EnvironmentFault),
    /// The worker is shutting down: the shard is handed back cleanly, not counted as a failure.
    #[error("worker draining")]
    Draining,
    /// The model's logits are not finite for most of the shard: handed back, and the job refused.
    #[error(transparent)]
    Model(#[from] ModelFault),
}

pub use tresnet_common::error_text::error_chain as chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::ImageFormat;

    #[test]
    fn storage_faults_split_by_variant() {
        let missing = StorageError::NotFound {
            url: "s3://b/x.jpg".into(),
        };
        assert!(missing.is_sample_fault());
        for env in [
            StorageError::BucketNotFound {
                bucket: "b".into(),
                url: "s3://b/x".into(),
            },
            StorageError::AccessDenied {
                url: "s3://b/x".into(),
                detail: "AccessDenied".into(),
                credentials_hint: "AWS_ACCESS_KEY_ID",
            },
            StorageError::Unauthenticated {
                url: "s3://b/x".into(),
                detail: "no credentials".into(),
                credentials_hint: "AWS_ACCESS_KEY_ID",
            },
        ] {
            assert!(!env.is_sample_fault(), "{env}");
        }
    }

    #[test]
    fn undecodable_images_are_the_samples_fault_a_broken_decoder_is_not() {
        let corrupt = PreprocessError::Corrupt {
            format: ImageFormat::Jpeg,
            detail: "bad huffman".into(),
        };
        assert!(matches!(Fault::from(corrupt), Fault::Sample(_)));
        let init = PreprocessError::DecoderInit("out of memory".into());
        assert!(matches!(Fault::from(init), Fault::Environment(_)));
    }

    #[test]
    fn a_majority_of_non_finite_logits_is_the_models_fault() {
        let mut job = tresnet_common::job::example_job();
        let tally = |evaluated, non_finite| ModelTally {
            evaluated,
            non_finite,
        };
        assert!(tally(0, 0).fault(&job, 0).is_none());
        assert!(tally(4, 2).fault(&job, 0).is_none(), "half is not most");
        assert!(tally(4, 1).fault(&job, 0).is_none());
        let f = tally(4, 3).fault(&job, 7).unwrap().to_string();
        assert!(
            f.starts_with(
                "model tresnet_m at precision fp32 produced non-finite logits (NaN or inf) for 3 \
                 of the 4 samples it ran on in shard 7: the weights are likely damaged"
            ),
            "{f}"
        );
        job.model.precision = Precision::Fp16;
        let f = tally(1, 1).fault(&job, 0).unwrap().to_string();
        assert!(
            f.contains("fp16 overflows") && f.contains("--precision bf16 or fp32"),
            "{f}"
        );
    }

    #[test]
    fn chain_keeps_causes_once() {
        let e = EnvironmentFault::Store {
            url: "s3://b/x".into(),
            attempts: 2,
            source: Box::new(StorageError::NotFound {
                url: "s3://b/x".into(),
            }),
        };
        assert_eq!(
            chain(&e),
            "fetching s3://b/x failed after 2 attempts: object s3://b/x not found"
        );
    }
}
