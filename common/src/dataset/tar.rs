//! Tar shards in a store: listing a folder of WebDataset shards as a dataset, reading each shard's
//! index or building it by streaming the shard. The byte formats (scanner, index, builder) and the
//! format's rules are [`tresnet_formats::tar`], re-exported here; packing a dataset into shards is the
//! coordinator's `pack`.

use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

pub use tresnet_formats::tar::*;

use super::decoded::DecodedPack;
use super::{
    BadSample, DatasetError, DatasetFormat, DatasetIndex, Listed, Listing, Sample, SampleKey,
    SampleSource, read_listed,
};
use crate::storage::{DEFAULT_FETCH_CONCURRENCY, StorageLocation};

/// Dataset-level metadata of a packed dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedDataset {
    pub version: u32,
    pub class_names: Vec<String>,
    #[serde(default)]
    pub class_descriptions: Option<Vec<String>>,
    /// The dataset the shards were packed from.
    pub source_format: DatasetFormat,
    pub source_fingerprint: String,
    pub shards: Vec<String>,
    pub samples: usize,
    pub bad_samples: usize,
    /// Set for decoded packs ([`super::decoded`]): the members are pixels, not encoded images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<DecodedPack>,
}

pub(crate) async fn list(location: &StorageLocation) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let shards = shard_indexes(location, &listing).await?;
    let metadata = match listing.get(DATASET_FILE) {
        Some(file) => {
            let bytes = read_listed(location, file).await?;
            Some(
                serde_json::from_slice::<PackedDataset>(&bytes).map_err(|e| {
                    DatasetError::invalid(
                        location.object_url(&file.path),
                        format!("unreadable dataset metadata: {e}"),
                    )
                })?,
            )
        }
        None => None,
    };
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    let decoded = metadata.as_ref().and_then(|m| m.decoded.clone());
    for (shard, index) in &shards {
        for s in &index.samples {
            let key = SampleKey(
                s.source_key
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", shard.rel, s.key)),
            );
            if let Some(pack) = &decoded
                && s.size != pack.pixels.sample_bytes()
            {
                bad.push(BadSample {
                    key,
                    reason: format!(
                        "decoded member {} of {} bytes, expected {} (3 x {} x {})",
                        s.member,
                        s.size,
                        pack.pixels.sample_bytes(),
                        pack.pixels.resolution,
                        pack.pixels.resolution
                    ),
                });
                continue;
            }
            let source = if s.member.to_ascii_lowercase().ends_with(".cifar") {
                SampleSource::CifarRecord {
                    path: shard.path.clone(),
                    offset: s.offset,
                }
            } else {
                SampleSource::Range {
                    path: shard.path.clone(),
                    offset: s.offset,
                    len: s.size,
                }
            };
            samples.push(Sample {
                key,
                label: s.label,
                source,
            });
        }
        bad.extend(index.bad.iter().map(|b| {
            BadSample {
                key: SampleKey(
                    b.source_key
                        .clone()
                        .unwrap_or_else(|| format!("{}:{}", shard.rel, b.key)),
                ),
                reason: b.reason.clone(),
            }
        }));
    }
    let (class_names, descriptions) = match metadata {
        Some(meta) => {
            let classes = meta.class_names.len();
            // A label the metadata has no name for is one sample's problem, not the dataset's.
            let (good, out_of_range): (Vec<Sample>, Vec<Sample>) = samples
                .into_iter()
                .partition(|s| (s.label as usize) < classes);
            samples = good;
            bad.extend(out_of_range.into_iter().map(|s| BadSample {
                reason: format!(
                    "label {} outside the {classes} classes of {DATASET_FILE}",
                    s.label
                ),
                key: s.key,
            }));
            (meta.class_names, meta.class_descriptions)
        }
        None => {
            let classes = samples
                .iter()
                .map(|s| s.label as usize + 1)
                .max()
                .unwrap_or(0);
            ((0..classes).map(|c| c.to_string()).collect(), None)
        }
    };
    let mut index = DatasetIndex::new(
        location.url(),
        DatasetFormat::Tar,
        class_names,
        samples,
        bad,
    )?;
    index.class_descriptions = descriptions;
    if let Some(pack) = decoded {
        index.set_decoded(pack);
    }
    Ok(index)
}

/// Every shard under the location with its index (read, or built by streaming the shard).
async fn shard_indexes(
    location: &StorageLocation,
    listing: &Listing,
) -> Result<Vec<(Listed, ShardIndex)>, DatasetError> {
    let shards: Vec<&Listed> = listing
        .objects
        .iter()
        .filter(|o| o.rel.ends_with(".tar"))
        .collect();
    if shards.is_empty() {
        return Err(DatasetError::NotFound {
            url: location.url().to_string(),
            what: "*.tar shards".into(),
        });
    }
    stream::iter(shards)
        .map(|shard| async move {
            let index = match listing.get(&format!("{}{INDEX_SUFFIX}", shard.rel)) {
                Some(file) => {
                    let url = location.object_url(&file.path);
                    let index = ShardIndex::from_json(&read_listed(location, file).await?)
                        .map_err(|source| DatasetError::Tar { url: url.clone(), source })?;
                    if index.shard_size != shard.size {
                        return Err(DatasetError::invalid(
                            url,
                            format!(
                                "stale index: it describes a {}-byte shard but {} has {} bytes; delete the index to rebuild it",
                                index.shard_size, shard.rel, shard.size
                            ),
                        ));
                    }
                    index
                }
                None => index_shard(location, &shard.path).await?,
            };
            Ok((shard.clone(), index))
        })
        .buffered(DEFAULT_FETCH_CONCURRENCY)
        .try_collect()
        .await
}

/// Builds a shard's index by streaming it once (memory: one header and the `.cls` members).
pub async fn index_shard(
    location: &StorageLocation,
    shard: &Path,
) -> Result<ShardIndex, DatasetError> {
    let url = location.object_url(shard);
    let mut chunks = location.get_stream(shard).await?;
    let mut scanner = TarScanner::new(is_cls);
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        scanner.feed(&chunk).map_err(|source| DatasetError::Tar {
            url: url.clone(),
            source,
        })?;
    }
    let members = scanner
        .finish()
        .map_err(|source| DatasetError::Tar { url, source })?;
    Ok(ShardIndex::from_members(size, &members))
}

/// Writes the index of every shard under the location that has none; returns the shards indexed.
pub async fn ensure_indexes(location: &StorageLocation) -> Result<Vec<String>, DatasetError> {
    let listing = Listing::of(location).await?;
    let mut written = Vec::new();
    for shard in listing.objects.iter().filter(|o| o.rel.ends_with(".tar")) {
        let index_rel = format!("{}{INDEX_SUFFIX}", shard.rel);
        if listing.get(&index_rel).is_none() {
            let index = index_shard(location, &shard.path).await?;
            location
                .put(&location.path_of(&index_rel)?, index.to_json())
                .await?;
            written.push(shard.rel.clone());
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dataset::list_dataset;
    use crate::storage::StorageOptions;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = TarBuilder::default();
        for (name, data) in members {
            builder.append(name, data).unwrap();
        }
        builder.finish()
    }

    async fn put(location: &StorageLocation, rel: &str, bytes: Vec<u8>) {
        location
            .put(&location.path_of(rel).unwrap(), Bytes::from(bytes))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn stale_index_is_an_error_naming_it() {
        let options = StorageOptions::default();
        let location = StorageLocation::parse("memory://tar-stale/d", &options).unwrap();
        let tar = tar_of(&[("a.jpg", b"1"), ("a.cls", b"0")]);
        let index =
            ShardIndex::from_members(tar.len() as u64 + 512, &scan_tar(&tar, is_cls).unwrap());
        put(&location, "s.tar", tar).await;
        put(&location, "s.tar.index.json", index.to_json()).await;
        let err = list_dataset(&location, &DatasetFormat::Tar)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("memory://tar-stale/d/s.tar.index.json: stale index"),
            "{err}"
        );
    }
}
