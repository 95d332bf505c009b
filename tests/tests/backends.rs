//! One table of end-to-end checks over every object store the README names, each against a real server
//! that the test starts on loopback: `file://`, `s3://` (s3s-fs), `az://` (Azurite) and `gs://`
//! (fake-gcs-server; writes go through `tresnet_tests::gcs::GcsShim`, see there why). Per backend:
//! the dataset listing equals the local one; `tresnet-coordinator run` on the store equals the local
//! run (keys, top-k, logits); a journal on the store survives a SIGKILL of the coordinator and its run
//! directory; `pack` onto the store + tar input gives the same predictions; a missing bucket and wrong
//! credentials are errors that name the bucket and the credentials used.
//!
//! The table is the `backends!` invocation at the end: one module per backend, one test per cell.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use object_store::path::Path as ObjectPath;
use tresnet_common::dataset::{DatasetFormat, DatasetIndex, list_dataset};
use tresnet_common::storage::{StorageLocation, StorageOptions};
use tresnet_tests::azurite::{self, AzuriteServer};
use tresnet_tests::gcs::{self, FakeGcsServer, GcsShim};
use tresnet_tests::s3::S3Server;
use tresnet_tests::{
    assert_same_report, bin, coordinator_run, coordinator_run_on, files_under, kill_run_midway,
    predictions, run_ok, sample_images, summary,
};

/// The bucket (container, folder) every backend creates; datasets and journals live under it.
const BUCKET: &str = "tresnet";
/// A bucket no backend has.
const MISSING_BUCKET: &str = "no-such-bucket-tresnet";
/// One run shape for every evaluation in this file, so that all of them compare with one local
/// reference run: two workers and two-sample shards give the journal cell several records to kill
/// between.
const SHAPE: [&str; 8] = [
    "--local-workers",
    "2",
    "--shard-size",
    "2",
    "--batch-size",
    "2",
    "--save-logits",
    "fp32",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    S3,
    Az,
    Gs,
}

/// A running store of one kind, with [`BUCKET`] created.
struct Backend {
    kind: Kind,
    server: Server,
    runtime: tokio::runtime::Runtime,
}

enum Server {
    /// Buckets are folders of this one.
    File(tempfile::TempDir),
    S3(S3Server),
    Az(AzuriteServer),
    /// Reads go to the emulator directly; writes (and the missing-bucket answer) through the shim.
    Gs(FakeGcsServer, GcsShim),
}

impl Backend {
    fn start(kind: Kind) -> Self {
        let server = match kind {
            Kind::File => {
                let root = tempfile::tempdir().unwrap();
                std::fs::create_dir(root.path().join(BUCKET)).unwrap();
                Server::File(root)
            }
            Kind::S3 => {
                let server = S3Server::start();
                std::fs::create_dir(server.root().join(BUCKET)).unwrap();
                Server::S3(server)
            }
            Kind::Az => {
                let server = AzuriteServer::start();
                server.create_container(BUCKET);
                Server::Az(server)
            }
            Kind::Gs => {
                let server = FakeGcsServer::start();
                server.create_bucket(BUCKET);
                let shim = GcsShim::start(server.address());
                Server::Gs(server, shim)
            }
        };
        Self {
            kind,
            server,
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// The URL of `prefix` in `bucket`, as a user would pass it.
    fn url(&self, bucket: &str, prefix: &str) -> String {
        match &self.server {
            Server::File(root) => format!("file://{}/{bucket}/{prefix}", root.path().display()),
            Server::S3(_) => format!("s3://{bucket}/{prefix}"),
            Server::Az(_) => format!("az://{bucket}/{prefix}"),
            Server::Gs(..) => format!("gs://{bucket}/{prefix}"),
        }
    }

    /// `prefix` in [`BUCKET`] for reading in this process. s3:// and file:// go through
    /// `StorageLocation::parse` as in the binaries; the Azure and GCS emulators' addresses can only
    /// come from the process environment there, which tests running in parallel cannot each set, so
    /// their stores are configured in code (the binaries get the environment, see [`Self::env`]).
    fn location(&self, prefix: &str) -> StorageLocation {
        let url = self.url(BUCKET, prefix);
        match &self.server {
            Server::File(_) => StorageLocation::parse(&url, &StorageOptions::default()).unwrap(),
            Server::S3(server) => server.location(&url),
            Server::Az(server) => StorageLocation::from_store(
                format!("az://{BUCKET}"),
                server.store(BUCKET),
                ObjectPath::from(prefix),
            ),
            Server::Gs(server, _) => StorageLocation::from_store(
                format!("gs://{BUCKET}"),
                FakeGcsServer::store(BUCKET, &server.url()),
                ObjectPath::from(prefix),
            ),
        }
    }

    /// Like [`Self::location`], for writing (through the shim for GCS).
    fn write_location(&self, prefix: &str) -> StorageLocation {
        match &self.server {
            Server::Gs(_, shim) => StorageLocation::from_store(
                format!("gs://{BUCKET}"),
                FakeGcsServer::store(BUCKET, &shim.url()),
                ObjectPath::from(prefix),
            ),
            _ => self.location(prefix),
        }
    }

    /// The environment the binaries need to read from this store.
    fn env(&self) -> Vec<(&'static str, String)> {
        match &self.server {
            Server::File(_) => Vec::new(),
            Server::S3(server) => server.env(),
            Server::Az(server) => server.env(),
            Server::Gs(server, _) => gcs::env(&server.url()),
        }
    }

    /// The environment the binaries need to write to this store (and to be told that a bucket is
    /// missing, for GCS).
    fn write_env(&self) -> Vec<(&'static str, String)> {
        match &self.server {
            Server::Gs(_, shim) => gcs::env(&shim.url()),
            _ => self.env(),
        }
    }

    /// The environment with credentials the server refuses, or why this backend has no such cell.
    fn wrong_credentials_env(&self) -> Result<Vec<(&'static str, String)>, &'static str> {
        match &self.server {
            Server::File(_) => Err("file:// has no credentials"),
            Server::S3(server) => {
                let mut env = server.env();
                env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
                env.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
                Ok(env)
            }
            Server::Az(server) => Ok(server.env_with_key(azurite::WRONG_ACCOUNT_KEY)),
            Server::Gs(..) => Err(
                "fake-gcs-server does not authenticate requests at all (it accepts any or no \
                 credentials), so a wrong-credential answer from GCS cannot be produced here",
            ),
        }
    }

    /// The environment variable a wrong-credential message must name for this backend.
    fn credential_variable(&self) -> &'static str {
        match self.kind {
            Kind::S3 => "AWS_SECRET_ACCESS_KEY",
            Kind::Az => "AZURE_STORAGE_ACCOUNT_KEY",
            Kind::Gs => "GOOGLE_SERVICE_ACCOUNT",
            Kind::File => "",
        }
    }

    /// Uploads the sample ImageFolder under `prefix` through the store's API.
    fn upload_samples(&self, prefix: &str) {
        let local = sample_images();
        let destination = self.write_location(prefix);
        self.runtime.block_on(async {
            for file in files_under(&local) {
                let relative = file.strip_prefix(&local).unwrap().to_str().unwrap();
                destination
                    .put(
                        &destination.path_of(relative).unwrap(),
                        std::fs::read(&file).unwrap(),
                    )
                    .await
                    .unwrap();
            }
        });
    }

    /// Journal records (`shard-*.pb`) under `prefix`, with their bytes, listed through the store.
    fn journal_records(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let location = self.location(prefix);
        self.runtime.block_on(async {
            let Ok(objects) = location.list().await else {
                return Vec::new();
            };
            let mut records = Vec::new();
            for meta in objects {
                let name = meta.location.filename().unwrap_or_default().to_string();
                if name.starts_with("shard-") && name.ends_with(".pb") {
                    let bytes = location.get(&meta.location).await.unwrap();
                    records.push((meta.location.to_string(), bytes.to_vec()));
                }
            }
            records
        })
    }

    /// Journal records under `prefix`, counted without fetching them.
    fn journal_record_count(&self, prefix: &str) -> usize {
        let location = self.location(prefix);
        self.runtime.block_on(async {
            location.list().await.map_or(0, |objects| {
                objects
                    .iter()
                    .filter(|m| {
                        let name = m.location.filename().unwrap_or_default();
                        name.starts_with("shard-") && name.ends_with(".pb")
                    })
                    .count()
            })
        })
    }
}

/// The local run every cell compares with: the sample ImageFolder from plain paths, [`SHAPE`].
fn reference() -> &'static Path {
    static REFERENCE: OnceLock<PathBuf> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        // Shared by this binary's tests, which run in parallel; made once per test process, and those
        // of test processes that are gone are removed.
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("backends-reference-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(format!("backends-reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("local");
        run_ok(coordinator_run(&run, &SHAPE));
        run
    })
}

fn index_summary(index: &DatasetIndex) -> Vec<(String, u32, Option<u64>)> {
    index
        .samples
        .iter()
        .map(|s| (s.key.to_string(), s.label, s.source.size()))
        .collect()
}

/// A run that must fail: its stderr.
fn run_failing(mut cmd: Command) -> String {
    let out: Output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the run succeeded:\n{stderr}");
    // The message under test, for `--nocapture` readers.
    println!("{}", stderr.lines().last().unwrap_or_default());
    stderr
}

fn listing_equals_the_file_listing(kind: Kind) {
    let backend = Backend::start(kind);
    backend.upload_samples("photos");
    let local = StorageLocation::parse(
        sample_images().to_str().unwrap(),
        &StorageOptions::default(),
    )
    .unwrap();
    let (from_file, from_store) = backend.runtime.block_on(async {
        (
            list_dataset(&local, &DatasetFormat::ImageFolder)
                .await
                .unwrap(),
            list_dataset(&backend.location("photos"), &DatasetFormat::ImageFolder)
                .await
                .unwrap(),
        )
    });
    assert_eq!(from_store.class_names, from_file.class_names);
    assert_eq!(index_summary(&from_store), index_summary(&from_file));
    assert_eq!(from_store.fingerprint, from_file.fingerprint);
}

fn evaluation_equals_the_local_run(kind: Kind) {
    let backend = Backend::start(kind);
    backend.upload_samples("photos");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = backend.url(BUCKET, "photos");
    let mut cmd = coordinator_run_on(Path::new(&data), "imagefolder", &run, &SHAPE);
    cmd.envs(backend.env());
    run_ok(cmd);
    // Same keys, top-k and top-k logits, and the same summary…
    assert_same_report(reference(), &run, &format!("{data} against the local run"));
    // …the same full logits, in the same order…
    assert_eq!(
        std::fs::read(reference().join("logits.npy")).unwrap(),
        std::fs::read(run.join("logits.npy")).unwrap(),
        "{data}: logits.npy differs from the local run's"
    );
    // …and the binaries' listing through the store's URL saw the same dataset.
    let job = |run: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join("job.json")).unwrap()).unwrap()
    };
    assert_eq!(
        job(&run)["dataset_fingerprint"],
        job(reference())["dataset_fingerprint"]
    );
    assert_eq!(job(&run)["data_url"], data.as_str());
}

fn journal_on_the_store_resumes_after_sigkill(kind: Kind) {
    let backend = Backend::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let prefix = "runs/journal";
    let journal = backend.url(BUCKET, prefix);
    let first = dir.path().join("first");
    let mut cmd = coordinator_run(&first, &SHAPE);
    cmd.args(["--journal", &journal])
        // Slow batches, so that the kill lands with shards journaled and shards still to do.
        .env(tresnet_tests::BATCH_DELAY_ENV, "150")
        .envs(backend.write_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    kill_run_midway(&mut child, 1, || backend.journal_record_count(prefix));
    let before = backend.journal_records(prefix);
    let shards = files_under(&sample_images()).len().div_ceil(2);
    assert!(
        !before.is_empty() && before.len() < shards,
        "the kill did not land mid-run: {} of {shards} shards journaled",
        before.len()
    );
    if let Server::Gs(_, shim) = &backend.server {
        assert!(
            shim.uploads() >= before.len(),
            "the journal bypassed the shim"
        );
    }
    // The coordinator's disk is gone: a new run directory, the same journal on the store.
    std::fs::remove_dir_all(&first).unwrap();
    let second = dir.path().join("second");
    let mut cmd = coordinator_run(&second, &SHAPE);
    cmd.args(["--journal", &journal]).envs(backend.write_env());
    run_ok(cmd);
    // Records written before the kill were kept, not recomputed.
    let after = backend.journal_records(prefix);
    for (name, bytes) in &before {
        let now = after.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(&now.1, bytes, "{name} was rewritten");
    }
    assert_same_report(reference(), &second, &format!("resumed from {journal}"));
    assert_eq!(
        std::fs::read(reference().join("logits.npy")).unwrap(),
        std::fs::read(second.join("logits.npy")).unwrap(),
        "resumed from {journal}: logits.npy differs"
    );
    // Another job cannot adopt this journal, even from a fresh run directory.
    let mut cmd = coordinator_run(&dir.path().join("third"), &["--local-workers", "1"]);
    cmd.args(["--journal", &journal, "--top-k", "3"])
        .envs(backend.write_env());
    let err = run_failing(cmd);
    // A local journal is named by its path.
    let named = journal.strip_prefix("file://").unwrap_or(&journal);
    assert!(
        err.contains("different job") && err.contains("top_k") && err.contains(named),
        "{err}"
    );
}

fn pack_and_tar_input_give_the_same_predictions(kind: Kind) {
    let backend = Backend::start(kind);
    let shards = backend.url(BUCKET, "packed");
    let mut cmd = Command::new(bin("tresnet-coordinator"));
    cmd.args(["pack", "--format", "imagefolder", "--shard-size", "200KiB"])
        .arg("--data")
        .arg(sample_images())
        .args(["--out", &shards])
        .envs(backend.write_env());
    let out = run_ok(cmd);
    let n = files_under(&sample_images()).len();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("packed {n} samples")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("tar");
    let mut cmd = coordinator_run_on(Path::new(&shards), "tar", &run, &SHAPE);
    cmd.envs(backend.env());
    run_ok(cmd);
    // Tar members are keyed by shard and member, so compare what was predicted, not the keys.
    let sorted = |run: &Path| {
        let mut v: Vec<(Vec<u32>, Vec<u32>)> = predictions(run)
            .into_values()
            .map(|(_, classes, logits)| (classes, logits.iter().map(|x| x.to_bits()).collect()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(sorted(reference()), sorted(&run), "tar shards at {shards}");
    assert_eq!(summary(&run)["samples"], n as u64);
}

fn missing_bucket_is_a_clear_error(kind: Kind) {
    let backend = Backend::start(kind);
    backend.upload_samples("photos");
    let dir = tempfile::tempdir().unwrap();
    // file:// has no buckets: a missing folder is the same mistake.
    let wanted = match &backend.server {
        Server::File(root) => root
            .path()
            .join(MISSING_BUCKET)
            .join("photos")
            .display()
            .to_string(),
        _ => format!("bucket {MISSING_BUCKET:?} does not exist"),
    };
    // The dataset's bucket…
    let data = backend.url(MISSING_BUCKET, "photos");
    let mut cmd = coordinator_run_on(
        Path::new(&data),
        "imagefolder",
        &dir.path().join("a"),
        &SHAPE,
    );
    cmd.envs(backend.write_env());
    let err = run_failing(cmd);
    assert!(err.contains(&wanted), "{data}: {err}");
    // …and the journal's (on a dataset that exists).
    if kind == Kind::File {
        return;
    }
    let journal = backend.url(MISSING_BUCKET, "runs/journal");
    let mut cmd = coordinator_run_on(
        Path::new(&backend.url(BUCKET, "photos")),
        "imagefolder",
        &dir.path().join("b"),
        &SHAPE,
    );
    cmd.args(["--journal", &journal]).envs(backend.write_env());
    let err = run_failing(cmd);
    assert!(err.contains(&wanted), "{journal}: {err}");
}

fn wrong_credentials_are_a_clear_error(kind: Kind) {
    let backend = Backend::start(kind);
    let env = match backend.wrong_credentials_env() {
        Ok(env) => env,
        Err(reason) => {
            println!("skipped: {kind:?} has no wrong-credentials cell: {reason}");
            return;
        }
    };
    backend.upload_samples("photos");
    let dir = tempfile::tempdir().unwrap();
    let data = backend.url(BUCKET, "photos");
    let mut cmd = coordinator_run_on(
        Path::new(&data),
        "imagefolder",
        &dir.path().join("run"),
        &SHAPE,
    );
    cmd.envs(env);
    let err = run_failing(cmd);
    assert!(err.contains(&format!("access denied to {data}")), "{err}");
    assert!(err.contains(backend.credential_variable()), "{err}");
    // Only the credentials of the store that was used.
    for other in ["AWS_", "AZURE_", "GOOGLE_"] {
        if !backend.credential_variable().starts_with(other) {
            assert!(!err.contains(other), "{err}");
        }
    }
}

/// One module per backend, one test per cell: `cargo test --test backends az::` runs a row.
macro_rules! backends {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn listing_equals_the_file_listing() {
                super::listing_equals_the_file_listing($kind)
            }
            #[test]
            fn evaluation_equals_the_local_run() {
                super::evaluation_equals_the_local_run($kind)
            }
            #[test]
            fn journal_on_the_store_resumes_after_sigkill() {
                super::journal_on_the_store_resumes_after_sigkill($kind)
            }
            #[test]
            fn pack_and_tar_input_give_the_same_predictions() {
                super::pack_and_tar_input_give_the_same_predictions($kind)
            }
            #[test]
            fn missing_bucket_is_a_clear_error() {
                super::missing_bucket_is_a_clear_error($kind)
            }
            #[test]
            fn wrong_credentials_are_a_clear_error() {
                super::wrong_credentials_are_a_clear_error($kind)
            }
        }
    )*};
}

backends! {
    file => Kind::File,
    s3 => Kind::S3,
    az => Kind::Az,
    gs => Kind::Gs,
}
