//! Replays every fuzz target's body (`tresnet_common::fuzzing`) over its checked-in seed corpus
//! (`fuzz/seeds/<target>/`, written by ops/reference/gen_fuzz_seeds.py) and crash regressions
//! (`fuzz/regressions/<target>/`), so the entry points compile and run on stable CI without nightly.
//! Also checks that the seeds are real inputs the parsers accept, which is what makes them good
//! starting points, and (with `TRESNET_WRITE_PROTOCOL_SEEDS=1`) writes the protocol target's seeds.

use std::path::Path;

use prost::Message;
use tresnet_common::checkpoint::load_state_dict_from_bytes;
use tresnet_common::dataset::cifar::{CifarVariant, parse_records};
use tresnet_common::dataset::mat::MatFile;
use tresnet_common::dataset::tar::{ShardIndex, is_cls, scan_tar};
use tresnet_common::fuzzing::{TARGETS, corpus as inputs, fuzz_dir, replay};
use tresnet_common::job::SaveLogits;
use tresnet_common::npy::parse_f32;
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_common::protocol::pb;

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
        assert!(source.contains(&format!("tresnet_common::fuzzing::{target}(data)")));
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
    let path = object_store::path::Path::from("c");
    let (ok, bad) =
        parse_records("b", &path, &cifar("cifar10_3.bin"), CifarVariant::Cifar10).unwrap();
    assert_eq!((ok.len(), bad.len()), (2, 1));
    let (ok, _) =
        parse_records("b", &path, &cifar("cifar100_2.bin"), CifarVariant::Cifar100).unwrap();
    assert_eq!(ok.len(), 2);
    let npy = std::fs::read(fuzz_dir().join("seeds/npy/batch.npy")).unwrap();
    assert_eq!(
        parse_f32(Path::new("batch.npy"), &npy).unwrap().shape,
        [1, 3, 4, 4]
    );
}

/// The protocol target's seeds: one valid frame per message kind (first byte = kind, as
/// `fuzzing::protocol` reads it). Checked to convert, and written with TRESNET_WRITE_PROTOCOL_SEEDS=1.
#[test]
fn protocol_seeds() {
    let sample = |index: u64, source| pb::SampleRef {
        index,
        key: format!("n01/{index}.JPEG"),
        label: 7,
        path: format!("val/n01/{index}.JPEG"),
        source: Some(source),
    };
    let samples = vec![
        sample(
            0,
            pb::sample_ref::Source::Whole(pb::Whole { size: Some(1234) }),
        ),
        sample(
            1,
            pb::sample_ref::Source::Range(pb::ByteRange {
                offset: 512,
                length: 99,
            }),
        ),
        sample(
            2,
            pb::sample_ref::Source::Cifar(pb::CifarRecord { offset: 3074 }),
        ),
    ];
    let job = {
        let mut j = tresnet_common::job::example_job();
        j.job_id = tresnet_common::ids::JobId("job-1".into());
        j.model.weights = "s3://w/tresnet_m.pth".into();
        j.model.weights_sha256 = "ab".repeat(32);
        j.model.num_classes = 1000;
        j.model.leaky_slope = Some(0.01);
        j.data.data_url = "s3://data/val".into();
        j.data.dataset_fingerprint = "cd".repeat(32);
        j.preprocess = PreprocessConfig::tresnet(224);
        j.outputs.top_k = 5;
        j.outputs.save_logits = SaveLogits::Fp16;
        j.batching.batch_size = 32;
        pb::JobSpec::from(&j)
    };
    let result = pb::SampleResult {
        index: 1,
        topk_indices: vec![3, 1],
        topk_logits: vec![2.5, 1.0],
        loss: 0.3,
        confidence: 0.7,
        logits: vec![0, 60],
        error: String::new(),
    };
    let frames: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "register_request",
            0,
            pb::RegisterRequest {
                protocol_version: 1,
                worker_id: "w-1".into(),
                hostname: "node".into(),
                devices: vec!["cpu".into(), "cuda:0".into()],
                capacity: 64,
                software: Some(pb::WorkerSoftware {
                    libtorch: "2.11.0+cpu".into(),
                    cuda_available: false,
                    cudnn_available: false,
                    device_names: vec!["cpu".into()],
                }),
                pid: 4242,
            }
            .encode_to_vec(),
        ),
        (
            "register_response",
            1,
            pb::RegisterResponse {
                job: Some(job.clone()),
                heartbeat_interval_ms: 1000,
                lease_timeout_ms: 10000,
            }
            .encode_to_vec(),
        ),
        (
            "lease_request",
            2,
            pb::LeaseRequest {
                worker_id: "w-1".into(),
                max_shards: 2,
                job_id: "job-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "lease_response",
            3,
            pb::LeaseResponse {
                leases: vec![pb::ShardLease {
                    shard_id: 4,
                    lease_id: 9,
                    attempt: 1,
                    samples: samples.clone(),
                }],
                retry_after_ms: 0,
                job_done: false,
            }
            .encode_to_vec(),
        ),
        (
            "heartbeat_request",
            4,
            pb::HeartbeatRequest {
                worker_id: "w-1".into(),
                lease_ids: vec![9, 10],
                samples_done: 77,
                job_id: "job-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "submit_header",
            5,
            pb::SubmitRequest {
                item: Some(pb::submit_request::Item::Header(pb::SubmitHeader {
                    worker_id: "w-1".into(),
                    shard_id: 4,
                    lease_id: 9,
                    job_id: "job-1".into(),
                })),
            }
            .encode_to_vec(),
        ),
        (
            "submit_batch",
            5,
            pb::SubmitRequest {
                item: Some(pb::submit_request::Item::Batch(pb::ResultBatch {
                    results: vec![result.clone()],
                })),
            }
            .encode_to_vec(),
        ),
        (
            "release_request",
            6,
            pb::ReleaseRequest {
                worker_id: "w-1".into(),
                lease_id: 9,
                error: "oom".into(),
                reason: pb::ReleaseReason::Environment.into(),
                store_retries: 3,
                job_id: "job-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "shard_record",
            7,
            pb::ShardRecord {
                shard_id: 4,
                worker_id: "w-1".into(),
                results: vec![result],
                counts: None,
            }
            .encode_to_vec(),
        ),
        ("job_spec", 8, job.encode_to_vec()),
        ("sample_ref", 8, samples[1].encode_to_vec()),
    ];
    tresnet_common::job::JobSpec::try_from(job).expect("the seed job is valid");
    let dir = fuzz_dir().join("seeds/protocol");
    let write = std::env::var_os("TRESNET_WRITE_PROTOCOL_SEEDS").is_some();
    for (name, kind, body) in frames {
        let frame: Vec<u8> = std::iter::once(kind).chain(body).collect();
        tresnet_common::fuzzing::protocol(&frame);
        let path = dir.join(format!("{name}.bin"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &frame).unwrap();
        } else {
            assert!(
                path.exists(),
                "{} is missing; rerun with TRESNET_WRITE_PROTOCOL_SEEDS=1",
                path.display()
            );
        }
    }
}
