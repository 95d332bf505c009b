//! The sample list of a dataset, validated (unique keys, labels in range) and fingerprinted.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::decoded::DecodedPack;
use super::{BadSample, DatasetError, DatasetFormat, ExcludedSample, Sample};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetIndex {
    pub format: DatasetFormat,
    /// Index = class label. Folder names, synset ids, or the names the dataset ships; formats without
    /// names use the label's decimal form (see each format's module doc).
    pub class_names: Vec<String>,
    /// Human-readable names for reports where `class_names` are ids (ImageNet: WordNet lemmas).
    pub class_descriptions: Option<Vec<String>>,
    /// In the format's documented order (deterministic: listings are sorted).
    pub samples: Vec<Sample>,
    /// Samples the metadata shows to be unusable; part of the dataset's size.
    pub bad_samples: Vec<BadSample>,
    /// Hex SHA-256 over the format name, the class names, and every sample's key, label and size (and
    /// every bad sample's key), in key order. Independent of the store and prefix, so the same dataset
    /// read from `file://` and `s3://` has the same fingerprint; any added, removed, relabelled or
    /// resized sample changes it.
    pub fingerprint: String,
    /// Multi-label formats (ImageNet-ReaL): for each sample, in the order of `samples`, the classes
    /// that count as a correct prediction. `None`: the single `label` is the only correct class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_sets: Option<Vec<Vec<u32>>>,
    /// Samples the scoring rule leaves out (see [`ExcludedSample`]); part of the dataset's size but not
    /// of [`Self::len`], which counts what the shards cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<ExcludedSample>,
    /// A decoded pack ([`super::decoded`]): what its pixels were made from. Jobs over it carry this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<DecodedPack>,
}

impl DatasetIndex {
    /// Checks the invariants every consumer relies on (unique keys across samples and bad samples,
    /// labels below the class count) and computes the fingerprint. `url` names the dataset in errors.
    pub fn new(
        url: &str,
        format: DatasetFormat,
        class_names: Vec<String>,
        samples: Vec<Sample>,
        bad_samples: Vec<BadSample>,
    ) -> Result<Self, DatasetError> {
        let mut seen = HashSet::with_capacity(samples.len() + bad_samples.len());
        for key in samples
            .iter()
            .map(|s| &s.key)
            .chain(bad_samples.iter().map(|b| &b.key))
        {
            if !seen.insert(key) {
                return Err(DatasetError::DuplicateKey {
                    url: url.to_string(),
                    key: key.to_string(),
                });
            }
        }
        if let Some(sample) = samples
            .iter()
            .find(|s| s.label as usize >= class_names.len())
        {
            return Err(DatasetError::LabelOutOfRange {
                url: url.to_string(),
                key: sample.key.to_string(),
                label: sample.label,
                classes: class_names.len(),
            });
        }
        let fingerprint = fingerprint(&format, &class_names, &samples, &bad_samples);
        Ok(Self {
            format,
            class_names,
            class_descriptions: None,
            samples,
            bad_samples,
            fingerprint,
            label_sets: None,
            excluded: Vec::new(),
            decoded: None,
        })
    }

    /// Marks the index as a decoded pack's and folds what the pack was made from into the fingerprint.
    pub fn set_decoded(&mut self, pack: DecodedPack) {
        let bytes = pack.fingerprint_bytes();
        self.fingerprint = extend_fingerprint(&self.fingerprint, "decoded", [bytes.as_slice()]);
        self.decoded = Some(pack);
    }

    /// Sets the excluded samples and folds their keys and reasons into the fingerprint.
    pub fn set_excluded(&mut self, mut excluded: Vec<ExcludedSample>) {
        excluded.sort_by(|a, b| a.key.cmp(&b.key));
        self.fingerprint = extend_fingerprint(
            &self.fingerprint,
            "excluded",
            excluded
                .iter()
                .flat_map(|e| [e.key.as_str().as_bytes(), e.reason.as_bytes()]),
        );
        self.excluded = excluded;
    }

    /// Sets the label sets of a multi-label format (one per sample, each class below the class count)
    /// and folds them into the fingerprint. `url` names the dataset in errors.
    pub fn set_label_sets(&mut self, url: &str, sets: Vec<Vec<u32>>) -> Result<(), DatasetError> {
        if sets.len() != self.samples.len() {
            return Err(DatasetError::invalid(
                url,
                format!(
                    "{} label sets for {} samples",
                    sets.len(),
                    self.samples.len()
                ),
            ));
        }
        let classes = self.class_names.len();
        for (sample, set) in self.samples.iter().zip(&sets) {
            if let Some(&label) = set.iter().find(|&&c| c as usize >= classes) {
                return Err(DatasetError::LabelOutOfRange {
                    url: url.to_string(),
                    key: sample.key.to_string(),
                    label,
                    classes,
                });
            }
        }
        let encoded: Vec<Vec<u8>> = self
            .samples
            .iter()
            .zip(&sets)
            .flat_map(|(sample, set)| {
                [
                    sample.key.as_str().as_bytes().to_vec(),
                    set.iter().flat_map(|c| c.to_le_bytes()).collect(),
                ]
            })
            .collect();
        self.fingerprint = extend_fingerprint(
            &self.fingerprint,
            "label-sets",
            encoded.iter().map(|v| &v[..]),
        );
        self.label_sets = Some(sets);
        Ok(())
    }

    /// The classes that count as correct for sample `i`: its label set, or its single label.
    pub fn accepted(&self, i: usize) -> &[u32] {
        match &self.label_sets {
            Some(sets) => &sets[i],
            None => std::slice::from_ref(&self.samples[i].label),
        }
    }

    /// Samples plus bad samples: the count a complete run accounts for.
    pub fn len(&self) -> usize {
        self.samples.len() + self.bad_samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 of a previous fingerprint, a tag and length-prefixed parts: what scoring data added after the
/// listing (label sets, excluded samples) does to the fingerprint, so that it still changes with them.
fn extend_fingerprint<'a>(
    previous: &str,
    tag: &str,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> String {
    let mut hasher = Sha256::new();
    for head in [previous.as_bytes(), tag.as_bytes()] {
        hasher.update((head.len() as u64).to_le_bytes());
        hasher.update(head);
    }
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn fingerprint(
    format: &DatasetFormat,
    class_names: &[String],
    samples: &[Sample],
    bad: &[BadSample],
) -> String {
    // Fields are length-prefixed so no two different datasets hash the same byte stream.
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let mut hasher = Sha256::new();
    field(&mut hasher, b"tresnet-dataset-fingerprint-v1");
    field(&mut hasher, format.name().as_bytes());
    hasher.update((class_names.len() as u64).to_le_bytes());
    for name in class_names {
        field(&mut hasher, name.as_bytes());
    }
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    hasher.update((sorted.len() as u64).to_le_bytes());
    for sample in sorted {
        field(&mut hasher, sample.key.as_str().as_bytes());
        hasher.update(sample.label.to_le_bytes());
        hasher.update(
            sample
                .source
                .size()
                .map_or(u64::MAX, |size| size)
                .to_le_bytes(),
        );
    }
    let mut bad_keys: Vec<&str> = bad.iter().map(|b| b.key.as_str()).collect();
    bad_keys.sort_unstable();
    hasher.update((bad_keys.len() as u64).to_le_bytes());
    for key in bad_keys {
        field(&mut hasher, key.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use object_store::path::Path;

    use super::*;
    use crate::dataset::SampleSource;

    fn sample(key: &str, label: u32, size: u64) -> Sample {
        Sample {
            key: key.into(),
            label,
            source: SampleSource::Object {
                path: Path::from(format!("root/{key}")),
                size: Some(size),
            },
        }
    }

    fn index(samples: Vec<Sample>) -> Result<DatasetIndex, DatasetError> {
        DatasetIndex::new(
            "memory://t",
            DatasetFormat::ImageFolder,
            vec!["a".into(), "b".into()],
            samples,
            vec![],
        )
    }

    #[test]
    fn fingerprint_ignores_order_and_store_but_not_content() {
        let a = index(vec![sample("a/1.jpg", 0, 10), sample("b/2.jpg", 1, 20)]).unwrap();
        let mut moved = sample("b/2.jpg", 1, 20);
        moved.source = SampleSource::Object {
            path: Path::from("elsewhere/b/2.jpg"),
            size: Some(20),
        };
        let b = index(vec![moved, sample("a/1.jpg", 0, 10)]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        for changed in [
            vec![sample("a/1.jpg", 0, 10), sample("b/2.jpg", 0, 20)],
            vec![sample("a/1.jpg", 0, 10), sample("b/2.jpg", 1, 21)],
            vec![sample("a/1.jpg", 0, 10), sample("b/3.jpg", 1, 20)],
            vec![sample("a/1.jpg", 0, 10)],
        ] {
            assert_ne!(index(changed).unwrap().fingerprint, a.fingerprint);
        }
    }

    #[test]
    fn duplicate_keys_and_labels_out_of_range_are_errors() {
        let err = index(vec![sample("a/1.jpg", 0, 1), sample("a/1.jpg", 1, 1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "duplicate sample key \"a/1.jpg\" in the dataset at memory://t"
        );
        let err = index(vec![sample("a/1.jpg", 2, 1)]).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::LabelOutOfRange {
                    label: 2,
                    classes: 2,
                    ..
                }
            ),
            "{err}"
        );
    }
}
