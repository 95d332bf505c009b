//! The test sets built on ImageNet-1k's classes, each with the trap it is known for:
//!
//! - **ImageNet-ReaL** (`imagenet-real`): the ImageNet-val images (class folders or the flat layout, as
//!   [`super::imagenet`] reads them) and ReaL's `real.json`, a JSON list of 50 000 label lists, entry
//!   *i* for `ILSVRC2012_val_{i+1:08}`. An image is correct at top-1 when its prediction is in its list
//!   and at top-5 when any of the five is; an image with an empty list is *excluded* (counted and
//!   reported, never evaluated). The image is matched to its list by the number in its file name, never
//!   by its position in a listing. `label` stays the original val label (for loss and per-class
//!   support); the lists are the index's `label_sets`.
//! - **ImageNetV2** (`imagenet-v2`, all three variants): folders `0` … `999` named by class *index*.
//!   A loader that sorts folders as strings puts `10` before `2` and scrambles every class; here the
//!   label is the folder's number, and a folder that is not a number in 0..=999 is an error.
//! - **ImageNet-A** / **ImageNet-R** (`imagenet-a`, `imagenet-r`): 200 WNID folders each. The folders
//!   map to the standard 1000-class indices by name (sorting them would give 0 … 199), and the format
//!   implies the class subset of the same name, so the logits are restricted to the 200 classes before
//!   top-k (see [`super::subset`]); a folder outside those 200 is an error.
//! - **ImageNet-Sketch** (`imagenet-sketch`): 1000 WNID folders, mapped by name like ImageNet-val's
//!   class folders, so a missing folder shifts no other class.

use super::imagefolder::mapped_class_folder_samples;
use super::imagenet::{self, val_image_number};
use super::{DatasetError, DatasetFormat, DatasetIndex, ExcludedSample, Listing, read_listed};
use crate::storage::StorageLocation;

/// The name ReaL's label file is found by when no path is given.
pub const REAL_LABELS: &str = "real.json";

/// The 1000 WNIDs as class names and the lemmas as descriptions, for `samples` in standard indices.
fn imagenet_classes(
    location: &StorageLocation,
    format: DatasetFormat,
    samples: Vec<super::Sample>,
) -> Result<DatasetIndex, DatasetError> {
    let class_names = imagenet::synsets().iter().map(|s| s.to_string()).collect();
    let mut index = DatasetIndex::new(location.url(), format, class_names, samples, vec![])?;
    index.class_descriptions = Some(imagenet::lemmas().iter().map(|s| s.to_string()).collect());
    Ok(index)
}

/// ImageNet-A, -R and -Sketch: WNID class folders in standard indices; A and R must stay within their
/// 200 classes.
pub(crate) async fn list_wnid_folders(
    location: &StorageLocation,
    format: &DatasetFormat,
) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let samples = imagenet::class_folder_samples(location, &listing)?;
    if let Some(subset) = format.implied_subset() {
        let mut outside: Vec<&str> = samples
            .iter()
            .filter(|s| subset.position(s.label).is_none())
            .map(|s| imagenet::synsets()[s.label as usize])
            .collect();
        outside.dedup();
        if !outside.is_empty() {
            return Err(DatasetError::invalid(
                location.url(),
                format!(
                    "folders that are not among {}'s 200 classes: {}",
                    format.name(),
                    outside
                        .iter()
                        .take(5)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    imagenet_classes(location, format.clone(), samples)
}

/// A V2 folder name as a class index: canonical decimal (`7`, not `07`), below 1000.
fn v2_class(folder: &str) -> Option<u32> {
    let canonical = !folder.is_empty()
        && folder.bytes().all(|b| b.is_ascii_digit())
        && (folder == "0" || !folder.starts_with('0'));
    canonical
        .then(|| folder.parse::<u32>().ok())
        .flatten()
        .filter(|&c| (c as usize) < imagenet::synsets().len())
}

/// ImageNetV2: the folder's number is the class index.
pub(crate) async fn list_v2(location: &StorageLocation) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let samples = mapped_class_folder_samples(location, &listing.objects, v2_class, |bad| {
        format!("ImageNetV2 folders are class indices 0 to 999, not: {bad}")
    })?;
    imagenet_classes(location, DatasetFormat::ImageNetV2, samples)
}

/// ImageNet-ReaL: the val images as [`imagenet::list`] reads them, with their ReaL label lists; images
/// with an empty list are excluded.
pub(crate) async fn list_real(
    location: &StorageLocation,
    labels: Option<&str>,
) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let format = DatasetFormat::ImageNetReal {
        labels: labels.map(str::to_string),
    };
    let file = match labels {
        Some(rel) => listing.get(rel).ok_or_else(|| DatasetError::NotFound {
            url: location.url().to_string(),
            what: format!("ReaL labels {rel}"),
        })?,
        None => listing.require_named(location, REAL_LABELS)?,
    };
    let file_url = location.object_url(&file.path);
    let lists: Vec<Vec<u32>> = serde_json::from_slice(&read_listed(location, file).await?)
        .map_err(|e| {
            DatasetError::invalid(
                &file_url,
                format!("not a JSON list of label lists (ReaL's real.json): {e}"),
            )
        })?;
    let val = imagenet::list_in(location, &listing, None, None, format.clone()).await?;
    let mut samples = Vec::with_capacity(val.samples.len());
    let mut sets = Vec::with_capacity(val.samples.len());
    let mut excluded = Vec::new();
    for sample in val.samples {
        let name = sample.key.as_str().rsplit('/').next().unwrap_or_default();
        let number = val_image_number(name).ok_or_else(|| {
            DatasetError::invalid(
                location.url(),
                format!(
                    "{} is not named ILSVRC2012_val_NNNNNNNN, so it has no ReaL label list",
                    sample.key
                ),
            )
        })?;
        let list = number
            .checked_sub(1)
            .and_then(|i| lists.get(i as usize))
            .ok_or_else(|| {
                DatasetError::invalid(
                    &file_url,
                    format!(
                        "has {} label lists, none for image {number} ({})",
                        lists.len(),
                        sample.key
                    ),
                )
            })?;
        if list.is_empty() {
            excluded.push(ExcludedSample {
                key: sample.key,
                reason: "empty ReaL label list".into(),
            });
        } else {
            let mut list = list.clone();
            list.sort_unstable();
            list.dedup();
            sets.push(list);
            samples.push(sample);
        }
    }
    let url = location.url().to_string();
    let mut index = DatasetIndex::new(&url, format, val.class_names, samples, val.bad_samples)?;
    index.class_descriptions = val.class_descriptions;
    index.set_label_sets(&url, sets)?;
    index.set_excluded(excluded);
    Ok(index)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dataset::list_dataset;
    use crate::storage::StorageOptions;

    async fn location_with(name: &str, files: &[(&str, &[u8])]) -> StorageLocation {
        let location =
            StorageLocation::parse(&format!("memory://{name}/data"), &StorageOptions::default())
                .unwrap();
        for (rel, bytes) in files {
            location
                .put(
                    &location.path_of(rel).unwrap(),
                    Bytes::copy_from_slice(bytes),
                )
                .await
                .unwrap();
        }
        location
    }

    fn labels_of(index: &DatasetIndex) -> Vec<(&str, u32)> {
        index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label))
            .collect()
    }

    #[tokio::test]
    async fn v2_folders_are_class_numbers_not_string_order() {
        let location = location_with(
            "v2-order",
            &[("10/a.jpeg", b"x"), ("2/b.jpeg", b"y"), ("999/c.png", b"z")],
        )
        .await;
        let index = list_dataset(&location, &DatasetFormat::ImageNetV2)
            .await
            .unwrap();
        assert_eq!(
            labels_of(&index),
            [("2/b.jpeg", 2), ("10/a.jpeg", 10), ("999/c.png", 999)]
        );
        assert_eq!(index.class_names.len(), 1000);
        assert_eq!(index.class_names[2], "n01484850");
        assert_eq!(index.class_names[10], "n01530575");
        for bad in ["07", "1000", "n01440764", "-1"] {
            let location =
                location_with(&format!("v2-bad{bad}"), &[(&format!("{bad}/a.jpeg"), b"x")]).await;
            let e = list_dataset(&location, &DatasetFormat::ImageNetV2)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("class indices 0 to 999") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn a_and_r_folders_keep_standard_indices_and_stay_in_their_subset() {
        // n01498041 (stingray) is class 6, the first of ImageNet-A's 200 (and one of ImageNet-R's);
        // n01558993 (robin, 15) is in A but not in R.
        let location = location_with(
            "a-ok",
            &[("n01498041/a.jpg", b"x"), ("n01558993/b.jpg", b"y")],
        )
        .await;
        let index = list_dataset(&location, &DatasetFormat::ImageNetA)
            .await
            .unwrap();
        assert_eq!(
            labels_of(&index),
            [("n01498041/a.jpg", 6), ("n01558993/b.jpg", 15)]
        );
        let e = list_dataset(&location, &DatasetFormat::ImageNetR)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not among imagenet-r's 200 classes: n01558993"),
            "{e}"
        );
        let sketch = list_dataset(&location, &DatasetFormat::ImageNetSketch)
            .await
            .unwrap();
        assert_eq!(labels_of(&sketch), labels_of(&index));
        assert_ne!(sketch.fingerprint, index.fingerprint);
    }

    #[tokio::test]
    async fn real_lists_follow_the_image_number_and_empty_lists_are_excluded() {
        // Image 1 has an empty list, 2 has two labels, 4 has one; image 3 is absent.
        let real = br#"[[], [970, 795], [230, 231], [809]]"#;
        let location = location_with(
            "real",
            &[
                ("real.json", real),
                ("n01440764/ILSVRC2012_val_00000004.JPEG", b"a"),
                ("n01440764/ILSVRC2012_val_00000001.JPEG", b"b"),
                ("n01443537/ILSVRC2012_val_00000002.JPEG", b"c"),
            ],
        )
        .await;
        let format: DatasetFormat = "imagenet-real".parse().unwrap();
        let index = list_dataset(&location, &format).await.unwrap();
        assert_eq!(
            labels_of(&index),
            [
                ("n01440764/ILSVRC2012_val_00000004.JPEG", 0),
                ("n01443537/ILSVRC2012_val_00000002.JPEG", 1)
            ]
        );
        assert_eq!(
            index.label_sets.as_deref().unwrap(),
            [vec![809], vec![795, 970]]
        );
        assert_eq!(index.accepted(1), [795, 970]);
        assert_eq!(index.excluded.len(), 1);
        assert_eq!(
            index.excluded[0].key.as_str(),
            "n01440764/ILSVRC2012_val_00000001.JPEG"
        );
        assert_eq!(index.len(), 2);

        // The lists are part of the fingerprint.
        let other = location_with(
            "real-other",
            &[
                ("real.json", br#"[[], [970], [230, 231], [809]]"#),
                ("n01440764/ILSVRC2012_val_00000004.JPEG", b"a"),
                ("n01440764/ILSVRC2012_val_00000001.JPEG", b"b"),
                ("n01443537/ILSVRC2012_val_00000002.JPEG", b"c"),
            ],
        )
        .await;
        let other = list_dataset(&other, &format).await.unwrap();
        assert_ne!(other.fingerprint, index.fingerprint);

        // An image beyond the file's lists, and a file that is not ReaL's shape, are named.
        let short = location_with(
            "real-short",
            &[
                ("real.json", b"[[1]]"),
                ("n01440764/ILSVRC2012_val_00000002.JPEG", b"a"),
            ],
        )
        .await;
        let e = list_dataset(&short, &format).await.unwrap_err().to_string();
        assert!(e.contains("has 1 label lists, none for image 2"), "{e}");
        let garbled = location_with(
            "real-garbled",
            &[
                ("real.json", br#"{"a": 1}"#),
                ("n01440764/ILSVRC2012_val_00000002.JPEG", b"a"),
            ],
        )
        .await;
        let e = list_dataset(&garbled, &format)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("real.json") && e.contains("not a JSON list of label lists"),
            "{e}"
        );
        let out_of_range = location_with(
            "real-range",
            &[
                ("real.json", b"[[1000]]"),
                ("n01440764/ILSVRC2012_val_00000001.JPEG", b"a"),
            ],
        )
        .await;
        let e = list_dataset(&out_of_range, &format).await.unwrap_err();
        assert!(
            matches!(e, DatasetError::LabelOutOfRange { label: 1000, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_subset_relabels_and_excludes_outside_classes() {
        let location = location_with(
            "subset",
            &[
                ("n01498041/a.jpg", b"x"),
                ("n01440764/b.jpg", b"y"),
                ("n01531178/c.jpg", b"z"),
            ],
        )
        .await;
        let index = list_dataset(&location, &"imagenet".parse().unwrap())
            .await
            .unwrap();
        let subset = crate::dataset::ClassSubset::builtin("imagenet-a").unwrap();
        let r = crate::dataset::subset::restrict(index.clone(), &subset, "memory://subset/data")
            .unwrap();
        assert_eq!(r.class_names.len(), 200);
        assert_eq!(r.class_names[0], "n01498041");
        assert_eq!(
            r.class_descriptions.as_ref().unwrap()[0],
            imagenet::lemmas()[6]
        );
        assert_eq!(
            labels_of(&r),
            [("n01498041/a.jpg", 0), ("n01531178/c.jpg", 1)]
        );
        assert_eq!(r.excluded.len(), 1);
        assert_eq!(
            r.excluded[0].reason,
            "class n01440764 (index 0) is outside the class subset"
        );
        assert_ne!(r.fingerprint, index.fingerprint);
    }
}
