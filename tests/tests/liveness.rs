//! Liveness across the wire, with the real binaries on loopback: workers wait (boundedly) for a
//! coordinator that is not listening yet or is frozen, and give up on one that stays silent with an
//! error naming it; local workers die with a SIGKILLed coordinator; a SIGTERMed coordinator drains,
//! exits non-zero without a report, and a rerun of the same command resumes to the clean run's report;
//! a SIGINTed sweep stops after draining its cell.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tresnet_tests::{
    BATCH_DELAY_ENV, SweepToml, Watched, assert_same_report, children_of, coordinator_command,
    coordinator_run, free_port, journal_records, process_gone, read_journal_record, run_ok,
    sample_dataset_size, sample_images, send_signal, summary, wait_until, worker_command,
};

/// Shards of 2 samples and batches of 2 in every run here, so their reports compare exactly.
const SHARDING: [&str; 4] = ["--shard-size", "2", "--batch-size", "2"];
/// Bound on anything that involves a whole run on a loaded 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// A remote worker of `url` with short deadlines (`rpc_timeout_ms`) and `patience_ms`.
fn worker(
    url: &str,
    id: &str,
    rpc_timeout_ms: u64,
    patience_ms: u64,
    batch_delay_ms: Option<u64>,
) -> Command {
    let mut c = worker_command(url);
    c.args(["--worker-id", id])
        .args(["--rpc-timeout-ms", &rpc_timeout_ms.to_string()])
        .args(["--coordinator-patience-ms", &patience_ms.to_string()]);
    if let Some(ms) = batch_delay_ms {
        c.env(BATCH_DELAY_ENV, ms.to_string());
    }
    c
}

/// A clean run of the sample dataset with one local worker: the report every faulted run must equal.
fn clean_run(dir: &Path) -> std::path::PathBuf {
    let clean = dir.join("clean");
    let mut args = vec!["--local-workers", "1"];
    args.extend(SHARDING);
    run_ok(coordinator_run(&clean, &args));
    clean
}

/// Waits for the first journaled shard of `run` (work has started), failing if `coord` exits first.
fn wait_for_first_record(coord: &mut Watched, run: &Path) -> usize {
    let journal = run.join("journal");
    let mut n = 0;
    wait_until(RUN_LIMIT, "a first journal record", || {
        assert!(
            coord.child.try_wait().unwrap().is_none(),
            "the run ended before the fault could be injected"
        );
        n = journal_records(&journal).len();
        n > 0
    });
    n
}

/// The address printed by a coordinator started with `--listen 127.0.0.1:0`.
fn listening_addr(coord: &Watched) -> String {
    coord
        .wait_for("coordinator listening on ")
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_worker_started_before_its_coordinator_joins_once_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let early = Watched::spawn(worker(&url, "early", 1000, 120_000, None), "early");
    // It is up, found nothing listening, and keeps trying.
    early.wait_for_line_containing("coordinator not answering; retrying", RUN_LIMIT);
    let run = dir.path().join("run");
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--local-workers", "0", "--listen", &listen];
    args.extend(SHARDING);
    let mut coord = Watched::spawn(coordinator_run(&run, &args), "coordinator");
    let status = coord.wait_exit(RUN_LIMIT);
    assert!(status.success(), "{status}: {}", coord.stderr_at_exit());
    let s = summary(&run);
    assert_eq!(s["samples"], sample_dataset_size(), "{s}");
    // That worker did every shard.
    for rec in journal_records(&run.join("journal")) {
        let r = read_journal_record(&rec).unwrap();
        assert_eq!(r.worker_id, "early", "{}", rec.display());
    }
}

#[test]
fn a_worker_whose_coordinator_never_appears_gives_up_naming_it() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let patience = Duration::from_secs(2);
    let start = Instant::now();
    let mut alone = Watched::spawn(
        worker(&url, "alone", 500, patience.as_millis() as u64, None),
        "alone",
    );
    // Patience, one deadline, and a margin for starting the process on a loaded machine.
    let status = alone.wait_exit(patience + Duration::from_secs(20));
    let took = start.elapsed();
    assert!(!status.success(), "{status}");
    assert!(took >= patience, "gave up after {took:?}");
    let err = alone.stderr_at_exit();
    assert!(
        err.contains(&format!("coordinator {url} did not answer for"))
            && err.contains("--coordinator-patience-ms 2000"),
        "{err}"
    );
}

#[test]
fn a_frozen_coordinator_is_waited_for_and_every_sample_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_run(dir.path());
    let run = dir.path().join("frozen");
    // Leases outlive the freeze, so the run needs no expiry to finish (it would absorb one anyway).
    let mut args = vec![
        "--local-workers",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--lease-timeout-ms",
        "6000",
    ];
    args.extend(SHARDING);
    let mut coord = Watched::spawn(coordinator_run(&run, &args), "coordinator");
    let url = format!("http://{}", listening_addr(&coord));
    let workers: Vec<Watched> = ["a", "b"]
        .iter()
        .map(|id| Watched::spawn(worker(&url, id, 1000, 60_000, Some(200)), id))
        .collect();
    wait_for_first_record(&mut coord, &run);
    send_signal(coord.child.id(), "STOP");
    // The fault itself: three RPC deadlines of silence.
    std::thread::sleep(Duration::from_secs(3));
    send_signal(coord.child.id(), "CONT");
    let status = coord.wait_exit(RUN_LIMIT);
    assert!(status.success(), "{status}: {}", coord.stderr_at_exit());
    let s = summary(&run);
    let n = sample_dataset_size();
    assert_eq!(s["samples"], n, "{s}");
    assert_eq!(s["failed_samples"], 0, "{s}");
    assert_eq!(s["bad_samples"], 0, "{s}");
    assert_same_report(&clean, &run, "after a 3 s freeze");
    let felt: usize = workers
        .iter()
        .map(|w| {
            w.stderr_so_far()
                .matches("coordinator not answering")
                .count()
        })
        .sum();
    assert!(felt > 0, "no worker noticed the freeze");
}

#[test]
fn a_coordinator_frozen_past_the_patience_is_given_up_on() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec![
        "--local-workers",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--lease-timeout-ms",
        "3000",
    ];
    args.extend(SHARDING);
    let mut coord = Watched::spawn(coordinator_run(&run, &args), "coordinator");
    let url = format!("http://{}", listening_addr(&coord));
    let patience = Duration::from_secs(3);
    let mut w = Watched::spawn(
        worker(&url, "patient", 500, patience.as_millis() as u64, Some(300)),
        "patient",
    );
    wait_for_first_record(&mut coord, &run);
    send_signal(coord.child.id(), "STOP");
    let frozen = Instant::now();
    // Patience after the first failed call, which comes within a heartbeat (1 s) or a batch; a
    // margin for a loaded machine. Without deadlines and keepalive it would hang here.
    let status = w.wait_exit(patience + Duration::from_secs(15));
    let took = frozen.elapsed();
    assert!(!status.success(), "{status}");
    assert!(took >= patience, "gave up after {took:?}");
    let err = w.stderr_at_exit();
    assert!(
        err.contains(&format!("coordinator {url} did not answer for")),
        "{err}"
    );
    // The frozen coordinator is SIGKILLed by its guard.
}

#[test]
fn local_workers_die_with_a_sigkilled_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Patient workers: losing their coordinator's connection alone would keep them up for minutes.
    let mut args = vec![
        "--local-workers",
        "2",
        "--worker-arg=--coordinator-patience-ms=600000",
    ];
    args.extend(SHARDING);
    let mut cmd = coordinator_run(&run, &args);
    cmd.env(BATCH_DELAY_ENV, "300");
    let mut coord = Watched::spawn(cmd, "coordinator");
    wait_for_first_record(&mut coord, &run);
    let workers = children_of(coord.child.id());
    assert_eq!(workers.len(), 2, "local workers: {workers:?}");
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    wait_until(Duration::from_secs(5), "local workers gone", || {
        workers.iter().all(|&p| process_gone(p))
    });
}

/// Records of a local journal: each decodes, names a distinct shard and holds all of its samples.
fn assert_records_intact(journal: &Path, shard_size: u64, total: u64) {
    let mut shards = std::collections::BTreeSet::new();
    for p in journal_records(journal) {
        let r = read_journal_record(&p).unwrap_or_else(|e| panic!("{e}"));
        let expected = shard_size.min(total - r.shard_id * shard_size);
        assert_eq!(r.results.len() as u64, expected, "{}", p.display());
        assert!(shards.insert(r.shard_id), "{} twice", r.shard_id);
    }
    let tmp: Vec<_> = std::fs::read_dir(journal)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(tmp.is_empty(), "half-written records: {tmp:?}");
}

#[test]
fn a_sigtermed_coordinator_drains_and_a_rerun_resumes_to_the_clean_report() {
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_run(dir.path());
    let run = dir.path().join("drained");
    let drain = Duration::from_secs(10);
    let drain_ms = drain.as_millis().to_string();
    let mut args = vec!["--local-workers", "2", "--drain-timeout-ms", &drain_ms];
    args.extend(SHARDING);
    let mut cmd = coordinator_run(&run, &args);
    cmd.env(BATCH_DELAY_ENV, "300");
    let mut coord = Watched::spawn(cmd, "coordinator");
    let at_signal = wait_for_first_record(&mut coord, &run);
    send_signal(coord.child.id(), "TERM");
    let signalled = Instant::now();
    // The drain, then the local workers hearing that nothing follows (a few polls), with a margin.
    let status = coord.wait_exit(drain + Duration::from_secs(15));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(128 + 15), "{status} after {took:?}");
    let err = coord.stderr_at_exit();
    assert!(
        err.contains("run interrupted by SIGTERM")
            && err.contains("rerun the same command to resume")
            // Every shard in flight finished within the drain and was journaled.
            && err.contains(" 0 shards still in flight were abandoned"),
        "{err}"
    );
    assert!(
        !run.join("summary.json").exists(),
        "an interrupted run must not look finished"
    );
    let journal = run.join("journal");
    let n = sample_dataset_size();
    assert_records_intact(&journal, 2, n);
    let records: Vec<_> = journal_records(&journal)
        .into_iter()
        .map(|p| (std::fs::read(&p).unwrap(), p))
        .collect();
    assert!(records.len() >= at_signal);
    assert!(
        (records.len() as u64) < n.div_ceil(2),
        "the whole run finished before the drain"
    );

    run_ok(coordinator_run(&run, &args));
    for (bytes, p) in records {
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{} was recomputed",
            p.display()
        );
    }
    assert_same_report(&clean, &run, "after a drain and a rerun");
}

#[test]
fn a_sigint_stops_a_sweep_after_draining_its_cell() {
    let dir = tempfile::tempdir().unwrap();
    let file = SweepToml::new("sample", &sample_images().display().to_string())
        .resolutions(&[64, 96])
        .run("shard-size", "2")
        .run("batch-size", "2")
        .write(dir.path());
    let sweep = || {
        let mut c = coordinator_command("sweep");
        c.arg(&file).env(BATCH_DELAY_ENV, "300");
        c
    };
    let out = dir.path().join("runs");
    let first = out.join("tresnet_m-seeded-sample-64-center-fp32");
    let second = out.join("tresnet_m-seeded-sample-96-center-fp32");
    let mut s = Watched::spawn(sweep(), "sweep");
    wait_for_first_record(&mut s, &first);
    send_signal(s.child.id(), "INT");
    let status = s.wait_exit(RUN_LIMIT);
    assert_eq!(status.code(), Some(128 + 2), "{status}");
    let err = s.stderr_at_exit();
    assert!(
        err.contains("sweep: cell 1/2 tresnet_m-seeded-sample-64-center-fp32")
            && err.contains("interrupted by SIGINT")
            && err.contains("rerun the same command to resume"),
        "{err}"
    );
    assert!(!first.join("summary.json").exists());
    assert!(!second.exists(), "the next cell started after the drain");
    assert!(!out.join("sweep.md").exists(), "tables of a partial sweep");
    // The rerun resumes the drained cell, then runs the other.
    let o = run_bounded(sweep());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for cell in [&first, &second] {
        assert_eq!(summary(cell)["samples"], sample_dataset_size());
    }
    assert!(out.join("sweep.md").exists());
}

/// Runs `cmd` to completion, bounded by [`RUN_LIMIT`].
fn run_bounded(cmd: Command) -> std::process::Output {
    let mut w = Watched::spawn(cmd, "rerun");
    let status = w.wait_exit(RUN_LIMIT);
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: w.stderr_at_exit().into_bytes(),
    }
}
