//! Manifest rows, `path,label[,class_name]`: the CSV reader, the checks every row passes whatever the
//! file format (label range, one name per label), and the resolution of a row's `path` to an object
//! key confined to the manifest's folder. The rules are documented with the dataset format in
//! `tresnet_common::dataset::manifest`, which reads the manifest from its store (and Parquet
//! manifests, through polars) and turns the rows into samples.

use std::collections::BTreeMap;

/// The manifest looked for when the location is a folder.
pub const DEFAULT_FILE: &str = "manifest.csv";
/// Labels at or above this are rejected: the class list is allocated up to the largest label, and no
/// real label space (ImageNet-21k has 21 843 classes) comes near a million.
pub const MAX_CLASSES: u32 = 1 << 20;
/// Parquet's magic number, at both ends of every Parquet file.
pub const PARQUET_MAGIC: &[u8] = b"PAR1";

/// Whether a manifest is Parquet: its file name ends in `.parquet`, or its bytes start and end with
/// the Parquet magic.
pub fn is_parquet(file_name: Option<&str>, bytes: &[u8]) -> bool {
    file_name.is_some_and(|f| f.to_ascii_lowercase().ends_with(".parquet"))
        || (bytes.len() >= 2 * PARQUET_MAGIC.len()
            && bytes.starts_with(PARQUET_MAGIC)
            && bytes.ends_with(PARQUET_MAGIC))
}

/// Where a row's `path` may point: under `folder` (the manifest's), or with `allow_absolute_paths`
/// anywhere in the store.
#[derive(Debug, Clone)]
pub struct Base {
    /// The manifest's folder as an object key within the store (`""` at the root).
    pub folder: String,
    /// The folder's URL, for messages.
    pub folder_url: String,
    /// The store's root URL (`s3://bucket`); full URLs of rows must start with it.
    pub root_url: String,
    pub allow_absolute_paths: bool,
}

/// Why one row is wrong; the manifest's errors wrap it with the row's position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("unreadable CSV: {0}")]
    Csv(String),
    #[error("{0} columns, expected path,label[,class_name]")]
    Columns(usize),
    #[error("header {0:?} is not path,label[,class_name]")]
    Header(String),
    #[error("label {0:?} is not an integer in 0..{MAX_CLASSES}")]
    LabelText(String),
    #[error("label {0} is not below {MAX_CLASSES}")]
    LabelTooLarge(String),
    #[error("label {0} is negative")]
    NegativeLabel(i64),
    #[error("{0} is null")]
    Null(&'static str),
    #[error("label {label} is named {name:?} here but {existing:?} on {unit} {first}")]
    NameConflict {
        label: u32,
        name: String,
        existing: String,
        unit: Unit,
        first: u64,
    },
    #[error("empty path")]
    EmptyPath,
    #[error(
        "path {field:?} is {what}, outside the manifest's folder {folder_url}; pass --allow-absolute-paths \
         to read objects anywhere in the store"
    )]
    Outside {
        field: String,
        what: &'static str,
        folder_url: String,
    },
    #[error("{field} is not in the manifest's store {root_url}")]
    OtherStore { field: String, root_url: String },
    #[error("path {0:?} has an empty, `.` or `..` segment")]
    Segment(String),
    /// The resolved key is one the store's path rules refuse (checked by the caller, which knows them).
    #[error("path {field:?}: {reason}")]
    ObjectKey { field: String, reason: String },
}

/// What a position in a manifest is called: a CSV line or a Parquet row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Line,
    Row,
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Line => "line",
            Self::Row => "row",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// `at` counts from 1.
    #[error("{unit} {at}: {reason}")]
    Row {
        unit: Unit,
        at: u64,
        reason: RowError,
    },
    #[error("no rows")]
    NoRows,
}

/// One accepted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Position in the manifest (line or row, from 1).
    pub at: u64,
    /// The `path` field as written: the sample's key.
    pub key: String,
    /// The object key it resolves to, within the manifest's store.
    pub object: String,
    pub label: u32,
}

/// Rows as they are read, checked the same way for CSV and Parquet.
#[derive(Debug)]
pub struct Rows<'a> {
    base: &'a Base,
    unit: Unit,
    rows: Vec<Row>,
    names: BTreeMap<u32, (String, u64)>,
    max_label: Option<u32>,
}

impl<'a> Rows<'a> {
    pub fn new(base: &'a Base, unit: Unit) -> Self {
        Self {
            base,
            unit,
            rows: Vec::new(),
            names: BTreeMap::new(),
            max_label: None,
        }
    }

    /// One row at position `at`; the reason it is wrong otherwise.
    pub fn push(
        &mut self,
        at: u64,
        path_field: &str,
        label: u32,
        name: Option<&str>,
    ) -> Result<(), RowError> {
        if label >= MAX_CLASSES {
            return Err(RowError::LabelTooLarge(label.to_string()));
        }
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            match self.names.get(&label) {
                Some((existing, first)) if existing != name => {
                    return Err(RowError::NameConflict {
                        label,
                        name: name.to_string(),
                        existing: existing.clone(),
                        unit: self.unit,
                        first: *first,
                    });
                }
                Some(_) => {}
                None => {
                    self.names.insert(label, (name.to_string(), at));
                }
            }
        }
        let object = resolve(self.base, path_field)?;
        self.max_label = self.max_label.max(Some(label));
        self.rows.push(Row {
            at,
            key: path_field.to_string(),
            object,
            label,
        });
        Ok(())
    }

    /// The class names (labels never named are called by their decimal form) and the rows.
    pub fn finish(mut self) -> Result<(Vec<String>, Vec<Row>), ManifestError> {
        let Some(max_label) = self.max_label else {
            return Err(ManifestError::NoRows);
        };
        let class_names = (0..=max_label)
            .map(|label| {
                self.names
                    .remove(&label)
                    .map_or_else(|| label.to_string(), |(name, _)| name)
            })
            .collect();
        Ok((class_names, self.rows))
    }
}

/// Parses a CSV manifest whose relative paths resolve against `base`.
pub fn parse_csv(base: &Base, bytes: &[u8]) -> Result<(Vec<String>, Vec<Row>), ManifestError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut rows = Rows::new(base, Unit::Line);
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| ManifestError::Row {
            unit: Unit::Line,
            at: e.position().map_or(0, |p| p.line()),
            reason: RowError::Csv(e.to_string()),
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let bad = |reason: RowError| ManifestError::Row {
            unit: Unit::Line,
            at: line,
            reason,
        };
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        if !(2..=3).contains(&record.len()) {
            return Err(bad(RowError::Columns(record.len())));
        }
        if i == 0 && record[1].parse::<u64>().is_err() {
            let header: Vec<String> = record.iter().map(str::to_ascii_lowercase).collect();
            if header[0] != "path"
                || header[1] != "label"
                || header.get(2).is_some_and(|h| h != "class_name")
            {
                return Err(bad(RowError::Header(
                    record.iter().collect::<Vec<_>>().join(","),
                )));
            }
            continue;
        }
        let label: u32 = record[1]
            .parse()
            .ok()
            .filter(|&l| l < MAX_CLASSES)
            .ok_or_else(|| bad(RowError::LabelText(record[1].to_string())))?;
        rows.push(line, &record[0], label, record.get(2))
            .map_err(bad)?;
    }
    rows.finish()
}

/// A manifest `path` field → object key (see the dataset format's doc for the forms it may take).
pub fn resolve(base: &Base, field: &str) -> Result<String, RowError> {
    if field.is_empty() {
        return Err(RowError::EmptyPath);
    }
    let outside = |what| RowError::Outside {
        field: field.to_string(),
        what,
        folder_url: base.folder_url.clone(),
    };
    let (start, rest) = if field.contains("://") {
        if !base.allow_absolute_paths {
            return Err(outside("a URL"));
        }
        let root = base.root_url.as_str();
        let rest = field
            .strip_prefix(root)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| RowError::OtherStore {
                field: field.to_string(),
                root_url: root.to_string(),
            })?;
        ("", rest)
    } else if let Some(rest) = field.strip_prefix('/') {
        if !base.allow_absolute_paths {
            return Err(outside("absolute"));
        }
        ("", rest)
    } else {
        (base.folder.as_str(), field)
    };
    if rest
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(RowError::Segment(field.to_string()));
    }
    // Verbatim, as listings return keys (see `StorageLocation::path_of`).
    Ok(if start.is_empty() {
        rest.to_string()
    } else {
        format!("{start}/{rest}")
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn base(allow_absolute_paths: bool) -> Base {
        Base {
            folder: "sets/mine".into(),
            folder_url: "memory://b/sets/mine".into(),
            root_url: "memory://b".into(),
            allow_absolute_paths,
        }
    }

    #[test]
    fn paths_resolve_under_the_folder_or_anywhere_when_allowed() {
        assert_eq!(
            resolve(&base(false), "img/a.jpg").unwrap(),
            "sets/mine/img/a.jpg"
        );
        assert_eq!(resolve(&base(true), "/x/b.jpg").unwrap(), "x/b.jpg");
        assert_eq!(
            resolve(&base(true), "memory://b/x/c.jpg").unwrap(),
            "x/c.jpg"
        );
        assert_eq!(
            resolve(&base(true), "s3://other/c.jpg")
                .unwrap_err()
                .to_string(),
            "s3://other/c.jpg is not in the manifest's store memory://b"
        );
        assert_eq!(
            resolve(&base(false), "/x/b.jpg").unwrap_err().to_string(),
            "path \"/x/b.jpg\" is absolute, outside the manifest's folder memory://b/sets/mine; \
             pass --allow-absolute-paths to read objects anywhere in the store"
        );
        assert_eq!(
            resolve(&base(false), "a//b.jpg").unwrap_err(),
            RowError::Segment("a//b.jpg".into())
        );
        assert_eq!(resolve(&base(false), "").unwrap_err(), RowError::EmptyPath);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = parse_csv(&base(false), b"a.jpg,1\nb.jpg,x\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: label \"x\" is not an integer in 0..1048576"
        );
        assert_eq!(
            parse_csv(&base(false), b"path,label\n").unwrap_err(),
            ManifestError::NoRows
        );
    }

    proptest! {
        /// Without `allow_absolute_paths`, whatever the text, every accepted row lies under the folder.
        #[test]
        fn confined_rows_stay_under_the_folder(text in "[a-z0-9./:,\"\n -]{0,200}") {
            if let Ok((names, rows)) = parse_csv(&base(false), text.as_bytes()) {
                for row in &rows {
                    prop_assert!(row.object.starts_with("sets/mine/"), "{:?}", row);
                    prop_assert!((row.label as usize) < names.len());
                }
            }
        }
    }
}
