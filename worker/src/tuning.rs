//! Measured model layout: at model load a worker times every candidate layout the job leaves open
//! (BatchNorm folded or kept × contiguous or channels-last) on a real-shaped batch, in alternating
//! rounds, keeps the fastest and reports the choice with every timing.
//!
//! Every candidate computes the same function within the parity bound (worker/tests/parity.rs), so the
//! choice is a speed decision, not a numerical one: a job that leaves it open (`--memory-format auto`,
//! neither `--fold-bn` nor `--no-fold-bn`) has `auto` in its identity, and the choice each device made
//! is recorded in summary.json (`workers[].layouts`). A forced layout is part of the identity and skips
//! the measurement.
//!
//! A measurement is kept in the node's layout cache (`TRESNET_LAYOUT_CACHE`, default
//! `$XDG_CACHE_HOME/tresnet-eval/layouts`), keyed by everything the ranking depends on (host, device,
//! CPU model, libtorch threads and version, this binary's version, architecture, resolution, timed
//! batch, precision and the candidates): the next job with the same key loads only the chosen layout
//! and measures nothing, which is most of a short run's start-up. Delete the folder (or set the
//! variable to `off`) to measure again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use tresnet_common::job::MemoryFormat;
use tresnet_common::protocol::pb;

use crate::model::{
    BuildOptions, ForwardError, LoadError, LoadedModel, ModelName, TResNetConfig, load_models,
};

/// Why no layout could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("measuring the layouts: {0}")]
    Forward(#[from] ForwardError),
}

/// Timed passes per candidate, one per round, candidates interleaved within a round: a neighbour's
/// burst then slows one pass of each candidate rather than every pass of one. Three rounds are what
/// the manual measurement needed to rank the layouts consistently on a shared 2-core machine.
pub const TUNE_ROUNDS: usize = 3;

/// Largest batch timed on a CPU. A CPU pass costs nearly the same per image from a few images up, so
/// the ranking holds at the job's batch size, while start-up stays bounded: TResNet-M at 224 runs ~30
/// img/s on 2 idle cores, so 4 candidates × (1 warm-up + 3 rounds) of 4 images ≈ 2 s (measured ~20 s
/// at batch 8 with the machine's load average at 7, which is why it is 4, not 8). On CUDA the job's
/// batch is timed as it is (passes take milliseconds, and the ranking there does depend on the batch
/// size).
pub const TUNE_CPU_MAX_BATCH: i64 = 4;

/// No further round starts once the measurement has taken this long (the warm-up and the first timed
/// round always run): bounds start-up on a slow or busy device or a big model, where one round already
/// ranks clearly.
pub const TUNE_BUDGET: Duration = Duration::from_secs(10);

/// One way to build the network on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub fold_bn: bool,
    pub channels_last: bool,
}

/// The layouts a job leaves open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutSpace {
    /// Preferred first: on a tie the earlier candidate wins.
    pub fold_bn: Vec<bool>,
    pub channels_last: Vec<bool>,
}

impl LayoutSpace {
    /// `fold_bn` is the forced value, or the preferred one when `measure_fold_bn`.
    pub fn new(fold_bn: bool, measure_fold_bn: bool, memory_format: MemoryFormat) -> Self {
        LayoutSpace {
            fold_bn: if measure_fold_bn {
                vec![fold_bn, !fold_bn]
            } else {
                vec![fold_bn]
            },
            channels_last: memory_format.candidates().to_vec(),
        }
    }

    /// No measurement: the preferred BN setting, and for `auto` channels-last on CUDA, contiguous on
    /// CPU (the rule before layouts were measured; reruns are then bit-identical).
    pub fn fixed_rule(fold_bn: bool, memory_format: MemoryFormat, device: Device) -> Self {
        LayoutSpace {
            fold_bn: vec![fold_bn],
            channels_last: match memory_format {
                MemoryFormat::Auto => vec![device != Device::Cpu],
                forced => forced.candidates().to_vec(),
            },
        }
    }

    pub fn candidates(&self) -> Vec<Layout> {
        let mut out = Vec::new();
        for &fold_bn in &self.fold_bn {
            for &channels_last in &self.channels_last {
                out.push(Layout {
                    fold_bn,
                    channels_last,
                });
            }
        }
        out
    }
}

/// One candidate's timed passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateTiming {
    pub layout: Layout,
    /// Milliseconds per timed pass, in round order.
    pub pass_ms: Vec<f64>,
}

impl CandidateTiming {
    /// The fastest pass: interference from other processes only ever adds time.
    pub fn best_ms(&self) -> f64 {
        self.pass_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// How a device's layout was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutChoice {
    pub device: String,
    pub chosen: Layout,
    /// False: the job forced the layout; `candidates` is then empty.
    pub measured: bool,
    /// The measurement was made by an earlier job on this node and read from the layout cache
    /// (`candidates` are its timings; `seconds` is 0: nothing was measured now).
    pub from_cache: bool,
    pub candidates: Vec<CandidateTiming>,
    pub batch_size: i64,
    pub resolution: i64,
    /// Wall time of the measurement (start-up cost; the loading of the candidates excluded).
    pub seconds: f64,
}

impl LayoutChoice {
    pub fn to_pb(&self) -> pb::LayoutChoice {
        pb::LayoutChoice {
            device: self.device.clone(),
            fold_bn: self.chosen.fold_bn,
            channels_last: self.chosen.channels_last,
            measured: self.measured,
            candidates: self
                .candidates
                .iter()
                .map(|c| pb::LayoutTiming {
                    fold_bn: c.layout.fold_bn,
                    channels_last: c.layout.channels_last,
                    pass_ms: c.pass_ms.clone(),
                })
                .collect(),
            batch_size: self.batch_size as u32,
            resolution: self.resolution as u32,
            seconds: self.seconds,
            from_cache: self.from_cache,
        }
    }
}

/// Environment variable naming the layout cache folder, or `off`.
pub const LAYOUT_CACHE_ENV: &str = "TRESNET_LAYOUT_CACHE";

/// The node's cache of measured layout choices: one small JSON file per key, so concurrent workers of a
/// node never rewrite each other's entries; a lost race only means one more measurement.
#[derive(Debug, Clone)]
pub struct LayoutCache {
    dir: PathBuf,
}

/// One cached measurement, with the full key to rule out a hash collision.
#[derive(Debug, Serialize, Deserialize)]
struct CachedChoice {
    key: String,
    chosen: Layout,
    candidates: Vec<CandidateTiming>,
    batch_size: i64,
    measured_seconds: f64,
    measured_at_unix_ms: u128,
}

impl LayoutCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LayoutCache { dir: dir.into() }
    }

    /// `TRESNET_LAYOUT_CACHE` (a folder, or `off`), else `$XDG_CACHE_HOME/tresnet-eval/layouts` (else
    /// `~/.cache/...`); `None` when off or when there is no home to put it in.
    pub fn from_env() -> Option<Self> {
        match std::env::var_os(LAYOUT_CACHE_ENV).filter(|v| !v.is_empty()) {
            Some(v) if v == "off" => None,
            Some(v) => Some(LayoutCache::new(v)),
            None => crate::dataset_cache::default_dir()
                .and_then(|d| d.parent().map(|p| LayoutCache::new(p.join("layouts")))),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        let digest = Sha256::digest(key.as_bytes());
        let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    /// The cached choice for `key` when it is one of `layouts`; an unreadable or foreign entry is a miss.
    fn get(&self, key: &str, layouts: &[Layout]) -> Option<CachedChoice> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<CachedChoice>(&bytes) {
            Ok(c) if c.key == key && layouts.contains(&c.chosen) => Some(c),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable layout cache entry");
                None
            }
        }
    }

    /// Best effort: a cache that cannot be written costs the next job a measurement, never this one.
    fn put(&self, entry: &CachedChoice) {
        let path = self.path(&entry.key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                std::fs::write(&tmp, serde_json::to_vec_pretty(entry).unwrap_or_default())
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), error = %e, "could not write the layout cache");
        }
    }
}

/// The CPU's model name: part of the cache key, since a shared home folder may serve several machines.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// Everything the ranking of `layouts` depends on.
fn cache_key(name: ModelName, shape: TuneShape, layouts: &[Layout]) -> String {
    let cands: Vec<String> = layouts
        .iter()
        .map(|l| format!("{}{}", u8::from(l.fold_bn), u8::from(l.channels_last)))
        .collect();
    format!(
        "host={}|device={}|cpu={}|threads={}|libtorch={}|worker={}|model={name:?}|res={}|batch={}|kind={:?}|candidates={}",
        crate::agent::hostname(),
        crate::metrics::device_label(shape.device),
        cpu_model(),
        tch::get_num_threads(),
        crate::software::LIBTORCH_VERSION.unwrap_or("unknown"),
        env!("CARGO_PKG_VERSION"),
        shape.resolution,
        shape.timed_batch(),
        shape.kind,
        cands.join(","),
    )
}

/// What to measure on: the device, the kind, and the job's batch shape.
#[derive(Debug, Clone, Copy)]
pub struct TuneShape {
    pub device: Device,
    pub kind: Kind,
    pub batch_size: i64,
    pub resolution: i64,
}

impl TuneShape {
    /// The batch actually timed (see [`TUNE_CPU_MAX_BATCH`]).
    pub fn timed_batch(&self) -> i64 {
        if self.device == Device::Cpu {
            self.batch_size.clamp(1, TUNE_CPU_MAX_BATCH)
        } else {
            self.batch_size.max(1)
        }
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Loads `name` in every layout of `space` and keeps the fastest on `shape.device`; with a single
/// candidate, loads it and measures nothing. With a cache (see [`LayoutCache`]), a choice measured
/// earlier for the same key is loaded alone, and a new measurement is stored.
pub fn load_fastest(
    name: ModelName,
    arch: &TResNetConfig,
    weights: &Path,
    space: &LayoutSpace,
    shape: TuneShape,
    cache: Option<&LayoutCache>,
) -> Result<(LoadedModel, LayoutChoice), TuneError> {
    let layouts = space.candidates();
    let build = |l: &Layout| BuildOptions {
        device: shape.device,
        kind: shape.kind,
        fold_bn: l.fold_bn,
        channels_last: l.channels_last,
    };
    let device = crate::metrics::device_label(shape.device);
    let key = (layouts.len() > 1).then(|| cache_key(name, shape, &layouts));
    if let (Some(cache), Some(key)) = (cache, &key)
        && let Some(hit) = cache.get(key, &layouts)
    {
        let model = load_models(name, arch, weights, &[build(&hit.chosen)])?
            .pop()
            .expect("one model per layout");
        return Ok((
            model,
            LayoutChoice {
                device,
                chosen: hit.chosen,
                measured: true,
                from_cache: true,
                candidates: hit.candidates,
                batch_size: hit.batch_size,
                resolution: shape.resolution,
                seconds: 0.0,
            },
        ));
    }
    let opts: Vec<BuildOptions> = layouts.iter().map(build).collect();
    let mut models = load_models(name, arch, weights, &opts)?;
    if models.len() == 1 {
        let model = models.pop().expect("one candidate");
        return Ok((
            model,
            LayoutChoice {
                device,
                chosen: layouts[0],
                measured: false,
                from_cache: false,
                candidates: Vec::new(),
                batch_size: shape.batch_size,
                resolution: shape.resolution,
                seconds: 0.0,
            },
        ));
    }
    let (best, candidates, seconds) = measure(&models, &layouts, shape)?;
    let model = models.swap_remove(best);
    drop(models);
    if let (Some(cache), Some(key)) = (cache, key) {
        cache.put(&CachedChoice {
            key,
            chosen: layouts[best],
            candidates: candidates.clone(),
            batch_size: shape.timed_batch(),
            measured_seconds: seconds,
            measured_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        });
    }
    Ok((
        model,
        LayoutChoice {
            device,
            chosen: layouts[best],
            measured: true,
            from_cache: false,
            candidates,
            batch_size: shape.timed_batch(),
            resolution: shape.resolution,
            seconds,
        },
    ))
}

/// Times the candidates in alternating rounds; returns the winner's position, every timing and the
/// seconds spent.
fn measure(
    models: &[LoadedModel],
    layouts: &[Layout],
    shape: TuneShape,
) -> Result<(usize, Vec<CandidateTiming>, f64), ForwardError> {
    let start = Instant::now();
    let r = shape.resolution;
    // Pixels in [0, 1] as the pipeline feeds them (contiguous, float, on the device): the model does
    // its own layout conversion, which is part of what a candidate costs.
    let x = Tensor::rand([shape.timed_batch(), 3, r, r], (Kind::Float, Device::Cpu))
        .to_device(shape.device);
    let pass = |m: &LoadedModel| -> Result<f64, ForwardError> {
        let t = Instant::now();
        let y = m.model.forward(&x)?;
        synchronize(shape.device);
        drop(y);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    // Untimed first pass each: oneDNN and cuDNN pick and prepare kernels on it.
    for m in models {
        pass(m)?;
    }
    let mut timings: Vec<CandidateTiming> = layouts
        .iter()
        .map(|&layout| CandidateTiming {
            layout,
            pass_ms: Vec::new(),
        })
        .collect();
    for round in 0..TUNE_ROUNDS {
        if round > 0 && start.elapsed() >= TUNE_BUDGET {
            break;
        }
        // Rotated each round so no candidate always runs right after the same neighbour.
        for k in 0..models.len() {
            let i = (k + round) % models.len();
            let ms = pass(&models[i])?;
            timings[i].pass_ms.push(ms);
        }
    }
    let best = timings
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.best_ms().total_cmp(&b.1.best_ms()))
        .map(|(i, _)| i)
        .expect("at least two candidates");
    Ok((best, timings, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_choices_leave_one_candidate_and_auto_leaves_four() {
        let forced = LayoutSpace::new(true, false, MemoryFormat::ChannelsLast);
        assert_eq!(
            forced.candidates(),
            [Layout {
                fold_bn: true,
                channels_last: true
            }]
        );
        let open = LayoutSpace::new(false, true, MemoryFormat::Auto);
        let c = open.candidates();
        assert_eq!(c.len(), 4);
        // The preferred fold setting comes first, so it wins a tie.
        assert!(!c[0].fold_bn);
        let half = LayoutSpace::new(true, false, MemoryFormat::Auto);
        assert_eq!(half.candidates().len(), 2);
    }

    #[test]
    fn a_cached_choice_is_found_by_its_key_only_and_only_among_the_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayoutCache::new(dir.path());
        let shape = TuneShape {
            device: Device::Cpu,
            kind: Kind::Float,
            batch_size: 16,
            resolution: 224,
        };
        let space = LayoutSpace::new(true, true, MemoryFormat::Auto).candidates();
        let key = cache_key(ModelName::TresnetM, shape, &space);
        assert!(cache.get(&key, &space).is_none());
        let chosen = space[3];
        cache.put(&CachedChoice {
            key: key.clone(),
            chosen,
            candidates: Vec::new(),
            batch_size: 4,
            measured_seconds: 1.5,
            measured_at_unix_ms: 1,
        });
        assert_eq!(cache.get(&key, &space).unwrap().chosen, chosen);
        // Another resolution, precision or candidate set is another key.
        let other = cache_key(
            ModelName::TresnetM,
            TuneShape {
                resolution: 448,
                ..shape
            },
            &space,
        );
        assert_ne!(other, key);
        assert!(cache.get(&other, &space).is_none());
        // A choice outside today's candidates is never used (a forced half of the space).
        assert!(cache.get(&key, &space[..2]).is_none());
        // A torn or foreign file is a miss, not an error.
        std::fs::write(cache.path(&key), b"{not json").unwrap();
        assert!(cache.get(&key, &space).is_none());
    }

    #[test]
    fn cpu_tuning_batches_are_capped() {
        let s = TuneShape {
            device: Device::Cpu,
            kind: Kind::Float,
            batch_size: 256,
            resolution: 224,
        };
        assert_eq!(s.timed_batch(), TUNE_CPU_MAX_BATCH);
        let small = TuneShape { batch_size: 2, ..s };
        assert_eq!(small.timed_batch(), 2);
    }
}
