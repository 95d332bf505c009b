//! CIFAR-10 and CIFAR-100, the binary release (`cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`,
//! extracted), read as raw records: no image files are involved.
//!
//! - CIFAR-10: `test_batch.bin` (train: `data_batch_1.bin`…`data_batch_5.bin`), records of 3073 bytes:
//!   the label byte, then 1024 red, 1024 green and 1024 blue bytes (32×32, row-major). Class names:
//!   `batches.meta.txt`, one per line.
//! - CIFAR-100: `test.bin` (train: `train.bin`), records of 3074 bytes: coarse label, fine label, then
//!   the 3072 pixel bytes. The **fine** label (100 classes) is used; names: `fine_label_names.txt`.
//!
//! Class index convention: the label byte as stored, which indexes the names file's lines (empty lines
//! skipped). The data files are found anywhere under the prefix (so pointing at the folder that holds
//! `cifar-10-batches-bin/` works); the names file must sit next to them.
//!
//! Keys are `<file name>:<record index, 5 digits>` (`test_batch.bin:00042`); sources are
//! [`SampleSource::CifarRecord`] at the record's pixel bytes. A file whose length is not a whole number
//! of records is a dataset error naming it; a record whose label byte is out of range is a
//! [`BadSample`] (the other records are fine).

use object_store::path::Path;
pub use tresnet_formats::cifar::{CifarError, CifarVariant, parse_names};

use super::{
    BadSample, CifarSplit, DatasetError, DatasetFormat, DatasetIndex, Listing, Sample,
    SampleSource, join_rel, parent_of, read_listed,
};
use crate::storage::StorageLocation;

/// The data files of a split.
pub fn data_files(variant: CifarVariant, split: CifarSplit) -> &'static [&'static str] {
    match (variant, split) {
        (CifarVariant::Cifar10, CifarSplit::Test) => &["test_batch.bin"],
        (CifarVariant::Cifar10, CifarSplit::Train) => &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        (CifarVariant::Cifar100, CifarSplit::Test) => &["test.bin"],
        (CifarVariant::Cifar100, CifarSplit::Train) => &["train.bin"],
    }
}

fn format_of(variant: CifarVariant, split: CifarSplit) -> DatasetFormat {
    match variant {
        CifarVariant::Cifar10 => DatasetFormat::Cifar10 { split },
        CifarVariant::Cifar100 => DatasetFormat::Cifar100 { split },
    }
}

pub(crate) async fn list(
    location: &StorageLocation,
    variant: CifarVariant,
    split: CifarSplit,
) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    let mut names_rel = None;
    for name in data_files(variant, split) {
        let listed = listing.require_named(location, name)?;
        names_rel.get_or_insert_with(|| join_rel(parent_of(&listed.rel), variant.names_file()));
        let bytes = read_listed(location, listed).await?;
        let (file_samples, file_bad) = parse_records(name, &listed.path, &bytes, variant)
            .map_err(|e| DatasetError::invalid(location.object_url(&listed.path), e.to_string()))?;
        samples.extend(file_samples);
        bad.extend(file_bad);
    }
    let names_rel = names_rel.unwrap_or_default();
    let names_listed = listing
        .get(&names_rel)
        .ok_or_else(|| DatasetError::NotFound {
            url: location.url().to_string(),
            what: format!("{names_rel} (the class names, next to the data files)"),
        })?;
    let names_url = location.object_url(&names_listed.path);
    let class_names = parse_names(
        &read_listed(location, names_listed).await?,
        variant.classes(),
    )
    .map_err(|e| DatasetError::invalid(names_url, e.to_string()))?;
    DatasetIndex::new(
        location.url(),
        format_of(variant, split),
        class_names,
        samples,
        bad,
    )
}

/// Splits one data file into samples (the record format is [`tresnet_formats::cifar`]). `file_name`
/// forms the keys, `path` is the object the sources point into. Errors only when the file is not a
/// whole number of records.
pub fn parse_records(
    file_name: &str,
    path: &Path,
    bytes: &[u8],
    variant: CifarVariant,
) -> Result<(Vec<Sample>, Vec<BadSample>), CifarError> {
    let (records, bad) = tresnet_formats::cifar::parse_records(bytes, variant)?;
    let key = |index| tresnet_formats::cifar::record_key(file_name, index).into();
    let samples = records
        .into_iter()
        .map(|r| Sample {
            key: key(r.index),
            label: r.label,
            source: SampleSource::CifarRecord {
                path: path.clone(),
                offset: r.offset,
            },
        })
        .collect();
    let bad = bad
        .into_iter()
        .map(|b| BadSample {
            key: key(b.index),
            reason: b.reason,
        })
        .collect();
    Ok((samples, bad))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::dataset::CIFAR_PIXEL_BYTES;
    use crate::storage::StorageOptions;

    /// Records whose pixels encode their index, so offsets can be checked against content.
    fn records(variant: CifarVariant, labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &label) in labels.iter().enumerate() {
            if variant == CifarVariant::Cifar100 {
                out.push(label / 5); // coarse label
            }
            out.push(label);
            out.extend(std::iter::repeat_n(i as u8, CIFAR_PIXEL_BYTES as usize));
        }
        out
    }

    async fn put(location: &StorageLocation, rel: &str, bytes: Vec<u8>) {
        location
            .put(&location.path_of(rel).unwrap(), Bytes::from(bytes))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn cifar10_test_batch_with_names() {
        let location =
            StorageLocation::parse("memory://cifar10/root", &StorageOptions::default()).unwrap();
        put(
            &location,
            "cifar-10-batches-bin/test_batch.bin",
            records(CifarVariant::Cifar10, &[3, 8, 0, 12]),
        )
        .await;
        let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
        put(
            &location,
            "cifar-10-batches-bin/batches.meta.txt",
            names.as_bytes().to_vec(),
        )
        .await;
        // A training batch that must be ignored for the test split.
        put(
            &location,
            "cifar-10-batches-bin/data_batch_1.bin",
            records(CifarVariant::Cifar10, &[1]),
        )
        .await;

        let format = DatasetFormat::Cifar10 {
            split: CifarSplit::Test,
        };
        let index = super::super::list_dataset(&location, &format)
            .await
            .unwrap();
        assert_eq!(index.class_names[3], "cat");
        assert_eq!(index.samples.len(), 3);
        assert_eq!(index.samples[1].key.as_str(), "test_batch.bin:00001");
        assert_eq!(index.samples[1].label, 8);
        let source = &index.samples[1].source;
        assert_eq!(source.byte_range(), Some(3073 + 1..3073 + 1 + 3072));
        let pixels = location
            .get_range(source.path(), source.byte_range().unwrap())
            .await
            .unwrap();
        assert!(pixels.iter().all(|&p| p == 1));
        assert_eq!(index.bad_samples.len(), 1);
        assert_eq!(index.bad_samples[0].key.as_str(), "test_batch.bin:00003");
        assert!(index.bad_samples[0].reason.contains("label byte 12"));
        assert_eq!(index.len(), 4);
    }

    #[tokio::test]
    async fn cifar100_uses_fine_labels() {
        let location =
            StorageLocation::parse("memory://cifar100/", &StorageOptions::default()).unwrap();
        put(
            &location,
            "test.bin",
            records(CifarVariant::Cifar100, &[99, 42]),
        )
        .await;
        let names: String = (0..100).map(|i| format!("class{i}\n")).collect();
        put(&location, "fine_label_names.txt", names.into_bytes()).await;
        let index = list(&location, CifarVariant::Cifar100, CifarSplit::Test)
            .await
            .unwrap();
        let labels: Vec<u32> = index.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, [99, 42]);
        assert_eq!(
            index.samples[1].source.byte_range().unwrap().start,
            3074 + 2
        );
        assert_eq!(index.class_names[42], "class42");
    }

    #[tokio::test]
    async fn damaged_and_missing_files_name_the_object() {
        let location =
            StorageLocation::parse("memory://cifar-bad/", &StorageOptions::default()).unwrap();
        let err = list(&location, CifarVariant::Cifar10, CifarSplit::Test)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no test_batch.bin found under memory://cifar-bad");
        let mut bytes = records(CifarVariant::Cifar10, &[1, 2]);
        bytes.pop();
        put(&location, "test_batch.bin", bytes).await;
        let err = list(&location, CifarVariant::Cifar10, CifarSplit::Test)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("memory://cifar-bad/test_batch.bin: 6145 bytes is not a whole number"),
            "{err}"
        );
        put(
            &location,
            "test_batch.bin",
            records(CifarVariant::Cifar10, &[1]),
        )
        .await;
        put(&location, "batches.meta.txt", b"a\nb\n".to_vec()).await;
        let err = list(&location, CifarVariant::Cifar10, CifarSplit::Test)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "memory://cifar-bad/batches.meta.txt: 2 class names, expected 10"
        );
    }

    proptest! {
        #[test]
        fn records_parse_exactly_or_fail_on_length(
            cifar100 in any::<bool>(),
            labels in proptest::collection::vec(any::<u8>(), 0..12),
            extra in 0usize..3074,
        ) {
            let variant = if cifar100 { CifarVariant::Cifar100 } else { CifarVariant::Cifar10 };
            let mut bytes = records(variant, &labels);
            bytes.extend(std::iter::repeat_n(7u8, extra));
            let path = Path::from("x/test.bin");
            let result = parse_records("test.bin", &path, &bytes, variant);
            if extra % variant.record_size() as usize != 0 {
                prop_assert!(result.is_err());
                return Ok(());
            }
            let (samples, bad) = result.unwrap();
            let whole = bytes.len() / variant.record_size() as usize;
            prop_assert_eq!(samples.len() + bad.len(), whole);
            for sample in &samples {
                let index: usize = sample.key.as_str().rsplit(':').next().unwrap().parse().unwrap();
                let range = sample.source.byte_range().unwrap();
                prop_assert_eq!(range.end - range.start, CIFAR_PIXEL_BYTES);
                prop_assert!(range.end as usize <= bytes.len());
                prop_assert_eq!(u64::from(bytes[range.start as usize - 1]), u64::from(sample.label));
                if index < labels.len() {
                    prop_assert_eq!(sample.label, u32::from(labels[index]));
                    prop_assert!(bytes[range.start as usize..range.end as usize].iter().all(|&p| p == index as u8));
                }
                prop_assert!((sample.label as usize) < variant.classes());
            }
            for b in &bad {
                let index: usize = b.key.as_str().rsplit(':').next().unwrap().parse().unwrap();
                let label = bytes[index * variant.record_size() as usize + variant.label_offset()];
                prop_assert!(usize::from(label) >= variant.classes());
            }
        }
    }
}
