//! Which reader lists a dataset, with that reader's options; carried in the index so a run records
//! exactly how its sample list was built.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DatasetError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum DatasetFormat {
    /// torchvision `ImageFolder`: see [`super::imagefolder`].
    ImageFolder,
    /// ImageNet-1k validation, class folders or the flat layout: see [`super::imagenet`].
    ImageNet {
        /// Ground-truth file relative to the prefix; `None` finds `LOC_val_solution.csv` or
        /// `ILSVRC2012_validation_ground_truth.txt` anywhere under it, and if neither exists the
        /// layout is class folders.
        ground_truth: Option<String>,
        /// For the devkit `.txt` ground truth only: the devkit's `meta.mat`, or a text file with one
        /// WNID per line in ILSVRC2012_ID order, relative to the prefix. `None` finds `meta.mat`.
        synset_map: Option<String>,
    },
    /// CIFAR-10 binary release: see [`super::cifar`].
    Cifar10 { split: CifarSplit },
    /// CIFAR-100 binary release (fine labels): see [`super::cifar`].
    Cifar100 { split: CifarSplit },
    /// Oxford Flowers-102: see [`super::flowers`].
    Flowers102 { split: FlowersSplit },
    /// Stanford Cars test set: see [`super::cars`].
    StanfordCars {
        /// Folder of the test images, relative to the folder of `cars_test_annos_withlabels.mat`.
        images_dir: String,
    },
    /// CSV or Parquet manifest `path,label[,class_name]`: see [`super::manifest`].
    Manifest {
        /// The manifest relative to the prefix; `None` means the prefix is the manifest itself when it
        /// ends in `.csv` or `.parquet`, else `manifest.csv` under it.
        file: Option<String>,
        /// `--allow-absolute-paths`: rows may name objects anywhere in the store (`/x.jpg`, a URL of
        /// the same store); otherwise every row must lie under the manifest's folder. Left out of
        /// the JSON when off, so job identities from before the option are unchanged.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_absolute_paths: bool,
    },
    /// WebDataset-style tar shards with offset indexes: see [`super::tar`].
    Tar,
    /// ImageNet-val images (either [`Self::ImageNet`] layout) scored against the ImageNet-ReaL label
    /// lists: see [`super::imagenet_variants`].
    #[serde(rename = "imagenet_real")]
    ImageNetReal {
        /// The ReaL `real.json` relative to the prefix; `None` finds the one file named `real.json`.
        labels: Option<String>,
    },
    /// ImageNetV2 (any of its three variants): folders `0` … `999` named by class index.
    #[serde(rename = "imagenet_v2")]
    ImageNetV2,
    /// ImageNet-A: 200 WNID folders, scored on the `imagenet-a` class subset.
    #[serde(rename = "imagenet_a")]
    ImageNetA,
    /// ImageNet-R: 200 WNID folders, scored on the `imagenet-r` class subset.
    #[serde(rename = "imagenet_r")]
    ImageNetR,
    /// ImageNet-Sketch: 1000 WNID folders.
    #[serde(rename = "imagenet_sketch")]
    ImageNetSketch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CifarSplit {
    #[default]
    Test,
    Train,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowersSplit {
    /// `tstid` (6149 images), the split papers report.
    #[default]
    Test,
    /// `trnid` (1020 images).
    Train,
    /// `valid` (1020 images).
    Val,
}

impl DatasetFormat {
    /// The format's short name, as accepted by [`FromStr`] and written in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ImageFolder => "imagefolder",
            Self::ImageNet { .. } => "imagenet",
            Self::Cifar10 { .. } => "cifar10",
            Self::Cifar100 { .. } => "cifar100",
            Self::Flowers102 { .. } => "flowers102",
            Self::StanfordCars { .. } => "cars",
            Self::Manifest { .. } => "manifest",
            Self::Tar => "tar",
            Self::ImageNetReal { .. } => "imagenet-real",
            Self::ImageNetV2 => "imagenet-v2",
            Self::ImageNetA => "imagenet-a",
            Self::ImageNetR => "imagenet-r",
            Self::ImageNetSketch => "imagenet-sketch",
        }
    }

    /// The class subset a format is scored on by definition (ImageNet-A and -R: their 200 classes).
    pub fn implied_subset(&self) -> Option<super::ClassSubset> {
        match self {
            Self::ImageNetA => super::ClassSubset::builtin("imagenet-a"),
            Self::ImageNetR => super::ClassSubset::builtin("imagenet-r"),
            _ => None,
        }
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a format name with default options (`--format cifar100`).
impl FromStr for DatasetFormat {
    type Err = DatasetError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "imagefolder" | "folder" => Self::ImageFolder,
            "imagenet" | "imagenet-val" => Self::ImageNet {
                ground_truth: None,
                synset_map: None,
            },
            "cifar10" | "cifar-10" => Self::Cifar10 {
                split: CifarSplit::Test,
            },
            "cifar100" | "cifar-100" => Self::Cifar100 {
                split: CifarSplit::Test,
            },
            "flowers102" | "flowers" | "oxford-flowers102" => Self::Flowers102 {
                split: FlowersSplit::Test,
            },
            "cars" | "stanford-cars" | "stanfordcars" => Self::StanfordCars {
                images_dir: "cars_test".into(),
            },
            "manifest" | "csv" => Self::Manifest {
                file: None,
                allow_absolute_paths: false,
            },
            "tar" | "wds" | "webdataset" => Self::Tar,
            "imagenet-real" | "real" => Self::ImageNetReal { labels: None },
            "imagenet-v2" | "imagenetv2" => Self::ImageNetV2,
            "imagenet-a" => Self::ImageNetA,
            "imagenet-r" => Self::ImageNetR,
            "imagenet-sketch" | "sketch" => Self::ImageNetSketch,
            _ => return Err(DatasetError::UnknownFormat(name.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "imagefolder",
            "imagenet",
            "cifar10",
            "cifar100",
            "flowers102",
            "cars",
            "manifest",
            "tar",
            "imagenet-real",
            "imagenet-v2",
            "imagenet-a",
            "imagenet-r",
            "imagenet-sketch",
        ] {
            assert_eq!(name.parse::<DatasetFormat>().unwrap().name(), name);
        }
        assert!(matches!(
            "nope".parse::<DatasetFormat>(),
            Err(DatasetError::UnknownFormat(_))
        ));
    }

    #[test]
    fn formats_serialize_with_their_options() {
        let format = DatasetFormat::Flowers102 {
            split: FlowersSplit::Val,
        };
        let json = serde_json::to_string(&format).unwrap();
        assert_eq!(json, r#"{"format":"flowers102","split":"val"}"#);
        assert_eq!(
            serde_json::from_str::<DatasetFormat>(&json).unwrap(),
            format
        );
    }
}
