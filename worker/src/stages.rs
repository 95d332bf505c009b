//! Per-stage time of one job on this worker (fetch, decode + resize, host→device, forward,
//! device→host + scoring, submit, and each device's idle wait for data), cumulative since the job
//! started; every shard trailer carries a snapshot, so the run directory says which stage bounds it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tresnet_common::protocol::pb;

/// A stage's seconds, as nanoseconds that concurrent tasks add to without a lock.
#[derive(Debug, Default)]
struct Nanos(AtomicU64);

impl Nanos {
    fn add(&self, d: Duration) {
        self.0.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn seconds(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// One device's stages: what its executor thread did with its time.
#[derive(Debug)]
pub struct DeviceClock {
    label: String,
    host_to_device: Nanos,
    forward: Nanos,
    device_to_host: Nanos,
    idle: Nanos,
    images: AtomicU64,
}

/// Where one batch's time went on its device.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchTimes {
    pub host_to_device: Duration,
    pub forward: Duration,
}

impl DeviceClock {
    /// A batch of `images` took `total` on the device, `parts` of it before the logits existed; the rest
    /// is device→host and scoring.
    pub fn batch(&self, images: usize, total: Duration, parts: BatchTimes) {
        self.host_to_device.add(parts.host_to_device);
        self.forward.add(parts.forward);
        self.device_to_host
            .add(total.saturating_sub(parts.host_to_device + parts.forward));
        self.images.fetch_add(images as u64, Ordering::Relaxed);
    }

    pub fn idle(&self, waited: Duration) {
        self.idle.add(waited);
    }
}

/// One job's stage clock on this worker, shared by the shard tasks, the decode threads and the
/// executors.
#[derive(Debug)]
pub struct StageClock {
    started: Instant,
    fetch: Nanos,
    decode: Nanos,
    submit: Nanos,
    decode_threads: u32,
    devices: Vec<DeviceClock>,
}

impl StageClock {
    /// Starts now (the job's model is loaded): `devices` are the executors' labels in rank order.
    pub fn new(devices: Vec<String>, decode_threads: usize) -> Self {
        StageClock {
            started: Instant::now(),
            fetch: Nanos::default(),
            decode: Nanos::default(),
            submit: Nanos::default(),
            decode_threads: decode_threads.max(1) as u32,
            devices: devices
                .into_iter()
                .map(|label| DeviceClock {
                    label,
                    host_to_device: Nanos::default(),
                    forward: Nanos::default(),
                    device_to_host: Nanos::default(),
                    idle: Nanos::default(),
                    images: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn fetch(&self, took: Duration) {
        self.fetch.add(took);
    }

    pub fn decode(&self, took: Duration) {
        self.decode.add(took);
    }

    pub fn submit(&self, took: Duration) {
        self.submit.add(took);
    }

    /// The clock of the executor of rank `rank`, if this clock knows it.
    pub fn device(&self, rank: usize) -> Option<&DeviceClock> {
        self.devices.get(rank)
    }

    /// Everything so far, as the shard trailer carries it.
    pub fn snapshot(&self) -> pb::WorkerStages {
        let devices: Vec<pb::DeviceStages> = self
            .devices
            .iter()
            .map(|d| pb::DeviceStages {
                device: d.label.clone(),
                host_to_device_seconds: d.host_to_device.seconds(),
                forward_seconds: d.forward.seconds(),
                device_to_host_seconds: d.device_to_host.seconds(),
                idle_seconds: d.idle.seconds(),
                images: d.images.load(Ordering::Relaxed),
            })
            .collect();
        pb::WorkerStages {
            wall_seconds: self.started.elapsed().as_secs_f64(),
            fetch_seconds: self.fetch.seconds(),
            decode_seconds: self.decode.seconds(),
            submit_seconds: self.submit.seconds(),
            decode_threads: self.decode_threads,
            images: devices.iter().map(|d| d.images).sum(),
            devices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_to_host_is_the_rest_of_the_batch() {
        let c = StageClock::new(vec!["cpu".into()], 2);
        let d = c.device(0).unwrap();
        d.batch(
            4,
            Duration::from_millis(100),
            BatchTimes {
                host_to_device: Duration::from_millis(10),
                forward: Duration::from_millis(70),
            },
        );
        d.idle(Duration::from_millis(5));
        c.decode(Duration::from_millis(30));
        let s = c.snapshot();
        let dev = &s.devices[0];
        assert!((dev.device_to_host_seconds - 0.020).abs() < 1e-9);
        assert!((dev.forward_seconds - 0.070).abs() < 1e-9);
        assert!((dev.idle_seconds - 0.005).abs() < 1e-9);
        assert_eq!((s.images, s.decode_threads), (4, 2));
        assert!((s.decode_seconds - 0.030).abs() < 1e-9);
        assert!(c.device(1).is_none());
    }
}
