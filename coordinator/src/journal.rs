//! Durable record of completed shards: one immutable object per shard, written whole (atomic rename
//! locally, a single PUT on an object store), so a restarted coordinator resumes without recomputing or
//! duplicating anything. The journal also holds the job spec, so a journal can never be resumed by a
//! different job even when the local run directory is new.
//!
//! Every record is sealed (a `JournalRecord` envelope, common/proto/tresnet.proto) with the identity of
//! its job and a SHA-256 over both, and a resumed run verifies every record before it counts: a damaged
//! record or one of another job is refused, naming it, or with [`OnBadRecord::Quarantine`] moved aside
//! into `quarantine/` and its shard computed again. Never silently used, never silently skipped.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tresnet_common::ids::ShardId;
use tresnet_common::job::{JobIdentity, JobSpec};
use tresnet_common::protocol::pb::{JournalRecord, ShardRecord};
use tresnet_common::storage::{StorageError, StorageLocation, StorageOptions};

use crate::atomic_file::{AtomicWriteError, write_atomic};

/// First field of every sealed record ("TRJR" little-endian): tells a record from stray bytes.
pub const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"TRJR");
/// The envelope's format; a record of another version is refused rather than guessed at.
pub const JOURNAL_FORMAT_VERSION: u32 = 1;
/// Folder (or key prefix) under the journal where bad records are moved by [`OnBadRecord::Quarantine`].
pub const QUARANTINE_DIR: &str = "quarantine";
/// Records read at once while a resumed run verifies its journal: on an object store each is a GET of
/// a few hundred KB, and a handful in flight hides the round trips without tripping rate limits.
const VERIFY_CONCURRENCY: usize = 16;

/// What makes a journal record unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("it cannot be decoded (truncated, or not a journal record): {0}")]
    Undecodable(String),
    #[error(
        "it predates journal checksums (written by an older tresnet-eval), so it cannot be verified"
    )]
    PredatesChecksums,
    #[error("its format version is {0}, this coordinator reads version {JOURNAL_FORMAT_VERSION}")]
    UnknownVersion(u32),
    #[error(
        "its checksum does not match its content (it was altered or damaged after it was written)"
    )]
    ChecksumMismatch,
    #[error("it belongs to another job (job identity {found}, this job's is {expected})")]
    OtherJob {
        found: JobIdentity,
        expected: JobIdentity,
    },
    #[error("it holds shard {0} instead")]
    WrongShard(u64),
    #[error("it was listed but is gone")]
    Vanished,
}

/// What a resumed run does with a record that fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRecord {
    /// Stop with an error naming the record (the default: nothing is decided behind the user's back).
    #[default]
    Refuse,
    /// Move it into `quarantine/` with a warning and compute its shard again.
    Quarantine,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    // Causes are part of these messages (not `#[source]`s) because the service reports a failed
    // journal write as a one-line string.
    #[error("journal {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "journal record {url} cannot be used: {problem}; rerun with --quarantine-corrupt-journal to \
         move it aside and compute its shard again"
    )]
    BadRecord { url: String, problem: RecordProblem },
    #[error("journal job spec {url} is not valid: {reason}")]
    BadJobSpec { url: String, reason: String },
    #[error(
        "journal {url} belongs to a different job; refusing to mix results:\n  {}",
        differences.join("\n  ")
    )]
    OtherJob {
        url: String,
        differences: Vec<String>,
    },
    #[error(
        "journal {url} was cut into shards of {journaled} samples, this run would cut {requested}; \
         rerun with --shard-size {journaled} to resume it"
    )]
    OtherCut {
        url: String,
        journaled: u64,
        requested: u64,
    },
    #[error("cannot move journal record {from} aside to {to}: {cause}")]
    Quarantine {
        from: String,
        to: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[derive(Debug, Clone)]
enum Backend {
    /// A folder on this machine: records are fsynced before they count.
    Local(PathBuf),
    /// An object store prefix: PUTs are atomic and immutable once written, the store is the durability.
    Store(StorageLocation),
}

/// The journal of one job: records are sealed with, and verified against, that job's identity.
#[derive(Debug, Clone)]
pub struct Journal {
    backend: Backend,
    identity: JobIdentity,
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

fn checksum(format_version: u32, identity: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format_version.to_le_bytes());
    h.update(identity);
    h.update(payload);
    h.finalize().into()
}

/// `record` as stored: sealed with the identity of the job it was computed for.
pub fn seal(record: &ShardRecord, identity: JobIdentity) -> Vec<u8> {
    let payload = record.encode_to_vec();
    JournalRecord {
        magic: JOURNAL_MAGIC,
        format_version: JOURNAL_FORMAT_VERSION,
        job_identity: identity.0.to_vec(),
        checksum: checksum(JOURNAL_FORMAT_VERSION, &identity.0, &payload).to_vec(),
        payload,
    }
    .encode_to_vec()
}

/// The record of `shard` in `bytes`, if they are an intact record of that shard sealed by the job
/// `identity`.
pub fn open_sealed(
    bytes: &[u8],
    shard: ShardId,
    identity: JobIdentity,
) -> Result<ShardRecord, RecordProblem> {
    let envelope = match JournalRecord::decode(bytes) {
        Ok(e) if e.magic == JOURNAL_MAGIC => e,
        decoded => {
            // A bare ShardRecord of this shard is what journals held before records were sealed.
            let legacy = ShardRecord::decode(bytes).is_ok_and(|r| r.shard_id == shard.0);
            return Err(match (legacy, decoded) {
                (true, _) => RecordProblem::PredatesChecksums,
                (false, Err(e)) => RecordProblem::Undecodable(e.to_string()),
                (false, Ok(e)) => {
                    RecordProblem::Undecodable(format!("magic number {:#010x}", e.magic))
                }
            });
        }
    };
    if envelope.format_version != JOURNAL_FORMAT_VERSION {
        return Err(RecordProblem::UnknownVersion(envelope.format_version));
    }
    let sum = checksum(
        envelope.format_version,
        &envelope.job_identity,
        &envelope.payload,
    );
    if envelope.checksum != sum {
        return Err(RecordProblem::ChecksumMismatch);
    }
    let found = JobIdentity(envelope.job_identity.as_slice().try_into().map_err(|_| {
        RecordProblem::Undecodable(format!(
            "job identity of {} bytes",
            envelope.job_identity.len()
        ))
    })?);
    if found != identity {
        return Err(RecordProblem::OtherJob {
            found,
            expected: identity,
        });
    }
    let record = ShardRecord::decode(envelope.payload.as_slice())
        .map_err(|e| RecordProblem::Undecodable(e.to_string()))?;
    if record.shard_id != shard.0 {
        return Err(RecordProblem::WrongShard(record.shard_id));
    }
    Ok(record)
}

/// The bytes of `dir/name`; `None` when there is no such file.
fn read_local(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(JournalError::Io { path, cause }),
    }
}

/// Milliseconds since the Unix epoch: the suffix that keeps quarantined copies of one record apart.
fn timestamp_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Journal {
    /// The journal in `run_dir/journal`, of the job with `identity`.
    pub fn open(run_dir: &Path, identity: JobIdentity) -> Result<Self, JournalError> {
        Self::local(run_dir.join("journal"), identity)
    }

    fn local(dir: PathBuf, identity: JobIdentity) -> Result<Self, JournalError> {
        std::fs::create_dir_all(&dir).map_err(|cause| JournalError::Io {
            path: dir.clone(),
            cause,
        })?;
        Ok(Journal {
            backend: Backend::Local(dir),
            identity,
        })
    }

    /// A journal at `url`: a plain path or `file://` is a local folder, anything else an object store
    /// prefix (`s3://bucket/runs/x/journal`), so the journal survives the coordinator's machine.
    pub fn open_url(
        url: &str,
        options: &StorageOptions,
        identity: JobIdentity,
    ) -> Result<Self, JournalError> {
        let location = StorageLocation::parse(url, options)?;
        if location.root_url() == "file://" {
            return Self::local(PathBuf::from(format!("/{}", location.prefix())), identity);
        }
        Ok(Journal {
            backend: Backend::Store(location),
            identity,
        })
    }

    /// Where the journal is, for messages.
    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Local(dir) => dir.display().to_string(),
            Backend::Store(loc) => loc.url().to_string(),
        }
    }

    /// Where `name` in the journal is, for messages.
    fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url())
    }

    /// Records `job` in a new journal, or checks that an existing journal was written by the same job.
    pub async fn bind_job(&self, job: &JobSpec) -> Result<(), JournalError> {
        let existing = self.get(JOB_FILE).await?;
        match existing {
            Some(bytes) => {
                let old: JobSpec =
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::BadJobSpec {
                        url: self.url_of(JOB_FILE),
                        reason: e.to_string(),
                    })?;
                let differences = old.differences(job);
                if !differences.is_empty() {
                    return Err(JournalError::OtherJob {
                        url: self.url(),
                        differences,
                    });
                }
                // Not part of the identity (it changes no number), but record N holds shard N of the
                // journal's cut: another cut would mix up which samples are done. The run directory's
                // job.json says the same, but a journal elsewhere may be resumed from a fresh --out.
                if old.batching.shard_size != job.batching.shard_size {
                    return Err(JournalError::OtherCut {
                        url: self.url(),
                        journaled: old.batching.shard_size,
                        requested: job.batching.shard_size,
                    });
                }
                Ok(())
            }
            None => {
                let bytes =
                    serde_json::to_vec_pretty(job).map_err(|e| JournalError::BadJobSpec {
                        url: self.url_of(JOB_FILE),
                        reason: e.to_string(),
                    })?;
                self.put(JOB_FILE, bytes).await
            }
        }
    }

    /// Writes one shard's record, sealed with this journal's job identity, whole: a crash leaves
    /// either the whole record or none of it.
    pub async fn write(&self, record: &ShardRecord) -> Result<(), JournalError> {
        self.put(
            &record_name(ShardId(record.shard_id)),
            seal(record, self.identity),
        )
        .await
    }

    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), JournalError> {
        match &self.backend {
            Backend::Local(dir) => {
                let path = dir.join(name);
                // fsync takes milliseconds: keep it off the runtime threads that serve the RPCs.
                tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                    .await
                    .map_err(|e| JournalError::Io {
                        path: PathBuf::from(self.url()),
                        cause: std::io::Error::other(e),
                    })??;
                Ok(())
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
            Backend::Local(dir) => read_local(dir, name),
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

    /// `shard`'s record, verified, or what is wrong with it.
    fn check(&self, shard: ShardId, bytes: Option<Vec<u8>>) -> Result<ShardRecord, RecordProblem> {
        match bytes {
            Some(bytes) => open_sealed(&bytes, shard, self.identity),
            None => Err(RecordProblem::Vanished),
        }
    }

    /// One shard's record, verified. Callable from synchronous code (report writing) with or without
    /// a tokio runtime: object-store reads then block this thread, which is what report writing wants.
    pub fn read(&self, shard: ShardId) -> Result<ShardRecord, JournalError> {
        let name = record_name(shard);
        let bytes = match &self.backend {
            Backend::Local(dir) => read_local(dir, &name)?,
            Backend::Store(_) => {
                let fut = self.get(&name);
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => tokio::task::block_in_place(|| handle.block_on(fut)),
                    Err(_) => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|cause| JournalError::Io {
                            path: PathBuf::from(self.url()),
                            cause,
                        })?
                        .block_on(fut),
                }?
            }
        };
        self.check(shard, bytes)
            .map_err(|problem| JournalError::BadRecord {
                url: self.url_of(&name),
                problem,
            })
    }

    /// Shards with a complete record (unverified); leftover temporary files from a crash and the
    /// quarantine are ignored.
    pub async fn completed(&self) -> Result<Vec<ShardId>, JournalError> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Local(dir) => {
                let rd = std::fs::read_dir(dir).map_err(|cause| JournalError::Io {
                    path: dir.clone(),
                    cause,
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
                    // Listings are recursive: `quarantine/shard-….pb.T` has a folder, so it never matches.
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

    /// The shards whose records are intact records of this journal's job: what a resumed run may
    /// count. A record that is not is refused (the error names it and what is wrong), or with
    /// [`OnBadRecord::Quarantine`] moved into `quarantine/` with a warning and left out, so that its
    /// shard is computed again.
    pub async fn verified(&self, on_bad: OnBadRecord) -> Result<Vec<ShardId>, JournalError> {
        let listed = self.completed().await?;
        let mut checks = futures::stream::iter(listed.iter().map(|&s| async move {
            let bytes = self.get(&record_name(s)).await;
            (s, bytes.map(|b| self.check(s, b)))
        }))
        .buffered(VERIFY_CONCURRENCY);
        let mut good = Vec::with_capacity(listed.len());
        while let Some((shard, loaded)) = checks.next().await {
            let problem = match loaded? {
                Ok(_) => {
                    good.push(shard);
                    continue;
                }
                Err(p) => p,
            };
            let url = self.url_of(&record_name(shard));
            match on_bad {
                OnBadRecord::Refuse => return Err(JournalError::BadRecord { url, problem }),
                OnBadRecord::Quarantine if problem == RecordProblem::Vanished => {
                    tracing::warn!(record = %url, "journal record {url} is gone; its shard will be computed again");
                }
                OnBadRecord::Quarantine => {
                    let to = self.quarantine(shard).await?;
                    tracing::warn!(
                        record = %url,
                        quarantined = %to,
                        "journal record {url} cannot be used: {problem}; moved it to {to}, its shard will be computed again"
                    );
                }
            }
        }
        Ok(good)
    }

    /// Moves `shard`'s record to `quarantine/shard-NNNNNNNN.pb.<unix ms>`: a rename locally, a copy
    /// then a delete on an object store. Returns where it went.
    async fn quarantine(&self, shard: ShardId) -> Result<String, JournalError> {
        let name = record_name(shard);
        let aside = format!("{QUARANTINE_DIR}/{name}.{}", timestamp_ms());
        let to = self.url_of(&aside);
        let failed = |cause: Box<dyn std::error::Error + Send + Sync>| JournalError::Quarantine {
            from: self.url_of(&name),
            to: to.clone(),
            cause,
        };
        match &self.backend {
            Backend::Local(dir) => {
                let (from, dest) = (dir.join(&name), dir.join(&aside));
                let moved = std::fs::create_dir_all(dir.join(QUARANTINE_DIR))
                    .and_then(|()| std::fs::rename(&from, &dest))
                    // Both folders changed: make the move itself durable.
                    .and_then(|()| std::fs::File::open(dir.join(QUARANTINE_DIR))?.sync_all())
                    .and_then(|()| std::fs::File::open(dir)?.sync_all());
                moved.map_err(|e| failed(e.into()))?;
            }
            Backend::Store(loc) => {
                let from = loc.path_of(&name)?;
                let dest = loc.path_of(&aside)?;
                loc.store()
                    .copy(&from, &dest)
                    .await
                    .map_err(|e| failed(e.into()))?;
                loc.store()
                    .delete(&from)
                    .await
                    .map_err(|e| failed(e.into()))?;
            }
        }
        Ok(to)
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
                topk_logits: vec![0.5, 0.25],
                loss: 1.5,
                ..Default::default()
            }],
            counts: None,
        }
    }

    fn job() -> JobSpec {
        tresnet_common::job::example_job()
    }

    fn identity() -> JobIdentity {
        job().identity_digest()
    }

    fn other_identity() -> JobIdentity {
        let mut other = job();
        other.outputs.top_k = 1;
        other.identity_digest()
    }

    #[test]
    fn a_sealed_record_opens_to_itself() {
        let sealed = seal(&record(3), identity());
        assert_eq!(open_sealed(&sealed, ShardId(3), identity()), Ok(record(3)));
    }

    #[test]
    fn the_job_identity_covers_every_identity_field_and_nothing_else() {
        assert_ne!(identity(), other_identity());
        let mut same = job();
        // Batch and shard size cannot change a number; resuming with other values is allowed.
        same.batching.batch_size = 64;
        same.batching.shard_size = 100;
        same.job_id = tresnet_common::ids::JobId("another".into());
        assert_eq!(same.identity_digest(), identity());
    }

    /// Whichever byte is damaged, the record is refused: the checksum covers the payload and the
    /// identity, and damage to the frame makes it undecodable or fail the checksum.
    #[test]
    fn any_flipped_byte_is_detected() {
        let sealed = seal(&record(3), identity());
        for i in 0..sealed.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = sealed.clone();
                bad[i] ^= flip;
                let got = open_sealed(&bad, ShardId(3), identity());
                assert!(got.is_err(), "byte {i} ^ {flip:#x} went unnoticed");
            }
        }
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(
            open_sealed(&bad, ShardId(3), identity()),
            Err(RecordProblem::ChecksumMismatch)
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let sealed = seal(&record(3), identity());
        for len in 0..sealed.len() {
            let got = open_sealed(&sealed[..len], ShardId(3), identity());
            assert!(got.is_err(), "truncated to {len} bytes: {got:?}");
        }
    }

    #[test]
    fn a_record_of_another_job_is_foreign_not_corrupt() {
        let sealed = seal(&record(3), other_identity());
        assert_eq!(
            open_sealed(&sealed, ShardId(3), identity()),
            Err(RecordProblem::OtherJob {
                found: other_identity(),
                expected: identity()
            })
        );
    }

    #[test]
    fn a_record_under_another_shards_name_is_refused() {
        let sealed = seal(&record(3), identity());
        assert_eq!(
            open_sealed(&sealed, ShardId(4), identity()),
            Err(RecordProblem::WrongShard(3))
        );
    }

    #[test]
    fn records_written_before_checksums_are_recognised_and_refused() {
        for shard in [0, 1, 7] {
            let bare = record(shard).encode_to_vec();
            assert_eq!(
                open_sealed(&bare, ShardId(shard), identity()),
                Err(RecordProblem::PredatesChecksums),
                "shard {shard}"
            );
        }
        let mut unknown = JournalRecord::decode(seal(&record(1), identity()).as_slice()).unwrap();
        unknown.format_version = 2;
        assert_eq!(
            open_sealed(&unknown.encode_to_vec(), ShardId(1), identity()),
            Err(RecordProblem::UnknownVersion(2))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_journal_writes_reads_and_lists_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), identity()).unwrap();
        j.write(&record(7)).await.unwrap();
        std::fs::write(dir.path().join("journal/.shard-00000009.pb.1.tmp"), b"torn").unwrap();
        assert_eq!(j.completed().await.unwrap(), vec![ShardId(7)]);
        assert_eq!(j.read(ShardId(7)).unwrap(), record(7));
        std::fs::write(
            dir.path().join("journal/shard-00000003.pb"),
            b"\xff\xff\xff",
        )
        .unwrap();
        let e = j.read(ShardId(3)).unwrap_err().to_string();
        assert!(
            e.contains("shard-00000003.pb") && e.contains("cannot be decoded"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn object_store_journal_round_trips_and_resumes() {
        let url = "memory://journal-test/runs/a/journal";
        let j = Journal::open_url(url, &StorageOptions::default(), identity()).unwrap();
        assert!(j.completed().await.unwrap().is_empty());
        j.write(&record(2)).await.unwrap();
        j.write(&record(0)).await.unwrap();
        // A second handle (a restarted coordinator) sees the same records, sorted.
        let again = Journal::open_url(url, &StorageOptions::default(), identity()).unwrap();
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
        let j = Journal::open_url(url, &StorageOptions::default(), identity()).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(j.write(&record(4)))
            .unwrap();
        assert_eq!(j.read(ShardId(4)).unwrap(), record(4));
    }

    /// Overwrites `shard`'s record in `j` with `bytes`, as damage or a careless copy would.
    async fn overwrite(j: &Journal, shard: u64, bytes: Vec<u8>) {
        j.put(&record_name(ShardId(shard)), bytes).await.unwrap();
    }

    /// Resuming verifies every record: a damaged or foreign one is refused by name, or quarantined
    /// (and left out, so its shard runs again) on request; the good ones count either way.
    async fn verification_refuses_or_quarantines(
        j: Journal,
        quarantined: impl Fn() -> Vec<String>,
    ) {
        for s in 0..4 {
            j.write(&record(s)).await.unwrap();
        }
        assert_eq!(
            j.verified(OnBadRecord::Refuse).await.unwrap(),
            (0..4).map(ShardId).collect::<Vec<_>>()
        );
        let mut flipped = seal(&record(1), identity());
        let at = flipped.len() - 3;
        flipped[at] ^= 0x10;
        overwrite(&j, 1, flipped).await;
        let e = j
            .verified(OnBadRecord::Refuse)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{}/shard-00000001.pb", j.url()))
                && e.contains("checksum does not match")
                && e.contains("--quarantine-corrupt-journal"),
            "{e}"
        );
        overwrite(&j, 1, seal(&record(1), identity())).await;
        overwrite(&j, 2, seal(&record(2), other_identity())).await;
        let e = j
            .verified(OnBadRecord::Refuse)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard-00000002.pb") && e.contains("another job"),
            "{e}"
        );
        assert!(quarantined().is_empty());
        assert_eq!(
            j.verified(OnBadRecord::Quarantine).await.unwrap(),
            vec![ShardId(0), ShardId(1), ShardId(3)]
        );
        let q = quarantined();
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(q[0].starts_with("shard-00000002.pb."), "{q:?}");
        // The quarantine is not part of the journal any more.
        assert_eq!(
            j.completed().await.unwrap(),
            vec![ShardId(0), ShardId(1), ShardId(3)]
        );
        assert!(j.verified(OnBadRecord::Refuse).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_journal_refuses_or_quarantines_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), identity()).unwrap();
        let q = dir.path().join("journal").join(QUARANTINE_DIR);
        verification_refuses_or_quarantines(j, || {
            std::fs::read_dir(&q)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_store_journal_refuses_or_quarantines_bad_records() {
        let url = "memory://journal-quarantine/runs/q/journal";
        let j = Journal::open_url(url, &StorageOptions::default(), identity()).unwrap();
        let q = StorageLocation::parse(
            &format!("{url}/{QUARANTINE_DIR}"),
            &StorageOptions::default(),
        )
        .unwrap();
        let listed = move || {
            let q = q.clone();
            let objects = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(q.list())
            })
            .unwrap_or_default();
            objects
                .iter()
                .filter_map(|m| q.relative(&m.location))
                .collect()
        };
        verification_refuses_or_quarantines(j, listed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_refuses_a_different_job() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open_url(
            dir.path().to_str().unwrap(),
            &StorageOptions::default(),
            identity(),
        )
        .unwrap();
        j.bind_job(&job()).await.unwrap();
        j.bind_job(&job()).await.unwrap();
        let mut other = job();
        other.model.model = "tresnet_l".into();
        let e = j.bind_job(&other).await.unwrap_err().to_string();
        assert!(e.contains("different job") && e.contains("model"), "{e}");
        let mut recut = job();
        recut.batching.shard_size = job().batching.shard_size + 1;
        let e = j.bind_job(&recut).await.unwrap_err().to_string();
        let want = format!("rerun with --shard-size {}", job().batching.shard_size);
        assert!(e.contains("cut into shards") && e.contains(&want), "{e}");
    }
}
