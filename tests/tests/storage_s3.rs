//! Storage and dataset listing against a real S3-compatible server (s3s-fs, which verifies SigV4),
//! started on loopback by each test from the binary in `TRESNET_S3S_FS` (installed and exported by
//! `ops/s3.sh`, which `ops/test.sh` sources).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use tresnet_common::dataset::{DatasetFormat, DatasetIndex, list_dataset};
use tresnet_common::storage::{
    FetchRequest, StorageError, StorageLocation, StorageOptions, fetch_many,
};
use tresnet_coordinator::pack::pack_dataset;

use tresnet_tests::s3::{BUCKET, S3Server};

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
