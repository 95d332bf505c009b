//! One evaluation sample: its stable key, its class index, and where its bytes are.

use std::fmt;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// A sample's identity across runs, stores and machines: a path relative to the dataset's prefix
/// (`n01440764/ILSVRC2012_val_00000293.JPEG`), `file:record` for CIFAR (`test_batch.bin:00042`), or
/// `shard:member` for tar shards (`shard-000003.tar:n01440764/ILSVRC2012_val_00000293`). It never
/// contains the store's URL, so a dataset read from `file://` and from `s3://` has the same keys.
/// Decoded packs keep their source's keys (see `super::decoded`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SampleKey(pub String);

impl SampleKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SampleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for SampleKey {
    fn from(key: String) -> Self {
        Self(key)
    }
}

impl From<&str> for SampleKey {
    fn from(key: &str) -> Self {
        Self(key.to_string())
    }
}

pub use tresnet_formats::cifar::CIFAR_PIXEL_BYTES;

/// Where a sample's bytes are. Paths are absolute within the dataset's store (prefix included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SampleSource {
    /// A whole encoded image object. `size` is the listed size, or `None` when the sample was named by
    /// metadata (a manifest row, a `.mat` entry) without listing, or is missing from the listing; a
    /// missing object is then reported by the fetch as a bad sample.
    Object {
        #[serde(with = "object_path")]
        path: Path,
        size: Option<u64>,
    },
    /// An encoded image stored as bytes `offset..offset+len` of a larger object (a tar member).
    Range {
        #[serde(with = "object_path")]
        path: Path,
        offset: u64,
        len: u64,
    },
    /// A raw CIFAR image: [`CIFAR_PIXEL_BYTES`] bytes at `offset` of a CIFAR `.bin` batch (past the label
    /// bytes) or of a tar shard's `.cifar` member. Nothing to decode.
    CifarRecord {
        #[serde(with = "object_path")]
        path: Path,
        offset: u64,
    },
}

impl SampleSource {
    /// The object holding the sample.
    pub fn path(&self) -> &Path {
        match self {
            Self::Object { path, .. }
            | Self::Range { path, .. }
            | Self::CifarRecord { path, .. } => path,
        }
    }

    /// Bytes the sample occupies, when known; part of the dataset fingerprint.
    pub fn size(&self) -> Option<u64> {
        match self {
            Self::Object { size, .. } => *size,
            Self::Range { len, .. } => Some(*len),
            Self::CifarRecord { .. } => Some(CIFAR_PIXEL_BYTES),
        }
    }

    /// The byte range to request, or `None` for the whole object.
    pub fn byte_range(&self) -> Option<std::ops::Range<u64>> {
        match self {
            Self::Object { .. } => None,
            Self::Range { offset, len, .. } => Some(*offset..offset + len),
            Self::CifarRecord { offset, .. } => Some(*offset..offset + CIFAR_PIXEL_BYTES),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub key: SampleKey,
    /// Class index into [`super::DatasetIndex::class_names`]; each format's module documents its
    /// convention.
    pub label: u32,
    pub source: SampleSource,
}

/// A sample the dataset's own metadata already shows to be unusable (a CIFAR record whose label byte is
/// out of range, a tar sample without a `.cls` member, a `.mat` label outside the class range). It is
/// still a sample of the dataset: the report counts it in `bad_samples` with this reason, and the
/// accounting (`samples + bad_samples == dataset size`) stays exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadSample {
    pub key: SampleKey,
    pub reason: String,
}

/// A sample of the dataset that its scoring rule leaves out: an ImageNet-ReaL image whose label list is
/// empty, or an image of a class outside the job's class subset. Never sent to a worker; the report
/// counts it in `excluded_samples` with this reason, so `evaluated + excluded + bad + failed` is the
/// dataset's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedSample {
    pub key: SampleKey,
    pub reason: String,
}

/// object_store's `Path` has no serde support; it round-trips through its string form, which
/// `Path::parse` accepts unchanged because it was produced by a `Path`.
mod object_path {
    use object_store::path::Path;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(path.as_ref())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Path, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Path::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip_through_json() {
        let sources = [
            SampleSource::Object {
                path: Path::from("data/a b/x.jpg"),
                size: Some(12),
            },
            SampleSource::Range {
                path: Path::from("s/shard-000000.tar"),
                offset: 512,
                len: 100,
            },
            SampleSource::CifarRecord {
                path: Path::from("c/test_batch.bin"),
                offset: 1,
            },
        ];
        for source in sources {
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(
                serde_json::from_str::<SampleSource>(&json).unwrap(),
                source,
                "{json}"
            );
        }
    }

    #[test]
    fn byte_ranges() {
        let cifar = SampleSource::CifarRecord {
            path: Path::from("t.bin"),
            offset: 3074 + 2,
        };
        assert_eq!(cifar.byte_range(), Some(3076..3076 + 3072));
        assert_eq!(cifar.size(), Some(3072));
    }
}
