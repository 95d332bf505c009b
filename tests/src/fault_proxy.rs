//! A fault-injecting HTTP/1.1 proxy on loopback, put between the binaries and s3s-fs: it passes
//! requests through, or refuses connections, goes away, stalls, throttles (`503 SlowDown`), fails
//! (`500 InternalError`) or cuts object bodies halfway, as the test switches it while a run goes on.
//!
//! Faults are deterministic: a fractional fault hits the 1st, (1+N)th, (1+2N)th... request it applies
//! to, counted from the moment it was set, so a run sees the same number of faults for the same
//! requests. Every request is forwarded on a connection of its own, so the backend's port may change
//! under a running test (an S3 server killed and restarted elsewhere) and one stalled or cut request
//! never holds up another.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// How long a switch to or from [`Fault::Down`] may take to close or reopen the listening socket;
/// it is immediate, the margin is for a loaded machine.
const LISTENER_SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cut body stays open after its first half, so that hyper flushes that half to the
/// client before the error closes the connection (an error on the very next poll would drop the
/// buffered bytes unsent, and the client would see no body at all instead of half of one).
const CUT_FLUSH_GRACE: Duration = Duration::from_millis(20);

/// What the proxy does to the requests it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward every request to the backend.
    PassThrough,
    /// Accept each new connection and reset it at once (`RST`), and close every kept-alive connection
    /// at its next request, unanswered: a server that refuses work. Every refusal is counted.
    Refuse,
    /// Stop listening (the kernel refuses new connections: `ECONNREFUSED`, as for a server that is
    /// gone) and close kept-alive connections at their next request. Connection attempts are not
    /// seen, so not counted.
    Down,
    /// Read each request and never answer it; when the fault changes, close its connection.
    Stall,
    /// Answer every `every`-th request with `503 SlowDown` (S3's throttling error), forward the rest.
    SlowDown { every: u64 },
    /// Answer every `every`-th request with `500 InternalError`, forward the rest.
    InternalError { every: u64 },
    /// Forward, but cut every `every`-th object body: the full `Content-Length` and half the bytes,
    /// then the connection closes. Object bodies are those of successful GETs without a query string;
    /// listings (`?list-type=2`) are left whole, since object_store retries a broken object body by
    /// resuming it with a range request but does not retry a broken listing at all.
    CutBody { every: u64 },
}

/// Counters since the proxy started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests read from clients.
    pub requests: u64,
    /// Of those, GETs of an object's bytes (see [`Fault::CutBody`]): what workers fetch.
    pub object_gets: u64,
    /// Requests the backend answered (including those whose body was then cut).
    pub forwarded: u64,
    /// Connections reset and requests closed unanswered under [`Fault::Refuse`] or [`Fault::Down`]
    /// (connections the kernel refused while down are not seen).
    pub refused: u64,
    /// Requests held unanswered under [`Fault::Stall`].
    pub stalled: u64,
    /// `503 SlowDown` answers.
    pub slow_down: u64,
    /// `500 InternalError` answers.
    pub internal_error: u64,
    /// Object bodies cut halfway.
    pub cut: u64,
    /// Requests whose connection was closed because the backend could not be reached (it was killed,
    /// or is restarting) or broke off.
    pub backend_errors: u64,
    /// Of those, object GETs.
    pub object_get_backend_errors: u64,
}

impl ProxyStats {
    /// Faults the proxy injected on purpose (backend errors are not its doing).
    pub fn injected(&self) -> u64 {
        self.refused + self.stalled + self.slow_down + self.internal_error + self.cut
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    object_gets: AtomicU64,
    forwarded: AtomicU64,
    refused: AtomicU64,
    stalled: AtomicU64,
    slow_down: AtomicU64,
    internal_error: AtomicU64,
    cut: AtomicU64,
    backend_errors: AtomicU64,
    object_get_backend_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    fault: watch::Sender<Fault>,
    /// Whether the listening socket is open (it is closed under [`Fault::Down`]); the accept loop
    /// sets it, [`FaultProxy::set_fault`] waits for it.
    listening: watch::Sender<bool>,
    backend: Mutex<SocketAddr>,
    /// Requests the current fractional fault applied to, since it was set.
    matched: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Whether the next request a fractional fault applies to is hit: the 1st, (1+every)th, ...
    fn hit(&self, every: u64) -> bool {
        self.matched
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every.max(1))
    }
}

/// The proxy: its own small runtime, stopped when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `backend`, passing everything through.
    pub fn start(backend: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let listener = runtime
            .block_on(listen((Ipv4Addr::LOCALHOST, 0).into()))
            .expect("fault proxy cannot listen on 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            fault: watch::channel(Fault::PassThrough).0,
            listening: watch::channel(true).0,
            backend: Mutex::new(backend),
            matched: AtomicU64::new(0),
            counters: Counters::default(),
        });
        runtime.spawn(accept_loop(shared.clone(), listener, addr));
        Self {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`, what clients use as their S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault for the requests that arrive from now on (and wakes stalled ones). Returns
    /// once the listening socket is closed (for [`Fault::Down`]) or open again (otherwise).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.matched.store(0, Ordering::Relaxed);
        self.shared.fault.send_replace(fault);
        let want = fault != Fault::Down;
        let mut listening = self.shared.listening.subscribe();
        let deadline = Instant::now() + LISTENER_SWITCH_TIMEOUT;
        while *listening.borrow_and_update() != want {
            assert!(
                Instant::now() < deadline,
                "fault proxy on {} did not {} listening within {LISTENER_SWITCH_TIMEOUT:?}",
                self.addr,
                if want { "resume" } else { "stop" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Forwards to another backend from now on (requests in flight finish where they are).
    pub fn set_backend(&self, backend: SocketAddr) {
        *self.shared.backend.lock().unwrap() = backend;
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            requests: get(&c.requests),
            object_gets: get(&c.object_gets),
            forwarded: get(&c.forwarded),
            refused: get(&c.refused),
            stalled: get(&c.stalled),
            slow_down: get(&c.slow_down),
            internal_error: get(&c.internal_error),
            cut: get(&c.cut),
            backend_errors: get(&c.backend_errors),
            object_get_backend_errors: get(&c.object_get_backend_errors),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A listening socket on `addr` with `SO_REUSEADDR`, so that the port can be bound again right after
/// [`Fault::Down`] closed it (connections it accepted may linger in TIME_WAIT).
async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    let mut faults = shared.fault.subscribe();
    let mut listener = Some(listener);
    loop {
        let down = *faults.borrow_and_update() == Fault::Down;
        if down && listener.is_some() {
            listener = None;
            shared.listening.send_replace(false);
        }
        if !down && listener.is_none() {
            match listen(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    shared.listening.send_replace(true);
                }
                // Someone else took the port meanwhile; set_fault's deadline reports it.
                Err(e) => eprintln!("[fault-proxy] cannot listen on {addr} again: {e}"),
            }
        }
        let Some(l) = &listener else {
            if faults.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if shared.fault() == Fault::Refuse {
                    bump(&shared.counters.refused);
                    // Dropped with SO_LINGER 0: a reset, not an orderly close.
                    let _ = stream.set_zero_linger();
                    continue;
                }
                tokio::spawn(serve_connection(shared.clone(), stream));
            }
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(shared.clone(), req));
    // Errors here are the faults themselves (connections closed on purpose) or clients giving up.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Why the proxy closed a connection instead of answering (hyper closes it when the service fails).
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("refused by the fault proxy")]
    Refused,
    #[error("stalled by the fault proxy until the fault changed")]
    Stalled,
    #[error("backend {addr}: {source}")]
    Backend {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Unanswered> {
    let c = &shared.counters;
    bump(&c.requests);
    let object_get = is_object_get(&req);
    if object_get {
        bump(&c.object_gets);
    }
    let backend_error = || {
        bump(&c.backend_errors);
        if object_get {
            bump(&c.object_get_backend_errors);
        }
    };
    let fault = shared.fault();
    match fault {
        Fault::Refuse | Fault::Down => {
            bump(&c.refused);
            return Err(Unanswered::Refused);
        }
        Fault::Stall => {
            bump(&c.stalled);
            let mut faults = shared.fault.subscribe();
            while *faults.borrow_and_update() == Fault::Stall {
                if faults.changed().await.is_err() {
                    break;
                }
            }
            return Err(Unanswered::Stalled);
        }
        Fault::SlowDown { every } if shared.hit(every) => {
            bump(&c.slow_down);
            return Ok(s3_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ));
        }
        Fault::InternalError { every } if shared.hit(every) => {
            bump(&c.internal_error);
            return Ok(s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ));
        }
        _ => {}
    }
    let cut = match fault {
        Fault::CutBody { every } if object_get => shared.hit(every),
        _ => false,
    };
    let backend = *shared.backend.lock().unwrap();
    let resp = match forward(backend, req).await {
        Ok(r) => r,
        Err(source) => {
            backend_error();
            return Err(Unanswered::Backend {
                addr: backend,
                source,
            });
        }
    };
    bump(&c.forwarded);
    if !cut || !resp.status().is_success() {
        return Ok(resp.map(|b| b.map_err(BoxError::from).boxed()));
    }
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            backend_error();
            return Err(Unanswered::Backend {
                addr: backend,
                source: e.into(),
            });
        }
    };
    if bytes.len() < 2 {
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    bump(&c.cut);
    // The headers (Content-Length included) announce the whole body; half of it follows.
    let half = bytes.slice(..bytes.len() / 2);
    Ok(Response::from_parts(parts, Truncated::new(half).boxed()))
}

/// A GET of an object's bytes (not a listing, which carries a query string).
fn is_object_get(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET && req.uri().query().is_none_or(str::is_empty)
}

/// Sends `req` to `backend` on a new connection; the response body streams from it.
async fn forward(
    backend: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let stream = TcpStream::connect(backend).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection until the response body has been read (or dropped).
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The Host header stays the client's (the proxy's address): it is part of the SigV4 signature.
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1); hyper writes its own.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// An S3 error response: status and the XML body S3 sends with it.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}\
         </Message><RequestId>fault-proxy</RequestId></Error>"
    );
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}

/// A body that yields its bytes, waits [`CUT_FLUSH_GRACE`], then fails (which makes hyper close the
/// connection short of the announced length).
struct Truncated {
    half: Option<Bytes>,
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Truncated {
    fn new(half: Bytes) -> Self {
        Self {
            half: Some(half),
            grace: None,
        }
    }
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(half) = self.half.take() {
            return Poll::Ready(Some(Ok(Frame::data(half))));
        }
        // Started only now, after the first half was handed over, so the next poll is pending and
        // hyper flushes in between.
        let grace = self
            .grace
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH_GRACE)));
        match grace.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err("body cut by the fault proxy".into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    use super::*;

    const BODY: &[u8] = b"0123456789abcdefghij";

    /// A backend answering `GET /b/k` with [`BODY`] (Content-Length), `GET /b?list-type=2` with a
    /// chunked body, and echoing `name` in a header, on the proxy test's own runtime.
    fn backend(rt: &tokio::runtime::Runtime, name: &'static str) -> SocketAddr {
        let listener = rt
            .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let body: ProxyBody = if req.uri().query().is_some() {
                            // A body of unknown length: hyper sends it chunked.
                            let chunks = [
                                Bytes::from_static(&BODY[..5]),
                                Bytes::from_static(&BODY[5..]),
                            ];
                            let stream = futures::stream::iter(
                                chunks.map(|c| Ok::<_, BoxError>(Frame::data(c))),
                            );
                            http_body_util::StreamBody::new(stream).boxed()
                        } else {
                            full(Bytes::from_static(BODY))
                        };
                        let mut resp = Response::new(body);
                        resp.headers_mut()
                            .insert("x-backend", HeaderValue::from_static(name));
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    /// One response read off `s`: status, headers (lowercase names), body (by Content-Length or
    /// chunked), and whether the connection ended before the body did.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        cut_short: bool,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends a GET; a write error (the proxy reset the connection already) shows as no answer.
    fn request(s: &mut StdStream, path: &str) {
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    }

    /// Reads one response, or `None` if the connection closed (or reset) before a status line.
    fn answer(s: &mut StdStream) -> Option<Answer> {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
            cut_short: false,
        };
        if let Some(len) = a.header("content-length") {
            let len: usize = len.parse().unwrap();
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match s.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            a.cut_short = got < len;
            buf.truncate(got);
            a.body = buf;
        } else if a.header("transfer-encoding") == Some("chunked") {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            let text = String::from_utf8(rest).unwrap();
            let mut parts = text.split("\r\n");
            while let Some(size) = parts.next() {
                let n = usize::from_str_radix(size, 16).unwrap_or(0);
                if n == 0 {
                    break;
                }
                a.body.extend(parts.next().unwrap().as_bytes());
            }
        }
        Some(a)
    }

    fn connect(proxy: &FaultProxy) -> StdStream {
        StdStream::connect(proxy.addr()).unwrap()
    }

    #[test]
    fn passes_through_on_kept_alive_connections_and_follows_the_backend() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (one, two) = (backend(&rt, "one"), backend(&rt, "two"));
        let proxy = FaultProxy::start(one);
        let mut s = connect(&proxy);
        for _ in 0..3 {
            request(&mut s, "/b/k");
            let a = answer(&mut s).unwrap();
            assert_eq!((a.status, a.body.as_slice()), (200, BODY));
            assert_eq!(a.header("x-backend"), Some("one"));
        }
        proxy.set_backend(two);
        request(&mut s, "/b/k");
        assert_eq!(answer(&mut s).unwrap().header("x-backend"), Some("two"));
        let stats = proxy.stats();
        assert_eq!(
            (stats.requests, stats.forwarded, stats.injected()),
            (4, 4, 0)
        );
        assert_eq!(stats.object_gets, 4);
    }

    #[test]
    fn chunked_listings_pass_through_whole() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = FaultProxy::start(backend(&rt, "b"));
        // Cutting applies to object bodies only.
        proxy.set_fault(Fault::CutBody { every: 1 });
        let mut s = StdStream::connect(proxy.addr()).unwrap();
        write!(
            s,
            "GET /b?list-type=2 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let a = answer(&mut s).unwrap();
        assert_eq!(a.header("transfer-encoding"), Some("chunked"));
        assert_eq!(a.body, BODY);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.object_gets, stats.cut), (1, 0, 0));
    }

    #[test]
    fn answers_every_nth_request_with_an_s3_error() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = FaultProxy::start(backend(&rt, "b"));
        for (fault, status, code) in [
            (Fault::SlowDown { every: 2 }, 503, "<Code>SlowDown</Code>"),
            (
                Fault::InternalError { every: 2 },
                500,
                "<Code>InternalError</Code>",
            ),
        ] {
            proxy.set_fault(fault);
            let mut s = connect(&proxy);
            let mut statuses = Vec::new();
            for _ in 0..5 {
                request(&mut s, "/b/k");
                let a = answer(&mut s).unwrap();
                if a.status != 200 {
                    assert!(String::from_utf8_lossy(&a.body).contains(code));
                }
                statuses.push(a.status);
            }
            assert_eq!(statuses, [status, 200, status, 200, status], "{fault:?}");
        }
        let stats = proxy.stats();
        assert_eq!((stats.slow_down, stats.internal_error), (3, 3));
        assert_eq!(stats.forwarded, 4);
    }

    #[test]
    fn cuts_object_bodies_halfway_under_the_full_length() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = FaultProxy::start(backend(&rt, "b"));
        proxy.set_fault(Fault::CutBody { every: 2 });
        let mut s = connect(&proxy);
        request(&mut s, "/b/k");
        let a = answer(&mut s).unwrap();
        assert_eq!(a.header("content-length"), Some("20"));
        assert!(a.cut_short);
        assert_eq!(a.body, &BODY[..10]);
        // The cut closed that connection; the next object comes whole.
        let mut s = connect(&proxy);
        request(&mut s, "/b/k");
        let a = answer(&mut s).unwrap();
        assert_eq!((a.body.as_slice(), a.cut_short), (BODY, false));
        assert_eq!(proxy.stats().cut, 1);
    }

    #[test]
    fn refuses_new_and_kept_alive_connections_until_healed() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = FaultProxy::start(backend(&rt, "b"));
        let mut kept = connect(&proxy);
        request(&mut kept, "/b/k");
        assert_eq!(answer(&mut kept).unwrap().status, 200);
        proxy.set_fault(Fault::Refuse);
        let mut fresh = connect(&proxy);
        request(&mut fresh, "/b/k");
        assert!(
            answer(&mut fresh).is_none(),
            "a new connection was answered"
        );
        request(&mut kept, "/b/k");
        assert!(
            answer(&mut kept).is_none(),
            "a kept-alive connection was answered"
        );
        assert_eq!(proxy.stats().refused, 2);
        proxy.set_fault(Fault::PassThrough);
        let mut s = connect(&proxy);
        request(&mut s, "/b/k");
        assert_eq!(answer(&mut s).unwrap().status, 200);
    }

    #[test]
    fn goes_down_and_comes_back_on_the_same_port() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = FaultProxy::start(backend(&rt, "b"));
        let mut kept = connect(&proxy);
        request(&mut kept, "/b/k");
        assert_eq!(answer(&mut kept).unwrap().status, 200);
        proxy.set_fault(Fault::Down);
        let err = StdStream::connect(proxy.addr()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        request(&mut kept, "/b/k");
        assert!(
            answer(&mut kept).is_none(),
            "a kept-alive connection was answered"
        );
        proxy.set_fault(Fault::PassThrough);
        let mut s = connect(&proxy);
        request(&mut s, "/b/k");
        assert_eq!(answer(&mut s).unwrap().status, 200);
        assert_eq!(proxy.stats().refused, 1);
    }

    #[test]
    fn stalls_until_the_fault_changes_then_closes() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let proxy = FaultProxy::start(backend(&rt, "b"));
        proxy.set_fault(Fault::Stall);
        let mut s = connect(&proxy);
        request(&mut s, "/b/k");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = s.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        assert_eq!(proxy.stats().stalled, 1);
        proxy.set_fault(Fault::PassThrough);
        assert!(answer(&mut s).is_none(), "a stalled request was answered");
    }

    #[test]
    fn closes_the_connection_when_the_backend_is_down() {
        let free = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(free);
        let mut s = connect(&proxy);
        request(&mut s, "/b/k");
        assert!(answer(&mut s).is_none());
        let stats = proxy.stats();
        assert_eq!(
            (stats.backend_errors, stats.object_get_backend_errors),
            (1, 1)
        );
    }
}
