//! Dataset readers: turn a location in an object store into a [`DatasetIndex`] — every sample's stable
//! key, class index and byte source — for each supported on-disk format. Reading and decoding the
//! samples is the worker's job; these readers only fetch the metadata (listings, label files, indexes).
//!
//! | format | module | class index |
//! |---|---|---|
//! | ImageFolder | [`imagefolder`] | position of the top-level folder in sorted order (torchvision) |
//! | ImageNet-val | [`imagenet`] | position of the synset in the standard sorted 1000-synset list |
//! | CIFAR-10/100 | [`cifar`] | the record's label byte (fine label for CIFAR-100) |
//! | Flowers-102 | [`flowers`] | `imagelabels.mat` label − 1 |
//! | Stanford Cars | [`cars`] | annotation `class` − 1, names from `cars_meta.mat` |
//! | CSV / Parquet manifest | [`manifest`] | the `label` column as written |
//! | tar shards | [`tar`] | the `.cls` member as written |
//! | ImageNet-ReaL, -V2, -A, -R, -Sketch | [`imagenet_variants`] | the standard 1000-class index (V2: the folder's number) |
//!
//! Errors: metadata that cannot be read or is inconsistent fails the listing with a [`DatasetError`]
//! naming the object (and line); a problem confined to one sample becomes a [`BadSample`]. See
//! [`error`] for the rule. Parquet manifests need the `parquet-manifest` feature (polars), which the
//! coordinator enables.

pub mod cars;
pub mod cifar;
pub mod decoded;
pub mod error;
pub mod flowers;
pub mod format;
pub mod imagefolder;
pub mod imagenet;
pub mod imagenet_variants;
pub mod index;
pub mod manifest;
pub mod names;
pub mod sample;
pub mod subset;
pub mod tar;

pub use tresnet_formats::mat;

use std::collections::HashMap;

use bytes::Bytes;
use object_store::path::Path;

pub use error::DatasetError;
pub use format::{CifarSplit, DatasetFormat, FlowersSplit};
pub use index::DatasetIndex;
pub use sample::{BadSample, CIFAR_PIXEL_BYTES, ExcludedSample, Sample, SampleKey, SampleSource};
pub use subset::ClassSubset;

use crate::storage::StorageLocation;

/// Lists the dataset at `location` in `format`.
pub async fn list_dataset(
    location: &StorageLocation,
    format: &DatasetFormat,
) -> Result<DatasetIndex, DatasetError> {
    match format {
        DatasetFormat::ImageFolder => imagefolder::list(location).await,
        DatasetFormat::ImageNet {
            ground_truth,
            synset_map,
        } => imagenet::list(location, ground_truth.as_deref(), synset_map.as_deref()).await,
        DatasetFormat::Cifar10 { split } => {
            cifar::list(location, cifar::CifarVariant::Cifar10, *split).await
        }
        DatasetFormat::Cifar100 { split } => {
            cifar::list(location, cifar::CifarVariant::Cifar100, *split).await
        }
        DatasetFormat::Flowers102 { split } => flowers::list(location, *split).await,
        DatasetFormat::StanfordCars { images_dir } => cars::list(location, images_dir).await,
        DatasetFormat::Manifest {
            file,
            allow_absolute_paths,
        } => manifest::list(location, file.as_deref(), *allow_absolute_paths).await,
        DatasetFormat::Tar => tar::list(location).await,
        DatasetFormat::ImageNetReal { labels } => {
            imagenet_variants::list_real(location, labels.as_deref()).await
        }
        DatasetFormat::ImageNetV2 => imagenet_variants::list_v2(location).await,
        DatasetFormat::ImageNetA | DatasetFormat::ImageNetR | DatasetFormat::ImageNetSketch => {
            imagenet_variants::list_wnid_folders(location, format).await
        }
    }
}

/// One listed object.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub path: Path,
    /// Relative to the dataset prefix, slash-separated.
    pub rel: String,
    pub size: u64,
}

impl Listed {
    pub fn file_name(&self) -> &str {
        self.rel.rsplit('/').next().unwrap_or(&self.rel)
    }
}

/// Every object under a dataset's prefix, sorted by relative path, with lookups by path and by name.
#[derive(Debug)]
pub(crate) struct Listing {
    pub objects: Vec<Listed>,
    by_rel: HashMap<String, usize>,
}

impl Listing {
    pub async fn of(location: &StorageLocation) -> Result<Self, DatasetError> {
        let objects: Vec<Listed> = location
            .list()
            .await
            .map_err(|e| names::explain_list_failure(location, e))?
            .into_iter()
            .filter_map(|meta| {
                let rel = location.relative(&meta.location)?;
                (!rel.is_empty()).then_some(Listed {
                    path: meta.location,
                    rel,
                    size: meta.size,
                })
            })
            .collect();
        Ok(Self::from_objects(objects))
    }

    pub fn from_objects(mut objects: Vec<Listed>) -> Self {
        objects.sort_by(|a, b| a.rel.cmp(&b.rel));
        let by_rel = objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.rel.clone(), i))
            .collect();
        Self { objects, by_rel }
    }

    pub fn get(&self, rel: &str) -> Option<&Listed> {
        self.by_rel.get(rel).map(|&i| &self.objects[i])
    }

    /// The one object called `name` (any folder), `None` if absent; several is ambiguous and an error.
    pub fn unique_named(
        &self,
        location: &StorageLocation,
        name: &str,
    ) -> Result<Option<&Listed>, DatasetError> {
        let mut found = self.objects.iter().filter(|o| o.file_name() == name);
        let first = found.next();
        if let (Some(a), Some(b)) = (first, found.next()) {
            return Err(DatasetError::invalid(
                location.url(),
                format!(
                    "several files named {name} ({} and {}); point the dataset location at one of their folders",
                    a.rel, b.rel
                ),
            ));
        }
        Ok(first)
    }

    /// Like [`Self::unique_named`] but required.
    pub fn require_named(
        &self,
        location: &StorageLocation,
        name: &str,
    ) -> Result<&Listed, DatasetError> {
        self.unique_named(location, name)?
            .ok_or_else(|| DatasetError::NotFound {
                url: location.url().to_string(),
                what: name.to_string(),
            })
    }
}

/// Reads a metadata object whole. Metadata files are small (≤ tens of MB); samples are never read here.
pub(crate) async fn read_listed(
    location: &StorageLocation,
    listed: &Listed,
) -> Result<Bytes, DatasetError> {
    Ok(location.get(&listed.path).await?)
}

/// The relative path's parent folder (`""` at the top), for resolving siblings.
pub(crate) fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// `dir/name`, or `name` when `dir` is the top.
pub(crate) fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}
