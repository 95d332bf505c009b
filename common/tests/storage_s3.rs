//! Storage and dataset listing against a real S3-compatible server (s3s-fs, which verifies SigV4),
//! started on loopback by each test from the binary in `TRESNET_S3S_FS` (installed and exported by
//! `ops/s3.sh`, which `ops/test.sh` sources).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{BackoffConfig, RetryConfig};
use tresnet_common::dataset::tar::pack_dataset;
use tresnet_common::dataset::{DatasetFormat, DatasetIndex, list_dataset};
use tresnet_common::storage::{
    FetchRequest, StorageError, StorageLocation, StorageOptions, fetch_many,
};

const BUCKET: &str = "datasets";
const ACCESS_KEY: &str = "tresnet-test-key";
const SECRET_KEY: &str = "tresnet-test-secret";
/// How long s3s-fs may take to accept connections; it starts in milliseconds, the margin is for a
/// loaded CI machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// One s3s-fs process with its own root folder; killed (by its pid) when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
    /// The buckets' folder; held so it outlives the server.
    _root: tempfile::TempDir,
}

impl S3Server {
    fn start() -> Self {
        let binary = std::env::var_os("TRESNET_S3S_FS").unwrap_or_else(|| {
            panic!(
                "TRESNET_S3S_FS is not set: run the tests through ops/test.sh, which installs s3s-fs \
                 (ops/s3.sh) and exports the path of its binary"
            )
        });
        assert!(
            Path::new(&binary).is_file(),
            "TRESNET_S3S_FS={} does not exist: run `source ops/env.sh && source ops/s3.sh` to install it",
            binary.to_string_lossy()
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        // The port is free when asked; another process could take it before s3s-fs binds, so retry.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.to_string_lossy()));
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            loop {
                if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                    return Self {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        _root: root,
                    };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("s3s-fs did not start (binary {})", binary.to_string_lossy());
    }

    fn options(&self, secret: &str) -> StorageOptions {
        StorageOptions {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_region: Some("us-east-1".into()),
            s3_allow_http: Some(true),
            s3_path_style: Some(true),
            s3_access_key_id: Some(ACCESS_KEY.into()),
            s3_secret_access_key: Some(secret.into()),
            s3_session_token: None,
            // A broken server should fail the test in seconds, not after object_store's 3 minutes.
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            },
        }
    }

    fn location(&self, url: &str) -> StorageLocation {
        StorageLocation::parse(url, &self.options(SECRET_KEY)).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small ImageFolder tree on disk: three classes, a nested folder, a non-image file, odd names.
fn write_image_folder(root: &Path) -> Vec<PathBuf> {
    let files: [(&str, usize); 9] = [
        ("cat/001.jpg", 1500),
        ("cat/002.JPEG", 10),
        ("cat/notes.txt", 5),
        ("dog/sub dir/003.png", 2048),
        ("dog/004.webp", 333),
        ("eel/005.jpg", 0),
        ("eel/ünïcode 006.jpg", 77),
        ("eel/007.bmp", 9000),
        ("top-level.jpg", 12),
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, (rel, size))| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let bytes: Vec<u8> = (0..*size).map(|j| (i * 31 + j * 7) as u8).collect();
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

async fn upload(local_root: &Path, files: &[PathBuf], destination: &StorageLocation) {
    for file in files {
        let rel = file.strip_prefix(local_root).unwrap().to_str().unwrap();
        let bytes = std::fs::read(file).unwrap();
        destination
            .put(&destination.path_of(rel).unwrap(), bytes)
            .await
            .unwrap();
    }
}

fn summary(index: &DatasetIndex) -> Vec<(String, u32, Option<u64>)> {
    index
        .samples
        .iter()
        .map(|s| (s.key.to_string(), s.label, s.source.size()))
        .collect()
}

#[tokio::test]
async fn image_folder_lists_the_same_from_s3_and_from_file() {
    let server = S3Server::start();
    let local = tempfile::tempdir().unwrap();
    let files = write_image_folder(local.path());
    let s3 = server.location(&format!("s3://{BUCKET}/imagefolder/v1"));
    upload(local.path(), &files, &s3).await;

    let from_file = list_dataset(
        &StorageLocation::parse(local.path().to_str().unwrap(), &StorageOptions::default())
            .unwrap(),
        &DatasetFormat::ImageFolder,
    )
    .await
    .unwrap();
    let from_s3 = list_dataset(&s3, &DatasetFormat::ImageFolder)
        .await
        .unwrap();
    assert_eq!(from_s3.class_names, ["cat", "dog", "eel"]);
    assert_eq!(summary(&from_s3), summary(&from_file));
    assert_eq!(from_s3.fingerprint, from_file.fingerprint);
    assert_eq!(from_s3.samples.len(), 7);
    assert_eq!(
        from_s3.samples[0].source.path().as_ref(),
        "imagefolder/v1/cat/001.jpg"
    );

    // Every sample's bytes, fetched concurrently from S3, equal the local file's.
    let requests: Vec<FetchRequest> = from_s3
        .samples
        .iter()
        .map(|s| FetchRequest {
            path: s.source.path().clone(),
            range: None,
        })
        .collect();
    let mut fetched: Vec<_> = fetch_many(&s3, requests, 4).collect().await;
    fetched.sort_by_key(|(i, _)| *i);
    for ((_, bytes), sample) in fetched.iter().zip(&from_s3.samples) {
        let expected = std::fs::read(local.path().join(sample.key.as_str())).unwrap();
        assert_eq!(
            bytes.as_ref().unwrap().as_ref(),
            &expected[..],
            "{}",
            sample.key
        );
    }

    // Ranged reads.
    let first = &from_s3.samples[0];
    let range = s3.get_range(first.source.path(), 100..110).await.unwrap();
    let expected = std::fs::read(local.path().join("cat/001.jpg")).unwrap();
    assert_eq!(&range[..], &expected[100..110]);
    let ranges = s3
        .get_ranges(first.source.path(), &[0..4, 1000..1500])
        .await
        .unwrap();
    assert_eq!(
        (&ranges[0][..], &ranges[1][..]),
        (&expected[0..4], &expected[1000..1500])
    );
}

#[tokio::test]
async fn packed_shards_on_s3_give_the_same_samples_through_ranged_reads() {
    let server = S3Server::start();
    let local = tempfile::tempdir().unwrap();
    write_image_folder(local.path());
    let file_location =
        StorageLocation::parse(local.path().to_str().unwrap(), &StorageOptions::default()).unwrap();
    let original = list_dataset(&file_location, &DatasetFormat::ImageFolder)
        .await
        .unwrap();
    let shards = server.location(&format!("s3://{BUCKET}/packed"));
    let summary = pack_dataset(&original, &file_location, &shards, 8 * 1024, 4)
        .await
        .unwrap();
    assert!(summary.shards.len() >= 2, "{summary:?}");

    let packed = list_dataset(&shards, &DatasetFormat::Tar).await.unwrap();
    assert_eq!(packed.class_names, original.class_names);
    assert_eq!(packed.samples.len(), original.samples.len());
    for (a, b) in original.samples.iter().zip(&packed.samples) {
        assert_eq!(a.label, b.label);
        let bytes = shards
            .get_range(b.source.path(), b.source.byte_range().unwrap())
            .await
            .unwrap();
        assert_eq!(
            &bytes[..],
            &std::fs::read(local.path().join(a.key.as_str())).unwrap()[..],
            "{}",
            b.key
        );
    }
}

#[tokio::test]
async fn missing_bucket_missing_object_and_wrong_credentials_are_clear_errors() {
    let server = S3Server::start();
    let good = server.location(&format!("s3://{BUCKET}/data"));
    good.put(&good.path_of("a/1.jpg").unwrap(), vec![1u8; 10])
        .await
        .unwrap();

    let missing_bucket = server.location("s3://no-such-bucket/data");
    let err = list_dataset(&missing_bucket, &DatasetFormat::ImageFolder)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(
            "bucket \"no-such-bucket\" does not exist (while accessing s3://no-such-bucket/data)"
        ),
        "{message}"
    );
    // s3s-fs answers a GET in a missing bucket with `NoSuchKey` and a HEAD has no body at all, so
    // these go through the bucket probe.
    let err = missing_bucket
        .get(&missing_bucket.path_of("x.jpg").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::BucketNotFound { .. }),
        "{err:?}"
    );
    let err = missing_bucket
        .head(&missing_bucket.path_of("x.jpg").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bucket \"no-such-bucket\" does not exist (while accessing s3://no-such-bucket/data/x.jpg)"
    );

    let err = good
        .get(&good.path_of("a/2.jpg").unwrap())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("object s3://{BUCKET}/data/a/2.jpg not found")
    );
    let err = good.head(&good.path_of("nope").unwrap()).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");

    let wrong = StorageLocation::parse(
        &format!("s3://{BUCKET}/data"),
        &server.options("not-the-secret"),
    )
    .unwrap();
    for err in [
        wrong.list().await.unwrap_err(),
        wrong
            .get(&wrong.path_of("a/1.jpg").unwrap())
            .await
            .unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            matches!(err, StorageError::AccessDenied { .. }),
            "{message}"
        );
        assert!(
            message.starts_with(&format!("access denied to s3://{BUCKET}/data")),
            "{message}"
        );
        assert!(message.contains("SignatureDoesNotMatch"), "{message}");
        assert!(message.contains("check the credentials"), "{message}");
    }

    // An empty prefix of an existing bucket is not an error of the store but of the dataset.
    let empty = server.location(&format!("s3://{BUCKET}/nothing-here"));
    let err = list_dataset(&empty, &DatasetFormat::ImageFolder)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("no class folders"), "{err}");
}
