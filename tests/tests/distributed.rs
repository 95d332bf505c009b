//! The real binaries on loopback: a clean multi-worker run agrees with `tresnet-worker infer`; workers
//! killed while the coordinator says they hold a lease or are halfway through a Submit stream, frozen
//! past their lease, or slow change nothing in the report; a wrong protocol version is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tresnet_common::npy;
use tresnet_tests::{
    BATCH_DELAY_ENV, Watched, assert_same_report, bin, coordinator_run, http_get, kill_run_midway,
    predictions, run_ok, sample_dataset_size, send_signal, spawn_listening, summary,
    worker_command,
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

/// Shards of 4 samples in batches of 2 for the fault cases below: a Submit stream carries two
/// batches, so it can be cut between them.
const FAULT_SHARDING: [&str; 4] = ["--shard-size", "4", "--batch-size", "2"];
/// Lease timeout of the fault cases: a killed or frozen worker's shard comes back within it; long
/// enough for a live worker's heartbeats (every third of it) on a loaded machine.
const LEASE_TIMEOUT_MS: u64 = 2000;
/// Bound on anything that involves a whole run on a loaded 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// A victim's delay per batch: its shard (two batches) stays in its hands for seconds, so a signal
/// sent on the coordinator's word that it holds the lease lands while it does.
const VICTIM_BATCH_DELAY_MS: u64 = 1500;

/// A clean run (one local worker) of the job the fault cases run: the report each must equal.
fn fault_clean_run(dir: &Path) -> std::path::PathBuf {
    let clean = dir.join("clean");
    let mut args = vec!["--local-workers", "1"];
    args.extend(FAULT_SHARDING);
    run_ok(coordinator_run(&clean, &args));
    clean
}

/// A coordinator for remote workers only (none local, no speculation, so that every duplicate is a
/// late result), logging the leases it grants and the Submit batches it receives; with its address.
fn coordinator_for_remote_workers(run: &Path, extra: &[&str]) -> (Watched, String) {
    let timeout = LEASE_TIMEOUT_MS.to_string();
    let mut args = vec![
        "--local-workers",
        "0",
        "--no-speculation",
        "--lease-timeout-ms",
        &timeout,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(FAULT_SHARDING);
    args.extend(extra);
    spawn_logging_leases(coordinator_run(run, &args))
}

/// Starts `cmd` (a `run` listening for remote workers) with the service's debug lines on (the leases
/// it grants, the Submit batches it receives: the evidence these tests wait for); returns it and the
/// address it listens on.
fn spawn_logging_leases(mut cmd: std::process::Command) -> (Watched, String) {
    cmd.env("RUST_LOG", "warn,tresnet_coordinator::service=debug")
        .env("NO_COLOR", "1");
    let coord = Watched::spawn(cmd, "coordinator");
    let addr = coord
        .wait_for("coordinator listening on ")
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string();
    (coord, addr)
}

/// A remote worker `id` of the coordinator at `addr`, sleeping `delay_ms` per batch.
fn remote_worker(addr: &str, id: &str, delay_ms: u64) -> Watched {
    let mut cmd = worker_command(&format!("http://{addr}"));
    cmd.args(["--worker-id", id])
        .env(BATCH_DELAY_ENV, delay_ms.to_string());
    Watched::spawn(cmd, id)
}

/// The value of `field=` in a log line of the coordinator (`tracing`'s `key=value` fields).
fn log_field(line: &str, field: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Waits for the coordinator's debug line `message` about worker `id` that `accept` takes, failing if
/// the coordinator exits first; returns that line.
fn wait_for_coordinator_line(
    coord: &mut Watched,
    message: &str,
    id: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    let worker = format!("worker={id} ");
    let mut found = None;
    tresnet_tests::wait_until(RUN_LIMIT, &format!("{message} for worker {id}"), || {
        assert!(
            coord.child.try_wait().unwrap().is_none(),
            "the run ended before {message} for worker {id}"
        );
        found = coord
            .stderr_so_far()
            .lines()
            .find(|l| l.contains(message) && l.contains(&worker) && accept(l))
            .map(str::to_string);
        found.is_some()
    });
    found.unwrap()
}

/// Shard id -> the worker whose result the journal of `run` recorded.
fn recorded_by(run: &Path) -> BTreeMap<u64, String> {
    tresnet_tests::journal_records(&run.join("journal"))
        .iter()
        .map(|p| {
            let r = tresnet_tests::read_journal_record(p).unwrap();
            (r.shard_id, r.worker_id)
        })
        .collect()
}

/// The end of every fault case: a successful run with the clean report, retried work, and shard
/// `shard` (which `victim` held when it was killed or frozen) recorded from another worker; a killed
/// (not `resumed`) victim has no result recorded at all.
fn assert_recovered(
    coord: &mut Watched,
    clean: &Path,
    run: &Path,
    (victim, resumed): (&str, bool),
    shard: u64,
) -> serde_json::Value {
    let status = coord.wait_exit(RUN_LIMIT);
    assert!(status.success(), "coordinator exited with {status}");
    let s = summary(run);
    assert_eq!(s["samples"], sample_dataset_size(), "{s}");
    let sched = &s["scheduling"];
    assert!(sched["retries"].as_u64().unwrap() > 0, "no retry: {sched}");
    assert!(
        sched["lease_expiries"].as_u64().unwrap() > 0,
        "no expiry: {sched}"
    );
    let by = recorded_by(run);
    assert!(
        by.get(&shard).is_some_and(|w| w != victim),
        "shard {shard} was recorded from {:?}",
        by.get(&shard)
    );
    assert!(
        resumed || by.values().all(|w| w != victim),
        "a result of {victim} was recorded: {by:?}"
    );
    assert_same_report(clean, run, victim);
    sched.clone()
}

/// SIGKILLs the worker "victim" once the coordinator logs `message` about it and `accept` holds for
/// the line (evidence that it is mid-work, not a timer), then lets a healthy worker take over: the
/// report is the clean one and the killed worker's shard was retried.
fn kill_victim_on(message: &str, accept: impl Fn(&str) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let clean = fault_clean_run(dir.path());
    let run = dir.path().join("run");
    let (mut coord, addr) = coordinator_for_remote_workers(&run, &[]);
    let mut victim = remote_worker(&addr, "victim", VICTIM_BATCH_DELAY_MS);
    let line = wait_for_coordinator_line(&mut coord, message, "victim", accept);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let shard = log_field(&line, "shard").unwrap_or_else(|| panic!("no shard in {line:?}"));
    let _healthy = remote_worker(&addr, "healthy", 0);
    assert_recovered(&mut coord, &clean, &run, ("victim", false), shard);
}

/// SIGKILL a worker once the coordinator has granted it a lease (its log says so), not on a timer:
/// the lease expires, the shard is retried on another worker, the report is the clean one.
#[test]
fn a_worker_killed_while_holding_a_lease_changes_nothing() {
    kill_victim_on("lease granted", |_| true);
}

/// SIGKILL a worker after the coordinator has received the first of its shard's two result batches:
/// the partial Submit stream is never counted, the shard is retried whole elsewhere.
#[test]
fn a_worker_killed_in_the_middle_of_a_submit_stream_is_never_counted() {
    kill_victim_on(
        "submit batch received",
        |l| matches!((log_field(l, "received"), log_field(l, "expected")), (Some(r), Some(e)) if r < e),
    );
}

/// SIGSTOP a worker holding a lease until past `--lease-timeout-ms`, let another worker record its
/// shard, then SIGCONT it while the run goes on: its late work is dropped and counted
/// (`late_leases_cancelled`, or `duplicates_dropped` if its result arrives first), the report is the
/// clean one.
#[test]
fn a_worker_frozen_past_its_lease_has_its_late_result_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clean = fault_clean_run(dir.path());
    let run = dir.path().join("run");
    let (mut coord, addr) = coordinator_for_remote_workers(&run, &[]);
    let frozen = remote_worker(&addr, "frozen", VICTIM_BATCH_DELAY_MS);
    let line = wait_for_coordinator_line(&mut coord, "lease granted", "frozen", |_| true);
    send_signal(frozen.child.id(), "STOP");
    let shard = log_field(&line, "shard").unwrap_or_else(|| panic!("no shard in {line:?}"));
    // Expiry is decided when a worker next calls; nobody else calls before the other worker joins, so
    // waiting out the timeout first makes its very first lease request requeue the frozen shard.
    std::thread::sleep(Duration::from_millis(LEASE_TIMEOUT_MS + 500));
    // Slow enough that the run is still going when the frozen worker resumes (five more shards).
    let _other = remote_worker(&addr, "other", 400);
    tresnet_tests::wait_until(
        RUN_LIMIT,
        "the frozen shard recorded by another worker",
        || {
            assert!(
                coord.child.try_wait().unwrap().is_none(),
                "the run ended before the frozen shard was recorded elsewhere"
            );
            recorded_by(&run).contains_key(&shard)
        },
    );
    assert!(
        coord.child.try_wait().unwrap().is_none(),
        "the run ended before the frozen worker could resume"
    );
    send_signal(frozen.child.id(), "CONT");
    let sched = assert_recovered(&mut coord, &clean, &run, ("frozen", true), shard);
    let late = sched["late_leases_cancelled"].as_u64().unwrap()
        + sched["duplicates_dropped"].as_u64().unwrap();
    assert!(late > 0, "the late work was not counted: {sched}");
    drop(frozen);
}

/// A worker sleeping 1.5 s per batch next to two fast ones: it holds leases (the coordinator says
/// so), yet the fast workers each record more shards than it does and the report is complete.
#[test]
fn a_slow_worker_is_absorbed_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (mut coord, addr) = spawn_logging_leases(coordinator_run(
        &run,
        &[
            "--local-workers",
            "0",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
            "--listen",
            "127.0.0.1:0",
        ],
    ));
    // The slow worker first, and the fast ones only once it holds a lease: a slow worker that never
    // joined would make this test pass vacuously.
    let _slow = remote_worker(&addr, "slow", 1500);
    wait_for_coordinator_line(&mut coord, "lease granted", "slow", |_| true);
    let _fast: Vec<Watched> = ["fast-a", "fast-b"]
        .iter()
        .map(|id| remote_worker(&addr, id, 0))
        .collect();
    let status = coord.wait_exit(RUN_LIMIT);
    assert!(status.success(), "coordinator exited with {status}");
    let s = summary(&run);
    assert_eq!(s["samples"], sample_dataset_size());
    // Who produced each accepted shard: the journal records it.
    let mut by_worker: BTreeMap<String, u32> = BTreeMap::new();
    for w in recorded_by(&run).into_values() {
        *by_worker.entry(w).or_default() += 1;
    }
    let slow_shards = by_worker.get("slow").copied().unwrap_or(0);
    // Every fast worker that recorded anything did more than the slow one (on a loaded machine one of
    // them may load its model only after the other has taken every shard).
    let fast: Vec<u32> = by_worker
        .iter()
        .filter(|(k, _)| k.starts_with("fast-"))
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !fast.is_empty() && fast.iter().all(|&f| f > slow_shards),
        "shards per worker: {by_worker:?}"
    );
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
    ];
    let mut child = coordinator_run(&run, &args)
        .env(BATCH_DELAY_ENV, "150")
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
    let mut cmd = coordinator_run(&run, &["--local-workers", "1", "--shard-size", "6"]);
    cmd.env(BATCH_DELAY_ENV, "100");
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
    let mut cmd = worker_command(&format!("http://{addr}"));
    cmd.args(["--worker-id", "drained", "--metrics-listen", "127.0.0.1:0"])
        .env(BATCH_DELAY_ENV, "400");
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
