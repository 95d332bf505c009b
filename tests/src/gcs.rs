//! One fake-gcs-server (a Google Cloud Storage emulator) on loopback, from the binary in
//! `TRESNET_FAKE_GCS_SERVER` (installed and exported by `ops/gcs.sh`, which `ops/test.sh` sources), and
//! [`GcsShim`], the loopback proxy that lets object_store write to it.
//!
//! The emulator serves what object_store's GCS client reads through (the XML API's `list-type=2`
//! listing, HEAD, ranged GET) as GCS does, so reads go to it directly. Two answers differ from GCS:
//! an XML API `PUT` (object_store's upload) is refused with "invalid uploadType" (the emulator takes
//! XML PUTs only on its signed-URL route), and a listing of a missing bucket is a `500` where GCS
//! answers `404 NoSuchBucket`. The shim translates exactly these two and forwards everything else
//! untouched. It has no authentication at all: any credentials are accepted.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, ETAG, HOST, HeaderValue, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, ObjectStore};

use crate::s3::test_retry;

/// How long fake-gcs-server may take to accept connections; it starts in milliseconds, the margin is
/// for a loaded CI machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The query that routes an XML `PUT` to the emulator's signed-URL upload handler, which stores the
/// body as the object (what GCS's XML `PUT` does); its value is never checked.
const SIGNED_URL_QUERY: &str = "X-Goog-Algorithm=GOOG4-RSA-SHA256";
/// What fake-gcs-server says in its `500` for a listing of a missing bucket (memory backend).
const EMULATOR_NO_BUCKET: &str = "no bucket named";
/// The header in which GCS returns an object's generation (object_store's `PutResult::version`).
const GENERATION_HEADER: &str = "x-goog-generation";

/// One fake-gcs-server process (in-memory backend); killed (by its pid) when dropped.
pub struct FakeGcsServer {
    child: Child,
    port: u16,
}

impl FakeGcsServer {
    pub fn start() -> Self {
        let binary = std::env::var_os("TRESNET_FAKE_GCS_SERVER").unwrap_or_else(|| {
            panic!(
                "TRESNET_FAKE_GCS_SERVER is not set: run the tests through ops/test.sh, which \
                 installs fake-gcs-server (ops/gcs.sh) and exports the path of its binary"
            )
        });
        assert!(
            Path::new(&binary).is_file(),
            "TRESNET_FAKE_GCS_SERVER={} does not exist: run `source ops/env.sh && source ops/gcs.sh`",
            binary.to_string_lossy()
        );
        // The port is free when asked; another process could take it before the server binds, so retry.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let authority = format!("127.0.0.1:{port}");
            let mut child = Command::new(&binary)
                .args(["-scheme", "http", "-host", "127.0.0.1"])
                .args(["-port", &port.to_string(), "-public-host", &authority])
                .args(["-external-url", &format!("http://{authority}")])
                .args(["-backend", "memory", "-log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.to_string_lossy()));
            if crate::wait_listening(&mut child, port, STARTUP_TIMEOUT) {
                return Self { child, port };
            }
        }
        panic!(
            "fake-gcs-server did not start ({})",
            binary.to_string_lossy()
        );
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// Creates `bucket` through the JSON API (object_store has no API for it).
    pub fn create_bucket(&self, bucket: &str) {
        let body = serde_json::json!({ "name": bucket }).to_string();
        let request = format!(
            "POST /storage/v1/b HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            host = self.address(),
            len = body.len()
        );
        let mut stream = TcpStream::connect(self.address()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "fake-gcs-server refused to create bucket {bucket:?}: {response}"
        );
    }

    /// A store for `bucket` that talks to `base_url` (this server, or a [`GcsShim`] in front of it).
    pub fn store(bucket: &str, base_url: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_service_account_key(service_account(base_url))
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .with_retry(test_retry())
                .build()
                .unwrap(),
        )
    }
}

/// The environment a child process needs to reach the GCS API at `base_url` through object_store's
/// standard variables: a service account that points at the emulator and turns OAuth off.
pub fn env(base_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GOOGLE_SERVICE_ACCOUNT_KEY", service_account(base_url)),
        ("GOOGLE_ALLOW_HTTP", "true".into()),
    ]
}

fn service_account(base_url: &str) -> String {
    serde_json::json!({
        "private_key": "unused",
        "private_key_id": "unused",
        "client_email": "tresnet-tests@example.invalid",
        "disable_oauth": true,
        "gcs_base_url": base_url,
    })
    .to_string()
}

impl Drop for FakeGcsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback HTTP/1.1 proxy in front of a [`FakeGcsServer`] that makes its answers those of GCS
/// where object_store needs them (see the module doc); stopped when dropped.
pub struct GcsShim {
    address: SocketAddr,
    uploads: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GcsShim {
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let uploads = Arc::new(AtomicUsize::new(0));
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let counter = uploads.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, upstream, counter, stop));
            // Dropping the runtime cancels the connections still open.
        });
        Self {
            address,
            uploads,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Object uploads the shim has passed on so far.
    pub fn uploads(&self) -> usize {
        self.uploads.load(Ordering::Relaxed)
    }
}

impl Drop for GcsShim {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    uploads: Arc<AtomicUsize>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let uploads = uploads.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(request, upstream, uploads.clone())
                    });
                    // A client that hangs up mid-request is its own business.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// One request, passed on to the emulator (bodies are buffered: test objects are small).
async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
    uploads: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match try_forward(request, upstream, &uploads).await {
        Ok(response) => Ok(response),
        Err(e) => {
            let mut response = Response::new(Full::new(Bytes::from(format!(
                "gcs shim: upstream {upstream}: {e}"
            ))));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
    }
}

async fn try_forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
    uploads: &AtomicUsize,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    // Bodies are passed on whole, so with their length rather than in chunks.
    if parts.headers.remove(TRANSFER_ENCODING).is_some() {
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
    }
    // A whole-object upload; a multipart part (`uploadId=`) would be another route, but the tool
    // writes every object in one PUT.
    let query = parts.uri.query().unwrap_or("");
    let upload = parts.method == Method::PUT && !query.contains("uploadId=");
    if upload {
        let path = parts.uri.path();
        let rewritten = match query {
            "" => format!("{path}?{SIGNED_URL_QUERY}"),
            q => format!("{path}?{q}&{SIGNED_URL_QUERY}"),
        };
        parts.uri = rewritten.parse()?;
    }
    // The emulator tells path-style from virtual-hosted requests by the Host header.
    parts
        .headers
        .insert(HOST, HeaderValue::from_str(&upstream.to_string())?);
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (mut parts, body) = response.into_parts();
    let mut body = body.collect().await?.to_bytes();
    if parts.headers.remove(TRANSFER_ENCODING).is_some() {
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
    }
    if upload && parts.status.is_success() {
        uploads.fetch_add(1, Ordering::Relaxed);
        // GCS answers an XML upload with the object's ETag and generation in headers (object_store
        // requires the ETag); the signed-URL route returns them in a JSON object resource instead.
        let object: serde_json::Value = serde_json::from_slice(&body)?;
        let etag = object["etag"].as_str().ok_or("upload answer has no etag")?;
        parts
            .headers
            .insert(ETAG, HeaderValue::from_str(&format!("\"{etag}\""))?);
        if let Some(generation) = object["generation"].as_str() {
            parts
                .headers
                .insert(GENERATION_HEADER, HeaderValue::from_str(generation)?);
        }
        body = Bytes::new();
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
    } else if parts.status == StatusCode::INTERNAL_SERVER_ERROR
        && String::from_utf8_lossy(&body).contains(EMULATOR_NO_BUCKET)
    {
        // What GCS's XML API answers for a missing bucket.
        parts.status = StatusCode::NOT_FOUND;
        body = Bytes::from_static(
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchBucket</Code>\
              <Message>The specified bucket does not exist.</Message></Error>",
        );
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
    }
    // Otherwise the headers stand as the emulator sent them (a HEAD's Content-Length is the object's).
    Ok(Response::from_parts(parts, Full::new(body)))
}
