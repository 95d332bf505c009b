//! `pack`: writes a listed dataset as WebDataset tar shards with their indexes and `dataset.json`, so
//! that it reads back as `--format tar` with ranged GETs. The shard format is
//! `tresnet_formats::tar`; listing the result is `tresnet_common::dataset::tar`.

use std::collections::HashSet;

use bytes::Bytes;
use futures::{StreamExt, stream};
use tresnet_common::dataset::imagefolder::IMG_EXTENSIONS;
use tresnet_common::dataset::tar::{
    BLOCK, DATASET_FILE, INDEX_SUFFIX, INDEX_VERSION, PackedDataset, ShardBad, ShardIndex,
    ShardSample, TarBuilder,
};
use tresnet_common::dataset::{DatasetError, DatasetIndex, Sample, SampleSource};
use tresnet_common::storage::{StorageError, StorageLocation};

/// What [`pack_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    pub shards: Vec<String>,
    pub samples: usize,
    pub bad_samples: usize,
    pub bytes: u64,
}

/// Writes `index` (read from `source`) as tar shards of about `shard_size` bytes plus their indexes and
/// `dataset.json` under `destination`; listing `destination` as [`DatasetFormat::Tar`](tresnet_common::dataset::DatasetFormat::Tar) then gives the
/// same samples (keyed `shard:member`) with the same labels and class names.
///
/// Member names are the source keys without their image extension, with `.` in the file name replaced
/// by `_` (WebDataset splits at the first dot) and a `_<n>` suffix if two keys collide; the extension is
/// the source's (lowercased), `img` when it has none, and `cifar` for raw CIFAR records. A source
/// object that is missing becomes a bad sample of its shard; the source's bad samples are carried into
/// the first shard's index. Any other storage error stops the pack.
///
/// Memory: one shard plus `concurrency` samples in flight. A shard exceeds `shard_size` only when a
/// single sample is larger.
pub async fn pack_dataset(
    index: &DatasetIndex,
    source: &StorageLocation,
    destination: &StorageLocation,
    shard_size: u64,
    concurrency: usize,
) -> Result<PackSummary, DatasetError> {
    let mut names = MemberNames::default();
    let planned: Vec<(String, &str)> = index
        .samples
        .iter()
        .map(|s| {
            let (stem, ext) = member_name(s);
            (names.unique(stem), ext)
        })
        .collect();
    let mut fetches = stream::iter(index.samples.iter())
        .map(|sample| {
            let source = source.clone();
            async move {
                match sample.source.byte_range() {
                    Some(range) => source.get_range(sample.source.path(), range).await,
                    None => source.get(sample.source.path()).await,
                }
            }
        })
        .buffered(concurrency.max(1));

    let mut writer = ShardWriter::new(destination, shard_size);
    for sample in &index.bad_samples {
        let (stem, _) = member_name_of_key(sample.key.as_str(), false);
        writer.bad.push(ShardBad {
            key: names.unique(stem),
            reason: sample.reason.clone(),
            source_key: None,
        });
    }
    for (sample, (key, ext)) in index.samples.iter().zip(&planned) {
        let fetched = fetches.next().await.unwrap_or_else(|| {
            Err(StorageError::NotFound {
                url: source.object_url(sample.source.path()),
            })
        });
        match fetched {
            Ok(bytes) => writer.add(key, ext, sample.label, &bytes).await?,
            Err(e) if e.is_not_found() => writer.bad.push(ShardBad {
                key: key.clone(),
                reason: format!("missing when packed: {e}"),
                source_key: None,
            }),
            Err(e) => return Err(e.into()),
        }
    }
    let mut summary = writer.close().await?;
    let metadata = PackedDataset {
        version: INDEX_VERSION,
        class_names: index.class_names.clone(),
        class_descriptions: index.class_descriptions.clone(),
        source_format: index.format.clone(),
        source_fingerprint: index.fingerprint.clone(),
        shards: summary.shards.clone(),
        samples: summary.samples,
        bad_samples: summary.bad_samples,
        decoded: None,
    };
    let json = serde_json::to_vec_pretty(&metadata).unwrap_or_default();
    summary.bytes += json.len() as u64;
    destination
        .put(&destination.path_of(DATASET_FILE)?, json)
        .await?;
    Ok(summary)
}

#[derive(Default)]
struct MemberNames {
    used: HashSet<String>,
}

impl MemberNames {
    fn unique(&mut self, stem: String) -> String {
        if self.used.insert(stem.clone()) {
            return stem;
        }
        (1..)
            .map(|n| format!("{stem}_{n}"))
            .find(|candidate| self.used.insert(candidate.clone()))
            .unwrap_or(stem)
    }
}

/// (member key, extension) for a sample.
fn member_name(sample: &Sample) -> (String, &'static str) {
    match sample.source {
        SampleSource::CifarRecord { .. } => {
            (member_name_of_key(sample.key.as_str(), false).0, "cifar")
        }
        _ => member_name_of_key(sample.key.as_str(), true),
    }
}

fn member_name_of_key(key: &str, strip_image_ext: bool) -> (String, &'static str) {
    let (dir, file) = key.rsplit_once('/').map_or(("", key), |(d, f)| (d, f));
    let mut ext = "img";
    let mut stem = file;
    if strip_image_ext && let Some((s, e)) = file.rsplit_once('.') {
        let lower = format!(".{}", e.to_ascii_lowercase());
        if let Some(known) = IMG_EXTENSIONS.iter().find(|x| **x == lower) {
            ext = &known[1..];
            stem = s;
        }
    }
    let stem = if stem.is_empty() { "_" } else { stem };
    let file = stem.replace('.', "_");
    let name = if dir.is_empty() {
        file
    } else {
        format!("{dir}/{file}")
    };
    (name, ext)
}

struct ShardWriter<'a> {
    destination: &'a StorageLocation,
    shard_size: u64,
    tar: TarBuilder,
    samples: Vec<ShardSample>,
    bad: Vec<ShardBad>,
    summary: PackSummary,
}

impl<'a> ShardWriter<'a> {
    fn new(destination: &'a StorageLocation, shard_size: u64) -> Self {
        Self {
            destination,
            shard_size,
            tar: TarBuilder::default(),
            samples: Vec::new(),
            bad: Vec::new(),
            summary: PackSummary {
                shards: Vec::new(),
                samples: 0,
                bad_samples: 0,
                bytes: 0,
            },
        }
    }

    async fn add(
        &mut self,
        key: &str,
        ext: &str,
        label: u32,
        data: &[u8],
    ) -> Result<(), DatasetError> {
        let image_name = format!("{key}.{ext}");
        let cls_name = format!("{key}.cls");
        let cls = label.to_string();
        let needed = TarBuilder::member_bytes(&image_name, data.len() as u64)
            + TarBuilder::member_bytes(&cls_name, cls.len() as u64);
        if !self.tar.is_empty() && self.tar.len() + needed + 2 * BLOCK > self.shard_size {
            self.flush().await?;
        }
        let url = || self.destination.url().to_string();
        let offset = self
            .tar
            .append(&image_name, data)
            .map_err(|source| DatasetError::Tar { url: url(), source })?;
        self.tar
            .append(&cls_name, cls.as_bytes())
            .map_err(|source| DatasetError::Tar { url: url(), source })?;
        self.samples.push(ShardSample {
            key: key.to_string(),
            member: image_name,
            offset,
            size: data.len() as u64,
            label,
            source_key: None,
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DatasetError> {
        let name = format!("shard-{:06}.tar", self.summary.shards.len());
        let tar = std::mem::take(&mut self.tar).finish();
        let index = ShardIndex {
            version: INDEX_VERSION,
            shard_size: tar.len() as u64,
            samples: std::mem::take(&mut self.samples),
            bad: std::mem::take(&mut self.bad),
        };
        let json = index.to_json();
        self.summary.samples += index.samples.len();
        self.summary.bad_samples += index.bad.len();
        self.summary.bytes += (tar.len() + json.len()) as u64;
        // The shard first: an index must never describe a shard that is not there.
        self.destination
            .put(&self.destination.path_of(&name)?, Bytes::from(tar))
            .await?;
        self.destination
            .put(
                &self.destination.path_of(&format!("{name}{INDEX_SUFFIX}"))?,
                json,
            )
            .await?;
        self.summary.shards.push(name);
        Ok(())
    }

    async fn close(mut self) -> Result<PackSummary, DatasetError> {
        if !self.tar.is_empty()
            || !self.samples.is_empty()
            || !self.bad.is_empty()
            || self.summary.shards.is_empty()
        {
            self.flush().await?;
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use tresnet_common::dataset::tar::ensure_indexes;
    use tresnet_common::dataset::{CifarSplit, DatasetFormat, list_dataset};
    use tresnet_common::storage::StorageOptions;

    use super::*;

    #[test]
    fn member_names_strip_image_extensions_and_dots() {
        assert_eq!(
            member_name_of_key("n01/ILSVRC2012_val_1.JPEG", true),
            ("n01/ILSVRC2012_val_1".into(), "jpeg")
        );
        assert_eq!(
            member_name_of_key("a.b/c.d.png", true),
            ("a.b/c_d".into(), "png")
        );
        assert_eq!(
            member_name_of_key("raw/blob", true),
            ("raw/blob".into(), "img")
        );
        assert_eq!(
            member_name_of_key("test_batch.bin:00042", false),
            ("test_batch_bin:00042".into(), "img")
        );
        let mut names = MemberNames::default();
        assert_eq!(names.unique("a".into()), "a");
        assert_eq!(names.unique("a".into()), "a_1");
        assert_eq!(names.unique("a".into()), "a_2");
    }

    async fn put(location: &StorageLocation, rel: &str, bytes: Vec<u8>) {
        location
            .put(&location.path_of(rel).unwrap(), Bytes::from(bytes))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pack_then_list_keeps_samples_labels_and_bytes() {
        let options = StorageOptions::default();
        let source = StorageLocation::parse("memory://tar-pack/src", &options).unwrap();
        for (i, class) in ["cat", "dog", "eel"].iter().enumerate() {
            for j in 0..4 {
                put(
                    &source,
                    &format!("{class}/{j}.v{j}.JPG"),
                    vec![(i * 10 + j) as u8; 700 + j * 300],
                )
                .await;
            }
        }
        let original = list_dataset(&source, &DatasetFormat::ImageFolder)
            .await
            .unwrap();
        let destination = StorageLocation::parse("memory://tar-pack/packed", &options).unwrap();
        let summary = pack_dataset(&original, &source, &destination, 4096, 3)
            .await
            .unwrap();
        assert_eq!(summary.samples, 12);
        assert!(summary.shards.len() > 2, "{summary:?}");

        let packed = list_dataset(&destination, &DatasetFormat::Tar)
            .await
            .unwrap();
        assert_eq!(packed.class_names, original.class_names);
        assert_eq!(packed.samples.len(), original.samples.len());
        for (a, b) in original.samples.iter().zip(&packed.samples) {
            assert_eq!(a.label, b.label);
            let (shard, member) = b.key.as_str().split_once(':').unwrap();
            assert!(
                shard.starts_with("shard-") && shard.ends_with(".tar"),
                "{shard}"
            );
            assert_eq!(
                member,
                a.key.as_str().replace(".JPG", "").replace(".v", "_v")
            );
            let original_bytes = source.get(a.source.path()).await.unwrap();
            let range = b.source.byte_range().unwrap();
            let packed_bytes = destination.get_range(b.source.path(), range).await.unwrap();
            assert_eq!(original_bytes, packed_bytes, "{}", b.key);
        }

        // Without the indexes, listing streams the shards and finds the same samples.
        for shard in &summary.shards {
            destination
                .store()
                .delete(
                    &destination
                        .path_of(&format!("{shard}{INDEX_SUFFIX}"))
                        .unwrap(),
                )
                .await
                .unwrap();
        }
        let rebuilt = list_dataset(&destination, &DatasetFormat::Tar)
            .await
            .unwrap();
        assert_eq!(rebuilt.fingerprint, packed.fingerprint);
        assert_eq!(
            ensure_indexes(&destination).await.unwrap().len(),
            summary.shards.len()
        );
        assert!(ensure_indexes(&destination).await.unwrap().is_empty());

        // Packing again is byte-identical.
        let again = StorageLocation::parse("memory://tar-pack/again", &options).unwrap();
        pack_dataset(&original, &source, &again, 4096, 1)
            .await
            .unwrap();
        for shard in &summary.shards {
            let a = destination
                .get(&destination.path_of(shard).unwrap())
                .await
                .unwrap();
            let b = again.get(&again.path_of(shard).unwrap()).await.unwrap();
            assert_eq!(a, b);
        }
    }

    #[tokio::test]
    async fn pack_keeps_cifar_records_raw_and_bad_samples() {
        let options = StorageOptions::default();
        let source = StorageLocation::parse("memory://tar-cifar/src", &options).unwrap();
        let mut records = Vec::new();
        for label in [3u8, 11, 5] {
            records.push(label);
            records.extend(vec![label; 3072]);
        }
        put(&source, "test_batch.bin", records).await;
        let names: String = (0..10).map(|i| format!("c{i}\n")).collect();
        put(&source, "batches.meta.txt", names.into_bytes()).await;
        let format = DatasetFormat::Cifar10 {
            split: CifarSplit::Test,
        };
        let original = list_dataset(&source, &format).await.unwrap();
        assert_eq!(original.bad_samples.len(), 1);

        let destination = StorageLocation::parse("memory://tar-cifar/packed", &options).unwrap();
        pack_dataset(&original, &source, &destination, 1 << 20, 4)
            .await
            .unwrap();
        let packed = list_dataset(&destination, &DatasetFormat::Tar)
            .await
            .unwrap();
        let keys: Vec<&str> = packed.samples.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "shard-000000.tar:test_batch_bin:00000",
                "shard-000000.tar:test_batch_bin:00002"
            ]
        );
        assert!(matches!(
            packed.samples[1].source,
            SampleSource::CifarRecord { .. }
        ));
        let pixels = destination
            .get_range(
                packed.samples[1].source.path(),
                packed.samples[1].source.byte_range().unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(&pixels[..], &[5u8; 3072][..]);
        assert_eq!(packed.bad_samples.len(), 1);
        assert_eq!(
            packed.bad_samples[0].key.as_str(),
            "shard-000000.tar:test_batch_bin:00001"
        );
        assert_eq!(packed.class_names[9], "c9");
        assert_eq!(packed.len(), original.len());
    }

    #[tokio::test]
    async fn missing_source_objects_become_bad_samples() {
        let options = StorageOptions::default();
        let source = StorageLocation::parse("memory://tar-missing/src", &options).unwrap();
        put(&source, "a/1.jpg", vec![1; 10]).await;
        put(&source, "a/2.jpg", vec![2; 10]).await;
        let original = list_dataset(&source, &DatasetFormat::ImageFolder)
            .await
            .unwrap();
        source
            .store()
            .delete(&source.path_of("a/2.jpg").unwrap())
            .await
            .unwrap();
        let destination = StorageLocation::parse("memory://tar-missing/packed", &options).unwrap();
        let summary = pack_dataset(&original, &source, &destination, 1 << 20, 2)
            .await
            .unwrap();
        assert_eq!((summary.samples, summary.bad_samples), (1, 1));
        let packed = list_dataset(&destination, &DatasetFormat::Tar)
            .await
            .unwrap();
        assert_eq!(packed.bad_samples[0].key.as_str(), "shard-000000.tar:a/2");
        assert!(
            packed.bad_samples[0].reason.contains("not found"),
            "{}",
            packed.bad_samples[0].reason
        );
    }
}
