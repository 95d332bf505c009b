//! The per-node dataset cache: objects a worker fetched from an object store, kept on local disk so
//! that the next job of a sweep over the same dataset (or the next run on this node) reads them from
//! disk instead of fetching them again.
//!
//! An entry is keyed by the SHA-256 of the dataset fingerprint, the object's URL, the byte range and
//! the listed size. The fingerprint covers every sample's key, label and size, and the coordinator
//! recomputes it from a fresh listing for every job, so an added, removed or resized object (or any
//! other change to the dataset) gives new keys and is fetched again. What the key cannot see is an
//! object rewritten in place with exactly the same size and the same listing; clear the cache
//! (`rm -r` the folder, or `--no-dataset-cache`) after such an edit.
//!
//! Entries are written to a temporary file and renamed into place, so several workers of one node can
//! share a folder and a reader never sees a partial entry; an entry whose length is not the expected
//! one is treated as missing. With a size bound the oldest entries (by modification time, which a hit
//! refreshes) are evicted once the total exceeds it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create dataset cache folder {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which object bytes an entry holds.
#[derive(Debug, Clone)]
pub struct EntryKey<'a> {
    pub dataset_fingerprint: &'a str,
    /// The object's full URL (`s3://bucket/key`): different stores never share an entry.
    pub object_url: &'a str,
    /// `None`: the whole object.
    pub range: Option<Range<u64>>,
    /// The size the listing gave, when it gave one.
    pub size: Option<u64>,
}

impl EntryKey<'_> {
    fn digest(&self) -> String {
        // Length-prefixed fields: no two different keys hash the same byte stream.
        fn field(h: &mut Sha256, bytes: &[u8]) {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        let mut h = Sha256::new();
        field(&mut h, b"tresnet-dataset-cache-v1");
        field(&mut h, self.dataset_fingerprint.as_bytes());
        field(&mut h, self.object_url.as_bytes());
        match &self.range {
            Some(r) => {
                h.update([1]);
                h.update(r.start.to_le_bytes());
                h.update(r.end.to_le_bytes());
            }
            None => h.update([0]),
        }
        h.update(self.size.map_or(u64::MAX, |s| s).to_le_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The length a correct entry has, when the key says.
    fn expected_len(&self) -> Option<u64> {
        match &self.range {
            Some(r) => Some(r.end - r.start),
            None => self.size,
        }
    }
}

#[derive(Debug)]
pub struct DatasetCache {
    dir: PathBuf,
    max_bytes: Option<u64>,
    /// Bytes this process believes the folder holds; rescanned on eviction (other processes write too).
    bytes: Mutex<u64>,
}

/// Eviction stops at this fraction of the bound, so that not every insertion near the bound rescans.
const EVICT_TO: f64 = 0.9;

impl DatasetCache {
    /// Opens (creating) the cache folder `dir`; `max_bytes` bounds its size (`None`: unbounded).
    pub fn open(dir: &Path, max_bytes: Option<u64>) -> Result<Self, CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let bytes = entries(dir).iter().map(|e| e.1).sum();
        Ok(DatasetCache {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes: Mutex::new(bytes),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(&digest[..2]).join(digest)
    }

    /// The cached bytes, or `None` (missing, unreadable or of the wrong length: fetch again).
    pub async fn get(&self, key: &EntryKey<'_>) -> Option<Bytes> {
        let path = self.path(&key.digest());
        let bytes = tokio::fs::read(&path).await.ok()?;
        if key.expected_len().is_some_and(|n| n != bytes.len() as u64) {
            return None;
        }
        // The modification time is the eviction order: a hit makes the entry young again.
        let _ = std::fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        Some(Bytes::from(bytes))
    }

    /// Stores `bytes` under `key`. A failure only costs a later refetch, so it is logged, not returned.
    pub async fn put(&self, key: &EntryKey<'_>, bytes: &Bytes) {
        if key.expected_len().is_some_and(|n| n != bytes.len() as u64) {
            return;
        }
        let path = self.path(&key.digest());
        let written = async {
            let parent = path.parent().expect("entries live in a sub-folder");
            tokio::fs::create_dir_all(parent).await?;
            let tmp = parent.join(format!(
                ".{}.{}.tmp",
                path.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            tokio::fs::write(&tmp, bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write a dataset cache entry");
            return;
        }
        let Some(max) = self.max_bytes else { return };
        let over = {
            let mut total = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
            *total += bytes.len() as u64;
            *total > max
        };
        if over {
            let dir = self.dir.clone();
            let left = tokio::task::spawn_blocking(move || evict(&dir, max))
                .await
                .unwrap_or(0);
            *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = left;
        }
    }
}

/// Every entry file with its size and modification time.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let Ok(subs) = std::fs::read_dir(dir) else {
        return out;
    };
    for sub in subs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(m) = f.metadata()
                && m.is_file()
            {
                out.push((
                    f.path(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
    }
    out
}

/// Removes the oldest entries until the folder holds at most `EVICT_TO × max` bytes; returns what is
/// left.
fn evict(dir: &Path, max: u64) -> u64 {
    let mut all = entries(dir);
    let mut total: u64 = all.iter().map(|e| e.1).sum();
    let target = (max as f64 * EVICT_TO) as u64;
    all.sort_by_key(|e| e.2);
    for (path, len, _) in all {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
    total
}

/// `$XDG_CACHE_HOME/tresnet-eval/datasets`, else `~/.cache/tresnet-eval/datasets`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tresnet-eval").join("datasets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(
        fp: &'a str,
        url: &'a str,
        range: Option<Range<u64>>,
        size: Option<u64>,
    ) -> EntryKey<'a> {
        EntryKey {
            dataset_fingerprint: fp,
            object_url: url,
            range,
            size,
        }
    }

    #[tokio::test]
    async fn entries_are_found_only_under_their_exact_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DatasetCache::open(dir.path(), None).unwrap();
        let k = key("fp1", "s3://b/a.jpg", None, Some(5));
        assert!(cache.get(&k).await.is_none());
        cache.put(&k, &Bytes::from_static(b"hello")).await;
        assert_eq!(cache.get(&k).await.unwrap(), Bytes::from_static(b"hello"));
        // Another dataset version, object, size or range is another entry.
        for other in [
            key("fp2", "s3://b/a.jpg", None, Some(5)),
            key("fp1", "s3://b/b.jpg", None, Some(5)),
            key("fp1", "gs://b/a.jpg", None, Some(5)),
            key("fp1", "s3://b/a.jpg", None, Some(6)),
            key("fp1", "s3://b/a.jpg", Some(0..5), Some(5)),
        ] {
            assert!(cache.get(&other).await.is_none(), "{other:?}");
        }
        // A reopened cache (another worker process) sees the entry.
        let again = DatasetCache::open(dir.path(), None).unwrap();
        assert!(again.get(&k).await.is_some());
    }

    #[tokio::test]
    async fn wrong_length_entries_are_neither_stored_nor_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DatasetCache::open(dir.path(), None).unwrap();
        let k = key("fp", "s3://b/t.tar", Some(10..14), None);
        cache.put(&k, &Bytes::from_static(b"abc")).await;
        assert!(cache.get(&k).await.is_none());
        cache.put(&k, &Bytes::from_static(b"abcd")).await;
        // A truncated file on disk (a crash mid-copy by hand, a full disk) reads as missing.
        std::fs::write(cache.path(&k.digest()), b"ab").unwrap();
        assert!(cache.get(&k).await.is_none());
    }

    #[tokio::test]
    async fn a_size_bound_evicts_the_least_recently_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DatasetCache::open(dir.path(), Some(250)).unwrap();
        let urls: Vec<String> = (0..3).map(|i| format!("s3://b/{i}")).collect();
        let blob = Bytes::from(vec![7u8; 100]);
        for u in &urls[..2] {
            cache.put(&key("fp", u, None, Some(100)), &blob).await;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Touch the first so that the second is the oldest.
        assert!(
            cache
                .get(&key("fp", &urls[0], None, Some(100)))
                .await
                .is_some()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache
            .put(&key("fp", &urls[2], None, Some(100)), &blob)
            .await;
        let present: Vec<bool> = futures::future::join_all(
            urls.iter()
                .map(|u| async { cache.get(&key("fp", u, None, Some(100))).await.is_some() }),
        )
        .await;
        assert_eq!(present, [true, false, true]);
        assert!(entries(dir.path()).iter().map(|e| e.1).sum::<u64>() <= 250);
    }
}
