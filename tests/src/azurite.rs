//! One Azurite blob server (the Azure Storage emulator, which checks Shared Key signatures) on
//! loopback, from the script in `TRESNET_AZURITE` (installed and exported by `ops/azurite.sh`, which
//! `ops/test.sh` sources).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use object_store::ObjectStore;
use object_store::azure::MicrosoftAzureBuilder;

use crate::s3::test_retry;

/// The emulator's one account and its well-known key (public, in Azure's documentation); object_store
/// uses both by default when `AZURE_STORAGE_USE_EMULATOR=true`.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// A well-formed key that is not the account's: requests signed with it must be refused.
pub const WRONG_ACCOUNT_KEY: &str =
    "d3JvbmctYWNjb3VudC1rZXktZm9yLXRoZS10cmVzbmV0LWV2YWwtdGVzdHMtLS0tLS0tLS0tLS0tLS0tLS0tLS0tLQ==";
/// How long Azurite (Node.js) may take to accept connections: about a second here, the margin is for a
/// loaded CI machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The REST API version the container-creating request speaks; any version Azurite 3.35 knows.
const API_VERSION: &str = "2021-08-06";

/// One Azurite process with its own data folder; killed (by its pid) when dropped.
pub struct AzuriteServer {
    child: Child,
    port: u16,
    /// Blobs and Azurite's metadata; held so it outlives the server.
    _location: tempfile::TempDir,
}

impl AzuriteServer {
    pub fn start() -> Self {
        let script = std::env::var_os("TRESNET_AZURITE").unwrap_or_else(|| {
            panic!(
                "TRESNET_AZURITE is not set: run the tests through ops/test.sh, which installs Azurite \
                 (ops/azurite.sh) and exports the path of azurite-blob"
            )
        });
        assert!(
            Path::new(&script).is_file(),
            "TRESNET_AZURITE={} does not exist: run `source ops/env.sh && source ops/azurite.sh`",
            script.to_string_lossy()
        );
        let location = tempfile::tempdir().unwrap();
        // The port is free when asked; another process could take it before Azurite binds, so retry.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(&script)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(location.path())
                // Requests carry whatever x-ms-version object_store speaks; telemetry would reach out.
                .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.to_string_lossy()));
            if crate::wait_listening(&mut child, port, STARTUP_TIMEOUT) {
                return Self {
                    child,
                    port,
                    _location: location,
                };
            }
        }
        panic!("azurite did not start ({})", script.to_string_lossy());
    }

    /// The blob service's URL (the emulator puts the account in the path: `{url}/{account}/{container}`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a child process needs to reach this server through object_store's standard
    /// variables, signing with `account_key`.
    pub fn env_with_key(&self, account_key: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url()),
            ("AZURE_STORAGE_ACCOUNT_KEY", account_key.into()),
        ]
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_with_key(ACCOUNT_KEY)
    }

    /// A store for `container`, configured in code: object_store reads the emulator's URL only from
    /// the process environment, which in-process tests running in parallel cannot each set. The
    /// explicit endpoint gives the same URLs and signatures as emulator mode.
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            MicrosoftAzureBuilder::new()
                .with_account(ACCOUNT)
                .with_access_key(ACCOUNT_KEY)
                .with_endpoint(format!("{}/{ACCOUNT}", self.url()))
                .with_allow_http(true)
                .with_container_name(container)
                .with_retry(test_retry())
                .build()
                .unwrap(),
        )
    }

    /// Creates `container` (object_store has no API for it): `PUT ?restype=container`, Shared Key
    /// signed by hand.
    pub fn create_container(&self, container: &str) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        // Azure's Shared Key string-to-sign: the verb, eleven standard headers (all empty here; a zero
        // Content-Length is signed as empty), the x-ms-* headers, then the resource with the account
        // once more in front because the emulator's URLs carry it in the path.
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
             /{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
        );
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &BASE64.decode(ACCOUNT_KEY).unwrap(),
        );
        let signature = BASE64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()));
        let request = format!(
            "PUT /{ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {API_VERSION}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            port = self.port
        );
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "azurite refused to create container {container:?}: {response}"
        );
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
