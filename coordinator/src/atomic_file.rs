//! Files that appear whole or not at all: every file the coordinator writes (reports, job.json, sweep
//! tables, baselines, local journal records) is written under a temporary name in its own folder,
//! fsynced, renamed over the target and the folder fsynced, so a crash or a full disk leaves the previous
//! file or none, never a truncated one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The cause is part of the message (not a `#[source]`): callers that flatten errors to one line
/// (report and gate errors, the service's fatal message) keep it that way.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {cause}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

/// A file being written under a temporary name next to `path`; [`AtomicFile::commit`] puts it in place.
/// Dropped without a commit (an error on the way), it removes the temporary file and leaves whatever
/// was at `path` untouched.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file (`.NAME.PID.tmp` in the folder of `path`: the same filesystem, so the
    /// rename is atomic; hidden, so nothing mistakes it for a report).
    pub fn create(path: &Path) -> Result<Self, AtomicWriteError> {
        let name = path.file_name().ok_or_else(|| AtomicWriteError {
            path: path.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|cause| AtomicWriteError {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// Where the file goes on commit.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the temporary file, for writers that take theirs by value and never give it
    /// back (polars' parquet `BatchedWriter`). Both share one file offset; finish with that writer
    /// before [`Self::commit`], whose fsync then covers what it wrote.
    pub fn handle(&self) -> Result<File, AtomicWriteError> {
        self.open_file()
            .try_clone()
            .map_err(|cause| self.error(cause))
    }

    fn open_file(&self) -> &File {
        // Only `commit` takes the file, and it consumes `self`.
        self.file
            .as_ref()
            .expect("an uncommitted AtomicFile has its file")
    }

    fn error(&self, cause: std::io::Error) -> AtomicWriteError {
        AtomicWriteError {
            path: self.path.clone(),
            cause,
        }
    }

    /// fsync, rename over the target, fsync the folder (so the rename itself survives a power loss).
    pub fn commit(mut self) -> Result<(), AtomicWriteError> {
        let file = self.file.take().expect("commit runs once");
        file.sync_all().map_err(|e| self.error(e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.error(e))?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.error(e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self.open_file();
        f.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut f = self.open_file();
        f.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not committed: the target keeps its previous content.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `path` whole through [`AtomicFile`], the content coming from `write` (a serializer, a
/// parquet or CSV writer); an error from `write` leaves `path` as it was.
pub fn write_atomic_with<E>(
    path: &Path,
    write: impl FnOnce(&mut AtomicFile) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<AtomicWriteError>,
{
    let mut f = AtomicFile::create(path)?;
    write(&mut f)?;
    Ok(f.commit()?)
}

/// Writes `bytes` to `path` whole (see [`AtomicFile`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    write_atomic_with(path, |f| {
        let p = f.path().to_path_buf();
        f.write_all(bytes)
            .map_err(|cause| AtomicWriteError { path: p, cause })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_committed_file_replaces_the_old_one_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new content").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        assert_eq!(names_in(dir.path()), ["summary.json"]);
    }

    /// A writer failing midway (what a full disk does to a serializer) leaves the previous file intact
    /// and no temporary behind, and the error names the target.
    #[test]
    fn a_failed_write_leaves_the_previous_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        write_atomic(&p, b"the good one").unwrap();
        let e = write_atomic_with(&p, |f| {
            f.write_all(b"half of a new ").unwrap();
            Err(AtomicWriteError {
                path: f.path().to_path_buf(),
                cause: std::io::Error::from_raw_os_error(28),
            })
        })
        .unwrap_err();
        assert_eq!(e.path, p);
        assert_eq!(e.cause.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read(&p).unwrap(), b"the good one");
        assert_eq!(names_in(dir.path()), ["summary.json"]);
    }

    #[test]
    fn an_uncommitted_file_never_appears() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.html");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"<html>").unwrap();
            let mut second = f.handle().unwrap();
            second.write_all(b"</html>").unwrap();
        }
        assert!(names_in(dir.path()).is_empty());
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"<html>").unwrap();
        f.handle().unwrap().write_all(b"</html>").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"<html></html>");
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gone").join("x.json");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(e.path, p);
        assert!(
            e.to_string()
                .starts_with(&format!("cannot write {}: ", p.display())),
            "{e}"
        );
    }
}
