//! The object-store client flags that both binaries share (`tresnet-coordinator run` applies them to
//! its listing and journal and hands them on to the workers it starts): one struct, flattened into each
//! command line, so the flag names and defaults cannot drift apart.

use std::time::Duration;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_TIMEOUT,
    StorageOptions,
};

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StoreArgs {
    /// Time one object-store request (headers and body) may take before it fails and is retried
    /// (milliseconds).
    #[arg(long, default_value_t = DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub store_timeout_ms: u64,
    /// Retries of one failed object-store request (5xx, throttling, a dropped or frozen connection)
    /// before it counts as failed.
    #[arg(long, default_value_t = DEFAULT_MAX_RETRIES)]
    pub store_retries: usize,
    /// Time the retries of one object-store request may take in all (milliseconds).
    #[arg(long, default_value_t = DEFAULT_RETRY_TIMEOUT.as_millis() as u64)]
    pub store_retry_timeout_ms: u64,
}

impl Default for StoreArgs {
    fn default() -> Self {
        Self {
            store_timeout_ms: DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
            store_retries: DEFAULT_MAX_RETRIES,
            store_retry_timeout_ms: DEFAULT_RETRY_TIMEOUT.as_millis() as u64,
        }
    }
}

impl StoreArgs {
    pub fn options(&self) -> StorageOptions {
        let mut o = StorageOptions::default();
        o.request_timeout = Duration::from_millis(self.store_timeout_ms);
        // A connection that takes longer than a whole request allows is as good as refused.
        o.connect_timeout = DEFAULT_CONNECT_TIMEOUT.min(o.request_timeout);
        o.retry.max_retries = self.store_retries;
        o.retry.retry_timeout = Duration::from_millis(self.store_retry_timeout_ms);
        o
    }

    /// The same settings as command-line arguments, for a process started with them.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("--store-timeout-ms={}", self.store_timeout_ms),
            format!("--store-retries={}", self.store_retries),
            format!("--store-retry-timeout-ms={}", self.store_retry_timeout_ms),
        ]
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn defaults_match_and_args_round_trip() {
        let d = Cli::parse_from(["x"]).store;
        assert_eq!(d, StoreArgs::default());
        let custom = StoreArgs {
            store_timeout_ms: 700,
            store_retries: 1,
            store_retry_timeout_ms: 2000,
        };
        let args = std::iter::once("x".to_string()).chain(custom.to_args());
        assert_eq!(Cli::parse_from(args).store, custom);
        let o = custom.options();
        assert_eq!(o.request_timeout, Duration::from_millis(700));
        assert_eq!(o.connect_timeout, Duration::from_millis(700));
        assert_eq!(o.retry.max_retries, 1);
    }
}
