//! `pack --decoded`: a dataset decoded once into tar shards of preprocessed uint8 CHW pixels (see
//! `tresnet_common::dataset::decoded`), so that runs over it (a sweep's many checkpoints) skip the
//! decode. The pixels come from `tresnet-imaging`, the code the workers run, so they are the bytes a
//! worker would have produced from the source.
//!
//! Members are `<n>.rgb8` + `<n>.cls` (`n` the sample's position in the source listing), and each
//! shard index carries every sample's source key, so a run over the pack names its samples (and its
//! bad samples, with the same reasons) as a run over the source does. Samples the source listing
//! found bad, objects missing when packed, and images that do not decode are recorded as bad samples
//! in the first shard they fall into.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream;
use tokio::sync::Semaphore;
use tresnet_common::dataset::decoded::{DECODED_EXTENSION, DecodedPack, DecodedPixels};
use tresnet_common::dataset::tar::{
    DATASET_FILE, INDEX_SUFFIX, INDEX_VERSION, PackedDataset, ShardBad, ShardIndex, ShardSample,
    TarBuilder, TarError,
};
use tresnet_common::dataset::{DatasetError, DatasetIndex, SampleSource};
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_common::storage::{StorageError, StorageLocation};

use crate::pack::PackSummary;
use tresnet_imaging::{PreprocessError, Preprocessor};

/// Why a decoded pack could not be written. A sample that cannot be read or decoded is not one of
/// these: it becomes a bad sample of the pack.
#[derive(Debug, thiserror::Error)]
pub enum DecodedPackError {
    #[error("dataset {url} holds raw CIFAR records; decoded packs are made from encoded images")]
    Cifar { url: String },
    #[error("dataset {url} already is a decoded pack; pack its source instead")]
    AlreadyDecoded { url: String },
    #[error("cannot preprocess with these settings")]
    Preprocess(#[source] PreprocessError),
    // Boxed: a StorageError is large, and this error travels through every decode task's result.
    #[error("reading {url}")]
    Source {
        url: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error("writing the pack at {url}")]
    Destination {
        url: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error("writing shard {shard} of {url}")]
    Tar {
        url: String,
        shard: String,
        #[source]
        source: TarError,
    },
    #[error("a decode task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
}

/// Decodes every sample of `index` (read from `source`) with `config` and writes the pack under
/// `destination`, in shards of about `shard_size` bytes. `concurrency` objects are fetched at once and
/// `threads` images decoded at once, on tokio's blocking pool; the samples keep their source order.
pub async fn pack_decoded(
    index: &DatasetIndex,
    source: &StorageLocation,
    destination: &StorageLocation,
    config: &PreprocessConfig,
    shard_size: u64,
    concurrency: usize,
    threads: usize,
) -> Result<PackSummary, DecodedPackError> {
    if index.decoded.is_some() {
        return Err(DecodedPackError::AlreadyDecoded {
            url: source.url().to_string(),
        });
    }
    if index
        .samples
        .iter()
        .any(|s| matches!(s.source, SampleSource::CifarRecord { .. }))
    {
        return Err(DecodedPackError::Cifar {
            url: source.url().to_string(),
        });
    }
    // Settings the decoder refuses are the caller's error, reported once before any fetch.
    Preprocessor::new(config.clone()).map_err(DecodedPackError::Preprocess)?;
    let started = Instant::now();
    let decode = Arc::new(Semaphore::new(threads.max(1)));
    let mut results = stream::iter(index.samples.iter())
        .map(|sample| {
            let source = source.clone();
            let decode = decode.clone();
            let config = config.clone();
            async move {
                let fetched = match sample.source.byte_range() {
                    Some(range) => source.get_range(sample.source.path(), range).await,
                    None => source.get(sample.source.path()).await,
                };
                let bytes = match fetched {
                    Ok(bytes) => bytes,
                    // As a worker reports it: the object's absence is the sample's fault.
                    Err(e) if e.is_not_found() => return Ok(Err(e.to_string())),
                    Err(e) => {
                        return Err(DecodedPackError::Source {
                            url: source.object_url(sample.source.path()),
                            source: Box::new(e),
                        });
                    }
                };
                let permit = decode
                    .acquire_owned()
                    .await
                    .map_err(|e| DecodedPackError::Task(e.to_string()))?;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    match with_preprocessor(&config, |p| p.run(&bytes)) {
                        Ok(image) => Ok(Ok(image.data)),
                        // The decoder or the settings failed, not this image: every one would.
                        Err(e @ (PreprocessError::DecoderInit(_) | PreprocessError::Config(_))) => {
                            Err(DecodedPackError::Preprocess(e))
                        }
                        Err(e) => Ok(Err(e.to_string())),
                    }
                })
                .await
                .map_err(|e| DecodedPackError::Task(e.to_string()))?
            }
        })
        .buffered(concurrency.max(threads).max(1));

    let pixels = DecodedPixels::of(config);
    let mut writer = Writer::new(destination, shard_size);
    for (j, bad) in index.bad_samples.iter().enumerate() {
        writer.bad.push(ShardBad {
            key: format!("bad-{j:09}"),
            reason: bad.reason.clone(),
            source_key: Some(bad.key.to_string()),
        });
    }
    for (i, sample) in index.samples.iter().enumerate() {
        let result = results
            .next()
            .await
            .ok_or_else(|| DecodedPackError::Task("the decode stream ended early".into()))??;
        let key = format!("{i:09}");
        match result {
            Ok(data) => {
                writer
                    .add(key, sample.key.to_string(), sample.label, &data)
                    .await?
            }
            Err(reason) => writer.bad.push(ShardBad {
                key,
                reason,
                source_key: Some(sample.key.to_string()),
            }),
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
        decoded: Some(DecodedPack {
            source_fingerprint: index.fingerprint.clone(),
            source_format: index.format.clone(),
            pixels,
        }),
    };
    let json = serde_json::to_vec_pretty(&metadata).unwrap_or_default();
    summary.bytes += json.len() as u64;
    put(destination, DATASET_FILE, json).await?;
    tracing::info!(
        samples = summary.samples,
        bad = summary.bad_samples,
        seconds = started.elapsed().as_secs_f64(),
        "decoded pack written to {}",
        destination.url()
    );
    Ok(summary)
}

thread_local! {
    /// One preprocessor per blocking thread: the libjpeg-turbo handle and buffers are reused.
    static PREPROCESSOR: std::cell::RefCell<Option<Preprocessor>> = const { std::cell::RefCell::new(None) };
}

fn with_preprocessor<T>(
    config: &PreprocessConfig,
    f: impl FnOnce(&mut Preprocessor) -> Result<T, PreprocessError>,
) -> Result<T, PreprocessError> {
    PREPROCESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|p| p.config() != config) {
            *slot = Some(Preprocessor::new(config.clone())?);
        }
        f(slot.as_mut().expect("set above"))
    })
}

async fn put(
    destination: &StorageLocation,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), DecodedPackError> {
    let err = |source| DecodedPackError::Destination {
        url: destination.url().to_string(),
        source: Box::new(source),
    };
    let path = destination.path_of(name).map_err(err)?;
    destination.put(&path, bytes).await.map_err(err)
}

/// The shard being filled, written out when the next sample would take it past the target size.
struct Writer<'a> {
    destination: &'a StorageLocation,
    shard_size: u64,
    tar: TarBuilder,
    samples: Vec<ShardSample>,
    bad: Vec<ShardBad>,
    summary: PackSummary,
}

impl<'a> Writer<'a> {
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

    fn shard_name(&self) -> String {
        format!("shard-{:06}.tar", self.summary.shards.len())
    }

    async fn add(
        &mut self,
        key: String,
        source_key: String,
        label: u32,
        data: &[u8],
    ) -> Result<(), DecodedPackError> {
        let image = format!("{key}.{DECODED_EXTENSION}");
        let cls_name = format!("{key}.cls");
        let cls = label.to_string();
        let needed = TarBuilder::member_bytes(&image, data.len() as u64)
            + TarBuilder::member_bytes(&cls_name, cls.len() as u64);
        if !self.tar.is_empty() && self.tar.len() + needed > self.shard_size {
            self.flush().await?;
        }
        let (url, shard) = (self.destination.url().to_string(), self.shard_name());
        let tar_err = |source| DecodedPackError::Tar {
            url: url.clone(),
            shard: shard.clone(),
            source,
        };
        let offset = self.tar.append(&image, data).map_err(tar_err)?;
        self.tar
            .append(&cls_name, cls.as_bytes())
            .map_err(tar_err)?;
        self.samples.push(ShardSample {
            key,
            member: image,
            offset,
            size: data.len() as u64,
            label,
            source_key: Some(source_key),
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DecodedPackError> {
        let name = self.shard_name();
        let tar = std::mem::take(&mut self.tar).finish();
        let index = ShardIndex {
            version: INDEX_VERSION,
            shard_size: tar.len() as u64,
            samples: std::mem::take(&mut self.samples),
            bad: std::mem::take(&mut self.bad),
        };
        self.summary.samples += index.samples.len();
        self.summary.bad_samples += index.bad.len();
        self.summary.bytes += tar.len() as u64;
        put(self.destination, &name, tar).await?;
        let json = index.to_json();
        self.summary.bytes += json.len() as u64;
        put(self.destination, &format!("{name}{INDEX_SUFFIX}"), json).await?;
        self.summary.shards.push(name);
        Ok(())
    }

    /// Writes the last shard (also when empty, so that a pack of only bad samples still lists).
    async fn close(mut self) -> Result<PackSummary, DecodedPackError> {
        if !self.tar.is_empty() || !self.bad.is_empty() || self.summary.shards.is_empty() {
            self.flush().await?;
        }
        Ok(self.summary)
    }
}
