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
        Fetcher {
            location,
            cache,
            dataset_fingerprint: job.data.dataset_fingerprint.clone(),
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
        if let Some(cache) = &self.cache {
            cache.put(&key, &bytes).await;
            self.metrics.dataset_cache_misses.inc();
        }
        Ok(bytes)
    }
}
