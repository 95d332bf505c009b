//! ImageNet-1k validation (ILSVRC2012), in either layout:
//!
//! - **class folders**: `<root>/n01440764/ILSVRC2012_val_00000293.JPEG` (what timm and torchvision
//!   read as an ImageFolder);
//! - **flat**: the 50 000 `ILSVRC2012_val_NNNNNNNN.JPEG` in any folder under the root, labelled by a
//!   ground-truth file: Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`, the first WNID
//!   of the prediction string is the class), or the devkit's `ILSVRC2012_validation_ground_truth.txt`
//!   (line *i* holds the ILSVRC2012_ID of image *i*).
//!
//! Class index convention: the position of the synset in the standard sorted list of the 1000 WNIDs
//! (`n01440764` = 0 … `n15075141` = 999), the index every ImageNet-1k classifier (timm, torchvision)
//! is trained with. In the class-folder layout this equals ImageFolder's order only when all 1000
//! folders are present, so the folders are mapped by name: a subset of classes keeps the standard
//! indices. Class names are the WNIDs; `class_descriptions` are the WordNet lemmas. Both lists ship
//! with the project (`common/data/`, copied from timm).
//!
//! The devkit's ILSVRC2012_IDs are **not** in sorted-WNID order (they follow the devkit's `meta.mat`,
//! e.g. ID 1 is `n02119789`, the kit fox, while index 0 is the tench), so the `.txt` ground truth needs
//! the ID → WNID map: the devkit's `data/meta.mat` anywhere under the root (found by name), or a file
//! passed as `synset_map` (that `meta.mat`, or a text file with one WNID per line in ID order). Without
//! one the listing fails and says so rather than guessing.
//!
//! In the flat layout an image with no ground-truth entry is a dataset error (the file does not describe
//! these images); ground-truth entries without an image are ignored, so a subset of the images can be
//! evaluated. Keys are paths relative to the root.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::imagefolder::{has_image_extension, mapped_class_folder_samples};
use super::mat::{MatFile, as_index};
use super::{
    DatasetError, DatasetFormat, DatasetIndex, Listed, Listing, Sample, SampleSource, read_listed,
};
use crate::storage::StorageLocation;

/// Kaggle's ground truth file.
pub const LOC_SOLUTION: &str = "LOC_val_solution.csv";
/// The devkit's ground truth file.
pub const DEVKIT_GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
/// The devkit's synset table, with the ILSVRC2012_ID → WNID map.
pub const DEVKIT_META: &str = "meta.mat";

const SYNSETS_TXT: &str = include_str!("../../data/imagenet_synsets.txt");
const LEMMAS_TXT: &str = include_str!("../../data/imagenet_synset_to_lemma.txt");

static SYNSETS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| SYNSETS_TXT.lines().map(str::trim).collect());
static LEMMAS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let by_wnid: HashMap<&str, &str> = LEMMAS_TXT
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .collect();
    SYNSETS
        .iter()
        .map(|wnid| by_wnid.get(wnid).copied().unwrap_or(""))
        .collect()
});

/// The 1000 WNIDs in class-index order (sorted).
pub fn synsets() -> &'static [&'static str] {
    &SYNSETS
}

/// The WordNet lemmas (`tench, Tinca tinca`) in class-index order.
pub fn lemmas() -> &'static [&'static str] {
    &LEMMAS
}

/// The class index of a WNID.
pub fn class_index(wnid: &str) -> Option<u32> {
    SYNSETS.binary_search(&wnid).ok().map(|i| i as u32)
}

pub(crate) async fn list(
    location: &StorageLocation,
    ground_truth: Option<&str>,
    synset_map: Option<&str>,
) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let format = DatasetFormat::ImageNet {
        ground_truth: ground_truth.map(str::to_string),
        synset_map: synset_map.map(str::to_string),
    };
    list_in(location, &listing, ground_truth, synset_map, format).await
}

/// [`list`] from a listing already made, recording `format` (ImageNet-ReaL reads the same images).
pub(crate) async fn list_in(
    location: &StorageLocation,
    listing: &Listing,
    ground_truth: Option<&str>,
    synset_map: Option<&str>,
    format: DatasetFormat,
) -> Result<DatasetIndex, DatasetError> {
    let ground_truth = match ground_truth {
        Some(rel) => Some(listing.get(rel).ok_or_else(|| DatasetError::NotFound {
            url: location.url().to_string(),
            what: format!("ground-truth file {rel}"),
        })?),
        None => match listing.unique_named(location, LOC_SOLUTION)? {
            Some(found) => Some(found),
            None => listing.unique_named(location, DEVKIT_GROUND_TRUTH)?,
        },
    };
    let samples = match ground_truth {
        None => class_folder_samples(location, listing)?,
        Some(gt) => {
            let labels = if gt.rel.ends_with(".csv") {
                parse_loc_solution(location, gt, &read_listed(location, gt).await?)?
            } else {
                let map = id_to_class(location, listing, synset_map).await?;
                parse_devkit_ground_truth(location, gt, &read_listed(location, gt).await?, &map)?
            };
            flat_samples(location, listing, gt, &labels)?
        }
    };
    let class_names = synsets().iter().map(|s| s.to_string()).collect();
    let mut index = DatasetIndex::new(location.url(), format, class_names, samples, vec![])?;
    index.class_descriptions = Some(lemmas().iter().map(|s| s.to_string()).collect());
    Ok(index)
}

pub(crate) fn class_folder_samples(
    location: &StorageLocation,
    listing: &Listing,
) -> Result<Vec<Sample>, DatasetError> {
    mapped_class_folder_samples(location, &listing.objects, class_index, |unknown| {
        format!(
            "folders that are not ImageNet-1k synsets: {unknown} (expected WNIDs such as n01440764, \
             or a ground-truth file for the flat layout)"
        )
    })
}

/// The image number of `ILSVRC2012_val_00000293.JPEG` (293).
pub fn val_image_number(file_name: &str) -> Option<u32> {
    let stem = file_name.split('.').next()?;
    let digits = stem.strip_prefix("ILSVRC2012_val_")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

fn flat_samples(
    location: &StorageLocation,
    listing: &Listing,
    ground_truth: &Listed,
    labels: &HashMap<u32, u32>,
) -> Result<Vec<Sample>, DatasetError> {
    let mut samples = Vec::new();
    for object in &listing.objects {
        let name = object.file_name();
        let Some(number) = val_image_number(name).filter(|_| has_image_extension(name)) else {
            continue;
        };
        let label = *labels.get(&number).ok_or_else(|| {
            DatasetError::invalid(
                location.object_url(&object.path),
                format!(
                    "no ground-truth entry in {} for this image",
                    ground_truth.rel
                ),
            )
        })?;
        samples.push(Sample {
            key: object.rel.clone().into(),
            label,
            source: SampleSource::Object {
                path: object.path.clone(),
                size: Some(object.size),
            },
        });
    }
    if samples.is_empty() {
        return Err(DatasetError::NotFound {
            url: location.url().to_string(),
            what: "ILSVRC2012_val_*.JPEG images (flat layout)".into(),
        });
    }
    Ok(samples)
}

/// `LOC_val_solution.csv` → image number → class index.
pub(crate) fn parse_loc_solution(
    location: &StorageLocation,
    file: &Listed,
    bytes: &[u8],
) -> Result<HashMap<u32, u32>, DatasetError> {
    let url = location.object_url(&file.path);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let mut labels = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| DatasetError::invalid(&url, format!("csv: {e}")))?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |reason: String| DatasetError::Line {
            url: url.clone(),
            line,
            reason,
        };
        let image = record.get(0).unwrap_or("");
        let number = val_image_number(image)
            .ok_or_else(|| bad(format!("{image:?} is not an ILSVRC2012_val image id")))?;
        let wnid = record
            .get(1)
            .and_then(|p| p.split_whitespace().next())
            .ok_or_else(|| bad("empty PredictionString".into()))?;
        let class = class_index(wnid)
            .ok_or_else(|| bad(format!("{wnid:?} is not an ImageNet-1k synset")))?;
        if labels.insert(number, class).is_some() {
            return Err(bad(format!("second entry for {image}")));
        }
    }
    Ok(labels)
}

/// The devkit ground truth → image number → class index, through the ID → class map.
pub(crate) fn parse_devkit_ground_truth(
    location: &StorageLocation,
    file: &Listed,
    bytes: &[u8],
    id_to_class: &[u32],
) -> Result<HashMap<u32, u32>, DatasetError> {
    let url = location.object_url(&file.path);
    let text = std::str::from_utf8(bytes)
        .map_err(|e| DatasetError::invalid(&url, format!("not text: {e}")))?;
    let mut labels = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let class = trimmed
            .parse::<usize>()
            .ok()
            .and_then(|id| id.checked_sub(1))
            .and_then(|id| id_to_class.get(id))
            .ok_or_else(|| DatasetError::Line {
                url: url.clone(),
                line: line_no,
                reason: format!("{trimmed:?} is not an ILSVRC2012_ID in 1..=1000"),
            })?;
        labels.insert(line_no as u32, *class);
    }
    Ok(labels)
}

/// ILSVRC2012_ID − 1 → class index, from `meta.mat` or a WNID-per-line text file.
async fn id_to_class(
    location: &StorageLocation,
    listing: &Listing,
    synset_map: Option<&str>,
) -> Result<Vec<u32>, DatasetError> {
    let file = match synset_map {
        Some(rel) => listing.get(rel).ok_or_else(|| DatasetError::NotFound {
            url: location.url().to_string(),
            what: format!("synset map {rel}"),
        })?,
        None => listing.unique_named(location, DEVKIT_META)?.ok_or_else(|| {
            DatasetError::invalid(
                location.url(),
                format!(
                    "{DEVKIT_GROUND_TRUTH} holds devkit ILSVRC2012_IDs, whose order is not the sorted \
                     synset order; put the devkit's data/{DEVKIT_META} under the dataset location or pass \
                     a synset map (one WNID per line in ILSVRC2012_ID order)"
                ),
            )
        })?,
    };
    let url = location.object_url(&file.path);
    let bytes = read_listed(location, file).await?;
    let wnids = if file.rel.ends_with(".mat") {
        let mat = MatFile::parse(&bytes).map_err(|source| DatasetError::Mat {
            url: url.clone(),
            source,
        })?;
        devkit_wnids(&mat).map_err(|reason| DatasetError::invalid(&url, reason))?
    } else {
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| DatasetError::invalid(&url, format!("not text: {e}")))?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
            .collect()
    };
    id_map_from_wnids(&wnids).map_err(|reason| DatasetError::invalid(&url, reason))
}

/// WNIDs in ILSVRC2012_ID order from the devkit's `synsets` struct (IDs 1..=1000 are the leaves).
pub(crate) fn devkit_wnids(mat: &MatFile) -> Result<Vec<String>, String> {
    let synsets = mat.require("synsets").map_err(|e| e.to_string())?;
    let mut by_id = vec![String::new(); 1000];
    for element in 0..synsets.numel() {
        let id = synsets
            .field(element, "ILSVRC2012_ID")
            .and_then(|v| v.numbers())
            .and_then(|n| n.first().copied())
            .and_then(as_index)
            .ok_or_else(|| format!("synsets({}) has no numeric ILSVRC2012_ID", element + 1))?;
        if !(1..=1000).contains(&id) {
            continue;
        }
        let wnid = synsets
            .field(element, "WNID")
            .and_then(|v| v.text())
            .ok_or_else(|| format!("synsets({}) has no WNID text", element + 1))?;
        by_id[id as usize - 1] = wnid.to_string();
    }
    Ok(by_id)
}

fn id_map_from_wnids(wnids: &[String]) -> Result<Vec<u32>, String> {
    if wnids.len() != 1000 {
        return Err(format!("{} synsets in the map, expected 1000", wnids.len()));
    }
    let mut seen = vec![false; 1000];
    wnids
        .iter()
        .enumerate()
        .map(|(i, wnid)| {
            let class = class_index(wnid).ok_or_else(|| {
                format!(
                    "ILSVRC2012_ID {}: {wnid:?} is not an ImageNet-1k synset",
                    i + 1
                )
            })?;
            if std::mem::replace(&mut seen[class as usize], true) {
                return Err(format!("{wnid} appears twice"));
            }
            Ok(class)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::mat::writer::{Array, MatWriter};
    use super::*;
    use crate::storage::StorageOptions;

    async fn location_with(name: &str, files: Vec<(String, Vec<u8>)>) -> StorageLocation {
        let location =
            StorageLocation::parse(&format!("memory://{name}/val"), &StorageOptions::default())
                .unwrap();
        for (rel, bytes) in files {
            location
                .put(&location.path_of(&rel).unwrap(), Bytes::from(bytes))
                .await
                .unwrap();
        }
        location
    }

    fn image(n: u32) -> String {
        format!("ILSVRC2012_val_{n:08}.JPEG")
    }

    /// A devkit-like ID order: the sorted list rotated, so ID order and class order differ.
    fn devkit_order() -> Vec<&'static str> {
        let mut order = synsets().to_vec();
        order.rotate_left(7);
        order
    }

    #[test]
    fn embedded_class_lists_are_complete_and_sorted() {
        assert_eq!(synsets().len(), 1000);
        assert!(synsets().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(class_index("n01440764"), Some(0));
        assert_eq!(class_index("n15075141"), Some(999));
        assert_eq!(lemmas()[0], "tench, Tinca tinca");
        assert!(lemmas().iter().all(|l| !l.is_empty()));
    }

    #[tokio::test]
    async fn class_folders_use_standard_indices_even_for_a_subset() {
        let files = vec![
            ("n15075141/b.JPEG".to_string(), vec![1]),
            (
                "n01440764/ILSVRC2012_val_00000293.JPEG".to_string(),
                vec![1, 2],
            ),
            ("n01443537/a.jpeg".to_string(), vec![3]),
        ];
        let location = location_with("inet-folders", files).await;
        let index = list(&location, None, None).await.unwrap();
        let got: Vec<(&str, u32)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label))
            .collect();
        assert_eq!(
            got,
            [
                ("n01440764/ILSVRC2012_val_00000293.JPEG", 0),
                ("n01443537/a.jpeg", 1),
                ("n15075141/b.JPEG", 999)
            ]
        );
        assert_eq!(index.class_names.len(), 1000);
        assert_eq!(
            index.class_descriptions.as_ref().unwrap()[1],
            "goldfish, Carassius auratus"
        );
    }

    #[tokio::test]
    async fn unknown_folders_are_named() {
        let location = location_with("inet-unknown", vec![("cats/a.jpg".into(), vec![1])]).await;
        let err = list(&location, None, None).await.unwrap_err().to_string();
        assert!(err.contains("not ImageNet-1k synsets: cats"), "{err}");
    }

    #[tokio::test]
    async fn flat_layout_with_loc_solution() {
        let csv = "ImageId,PredictionString\n\
                   ILSVRC2012_val_00000002,n15075141 1 2 3 4 n15075141 5 6 7 8\n\
                   ILSVRC2012_val_00000001,n01443537 1 2 3 4\n\
                   ILSVRC2012_val_00000003,n01440764 1 2 3 4\n";
        let files = vec![
            ("LOC_val_solution.csv".into(), csv.as_bytes().to_vec()),
            (format!("ILSVRC/Data/CLS-LOC/val/{}", image(1)), vec![0; 5]),
            (format!("ILSVRC/Data/CLS-LOC/val/{}", image(2)), vec![0; 6]),
            (
                "ILSVRC/Data/CLS-LOC/test/ILSVRC2012_test_00000001.JPEG".into(),
                vec![0],
            ),
        ];
        let location = location_with("inet-loc", files).await;
        let index = list(&location, None, None).await.unwrap();
        let got: Vec<(&str, u32)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label))
            .collect();
        assert_eq!(
            got,
            [
                ("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG", 1),
                ("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000002.JPEG", 999)
            ]
        );
    }

    #[tokio::test]
    async fn bad_loc_rows_name_the_line() {
        let csv = "ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n";
        let location = location_with(
            "inet-loc-bad",
            vec![("LOC_val_solution.csv".into(), csv.into())],
        )
        .await;
        let err = list(&location, None, None).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "memory://inet-loc-bad/val/LOC_val_solution.csv line 2: \"n99999999\" is not an ImageNet-1k synset"
        );
    }

    #[tokio::test]
    async fn devkit_txt_needs_and_uses_the_id_map() {
        let order = devkit_order();
        // Image 1 has ID 1, image 2 has ID 1000, image 3 has ID 5.
        let gt = "1\n1000\n5\n";
        let mut files = vec![
            (DEVKIT_GROUND_TRUTH.to_string(), gt.as_bytes().to_vec()),
            (image(1), vec![1]),
            (image(2), vec![2]),
            (image(3), vec![3]),
        ];
        let location = location_with("inet-txt-nomap", files.clone()).await;
        let err = list(&location, None, None).await.unwrap_err().to_string();
        assert!(err.contains("not the sorted synset order"), "{err}");

        let expected = [
            class_index(order[0]).unwrap(),
            class_index(order[999]).unwrap(),
            class_index(order[4]).unwrap(),
        ];
        // As a text map passed explicitly.
        let text_map: String = order.iter().map(|w| format!("{w}\n")).collect();
        files.push(("my_map.txt".into(), text_map.into_bytes()));
        let location = location_with("inet-txt-textmap", files.clone()).await;
        let index = list(&location, None, Some("my_map.txt")).await.unwrap();
        let labels: Vec<u32> = index.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, expected);

        // As the devkit's meta.mat, found by name: 1000 leaves plus a non-leaf synset with a bigger ID.
        let mut values = Vec::new();
        for (i, wnid) in order.iter().enumerate() {
            values.push(Array::Double(vec![1, 1], vec![(i + 1) as f64]));
            values.push(Array::Char((*wnid).into()));
        }
        values.push(Array::Double(vec![1, 1], vec![1001.0]));
        values.push(Array::Char("n00001740".into()));
        let meta = MatWriter {
            big_endian: false,
            compress: true,
        }
        .file(&[(
            "synsets",
            Array::Struct(vec![1001, 1], vec!["ILSVRC2012_ID", "WNID"], values),
        )]);
        files.pop();
        files.push(("ILSVRC2012_devkit_t12/data/meta.mat".into(), meta));
        let location = location_with("inet-txt-meta", files).await;
        let index = list(&location, None, None).await.unwrap();
        let labels: Vec<u32> = index.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, expected);
    }

    #[tokio::test]
    async fn an_image_without_ground_truth_is_an_error() {
        let csv = "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n";
        let files = vec![
            ("LOC_val_solution.csv".into(), csv.as_bytes().to_vec()),
            (image(1), vec![1]),
            (image(7), vec![1]),
        ];
        let location = location_with("inet-missing-gt", files).await;
        let err = list(&location, None, None).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "memory://inet-missing-gt/val/ILSVRC2012_val_00000007.JPEG: no ground-truth entry in LOC_val_solution.csv for this image"
        );
    }

    #[test]
    fn image_numbers() {
        assert_eq!(
            val_image_number("ILSVRC2012_val_00050000.JPEG"),
            Some(50000)
        );
        assert_eq!(val_image_number("ILSVRC2012_val_0001.JPEG"), None);
        assert_eq!(val_image_number("ILSVRC2012_test_00000001.JPEG"), None);
    }
}
