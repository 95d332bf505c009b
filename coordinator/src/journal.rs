//! Durable record of completed shards: one immutable object per shard, written whole (atomic rename
//! locally, a single PUT on an object store), so a restarted coordinator resumes without recomputing or
//! duplicating anything. The journal also holds the job spec, so a journal can never be resumed by a
//! different job even when the local run directory is new.

use std::path::{Path, PathBuf};

use prost::Message;
use tresnet_common::ids::ShardId;
use tresnet_common::job::JobSpec;
use tresnet_common::protocol::pb::ShardRecord;
use tresnet_common::storage::{StorageError, StorageLocation, StorageOptions};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {0}")]
    Storage(#[from] StorageError),
    #[error("journal record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "journal {url} belongs to a different job; refusing to mix results:\n  {}",
        differences.join("\n  ")
    )]
    OtherJob {
        url: String,
        differences: Vec<String>,
    },
}

#[derive(Debug, Clone)]
enum Backend {
    /// A folder on this machine: records are fsynced before they count.
    Local(PathBuf),
    /// An object store prefix: PUTs are atomic and immutable once written, the store is the durability.
    Store(StorageLocation),
}

#[derive(Debug, Clone)]
pub struct Journal {
    backend: Backend,
}

const JOB_FILE: &str = "job.json";

fn record_name(shard: ShardId) -> String {
    format!("shard-{:08}.pb", shard.0)
}

fn shard_of_name(name: &str) -> Option<ShardId> {
    name.strip_prefix("shard-")
        .and_then(|r| r.strip_suffix(".pb"))
        .and_then(|n| n.parse::<u64>().ok())
        .map(ShardId)
}

/// Writes `dir/name` whole: temporary file, fsync, rename, so a crash leaves all of it or none.
fn write_local(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), JournalError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |source| JournalError::Io {
        path: path.clone(),
        source,
    };
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

impl Journal {
    /// The journal in `run_dir/journal`.
    pub fn open(run_dir: &Path) -> Result<Self, JournalError> {
        Self::local(run_dir.join("journal"))
    }

    fn local(dir: PathBuf) -> Result<Self, JournalError> {
        std::fs::create_dir_all(&dir).map_err(|source| JournalError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Journal {
            backend: Backend::Local(dir),
        })
    }

    /// A journal at `url`: a plain path or `file://` is a local folder, anything else an object store
    /// prefix (`s3://bucket/runs/x/journal`), so the journal survives the coordinator's machine.
    pub fn open_url(url: &str, options: &StorageOptions) -> Result<Self, JournalError> {
        let location = StorageLocation::parse(url, options)?;
        if location.root_url() == "file://" {
            return Self::local(PathBuf::from(format!("/{}", location.prefix())));
        }
        Ok(Journal {
            backend: Backend::Store(location),
        })
    }

    /// Where the journal is, for messages.
    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Local(dir) => dir.display().to_string(),
            Backend::Store(loc) => loc.url().to_string(),
        }
    }

    /// Records `job` in a new journal, or checks that an existing journal was written by the same job.
    pub async fn bind_job(&self, job: &JobSpec) -> Result<(), JournalError> {
        let existing = self.get(JOB_FILE).await?;
        match existing {
            Some(bytes) => {
                let old: JobSpec =
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: PathBuf::from(format!("{}/{JOB_FILE}", self.url())),
                        reason: e.to_string(),
                    })?;
                let differences = old.differences(job);
                if differences.is_empty() {
                    Ok(())
                } else {
                    Err(JournalError::OtherJob {
                        url: self.url(),
                        differences,
                    })
                }
            }
            None => {
                let bytes = serde_json::to_vec_pretty(job).map_err(|e| JournalError::Corrupt {
                    path: PathBuf::from(JOB_FILE),
                    reason: e.to_string(),
                })?;
                self.put(JOB_FILE, bytes).await
            }
        }
    }

    /// Writes one shard's record whole: a crash leaves either the whole record or none of it.
    pub async fn write(&self, record: &ShardRecord) -> Result<(), JournalError> {
        self.put(
            &record_name(ShardId(record.shard_id)),
            record.encode_to_vec(),
        )
        .await
    }

    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), JournalError> {
        match &self.backend {
            Backend::Local(dir) => {
                let (dir, name) = (dir.clone(), name.to_string());
                // fsync takes milliseconds: keep it off the runtime threads that serve the RPCs.
                tokio::task::spawn_blocking(move || write_local(&dir, &name, &bytes))
                    .await
                    .map_err(|e| JournalError::Io {
                        path: PathBuf::from(self.url()),
                        source: std::io::Error::other(e),
                    })?
            }
            Backend::Store(loc) => {
                let path = loc.path_of(name)?;
                loc.put(&path, bytes).await?;
                Ok(())
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(JournalError::Io { path, source }),
                }
            }
            Backend::Store(loc) => {
                let path = loc.path_of(name)?;
                match loc.get(&path).await {
                    Ok(b) => Ok(Some(b.to_vec())),
                    Err(e) if e.is_not_found() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// One shard's record. Callable from synchronous code (report writing) with or without a tokio
    /// runtime: object-store reads then block this thread, which is what report writing wants.
    pub fn read(&self, shard: ShardId) -> Result<ShardRecord, JournalError> {
        let name = record_name(shard);
        let bytes = match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(&name);
                std::fs::read(&path).map_err(|source| JournalError::Io { path, source })?
            }
            Backend::Store(_) => {
                let fut = self.get(&name);
                let got = match tokio::runtime::Handle::try_current() {
                    Ok(handle) => tokio::task::block_in_place(|| handle.block_on(fut)),
                    Err(_) => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| JournalError::Io {
                            path: PathBuf::from(self.url()),
                            source,
                        })?
                        .block_on(fut),
                }?;
                got.ok_or_else(|| JournalError::Corrupt {
                    path: PathBuf::from(format!("{}/{name}", self.url())),
                    reason: "record listed as complete but missing".into(),
                })?
            }
        };
        let path = PathBuf::from(format!("{}/{name}", self.url()));
        let rec = ShardRecord::decode(bytes.as_slice()).map_err(|e| JournalError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if rec.shard_id != shard.0 {
            return Err(JournalError::Corrupt {
                path,
                reason: format!("holds shard {} instead", rec.shard_id),
            });
        }
        Ok(rec)
    }

    /// Shards with a complete record; leftover temporary files from a crash are ignored.
    pub async fn completed(&self) -> Result<Vec<ShardId>, JournalError> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Local(dir) => {
                let rd = std::fs::read_dir(dir).map_err(|source| JournalError::Io {
                    path: dir.clone(),
                    source,
                })?;
                for entry in rd.flatten() {
                    if let Some(s) = shard_of_name(&entry.file_name().to_string_lossy()) {
                        out.push(s);
                    }
                }
            }
            Backend::Store(loc) => {
                let objects = match loc.list().await {
                    Ok(o) => o,
                    // A journal that was never written has no objects; only a missing bucket is an error.
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                for meta in objects {
                    if let Some(s) = loc
                        .relative(&meta.location)
                        .as_deref()
                        .and_then(shard_of_name)
                    {
                        out.push(s);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresnet_common::protocol::pb::SampleResult;

    fn record(shard: u64) -> ShardRecord {
        ShardRecord {
            shard_id: shard,
            worker_id: "w".into(),
            results: vec![SampleResult {
                index: shard * 10,
                topk_indices: vec![1, 2],
                ..Default::default()
            }],
            counts: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_journal_writes_reads_and_lists_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.write(&record(7)).await.unwrap();
        std::fs::write(dir.path().join("journal/shard-00000009.pb.tmp"), b"torn").unwrap();
        assert_eq!(j.completed().await.unwrap(), vec![ShardId(7)]);
        assert_eq!(j.read(ShardId(7)).unwrap(), record(7));
        std::fs::write(
            dir.path().join("journal/shard-00000003.pb"),
            b"\xff\xff\xff",
        )
        .unwrap();
        let e = j.read(ShardId(3)).unwrap_err().to_string();
        assert!(
            e.contains("shard-00000003.pb") && e.contains("corrupt"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn object_store_journal_round_trips_and_resumes() {
        let url = "memory://journal-test/runs/a/journal";
        let j = Journal::open_url(url, &StorageOptions::default()).unwrap();
        assert!(j.completed().await.unwrap().is_empty());
        j.write(&record(2)).await.unwrap();
        j.write(&record(0)).await.unwrap();
        // A second handle (a restarted coordinator) sees the same records, sorted.
        let again = Journal::open_url(url, &StorageOptions::default()).unwrap();
        assert_eq!(
            again.completed().await.unwrap(),
            vec![ShardId(0), ShardId(2)]
        );
        assert_eq!(again.read(ShardId(2)).unwrap(), record(2));
        let e = again.read(ShardId(5)).unwrap_err().to_string();
        assert!(e.contains("shard-00000005.pb"), "{e}");
    }

    #[test]
    fn object_store_read_works_without_a_runtime() {
        let url = "memory://journal-test-sync/j";
        let j = Journal::open_url(url, &StorageOptions::default()).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(j.write(&record(4)))
            .unwrap();
        assert_eq!(j.read(ShardId(4)).unwrap(), record(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_refuses_a_different_job() {
        let dir = tempfile::tempdir().unwrap();
        let j =
            Journal::open_url(dir.path().to_str().unwrap(), &StorageOptions::default()).unwrap();
        let job = JobSpec {
            job_id: tresnet_common::ids::JobId("j".into()),
            model: "tresnet_m".into(),
            weights: "w.pth".into(),
            weights_sha256: "ab".into(),
            data_url: "file:///d".into(),
            format: tresnet_common::dataset::DatasetFormat::ImageFolder,
            dataset_fingerprint: "f".into(),
            dataset_samples: 3,
            num_classes: 2,
            preprocess: Default::default(),
            top_k: 2,
            save_logits: tresnet_common::job::SaveLogits::None,
            precision: "fp32".into(),
            fold_bn: true,
            batch_size: 2,
            shard_size: 2,
            leaky_slope: None,
            synthetic: false,
            counts_only: false,
        };
        j.bind_job(&job).await.unwrap();
        j.bind_job(&job).await.unwrap();
        let mut other = job.clone();
        other.model = "tresnet_l".into();
        let e = j.bind_job(&other).await.unwrap_err().to_string();
        assert!(e.contains("different job") && e.contains("model"), "{e}");
    }
}
