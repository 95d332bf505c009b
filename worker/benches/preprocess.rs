//! Single-thread throughput of decode + resize + crop on ImageNet-like 500x375 quality-90 JPEGs.
//!
//! The images are the `bench/` set of the preprocessing fixtures (ops/reference/gen_preprocess_fixtures.py),
//! the same files ops/bench/preprocess_vs_pillow.py feeds to Pillow + timm; that script runs this bench and
//! prints the ratio. One iteration processes every image once, so criterion's elements/s is images/s.
//! Under `cargo test` criterion runs each benchmark once, as a smoke test.
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

fn bench_images() -> Vec<Vec<u8>> {
    let dir = std::env::var_os("TRESNET_PREPROCESS_FIXTURES")
        .map(PathBuf::from)
        .expect(
            "TRESNET_PREPROCESS_FIXTURES is not set: source ops/env.sh and ops/fixtures.sh first",
        )
        .join("bench");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no JPEGs in {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
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

criterion_group!(benches, preprocess);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = preprocess_cpu_time
}
criterion_main!(benches, cpu_time);
