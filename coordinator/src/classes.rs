//! How many outputs the job's model has, decided at planning: `--num-classes` when given; else the
//! dataset's class count where its format fixes one (an ImageFolder's folders, CIFAR-10's ten, a tar
//! set's `dataset.json`), which the checkpoint's head must then match; else (a manifest, a tar set
//! without `dataset.json`: only the largest label is known) the checkpoint's head. Every label must
//! then lie below it: a label at or above the class count is a configuration error naming the sample,
//! not a bad sample.

use tresnet_common::dataset::{DatasetFormat, DatasetIndex};

/// Why no class count fits the job.
#[derive(Debug, thiserror::Error)]
pub enum ClassesError {
    #[error(
        "the dataset at {url} ({format}) has {dataset} classes but checkpoint {weights} has a \
         {head}-class head; pass --num-classes {head} to evaluate the first {dataset} outputs anyway"
    )]
    DatasetMismatch {
        url: String,
        format: &'static str,
        dataset: usize,
        weights: String,
        head: u32,
    },
    #[error(
        "--num-classes {given} but checkpoint {weights} has a {head}-class head (the model's outputs \
         are its classes)"
    )]
    FlagMismatch {
        given: u32,
        weights: String,
        head: u32,
    },
    #[error(
        "sample {key:?} of the dataset at {url} has label {label}, but the model has {classes} classes \
         ({source_of_count}); labels must be below the class count"
    )]
    LabelOutOfRange {
        url: String,
        key: String,
        label: u32,
        classes: u32,
        source_of_count: &'static str,
    },
}

/// Whether the format's metadata defines the class list, rather than only the largest label seen.
pub fn fixes_class_count(index: &DatasetIndex) -> bool {
    match index.format {
        DatasetFormat::Manifest { .. } => false,
        // Without `dataset.json` the classes are named by their decimal form, 0..=largest label.
        DatasetFormat::Tar => !index
            .class_names
            .iter()
            .enumerate()
            .all(|(i, n)| *n == i.to_string()),
        _ => true,
    }
}

/// The job's class count (see the module doc); `head` is the checkpoint's, when known.
pub fn resolve(
    explicit: Option<u32>,
    index: &DatasetIndex,
    url: &str,
    weights: &str,
    head: Option<u32>,
) -> Result<u32, ClassesError> {
    let dataset = index.class_names.len();
    let (classes, source_of_count) = match (explicit, head) {
        (Some(given), Some(head)) if given != head => {
            return Err(ClassesError::FlagMismatch {
                given,
                weights: weights.to_string(),
                head,
            });
        }
        (Some(given), _) => (given, "--num-classes"),
        (None, Some(head)) if fixes_class_count(index) && head as usize != dataset => {
            return Err(ClassesError::DatasetMismatch {
                url: url.to_string(),
                format: index.format.name(),
                dataset,
                weights: weights.to_string(),
                head,
            });
        }
        (None, Some(head)) if !fixes_class_count(index) => (head, "the checkpoint's head"),
        (None, _) => (dataset as u32, "the dataset's class count"),
    };
    if let Some(s) = index.samples.iter().find(|s| s.label >= classes) {
        return Err(ClassesError::LabelOutOfRange {
            url: url.to_string(),
            key: s.key.to_string(),
            label: s.label,
            classes,
            source_of_count,
        });
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use object_store::path::Path;
    use tresnet_common::dataset::{Sample, SampleSource};

    use super::*;

    fn index(format: DatasetFormat, classes: usize, labels: &[u32]) -> DatasetIndex {
        let samples = labels
            .iter()
            .enumerate()
            .map(|(i, &label)| Sample {
                key: format!("img/{i}.jpg").into(),
                label,
                source: SampleSource::Object {
                    path: Path::from(format!("d/img/{i}.jpg")),
                    size: None,
                },
            })
            .collect();
        let names = (0..classes).map(|c| c.to_string()).collect();
        DatasetIndex::new("file:///d", format, names, samples, vec![]).unwrap()
    }

    fn manifest() -> DatasetFormat {
        DatasetFormat::Manifest {
            file: None,
            allow_absolute_paths: false,
        }
    }

    /// A manifest whose largest label is 923 says nothing about the class count: a 1000-class
    /// checkpoint decides it.
    #[test]
    fn a_manifest_takes_the_class_count_from_the_checkpoint() {
        let i = index(manifest(), 924, &[0, 923]);
        assert_eq!(resolve(None, &i, "u", "w.pth", Some(1000)).unwrap(), 1000);
        // Unknown head: the dataset's count, as before.
        assert_eq!(resolve(None, &i, "u", "w.pth", None).unwrap(), 924);
        // A head too narrow for the labels names the first sample it cannot score.
        let e = resolve(None, &i, "u", "w.pth", Some(100))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "sample \"img/1.jpg\" of the dataset at u has label 923, but the model has 100 classes \
             (the checkpoint's head); labels must be below the class count"
        );
    }

    #[test]
    fn a_format_that_fixes_the_class_count_refuses_another_head() {
        let i = index(DatasetFormat::ImageFolder, 3, &[0, 2]);
        assert_eq!(resolve(None, &i, "u", "w.pth", Some(3)).unwrap(), 3);
        let e = resolve(None, &i, "u", "w.pth", Some(1000))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the dataset at u (imagefolder) has 3 classes but checkpoint w.pth has a 1000-class head; \
             pass --num-classes 1000 to evaluate the first 3 outputs anyway"
        );
        // Asked for explicitly, it runs.
        assert_eq!(
            resolve(Some(1000), &i, "u", "w.pth", Some(1000)).unwrap(),
            1000
        );
    }

    #[test]
    fn labels_at_or_above_the_class_count_are_configuration_errors() {
        let i = index(DatasetFormat::ImageFolder, 3, &[0, 2]);
        let e = resolve(Some(2), &i, "u", "w.pth", None).unwrap_err();
        assert!(
            matches!(&e, ClassesError::LabelOutOfRange { key, label: 2, classes: 2, .. } if key == "img/1.jpg"),
            "{e}"
        );
        assert!(e.to_string().contains("(--num-classes)"), "{e}");
        let e = resolve(Some(10), &i, "u", "w.pth", Some(1000)).unwrap_err();
        assert!(
            matches!(
                e,
                ClassesError::FlagMismatch {
                    given: 10,
                    head: 1000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn tar_sets_fix_the_count_only_with_named_classes() {
        let mut i = index(DatasetFormat::Tar, 2, &[0, 1]);
        assert!(!fixes_class_count(&i));
        assert_eq!(resolve(None, &i, "u", "w.pth", Some(1000)).unwrap(), 1000);
        i.class_names = vec!["cat".into(), "dog".into()];
        assert!(fixes_class_count(&i));
        assert!(resolve(None, &i, "u", "w.pth", Some(1000)).is_err());
    }
}
