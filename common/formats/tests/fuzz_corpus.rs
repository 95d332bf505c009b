//! Replays every parser fuzz target's body (`tresnet_formats::fuzzing`) over its checked-in seed
//! corpus (`fuzz/seeds/<target>/`, written by ops/reference/gen_fuzz_seeds.py) and crash regressions
//! (`fuzz/regressions/<target>/`), so the entry points compile and run on stable CI without nightly.
//! Also checks that the seeds are real inputs the parsers accept, which is what makes them good
//! starting points. The protocol target's replay is `common/tests/fuzz_corpus.rs`.

use std::path::Path;

use tresnet_formats::checkpoint::load_state_dict_from_bytes;
use tresnet_formats::cifar::{CifarVariant, parse_records};
use tresnet_formats::fuzzing::{TARGETS, corpus as inputs, fuzz_dir, replay};
use tresnet_formats::mat::MatFile;
use tresnet_formats::npy::parse_f32;
use tresnet_formats::tar::{ShardIndex, is_cls, scan_tar};

#[test]
fn every_target_runs_over_its_seeds_and_regressions() {
    for (target, body) in TARGETS {
        replay(target, *body);
    }
}

#[test]
fn the_fuzz_crate_has_a_target_for_every_entry_point() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
        let source = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{target}.rs: {e}"));
        assert!(source.contains(&format!("tresnet_formats::fuzzing::{target}(data)")));
    }
}

#[test]
fn seeds_are_inputs_the_parsers_accept() {
    for (path, bytes) in inputs("seeds", "checkpoint") {
        let sd = load_state_dict_from_bytes(&path, &bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!sd.is_empty(), "{}", path.display());
    }
    for (path, bytes) in inputs("seeds", "mat") {
        let file = MatFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!file.variables.is_empty(), "{}", path.display());
    }
    for (path, bytes) in inputs("seeds", "tar") {
        let members =
            scan_tar(&bytes, is_cls).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let index = ShardIndex::from_members(bytes.len() as u64, &members);
        assert_eq!(index.samples.len(), 2, "{}", path.display());
    }
    for (path, bytes) in inputs("seeds", "tar_index") {
        ShardIndex::from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let cifar = |name: &str| std::fs::read(fuzz_dir().join("seeds/cifar").join(name)).unwrap();
    let (ok, bad) = parse_records(&cifar("cifar10_3.bin"), CifarVariant::Cifar10).unwrap();
    assert_eq!((ok.len(), bad.len()), (2, 1));
    let (ok, _) = parse_records(&cifar("cifar100_2.bin"), CifarVariant::Cifar100).unwrap();
    assert_eq!(ok.len(), 2);
    let npy = std::fs::read(fuzz_dir().join("seeds/npy/batch.npy")).unwrap();
    assert_eq!(
        parse_f32(Path::new("batch.npy"), &npy).unwrap().shape,
        [1, 3, 4, 4]
    );
}
