//! The default `tresnet-worker` mode: validate the join flags and run the agent until the job is done.

use std::time::Duration;

use anyhow::Context;

use crate::agent::{self, AgentConfig};
use crate::cli::JoinArgs;
use crate::dataset_cache::{self, DatasetCache};
use crate::link::LinkPolicy;
use crate::metrics::WorkerMetrics;
use crate::test_hooks;

pub fn run(args: JoinArgs) -> anyhow::Result<()> {
    tresnet_common::logging::init(args.log_json);
    let url = args.coordinator.context(
        "nothing to do: give --coordinator URL to join a coordinator, or a subcommand (see --help)",
    )?;
    if let Some(t) = args.threads {
        tch::set_num_threads(t as i32);
    }
    let devices = args
        .devices
        .iter()
        .map(|d| d.resolve())
        .collect::<Result<Vec<_>, _>>()?;
    let debug_batch_delay = test_hooks::batch_delay()?;
    if !debug_batch_delay.is_zero() {
        tracing::warn!(
            ms = debug_batch_delay.as_millis() as u64,
            "test hook {}: every batch sleeps this long; never set it outside the test suite",
            test_hooks::BATCH_DELAY_ENV
        );
    }
    let metrics = WorkerMetrics::default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dataset_cache = if args.no_cache {
        None
    } else {
        let dir = args.cache_dir.or_else(dataset_cache::default_dir).context(
            "no --cache-dir given and no home folder for the default; give one or --no-cache",
        )?;
        let max = args.cache_max_mb.map(|mb| mb * 1024 * 1024);
        Some(std::sync::Arc::new(DatasetCache::open(&dir, max)?))
    };
    let cfg = AgentConfig {
        coordinator: url,
        worker_id: args
            .worker_id
            .unwrap_or_else(|| format!("{}-{}", agent::hostname(), std::process::id())),
        device_names: args.devices.iter().map(|d| d.to_string()).collect(),
        devices,
        prefetch_shards: args.prefetch_shards,
        decode_threads: args.decode_threads.unwrap_or(cpus),
        debug_batch_delay,
        gather_logits: args.gather_logits,
        measure_layout: args.measure_layout,
        token: tresnet_common::protocol::auth::load_token(args.token_file.as_deref())
            .map_err(anyhow::Error::msg)?,
        tls_ca: args.tls_ca,
        tls_domain: args.tls_domain,
        metrics: metrics.clone(),
        dataset_cache,
        storage: args.store.options(),
        link: LinkPolicy {
            rpc_timeout: Duration::from_millis(args.rpc_timeout_ms),
            patience: Duration::from_millis(args.coordinator_patience_ms),
        },
    };
    if cfg.tls_ca.is_some() && !tresnet_common::protocol::tls::is_https(&cfg.coordinator) {
        anyhow::bail!(
            "--tls-ca is given but --coordinator {} is not an https:// URL",
            cfg.coordinator
        );
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let done = rt.block_on(async {
        // Up before registration and model loading, so liveness passes while readiness says why not.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(addr) = args.metrics_listen {
            tresnet_common::observability::start(addr, metrics.endpoint(), async {
                let _ = stopped.await;
            })
            .await?;
        }
        let done = agent::run(cfg).await;
        let _ = stop.send(());
        anyhow::Ok(done?)
    })?;
    tracing::info!(samples = done, "job done");
    Ok(())
}
