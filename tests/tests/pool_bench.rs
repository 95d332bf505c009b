//! `tresnet-coordinator bench` across processes: local workers and a remote one attached as for `run`
//! time one common window, and the worker slowed by the test hook is the one device flagged; a worker
//! that never attaches fails the bench within its deadline, named.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tresnet_tests::{BATCH_DELAY_ENV, Watched, bin, free_port, tresnet_m_weights};

/// The bench's timed window.
const WINDOW_SECS: f64 = 3.0;
/// Sleep per pass of the slowed worker: several times a pass of TResNet-M at 64 px, batch 2, on one
/// thread, so it lands far below the 10% bound even on a loaded machine.
const SLOW_DELAY_MS: u64 = 300;
/// Whole bench: three workers load the seeded checkpoint on a shared 2-core machine, then the window.
const BENCH_LIMIT: Duration = Duration::from_secs(300);

/// `tresnet-coordinator bench` on the seeded TResNet-M, small and short, plus `extra`.
fn bench_command(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("tresnet-coordinator"));
    cmd.args(["bench", "--model", "tresnet_m", "--weights"])
        .arg(tresnet_m_weights())
        .args([
            "--resolution",
            "64",
            "--batch-size",
            "2",
            "--warmup",
            "1",
            "--seconds",
            &WINDOW_SECS.to_string(),
            "--worker-threads",
            "1",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .env_remove("TRESNET_TOKEN")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn the_worker_slowed_by_the_test_hook_is_the_one_device_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut coord = Watched::spawn(
        bench_command(
            &out,
            &[
                "--local-workers",
                "2",
                "--listen",
                &addr,
                "--expect-workers",
                "1",
                "--fail-on-slow",
            ],
        ),
        "coordinator",
    );
    coord.wait_for_line_containing("coordinator listening on", Duration::from_secs(60));
    let mut slow_cmd = Command::new(bin("tresnet-worker"));
    slow_cmd
        .args([
            "--coordinator",
            &format!("http://{addr}"),
            "--worker-id",
            "slowpoke",
            "--threads",
            "1",
        ])
        .env(BATCH_DELAY_ENV, SLOW_DELAY_MS.to_string())
        .env_remove("TRESNET_TOKEN")
        .stdin(Stdio::null());
    let mut slow = Watched::spawn(slow_cmd, "slowpoke");
    let status = coord.wait_exit(BENCH_LIMIT);
    let stderr = coord.stderr_at_exit();
    assert_eq!(
        status.code(),
        Some(3),
        "--fail-on-slow exits 3 when a device is flagged: {stderr}"
    );
    assert!(
        slow.wait_exit(Duration::from_secs(30)).success(),
        "the remote worker hears that the bench is over and exits cleanly"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let devices = report["devices"].as_array().unwrap();
    let ids: Vec<&str> = devices
        .iter()
        .map(|d| d["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["local-0", "local-1", "slowpoke"], "{report:#}");
    let flagged: Vec<&str> = devices
        .iter()
        .filter(|d| d["slow"].as_bool().unwrap())
        .map(|d| d["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(flagged, ["slowpoke"], "{report:#}");
    let slow_lines = report["slow"].as_array().unwrap();
    assert_eq!(slow_lines.len(), 1, "{report:#}");
    assert!(
        slow_lines[0].as_str().unwrap().contains("worker slowpoke"),
        "{report:#}"
    );
    let mut total = 0.0;
    for d in devices {
        let ips = d["images_per_second"].as_f64().unwrap();
        let (passes, images) = (d["passes"].as_u64().unwrap(), d["images"].as_u64().unwrap());
        assert!(passes >= 1 && images == 2 * passes, "{d:#}");
        assert_eq!(d["kind"], "cpu");
        assert_eq!(d["batch_size"], 2);
        let (p50, p90, p99) = (
            d["p50_ms"].as_f64().unwrap(),
            d["p90_ms"].as_f64().unwrap(),
            d["p99_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{d:#}");
        // One common window: every device times from the coordinator's signal to the same deadline,
        // overrunning it by at most the pass in flight (and scheduling noise).
        let secs = d["seconds"].as_f64().unwrap();
        assert!(
            secs >= WINDOW_SECS - 0.2 && secs <= WINDOW_SECS + p99 / 1e3 + 1.0,
            "window of {secs} s against {WINDOW_SECS} s: {d:#}"
        );
        total += ips;
    }
    let slowpoke = &devices[2];
    assert!(
        slowpoke["p50_ms"].as_f64().unwrap() >= SLOW_DELAY_MS as f64,
        "the hook's delay is inside every timed pass: {slowpoke:#}"
    );
    assert!((report["total_images_per_second"].as_f64().unwrap() - total).abs() < 1e-6);
    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    assert!(md.contains("| slowpoke |"), "{md}");
    assert!(md.contains("SLOW: worker slowpoke"), "{md}");
    assert!(md.contains("pool total:"), "{md}");
}

#[test]
fn a_worker_that_never_attaches_fails_the_bench_by_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let started = std::time::Instant::now();
    let mut coord = Watched::spawn(
        bench_command(
            &out,
            &[
                "--local-workers",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--expect-workers",
                "1",
                "--ready-timeout-secs",
                "15",
            ],
        ),
        "coordinator",
    );
    let status = coord.wait_exit(BENCH_LIMIT);
    let stderr = coord.stderr_at_exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 of 1 expected remote workers never attached"),
        "the error says who is missing: {stderr}"
    );
    assert!(
        stderr.contains("of 2 workers ready after 15s"),
        "the error says how long it waited: {stderr}"
    );
    // Hashing the checkpoint, the deadline, then the bounded goodbye to the local worker.
    assert!(started.elapsed() < Duration::from_secs(15 + 45));
    assert!(!out.join("bench.json").exists());
}
