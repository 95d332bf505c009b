//! The small HTTP listener both binaries run beside their gRPC work (`--metrics-listen ADDR`):
//! `/healthz` (the process is alive), `/readyz` (it is doing its job: 200, else 503 with the reason)
//! and `/metrics` (a Prometheus registry in the OpenMetrics text format).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Why a process is not ready; each binary has its own enum of reasons.
pub type NotReady = Box<dyn std::error::Error + Send + Sync>;

/// Readiness right now: `Ok(what it is doing)` answers 200, `Err(why not)` answers 503.
pub type Readiness = Arc<dyn Fn() -> Result<String, NotReady> + Send + Sync>;

/// What the listener serves.
pub struct Endpoint {
    pub registry: Registry,
    pub ready: Readiness,
}

/// The line (on stderr) that announces the bound address; scripts and tests look for it.
pub const LISTENING_PREFIX: &str = "metrics listening on http://";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Serves `endpoint` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(endpoint));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (port 0 picks a free port), announces the bound address and serves `endpoint` in a task
/// of its own until `shutdown` resolves.
pub async fn start(
    addr: SocketAddr,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    eprintln!("{LISTENING_PREFIX}{bound} (/healthz /readyz /metrics)");
    tokio::spawn(async move {
        if let Err(e) = serve(listener, endpoint, shutdown).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(ep): State<Arc<Endpoint>>) -> impl IntoResponse {
    match (ep.ready)() {
        Ok(what) => (StatusCode::OK, format!("ready: {what}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(ep): State<Arc<Endpoint>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &ep.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}
