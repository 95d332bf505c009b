//! Class subsets: a model's outputs restricted to some of its classes (ImageNet-A and -R score a
//! 1000-class model on 200 of them). The worker keeps only the subset's logits **before** top-k, loss
//! and confidence, so a prediction can never fall outside the subset; every report then speaks the
//! subset's own indices: position `i` of the subset is the `i`-th smallest of its classes.
//!
//! A subset is given as a built-in name ([`BUILTIN`]: `imagenet-a`, `imagenet-r`, the lists timm
//! ships, copied to `common/data/`) or a text file with one class per line, as a class index (`6`) or
//! an ImageNet-1k WNID (`n01498041`); blank lines and `#` comments are skipped. Order in the file does
//! not matter (the subset is sorted), a repeated class is an error, so the same set always gives the
//! same job identity.
//!
//! [`restrict`] turns a listed dataset into the subset's terms: class names (and descriptions) of the
//! subset, labels as subset positions, and samples whose class lies outside the subset moved to the
//! index's `excluded` list (counted in the dataset's size, reported, never evaluated).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sample::ExcludedSample;
use super::{DatasetError, DatasetIndex, imagenet};

const IMAGENET_A_TXT: &str = include_str!("../../data/imagenet_a_synsets.txt");
const IMAGENET_R_TXT: &str = include_str!("../../data/imagenet_r_synsets.txt");

/// The built-in subsets: name and its WNIDs (one per line).
pub const BUILTIN: [(&str, &str); 2] = [
    ("imagenet-a", IMAGENET_A_TXT),
    ("imagenet-r", IMAGENET_R_TXT),
];

#[derive(Debug, thiserror::Error)]
pub enum SubsetError {
    #[error("cannot read class subset {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("class subset {source_name} line {line}: {reason}")]
    Line {
        source_name: String,
        line: u64,
        reason: String,
    },
    #[error("class subset {source_name} lists no class")]
    Empty { source_name: String },
    #[error("class subset lists class {class} twice")]
    Repeated { class: u32 },
    #[error("class subset holds class {class}, beyond the {classes} classes")]
    OutOfRange { class: u32, classes: u32 },
}

/// A sorted, non-empty set of distinct class indices of the model's outputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u32>", into = "Vec<u32>")]
pub struct ClassSubset(Vec<u32>);

impl TryFrom<Vec<u32>> for ClassSubset {
    type Error = SubsetError;

    /// Sorts the classes; refuses an empty list and a repeated class.
    fn try_from(mut classes: Vec<u32>) -> Result<Self, SubsetError> {
        if classes.is_empty() {
            return Err(SubsetError::Empty {
                source_name: "(list)".into(),
            });
        }
        classes.sort_unstable();
        if let Some(w) = classes.windows(2).find(|w| w[0] == w[1]) {
            return Err(SubsetError::Repeated { class: w[0] });
        }
        Ok(Self(classes))
    }
}

impl From<ClassSubset> for Vec<u32> {
    fn from(s: ClassSubset) -> Self {
        s.0
    }
}

impl ClassSubset {
    /// A built-in subset by name (`imagenet-a`, `imagenet-r`).
    pub fn builtin(name: &str) -> Option<Self> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        Some(Self::parse(text, name).expect("built-in subsets are valid"))
    }

    /// `--class-subset NAME|FILE`: a built-in name, else a file read from the local disk.
    pub fn resolve(arg: &str) -> Result<Self, SubsetError> {
        if let Some(s) = Self::builtin(arg) {
            return Ok(s);
        }
        let path = Path::new(arg);
        let text = std::fs::read_to_string(path).map_err(|source| SubsetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, arg)
    }

    /// One class per line: an index or an ImageNet-1k WNID; `#` starts a comment.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, SubsetError> {
        let mut classes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let class = if entry.starts_with('n') {
                imagenet::class_index(entry)
            } else {
                entry.parse::<u32>().ok()
            };
            classes.push(class.ok_or_else(|| SubsetError::Line {
                source_name: source_name.to_string(),
                line: i as u64 + 1,
                reason: format!(
                    "{entry:?} is neither a class index nor an ImageNet-1k WNID (n01440764 ...)"
                ),
            })?);
        }
        if classes.is_empty() {
            return Err(SubsetError::Empty {
                source_name: source_name.to_string(),
            });
        }
        Self::try_from(classes)
    }

    /// The model's class indices, ascending: position `i` is the subset's class `i`.
    pub fn classes(&self) -> &[u32] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The subset's own index of model class `class`, if it is in the subset.
    pub fn position(&self, class: u32) -> Option<u32> {
        self.0.binary_search(&class).ok().map(|p| p as u32)
    }

    /// Refuses a subset naming a class the model does not have.
    pub fn check_within(&self, classes: u32) -> Result<(), SubsetError> {
        match self.0.last() {
            Some(&last) if last >= classes => Err(SubsetError::OutOfRange {
                class: last,
                classes,
            }),
            _ => Ok(()),
        }
    }

    /// The name of this subset when it is a built-in one.
    pub fn builtin_name(&self) -> Option<&'static str> {
        BUILTIN
            .iter()
            .map(|(n, _)| *n)
            .find(|n| Self::builtin(n).as_ref() == Some(self))
    }
}

/// `index` in the subset's terms: class names and descriptions of the subset (empty for a class
/// past the dataset's list: the caller checks the subset against the model's outputs), labels as
/// subset positions, and samples of a class outside the subset moved to `excluded` (with the class
/// named). The fingerprint is recomputed, so it covers the relabelled samples and the excluded keys.
/// `url` names the dataset in errors. Multi-label indexes (ImageNet-ReaL) are refused: a subset of
/// ReaL is not a defined benchmark.
pub fn restrict(
    index: DatasetIndex,
    subset: &ClassSubset,
    url: &str,
) -> Result<DatasetIndex, DatasetError> {
    if index.label_sets.is_some() {
        return Err(DatasetError::invalid(
            url,
            format!(
                "a class subset cannot restrict the multi-label format {}",
                index.format.name()
            ),
        ));
    }
    let pick = |names: &[String]| -> Vec<String> {
        subset
            .classes()
            .iter()
            .map(|&c| names.get(c as usize).cloned().unwrap_or_default())
            .collect()
    };
    let class_names = pick(&index.class_names);
    let descriptions = index.class_descriptions.as_deref().map(pick);
    let mut samples = Vec::with_capacity(index.samples.len());
    let mut excluded = index.excluded;
    for mut sample in index.samples {
        match subset.position(sample.label) {
            Some(p) => {
                sample.label = p;
                samples.push(sample);
            }
            None => excluded.push(ExcludedSample {
                reason: format!(
                    "class {} (index {}) is outside the class subset",
                    index.class_names[sample.label as usize], sample.label
                ),
                key: sample.key,
            }),
        }
    }
    let mut out = DatasetIndex::new(url, index.format, class_names, samples, index.bad_samples)?;
    out.class_descriptions = descriptions;
    out.set_excluded(excluded);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_200_imagenet_classes_at_known_indices() {
        let a = ClassSubset::builtin("imagenet-a").unwrap();
        let r = ClassSubset::builtin("imagenet-r").unwrap();
        assert_eq!((a.len(), r.len()), (200, 200));
        // timm's imagenet_a_indices.txt starts 6 (n01498041, stingray), 11, 13.
        assert_eq!(&a.classes()[..3], &[6, 11, 13]);
        assert_eq!(imagenet::synsets()[6], "n01498041");
        assert_eq!(a.position(11), Some(1));
        assert_eq!(a.position(7), None);
        assert_eq!(a.builtin_name(), Some("imagenet-a"));
        assert_eq!(r.builtin_name(), Some("imagenet-r"));
    }

    #[test]
    fn files_take_indices_or_wnids_in_any_order_and_name_bad_lines() {
        let s = ClassSubset::parse("# mine\n10\nn01440764  # tench\n\n2\n", "f.txt").unwrap();
        assert_eq!(s.classes(), &[0, 2, 10]);
        assert_eq!(s.builtin_name(), None);
        let e = ClassSubset::parse("1\nkitten\n", "f.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "class subset f.txt line 2: \"kitten\" is neither a class index nor an ImageNet-1k WNID (n01440764 ...)"
        );
        let e = ClassSubset::parse("3\n3\n", "f.txt").unwrap_err();
        assert!(matches!(e, SubsetError::Repeated { class: 3 }), "{e}");
        assert!(matches!(
            ClassSubset::parse("# nothing\n", "f.txt"),
            Err(SubsetError::Empty { .. })
        ));
        assert!(matches!(
            s.check_within(10),
            Err(SubsetError::OutOfRange {
                class: 10,
                classes: 10
            })
        ));
        s.check_within(11).unwrap();
    }

    proptest::proptest! {
        /// Any text parses or fails with a line-numbered reason, never a panic; what parses is a
        /// sorted set without repeats, and every position maps back to its class.
        #[test]
        fn arbitrary_subset_files_parse_or_fail_cleanly(text in "(([0-9]{1,4}|n0[0-9]{7}|#.*| *|x)\n){0,12}") {
            if let Ok(s) = ClassSubset::parse(&text, "f.txt") {
                proptest::prop_assert!(s.classes().windows(2).all(|w| w[0] < w[1]));
                for (i, &c) in s.classes().iter().enumerate() {
                    proptest::prop_assert_eq!(s.position(c), Some(i as u32));
                }
            }
        }
    }

    #[test]
    fn json_is_the_sorted_list_and_refuses_repeats() {
        let s = ClassSubset::try_from(vec![5, 1]).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "[1,5]");
        assert_eq!(serde_json::from_str::<ClassSubset>("[5,1]").unwrap(), s);
        assert!(serde_json::from_str::<ClassSubset>("[1,1]").is_err());
        assert!(serde_json::from_str::<ClassSubset>("[]").is_err());
    }
}
