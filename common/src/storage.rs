//! Where datasets and runs live: a location string (plain path, `file://`, `s3://`, `gs://`, `az://`,
//! `memory://`) parsed into an `object_store` store plus a key prefix, with retries, ranged reads,
//! bounded-concurrency fetches, and errors that name the object and say what to fix.
//!
//! Credentials and endpoints come from each cloud's standard environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`, read by the `*Builder::from_env()` constructors); [`StorageOptions`] overrides
//! them, which is how S3-compatible servers (endpoint, plain http, path-style) and the tests configure
//! a store without touching the process environment.
//!
//! `memory://NAME/prefix` names a process-wide in-memory store: every location with the same `NAME`
//! sees the same objects, so in-process tests can write a dataset through one location and read it
//! through another (as the coordinator and the worker would).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use object_store::ClientConfigKey;
use object_store::aws::AmazonS3Builder;
use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::gcp::GoogleConfigKey;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use url::Url;

use crate::error_text::error_chain;

mod args;
pub mod request_failures;

pub use args::StoreArgs;

use request_failures::CountingConnector;

/// Retries per request before giving up. object_store's default: enough to ride out an S3 `503 SlowDown`
/// burst or a dropped connection, which are routine at thousands of GETs per second.
pub const DEFAULT_MAX_RETRIES: usize = 10;
/// Upper bound on the time spent retrying one request. object_store's default; it must stay under the
/// ~5 min for which a signed request stays valid, because retries reuse the signature.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(180);
/// First backoff; doubled (with jitter) up to [`DEFAULT_MAX_BACKOFF`]. object_store's defaults, which
/// follow AWS's guidance for throttling responses.
pub const DEFAULT_INIT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest single backoff between two attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Time one request (headers and body) may take. object_store's default: long enough for a large tar
/// shard's range over a slow link, short enough that a frozen server is noticed and retried.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to open a connection; object_store's default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight for [`fetch_many`] when the caller has no better number: one S3 connection
/// delivers roughly 50–100 MB/s, so 16 saturate a 10 GbE link for ~100 KB JPEGs without tripping
/// per-prefix request-rate limits.
pub const DEFAULT_FETCH_CONCURRENCY: usize = 16;

/// Overrides for what the cloud SDK conventions would read from the environment. `None` keeps the
/// environment's (or the builder's) value.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// S3 endpoint for S3-compatible servers, e.g. `http://127.0.0.1:9000` (else `AWS_ENDPOINT`).
    pub s3_endpoint: Option<String>,
    /// S3 region (else `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub s3_region: Option<String>,
    /// Allow plain `http://` endpoints (else `AWS_ALLOW_HTTP`); needed by local S3-compatible servers.
    pub s3_allow_http: Option<bool>,
    /// Path-style requests (`endpoint/bucket/key`) rather than virtual-hosted (`bucket.endpoint/key`).
    /// object_store defaults to path-style, which is what most S3-compatible servers expect.
    pub s3_path_style: Option<bool>,
    /// Static credentials (else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
    /// else the instance or container credential providers).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub s3_session_token: Option<String>,
    /// Retry policy for every remote store (local and in-memory stores do not retry).
    pub retry: RetryConfig,
    /// Time one request may take, body included, before it fails (and is retried): what bounds a
    /// request to a store that accepted the connection and then froze.
    pub request_timeout: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
}

impl StorageOptions {
    /// object_store's HTTP client settings for these options, as config keys: setting them one by one
    /// keeps the rest of what the builder read from the environment (`AWS_ALLOW_HTTP`, proxies),
    /// which replacing its whole `ClientOptions` would drop.
    fn client_settings(&self) -> [(ClientConfigKey, String); 2] {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        [
            (ClientConfigKey::Timeout, ms(self.request_timeout)),
            (ClientConfigKey::ConnectTimeout, ms(self.connect_timeout)),
        ]
    }
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: None,
            s3_path_style: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_session_token: None,
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: DEFAULT_INIT_BACKOFF,
                    max_backoff: DEFAULT_MAX_BACKOFF,
                    base: 2.0,
                },
                max_retries: DEFAULT_MAX_RETRIES,
                retry_timeout: DEFAULT_RETRY_TIMEOUT,
            },
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Everything that can go wrong talking to a store; each variant names the URL of the object or prefix.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage location {location:?}: {reason}")]
    InvalidLocation {
        location: String,
        // In the message, not the source chain: `{:#}` would print it twice.
        reason: LocationError,
    },
    #[error("cannot configure the object store for {url}")]
    Configure {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("bucket {bucket:?} does not exist (while accessing {url})")]
    BucketNotFound { bucket: String, url: String },
    #[error("object {url} not found")]
    NotFound { url: String },
    #[error(
        "access denied to {url} ({detail}): check the credentials ({credentials_hint}) and the \
         bucket's permissions"
    )]
    AccessDenied {
        url: String,
        detail: String,
        /// Where the store of `url` takes its credentials from (its scheme's environment variables).
        credentials_hint: &'static str,
    },
    #[error(
        "not authenticated for {url} ({detail}): no valid credentials were found in the options or \
         the environment ({credentials_hint})"
    )]
    Unauthenticated {
        url: String,
        detail: String,
        credentials_hint: &'static str,
    },
    #[error("invalid object path {path:?} under {url}: {reason}")]
    InvalidPath {
        url: String,
        path: String,
        reason: String,
    },
    #[error("object store error at {url}")]
    Other {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

impl StorageError {
    /// Whether the object (not the bucket or the credentials) is missing: the one storage failure that
    /// is a property of a single sample rather than of the whole run.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether the sample is at fault: its object is missing or its key names no valid object. Every
    /// other failure (the bucket, the credentials, the network, the server, the local disk) is a fault
    /// of the environment, which must never be recorded against the sample: the work is retried.
    pub fn is_sample_fault(&self) -> bool {
        matches!(self, Self::NotFound { .. } | Self::InvalidPath { .. })
    }
}

/// A store plus a key prefix inside it, with the URL it came from for messages.
#[derive(Clone)]
pub struct StorageLocation {
    /// The location as the user would write it, normalised (`s3://bucket/prefix`, `file:///abs/dir`).
    url: String,
    /// `scheme://bucket` (or `file://`); object URLs are `{root_url}/{path}`.
    root_url: String,
    /// Bucket or container name, for "bucket does not exist" messages.
    bucket: Option<String>,
    /// Whether this is a cloud bucket whose existence [`Self::object_error`] may have to probe, and
    /// whether a probe already found it; shared by clones so a run probes at most once per bucket.
    remote: bool,
    bucket_seen: Arc<AtomicBool>,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl fmt::Debug for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageLocation")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Process-wide `memory://NAME` stores; see the module doc.
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(Default::default);

impl StorageLocation {
    /// Parses a plain path or a URL. Plain paths and `file://` need not exist yet (a run directory is
    /// created by its first write).
    pub fn parse(location: &str, options: &StorageOptions) -> Result<Self, StorageError> {
        let invalid = |reason: LocationError| StorageError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if location.is_empty() {
            return Err(invalid(LocationError::Empty));
        }
        let Some((scheme, _)) = location.split_once("://") else {
            return Self::local(location, std::path::Path::new(location));
        };
        let url = Url::parse(location).map_err(|e| invalid(e.into()))?;
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid(LocationError::NotLocalPath))?;
                Self::local(location, &path)
            }
            "memory" => {
                let name = url.host_str().unwrap_or("").to_string();
                let store = MEMORY_STORES
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone();
                let prefix = url_path(&url).map_err(&invalid)?;
                Ok(Self::from_parts(
                    format!("memory://{name}"),
                    Some(name),
                    store,
                    prefix,
                ))
            }
            "s3" | "s3a" => {
                let bucket = bucket_of(&url).map_err(&invalid)?;
                let mut builder = AmazonS3Builder::from_env()
                    .with_url(location)
                    .with_retry(options.retry.clone())
                    .with_http_connector(CountingConnector);
                for (key, value) in options.client_settings() {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
                }
                if let Some(v) = &options.s3_endpoint {
                    builder = builder.with_endpoint(v);
                }
                if let Some(v) = &options.s3_region {
                    builder = builder.with_region(v);
                }
                if let Some(v) = options.s3_allow_http {
                    builder = builder.with_allow_http(v);
                }
                if let Some(v) = options.s3_path_style {
                    builder = builder.with_virtual_hosted_style_request(!v);
                }
                if let Some(v) = &options.s3_access_key_id {
                    builder = builder.with_access_key_id(v);
                }
                if let Some(v) = &options.s3_secret_access_key {
                    builder = builder.with_secret_access_key(v);
                }
                if let Some(v) = &options.s3_session_token {
                    builder = builder.with_token(v);
                }
                let store = builder.build().map_err(|source| StorageError::Configure {
                    url: location.to_string(),
                    source,
                })?;
                let prefix = url_path(&url).map_err(&invalid)?;
                Ok(Self::from_parts(
                    format!("s3://{bucket}"),
                    Some(bucket),
                    Arc::new(store),
                    prefix,
                ))
            }
            "gs" => {
                let bucket = bucket_of(&url).map_err(&invalid)?;
                let store = options
                    .client_settings()
                    .into_iter()
                    .fold(
                        GoogleCloudStorageBuilder::from_env()
                            .with_url(location)
                            .with_retry(options.retry.clone())
                            .with_http_connector(CountingConnector),
                        |b, (key, value)| b.with_config(GoogleConfigKey::Client(key), value),
                    )
                    .build()
                    .map_err(|source| StorageError::Configure {
                        url: location.to_string(),
                        source,
                    })?;
                let prefix = url_path(&url).map_err(&invalid)?;
                Ok(Self::from_parts(
                    format!("gs://{bucket}"),
                    Some(bucket),
                    Arc::new(store),
                    prefix,
                ))
            }
            "az" | "azure" | "abfs" | "abfss" | "adl" => {
                // object_store reads the container (and for abfs the account) from the URL itself;
                // abfs[s]://container@account.dfs.core.windows.net puts the container in the user part.
                let container = match url.username() {
                    "" => bucket_of(&url).map_err(&invalid)?,
                    user => user.to_string(),
                };
                let store = options
                    .client_settings()
                    .into_iter()
                    .fold(
                        MicrosoftAzureBuilder::from_env()
                            .with_url(location)
                            .with_retry(options.retry.clone())
                            .with_http_connector(CountingConnector),
                        |b, (key, value)| b.with_config(AzureConfigKey::Client(key), value),
                    )
                    .build()
                    .map_err(|source| StorageError::Configure {
                        url: location.to_string(),
                        source,
                    })?;
                let prefix = url_path(&url).map_err(&invalid)?;
                let root = format!("{scheme}://{}", url.authority());
                Ok(Self::from_parts(
                    root,
                    Some(container),
                    Arc::new(store),
                    prefix,
                ))
            }
            other => Err(invalid(LocationError::Scheme(other.to_string()))),
        }
    }

    /// Wraps a store the caller built. `root_url` is used only in messages: object URLs are
    /// `{root_url}/{path}`.
    ///
    /// Test-only, hidden from the API: the binaries reach every store through [`Self::parse`]. It
    /// stays public because the Azurite and fake-GCS tests (tests/tests/backends.rs) need stores
    /// pointed at emulators, whose addresses `parse` takes from the process environment only
    /// (object_store's `from_env`), and tests running in parallel in one process cannot each set
    /// their own. Not behind `cfg(test)`: another crate's tests use it.
    #[doc(hidden)]
    pub fn from_store(
        root_url: impl Into<String>,
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    ) -> Self {
        Self::from_parts(root_url.into(), None, store, prefix)
    }

    fn from_parts(
        root_url: String,
        bucket: Option<String>,
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    ) -> Self {
        let url = join_url(&root_url, &prefix);
        Self {
            url,
            remote: bucket.is_some() && !root_url.starts_with("memory://"),
            root_url,
            bucket,
            bucket_seen: Arc::new(AtomicBool::new(false)),
            store,
            prefix,
        }
    }

    fn local(location: &str, path: &std::path::Path) -> Result<Self, StorageError> {
        let invalid = |reason: LocationError| StorageError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        let absolute =
            std::path::absolute(path).map_err(|e| invalid(LocationError::Absolute(e)))?;
        let prefix = Path::from_absolute_path(&absolute).map_err(|e| invalid(e.into()))?;
        Ok(Self::from_parts(
            "file://".to_string(),
            None,
            Arc::new(LocalFileSystem::new()),
            prefix,
        ))
    }

    /// The normalised URL of this location.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The URL of an object in this location's store, for messages.
    pub fn object_url(&self, path: &Path) -> String {
        join_url(&self.root_url, path)
    }

    /// `scheme://bucket` of this location's store; an absolute URL inside the same store starts with it.
    pub fn root_url(&self) -> &str {
        &self.root_url
    }

    /// The object path of `relative` (slash-separated, no `.`/`..`/empty segments) under the prefix.
    ///
    /// The key is taken verbatim (`Path::parse`), never percent-encoded (`Path::child` would encode
    /// non-ASCII and `%#?*…`): listings return verbatim keys, and a sample's key must name the same
    /// object whether it came from a listing or from metadata.
    pub fn path_of(&self, relative: &str) -> Result<Path, StorageError> {
        let invalid = |reason: String| StorageError::InvalidPath {
            url: self.url.clone(),
            path: relative.to_string(),
            reason,
        };
        if relative
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(invalid("empty, `.` or `..` segment".into()));
        }
        let joined = if self.prefix.is_root() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.prefix)
        };
        Path::parse(joined).map_err(|e| invalid(e.to_string()))
    }

    /// `path` relative to the prefix (slash-separated), or `None` when it lies outside.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<String> = path
            .prefix_match(&self.prefix)?
            .map(|part| part.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }

    /// A location for `relative` under this one (same store).
    pub fn sub(&self, relative: &str) -> Result<Self, StorageError> {
        let prefix = self.path_of(relative)?;
        Ok(Self {
            url: join_url(&self.root_url, &prefix),
            root_url: self.root_url.clone(),
            bucket: self.bucket.clone(),
            remote: self.remote,
            bucket_seen: self.bucket_seen.clone(),
            store: self.store.clone(),
            prefix,
        })
    }

    /// Every object under the prefix (recursively), sorted by path so listings are deterministic
    /// whatever order the store returns them in.
    pub async fn list(&self) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = (!self.prefix.is_root()).then_some(&self.prefix);
        let mut objects: Vec<ObjectMeta> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| self.classify(e, &self.url))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    /// The whole object.
    pub async fn get(&self, path: &Path) -> Result<Bytes, StorageError> {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(e) => return Err(self.object_error(e, path).await),
        };
        result
            .bytes()
            .await
            .map_err(|e| self.classify(e, &self.object_url(path)))
    }

    /// The object as a stream of chunks, for objects too large to hold whole (tar shards).
    pub async fn get_stream(
        &self,
        path: &Path,
    ) -> Result<impl Stream<Item = Result<Bytes, StorageError>> + Send + 'static, StorageError>
    {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(e) => return Err(self.object_error(e, path).await),
        };
        let location = self.clone();
        let url = self.object_url(path);
        Ok(result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| location.classify(e, &url))))
    }

    /// `range` of the object (end exclusive); a range past the end is an error naming the object.
    pub async fn get_range(&self, path: &Path, range: Range<u64>) -> Result<Bytes, StorageError> {
        // HTTP cannot express an empty range, and an empty tar member or object is legitimate.
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        match self.store.get_range(path, range).await {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(self.object_error(e, path).await),
        }
    }

    /// Several ranges of one object; object_store coalesces nearby ranges into fewer requests.
    pub async fn get_ranges(
        &self,
        path: &Path,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, StorageError> {
        let wanted: Vec<Range<u64>> = ranges
            .iter()
            .filter(|r| r.start != r.end)
            .cloned()
            .collect();
        let mut fetched = match self.store.get_ranges(path, &wanted).await {
            Ok(fetched) => fetched.into_iter(),
            Err(e) => return Err(self.object_error(e, path).await),
        };
        Ok(ranges
            .iter()
            .map(|r| {
                if r.start == r.end {
                    Bytes::new()
                } else {
                    fetched.next().unwrap_or_default()
                }
            })
            .collect())
    }

    pub async fn head(&self, path: &Path) -> Result<ObjectMeta, StorageError> {
        match self.store.head(path).await {
            Ok(meta) => Ok(meta),
            Err(e) => Err(self.object_error(e, path).await),
        }
    }

    pub async fn put(&self, path: &Path, bytes: impl Into<PutPayload>) -> Result<(), StorageError> {
        self.store
            .put(path, bytes.into())
            .await
            .map(drop)
            .map_err(|e| self.classify(e, &self.object_url(path)))
    }

    /// [`Self::classify`] for a request on one object. A 404 on an object can also mean the bucket is
    /// missing: real S3 says which in the body of a GET, but a HEAD has no body and some S3-compatible
    /// servers answer `NoSuchKey` either way. So the first "not found" in a cloud bucket lists the
    /// object's key to find out (one request per location and its clones, and only on the failure path).
    async fn object_error(&self, error: object_store::Error, path: &Path) -> StorageError {
        let classified = self.classify(error, &self.object_url(path));
        if !classified.is_not_found() || !self.remote || self.bucket_seen.load(Ordering::Relaxed) {
            return classified;
        }
        match self.store.list(Some(path)).next().await {
            Some(Err(probe)) => match self.classify(probe, &self.object_url(path)) {
                missing @ StorageError::BucketNotFound { .. } => missing,
                _ => classified,
            },
            _ => {
                self.bucket_seen.store(true, Ordering::Relaxed);
                classified
            }
        }
    }

    /// Maps an object_store error to one that says what is wrong: the bucket, the object, or the
    /// credentials. S3 reports a missing bucket as a 404 like a missing key; only the error code in the
    /// response body (`NoSuchBucket`) tells them apart, and listings surface as `Generic` errors, so
    /// this reads the whole error chain.
    fn classify(&self, error: object_store::Error, url: &str) -> StorageError {
        let chain = error_chain(&error);
        let code = s3_error_code(&chain);
        let url = url.to_string();
        let bucket_missing = code.as_deref() == Some("NoSuchBucket")
            || code.as_deref() == Some("ContainerNotFound")
            || (code.is_none() && chain.contains("NoSuchBucket"));
        if bucket_missing {
            return StorageError::BucketNotFound {
                bucket: self.bucket.clone().unwrap_or_default(),
                url,
            };
        }
        let detail = || code.clone().unwrap_or_else(|| first_line(&chain));
        let credentials_hint = credentials_hint(&self.root_url);
        match error {
            object_store::Error::NotFound { .. } => StorageError::NotFound { url },
            object_store::Error::PermissionDenied { .. } => StorageError::AccessDenied {
                url,
                detail: detail(),
                credentials_hint,
            },
            object_store::Error::Unauthenticated { .. } => StorageError::Unauthenticated {
                url,
                detail: detail(),
                credentials_hint,
            },
            source => {
                if chain.contains("403 Forbidden") {
                    StorageError::AccessDenied {
                        url,
                        detail: detail(),
                        credentials_hint,
                    }
                } else if chain.contains("401 Unauthorized") {
                    StorageError::Unauthenticated {
                        url,
                        detail: detail(),
                        credentials_hint,
                    }
                } else if chain.contains("404 Not Found") {
                    StorageError::NotFound { url }
                } else {
                    StorageError::Other { url, source }
                }
            }
        }
    }
}

/// A request for [`fetch_many`]: a whole object, or a byte range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub path: Path,
    pub range: Option<Range<u64>>,
}

/// Fetches many objects with at most `concurrency` requests in flight (at least one), yielding
/// `(index into requests, result)` in completion order so one slow object does not hold up the rest.
/// Each failure is reported for its own request; the stream goes on.
pub fn fetch_many(
    location: &StorageLocation,
    requests: Vec<FetchRequest>,
    concurrency: usize,
) -> impl Stream<Item = (usize, Result<Bytes, StorageError>)> + Send + 'static {
    let location = location.clone();
    stream::iter(requests.into_iter().enumerate())
        .map(move |(index, request)| {
            let location = location.clone();
            async move {
                let result = match request.range {
                    Some(range) => location.get_range(&request.path, range).await,
                    None => location.get(&request.path).await,
                };
                (index, result)
            }
        })
        .buffer_unordered(concurrency.max(1))
}

/// The environment variables the store behind `root_url` (`scheme://bucket`) takes credentials from,
/// as its `*Builder::from_env()` reads them, so an auth failure names the ones that were used.
fn credentials_hint(root_url: &str) -> &'static str {
    let scheme = root_url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN",
        "gs" => {
            "GOOGLE_SERVICE_ACCOUNT / GOOGLE_SERVICE_ACCOUNT_KEY / GOOGLE_APPLICATION_CREDENTIALS"
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY, or AZURE_STORAGE_SAS_KEY, or \
             AZURE_CLIENT_ID / AZURE_CLIENT_SECRET / AZURE_TENANT_ID"
        }
        _ => "the store's credentials",
    }
}

fn join_url(root: &str, path: &Path) -> String {
    if path.is_root() {
        root.to_string()
    } else if root == "file://" {
        format!("file:///{path}")
    } else {
        format!("{root}/{path}")
    }
}

fn bucket_of(url: &Url) -> Result<String, LocationError> {
    match url.host_str() {
        Some(host) if !host.is_empty() => Ok(host.to_string()),
        _ => Err(LocationError::NoBucket),
    }
}

/// The key prefix of a bucket URL, percent-decoded as object_store does for its own URL parsing.
fn url_path(url: &Url) -> Result<Path, LocationError> {
    Ok(Path::from_url_path(url.path())?)
}

/// What is wrong with a storage location.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("empty location")]
    Empty,
    #[error(transparent)]
    Url(#[from] url::ParseError),
    #[error("not a local absolute path")]
    NotLocalPath,
    #[error("missing bucket name (expected scheme://bucket/prefix)")]
    NoBucket,
    #[error(transparent)]
    Path(#[from] object_store::path::Error),
    #[error(transparent)]
    Absolute(std::io::Error),
    #[error(
        "unsupported scheme {0:?} (expected a path, file://, s3://, gs://, az:// or memory://)"
    )]
    Scheme(String),
}

/// The `<Code>…</Code>` of an S3 (or Azure) XML error body, when the error text carries one.
fn s3_error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    let code = text[start..end].trim();
    (!code.is_empty()).then(|| code.to_string())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text);
    const MAX: usize = 300;
    if line.len() > MAX {
        let mut end = MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_become_absolute_file_locations() {
        let location = StorageLocation::parse("some/dir", &StorageOptions::default()).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let expected = format!("file://{}/some/dir", cwd.display());
        assert_eq!(location.url(), expected);
        assert_eq!(
            location
                .relative(&location.path_of("a/b.jpg").unwrap())
                .unwrap(),
            "a/b.jpg"
        );
    }

    #[test]
    fn file_urls_and_paths_agree() {
        let options = StorageOptions::default();
        let a = StorageLocation::parse("/tmp/x y/data", &options).unwrap();
        let b = StorageLocation::parse("file:///tmp/x%20y/data", &options).unwrap();
        assert_eq!(a.prefix(), b.prefix());
        assert_eq!(a.prefix().as_ref(), "tmp/x y/data");
    }

    #[test]
    fn cloud_urls_parse_bucket_and_prefix() {
        let options = StorageOptions {
            s3_region: Some("us-east-1".into()),
            s3_access_key_id: Some("k".into()),
            s3_secret_access_key: Some("s".into()),
            ..StorageOptions::default()
        };
        let s3 = StorageLocation::parse("s3://bucket/imagenet/val/", &options).unwrap();
        assert_eq!(s3.url(), "s3://bucket/imagenet/val");
        assert_eq!(s3.prefix().as_ref(), "imagenet/val");
        assert_eq!(
            s3.object_url(&s3.path_of("x.jpg").unwrap()),
            "s3://bucket/imagenet/val/x.jpg"
        );
        let root = StorageLocation::parse("s3://bucket", &options).unwrap();
        assert!(root.prefix().is_root());
    }

    #[test]
    fn bad_locations_are_rejected_with_the_reason() {
        let options = StorageOptions::default();
        for (location, needle) in [
            ("", "empty"),
            ("ftp://host/x", "unsupported scheme"),
            ("s3:///prefix", "missing bucket"),
        ] {
            let err = StorageLocation::parse(location, &options)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{location}: {err}");
        }
    }

    #[test]
    fn path_of_keeps_keys_verbatim() {
        let location =
            StorageLocation::parse("memory://t-verbatim/root", &StorageOptions::default()).unwrap();
        let path = location.path_of("eel/ünïcode 100%#1.jpg").unwrap();
        assert_eq!(path.as_ref(), "root/eel/ünïcode 100%#1.jpg");
        assert_eq!(location.relative(&path).unwrap(), "eel/ünïcode 100%#1.jpg");
        assert!(location.path_of("a/b?*c").is_ok());
        assert!(location.path_of("a/b\nc").is_err());
        assert!(location.path_of("a/b\u{1}c").is_err());
    }

    #[test]
    fn path_of_rejects_escapes() {
        let location =
            StorageLocation::parse("memory://t-escape/root", &StorageOptions::default()).unwrap();
        for bad in ["../x", "a//b", "./a", ""] {
            assert!(location.path_of(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn memory_locations_with_one_name_share_objects() {
        let options = StorageOptions::default();
        let writer = StorageLocation::parse("memory://t-share/data", &options).unwrap();
        writer
            .put(
                &writer.path_of("a/1.bin").unwrap(),
                Bytes::from_static(b"0123456789"),
            )
            .await
            .unwrap();
        let reader = StorageLocation::parse("memory://t-share/data/a", &options).unwrap();
        let listed = reader.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        let path = reader.path_of("1.bin").unwrap();
        assert_eq!(&reader.get_range(&path, 2..5).await.unwrap()[..], b"234");
        let other = StorageLocation::parse("memory://t-other/data", &options).unwrap();
        assert!(other.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_objects_name_the_url() {
        let location =
            StorageLocation::parse("memory://t-missing/p", &StorageOptions::default()).unwrap();
        let err = location
            .get(&location.path_of("nope.jpg").unwrap())
            .await
            .unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(
            err.to_string(),
            "object memory://t-missing/p/nope.jpg not found"
        );
    }

    #[tokio::test]
    async fn fetch_many_reports_each_request_and_bounds_concurrency() {
        let location =
            StorageLocation::parse("memory://t-many/", &StorageOptions::default()).unwrap();
        let mut requests = Vec::new();
        for i in 0..20u8 {
            let path = location.path_of(&format!("{i}.bin")).unwrap();
            location.put(&path, Bytes::from(vec![i; 8])).await.unwrap();
            requests.push(FetchRequest {
                path,
                range: (i % 2 == 0).then_some(1..3),
            });
        }
        requests.push(FetchRequest {
            path: location.path_of("absent").unwrap(),
            range: None,
        });
        let mut results: Vec<_> = fetch_many(&location, requests, 4).collect().await;
        results.sort_by_key(|(i, _)| *i);
        assert_eq!(results.len(), 21);
        for (i, result) in &results[..20] {
            let expected = if i % 2 == 0 { 2 } else { 8 };
            assert_eq!(result.as_ref().unwrap().len(), expected);
        }
        assert!(results[20].1.as_ref().unwrap_err().is_not_found());
    }

    #[test]
    fn auth_failures_name_the_credentials_of_the_store_used() {
        for (root, wanted, unwanted) in [
            ("s3://b", "AWS_ACCESS_KEY_ID", "AZURE_"),
            ("gs://b", "GOOGLE_SERVICE_ACCOUNT", "AWS_"),
            ("az://c", "AZURE_STORAGE_ACCOUNT_KEY", "AWS_"),
            (
                "abfss://c@a.dfs.core.windows.net",
                "AZURE_STORAGE_ACCOUNT_KEY",
                "AWS_",
            ),
        ] {
            let location =
                StorageLocation::from_store(root, Arc::new(InMemory::new()), Path::default());
            for status in ["403 Forbidden", "401 Unauthorized"] {
                let error = object_store::Error::Generic {
                    store: "test",
                    source: format!("Server returned non-2xx status code: {status}").into(),
                };
                let message = location.classify(error, root).to_string();
                assert!(message.contains(wanted), "{root} {status}: {message}");
                assert!(!message.contains(unwanted), "{root} {status}: {message}");
            }
        }
    }

    #[test]
    fn s3_error_codes_are_extracted() {
        let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
                    <Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(s3_error_code(body).as_deref(), Some("NoSuchBucket"));
        assert_eq!(s3_error_code("no xml here"), None);
    }
}
