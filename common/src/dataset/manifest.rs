//! CSV manifests: one sample per row, `path,label[,class_name]`, for datasets in no other format.
//!
//! - An optional header row is recognised by its second field not being a number (it must then name the
//!   columns `path,label[,class_name]`).
//! - `path` is relative to the manifest's folder (`images/001.jpg`), absolute within the manifest's store
//!   when it starts with `/`, or a full URL of the same store (`s3://bucket/images/001.jpg`); a URL of
//!   another store is an error. `.` and `..` segments are rejected.
//! - `label` is the class index as written (a non-negative integer below [`MAX_CLASSES`]); the class
//!   count is the largest label + 1. `class_name`, where given, names that label; the same label with two
//!   names is an error. Labels never named are called by their decimal form.
//!
//! Keys are the `path` field as written. The objects are not listed (a manifest may name a few images
//! of a huge bucket), so sizes are unknown and a missing image is reported by the fetch as a bad sample.
//! A malformed row (wrong column count, bad label, empty or escaping path, duplicate path) is a dataset
//! error naming the manifest and the line: a manifest is written by a program, and a broken row means
//! the program is wrong, so guessing which samples were meant would hide it.
//!
//! Parquet manifests are not read here (this crate does not link polars); the coordinator reads them
//! and builds the same samples.

use std::collections::BTreeMap;

use object_store::path::Path;

use super::{DatasetError, DatasetFormat, DatasetIndex, Sample, SampleSource};
use crate::storage::StorageLocation;

/// The manifest looked for when the location is a folder.
pub const DEFAULT_FILE: &str = "manifest.csv";
/// Labels at or above this are rejected: the class list is allocated up to the largest label, and no
/// real label space (ImageNet-21k has 21 843 classes) comes near a million.
pub const MAX_CLASSES: u32 = 1 << 20;

pub(crate) async fn list(
    location: &StorageLocation,
    file: Option<&str>,
) -> Result<DatasetIndex, DatasetError> {
    let manifest = match file {
        Some(rel) => location.path_of(rel)?,
        None if location
            .prefix()
            .filename()
            .is_some_and(|f| f.to_ascii_lowercase().ends_with(".csv")) =>
        {
            location.prefix().clone()
        }
        None => location.path_of(DEFAULT_FILE)?,
    };
    let url = location.object_url(&manifest);
    let bytes = location.get(&manifest).await?;
    let base = manifest.parent().unwrap_or_default();
    let (class_names, samples) = parse(location, &url, &base, &bytes)?;
    DatasetIndex::new(
        &url,
        DatasetFormat::Manifest {
            file: file.map(str::to_string),
        },
        class_names,
        samples,
        vec![],
    )
}

/// Parses a manifest whose relative paths resolve against `base`; `url` names it in errors.
pub(crate) fn parse(
    location: &StorageLocation,
    url: &str,
    base: &Path,
    bytes: &[u8],
) -> Result<(Vec<String>, Vec<Sample>), DatasetError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut samples = Vec::new();
    let mut names: BTreeMap<u32, (String, u64)> = BTreeMap::new();
    let mut max_label = None;
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            DatasetError::Line {
                url: url.to_string(),
                line,
                reason: format!("unreadable CSV: {e}"),
            }
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let bad = |reason: String| DatasetError::Line {
            url: url.to_string(),
            line,
            reason,
        };
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        if !(2..=3).contains(&record.len()) {
            return Err(bad(format!(
                "{} columns, expected path,label[,class_name]",
                record.len()
            )));
        }
        if i == 0 && record[1].parse::<u64>().is_err() {
            let header: Vec<String> = record.iter().map(str::to_ascii_lowercase).collect();
            if header[0] != "path"
                || header[1] != "label"
                || header.get(2).is_some_and(|h| h != "class_name")
            {
                return Err(bad(format!(
                    "header {:?} is not path,label[,class_name]",
                    record.iter().collect::<Vec<_>>().join(",")
                )));
            }
            continue;
        }
        let path_field = &record[0];
        let label: u32 = record[1]
            .parse()
            .ok()
            .filter(|&l| l < MAX_CLASSES)
            .ok_or_else(|| {
                bad(format!(
                    "label {:?} is not an integer in 0..{MAX_CLASSES}",
                    &record[1]
                ))
            })?;
        if let Some(name) = record.get(2).filter(|n| !n.is_empty()) {
            match names.get(&label) {
                Some((existing, first_line)) if existing != name => {
                    return Err(bad(format!(
                        "label {label} is named {name:?} here but {existing:?} on line {first_line}"
                    )));
                }
                Some(_) => {}
                None => {
                    names.insert(label, (name.to_string(), line));
                }
            }
        }
        let path = resolve(location, base, path_field).map_err(bad)?;
        max_label = max_label.max(Some(label));
        samples.push(Sample {
            key: path_field.to_string().into(),
            label,
            source: SampleSource::Object { path, size: None },
        });
    }
    let Some(max_label) = max_label else {
        return Err(DatasetError::NotFound {
            url: url.to_string(),
            what: "rows".into(),
        });
    };
    let class_names = (0..=max_label)
        .map(|label| {
            names
                .remove(&label)
                .map_or_else(|| label.to_string(), |(name, _)| name)
        })
        .collect();
    Ok((class_names, samples))
}

/// A manifest `path` field → object path (see the module doc for the three forms).
fn resolve(location: &StorageLocation, base: &Path, field: &str) -> Result<Path, String> {
    if field.is_empty() {
        return Err("empty path".into());
    }
    let (start, rest) = if field.contains("://") {
        let root = location.root_url();
        let rest = field
            .strip_prefix(root)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| format!("{field} is not in the manifest's store {root}"))?;
        (Path::default(), rest)
    } else if let Some(rest) = field.strip_prefix('/') {
        (Path::default(), rest)
    } else {
        (base.clone(), field)
    };
    if rest
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("path {field:?} has an empty, `.` or `..` segment"));
    }
    // Verbatim, as listings return keys (see `StorageLocation::path_of`).
    let joined = if start.is_root() {
        rest.to_string()
    } else {
        format!("{start}/{rest}")
    };
    Path::parse(joined).map_err(|e| format!("path {field:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::storage::StorageOptions;

    async fn manifest(name: &str, text: &str) -> StorageLocation {
        let location =
            StorageLocation::parse(&format!("memory://{name}/sets"), &StorageOptions::default())
                .unwrap();
        location
            .put(
                &location.path_of("mine/manifest.csv").unwrap(),
                Bytes::from(text.to_string()),
            )
            .await
            .unwrap();
        location
    }

    #[tokio::test]
    async fn rows_resolve_relative_absolute_and_url_paths() {
        let text = "path,label,class_name\n\
                    img/a.jpg,2,dog\n\
                    /elsewhere/b.png,0,\n\
                    memory://mf-ok/x/c.jpg,2,dog\n\n";
        let location = manifest("mf-ok", text).await;
        let index = list(&location.sub("mine/manifest.csv").unwrap(), None)
            .await
            .unwrap();
        assert_eq!(index.class_names, ["0", "1", "dog"]);
        let got: Vec<(&str, u32, &str)> = index
            .samples
            .iter()
            .map(|s| (s.key.as_str(), s.label, s.source.path().as_ref()))
            .collect();
        assert_eq!(
            got,
            [
                ("img/a.jpg", 2, "sets/mine/img/a.jpg"),
                ("/elsewhere/b.png", 0, "elsewhere/b.png"),
                ("memory://mf-ok/x/c.jpg", 2, "x/c.jpg"),
            ]
        );
        // The same manifest addressed as folder + file name.
        let by_file = list(&location, Some("mine/manifest.csv")).await.unwrap();
        assert_eq!(by_file.fingerprint, index.fingerprint);
    }

    #[tokio::test]
    async fn headerless_manifests_in_the_default_file() {
        let location =
            StorageLocation::parse("memory://mf-default/d", &StorageOptions::default()).unwrap();
        location
            .put(
                &location.path_of("manifest.csv").unwrap(),
                Bytes::from_static(b"a.jpg,1\nb.jpg,0\n"),
            )
            .await
            .unwrap();
        let index = list(&location, None).await.unwrap();
        assert_eq!(index.samples.len(), 2);
        assert_eq!(index.class_names, ["0", "1"]);
    }

    #[tokio::test]
    async fn malformed_rows_name_the_line() {
        for (text, expected) in [
            (
                "path,label\na.jpg,x\n",
                "line 2: label \"x\" is not an integer in 0..1048576",
            ),
            (
                "a.jpg,1\nb.jpg\n",
                "line 2: 1 columns, expected path,label[,class_name]",
            ),
            (
                "a.jpg,1,cat\nb.jpg,1,dog\n",
                "line 2: label 1 is named \"dog\" here but \"cat\" on line 1",
            ),
            (
                "a.jpg,1\n../b.jpg,1\n",
                "line 2: path \"../b.jpg\" has an empty, `.` or `..` segment",
            ),
            (
                "s3://other/b.jpg,1\n",
                "line 1: s3://other/b.jpg is not in the manifest's store memory://mf-bad",
            ),
            (
                "file,class\na.jpg,1\n",
                "line 1: header \"file,class\" is not path,label[,class_name]",
            ),
            ("a.jpg,1\na.jpg,2\n", "duplicate sample key \"a.jpg\""),
            ("path,label\n", "no rows found"),
        ] {
            let location = manifest("mf-bad", text).await;
            let err = list(&location, Some("mine/manifest.csv"))
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(
                err.contains("memory://mf-bad/sets/mine/manifest.csv"),
                "{err}"
            );
        }
    }

    proptest! {
        /// Any text either parses into rows that match it or is rejected with a line number; never a panic.
        #[test]
        fn arbitrary_manifests_parse_or_fail_cleanly(text in "[a-z0-9./,\"\n -]{0,200}") {
            let location = StorageLocation::parse("memory://mf-prop/", &StorageOptions::default()).unwrap();
            if let Ok((names, samples)) = parse(&location, "memory://mf-prop/m.csv", &Path::default(), text.as_bytes()) {
                for sample in &samples {
                    prop_assert!((sample.label as usize) < names.len());
                }
            }
        }
    }
}
