//! Whose fault a failure is. A sample is *bad* only when the sample itself is at fault (its object is
//! missing, its bytes do not decode, it is too large, its record is malformed); anything else is a
//! fault of the environment (store, network, coordinator, local disk, device), and the shard is handed
//! back to be retried rather than recorded with made-up bad samples. The types decide, never the text.

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
    #[error(
        "object {url} has {got} bytes but the dataset listing said {listed} (changed since listing)"
    )]
    SizeChanged { url: String, got: u64, listed: u64 },
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

/// Why a leased shard ends without a submitted result.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The shard is handed back with the reason and counts as a failed attempt.
    #[error(transparent)]
    Environment(#[from] EnvironmentFault),
    /// The worker is shutting down: the shard is handed back cleanly, not counted as a failure.
    #[error("worker draining")]
    Draining,
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
