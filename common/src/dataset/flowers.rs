//! Oxford Flowers-102: `jpg/image_00001.jpg` … `jpg/image_08189.jpg`, `imagelabels.mat` (variable
//! `labels`, 1×8189, the class of image *i* in 1..=102) and `setid.mat` (`trnid`, `valid`, `tstid`:
//! the image numbers of each split; the test split, `tstid`, is the default).
//!
//! Class index convention: `labels(i) − 1` (0..=101), as torchvision's `Flowers102`. The release has no
//! class names, so `class_names` are the original 1-based labels as text (`"1"` … `"102"`).
//!
//! The `.mat` files are found by name anywhere under the root and `jpg/` is looked up next to
//! `imagelabels.mat`. Every image number in the split is a sample, keyed by its path relative to the
//! root, even if the listing does not contain the image (the fetch then reports it missing). An image
//! number with no label, or a label outside 1..=102, is a [`BadSample`].

use super::mat::MatFile;
use super::{
    BadSample, DatasetError, DatasetFormat, DatasetIndex, FlowersSplit, Listed, Listing, Sample,
    SampleSource, join_rel, parent_of, read_listed,
};
use crate::storage::StorageLocation;

pub const CLASSES: usize = 102;
pub const LABELS_FILE: &str = "imagelabels.mat";
pub const SPLITS_FILE: &str = "setid.mat";

impl FlowersSplit {
    /// The `setid.mat` variable holding this split's image numbers.
    pub fn variable(self) -> &'static str {
        match self {
            Self::Test => "tstid",
            Self::Train => "trnid",
            Self::Val => "valid",
        }
    }
}

pub(crate) async fn list(
    location: &StorageLocation,
    split: FlowersSplit,
) -> Result<DatasetIndex, DatasetError> {
    let listing = Listing::of(location).await?;
    let labels_file = listing.require_named(location, LABELS_FILE)?;
    let splits_file = listing.require_named(location, SPLITS_FILE)?;
    let labels = read_mat(location, labels_file).await?;
    let splits = read_mat(location, splits_file).await?;
    let mat_error = |file: &Listed| {
        let url = location.object_url(&file.path);
        move |source| DatasetError::Mat { url, source }
    };
    let labels = labels.integers("labels").map_err(mat_error(labels_file))?;
    let ids = splits
        .integers(split.variable())
        .map_err(mat_error(splits_file))?;
    let images_dir = join_rel(parent_of(&labels_file.rel), "jpg");

    let mut samples = Vec::with_capacity(ids.len());
    let mut bad = Vec::new();
    for id in ids {
        let rel = join_rel(&images_dir, &format!("image_{id:05}.jpg"));
        let label = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| labels.get(i).copied());
        let problem = match label {
            None => Some(format!(
                "image number {id} has no entry in {LABELS_FILE} ({} labels)",
                labels.len()
            )),
            Some(l) if !(1..=CLASSES as u64).contains(&l) => {
                Some(format!("label {l} outside 1..={CLASSES}"))
            }
            Some(_) => None,
        };
        if let Some(reason) = problem {
            bad.push(BadSample {
                key: rel.into(),
                reason,
            });
            continue;
        }
        let listed = listing.get(&rel);
        samples.push(Sample {
            label: label.unwrap_or(1) as u32 - 1,
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
    let class_names = (1..=CLASSES).map(|c| c.to_string()).collect();
    DatasetIndex::new(
        location.url(),
        DatasetFormat::Flowers102 { split },
        class_names,
        samples,
        bad,
    )
}

pub(crate) async fn read_mat(
    location: &StorageLocation,
    file: &Listed,
) -> Result<MatFile, DatasetError> {
    let bytes = read_listed(location, file).await?;
    MatFile::parse(&bytes).map_err(|source| DatasetError::Mat {
        url: location.object_url(&file.path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::mat::writer::{Array, MatWriter};
    use super::*;
    use crate::storage::StorageOptions;

    fn mat(variables: &[(&str, Array)]) -> Vec<u8> {
        MatWriter {
            big_endian: false,
            compress: true,
        }
        .file(variables)
    }

    async fn flowers(
        name: &str,
        labels: Vec<f64>,
        tstid: Vec<f64>,
        images: &[u32],
    ) -> StorageLocation {
        let location = StorageLocation::parse(
            &format!("memory://{name}/flowers-102"),
            &StorageOptions::default(),
        )
        .unwrap();
        let put = |rel: String, bytes: Vec<u8>| {
            let location = location.clone();
            async move {
                location
                    .put(&location.path_of(&rel).unwrap(), Bytes::from(bytes))
                    .await
                    .unwrap()
            }
        };
        let n = labels.len();
        put(
            "imagelabels.mat".into(),
            mat(&[("labels", Array::Double(vec![1, n], labels))]),
        )
        .await;
        let m = tstid.len();
        put(
            "setid.mat".into(),
            mat(&[
                ("trnid", Array::Double(vec![1, 1], vec![1.0])),
                ("valid", Array::Double(vec![1, 1], vec![2.0])),
                ("tstid", Array::Double(vec![1, m], tstid)),
            ]),
        )
        .await;
        for i in images {
            put(format!("jpg/image_{i:05}.jpg"), vec![0; *i as usize]).await;
        }
        location
    }

    #[tokio::test]
    async fn test_split_with_zero_based_labels() {
        let location = flowers(
            "flowers-ok",
            vec![77.0, 1.0, 102.0, 5.0],
            vec![4.0, 3.0, 2.0],
            &[2, 3, 4],
        )
        .await;
        let index = list(&location, FlowersSplit::Test).await.unwrap();
        let got: Vec<(&str, u32, Option<u64>)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label, s.source.size()))
            .collect();
        assert_eq!(
            got,
            [
                ("jpg/image_00004.jpg", 4, Some(4)),
                ("jpg/image_00003.jpg", 101, Some(3)),
                ("jpg/image_00002.jpg", 0, Some(2)),
            ]
        );
        assert_eq!(index.class_names.len(), 102);
        assert_eq!(index.class_names[0], "1");
        let train = list(&location, FlowersSplit::Train).await.unwrap();
        assert_eq!(train.samples[0].label, 76);
        assert_eq!(
            train.samples[0].source.size(),
            None,
            "image 1 is not in the store"
        );
        assert_eq!(
            train.samples[0].source.path().as_ref(),
            "flowers-102/jpg/image_00001.jpg"
        );
    }

    #[tokio::test]
    async fn bad_labels_and_ids_are_bad_samples() {
        let location = flowers(
            "flowers-bad",
            vec![0.0, 103.0, 1.0],
            vec![1.0, 2.0, 3.0, 9.0],
            &[],
        )
        .await;
        let index = list(&location, FlowersSplit::Test).await.unwrap();
        assert_eq!(index.samples.len(), 1);
        let reasons: Vec<&str> = index
            .bad_samples
            .iter()
            .map(|b| b.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "label 0 outside 1..=102",
                "label 103 outside 1..=102",
                "image number 9 has no entry in imagelabels.mat (3 labels)"
            ]
        );
    }

    #[tokio::test]
    async fn unreadable_mat_names_the_file() {
        let location = flowers("flowers-broken", vec![1.0], vec![1.0], &[]).await;
        location
            .put(
                &location.path_of("setid.mat").unwrap(),
                Bytes::from_static(b"not a mat file"),
            )
            .await
            .unwrap();
        let err = list(&location, FlowersSplit::Test).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "unreadable .mat file memory://flowers-broken/flowers-102/setid.mat"
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.contains("shorter than the 128-byte header"),
            "{source}"
        );
    }
}
