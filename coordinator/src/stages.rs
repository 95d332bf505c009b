//! Where each worker's time went (fetch, decode + resize, host→device, forward, device→host +
//! scoring, submit, idle) and how its devices' model layouts were chosen, as the workers reported in
//! their shard trailers; summary.json's `workers[].stages` / `workers[].layouts` and (drawn by
//! [`crate::html`]) the report's "Where the time went" section, with the stage that bounds
//! throughput named.

use serde::{Deserialize, Serialize};
use tresnet_common::protocol::pb;

/// A device idle for at least this share of the wall time waited for data: the input side bounds the
/// run. Below it the device is the bottleneck (a few percent idle is the hand-over between batches).
pub const INPUT_BOUND_IDLE_SHARE: f64 = 0.10;

/// The decode pool busy for at least this share of its threads' wall time is what the device waited
/// for; below it the wait is fetching (the store, the network or the cache).
pub const DECODE_BOUND_POOL_SHARE: f64 = 0.5;

/// One worker's stages in this job, cumulative up to its last accepted shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStages {
    /// From the worker's job start (model loaded) to its last snapshot.
    pub wall_seconds: f64,
    /// Input stages, summed over the concurrent fetches and decode threads (may exceed the wall time).
    pub fetch_seconds: f64,
    pub decode_seconds: f64,
    pub submit_seconds: f64,
    pub decode_threads: u32,
    pub images: u64,
    /// Images through the model per second of the worker's wall time.
    pub end_to_end_images_per_second: f64,
    pub devices: Vec<DeviceStages>,
    /// What bounds this worker's throughput, in words ("decode-bound: cpu waited 38% of the time").
    pub bound: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceStages {
    pub device: String,
    pub host_to_device_seconds: f64,
    pub forward_seconds: f64,
    pub device_to_host_seconds: f64,
    pub idle_seconds: f64,
    pub images: u64,
    /// Images per second of forward time alone: what the model could do if fed without waiting.
    pub model_images_per_second: f64,
}

/// How one device's layout was chosen at model load.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LayoutSummary {
    pub device: String,
    pub fold_bn: bool,
    pub channels_last: bool,
    /// False: forced by the job, nothing measured.
    pub measured: bool,
    /// The measurement was an earlier job's, read from the worker node's layout cache.
    #[serde(default)]
    pub from_cache: bool,
    pub batch_size: u32,
    pub resolution: u32,
    pub seconds: f64,
    pub candidates: Vec<CandidateSummary>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CandidateSummary {
    pub fold_bn: bool,
    pub channels_last: bool,
    pub pass_ms: Vec<f64>,
}

fn rate(images: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        images as f64 / seconds
    } else {
        0.0
    }
}

impl WorkerStages {
    pub fn from_pb(s: &pb::WorkerStages) -> Self {
        let devices: Vec<DeviceStages> = s
            .devices
            .iter()
            .map(|d| DeviceStages {
                device: d.device.clone(),
                host_to_device_seconds: d.host_to_device_seconds,
                forward_seconds: d.forward_seconds,
                device_to_host_seconds: d.device_to_host_seconds,
                idle_seconds: d.idle_seconds,
                images: d.images,
                model_images_per_second: rate(d.images, d.forward_seconds),
            })
            .collect();
        let mut w = WorkerStages {
            wall_seconds: s.wall_seconds,
            fetch_seconds: s.fetch_seconds,
            decode_seconds: s.decode_seconds,
            submit_seconds: s.submit_seconds,
            decode_threads: s.decode_threads,
            images: s.images,
            end_to_end_images_per_second: rate(s.images, s.wall_seconds),
            devices,
            bound: String::new(),
        };
        w.bound = w.bounding_stage();
        w
    }

    /// The stage that bounds throughput: the input side when the devices waited (decode when the
    /// decode pool was busy, else fetch), otherwise the device's largest stage.
    pub fn bounding_stage(&self) -> String {
        let wall = self.wall_seconds;
        if wall <= 0.0 || self.devices.is_empty() {
            return "unknown: no time recorded".into();
        }
        let idlest = self
            .devices
            .iter()
            .max_by(|a, b| a.idle_seconds.total_cmp(&b.idle_seconds))
            .expect("not empty");
        let idle = idlest.idle_seconds / wall;
        if idle >= INPUT_BOUND_IDLE_SHARE {
            let pool = self.decode_seconds / (f64::from(self.decode_threads.max(1)) * wall);
            let stage = if pool >= DECODE_BOUND_POOL_SHARE {
                "decode"
            } else {
                "fetch"
            };
            return format!(
                "{stage}-bound: {} waited {:.0}% of the time (decode pool busy {:.0}%)",
                idlest.device,
                100.0 * idle,
                100.0 * pool
            );
        }
        let busiest = self
            .devices
            .iter()
            .min_by(|a, b| a.idle_seconds.total_cmp(&b.idle_seconds))
            .expect("not empty");
        let parts = [
            ("forward", busiest.forward_seconds),
            ("host-to-device", busiest.host_to_device_seconds),
            ("device-to-host + scoring", busiest.device_to_host_seconds),
        ];
        let (stage, secs) = parts
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("three parts");
        format!(
            "{stage}-bound: {} busy {:.0}% of the time, {:.0}% of it in {stage}",
            busiest.device,
            100.0 * (1.0 - busiest.idle_seconds / wall).max(0.0),
            100.0 * secs / wall
        )
    }
}

impl LayoutSummary {
    pub fn from_pb(l: &pb::LayoutChoice) -> Self {
        LayoutSummary {
            device: l.device.clone(),
            fold_bn: l.fold_bn,
            channels_last: l.channels_last,
            measured: l.measured,
            from_cache: l.from_cache,
            batch_size: l.batch_size,
            resolution: l.resolution,
            seconds: l.seconds,
            candidates: l
                .candidates
                .iter()
                .map(|c| CandidateSummary {
                    fold_bn: c.fold_bn,
                    channels_last: c.channels_last,
                    pass_ms: c.pass_ms.clone(),
                })
                .collect(),
        }
    }

    pub fn describe(fold_bn: bool, channels_last: bool) -> String {
        format!(
            "BN {}, {}",
            if fold_bn { "folded" } else { "kept" },
            if channels_last {
                "channels-last"
            } else {
                "contiguous"
            }
        )
    }
}

/// What the coordinator keeps per worker from the trailers: the latest snapshot (the one with the
/// longest wall time, since trailers of concurrent shards may arrive out of order).
#[derive(Debug, Clone, Default)]
pub struct LatestStages {
    pub stages: Option<pb::WorkerStages>,
    pub layouts: Vec<pb::LayoutChoice>,
}

impl LatestStages {
    pub fn update(&mut self, t: &pb::ShardTrailer) {
        if let Some(s) = &t.stages
            && self
                .stages
                .as_ref()
                .is_none_or(|old| s.wall_seconds >= old.wall_seconds)
        {
            self.stages = Some(s.clone());
        }
        if !t.layouts.is_empty() {
            self.layouts = t.layouts.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(idle: f64, decode: f64) -> pb::WorkerStages {
        pb::WorkerStages {
            wall_seconds: 10.0,
            fetch_seconds: 1.0,
            decode_seconds: decode,
            submit_seconds: 0.1,
            decode_threads: 2,
            images: 100,
            devices: vec![pb::DeviceStages {
                device: "cpu".into(),
                host_to_device_seconds: 0.2,
                forward_seconds: 9.5 - idle,
                device_to_host_seconds: 0.3,
                idle_seconds: idle,
                images: 100,
            }],
        }
    }

    #[test]
    fn the_bounding_stage_is_named() {
        let decode = WorkerStages::from_pb(&stages(3.8, 16.0));
        assert!(
            decode
                .bound
                .starts_with("decode-bound: cpu waited 38% of the time"),
            "{}",
            decode.bound
        );
        let fetch = WorkerStages::from_pb(&stages(3.8, 2.0));
        assert!(fetch.bound.starts_with("fetch-bound"), "{}", fetch.bound);
        let forward = WorkerStages::from_pb(&stages(0.2, 16.0));
        assert!(
            forward.bound.starts_with("forward-bound"),
            "{}",
            forward.bound
        );
        assert!((forward.end_to_end_images_per_second - 10.0).abs() < 1e-9);
        assert!((forward.devices[0].model_images_per_second - 100.0 / 9.3).abs() < 1e-9);
    }

    #[test]
    fn the_latest_snapshot_wins_whatever_the_arrival_order() {
        let mut l = LatestStages::default();
        let mut late = stages(1.0, 1.0);
        late.wall_seconds = 20.0;
        l.update(&pb::ShardTrailer {
            stages: Some(late),
            ..Default::default()
        });
        l.update(&pb::ShardTrailer {
            stages: Some(stages(1.0, 1.0)),
            ..Default::default()
        });
        assert_eq!(l.stages.unwrap().wall_seconds, 20.0);
    }
}
