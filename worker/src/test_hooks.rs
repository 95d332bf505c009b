//! Hooks that only the test suite uses, compiled in with the `test-hooks` cargo feature. The tests crate
//! enables it, so the workers that `cargo build --workspace --bins` (ops/test.sh) builds have them; a
//! build of `tresnet-worker` alone (releases, the Docker image, the Slurm and Kubernetes paths) leaves
//! them out and ignores their variables. `tests/tests/test_hooks.rs` checks both sides.

use std::ffi::OsString;
use std::time::Duration;

/// Every executor sleeps this many milliseconds per batch, to simulate a slow node. A variable rather
/// than a flag: it reaches local workers (inherited from their coordinator), remote workers and Slurm
/// steps alike, and keeps the hook off the production command line.
pub const BATCH_DELAY_ENV: &str = "TRESNET_DEBUG_BATCH_DELAY_MS";

/// Whether this build has the hooks (`--features test-hooks`).
pub const BUILT_IN: bool = cfg!(feature = "test-hooks");

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{BATCH_DELAY_ENV}={value:?} is not a whole number of milliseconds")]
pub struct BadBatchDelay {
    pub value: String,
}

/// The per-batch delay asked for through [`BATCH_DELAY_ENV`]; zero when unset, and always zero in a
/// build without the hooks.
pub fn batch_delay() -> Result<Duration, BadBatchDelay> {
    batch_delay_from(std::env::var_os(BATCH_DELAY_ENV))
}

fn batch_delay_from(value: Option<OsString>) -> Result<Duration, BadBatchDelay> {
    if !BUILT_IN {
        return Ok(Duration::ZERO);
    }
    let Some(value) = value else {
        return Ok(Duration::ZERO);
    };
    let value = value.to_string_lossy();
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| BadBatchDelay {
            value: value.into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "test-hooks")]
    #[test]
    fn the_delay_is_read_when_the_hooks_are_built_in() {
        assert_eq!(
            batch_delay_from(Some("250".into())),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(batch_delay_from(None), Ok(Duration::ZERO));
        let e = batch_delay_from(Some("fast".into())).unwrap_err();
        assert!(e.to_string().contains(BATCH_DELAY_ENV), "{e}");
    }

    /// `cargo test -p tresnet-worker` builds without the feature: a production build ignores the
    /// variable, whatever it says.
    #[cfg(not(feature = "test-hooks"))]
    #[test]
    fn without_the_hooks_the_variable_is_ignored() {
        const { assert!(!BUILT_IN) };
        for v in ["250", "fast"] {
            assert_eq!(batch_delay_from(Some(v.into())), Ok(Duration::ZERO));
        }
    }
}
