//! Durable record of completed shards: one immutable file per shard, written atomically, so a
//! restarted coordinator resumes without recomputing or duplicating anything.

use std::path::{Path, PathBuf};

use prost::Message;
use tresnet_common::ids::ShardId;
use tresnet_common::protocol::pb::ShardRecord;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(run_dir: &Path) -> Result<Self, JournalError> {
        let dir = run_dir.join("journal");
        std::fs::create_dir_all(&dir).map_err(|source| JournalError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Journal { dir })
    }

    fn path_of(&self, shard: ShardId) -> PathBuf {
        self.dir.join(format!("shard-{:08}.pb", shard.0))
    }

    /// Writes the record to a temporary name, syncs it, then renames: a crash leaves either the whole
    /// record or none of it, never a torn one.
    pub fn write(&self, record: &ShardRecord) -> Result<(), JournalError> {
        let path = self.path_of(ShardId(record.shard_id));
        let tmp = path.with_extension("pb.tmp");
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&record.encode_to_vec()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    pub fn read(&self, shard: ShardId) -> Result<ShardRecord, JournalError> {
        let path = self.path_of(shard);
        let bytes = std::fs::read(&path).map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
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
    pub fn completed(&self) -> Result<Vec<ShardId>, JournalError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| JournalError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("shard-")
                .and_then(|r| r.strip_suffix(".pb"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push(ShardId(n));
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

    #[test]
    fn writes_reads_and_lists_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let rec = ShardRecord {
            shard_id: 7,
            worker_id: "w".into(),
            results: vec![SampleResult {
                index: 70,
                topk_indices: vec![1, 2],
                ..Default::default()
            }],
        };
        j.write(&rec).unwrap();
        std::fs::write(dir.path().join("journal/shard-00000009.pb.tmp"), b"torn").unwrap();
        assert_eq!(j.completed().unwrap(), vec![ShardId(7)]);
        assert_eq!(j.read(ShardId(7)).unwrap(), rec);
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
}
