//! The worker's connection to its coordinator: the agent's configuration and errors, connecting
//! (TLS included), registering, and handing over to the job loop ([`crate::job_loop`]); plus how an
//! RPC failure becomes the agent's error.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tch::Device;
use tonic::transport::Channel;
use tresnet_common::error_text::with_causes;
use tresnet_common::protocol::auth::AttachToken;
use tresnet_common::protocol::pb;
use tresnet_common::protocol::pb::coordinator_client::CoordinatorClient;
use tresnet_common::protocol::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use tresnet_common::storage::StorageOptions;

use crate::dataset_cache::DatasetCache;
use crate::job_loop;
use crate::link::{CallError, Link, LinkPolicy, Outgoing, Unreachable};
use crate::metrics::WorkerMetrics;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinator: String,
    pub worker_id: String,
    pub devices: Vec<Device>,
    pub device_names: Vec<String>,
    /// Shards in flight at once.
    pub prefetch_shards: u32,
    pub decode_threads: usize,
    pub debug_batch_delay: Duration,
    /// Gather each shard's logits to the first executor (see `--gather-logits`).
    pub gather_logits: bool,
    /// Time the layouts a job leaves open at model load (`--measure-layout`).
    pub measure_layout: bool,
    /// Shared token presented on every RPC.
    pub token: Option<String>,
    /// For `https://` coordinators: the CA to trust (else the system roots) and the name to verify
    /// (else the URL's host).
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_domain: Option<String>,
    pub metrics: WorkerMetrics,
    /// Where fetched objects of remote stores are kept (`None`: fetch every time).
    pub dataset_cache: Option<Arc<DatasetCache>>,
    /// Timeouts and retries of the object-store client.
    pub storage: StorageOptions,
    /// RPC deadlines and how long a silent coordinator is waited for.
    pub link: LinkPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach coordinator {url}{hint}: {reason}")]
    Connect {
        url: String,
        hint: &'static str,
        /// The transport error's whole source chain (TLS reasons sit at its bottom), repeats removed.
        reason: String,
    },
    #[error("coordinator {url} refused registration{hint}: {status}")]
    Register {
        url: String,
        hint: &'static str,
        status: String,
    },
    #[error(transparent)]
    Tls(#[from] tresnet_common::protocol::tls::TlsError),
    #[error("coordinator sent a malformed job: {0}")]
    Job(#[source] tresnet_common::protocol::convert::ConvertError),
    #[error("cannot start executors: model {model} with weights {weights}: {source}")]
    Executor {
        model: String,
        weights: String,
        #[source]
        source: crate::executor::StartError,
    },
    /// The blocking task that starts the executors panicked or was cancelled.
    #[error("cannot start executors: {0}")]
    ExecutorTask(#[source] tokio::task::JoinError),
    #[error("dataset location {url}: {source}")]
    Storage {
        url: String,
        #[source]
        source: tresnet_common::storage::StorageError,
    },
    /// The status's text, causes included (see [`status_text`]).
    #[error("coordinator {url}: {status}")]
    Rpc { url: String, status: String },
    #[error("coordinator {url}: {source}")]
    Token {
        url: String,
        #[source]
        source: tresnet_common::protocol::auth::InvalidToken,
    },
    /// The coordinator stayed silent for the whole `--coordinator-patience-ms`.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// A bench job this worker cannot run (`pool_bench.rs`).
    #[error("bench: {0}")]
    Bench(#[source] crate::pool_bench::BenchJobError),
    /// The job's model gives non-finite logits: the worker refuses the job (it cannot run it).
    #[error(transparent)]
    Model(#[from] crate::fault::ModelFault),
}

pub(crate) type Client = crate::link::Client;

/// What a failed connection most likely means, given the URL's scheme: a plaintext client talking to a
/// TLS endpoint sees only a closed connection, and a TLS client gets a handshake error.
fn connect_hint(url: &str) -> &'static str {
    if tresnet_common::protocol::tls::is_https(url) {
        " over TLS (check --tls-ca and that the certificate names this host)"
    } else {
        " (if the coordinator serves TLS, use an https:// URL and --tls-ca)"
    }
}

/// Connects, registers, then runs the coordinator's jobs one after another (one for `run`, one per cell
/// for `sweep`) until it has no further job; returns the samples done.
pub async fn run(cfg: AgentConfig) -> Result<u64, AgentError> {
    // The handler goes in first, so a SIGTERM during connection or model loading also drains cleanly.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = {
        let draining = draining.clone();
        let metrics = cfg.metrics.clone();
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        tokio::spawn(async move {
            if let Ok(mut term) = term {
                term.recv().await;
                tracing::warn!(
                    "SIGTERM: draining (finishing the batch in hand, handing leases back)"
                );
                draining.store(true, Ordering::SeqCst);
                metrics.set_draining();
            }
        })
    };
    let url = cfg.coordinator.clone();
    let link = Link::new(&url, cfg.link, draining.clone());
    let mut endpoint =
        cfg.link.configure(
            Channel::from_shared(url.clone()).map_err(|e| AgentError::Rpc {
                url: url.clone(),
                status: e.to_string(),
            })?,
        );
    if tresnet_common::protocol::tls::is_https(&url) {
        let tls = tresnet_common::protocol::tls::client_config(
            cfg.tls_ca.as_deref(),
            cfg.tls_domain.as_deref(),
        )?;
        endpoint = endpoint.tls_config(tls).map_err(|e| AgentError::Connect {
            url: url.clone(),
            hint: connect_hint(&url),
            reason: with_causes(e.to_string(), std::error::Error::source(&e)),
        })?;
    }
    // Workers may start before their coordinator listens: connecting and registering wait for it, as
    // every later call does, for the patience.
    let channel = link
        .connect(|| endpoint.connect())
        .await
        .map_err(|e| match e {
            CallError::Refused(e) => AgentError::Connect {
                url: url.clone(),
                hint: connect_hint(&url),
                reason: with_causes(e.to_string(), std::error::Error::source(&e)),
            },
            CallError::Unreachable(u) => u.into(),
        })?;
    let attach = AttachToken::new(cfg.token.as_deref()).map_err(|source| AgentError::Token {
        url: url.clone(),
        source,
    })?;
    let client = CoordinatorClient::with_interceptor(channel, Outgoing::new(attach, &cfg.link))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let software = crate::software::report(&cfg.devices);
    let registration = pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: cfg.worker_id.clone(),
        hostname: hostname(),
        devices: cfg.device_names.clone(),
        capacity: cfg.prefetch_shards,
        software: Some((&software).into()),
        pid: std::process::id(),
    };
    let reg = link
        .call("register", || {
            let mut client = client.clone();
            let req = registration.clone();
            async move { client.register(req).await }
        })
        .await
        .map_err(|e| match e {
            CallError::Refused(s) => AgentError::Register {
                url: url.clone(),
                // Only a transport failure (no gRPC answer at all: the status wraps a transport
                // error) suggests a TLS mismatch; the coordinator's own refusals carry no source.
                hint: if std::error::Error::source(&s).is_some()
                    || matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    ) {
                    connect_hint(&url)
                } else {
                    ""
                },
                status: status_text(&s),
            },
            CallError::Unreachable(u) => u.into(),
        })?
        .into_inner();
    let heartbeat_every = Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(50)));
    let outcome =
        job_loop::run_jobs(&cfg, &client, &link, reg.job, &draining, heartbeat_every).await;
    drain.abort();
    cfg.metrics.set_done();
    outcome
}

/// Turns a failed RPC to the coordinator at `url` into the agent's error.
fn rpc_error(url: &str) -> impl Fn(tonic::Status) -> AgentError + '_ {
    move |s| AgentError::Rpc {
        url: url.to_string(),
        status: status_text(&s),
    }
}

/// Turns an RPC that got no answer it could use, after the link's retries, into the agent's error.
pub(crate) fn call_error(url: &str, e: CallError<tonic::Status>) -> AgentError {
    match e {
        CallError::Refused(s) => rpc_error(url)(s),
        CallError::Unreachable(u) => u.into(),
    }
}

/// A status's message, or its code when the message is empty (transport failures often have none).
pub(crate) fn status_text(s: &tonic::Status) -> String {
    let text = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    with_causes(text, std::error::Error::source(s))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
