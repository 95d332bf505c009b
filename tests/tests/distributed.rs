//! The real binaries on loopback: a clean multi-worker run agrees with `tresnet-worker infer`, killed
//! and slow workers change nothing in the report, and a wrong protocol version is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tresnet_common::npy;
use tresnet_tests::{
    Watched, assert_same_report, bin, children_of, coordinator_run, http_get, kill_run_midway,
    predictions, run_ok, sample_dataset_size, spawn_listening, summary,
};

/// Per sample key: (index, top-k classes, top-k logits), from predictions.parquet.
#[test]
fn clean_run_matches_single_process_infer() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = run_ok(coordinator_run(
        &run,
        &[
            "--local-workers",
            "3",
            "--shard-size",
            "3",
            "--batch-size",
            "2",
        ],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("top-1") && stdout.contains("summary.json"),
        "{stdout}"
    );
    let s = summary(&run);
    let n = sample_dataset_size();
    assert_eq!(s["samples"], n, "{s}");
    assert_eq!(s["bad_samples"], 0);
    assert_eq!(s["failed_samples"], 0);
    let preds = predictions(&run);
    assert_eq!(preds.len() as u64, n);

    // The same images through the single-process tools: preprocess each, stack, infer.
    let images = tresnet_tests::sample_images();
    let mut stacked = Vec::new();
    let keys: Vec<&String> = preds.keys().collect();
    for (i, key) in keys.iter().enumerate() {
        let x = dir.path().join(format!("x{i}.npy"));
        let st = Command::new(bin("tresnet-worker"))
            .args(["preprocess", "--resolution", "64", "--image"])
            .arg(images.join(key))
            .arg("--output")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        stacked.extend(npy::read_f32(&x).unwrap().data);
    }
    let batch = dir.path().join("batch.npy");
    npy::write_f32(&batch, &[keys.len(), 3, 64, 64], &stacked).unwrap();
    let logits = dir.path().join("logits.npy");
    let st = Command::new(bin("tresnet-worker"))
        .args(["infer", "--model", "tresnet_m", "--weights"])
        .arg(tresnet_tests::tresnet_m_weights())
        .arg("--input")
        .arg(&batch)
        .arg("--output")
        .arg(&logits)
        .status()
        .unwrap();
    assert!(st.success());
    let l = npy::read_f32(&logits).unwrap();
    let classes = l.shape[1];
    for (i, key) in keys.iter().enumerate() {
        let row = &l.data[i * classes..(i + 1) * classes];
        let mut order: Vec<u32> = (0..classes as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        let (_, got_idx, got_logits) = &preds[*key];
        assert_eq!(
            got_idx,
            &order[..5].to_vec(),
            "{key}: top-5 differs from infer"
        );
        for (g, c) in got_logits.iter().zip(&order[..5]) {
            assert!(
                (g - row[*c as usize]).abs() <= 1e-4,
                "{key}: logit {g} vs {}",
                row[*c as usize]
            );
        }
    }
}

/// `--gather-logits`: each shard's logits stay on the two executors' devices and are gathered to the
/// first one for a single copy and scoring pass; the report, full logits included, must not change.
#[test]
fn gathering_logits_to_the_leading_executor_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "--shard-size",
        "4",
        "--batch-size",
        "2",
        "--save-logits",
        "fp32",
    ];
    let clean = dir.path().join("clean");
    run_ok(coordinator_run(&clean, &common));
    let gathered = dir.path().join("gathered");
    let mut args = common.to_vec();
    args.extend([
        "--local-workers",
        "2",
        "--devices",
        "cpu,cpu",
        "--worker-arg=--gather-logits",
    ]);
    let mut cmd = coordinator_run(&gathered, &args);
    cmd.env("RUST_LOG", "warn,tresnet_worker=info");
    let out = run_ok(cmd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("gathered to the first executor"),
        "the workers did not take the gather path:\n{log}"
    );
    assert_same_report(&clean, &gathered, "gathered logits");
    assert_eq!(
        std::fs::read(clean.join("logits.npy")).unwrap(),
        std::fs::read(gathered.join("logits.npy")).unwrap()
    );
}

#[test]
fn killed_workers_change_nothing_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    run_ok(coordinator_run(
        &clean,
        &[
            "--local-workers",
            "2",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
        ],
    ));
    for round in 0..2u64 {
        let run = dir.path().join(format!("killed{round}"));
        let mut cmd = coordinator_run(
            &run,
            &[
                "--local-workers",
                "3",
                "--shard-size",
                "2",
                "--batch-size",
                "2",
                "--worker-arg=--debug-batch-delay-ms=40",
            ],
        );
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut killed = 0;
        // Kill up to two of the three workers at seeded, varying moments while the run is going.
        let mut delay = 300 + 150 * round;
        while killed < 2 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(delay));
            delay = 200 + (delay * 7919) % 400;
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if let Some(&victim) = children_of(child.id()).get(killed) {
                let _ = Command::new("kill")
                    .args(["-9", &victim.to_string()])
                    .status();
                killed += 1;
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            killed >= 1,
            "round {round}: the run ended before any worker could be killed"
        );
        assert_same_report(&clean, &run, &format!("round {round}, {killed} kills"));
    }
}

#[test]
fn a_slow_worker_is_absorbed_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cmd = coordinator_run(
        &run,
        &[
            "--local-workers",
            "2",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
        ],
    );
    cmd.env("RUST_LOG", "warn");
    let (mut coord, addr) = spawn_listening(cmd);
    let mut slow = Command::new(bin("tresnet-worker"))
        .args([
            "--coordinator",
            &format!("http://{addr}"),
            "--worker-id",
            "slow",
            "--threads",
            "1",
        ])
        .args(["--debug-batch-delay-ms", "1500"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let status = coord.wait().unwrap();
    assert!(status.success());
    let _ = slow.wait();
    let s = summary(&run);
    assert_eq!(s["samples"], sample_dataset_size());
    // Who produced each accepted shard: the journal records it.
    let mut by_worker: BTreeMap<String, u32> = BTreeMap::new();
    for e in std::fs::read_dir(run.join("journal")).unwrap().flatten() {
        // The journal also holds job.json; shard records are the .pb files.
        if e.path().extension().is_none_or(|x| x != "pb") {
            continue;
        }
        // Each record is a ShardRecord sealed in a JournalRecord envelope.
        let bytes = std::fs::read(e.path()).unwrap();
        let sealed =
            <tresnet_common::protocol::pb::JournalRecord as prost_decode::Message>::decode(
                bytes.as_slice(),
            )
            .unwrap();
        let rec = <tresnet_common::protocol::pb::ShardRecord as prost_decode::Message>::decode(
            sealed.payload.as_slice(),
        )
        .unwrap();
        *by_worker.entry(rec.worker_id).or_default() += 1;
    }
    let slow_shards = by_worker.get("slow").copied().unwrap_or(0);
    let fast: Vec<u32> = by_worker
        .iter()
        .filter(|(k, _)| *k != "slow")
        .map(|(_, v)| *v)
        .collect();
    assert!(
        fast.iter().all(|&f| f > slow_shards),
        "shards per worker: {by_worker:?}"
    );
}

mod prost_decode {
    pub use prost::Message;
}

#[test]
fn wrong_protocol_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = coordinator_run(&dir.path().join("run"), &["--local-workers", "0"]);
    cmd.env("RUST_LOG", "warn");
    let (mut coord, addr) = spawn_listening(cmd);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        use tresnet_common::protocol::pb;
        let mut c = pb::coordinator_client::CoordinatorClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.register(pb::RegisterRequest {
            protocol_version: tresnet_common::protocol::PROTOCOL_VERSION + 1,
            worker_id: "old-worker".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
    });
    let _ = coord.kill();
    let _ = coord.wait();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let v = tresnet_common::protocol::PROTOCOL_VERSION;
    let msg = status.message();
    assert!(
        msg.contains(&format!("worker speaks {}", v + 1))
            && msg.contains(&format!("coordinator speaks {v}")),
        "{msg}"
    );
}

/// `pack` then evaluate the tar shards (ranged reads): the same pixels, so the same predictions.
#[test]
fn packed_tar_shards_give_the_same_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    let out = Command::new(bin("tresnet-coordinator"))
        .args([
            "pack",
            "--format",
            "imagefolder",
            "--shard-size",
            "200KiB",
            "--data",
        ])
        .arg(tresnet_tests::sample_images())
        .arg("--out")
        .arg(&shards)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("packed 24 samples"));
    let folder = dir.path().join("folder");
    run_ok(coordinator_run(
        &folder,
        &["--local-workers", "1", "--shard-size", "6"],
    ));
    let tar = dir.path().join("tar");
    run_ok(tresnet_tests::coordinator_run_on(
        &shards,
        "tar",
        &tar,
        &["--local-workers", "1", "--shard-size", "6"],
    ));
    let sorted = |p: &Path| {
        let mut v: Vec<(Vec<u32>, Vec<u32>)> = predictions(p)
            .into_values()
            .map(|(_, c, l)| (c, l.iter().map(|x| x.to_bits()).collect()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&folder), sorted(&tar));
    assert_eq!(summary(&folder)["samples"], summary(&tar)["samples"]);
}

/// SIGKILL the coordinator mid-run, restart it on the same run directory: finished shards are not
/// recomputed and the reports equal a clean run's.
#[test]
fn coordinator_killed_and_restarted_resumes_to_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    run_ok(coordinator_run(
        &clean,
        &[
            "--local-workers",
            "2",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
        ],
    ));
    let run = dir.path().join("resumed");
    let args = [
        "--local-workers",
        "2",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--worker-arg=--debug-batch-delay-ms=150",
    ];
    let mut child = coordinator_run(&run, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = run.join("journal");
    let done_before = kill_run_midway(&mut child, 3, || {
        std::fs::read_dir(&journal)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pb"))
                    .count()
            })
            .unwrap_or(0)
    });
    assert!(!run.join("summary.json").exists());
    let records_before: Vec<_> = std::fs::read_dir(&journal)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    run_ok(coordinator_run(
        &run,
        &[
            "--local-workers",
            "2",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
        ],
    ));
    // Shards journaled before the kill were kept as they were, not recomputed.
    for (p, bytes) in records_before {
        if p.extension().is_some_and(|x| x == "pb") {
            assert_eq!(
                std::fs::read(&p).unwrap(),
                bytes,
                "{} was rewritten",
                p.display()
            );
        }
    }
    assert!(done_before >= 3);
    assert_same_report(&clean, &run, "after resume");
    // A different job on the same directory is refused, naming what differs.
    let out = coordinator_run(&run, &["--local-workers", "1", "--top-k", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("different job") && err.contains("top_k"),
        "{err}"
    );
}

/// With a shared token configured, RPCs without it or with a wrong one are refused as unauthenticated;
/// the right one registers, and local workers (given the token by the coordinator) complete the run.
#[test]
fn token_is_required_on_every_rpc_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "correct-horse-battery\n").unwrap();
    let run = dir.path().join("run");
    let mut cmd = coordinator_run(
        &run,
        &[
            "--local-workers",
            "1",
            "--shard-size",
            "6",
            "--worker-arg=--debug-batch-delay-ms=100",
        ],
    );
    cmd.arg("--token-file").arg(&token_file);
    let (mut coord, addr) = spawn_listening(cmd);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let register = |token: Option<&str>| {
        let addr = addr.clone();
        let token = token.map(str::to_string);
        rt.block_on(async move {
            use tresnet_common::protocol::pb;
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let attach =
                tresnet_common::protocol::auth::AttachToken::new(token.as_deref()).unwrap();
            let mut c =
                pb::coordinator_client::CoordinatorClient::with_interceptor(channel, attach);
            c.register(pb::RegisterRequest {
                protocol_version: tresnet_common::protocol::PROTOCOL_VERSION,
                worker_id: "probe".into(),
                ..Default::default()
            })
            .await
        })
    };
    let none = register(None).unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    assert!(
        none.message().contains("requires a token"),
        "{}",
        none.message()
    );
    let wrong = register(Some("guess")).unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("wrong token"));
    assert!(register(Some("correct-horse-battery")).is_ok());
    assert!(
        coord.wait().unwrap().success(),
        "the tokened run did not complete"
    );
    assert_eq!(summary(&run)["samples"], sample_dataset_size());
}

/// SIGTERM makes a worker finish the batch in hand, hand its leases back and exit 0; the others finish.
#[test]
fn sigterm_drains_a_worker_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cmd = coordinator_run(
        &run,
        &[
            "--local-workers",
            "1",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
        ],
    );
    let (mut coord, addr) = spawn_listening(cmd);
    let mut cmd = Command::new(bin("tresnet-worker"));
    cmd.args([
        "--coordinator",
        &format!("http://{addr}"),
        "--worker-id",
        "drained",
        "--threads",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .args(["--debug-batch-delay-ms", "400"])
    .env_remove("TRESNET_TOKEN")
    .stdin(Stdio::null());
    let mut worker = Watched::spawn(cmd, "drained");
    // Signal only once it is registered with its model loaded (its /readyz), however loaded the
    // machine is, and after it has had time to take leases.
    let metrics = worker.metrics_addr();
    let start = Instant::now();
    while http_get(&metrics, "/readyz").map(|(code, _)| code) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "worker never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = worker.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "drained worker exited with {status}");
    assert!(coord.wait().unwrap().success());
    let s = summary(&run);
    assert_eq!(s["samples"], sample_dataset_size());
    assert_eq!(s["failed_samples"], 0);
}
