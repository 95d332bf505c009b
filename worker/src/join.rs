//! The default `tresnet-worker` mode: validate the join flags and run the agent until the job is done.

use std::time::Duration;

use anyhow::Context;

use crate::agent::{self, AgentConfig};
use crate::cli::JoinArgs;

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
        .map(|d| d.resolve().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cfg = AgentConfig {
        coordinator: url,
        worker_id: args
            .worker_id
            .unwrap_or_else(|| format!("{}-{}", agent::hostname(), std::process::id())),
        device_names: args.devices.iter().map(|d| d.to_string()).collect(),
        devices,
        prefetch_shards: args.prefetch_shards,
        decode_threads: args.decode_threads.unwrap_or(cpus),
        fold_bn: None,
        debug_batch_delay: Duration::from_millis(args.debug_batch_delay_ms),
        token: tresnet_common::protocol::auth::load_token(args.token_file.as_deref())
            .map_err(anyhow::Error::msg)?,
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let done = rt.block_on(agent::run(cfg))?;
    tracing::info!(samples = done, "job done");
    Ok(())
}
