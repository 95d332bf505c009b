//! torchvision `ImageFolder`: `root/<class>/**/<image>`.
//!
//! Class index convention (torchvision's `find_classes`): the top-level folders sorted by name
//! (code-point order, which is Rust's `str` order); label = position in that list. Every file below a
//! class folder, at any depth, whose name ends (case-insensitively) in one of [`IMG_EXTENSIONS`] is a
//! sample; files directly under the root and other extensions are ignored, as torchvision does.
//!
//! Object stores have no empty folders, so a class exists only if some object lies below it; a class
//! folder with objects but no image among them is an error, as in torchvision
//! (`Found no valid file for the classes …`). Samples are ordered by (label, path). Keys are the paths
//! relative to the root.

use std::collections::BTreeMap;

use super::{DatasetError, DatasetFormat, DatasetIndex, Listed, Listing, Sample, SampleSource};
use crate::storage::StorageLocation;

pub use tresnet_formats::image_files::{IMG_EXTENSIONS, has_image_extension};

pub(crate) async fn list(location: &StorageLocation) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    index_from_listing(location, &listing, DatasetFormat::ImageFolder)
}

/// Builds the ImageFolder index from a listing; shared with the ImageNet class-folder layout, which
/// then remaps labels to the standard synset order.
pub(crate) fn index_from_listing(
    location: &StorageLocation,
    listing: &Listing,
    format: DatasetFormat,
) -> Result<DatasetIndex, DatasetError> {
    let (class_names, samples) = classes_and_samples(location, &listing.objects)?;
    DatasetIndex::new(location.url(), format, class_names, samples, vec![])
}

/// Folders the refusal of an unmapped layout names: enough to see the pattern without flooding the
/// message when a whole tree is of the wrong kind.
const UNMAPPED_FOLDERS_NAMED: usize = 5;

/// The samples of a folder-per-class layout whose folder names `class_of` maps to class indices
/// (WNIDs, numbered folders), sorted by (class, key). A folder it does not map is an error naming
/// the first few: `unmapped` turns their comma-separated list into the message.
pub(crate) fn mapped_class_folder_samples(
    location: &StorageLocation,
    objects: &[Listed],
    class_of: impl Fn(&str) -> Option<u32>,
    unmapped: impl FnOnce(&str) -> String,
) -> Result<Vec<Sample>, DatasetError> {
    let (folders, mut samples) = classes_and_samples(location, objects)?;
    let mapped: Vec<Option<u32>> = folders.iter().map(|f| class_of(f)).collect();
    let unknown: Vec<&str> = folders
        .iter()
        .zip(&mapped)
        .filter(|(_, m)| m.is_none())
        .map(|(f, _)| f.as_str())
        .take(UNMAPPED_FOLDERS_NAMED)
        .collect();
    if !unknown.is_empty() {
        return Err(DatasetError::invalid(
            location.url(),
            unmapped(&unknown.join(", ")),
        ));
    }
    for sample in &mut samples {
        sample.label = mapped[sample.label as usize].unwrap_or_default();
    }
    samples.sort_by(|a, b| (a.label, &a.key).cmp(&(b.label, &b.key)));
    Ok(samples)
}

pub(crate) fn classes_and_samples(
    location: &StorageLocation,
    objects: &[Listed],
) -> Result<(Vec<String>, Vec<Sample>), DatasetError> {
    // BTreeMap: sorted class names, the torchvision order.
    let mut classes: BTreeMap<&str, Vec<&Listed>> = BTreeMap::new();
    for object in objects {
        let Some((class, _)) = object.rel.split_once('/') else {
            continue;
        };
        let images = classes.entry(class).or_default();
        if has_image_extension(object.file_name()) {
            images.push(object);
        }
    }
    if classes.is_empty() {
        return Err(DatasetError::NotFound {
            url: location.url().to_string(),
            what: "class folders (expected <root>/<class>/<image>)".into(),
        });
    }
    let empty: Vec<&str> = classes
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(k, _)| *k)
        .collect();
    if !empty.is_empty() {
        return Err(DatasetError::invalid(
            location.url(),
            format!(
                "class folders without any image ({}): found no file with an extension in {:?}",
                empty.join(", "),
                IMG_EXTENSIONS
            ),
        ));
    }
    let mut samples = Vec::new();
    let mut class_names = Vec::with_capacity(classes.len());
    for (label, (class, images)) in classes.into_iter().enumerate() {
        class_names.push(class.to_string());
        samples.extend(images.into_iter().map(|object| Sample {
            key: object.rel.clone().into(),
            label: label as u32,
            source: SampleSource::Object {
                path: object.path.clone(),
                size: Some(object.size),
            },
        }));
    }
    Ok((class_names, samples))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::StorageOptions;

    async fn location_with(name: &str, files: &[(&str, usize)]) -> StorageLocation {
        let location =
            StorageLocation::parse(&format!("memory://{name}/data"), &StorageOptions::default())
                .unwrap();
        for (rel, size) in files {
            location
                .put(
                    &location.path_of(rel).unwrap(),
                    Bytes::from(vec![0u8; *size]),
                )
                .await
                .unwrap();
        }
        location
    }

    #[tokio::test]
    async fn classes_are_sorted_folders_and_extensions_case_insensitive() {
        let location = location_with(
            "if-basic",
            &[
                ("zebra/1.JPG", 3),
                ("Zebra/2.png", 4),
                ("ant/sub/deep/3.jpeg", 5),
                ("ant/readme.txt", 1),
                ("ant/4.WebP", 6),
                ("top-level.jpg", 7),
                ("bee/5.tiff", 8),
            ],
        )
        .await;
        let index = list(&location).await.unwrap();
        // Uppercase sorts before lowercase, as in Python's sorted().
        assert_eq!(index.class_names, ["Zebra", "ant", "bee", "zebra"]);
        let got: Vec<(&str, u32, Option<u64>)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label, s.source.size()))
            .collect();
        assert_eq!(
            got,
            [
                ("Zebra/2.png", 0, Some(4)),
                ("ant/4.WebP", 1, Some(6)),
                ("ant/sub/deep/3.jpeg", 1, Some(5)),
                ("bee/5.tiff", 2, Some(8)),
                ("zebra/1.JPG", 3, Some(3)),
            ]
        );
        assert_eq!(index.samples[0].source.path().as_ref(), "data/Zebra/2.png");
        assert!(index.bad_samples.is_empty());
    }

    #[tokio::test]
    async fn a_class_folder_without_images_is_an_error_naming_it() {
        let location = location_with("if-empty-class", &[("a/1.jpg", 1), ("notes/x.txt", 1)]).await;
        let err = list(&location).await.unwrap_err().to_string();
        assert!(
            err.contains("notes") && err.contains("memory://if-empty-class/data"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_empty_location_is_an_error() {
        let location = location_with("if-nothing", &[]).await;
        let err = list(&location).await.unwrap_err().to_string();
        assert!(err.starts_with("no class folders"), "{err}");
    }

    #[test]
    fn extensions_match_torchvision() {
        assert!(has_image_extension("a.JPEG"));
        assert!(has_image_extension("a.b.pgm"));
        assert!(!has_image_extension("a.gif"));
        assert!(!has_image_extension("jpg"));
    }
}
