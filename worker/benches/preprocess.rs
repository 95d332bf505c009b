//! Single-thread throughput of decode + resize + crop on ImageNet-like 500x375 quality-90 JPEGs, and on
//! other image kinds (4:4:4, progressive, 2000x1500, PNG).
//!
//! The images are the `bench/` and `bench-kinds/` sets of the preprocessing fixtures
//! (ops/reference/gen_preprocess_fixtures.py), the same files ops/bench/preprocess_vs_pillow.py feeds to
//! Pillow + timm; that script runs this bench and prints the ratios. One iteration processes every image
//! once, so criterion's elements/s is images/s. Under `cargo test` criterion runs each benchmark once, as a
//! smoke test.
//!
//! Besides wall time, the `exact` pipeline is also measured in CPU time of the benchmark thread (group
//! `preprocess_500x375_q90_cpu`): on a shared machine other processes take time slices from the pinned
//! core, which inflates wall time by however busy the machine was at that moment, while the script
//! measures Pillow's CPU time the same way, so that ratio survives a noisy neighbour.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_worker::preprocess::decode::{DecodeOptions, Decoder};
use tresnet_worker::preprocess::resize::ResizeScratch;
use tresnet_worker::preprocess::{Preprocessor, crop};

fn fixtures_dir() -> PathBuf {
    std::env::var_os("TRESNET_PREPROCESS_FIXTURES")
        .map(PathBuf::from)
        .expect(
            "TRESNET_PREPROCESS_FIXTURES is not set: source ops/env.sh and ops/fixtures.sh first",
        )
}

fn images_in(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no images in {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn bench_images() -> Vec<Vec<u8>> {
    images_in(&fixtures_dir().join("bench"))
}

/// Every benchmark image kind as (name, images): `bench/` first under the name the Pillow script uses for
/// it, then each folder of `bench-kinds/`.
fn image_kinds() -> Vec<(String, Vec<Vec<u8>>)> {
    let root = fixtures_dir();
    let mut kinds = vec![("jpeg420_500x375".to_string(), bench_images())];
    let dir = root.join("bench-kinds");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate the fixtures: source ops/fixtures.sh)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let images = images_in(&dir.join(&name));
        kinds.push((name, images));
    }
    kinds
}

/// The pipeline on each image kind, to two outputs: `u8` is what the worker runs (uint8 CHW, the /255 and
/// normalisation happen on the device), `f32` adds ToTensor's /255 on the host. The Pillow script measures
/// Pillow to the same two outputs, so each pair is like for like.
fn preprocess_kinds(c: &mut Criterion) {
    let mut group = c.benchmark_group("preprocess_kinds");
    for (kind, images) in image_kinds() {
        group.throughput(Throughput::Elements(images.len() as u64));
        let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
        group.bench_function(format!("u8/{kind}"), |b| {
            b.iter(|| {
                for img in &images {
                    black_box(p.run(black_box(img)).unwrap());
                }
            })
        });
        group.bench_function(format!("f32/{kind}"), |b| {
            b.iter(|| {
                for img in &images {
                    black_box(p.run(black_box(img)).unwrap().to_f32());
                }
            })
        });
    }
    group.finish();
}

/// The `u8` pipeline of `preprocess_kinds` in CPU time of the benchmark thread (see ThreadCpuTime).
fn preprocess_kinds_cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("preprocess_kinds_cpu");
    for (kind, images) in image_kinds() {
        group.throughput(Throughput::Elements(images.len() as u64));
        let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
        group.bench_function(format!("u8/{kind}"), |b| {
            b.iter(|| {
                for img in &images {
                    black_box(p.run(black_box(img)).unwrap());
                }
            })
        });
    }
    group.finish();
}

fn preprocess(c: &mut Criterion) {
    let images = bench_images();
    let mut group = c.benchmark_group("preprocess_500x375_q90");
    group.throughput(Throughput::Elements(images.len() as u64));
    let variants = [
        // Bit-exact with PIL + timm (the default configuration).
        ("exact", PreprocessConfig::default(), false),
        // The same plus ToTensor's /255 on the host, for a like-for-like comparison with timm's tensor.
        ("exact_f32", PreprocessConfig::default(), true),
        // Opt-in reduced DCT decode: pixels differ from PIL's.
        (
            "dct_scaling",
            PreprocessConfig {
                dct_scaling: true,
                ..PreprocessConfig::default()
            },
            false,
        ),
    ];
    for (name, cfg, f32_out) in variants {
        let mut p = Preprocessor::new(cfg).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                for img in &images {
                    let out = p.run(black_box(img)).unwrap();
                    if f32_out {
                        black_box(out.to_f32());
                    } else {
                        black_box(out);
                    }
                }
            })
        });
    }
    // Where the time goes: libjpeg-turbo alone (the same decoder, and so the same cost, as Pillow's).
    let mut decoder = Decoder::default();
    let opts = DecodeOptions {
        max_pixels: PreprocessConfig::default().max_pixels,
        dct_scaling_target: None,
    };
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            for img in &images {
                let d = decoder.decode(black_box(img), &opts).unwrap();
                decoder.recycle(black_box(d).image.data);
            }
        })
    });
    // And the resampler alone, on the already decoded images.
    let cfg = PreprocessConfig::default();
    let decoded: Vec<_> = images
        .iter()
        .map(|img| decoder.decode(img, &opts).unwrap().image)
        .collect();
    let mut scratch = ResizeScratch::default();
    group.bench_function("resize_crop_only", |b| {
        b.iter(|| {
            for img in &decoded {
                let target = cfg.resize_target(img.width, img.height);
                let window = cfg.crop_window(target.0, target.1);
                black_box(crop::resize_and_crop_with(
                    &mut scratch,
                    black_box(img),
                    target,
                    window,
                ));
            }
        })
    });
    group.finish();
}

/// On-CPU time of the calling thread, from `/proc/thread-self/schedstat` (its first field, in ns). The
/// kernel refreshes it for a running thread at scheduler ticks, so one reading can lag by a tick (a few
/// ms); criterion's samples are tens of ms long and many, so the mean is unaffected.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat (Linux) is needed for the CPU-time benchmark");
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Values are nanoseconds, like wall time; throughput is elements per CPU-second.
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        for v in values.iter_mut() {
            *v /= 1e6;
        }
        "ms (cpu)"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match *t {
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => n,
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
            Throughput::Bits(n) => n,
        } as f64;
        for v in values.iter_mut() {
            *v = n * 1e9 / *v;
        }
        "elem/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn preprocess_cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    let images = bench_images();
    let mut group = c.benchmark_group("preprocess_500x375_q90_cpu");
    group.throughput(Throughput::Elements(images.len() as u64));
    let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
    group.bench_function("exact", |b| {
        b.iter(|| {
            for img in &images {
                black_box(p.run(black_box(img)).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, preprocess, preprocess_kinds);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = preprocess_cpu_time, preprocess_kinds_cpu_time
}
criterion_main!(benches, cpu_time);
