//! Why a dataset could not be listed: each variant names the object (URL) and, for text metadata,
//! the line.
//!
//! These are dataset-level failures: the metadata that defines the sample list (a `.mat` file, a
//! ground-truth file, a manifest, a tar shard's structure, a CIFAR batch's length) is unreadable or
//! inconsistent, so no trustworthy sample list exists. Problems confined to one sample (an out-of-range
//! label in one CIFAR record, a tar sample without a `.cls`) are not errors but
//! [`super::BadSample`]s in the index, and problems found when fetching or decoding one sample are the
//! worker's `bad_samples`.

use super::mat::MatError;
use super::tar::TarError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no {what} found under {url}")]
    NotFound { url: String, what: String },
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url} line {line}: {reason}")]
    Line {
        url: String,
        line: u64,
        reason: String,
    },
    #[error("unreadable .mat file {url}")]
    Mat {
        url: String,
        #[source]
        source: MatError,
    },
    #[error("unreadable tar shard {url}")]
    Tar {
        url: String,
        #[source]
        source: TarError,
    },
    #[error("duplicate sample key {key:?} in the dataset at {url}")]
    DuplicateKey { url: String, key: String },
    #[error("sample {key:?} has label {label} but the dataset at {url} has {classes} classes")]
    LabelOutOfRange {
        url: String,
        key: String,
        label: u32,
        classes: usize,
    },
    #[error(
        "{} file names under {url} are not UTF-8, which object keys must be; rename them (shown with \
         U+FFFD for the undecodable bytes): {}{}",
        names.len() + more,
        names.join(", "),
        if *more > 0 { format!(" and {more} more") } else { String::new() }
    )]
    NonUtf8Names {
        url: String,
        names: Vec<String>,
        more: usize,
    },
    #[error(
        "unknown dataset format {0:?} (expected imagefolder, imagenet, imagenet-real, imagenet-v2, imagenet-a, imagenet-r, imagenet-sketch, cifar10, cifar100, flowers102, cars, manifest or tar)"
    )]
    UnknownFormat(String),
}

impl DatasetError {
    pub(crate) fn invalid(url: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            url: url.into(),
            reason: reason.into(),
        }
    }
}
