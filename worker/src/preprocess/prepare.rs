//! One leased sample to the pixels a batch carries: fetched, then decoded on the CPU pool by this
//! thread's reusable preprocessor (or, for CIFAR records, laid out from the raw planes).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tresnet_common::dataset::{Sample, SampleSource};
use tresnet_common::job::JobSpec;
use tresnet_common::preprocess::PreprocessConfig;

use super::decode::RgbImage;
use super::{PreprocessError, PreprocessedImage, Preprocessor, crop};
use crate::fault::{EnvironmentFault, Fault, SampleFault};
use crate::fetch::Fetcher;
use crate::metrics::{Stage, WorkerMetrics};
use crate::stages::StageClock;

/// Fetches and preprocesses one sample of `job`, decoding under a permit of `decode` (the CPU pool's
/// size); a failure says whose fault it is, and is never a crash.
pub(crate) async fn prepare(
    s: &Sample,
    job: &JobSpec,
    fetcher: &Fetcher,
    decode: &Arc<Semaphore>,
    metrics: &WorkerMetrics,
    clock: &Arc<StageClock>,
) -> Result<PreprocessedImage, Fault> {
    let side = job.preprocess.resolution;
    if job.model.synthetic {
        // Benchmark mode: no fetch, no decode; the executor ignores the pixels.
        return Ok(PreprocessedImage {
            width: side,
            height: side,
            data: Vec::new(),
        });
    }
    let fetch_start = std::time::Instant::now();
    let bytes = fetcher.fetch(s).await?;
    metrics.observe(Stage::Fetch, fetch_start.elapsed());
    clock.fetch(fetch_start.elapsed());
    if let Some(pack) = &job.data.decoded {
        // A decoded pack's member already is the pixels: no decode permit, no decode time.
        return decoded_image(Vec::from(bytes), pack.pixels.resolution).map_err(Fault::from);
    }
    let metrics = metrics.clone();
    let clock = clock.clone();
    let permit = decode
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| EnvironmentFault::Task(e.to_string()))?;
    let cfg = job.preprocess.clone();
    let cifar = matches!(s.source, SampleSource::CifarRecord { .. });
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let decode_start = std::time::Instant::now();
        let r = if cifar {
            cifar_image(&bytes, &cfg).map_err(Fault::from)
        } else {
            with_preprocessor(&cfg, |p| p.run(&bytes)).map_err(Fault::from)
        };
        metrics.observe(Stage::Decode, decode_start.elapsed());
        clock.decode(decode_start.elapsed());
        r
    })
    .await
    // A panic in the decoder is a bug of ours, not a property of the image to be counted against it.
    .map_err(|e| EnvironmentFault::Task(e.to_string()))?
}

thread_local! {
    /// One decoder per CPU thread: the libjpeg-turbo handle is reused across images.
    static PREPROCESSOR: std::cell::RefCell<Option<Preprocessor>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's preprocessor, (re)built when the job's settings differ from its own.
fn with_preprocessor<T>(
    cfg: &PreprocessConfig,
    f: impl FnOnce(&mut Preprocessor) -> Result<T, PreprocessError>,
) -> Result<T, PreprocessError> {
    PREPROCESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|p| p.config() != cfg) {
            *slot = Some(Preprocessor::new(cfg.clone())?);
        }
        f(slot.as_mut().expect("set above"))
    })
}

/// A decoded pack's member as the image it holds, when it has the size of one.
fn decoded_image(data: Vec<u8>, side: u32) -> Result<PreprocessedImage, SampleFault> {
    let expected = 3 * (side as usize) * (side as usize);
    if data.len() != expected {
        return Err(SampleFault::DecodedSize {
            got: data.len(),
            expected,
            side,
        });
    }
    Ok(PreprocessedImage {
        width: side,
        height: side,
        data,
    })
}

/// A raw CIFAR record (R, G, B planes of 32×32) through the same resize and crop as a decoded image,
/// which is what timm does to the PIL image torchvision's CIFAR dataset yields.
fn cifar_image(bytes: &[u8], cfg: &PreprocessConfig) -> Result<PreprocessedImage, SampleFault> {
    const SIDE: usize = 32;
    if bytes.len() != 3 * SIDE * SIDE {
        return Err(SampleFault::CifarRecord {
            got: bytes.len(),
            expected: 3 * SIDE * SIDE,
        });
    }
    let plane = SIDE * SIDE;
    let data = (0..plane)
        .flat_map(|p| [bytes[p], bytes[plane + p], bytes[2 * plane + p]])
        .collect();
    let img = RgbImage {
        width: SIDE as u32,
        height: SIDE as u32,
        data,
    };
    let target = cfg.resize_target(SIDE as u32, SIDE as u32);
    let window = cfg.crop_window(target.0, target.1);
    Ok(crop::resize_and_crop(&img, target, window))
}
