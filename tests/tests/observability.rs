//! /healthz, /readyz and /metrics of a real coordinator and worker during a real run: the counters move
//! while it runs, never go back, and end equal to the report.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tresnet_tests::{Watched, coordinator_run_on, http_get, metric, summary, worker_command};

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The sample ImageFolder plus two undecodable images, so that bad samples are counted too.
fn dataset_with_bad_samples(dir: &Path) -> (std::path::PathBuf, u64) {
    let data = dir.join("data");
    copy_tree(&tresnet_tests::sample_images(), &data);
    let class = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let jpeg = std::fs::read_dir(&class)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jpg"))
        .unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(class.join("zz_truncated.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(
        class.join("zz_garbage.jpg"),
        b"\xff\xd8\xffnot a jpeg at all",
    )
    .unwrap();
    let total = tresnet_tests::files_under(&data).len() as u64;
    (data, total)
}

/// Asserts `values` never decrease and took more than two distinct values (the run was seen moving).
fn assert_moved_monotonically(what: &str, values: &[f64]) {
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "{what} went backwards: {values:?}"
    );
    let mut distinct = values.to_vec();
    distinct.dedup();
    assert!(
        distinct.len() > 2,
        "{what} was not seen increasing during the run: {values:?}"
    );
}

#[test]
fn metrics_move_during_a_run_and_end_equal_to_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (data, total) = dataset_with_bad_samples(dir.path());
    let run = dir.path().join("run");
    let mut cmd = coordinator_run_on(
        &data,
        "imagefolder",
        &run,
        &[
            "--local-workers",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--shard-size",
            "2",
            "--batch-size",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
            // Long enough for any scrape; the test ends it with SIGTERM once it has the final values.
            "--metrics-linger-secs",
            "300",
        ],
    );
    cmd.env("RUST_LOG", "warn");
    let mut coord = Watched::spawn(cmd, "coordinator");
    let cm = coord.metrics_addr();
    assert_eq!(http_get(&cm, "/healthz").unwrap().0, 200);
    let grpc = coord.wait_for("coordinator listening on ");
    let grpc = grpc.split(';').next().unwrap().trim().to_string();

    let mut wcmd = worker_command(&format!("http://{grpc}"));
    wcmd.args(["--worker-id", "observed"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        // Slow enough that the run spans many scrapes.
        .env(tresnet_tests::BATCH_DELAY_ENV, "250")
        .env("RUST_LOG", "warn");
    let mut worker = Watched::spawn(wcmd, "worker");
    let wm = worker.metrics_addr();
    assert_eq!(http_get(&wm, "/healthz").unwrap().0, 200);

    let (mut accounted, mut evaluated, mut worker_samples) = (vec![], vec![], vec![]);
    let (mut coord_ready, mut worker_ready) = (false, false);
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the run did not finish"
        );
        let (code, body) = http_get(&cm, "/readyz").expect("coordinator /readyz");
        if code == 503 && body.contains("finished") {
            break;
        }
        if code == 200 {
            coord_ready = true;
        }
        let (code, text) = http_get(&cm, "/metrics").expect("coordinator /metrics");
        assert_eq!(code, 200);
        if let Some(v) = metric(&text, "tresnet_coordinator_samples_accounted_total") {
            accounted.push(v);
            evaluated.push(metric(&text, "tresnet_coordinator_samples_evaluated_total").unwrap());
        }
        // The worker exits once it hears the job is done; until then it answers.
        if let Some((code, _)) = http_get(&wm, "/readyz") {
            worker_ready |= code == 200;
        }
        if let Some((200, text)) = http_get(&wm, "/metrics")
            && let Some(v) = metric(&text, "tresnet_worker_samples_total{device=\"cpu\"}")
        {
            worker_samples.push(v);
            for stage in ["fetch", "decode", "forward", "submit"] {
                let n = metric(
                    &text,
                    &format!("tresnet_worker_stage_seconds_count{{stage=\"{stage}\"}}"),
                );
                // Every stage has run by the time a second shard has been submitted.
                if metric(&text, "tresnet_worker_shards_submitted_total").unwrap_or(0.0) >= 2.0 {
                    assert!(
                        n.unwrap_or(0.0) > 0.0,
                        "stage {stage} never observed:\n{text}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(coord_ready, "coordinator /readyz never answered 200");
    assert!(worker_ready, "worker /readyz never answered 200");

    // Final values: the reports are written and the listener lingers.
    let (_, text) = http_get(&cm, "/metrics").unwrap();
    let s = summary(&run);
    let value =
        |name: &str| metric(&text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
    accounted.push(value("tresnet_coordinator_samples_accounted_total"));
    evaluated.push(value("tresnet_coordinator_samples_evaluated_total"));
    assert_moved_monotonically("samples_accounted", &accounted);
    assert_moved_monotonically("samples_evaluated", &evaluated);
    assert_moved_monotonically("worker samples", &worker_samples);
    assert_eq!(s["bad_samples"], 2, "{s}");
    assert_eq!(
        value("tresnet_coordinator_samples_evaluated_total"),
        s["samples"].as_f64().unwrap()
    );
    assert_eq!(
        value("tresnet_coordinator_bad_samples_total"),
        s["bad_samples"].as_f64().unwrap()
    );
    assert_eq!(
        value("tresnet_coordinator_samples_accounted_total"),
        total as f64
    );
    let shards = total.div_ceil(2) as f64;
    assert_eq!(value("tresnet_coordinator_shards{state=\"done\"}"), shards);
    assert_eq!(value("tresnet_coordinator_accept_seconds_count"), shards);
    assert_eq!(value("tresnet_coordinator_leases_granted_total"), shards);
    assert_eq!(value("tresnet_coordinator_queue_depth"), 0.0);
    assert_eq!(value("tresnet_coordinator_leases_in_flight"), 0.0);
    assert_eq!(value("tresnet_coordinator_workers_registered"), 1.0);
    assert_eq!(value("tresnet_coordinator_lease_expiries_total"), 0.0);
    assert_eq!(value("tresnet_coordinator_duplicates_dropped_total"), 0.0);
    // What the worker said last can only be behind the coordinator's final count.
    assert!(*worker_samples.last().unwrap() <= s["samples"].as_f64().unwrap());

    let _ = Command::new("kill")
        .args(["-TERM", &coord.child.id().to_string()])
        .status();
    assert!(coord.child.wait().unwrap().success());
    assert!(worker.child.wait().unwrap().success());
}
