//! How many samples a shard holds: given with `--shard-size`, or chosen from the dataset size and the
//! local worker count so that a small dataset still spreads over the workers.
//!
//! A shard is the unit of leasing, retry and journaling and is never split across workers, so one
//! shard larger than the dataset runs on one worker while the others wait. The choice is part of how
//! the journal is cut (record `shard-3` holds the samples of shard 3 at *this* size), so it is a pure
//! function of what a rerun of the same command sees again: the dataset's size and `--local-workers`.
//! Remote workers (`--listen`) are not counted: how many will join is unknown when the journal is cut.

/// Largest automatic shard: the former fixed default. A shard costs one lease, one journal record and
/// one Submit stream, so big datasets keep shards this size (and their existing journals' cut).
pub const MAX_AUTO_SHARD_SIZE: u64 = 256;
/// Shards each worker gets, at least, on a small dataset: more than one so a worker that finishes
/// early can take another's remaining work and the progress moves in steps of a quarter per worker.
pub const SHARDS_PER_WORKER: u64 = 4;

/// `--shard-size`: an explicit value, or chosen per dataset ([`ShardSize::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardSize {
    #[default]
    Auto,
    Fixed(u64),
}

/// A sweep's `[run]` table says `shard-size = 64` or `shard-size = "auto"`.
impl<'de> serde::Deserialize<'de> for ShardSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            Number(u64),
            Text(String),
        }
        let text = match Given::deserialize(d)? {
            Given::Number(n) => n.to_string(),
            Given::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl ShardSize {
    /// Samples per shard for a dataset of `samples` evaluated by `local_workers` local workers:
    /// `Fixed` as given; `Auto` is `ceil(samples / (SHARDS_PER_WORKER * workers))`, at least 1 and at
    /// most [`MAX_AUTO_SHARD_SIZE`] (so any dataset of at least `1024 * workers` samples gets 256).
    pub fn resolve(self, samples: u64, local_workers: u32) -> u64 {
        match self {
            ShardSize::Fixed(n) => n,
            ShardSize::Auto => {
                let spread = SHARDS_PER_WORKER * u64::from(local_workers.max(1));
                samples.div_ceil(spread).clamp(1, MAX_AUTO_SHARD_SIZE)
            }
        }
    }

    /// How the resolved value came about, for the log.
    pub fn describe(self, samples: u64, local_workers: u32) -> String {
        match self {
            ShardSize::Fixed(n) => format!("{n} (--shard-size)"),
            ShardSize::Auto => format!(
                "{} (automatic: {samples} samples, {} local workers, at least {SHARDS_PER_WORKER} shards \
                 each, at most {MAX_AUTO_SHARD_SIZE})",
                self.resolve(samples, local_workers),
                local_workers.max(1)
            ),
        }
    }
}

/// A `--shard-size` that is neither `auto` nor a positive number of samples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard size {0:?} (expected a positive number of samples or auto)")]
pub struct InvalidShardSize(pub String);

impl std::str::FromStr for ShardSize {
    type Err = InvalidShardSize;
    fn from_str(s: &str) -> Result<Self, InvalidShardSize> {
        match s {
            "auto" => Ok(ShardSize::Auto),
            n => match n.parse::<u64>() {
                Ok(0) | Err(_) => Err(InvalidShardSize(s.to_string())),
                Ok(n) => Ok(ShardSize::Fixed(n)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_AUTO_SHARD_SIZE, SHARDS_PER_WORKER, ShardSize};
    use proptest::prelude::*;

    #[test]
    fn small_datasets_spread_over_the_workers_and_large_ones_keep_256() {
        assert_eq!(ShardSize::Auto.resolve(60, 2), 8);
        assert_eq!(ShardSize::Auto.resolve(24, 2), 3);
        assert_eq!(ShardSize::Auto.resolve(3, 8), 1);
        assert_eq!(ShardSize::Auto.resolve(50_000, 1), 256);
        assert_eq!(ShardSize::Auto.resolve(50_000, 64), 196);
        assert_eq!(ShardSize::Fixed(4).resolve(50_000, 64), 4);
        // --listen only: counted as one worker.
        assert_eq!(ShardSize::Auto.resolve(240, 0), 60);
    }

    #[test]
    fn parses_auto_and_positive_counts_only() {
        assert_eq!("auto".parse(), Ok(ShardSize::Auto));
        assert_eq!("17".parse(), Ok(ShardSize::Fixed(17)));
        assert!(
            "0".parse::<ShardSize>()
                .unwrap_err()
                .to_string()
                .contains("\"0\"")
        );
        assert!("-3".parse::<ShardSize>().is_err());
        assert!("256MiB".parse::<ShardSize>().is_err());
    }

    proptest! {
        /// Every worker gets work (as long as there is a sample each), no shard exceeds the cap, and
        /// the cut depends on nothing but its inputs.
        #[test]
        fn auto_spreads_and_is_bounded(samples in 1u64..200_000, workers in 0u32..300) {
            let size = ShardSize::Auto.resolve(samples, workers);
            prop_assert!((1..=MAX_AUTO_SHARD_SIZE).contains(&size));
            let shards = samples.div_ceil(size);
            let w = u64::from(workers.max(1));
            prop_assert!(shards >= w.min(samples), "{shards} shards for {w} workers");
            if size < MAX_AUTO_SHARD_SIZE {
                prop_assert!(shards >= (SHARDS_PER_WORKER * w).min(samples) / 2);
            }
            prop_assert_eq!(size, ShardSize::Auto.resolve(samples, workers));
        }
    }
}
