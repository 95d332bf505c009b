//! File names a store cannot key. Object keys are UTF-8, so a local dataset holding a file whose name
//! is not (a Latin-1 `café.jpg` copied from an old disk) cannot be listed at all. Rather than report
//! the first such name (and only through object_store's repeated error text), a failed listing of a
//! local folder walks it once and refuses the dataset with every offending name, each shown lossily
//! (U+FFFD for the undecodable bytes), so one rename pass fixes them all.

use std::path::Path as FsPath;

use object_store::local::LocalFileSystem;

use super::DatasetError;
use crate::storage::{StorageError, StorageLocation};

/// Names shown in the error at most; the rest are counted.
pub const MAX_NAMES_SHOWN: usize = 100;

/// The error for a failed listing of `location`: [`DatasetError::NonUtf8Names`] when it is a local
/// folder holding non-UTF-8 names, else `error` itself.
pub(crate) fn explain_list_failure(
    location: &StorageLocation,
    error: StorageError,
) -> DatasetError {
    if location.root_url() != "file://" {
        return error.into();
    }
    let Ok(root) = LocalFileSystem::new().path_to_filesystem(location.prefix()) else {
        return error.into();
    };
    let mut names = Vec::new();
    non_utf8_names(&root, &root, &mut names);
    if names.is_empty() {
        return error.into();
    }
    names.sort();
    let more = names.len().saturating_sub(MAX_NAMES_SHOWN);
    names.truncate(MAX_NAMES_SHOWN);
    DatasetError::NonUtf8Names {
        url: location.url().to_string(),
        names,
        more,
    }
}

/// Appends the paths under `dir` (relative to `root`, lossily rendered) whose last component is not
/// UTF-8; folders are walked whatever their names. Unreadable folders are skipped: the listing's own
/// error stands for them.
fn non_utf8_names(root: &FsPath, dir: &FsPath, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_str().is_none() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            non_utf8_names(root, &path, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;
    use crate::dataset::{DatasetFormat, list_dataset};
    use crate::storage::StorageOptions;

    /// Every offending name, once, in one error; the rest of the folder does not matter.
    #[tokio::test]
    async fn a_folder_with_non_utf8_names_is_refused_once_naming_them_all() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, name) in [
            (&b"cat"[..], &b"caf\xe9.jpg"[..]),
            (b"cat", b"ok.jpg"),
            (b"dog", b"\xff\xfe.png"),
            (b"d\xf6g", b"x.jpg"),
        ] {
            let folder = dir.path().join(OsStr::from_bytes(folder));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join(OsStr::from_bytes(name)), b"x").unwrap();
        }
        let location =
            StorageLocation::parse(dir.path().to_str().unwrap(), &StorageOptions::default())
                .unwrap();
        let err = list_dataset(&location, &DatasetFormat::ImageFolder)
            .await
            .unwrap_err();
        let DatasetError::NonUtf8Names { names, more, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            names,
            &[
                "cat/caf\u{fffd}.jpg",
                "dog/\u{fffd}\u{fffd}.png",
                "d\u{fffd}g"
            ]
        );
        assert_eq!(*more, 0);
        let text = err.to_string();
        assert_eq!(text.matches("caf\u{fffd}.jpg").count(), 1, "{text}");
        assert!(text.starts_with("3 file names under file://"), "{text}");
    }
}
