//! Fuzz entry points: one function per parser of untrusted bytes, shared by the libFuzzer targets in
//! `fuzz/` and by `common/formats/tests/fuzz_corpus.rs`, which replays the checked-in corpora on stable.
//! The protocol target is `tresnet_common::fuzzing` (it needs the prost messages); the replay helpers
//! here ([`replay`], [`corpus`]) serve it and the worker's image targets too.
//!
//! Each function takes arbitrary bytes and must return without panicking, hanging or allocating
//! without bound, whatever the bytes; an `Err` from the parser is a normal outcome. Where a parser
//! promises more than "no panic" (a tensor's bytes match its shape, a streamed tar scan equals the
//! one-shot scan, a manifest row stays under its folder), the function asserts it, so a broken
//! promise is a crash the fuzzer reports.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, RawTensor};
use crate::cifar::{self, CifarVariant};
use crate::manifest;
use crate::mat::{MatFile, MatValue};
use crate::npy;
use crate::tar::{self, ShardIndex, TarScanner};

fn check_tensor(name: &str, t: &RawTensor) {
    let expected = t
        .shape
        .iter()
        .try_fold(t.dtype.size_bytes(), |acc, &d| acc.checked_mul(d));
    assert_eq!(
        expected,
        Some(t.data.len()),
        "tensor {name}: {} bytes for shape {:?} of {:?}",
        t.data.len(),
        t.shape,
        t.dtype
    );
}

/// Any checkpoint, dispatched on its leading bytes as `load_state_dict` does (`.pth` zip, legacy
/// pickle stream, safetensors), then the MIIL → timm remap that loading applies.
pub fn checkpoint(data: &[u8]) {
    if let Ok(sd) = checkpoint::load_state_dict_from_bytes(Path::new("fuzz.pth"), data) {
        for (name, t) in &sd {
            check_tensor(name, t);
        }
        let (remapped, _) = checkpoint::to_timm_layout(sd);
        for (name, t) in &remapped {
            check_tensor(name, t);
        }
    }
}

/// The pickle VM alone on one pickle (persistent ids kept opaque), so that the fuzzer does not have to
/// find a zip or the legacy magic first.
pub fn pickle(data: &[u8]) {
    if let Ok(consumed) = checkpoint::fuzz_unpickle(data) {
        assert!(
            consumed <= data.len(),
            "consumed {consumed} of {}",
            data.len()
        );
    }
}

/// A `.safetensors` file, without the sniffing that `checkpoint` does first.
pub fn safetensors(data: &[u8]) {
    if let Ok(sd) = checkpoint::fuzz_safetensors(data) {
        for (name, t) in &sd {
            check_tensor(name, t);
        }
    }
}

fn walk_mat(value: &MatValue) {
    let _ = (
        value.describe(),
        value.numel(),
        value.numbers(),
        value.text(),
    );
    let _ = value.field(0, "class");
    if let Some(cells) = value.cells() {
        for cell in cells.iter().take(64) {
            walk_mat(cell);
        }
    }
    if let MatValue::Struct { values, .. } = value {
        for v in values.iter().take(64) {
            walk_mat(v);
        }
    }
}

/// A MATLAB v5 `.mat` file, then every accessor the Flowers/Cars readers use on what it holds.
pub fn mat(data: &[u8]) {
    if let Ok(file) = MatFile::parse(data) {
        for (name, value) in &file.variables {
            walk_mat(value);
            let _ = file.integers(name);
            let _ = file.require(name);
        }
    }
}

/// A tar shard: the one-shot scan, the same scan fed in two pieces (split where the first byte says)
/// which must agree, and the WebDataset grouping of the members into samples.
pub fn tar(data: &[u8]) {
    let whole = tar::scan_tar(data, tar::is_cls);
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) * 7 % (data.len() + 1));
    let mut scanner = TarScanner::new(tar::is_cls);
    let pieces = scanner
        .feed(&data[..split])
        .and_then(|()| scanner.feed(&data[split..]))
        .and_then(|()| scanner.finish());
    assert_eq!(whole, pieces, "scan in one piece vs split at {split}");
    if let Ok(members) = whole {
        let index = ShardIndex::from_members(data.len() as u64, &members);
        for s in &index.samples {
            assert!(
                s.offset + s.size <= data.len() as u64,
                "sample {} outside the shard",
                s.key
            );
        }
        // What the packer writes, the lister must read back.
        assert_eq!(ShardIndex::from_json(&index.to_json()).as_ref(), Ok(&index));
    }
}

/// A shard's `.index.json`, as the lister reads it from the store.
pub fn tar_index(data: &[u8]) {
    if let Ok(index) = ShardIndex::from_json(data) {
        for s in &index.samples {
            assert!(
                s.offset
                    .checked_add(s.size)
                    .is_some_and(|e| e <= index.shard_size)
            );
        }
    }
}

/// A CIFAR-10/100 binary batch (as either variant) and a class-names file.
pub fn cifar(data: &[u8]) {
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        if let Ok((records, bad)) = cifar::parse_records(data, variant) {
            assert_eq!(
                (records.len() + bad.len()) as u64 * variant.record_size(),
                data.len() as u64
            );
            for r in &records {
                assert!((r.label as usize) < variant.classes());
                assert!(r.offset + cifar::CIFAR_PIXEL_BYTES <= data.len() as u64);
            }
        }
        let _ = cifar::parse_names(data, variant.classes());
    }
}

/// A float32 `.npy` array (`tresnet-worker infer`'s input).
pub fn npy(data: &[u8]) {
    if let Ok(array) = npy::parse_f32(Path::new("fuzz.npy"), data) {
        assert_eq!(
            array
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d)),
            Some(array.data.len())
        );
    }
}

/// A CSV manifest in folder `sets/mine` of a store; every accepted row's label must have a class name
/// and, unless absolute paths are allowed, its object must lie under the manifest's folder.
pub fn manifest(data: &[u8]) {
    for allow_absolute_paths in [false, true] {
        let base = manifest::Base {
            folder: "sets/mine".into(),
            folder_url: "memory://fuzz/sets/mine".into(),
            root_url: "memory://fuzz".into(),
            allow_absolute_paths,
        };
        if let Ok((names, rows)) = manifest::parse_csv(&base, data) {
            assert!(rows.iter().all(|r| (r.label as usize) < names.len()));
            if !allow_absolute_paths {
                // Confined: every row lies under the manifest's folder, with no `.`/`..` segment.
                for r in &rows {
                    let rest = r.object.strip_prefix("sets/mine/");
                    assert!(
                        rest.is_some_and(|rest| rest
                            .split('/')
                            .all(|s| !s.is_empty() && s != "." && s != "..")),
                        "row {r:?} escapes the folder"
                    );
                }
            }
        }
    }
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// The workspace's `fuzz/` folder: targets, checked-in seeds and crash regressions.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/<kind>/<target>/` (`kind`: `seeds` or `regressions`), sorted; none if the
/// folder does not exist.
pub fn corpus(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `body` over every seed and regression of `target` on stable (the corpus replay of the test
/// suites); panics naming the input that made it panic, or when the target has no seeds.
pub fn replay(target: &str, body: Target) {
    let seeds = corpus("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no seeds");
    for (path, bytes) in seeds.iter().chain(&corpus("regressions", target)) {
        // A panic names the input, so a failing regression is found without a debugger.
        let outcome = std::panic::catch_unwind(|| body(bytes));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
    }
}

/// Every entry point by target name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("checkpoint", checkpoint),
    ("pickle", pickle),
    ("safetensors", safetensors),
    ("mat", mat),
    ("tar", tar),
    ("tar_index", tar_index),
    ("cifar", cifar),
    ("npy", npy),
    ("manifest", manifest),
];
