//! `sweep`: a matrix of evaluations (models × weights × datasets × resolutions × crop modes ×
//! precisions) run one after another, one run directory per cell, and the table of all of them
//! (`sweep.parquet`, `sweep.csv`, `sweep.md`, with 95% Wilson intervals of top-1 and top-5), plus one
//! timm-shaped `results-<dataset>.csv` per dataset ([`crate::timm_results`]).
//!
//! Each cell is exactly a `run`: the `[run]` table of the sweep file holds any `run` flag by its long
//! name (`batch-size = 64`, `no-fold-bn = true`, `dct-scaling = true`, `worker-arg = ["…"]`) and is
//! deserialised straight into `run`'s own [`RunArgs`] (the same structs, defaults and validation; an
//! unknown key is an error naming it), and the matrix fills in model, weights, data, format,
//! resolution, crop mode, precision and the run directory per cell. Cells run one after another on one
//! [`WorkerPool`]: the gRPC endpoint stays up for the whole sweep, `local-workers` are spawned once
//! (with the first cell that runs) and remote workers (`listen`) join once and stay attached. When a
//! cell is done, its workers ask for the next job and get the next cell; a worker reloads its model
//! only when the model, weights, precision, BN folding, slope or class count differ, and keeps its
//! dataset cache (so a second cell on the same object-store dataset fetches nothing again). Every
//! cell has its own run directory, journal and exactly-once accounting, exactly as a `run` of it;
//! pool-wide settings (listen address, TLS, token, local workers, devices) come from the `[run]`
//! table, which every cell shares. A cell that no worker can load (a bad checkpoint) fails with the
//! workers' reasons once every worker has refused it, and the next cell runs on the same workers.
//! Cells run in the matrix order except that those of one checkpoint at one precision run back to
//! back (precision varies fastest in the matrix), so each worker loads each model once; the tables
//! keep the matrix order.
//!
//! A cell is finished when its run directory holds a `summary.json` that accounts for every sample with
//! no failed shard and whose job identity (model, weights hash, dataset fingerprint, preprocessing,
//! precision, ...) equals the job the cell would run now; a rerun skips finished cells and resumes the
//! others from their journals. A cell whose directory holds a different job fails with the differing
//! fields instead of being overwritten.
//!
//! ```toml
//! out = "runs/imagenet"                 # relative paths are relative to this file's folder
//! resolutions = [224, 448]
//! crop_modes = ["center", "squish"]     # default ["center"]
//! precisions = ["fp32"]                 # default ["fp32"]
//!
//! [[model]]
//! name = "tresnet_m"
//! weights = ["weights/tresnet_m.pth", { path = "weights/m_v2.safetensors", label = "v2" }]
//!
//! [[dataset]]
//! name = "imagenet"
//! data = "/data/imagenet/val"           # path or URL, as for `run --data`
//! format = "imagenet"                   # default imagefolder
//! num_classes = 1000                    # optional, as `run --num-classes`
//! allow_absolute_paths = false          # optional, as `run --allow-absolute-paths` (manifests)
//! class_subset = "imagenet-r"           # optional, as `run --class-subset` (a file: relative to here)
//! decode_once = true                    # optional: decode once per (resolution, crop mode) into a
//!                                       # decoded pack under out/decoded/, every model cell reads it
//!
//! # reference_dataset = "imagenet"      # what results-*.csv diff against; default: the only
//!                                       # dataset of format "imagenet"
//! [run]
//! local-workers = 1
//! devices = "cuda:0"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polars::prelude::*;
use serde::Deserialize;
use tresnet_common::job::Precision;
use tresnet_common::preprocess::CropMode;

use crate::atomic_file::{write_atomic, write_atomic_with};
use crate::cli::RunArgs;
use crate::finished_run::{self, RunSummary};
use crate::job_args::DataArgs;
use crate::metrics::Observed;
use crate::run::{self, WorkerPool};
use crate::shutdown::{Interrupted, Shutdown};
use crate::table::Table;
use crate::timm_results::{ResultRow, results_tables};

/// `run` flags the matrix sets itself; the `[run]` table may not.
const MATRIX_FLAGS: &[&str] = &[
    "model",
    "weights",
    "data",
    "format",
    "resolution",
    "crop-mode",
    "precision",
    "out",
    "num-classes",
    "class-subset",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Folder of the cell run directories and the sweep tables.
    pub out: Option<PathBuf>,
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
    #[serde(rename = "dataset")]
    pub datasets: Vec<DatasetEntry>,
    pub resolutions: Vec<u32>,
    #[serde(default = "default_crop_modes")]
    pub crop_modes: Vec<CropMode>,
    #[serde(default = "default_precisions")]
    pub precisions: Vec<Precision>,
    /// Any other `run` flag, by its long name without dashes in front (read by [`Self::run_args`]).
    #[serde(default)]
    pub run: toml::Table,
    /// The `[[dataset]]` the timm-shaped `results-*.csv` tables diff the others against (timm diffs
    /// against ImageNet-val); default: the one dataset of format `imagenet`, if there is exactly one.
    pub reference_dataset: Option<String>,
}

fn default_crop_modes() -> Vec<CropMode> {
    vec![CropMode::Center]
}

fn default_precisions() -> Vec<Precision> {
    vec![Precision::Fp32]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// timm name, as `run --model`.
    pub name: String,
    pub weights: Vec<WeightsEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WeightsEntry {
    /// A checkpoint path; its file stem labels the cell.
    Path(PathBuf),
    Labeled {
        path: PathBuf,
        label: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    pub name: String,
    pub data: String,
    #[serde(default = "default_format")]
    pub format: String,
    pub num_classes: Option<u32>,
    #[serde(default)]
    pub allow_absolute_paths: bool,
    /// As `run --class-subset`: a built-in name or a file (relative to the sweep file's folder).
    pub class_subset: Option<String>,
    /// Decode the dataset once per (resolution, crop mode) into a decoded pack under
    /// `<out>/decoded/` (`pack --decoded`) and run every model cell of that key on it.
    #[serde(default)]
    pub decode_once: bool,
}

fn default_format() -> String {
    "imagefolder".into()
}

/// One point of the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Deterministic from the cell's coordinates; the run directory's name.
    pub name: String,
    pub model: String,
    pub weights_label: String,
    pub weights: PathBuf,
    pub dataset: String,
    pub data: String,
    pub format: String,
    pub num_classes: Option<u32>,
    pub allow_absolute_paths: bool,
    pub class_subset: Option<String>,
    pub resolution: u32,
    pub crop_mode: CropMode,
    pub precision: Precision,
    /// The dataset's `decode_once`.
    pub decode_once: bool,
}

fn crop_name(c: CropMode) -> &'static str {
    match c {
        CropMode::Center => "center",
        CropMode::Squish => "squish",
    }
}

/// Keeps names usable as directory names everywhere: anything but `[A-Za-z0-9._-]` becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Relative local paths in a sweep file are relative to the file's folder; URLs stay as they are.
fn resolve(base: &Path, p: &str) -> String {
    if p.contains("://") || Path::new(p).is_absolute() {
        p.to_string()
    } else {
        base.join(p).display().to_string()
    }
}

impl SweepFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sweep file {}", path.display()))?;
        let f: SweepFile = toml::from_str(&text)
            .with_context(|| format!("sweep file {} is not valid", path.display()))?;
        if f.models.is_empty()
            || f.datasets.is_empty()
            || f.resolutions.is_empty()
            || f.crop_modes.is_empty()
            || f.precisions.is_empty()
            || f.models.iter().any(|m| m.weights.is_empty())
        {
            bail!(
                "sweep file {} has an empty dimension (every [[model]] needs weights, and [[dataset]], resolutions, crop_modes, precisions need one entry at least)",
                path.display()
            );
        }
        for key in f.run.keys() {
            if MATRIX_FLAGS.contains(&key.as_str()) {
                bail!(
                    "sweep file {}: [run] sets {key:?}, which the matrix sets per cell",
                    path.display()
                );
            }
        }
        f.run_args()
            .with_context(|| format!("sweep file {}", path.display()))?;
        if let Some(r) = &f.reference_dataset
            && !f.datasets.iter().any(|d| &d.name == r)
        {
            bail!(
                "sweep file {}: reference_dataset {r:?} is not the name of a [[dataset]]",
                path.display()
            );
        }
        Ok(f)
    }

    /// The dataset the timm-shaped tables diff against: [`Self::reference_dataset`], or the only
    /// ImageNet-val (`imagenet` format) dataset.
    pub fn reference(&self) -> Option<&str> {
        if let Some(r) = &self.reference_dataset {
            return Some(r);
        }
        let mut val = self.datasets.iter().filter(|d| d.format == "imagenet");
        match (val.next(), val.next()) {
            (Some(d), None) => Some(&d.name),
            _ => None,
        }
    }

    /// Every cell, in a fixed order (models, weights, datasets, resolutions, crop modes, precisions);
    /// `base` is the folder relative paths are resolved against.
    pub fn cells(&self, base: &Path) -> anyhow::Result<Vec<Cell>> {
        let mut cells = Vec::new();
        for m in &self.models {
            for w in &m.weights {
                let (path, label) = match w {
                    WeightsEntry::Path(p) => (
                        p.clone(),
                        p.file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    WeightsEntry::Labeled { path, label } => (path.clone(), label.clone()),
                };
                let weights = PathBuf::from(resolve(base, &path.display().to_string()));
                for d in &self.datasets {
                    for &resolution in &self.resolutions {
                        for &crop_mode in &self.crop_modes {
                            for &precision in &self.precisions {
                                let name = sanitize(&format!(
                                    "{}-{}-{}-{}-{}-{}",
                                    m.name,
                                    label,
                                    d.name,
                                    resolution,
                                    crop_name(crop_mode),
                                    precision.as_str()
                                ));
                                cells.push(Cell {
                                    name,
                                    model: m.name.clone(),
                                    weights_label: label.clone(),
                                    weights: weights.clone(),
                                    dataset: d.name.clone(),
                                    data: resolve(base, &d.data),
                                    format: d.format.clone(),
                                    num_classes: d.num_classes,
                                    allow_absolute_paths: d.allow_absolute_paths,
                                    class_subset: d.class_subset.as_ref().map(|c| {
                                        match tresnet_common::dataset::ClassSubset::builtin(c) {
                                            Some(_) => c.clone(),
                                            None => resolve(base, c),
                                        }
                                    }),
                                    resolution,
                                    crop_mode,
                                    precision,
                                    decode_once: d.decode_once,
                                });
                            }
                        }
                    }
                }
            }
        }
        let mut seen = BTreeMap::new();
        for c in &cells {
            if let Some(prev) = seen.insert(c.name.clone(), c) {
                bail!(
                    "two cells are both named {}: {} and {} (give the weights distinct labels)",
                    c.name,
                    prev.weights.display(),
                    c.weights.display()
                );
            }
        }
        Ok(cells)
    }

    /// The `[run]` table as `run`'s arguments: every cell's settings but the matrix's. Keys are flag
    /// names (`batch-size`), which are the field names with `-` for `_`.
    pub fn run_args(&self) -> anyhow::Result<RunArgs> {
        let mut table = toml::Table::new();
        for (key, value) in &self.run {
            if key.contains('_') {
                bail!(
                    "[run] has unknown key {key:?} (keys are `run` flag names, such as batch-size)"
                );
            }
            table.insert(key.replace('-', "_"), value.clone());
        }
        let parse = |t: toml::Table| toml::Value::Table(t).try_into::<RunArgs>();
        let args = match parse(table.clone()) {
            Ok(args) => args,
            Err(e) => {
                // Serde reports a flattened field's bad value without its key: find the key alone.
                let key = table.iter().find_map(|(k, v)| {
                    parse(toml::Table::from_iter([(k.clone(), v.clone())]))
                        .is_err()
                        .then(|| k.replace('_', "-"))
                });
                match key {
                    Some(key) => bail!("[run] {key}: {e}"),
                    None => bail!("[run]: {e}"),
                }
            }
        };
        if let Some(key) = args.unknown.keys().next() {
            bail!("[run] has unknown key {:?}", key.replace('_', "-"));
        }
        Ok(args)
    }
}

impl Cell {
    /// This cell's `run`: the shared `[run]` settings with the matrix's coordinates filled in.
    pub fn run_args(&self, dir: &Path, shared: &RunArgs) -> anyhow::Result<RunArgs> {
        let mut a = shared.clone();
        a.model.model = self.model.clone();
        a.model.weights = Some(self.weights.clone());
        a.model.precision = self.precision;
        a.data = DataArgs {
            data: self.data.clone(),
            format: self
                .format
                .parse()
                .map_err(|e: tresnet_common::dataset::DatasetError| {
                    anyhow::anyhow!("dataset {}: {e}", self.dataset)
                })?,
            num_classes: self.num_classes,
            allow_absolute_paths: self.allow_absolute_paths,
            class_subset: self.class_subset.clone(),
        };
        a.preprocess.resolution = self.resolution;
        a.preprocess.crop_mode = self.crop_mode;
        a.out = dir.to_path_buf();
        Ok(a)
    }
}

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub file: PathBuf,
    /// Overrides the file's `out`.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellStatus {
    /// Evaluated (or resumed) by this invocation.
    Ran,
    /// Finished by an earlier invocation.
    Skipped,
    Failed,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Ran => "ran",
            CellStatus::Skipped => "skipped",
            CellStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CellResult {
    pub cell: Cell,
    pub dir: PathBuf,
    pub status: CellStatus,
    pub summary: Option<RunSummary>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub out: PathBuf,
    pub cells: Vec<CellResult>,
}

impl SweepOutcome {
    pub fn failed(&self) -> usize {
        self.cells
            .iter()
            .filter(|c| c.status == CellStatus::Failed)
            .count()
    }
}

/// Whether `dir` already holds the finished result of `job`.
fn finished(dir: &Path, job: &tresnet_common::job::JobSpec) -> Option<RunSummary> {
    let s = finished_run::read_summary(dir).ok()?;
    (s.is_complete() && s.job.differences(job).is_empty()).then_some(s)
}

/// Runs every unfinished cell, then writes the sweep tables; a failed cell is recorded and the sweep
/// goes on, so one bad checkpoint does not cost the rest of the matrix. SIGTERM/SIGINT drains the cell
/// that is running (as `run` does) and stops the sweep there without writing tables: a rerun skips
/// the finished cells and resumes that one from its journal.
pub async fn sweep(cfg: &SweepConfig) -> anyhow::Result<SweepOutcome> {
    let shutdown = Shutdown::listen().context("cannot listen for SIGTERM and SIGINT")?;
    let file = SweepFile::read(&cfg.file)?;
    let base = cfg.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let out = match (&cfg.out, &file.out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) => PathBuf::from(resolve(&base, &o.display().to_string())),
        (None, None) => bail!(
            "sweep file {} names no `out` folder; add one or give --out",
            cfg.file.display()
        ),
    };
    let cells = file.cells(&base)?;
    let shared = file.run_args()?;
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create sweep folder {}", out.display()))?;
    let total = cells.len();
    let mut results = Vec::with_capacity(total);
    let mut pool: Option<WorkerPool> = None;
    let observed = Observed::default();
    let order = run_order(&cells, &file.precisions);
    let mut slots: Vec<Option<Cell>> = cells.into_iter().map(Some).collect();
    let mut done: Vec<Option<CellResult>> = vec![None; total];
    let mut interrupted: Option<anyhow::Error> = None;
    let mut packs = DecodedPacks::default();
    for (n, &i) in order.iter().enumerate() {
        let cell = slots[i].take().expect("each cell runs once");
        let dir = out.join(&cell.name);
        let tag = format!("sweep: cell {}/{total} {}", n + 1, cell.name);
        if let Some(signal) = shutdown.requested() {
            interrupted = Some(
                Interrupted {
                    signal,
                    what: "sweep".into(),
                    progress: format!("stopped before {tag}"),
                }
                .into(),
            );
            break;
        }
        let ran = match packs.cell_on_pack(&cell, &shared, &out).await {
            Ok(on_pack) => {
                run_cell(
                    &on_pack, &dir, &shared, &tag, &mut pool, &observed, &shutdown,
                )
                .await
            }
            Err(e) => Err(e.context(format!("decoded pack of dataset {}", cell.dataset))),
        };
        let (status, summary, error) = match ran {
            // Written, but its metrics are null: no result, whatever else it says.
            Ok((_, s)) if s.samples == 0 => {
                let why = format!(
                    "no samples evaluated: {} bad, {} in failed shards, of {} (see its summary.json)",
                    s.bad_samples, s.failed_samples, s.dataset_size
                );
                eprintln!("{tag}: FAILED: {why}");
                (CellStatus::Failed, Some(s), Some(why))
            }
            // Written, but short of the dataset: the cell is not done, and a rerun resumes it.
            Ok((_, s)) if s.failed_samples > 0 => {
                let why = format!(
                    "{} of {} samples in failed shards (faults of the environment; see its summary.json)",
                    s.failed_samples, s.dataset_size
                );
                eprintln!("{tag}: FAILED: {why}");
                (CellStatus::Failed, Some(s), Some(why))
            }
            Ok((status, s)) => (status, Some(s), None),
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                interrupted = Some(e.context(tag));
                break;
            }
            Err(e) => {
                eprintln!("{tag}: FAILED: {e:#}");
                (CellStatus::Failed, None, Some(format!("{e:#}")))
            }
        };
        done[i] = Some(CellResult {
            cell,
            dir,
            status,
            summary,
            error,
        });
    }
    results.extend(done.into_iter().flatten());
    if let Some(pool) = pool {
        pool.close().await;
    }
    if let Some(e) = interrupted {
        // No tables: they would present a partial matrix as the sweep's outcome.
        return Err(e);
    }
    let outcome = SweepOutcome {
        out: out.clone(),
        cells: results,
    };
    write_tables(&outcome)?;
    write_timm_results(&outcome, file.reference())?;
    Ok(outcome)
}

/// The decoded packs of `decode_once` datasets, one per (dataset, resolution, crop mode), built by
/// the first cell that needs one (or found complete from an earlier invocation: same source
/// fingerprint, same pixel settings) and used by every later cell of that key.
#[derive(Default)]
struct DecodedPacks {
    ready: HashMap<(String, u32, &'static str), PathBuf>,
}

/// Objects a pack build reads at once (as `pack --concurrency`'s default).
const PACK_FETCH_CONCURRENCY: usize = 16;

impl DecodedPacks {
    /// `cell` itself, or for a `decode_once` dataset the same cell reading its pack.
    async fn cell_on_pack(
        &mut self,
        cell: &Cell,
        shared: &RunArgs,
        out: &Path,
    ) -> anyhow::Result<Cell> {
        if !cell.decode_once {
            return Ok(cell.clone());
        }
        let key = (
            cell.dataset.clone(),
            cell.resolution,
            crop_name(cell.crop_mode),
        );
        let dir = match self.ready.get(&key) {
            Some(dir) => dir.clone(),
            None => {
                let dir = out
                    .join("decoded")
                    .join(sanitize(&format!("{}-{}-{}", key.0, key.1, key.2)));
                Self::build(cell, shared, &dir).await?;
                self.ready.insert(key, dir.clone());
                dir
            }
        };
        Ok(Cell {
            data: dir.display().to_string(),
            format: "tar".into(),
            allow_absolute_paths: false,
            ..cell.clone()
        })
    }

    async fn build(cell: &Cell, shared: &RunArgs, dir: &Path) -> anyhow::Result<()> {
        use tresnet_common::dataset::decoded::{DecodedPack, DecodedPixels};
        use tresnet_common::dataset::tar::{DATASET_FILE, PackedDataset};
        use tresnet_common::storage::StorageLocation;

        let preprocess = cell.run_args(dir, shared)?.preprocess;
        let options = shared.store.options();
        let source = StorageLocation::parse(&cell.data, &options)?;
        let format = crate::job_args::with_absolute_paths(
            cell.format
                .parse()
                .map_err(|e: tresnet_common::dataset::DatasetError| {
                    anyhow::anyhow!("dataset {}: {e}", cell.dataset)
                })?,
            cell.allow_absolute_paths,
        )?;
        let index = tresnet_common::dataset::list_dataset(&source, &format).await?;
        let wanted = DecodedPack {
            source_fingerprint: index.fingerprint.clone(),
            source_format: index.format.clone(),
            pixels: DecodedPixels::of(&preprocess),
        };
        let existing = std::fs::read(dir.join(DATASET_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<PackedDataset>(&b).ok())
            .and_then(|p| p.decoded);
        if existing.as_ref() == Some(&wanted) {
            eprintln!("sweep: decoded pack {} is complete, reused", dir.display());
            return Ok(());
        }
        // A pack of other settings or source, or one cut short, is rebuilt from nothing.
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear decoded pack {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create decoded pack {}", dir.display()))?;
        let destination = StorageLocation::parse(&dir.display().to_string(), &options)?;
        eprintln!(
            "sweep: building decoded pack {} of dataset {} ({})",
            dir.display(),
            cell.dataset,
            wanted.pixels
        );
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let s = crate::decoded_pack::pack_decoded(
            &index,
            &source,
            &destination,
            &preprocess,
            crate::cli::DEFAULT_PACK_SHARD_BYTES,
            PACK_FETCH_CONCURRENCY,
            threads,
        )
        .await?;
        eprintln!(
            "sweep: built decoded pack {}: {} samples ({} bad), {} shards",
            dir.display(),
            s.samples,
            s.bad_samples,
            s.shards.len()
        );
        Ok(())
    }
}

/// The order cells run in: the matrix order, except that the cells of one checkpoint at one precision
/// run back to back, so that every worker loads each model once. Precision is the only dimension that
/// decides the loaded model yet varies faster than datasets, resolutions and crop modes in the matrix.
/// (The tables keep the matrix order.)
fn run_order(cells: &[Cell], precisions: &[Precision]) -> Vec<usize> {
    let checkpoint = |c: &Cell| {
        cells
            .iter()
            .position(|d| d.model == c.model && d.weights == c.weights)
            .unwrap_or(0)
    };
    let precision = |c: &Cell| precisions.iter().position(|p| *p == c.precision);
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&i| (checkpoint(&cells[i]), precision(&cells[i])));
    order
}

async fn run_cell(
    cell: &Cell,
    dir: &Path,
    shared: &RunArgs,
    tag: &str,
    pool: &mut Option<WorkerPool>,
    observed: &Observed,
    shutdown: &Shutdown,
) -> anyhow::Result<(CellStatus, RunSummary)> {
    let run_cfg = cell.run_args(dir, shared)?.into_config()?;
    let started = std::time::Instant::now();
    let (job, index) = run::plan_unless_stopped(&run_cfg, shutdown).await?;
    if let Some(s) = finished(dir, &job) {
        eprintln!("{tag}: finished earlier, skipping");
        return Ok((CellStatus::Skipped, s));
    }
    eprintln!("{tag}: running");
    let mut state = run::job_state(&run_cfg, &job, index).await?;
    // The pool outlives the cell: its workers wait for the next one instead of exiting.
    state.set_last_job(false);
    let pool = match pool {
        Some(p) => {
            p.install(state);
            p
        }
        None => pool.insert(WorkerPool::start(&run_cfg, state, observed, shutdown.clone()).await?),
    };
    tracing::info!(cell = %cell.name, local_worker_pids = ?pool.local_pids(), "cell on the worker pool");
    pool.run_job(&run_cfg, &job, started).await?;
    let s = finished_run::read_summary(dir)?;
    Ok((CellStatus::Ran, s))
}

fn opt_f64(r: &CellResult, f: impl Fn(&RunSummary) -> Option<f64>) -> Option<f64> {
    r.summary.as_ref().and_then(f)
}

fn opt_u64(r: &CellResult, f: impl Fn(&RunSummary) -> u64) -> Option<u64> {
    r.summary.as_ref().map(f)
}

/// One end of a 95% interval per cell (null for a cell without a summary or without samples).
fn ci_column(cells: &[CellResult], name: &str, end: impl Fn(&RunSummary) -> Option<f64>) -> Column {
    Column::new(
        name.into(),
        cells
            .iter()
            .map(|r| end(r.summary.as_ref()?))
            .collect::<Vec<_>>(),
    )
}

fn frame(o: &SweepOutcome) -> PolarsResult<DataFrame> {
    let c = &o.cells;
    let s = |f: &dyn Fn(&CellResult) -> String| c.iter().map(f).collect::<Vec<_>>();
    DataFrame::new_infer_height(vec![
        Column::new("cell".into(), s(&|r| r.cell.name.clone())),
        Column::new("model".into(), s(&|r| r.cell.model.clone())),
        Column::new("weights".into(), s(&|r| r.cell.weights_label.clone())),
        Column::new("dataset".into(), s(&|r| r.cell.dataset.clone())),
        Column::new(
            "resolution".into(),
            c.iter().map(|r| r.cell.resolution).collect::<Vec<_>>(),
        ),
        Column::new(
            "crop_mode".into(),
            s(&|r| crop_name(r.cell.crop_mode).to_string()),
        ),
        Column::new(
            "precision".into(),
            s(&|r| r.cell.precision.as_str().to_string()),
        ),
        Column::new("status".into(), s(&|r| r.status.as_str().to_string())),
        Column::new(
            "top1".into(),
            c.iter().map(|r| opt_f64(r, |s| s.top1)).collect::<Vec<_>>(),
        ),
        Column::new(
            "top5".into(),
            c.iter().map(|r| opt_f64(r, |s| s.top5)).collect::<Vec<_>>(),
        ),
        ci_column(c, "top1_ci95_low", |s| s.top1_ci95.map(|i| i.low)),
        ci_column(c, "top1_ci95_high", |s| s.top1_ci95.map(|i| i.high)),
        ci_column(c, "top5_ci95_low", |s| s.top5_ci95.map(|i| i.low)),
        ci_column(c, "top5_ci95_high", |s| s.top5_ci95.map(|i| i.high)),
        Column::new(
            "samples".into(),
            c.iter()
                .map(|r| opt_u64(r, |s| s.samples))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "bad_samples".into(),
            c.iter()
                .map(|r| opt_u64(r, |s| s.bad_samples))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "failed_samples".into(),
            c.iter()
                .map(|r| opt_u64(r, |s| s.failed_samples))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "throughput".into(),
            c.iter()
                .map(|r| opt_f64(r, |s| Some(s.throughput)))
                .collect::<Vec<_>>(),
        ),
        Column::new("run_dir".into(), s(&|r| r.dir.display().to_string())),
        Column::new(
            "error".into(),
            c.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
        ),
    ])
}

/// The Markdown table: one row per cell, accuracies in percent.
pub fn markdown(o: &SweepOutcome) -> String {
    let mut t = Table::new([
        "model",
        "weights",
        "dataset",
        "resolution",
        "crop",
        "precision",
        "top-1 %",
        "top-1 95% CI",
        "top-5 %",
        "top-5 95% CI",
        "samples",
        "status",
    ]);
    for r in &o.cells {
        let c = &r.cell;
        let num = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
        t.row([
            c.model.clone(),
            c.weights_label.clone(),
            c.dataset.clone(),
            c.resolution.to_string(),
            crop_name(c.crop_mode).to_string(),
            c.precision.as_str().to_string(),
            num(opt_f64(r, |s| s.top1)),
            r.summary
                .as_ref()
                .and_then(|s| s.top1_ci95)
                .map(|i| format!("{:.2}-{:.2}", i.low, i.high))
                .unwrap_or_default(),
            num(opt_f64(r, |s| s.top5)),
            r.summary
                .as_ref()
                .and_then(|s| s.top5_ci95)
                .map(|i| format!("{:.2}-{:.2}", i.low, i.high))
                .unwrap_or_default(),
            opt_u64(r, |s| s.samples)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            r.status.as_str().to_string(),
        ]);
    }
    t.markdown()
}

fn write_tables(o: &SweepOutcome) -> anyhow::Result<()> {
    let mut df = frame(o).map_err(|e| anyhow::anyhow!("cannot build the sweep table: {e}"))?;
    let csv = o.out.join("sweep.csv");
    write_atomic_with(&csv, |f| {
        CsvWriter::new(f)
            .finish(&mut df)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", csv.display()))
    })?;
    let pq = o.out.join("sweep.parquet");
    write_atomic_with(&pq, |f| {
        ParquetWriter::new(f)
            .finish(&mut df)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", pq.display()))
    })?;
    write_atomic(&o.out.join("sweep.md"), markdown(o).as_bytes())?;
    Ok(())
}

/// Millions of parameters of a checkpoint, for the timm-shaped tables; `None` (an empty cell) when
/// it cannot be read, which the cell's own run would already have reported.
fn param_millions(weights: &Path) -> Option<f64> {
    let sd = tresnet_common::checkpoint::load_state_dict(weights).ok()?;
    Some(tresnet_common::checkpoint::parameter_count(&sd) as f64 / 1e6)
}

/// `results-<dataset>.csv` for every dataset of the sweep, from the cells that finished.
fn write_timm_results(o: &SweepOutcome, reference: Option<&str>) -> anyhow::Result<()> {
    let mut params: HashMap<PathBuf, Option<f64>> = HashMap::new();
    let rows: Vec<ResultRow> = o
        .cells
        .iter()
        .filter(|r| r.status != CellStatus::Failed)
        .filter_map(|r| {
            let s = r.summary.as_ref()?;
            let c = &r.cell;
            let param_count = *params
                .entry(c.weights.clone())
                .or_insert_with(|| param_millions(&c.weights));
            Some(ResultRow {
                dataset: c.dataset.clone(),
                model: format!("{}.{}", c.model, c.weights_label),
                top1: s.top1?,
                top5: s.top5?,
                param_count,
                img_size: c.resolution,
                crop_pct: s.job.preprocess.crop_pct,
                crop_mode: crop_name(c.crop_mode).to_string(),
                precision: c.precision.as_str().to_string(),
            })
        })
        .collect();
    for t in results_tables(rows, reference) {
        let path = o.out.join(format!("results-{}.csv", sanitize(&t.dataset)));
        let mut df = t
            .frame()
            .map_err(|e| anyhow::anyhow!("cannot build {}: {e}", path.display()))?;
        write_atomic_with(&path, |f| {
            CsvWriter::new(f)
                .finish(&mut df)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
out = "runs"
resolutions = [64, 96]
crop_modes = ["center", "squish"]
[[model]]
name = "tresnet_m"
weights = ["w/a.pth", { path = "/abs/b.pth", label = "b v2" }]
[[dataset]]
name = "sample"
data = "images"
[run]
batch-size = 4
no-fold-bn = true
memory-format = "channels-last"
worker-arg = ["--x", "--y"]
"#;

    #[test]
    fn cells_are_the_full_matrix_with_deterministic_names() {
        let f: SweepFile = toml::from_str(FILE).unwrap();
        let cells = f.cells(Path::new("/sweeps")).unwrap();
        assert_eq!(cells.len(), 2 * 2 * 2);
        assert_eq!(cells[0].name, "tresnet_m-a-sample-64-center-fp32");
        assert_eq!(cells[0].weights, PathBuf::from("/sweeps/w/a.pth"));
        assert_eq!(cells[0].data, "/sweeps/images");
        assert_eq!(cells[7].name, "tresnet_m-b_v2-sample-96-squish-fp32");
        assert_eq!(cells[7].weights, PathBuf::from("/abs/b.pth"));
        let shared = f.run_args().unwrap();
        assert_eq!(shared.batching.batch_size, 4);
        assert!(shared.model.no_fold_bn);
        assert!(!shared.model.measures_fold_bn());
        assert_eq!(
            shared.model.memory_format,
            tresnet_common::job::MemoryFormat::ChannelsLast
        );
        assert_eq!(shared.worker_arg, ["--x", "--y"]);
        let cfg = cells[0]
            .run_args(Path::new("/o/c"), &shared)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.batching.batch_size, 4);
        assert!(!cfg.model.folds_bn());
        assert_eq!(cfg.preprocess.resolution, 64);
        assert_eq!(cfg.out, PathBuf::from("/o/c"));
    }

    /// A `[run]` table deserialises into the same defaults as a `run` command line that gives only the
    /// matrix's flags, and every job parameter (`dct-scaling`, `max-pixels`, ...) is a key.
    /// A dataset's class subset reaches its cells' `run`: a built-in name as it is, a file relative to
    /// the sweep file's folder.
    #[test]
    fn datasets_carry_their_class_subset_to_the_cells() {
        let text = FILE.replace(
            "data = \"images\"\n",
            "data = \"images\"\nformat = \"imagenet\"\nclass_subset = \"imagenet-r\"\n\
             [[dataset]]\nname = \"mine\"\ndata = \"m\"\nclass_subset = \"subsets/mine.txt\"\n",
        );
        let f: SweepFile = toml::from_str(&text).unwrap();
        let shared = f.run_args().unwrap();
        let cells = f.cells(Path::new("/sweeps")).unwrap();
        let subset_of = |dataset: &str| {
            let cell = cells.iter().find(|c| c.dataset == dataset).unwrap();
            cell.run_args(Path::new("/out"), &shared)
                .unwrap()
                .data
                .class_subset
        };
        assert_eq!(subset_of("sample").as_deref(), Some("imagenet-r"));
        assert_eq!(
            subset_of("mine").as_deref(),
            Some("/sweeps/subsets/mine.txt")
        );
    }

    #[test]
    fn the_run_table_has_the_command_lines_defaults_and_keys() {
        use clap::Parser;
        let f: SweepFile = toml::from_str(&FILE.replace("no-fold-bn = true\n", "")).unwrap();
        let cell = &f.cells(Path::new("/s")).unwrap()[0];
        let from_table = cell
            .run_args(Path::new("/o"), &f.run_args().unwrap())
            .unwrap();
        let argv = [
            "x",
            "run",
            "--model",
            "tresnet_m",
            "--weights",
            "/s/w/a.pth",
            "--data",
            "/s/images",
            "--format",
            "imagefolder",
            "--resolution",
            "64",
            "--crop-mode",
            "center",
            "--precision",
            "fp32",
            "--out",
            "/o",
            "--batch-size",
            "4",
            "--memory-format",
            "channels-last",
            "--worker-arg",
            "--x",
            "--worker-arg",
            "--y",
        ];
        let crate::cli::Command::Run(from_cli) =
            crate::cli::Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("not a run");
        };
        assert_eq!(format!("{from_table:?}"), format!("{from_cli:?}"));

        let f: SweepFile = toml::from_str(&format!(
            "{FILE}dct-scaling = true\nmax-pixels = 1000\ncrop-pct = 1\ntop-k = 3\nstore-retries = 1\n"
        ))
        .unwrap();
        let a = f.run_args().unwrap();
        assert!(a.preprocess.dct_scaling);
        assert_eq!(a.preprocess.max_pixels, 1000);
        assert_eq!(a.preprocess.crop_pct, 1.0);
        assert_eq!(a.outputs.top_k, 3);
        assert_eq!(a.store.store_retries, 1);
    }

    #[test]
    fn unknown_run_keys_and_bad_values_are_refused_by_name() {
        for key in ["bacth-size", "batch_size", "fold-bnn"] {
            let f: SweepFile = toml::from_str(&format!("{FILE}{key} = 4\n")).unwrap();
            let e = format!("{:#}", f.run_args().unwrap_err());
            assert!(e.contains(&format!("{key:?}")), "{key}: {e}");
        }
        for bad in [
            "max-pixels = \"many\"",
            "on-bad-sample = \"maybe\"",
            "top-k = -1",
        ] {
            let f: SweepFile = toml::from_str(&format!("{FILE}{bad}\n")).unwrap();
            let e = format!("{:#}", f.run_args().unwrap_err());
            let key = bad.split(' ').next().unwrap();
            assert!(e.starts_with(&format!("[run] {key}: ")), "{bad}: {e}");
        }
    }

    #[test]
    fn cells_of_one_checkpoint_and_precision_run_back_to_back() {
        let f: SweepFile = toml::from_str(&FILE.replace(
            "crop_modes = [\"center\", \"squish\"]",
            "crop_modes = [\"center\", \"squish\"]\nprecisions = [\"fp32\", \"fp16\"]",
        ))
        .unwrap();
        let cells = f.cells(Path::new("/s")).unwrap();
        assert_eq!(cells.len(), 16);
        let ran: Vec<(String, Precision)> = run_order(&cells, &f.precisions)
            .into_iter()
            .map(|i| (cells[i].weights_label.clone(), cells[i].precision))
            .collect();
        // Four loads in all (two checkpoints × two precisions), each followed by its other cells.
        let loads = 1 + ran.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(loads, 4, "{ran:?}");
        // Within a group, the matrix order.
        let order = run_order(&cells, &f.precisions);
        assert_eq!(
            order[..4]
                .iter()
                .map(|&i| cells[i].name.as_str())
                .collect::<Vec<_>>(),
            [
                "tresnet_m-a-sample-64-center-fp32",
                "tresnet_m-a-sample-64-squish-fp32",
                "tresnet_m-a-sample-96-center-fp32",
                "tresnet_m-a-sample-96-squish-fp32",
            ]
        );
    }

    #[test]
    fn duplicate_cell_names_and_matrix_flags_in_run_are_refused() {
        let dup = FILE.replace(
            r#"{ path = "/abs/b.pth", label = "b v2" }"#,
            r#""other/a.pth""#,
        );
        let f: SweepFile = toml::from_str(&dup).unwrap();
        let e = f.cells(Path::new("/s")).unwrap_err().to_string();
        assert!(e.contains("tresnet_m-a-sample-64-center-fp32"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, format!("{FILE}resolution = 3\n")).unwrap();
        let e = format!("{:#}", SweepFile::read(&p).unwrap_err());
        assert!(e.contains("\"resolution\""), "{e}");
    }

    /// `[run]` keys are `run` flags, so a sweep can resume its cells past a bad journal record too.
    #[test]
    fn the_run_table_can_quarantine_corrupt_journal_records() {
        let on_bad = |extra: &str| {
            let f: SweepFile = toml::from_str(&format!("{FILE}{extra}")).unwrap();
            let args = f.cells(Path::new("/s")).unwrap()[0]
                .run_args(Path::new("/o/c"), &f.run_args().unwrap())
                .unwrap();
            args.into_config().unwrap().on_bad_record
        };
        use crate::journal::OnBadRecord;
        assert_eq!(on_bad(""), OnBadRecord::Refuse);
        assert_eq!(
            on_bad("quarantine-corrupt-journal = true\n"),
            OnBadRecord::Quarantine
        );
        assert_eq!(
            on_bad("quarantine-corrupt-journal = false\n"),
            OnBadRecord::Refuse
        );
    }

    #[test]
    fn example_sweeps_in_ops_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/sweeps");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let f = SweepFile::read(&p).unwrap_or_else(|e| panic!("{e:#}"));
                let cells = f.cells(&dir).unwrap();
                assert!(!cells.is_empty(), "{}", p.display());
                let shared = f.run_args().unwrap();
                for c in &cells {
                    c.run_args(Path::new("/o"), &shared)
                        .and_then(RunArgs::into_config)
                        .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                }
                n += 1;
            }
        }
        assert!(n >= 6, "{n} sweep files in {}", dir.display());
    }
}
