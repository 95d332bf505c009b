//! Stanford Cars (test set): the images in `cars_test/`, `cars_test_annos_withlabels.mat` (struct array
//! `annotations` with fields `bbox_x1`…`bbox_y2`, `class` in 1..=196 and `fname` such as `00001.jpg`)
//! and the devkit's `cars_meta.mat` (cell array `class_names`, 196 names). This is torchvision's
//! `StanfordCars` layout; the `.mat` files are found by name anywhere under the root, and the image
//! folder is looked up next to the annotations file.
//!
//! Class index convention: `class − 1` (0..=195), names from `cars_meta.mat` in order (as torchvision).
//! Every annotation is a sample keyed by its image path relative to the root, even if the listing lacks
//! the image (the fetch then reports it missing). A `class` outside 1..=196 is a [`BadSample`]; an
//! annotation without a text `fname` or a numeric `class` makes the file unusable (dataset error).

use super::flowers::read_mat;
use super::mat::as_index;
use super::{
    BadSample, DatasetError, DatasetFormat, DatasetIndex, Listing, Sample, SampleSource, join_rel,
    parent_of,
};
use crate::storage::StorageLocation;

pub const ANNOTATIONS_FILE: &str = "cars_test_annos_withlabels.mat";
pub const META_FILE: &str = "cars_meta.mat";

pub(crate) async fn list(
    location: &StorageLocation,
    images_dir: &str,
) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let annos_file = listing.require_named(location, ANNOTATIONS_FILE)?;
    let meta_file = listing.require_named(location, META_FILE)?;
    let annos_url = location.object_url(&annos_file.path);
    let meta_url = location.object_url(&meta_file.path);

    let meta = read_mat(location, meta_file).await?;
    let names = meta
        .require("class_names")
        .map_err(|source| DatasetError::Mat {
            url: meta_url.clone(),
            source,
        })?;
    let class_names: Vec<String> = names
        .cells()
        .ok_or_else(|| {
            DatasetError::invalid(
                &meta_url,
                format!(
                    "class_names is a {}, expected a cell array",
                    names.describe()
                ),
            )
        })?
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            cell.text().map(|t| t.trim().to_string()).ok_or_else(|| {
                DatasetError::invalid(&meta_url, format!("class_names{{{}}} is not text", i + 1))
            })
        })
        .collect::<Result<_, _>>()?;

    let annos = read_mat(location, annos_file).await?;
    let annotations = annos
        .require("annotations")
        .map_err(|source| DatasetError::Mat {
            url: annos_url.clone(),
            source,
        })?;
    let images_rel = join_rel(parent_of(&annos_file.rel), images_dir);
    let mut samples = Vec::with_capacity(annotations.numel());
    let mut bad = Vec::new();
    for element in 0..annotations.numel() {
        let fname = annotations
            .field(element, "fname")
            .and_then(|v| v.text())
            .ok_or_else(|| {
                DatasetError::invalid(
                    &annos_url,
                    format!("annotations({}) has no text fname", element + 1),
                )
            })?;
        let class = annotations
            .field(element, "class")
            .and_then(|v| v.numbers())
            .and_then(|n| n.first().copied())
            .ok_or_else(|| {
                DatasetError::invalid(
                    &annos_url,
                    format!("annotations({}) has no numeric class", element + 1),
                )
            })?;
        let rel = join_rel(&images_rel, fname.trim());
        match as_index(class).filter(|c| (1..=class_names.len() as u64).contains(c)) {
            None => bad.push(BadSample {
                key: rel.into(),
                reason: format!("class {class} outside 1..={}", class_names.len()),
            }),
            Some(class) => {
                let listed = listing.get(&rel);
                samples.push(Sample {
                    label: class as u32 - 1,
                    source: SampleSource::Object {
                        path: match listed {
                            Some(l) => l.path.clone(),
                            None => location.path_of(&rel)?,
                        },
                        size: listed.map(|l| l.size),
                    },
                    key: rel.into(),
                });
            }
        }
    }
    let format = DatasetFormat::StanfordCars {
        images_dir: images_dir.to_string(),
    };
    DatasetIndex::new(location.url(), format, class_names, samples, bad)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::mat::writer::{Array, MatWriter};
    use super::*;
    use crate::storage::StorageOptions;

    fn annotation(class: f64, fname: &str) -> Vec<Array> {
        vec![
            Array::Double(vec![1, 1], vec![10.0]),
            Array::Double(vec![1, 1], vec![200.0]),
            Array::Double(vec![1, 1], vec![class]),
            Array::Char(fname.into()),
        ]
    }

    async fn cars(name: &str, annotations: Vec<Vec<Array>>) -> StorageLocation {
        let location =
            StorageLocation::parse(&format!("memory://{name}/"), &StorageOptions::default())
                .unwrap();
        let writer = MatWriter {
            big_endian: false,
            compress: false,
        };
        let n = annotations.len();
        let annos = writer.file(&[(
            "annotations",
            Array::Struct(
                vec![1, n],
                vec!["bbox_x1", "bbox_x2", "class", "fname"],
                annotations.into_iter().flatten().collect(),
            ),
        )]);
        let meta = writer.file(&[(
            "class_names",
            Array::Cell(
                vec![1, 3],
                vec![
                    Array::Char("AM General Hummer SUV 2000".into()),
                    Array::Char("Acura RL Sedan 2012".into()),
                    Array::Char("smart fortwo Convertible 2012".into()),
                ],
            ),
        )]);
        for (rel, bytes) in [
            ("stanford_cars/cars_test_annos_withlabels.mat", annos),
            ("stanford_cars/devkit/cars_meta.mat", meta),
            ("stanford_cars/cars_test/00001.jpg", vec![0; 9]),
        ] {
            location
                .put(&location.path_of(rel).unwrap(), Bytes::from(bytes))
                .await
                .unwrap();
        }
        location
    }

    #[tokio::test]
    async fn annotations_and_meta() {
        let location = cars(
            "cars-ok",
            vec![annotation(3.0, "00001.jpg"), annotation(1.0, "00002.jpg")],
        )
        .await;
        let index = list(&location, "cars_test").await.unwrap();
        assert_eq!(index.class_names[2], "smart fortwo Convertible 2012");
        let got: Vec<(&str, u32, Option<u64>)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label, s.source.size()))
            .collect();
        assert_eq!(
            got,
            [
                ("stanford_cars/cars_test/00001.jpg", 2, Some(9)),
                ("stanford_cars/cars_test/00002.jpg", 0, None)
            ]
        );
    }

    #[tokio::test]
    async fn out_of_range_classes_are_bad_samples_and_missing_fields_errors() {
        let location = cars(
            "cars-bad",
            vec![annotation(4.0, "00001.jpg"), annotation(0.5, "00002.jpg")],
        )
        .await;
        let index = list(&location, "cars_test").await.unwrap();
        assert!(index.samples.is_empty());
        assert_eq!(index.bad_samples[0].reason, "class 4 outside 1..=3");
        assert_eq!(index.bad_samples[1].reason, "class 0.5 outside 1..=3");

        let location =
            StorageLocation::parse("memory://cars-nofname/", &StorageOptions::default()).unwrap();
        let writer = MatWriter {
            big_endian: true,
            compress: true,
        };
        let annos = writer.file(&[(
            "annotations",
            Array::Struct(
                vec![1, 1],
                vec!["class"],
                vec![Array::Double(vec![1, 1], vec![1.0])],
            ),
        )]);
        let meta = writer.file(&[(
            "class_names",
            Array::Cell(vec![1, 1], vec![Array::Char("x".into())]),
        )]);
        location
            .put(
                &location.path_of(ANNOTATIONS_FILE).unwrap(),
                Bytes::from(annos),
            )
            .await
            .unwrap();
        location
            .put(&location.path_of(META_FILE).unwrap(), Bytes::from(meta))
            .await
            .unwrap();
        let err = list(&location, "cars_test").await.unwrap_err().to_string();
        assert_eq!(
            err,
            "memory://cars-nofname/cars_test_annos_withlabels.mat: annotations(1) has no text fname"
        );
    }
}
