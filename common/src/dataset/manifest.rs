//! Manifests: one sample per row, `path,label[,class_name]`, for datasets in no other format, as CSV
//! or (with the `parquet-manifest` feature, which the coordinator enables) Parquet.
//!
//! - A manifest is Parquet when its name ends in `.parquet` or its bytes start and end with the
//!   Parquet magic `PAR1`; otherwise CSV.
//! - Parquet: columns `path` (string), `label` (any integer type) and optionally `class_name`
//!   (string); other columns are ignored (they are named, so nothing is ambiguous). A missing column,
//!   another type, a null `path` or `label`, or a negative label is an error naming the column (and
//!   row, counted from 1). A null or empty `class_name` leaves the label unnamed.
//! - CSV: an optional header row is recognised by its second field not being a number (it must then name the
//!   columns `path,label[,class_name]`).
//! - `path` is relative to the manifest's folder (`images/001.jpg`) and must stay under it: `.` and `..`
//!   segments are rejected, and so are absolute paths (`/etc/passwd`)
//!   and URLs (`file:///etc/hostname`, `s3://bucket/x.jpg`), naming the row, unless the format option
//!   `allow_absolute_paths` (`--allow-absolute-paths`) is set: then a path starting with `/` is
//!   absolute within the manifest's store and a full URL of the same store is accepted (a URL of
//!   another store is still an error).
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
//! The CSV reader, the row checks and the path confinement are [`tresnet_formats::manifest`] (no store
//! involved, so they are fuzzed without one); this module reads the manifest from its store, reads
//! Parquet through polars, and turns the rows into samples.

use object_store::path::Path;
pub use tresnet_formats::manifest::{
    Base, DEFAULT_FILE, MAX_CLASSES, ManifestError, Row, RowError, Rows, Unit, parse_csv,
};

use super::{DatasetError, DatasetFormat, DatasetIndex, Sample, SampleSource};
use crate::storage::StorageLocation;

pub(crate) async fn list(
    location: &StorageLocation,
    file: Option<&str>,
    allow_absolute_paths: bool,
) -> Result<DatasetIndex, DatasetError> {
    let manifest = match file {
        Some(rel) => location.path_of(rel)?,
        None if location.prefix().filename().is_some_and(|f| {
            let f = f.to_ascii_lowercase();
            f.ends_with(".csv") || f.ends_with(".parquet")
        }) =>
        {
            location.prefix().clone()
        }
        None => location.path_of(DEFAULT_FILE)?,
    };
    let url = location.object_url(&manifest);
    let bytes = location.get(&manifest).await?;
    let base = base_for(
        location,
        &manifest.parent().unwrap_or_default(),
        allow_absolute_paths,
    );
    let (class_names, samples) =
        if tresnet_formats::manifest::is_parquet(manifest.filename(), &bytes) {
            parse_parquet(&url, &base, &bytes)?
        } else {
            parse(&url, &base, &bytes)?
        };
    DatasetIndex::new(
        &url,
        DatasetFormat::Manifest {
            file: file.map(str::to_string),
            allow_absolute_paths,
        },
        class_names,
        samples,
        vec![],
    )
}

/// Where the rows of a manifest in `folder` of `location`'s store may point.
pub(crate) fn base_for(
    location: &StorageLocation,
    folder: &Path,
    allow_absolute_paths: bool,
) -> Base {
    Base {
        folder: folder.to_string(),
        folder_url: location.object_url(folder),
        root_url: location.root_url().to_string(),
        allow_absolute_paths,
    }
}

/// A manifest's error as a dataset error naming the manifest: a CSV line as `url line N: reason`, a
/// Parquet row as `url: row N: reason`.
fn dataset_error(url: &str, e: ManifestError) -> DatasetError {
    match e {
        ManifestError::Row {
            unit: Unit::Line,
            at,
            reason,
        } => DatasetError::Line {
            url: url.to_string(),
            line: at,
            reason: reason.to_string(),
        },
        ManifestError::Row { .. } => DatasetError::invalid(url, e.to_string()),
        ManifestError::NoRows => DatasetError::NotFound {
            url: url.to_string(),
            what: "rows".into(),
        },
    }
}

/// Accepted rows → samples; a row whose object key the store's path rules refuse is an error at its
/// position.
fn samples_of(url: &str, unit: Unit, rows: Vec<Row>) -> Result<Vec<Sample>, DatasetError> {
    rows.into_iter()
        .map(|row| {
            let path = Path::parse(&row.object).map_err(|e| {
                let reason = RowError::ObjectKey {
                    field: row.key.clone(),
                    reason: e.to_string(),
                };
                dataset_error(
                    url,
                    ManifestError::Row {
                        unit,
                        at: row.at,
                        reason,
                    },
                )
            })?;
            Ok(Sample {
                key: row.key.into(),
                label: row.label,
                source: SampleSource::Object { path, size: None },
            })
        })
        .collect()
}

/// Parses a CSV manifest whose relative paths resolve against `base`; `url` names it in errors.
pub(crate) fn parse(
    url: &str,
    base: &Base,
    bytes: &[u8],
) -> Result<(Vec<String>, Vec<Sample>), DatasetError> {
    let (class_names, rows) = parse_csv(base, bytes).map_err(|e| dataset_error(url, e))?;
    Ok((class_names, samples_of(url, Unit::Line, rows)?))
}

/// Parses a Parquet manifest (see the module doc for its columns).
#[cfg(feature = "parquet-manifest")]
pub(crate) fn parse_parquet(
    url: &str,
    base: &Base,
    bytes: &[u8],
) -> Result<(Vec<String>, Vec<Sample>), DatasetError> {
    use polars::prelude::{DataType, ParquetReader, SerReader};

    let invalid = |reason: String| DatasetError::invalid(url, reason);
    let unreadable = |e: polars::error::PolarsError| invalid(format!("unreadable Parquet: {e}"));
    let mut reader = ParquetReader::new(std::io::Cursor::new(bytes));
    let schema = reader.schema().map_err(unreadable)?;
    let has = |name: &str| schema.iter_names().any(|n| n.as_str() == name);
    let mut columns = vec!["path".to_string(), "label".to_string()];
    for required in &columns {
        if !has(required) {
            return Err(invalid(format!(
                "no {required:?} column (columns: {}); expected path,label[,class_name]",
                schema
                    .iter_names()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
    }
    let with_names = has("class_name");
    if with_names {
        columns.push("class_name".into());
    }
    let df = reader
        .with_columns(Some(columns))
        .finish()
        .map_err(unreadable)?;
    let column = |name: &str| df.column(name).map_err(unreadable);
    let wrong_type = |name: &str, dtype: &DataType, expected: &str| {
        invalid(format!(
            "column {name:?} has type {dtype}, expected {expected}"
        ))
    };
    let path_col = column("path")?;
    let paths = path_col
        .str()
        .map_err(|_| wrong_type("path", path_col.dtype(), "a string"))?;
    let label_col = column("label")?;
    if !label_col.dtype().is_integer() {
        return Err(wrong_type("label", label_col.dtype(), "an integer"));
    }
    // Non-strict: the only values that do not fit i64 (u64 above i64::MAX) become nulls, told apart
    // from real nulls below.
    let labels_i64 = label_col.cast(&DataType::Int64).map_err(unreadable)?;
    let labels = labels_i64.i64().map_err(unreadable)?;
    let names = if with_names {
        let c = column("class_name")?;
        Some(
            c.str()
                .map_err(|_| wrong_type("class_name", c.dtype(), "a string"))?,
        )
    } else {
        None
    };
    let mut rows = Rows::new(base, Unit::Row);
    for i in 0..df.height() {
        let row = i as u64 + 1;
        let bad = |reason: RowError| {
            dataset_error(
                url,
                ManifestError::Row {
                    unit: Unit::Row,
                    at: row,
                    reason,
                },
            )
        };
        let path = paths.get(i).ok_or_else(|| bad(RowError::Null("path")))?;
        let label = match labels.get(i) {
            Some(label) => label,
            None => {
                let original = label_col.get(i).map_err(unreadable)?;
                return Err(bad(if original.is_null() {
                    RowError::Null("label")
                } else {
                    RowError::LabelTooLarge(original.to_string())
                }));
            }
        };
        if label < 0 {
            return Err(bad(RowError::NegativeLabel(label)));
        }
        let label = u32::try_from(label)
            .ok()
            .filter(|&l| l < MAX_CLASSES)
            .ok_or_else(|| bad(RowError::LabelTooLarge(label.to_string())))?;
        rows.push(row, path, label, names.and_then(|n| n.get(i)))
            .map_err(bad)?;
    }
    let (class_names, rows) = rows.finish().map_err(|e| dataset_error(url, e))?;
    Ok((class_names, samples_of(url, Unit::Row, rows)?))
}

/// Without the `parquet-manifest` feature a Parquet manifest is refused by name.
#[cfg(not(feature = "parquet-manifest"))]
pub(crate) fn parse_parquet(
    url: &str,
    _base: &Base,
    _bytes: &[u8],
) -> Result<(Vec<String>, Vec<Sample>), DatasetError> {
    Err(DatasetError::invalid(
        url,
        "is a Parquet manifest, but this build reads CSV manifests only \
         (build tresnet-common with the parquet-manifest feature)",
    ))
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
        let index = list(&location.sub("mine/manifest.csv").unwrap(), None, true)
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
        let by_file = list(&location, Some("mine/manifest.csv"), true)
            .await
            .unwrap();
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
        let index = list(&location, None, false).await.unwrap();
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
                "line 1: path \"s3://other/b.jpg\" is a URL, outside the manifest's folder",
            ),
            (
                "file,class\na.jpg,1\n",
                "line 1: header \"file,class\" is not path,label[,class_name]",
            ),
            ("a.jpg,1\na.jpg,2\n", "duplicate sample key \"a.jpg\""),
            ("path,label\n", "no rows found"),
        ] {
            let location = manifest("mf-bad", text).await;
            let err = list(&location, Some("mine/manifest.csv"), false)
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

    /// Without `allow_absolute_paths` no row may leave the manifest's folder: absolute paths and URLs
    /// (any store, this one included) are configuration errors naming the line; with it, those of the
    /// same store are read.
    #[tokio::test]
    async fn rows_are_confined_to_the_manifest_folder_unless_allowed() {
        for (row, what) in [
            ("/etc/passwd", "is absolute"),
            ("file:///etc/hostname", "is a URL"),
            ("memory://mf-conf/sets/other.jpg", "is a URL"),
            ("s3://bucket/x.jpg", "is a URL"),
        ] {
            let location = manifest("mf-conf", &format!("a.jpg,0\n{row},1\n")).await;
            let err = list(&location, Some("mine/manifest.csv"), false)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "manifest.csv line 2: path {row:?} {what}, outside the manifest's folder \
                     memory://mf-conf/sets/mine; pass --allow-absolute-paths"
                )),
                "{row}: {err}"
            );
        }
        let location = manifest("mf-conf", "a.jpg,0\n/sets/other.jpg,1\n").await;
        let index = list(&location, Some("mine/manifest.csv"), true)
            .await
            .unwrap();
        assert_eq!(index.samples[1].source.path().as_ref(), "sets/other.jpg");
        assert_eq!(
            index.format,
            DatasetFormat::Manifest {
                file: Some("mine/manifest.csv".into()),
                allow_absolute_paths: true
            }
        );
    }

    /// `columns` written as a Parquet file by polars.
    #[cfg(feature = "parquet-manifest")]
    fn parquet(columns: Vec<polars::prelude::Column>) -> Bytes {
        use polars::prelude::{DataFrame, ParquetWriter};
        let mut df = DataFrame::new_infer_height(columns).unwrap();
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf).finish(&mut df).unwrap();
        Bytes::from(buf)
    }

    #[cfg(feature = "parquet-manifest")]
    async fn parquet_at(bucket: &str, name: &str, bytes: Bytes) -> StorageLocation {
        let location = StorageLocation::parse(
            &format!("memory://{bucket}/sets"),
            &StorageOptions::default(),
        )
        .unwrap();
        location
            .put(&location.path_of(name).unwrap(), bytes)
            .await
            .unwrap();
        location
    }

    #[cfg(feature = "parquet-manifest")]
    #[tokio::test]
    async fn parquet_manifests_read_like_csv() {
        use polars::prelude::Column;
        let text = "path,label,class_name\n\
                    img/a.jpg,2,dog\n\
                    /elsewhere/b.png,0,\n\
                    memory://pq-ok/x/c.jpg,2,dog\n";
        let csv = manifest("pq-ok", text).await;
        let from_csv = list(&csv, Some("mine/manifest.csv"), true).await.unwrap();
        let bytes = parquet(vec![
            Column::new(
                "path".into(),
                ["img/a.jpg", "/elsewhere/b.png", "memory://pq-ok/x/c.jpg"],
            ),
            // Any integer type; extra columns are ignored.
            Column::new("label".into(), [2i32, 0, 2]),
            Column::new("class_name".into(), [Some("dog"), None, Some("dog")]),
            Column::new("width".into(), [1.5f64, 2.0, 3.0]),
        ]);
        assert!(bytes.starts_with(b"PAR1"));
        let location = parquet_at("pq-ok", "mine/manifest.parquet", bytes.clone()).await;
        let index = list(&location.sub("mine/manifest.parquet").unwrap(), None, true)
            .await
            .unwrap();
        assert_eq!(index.class_names, from_csv.class_names);
        assert_eq!(index.samples, from_csv.samples);
        // Recognised by its bytes under any name, and through the `file` option.
        let location = parquet_at("pq-ok", "mine/manifest.data", bytes).await;
        let by_magic = list(&location, Some("mine/manifest.data"), true)
            .await
            .unwrap();
        assert_eq!(by_magic.samples, from_csv.samples);
        // Without class names, labels are named by their decimal form, as in CSV.
        let bytes = parquet(vec![
            Column::new("path".into(), ["a.jpg", "b.jpg"]),
            Column::new("label".into(), [1u64, 0]),
        ]);
        let location = parquet_at("pq-ok", "plain.parquet", bytes).await;
        let index = list(&location, Some("plain.parquet"), false).await.unwrap();
        assert_eq!(index.class_names, ["0", "1"]);
        assert_eq!(index.samples[0].source.path().as_ref(), "sets/a.jpg");
    }

    #[cfg(feature = "parquet-manifest")]
    #[tokio::test]
    async fn parquet_errors_name_the_column_and_row() {
        use polars::prelude::Column;
        let paths = || Column::new("path".into(), ["a.jpg", "b.jpg"]);
        for (columns, expected) in [
            (
                vec![paths()],
                "no \"label\" column (columns: path); expected path,label[,class_name]",
            ),
            (
                vec![
                    Column::new("file".into(), ["a.jpg"]),
                    Column::new("label".into(), [0i64]),
                ],
                "no \"path\" column (columns: file,label)",
            ),
            (
                vec![paths(), Column::new("label".into(), [0.0f64, 1.0])],
                "column \"label\" has type f64, expected an integer",
            ),
            (
                vec![paths(), Column::new("label".into(), ["0", "1"])],
                "column \"label\" has type str, expected an integer",
            ),
            (
                vec![
                    Column::new("path".into(), [1i64, 2]),
                    Column::new("label".into(), [0i64, 1]),
                ],
                "column \"path\" has type i64, expected a string",
            ),
            (
                vec![paths(), Column::new("label".into(), [Some(0i64), None])],
                "row 2: label is null",
            ),
            (
                vec![
                    Column::new("path".into(), [Some("a.jpg"), None]),
                    Column::new("label".into(), [0i64, 1]),
                ],
                "row 2: path is null",
            ),
            (
                vec![paths(), Column::new("label".into(), [0i64, -3])],
                "row 2: label -3 is negative",
            ),
            (
                vec![paths(), Column::new("label".into(), [0u64, u64::MAX])],
                "row 2: label 18446744073709551615 is not below 1048576",
            ),
            (
                vec![paths(), Column::new("label".into(), [0i64, 1 << 20])],
                "row 2: label 1048576 is not below 1048576",
            ),
            (
                vec![
                    paths(),
                    Column::new("label".into(), [1i64, 1]),
                    Column::new("class_name".into(), ["cat", "dog"]),
                ],
                "row 2: label 1 is named \"dog\" here but \"cat\" on row 1",
            ),
            (
                vec![
                    Column::new("path".into(), ["a.jpg", "../b.jpg"]),
                    Column::new("label".into(), [0i64, 1]),
                ],
                "row 2: path \"../b.jpg\" has an empty, `.` or `..` segment",
            ),
            (
                vec![
                    Column::new("path".into(), ["a.jpg", "/etc/passwd"]),
                    Column::new("label".into(), [0i64, 1]),
                ],
                "row 2: path \"/etc/passwd\" is absolute, outside the manifest's folder",
            ),
            (
                vec![
                    Column::new("path".into(), ["file:///etc/hostname", "a.jpg"]),
                    Column::new("label".into(), [0i64, 1]),
                ],
                "row 1: path \"file:///etc/hostname\" is a URL, outside the manifest's folder",
            ),
            (
                vec![
                    Column::new("path".into(), ["a.jpg", "a.jpg"]),
                    Column::new("label".into(), [0i64, 1]),
                ],
                "duplicate sample key \"a.jpg\"",
            ),
            (
                vec![
                    Column::new("path".into(), Vec::<&str>::new()),
                    Column::new("label".into(), Vec::<i64>::new()),
                ],
                "no rows found",
            ),
        ] {
            let location = parquet_at("pq-bad", "m.parquet", parquet(columns)).await;
            let err = list(&location, Some("m.parquet"), false)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "expected {expected:?} in: {err}");
            assert!(err.contains("memory://pq-bad/sets/m.parquet"), "{err}");
        }
        // A file named .parquet that is not Parquet.
        let location = parquet_at("pq-bad", "text.parquet", Bytes::from_static(b"a.jpg,1\n")).await;
        let err = list(&location, Some("text.parquet"), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memory://pq-bad/sets/text.parquet: unreadable Parquet"),
            "{err}"
        );
    }

    #[cfg(not(feature = "parquet-manifest"))]
    #[tokio::test]
    async fn parquet_without_the_feature_is_refused_by_name() {
        let location =
            StorageLocation::parse("memory://pq-off/sets", &StorageOptions::default()).unwrap();
        let path = location.path_of("m.parquet").unwrap();
        location
            .put(&path, Bytes::from_static(b"PAR1....PAR1"))
            .await
            .unwrap();
        let err = list(&location, Some("m.parquet"), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "m.parquet: is a Parquet manifest, but this build reads CSV manifests only"
            ),
            "{err}"
        );
    }

    proptest! {
        /// Any text either parses into rows that match it or is rejected with a line number; never a panic.
        #[test]
        fn arbitrary_manifests_parse_or_fail_cleanly(text in "[a-z0-9./,\"\n -]{0,200}") {
            let location = StorageLocation::parse("memory://mf-prop/", &StorageOptions::default()).unwrap();
            let base = base_for(&location, &Path::default(), false);
            if let Ok((names, samples)) = parse("memory://mf-prop/m.csv", &base, text.as_bytes()) {
                for sample in &samples {
                    prop_assert!((sample.label as usize) < names.len());
                }
            }
        }
    }
}
