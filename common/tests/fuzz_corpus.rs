//! Replays the protocol fuzz target's body (`tresnet_common::fuzzing::protocol`) over its seeds and
//! regressions on stable, and (with `TRESNET_WRITE_PROTOCOL_SEEDS=1`) writes those seeds. The parser
//! targets are replayed by `common/formats/tests/fuzz_corpus.rs`.

use prost::Message;
use tresnet_common::fuzzing::{fuzz_dir, replay};
use tresnet_common::job::SaveLogits;
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_common::protocol::pb;

#[test]
fn the_protocol_target_runs_over_its_seeds_and_regressions() {
    replay("protocol", tresnet_common::fuzzing::protocol);
}

#[test]
fn the_fuzz_crate_builds_the_protocol_target_with_its_feature() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let target = manifest
        .split("[[bin]]")
        .find(|bin| bin.contains("name = \"protocol\""))
        .expect("fuzz/Cargo.toml has no [[bin]] protocol");
    assert!(
        target.contains("required-features = [\"protocol\"]"),
        "the protocol target must need the fuzz crate's `protocol` feature: {target}"
    );
    let source = std::fs::read_to_string(fuzz_dir().join("fuzz_targets/protocol.rs")).unwrap();
    assert!(source.contains("tresnet_common::fuzzing::protocol(data)"));
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
