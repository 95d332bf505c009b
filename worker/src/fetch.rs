//! A sample's bytes: from the node's dataset cache when it holds them, else from the job's store
//! (tried again once on what the store's own retries do not cover), then into the cache.

use std::sync::Arc;
use std::time::Duration;

use tresnet_common::dataset::Sample;
use tresnet_common::job::JobSpec;
use tresnet_common::storage::StorageLocation;

use crate::dataset_cache::{DatasetCache, EntryKey};
use crate::fault::{self, EnvironmentFault, Fault, SampleFault};
use crate::metrics::WorkerMetrics;

/// Tries of one sample's fetch, each with object_store's own retries inside: a second try covers what
/// those do not (a transfer that ends short of the listed size, a connection lost between retries).
const FETCH_ATTEMPTS: u32 = 2;
/// Pause before the second try; the store's own backoff has already waited.
const FETCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Fetches one job's samples from its dataset location, through the node's cache when the job's
/// objects are worth caching.
pub(crate) struct Fetcher {
    location: StorageLocation,
    /// Set when the job's objects are worth caching (a remote store, a fingerprinted dataset).
    cache: Option<Arc<DatasetCache>>,
    /// Part of every cache key: entries of one dataset version never serve another.
    dataset_fingerprint: String,
    /// For a local dataset, when the coordinator listed it (Unix ms): a file modified later is not
    /// the file that was listed. Object stores are checked by size alone (as listed).
    local_listed_at: Option<u64>,
    metrics: WorkerMetrics,
}

impl Fetcher {
    /// A fetcher for `job`'s samples at `location`, using the node's `cache` only where its keys are
    /// safe and it saves a transfer.
    pub(crate) fn new(
        location: StorageLocation,
        cache: Option<Arc<DatasetCache>>,
        job: &JobSpec,
        metrics: WorkerMetrics,
    ) -> Self {
        // Local files are already on this node; a job without a fingerprint gives no safe key.
        let remote = !["file://", "memory://"]
            .iter()
            .any(|s| location.root_url().starts_with(s));
        let cache = cache
            .filter(|_| remote && !job.data.dataset_fingerprint.is_empty() && !job.model.synthetic);
        let local_listed_at = job
            .data
            .listed_at_unix_ms
            .filter(|_| location.root_url() == "file://");
        Fetcher {
            location,
            cache,
            dataset_fingerprint: job.data.dataset_fingerprint.clone(),
            local_listed_at,
            metrics,
        }
    }

    /// The sample's bytes. A missing object is the sample's fault; anything else the store's, tried
    /// [`FETCH_ATTEMPTS`] times.
    pub(crate) async fn fetch(&self, s: &Sample) -> Result<bytes::Bytes, Fault> {
        let loc = &self.location;
        let path = s.source.path();
        let range = s.source.byte_range();
        let url = loc.object_url(path);
        let key = EntryKey {
            dataset_fingerprint: &self.dataset_fingerprint,
            object_url: &url,
            range: range.clone(),
            size: s.source.size(),
        };
        if let Some(cache) = &self.cache
            && let Some(bytes) = cache.get(&key).await
        {
            self.metrics.dataset_cache_hits.inc();
            return Ok(bytes);
        }
        let mut attempt = 1;
        let bytes = loop {
            let got = match &range {
                None => loc.get(path).await,
                Some(r) => loc.get_range(path, r.clone()).await,
            };
            let again = attempt < FETCH_ATTEMPTS;
            match got {
                Ok(b) => match s.source.size() {
                    // A short or long transfer first gets another try; only a size that persists is
                    // the object's own (it changed after the dataset was listed).
                    Some(listed) if b.len() as u64 != listed && again => {
                        tracing::warn!(%url, got = b.len(), listed, "object size differs from the listing; fetching again");
                    }
                    Some(listed) if b.len() as u64 != listed => {
                        return Err(SampleFault::SizeChanged {
                            url,
                            got: b.len() as u64,
                            listed,
                        }
                        .into());
                    }
                    _ => break b,
                },
                Err(e) if e.is_sample_fault() => {
                    return Err(SampleFault::Object(Box::new(e)).into());
                }
                Err(e) if again => {
                    tracing::warn!(%url, error = %fault::chain(&e), "fetch failed; trying again");
                }
                Err(source) => {
                    return Err(EnvironmentFault::Store {
                        url,
                        attempts: attempt,
                        source: Box::new(source),
                    }
                    .into());
                }
            }
            tokio::time::sleep(FETCH_RETRY_PAUSE).await;
            attempt += 1;
        };
        if let Some(listed) = self.local_listed_at {
            // After the read, so that a write racing it is seen too.
            let modified = match loc.head(path).await {
                Ok(meta) => meta.last_modified.timestamp_millis(),
                Err(e) if e.is_sample_fault() => {
                    return Err(SampleFault::Object(Box::new(e)).into());
                }
                Err(source) => {
                    return Err(EnvironmentFault::Store {
                        url,
                        attempts: 1,
                        source: Box::new(source),
                    }
                    .into());
                }
            };
            if modified > listed as i64 {
                return Err(SampleFault::ModifiedSinceListing {
                    url,
                    modified,
                    listed,
                }
                .into());
            }
        }
        if let Some(cache) = &self.cache {
            cache.put(&key, &bytes).await;
            self.metrics.dataset_cache_misses.inc();
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use tresnet_common::dataset::{Sample, SampleSource};
    use tresnet_common::storage::StorageOptions;

    use super::*;

    /// A local file rewritten after the listing (same size, so the size check cannot see it) is a bad
    /// sample; one untouched since is read.
    #[tokio::test]
    async fn a_local_file_modified_after_listing_is_a_bad_sample() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.jpg");
        std::fs::write(&file, b"0123").unwrap();
        let modified = std::fs::metadata(&file)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let location =
            StorageLocation::parse(dir.path().to_str().unwrap(), &StorageOptions::default())
                .unwrap();
        let sample = Sample {
            key: "a.jpg".into(),
            label: 0,
            source: SampleSource::Object {
                path: location.path_of("a.jpg").unwrap(),
                size: Some(4),
            },
        };
        let fetcher = |listed_at: Option<u64>| {
            let mut job = tresnet_common::job::example_job();
            job.data.listed_at_unix_ms = listed_at;
            Fetcher::new(location.clone(), None, &job, WorkerMetrics::default())
        };
        let read = fetcher(Some(modified + 1)).fetch(&sample).await.unwrap();
        assert_eq!(&read[..], b"0123");
        assert_eq!(&fetcher(None).fetch(&sample).await.unwrap()[..], b"0123");
        let err = fetcher(Some(modified - 1000))
            .fetch(&sample)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Fault::Sample(SampleFault::ModifiedSinceListing { .. })),
            "{err}"
        );
        assert!(
            err.to_string().ends_with("(changed since listing)"),
            "{err}"
        );
    }
}
