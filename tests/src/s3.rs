//! One s3s-fs process (an S3-compatible server that verifies SigV4) on loopback, from the binary in
//! `TRESNET_S3S_FS` (installed and exported by `ops/s3.sh`, which `ops/test.sh` sources).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object_store::{BackoffConfig, RetryConfig};
use tresnet_common::storage::{StorageLocation, StorageOptions};

pub const BUCKET: &str = "datasets";
pub const ACCESS_KEY: &str = "tresnet-test-key";
pub const SECRET_KEY: &str = "tresnet-test-secret";
/// How long s3s-fs may take to accept connections; it starts in milliseconds, the margin is for a
/// loaded CI machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Retries for the stores the tests build in-process: a broken server should fail the test in seconds,
/// not after object_store's 3 minutes.
pub fn test_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

/// One s3s-fs process with its own root folder; killed (by its pid) when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// The buckets' folder; held so it outlives the server.
    _root: tempfile::TempDir,
    /// s3s's request log (one `req: Request { method: GET, uri: /bucket/key, ...` line per request).
    log: tempfile::NamedTempFile,
}

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let (child, port) = spawn_on(root.path(), log.path());
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _root: root,
            log,
        }
    }

    pub fn options(&self, secret: &str) -> StorageOptions {
        StorageOptions {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_region: Some("us-east-1".into()),
            s3_allow_http: Some(true),
            s3_path_style: Some(true),
            s3_access_key_id: Some(ACCESS_KEY.into()),
            s3_secret_access_key: Some(secret.into()),
            s3_session_token: None,
            retry: test_retry(),
            ..StorageOptions::default()
        }
    }

    pub fn location(&self, url: &str) -> StorageLocation {
        StorageLocation::parse(url, &self.options(SECRET_KEY)).unwrap()
    }
}

/// The s3s-fs binary that `ops/s3.sh` installed.
fn binary() -> std::ffi::OsString {
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
    binary
}

/// Starts s3s-fs on `root` (a free port), appending its request log to `log`; returns it once it
/// accepts connections, with its port.
fn spawn_on(root: &Path, log: &Path) -> (Child, u16) {
    let binary = binary();
    // The port is free when asked; another process could take it before s3s-fs binds, so retry.
    for _ in 0..5 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Appended, so that a restarted server adds to the log of the one before.
        let log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            // s3s logs every request it serves at debug level (to stdout); tests count them.
            .env("RUST_LOG", "s3s::service=debug")
            .env("NO_COLOR", "1")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.to_string_lossy()));
        if crate::wait_listening(&mut child, port, STARTUP_TIMEOUT) {
            return (child, port);
        }
    }
    panic!("s3s-fs did not start (binary {})", binary.to_string_lossy());
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// The folder s3s-fs keeps buckets in: object `s3://b/k` is the file `root/b/k`.
    pub fn root(&self) -> &Path {
        self._root.path()
    }

    /// The environment a child process (coordinator, worker) needs to reach this server with the
    /// standard AWS variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        Self::env_at(&self.endpoint)
    }

    /// [`S3Server::env`] with another endpoint: a proxy in front of the server.
    pub fn env_at(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", endpoint.to_string()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }
}

impl S3Server {
    /// The URIs (`/bucket/key?query`) of every request with `method` served so far, in order.
    pub fn requests(&self, method: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.log.path()).unwrap();
        let prefix = format!("req: Request {{ method: {method}, uri: ");
        text.lines()
            .filter_map(|l| {
                let rest = &l[l.find(&prefix)? + prefix.len()..];
                Some(rest.split(',').next()?.to_string())
            })
            .collect()
    }
}

/// Faults of the server process itself, for the fault-injection tests (tests/tests/faults.rs).
impl S3Server {
    /// Where it listens (changes when it is restarted).
    pub fn addr(&self) -> SocketAddr {
        self.endpoint
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("endpoint {} is not http://ip:port", self.endpoint))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server process.
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGKILLs the server and reaps it; its root folder (the data) stays.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts a new server on the same root folder (after [`S3Server::kill`]); it listens on a new
    /// port, so clients reach it through a proxy whose backend is switched to [`S3Server::addr`].
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "restart: the server {} is still running",
            self.pid()
        );
        let (child, port) = spawn_on(self._root.path(), self.log.path());
        self.child = child;
        self.endpoint = format!("http://127.0.0.1:{port}");
    }

    /// Uploads every file below `local` to `s3://BUCKET/prefix/<relative path>` through the S3 API
    /// (not by copying into the server's folder), so the objects carry what a real upload gives them.
    pub fn upload_dir(&self, local: &Path, prefix: &str) {
        let dest = self.location(&format!("s3://{BUCKET}/{prefix}"));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            for f in crate::files_under(local) {
                let rel = f.strip_prefix(local).unwrap().to_str().unwrap();
                dest.put(&dest.path_of(rel).unwrap(), std::fs::read(&f).unwrap())
                    .await
                    .unwrap();
            }
        });
    }
}
