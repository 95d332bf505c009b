//! Faults of the object store are not data. A run from s3:// (s3s-fs behind the fault-injecting proxy
//! of tests/src/fault_proxy.rs) that meets 503 SlowDown, 500 InternalError, cut bodies, refused or
//! stalled connections, or whose S3 server is frozen (SIGSTOP) or killed and restarted, ends with the
//! clean run's report, the retries counted in summary.json and on /metrics; a permanent outage fails
//! the affected shards with the store's error and exits 1, and the same command after the store
//! returns re-fetches exactly those shards and ends with the clean report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tresnet_tests::fault_proxy::{Fault, FaultProxy};
use tresnet_tests::s3::{BUCKET, S3Server};
use tresnet_tests::{
    Watched, assert_same_report, children_of, coordinator_run_on, http_get, listening_ports,
    metric, metric_sum, run_ok, sample_dataset_size, sample_images, summary,
};

/// Where the sample ImageFolder is uploaded: `s3://BUCKET/PREFIX/<class>/<file>`.
const PREFIX: &str = "photos";

/// Every run has this shape (the batch size fixes the logits bit for bit: CPU kernels round per batch
/// shape); 4 samples a shard makes 6 shards, enough that faults set after the first one is journaled
/// meet work still to do.
const SHAPE: [&str; 6] = [
    "--local-workers",
    "2",
    "--shard-size",
    "4",
    "--batch-size",
    "2",
];
const SHARD_SIZE: u64 = 4;

/// Per-request timeout of the object-store clients. Loopback answers take milliseconds even on a
/// loaded machine; the stall and SIGSTOP cases outlast it on purpose.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// object_store retries per request in the transient cases. Each retry first waits at least
/// object_store's initial backoff (100 ms), so ten retries span over a second: longer than the refuse
/// burst and the restart below, which therefore end inside one request's retries.
const STORE_RETRIES: u32 = 10;
/// Total retry time per request in the transient cases: above the longest one (the server frozen for
/// 2 × STORE_TIMEOUT) with room for the attempts in flight.
const STORE_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// No case freezes a worker; a short lease keeps a mistaken expiry from costing the default 30 s.
const LEASE_TIMEOUT_MS: &str = "5000";
/// Per-batch delay of the workers in milliseconds, so that a run is still going when a fault set after
/// its first journal record lands (3 batches of work at least remain per worker).
const BATCH_DELAY_MS: &str = "300";
/// For the faults set once mid-run: without speculative copies, the store retries of every lease
/// reach summary.json, whereas those of a copy that loses to its original arrive after the report is
/// written, or never; so a single short fault must leave its trace there.
const NO_SPECULATION: &str = "--no-speculation";
/// Upper bound on one run, faults included (a clean one takes seconds).
const RUN_DEADLINE: Duration = Duration::from_secs(240);
/// Upper bound on waiting for evidence that a run reached the point a fault is meant for.
const EVIDENCE_DEADLINE: Duration = Duration::from_secs(120);
/// How long a refuse burst lasts after its first refusal: well inside one request's retries.
const REFUSE_BURST: Duration = Duration::from_millis(300);
/// How long the S3 server stays dead after the first request failed on it: well inside one request's
/// retries (STORE_RETRIES).
const RESTART_AFTER: Duration = Duration::from_millis(300);

/// How hard the object-store clients (the coordinator's and, forwarded, its workers') try.
#[derive(Clone, Copy)]
struct Knobs {
    retries: u32,
    retry_timeout: Duration,
}

/// Transient faults end inside one request's retries.
const TRANSIENT: Knobs = Knobs {
    retries: STORE_RETRIES,
    retry_timeout: STORE_RETRY_TIMEOUT,
};

/// A permanent outage: few, quick retries, since every lease of a shard left is spent on it.
const OUTAGE: Knobs = Knobs {
    retries: 2,
    retry_timeout: Duration::from_secs(2),
};

impl Knobs {
    fn args(self) -> Vec<String> {
        vec![
            format!("--store-timeout-ms={}", STORE_TIMEOUT.as_millis()),
            format!("--store-retries={}", self.retries),
            format!(
                "--store-retry-timeout-ms={}",
                self.retry_timeout.as_millis()
            ),
            format!("--lease-timeout-ms={LEASE_TIMEOUT_MS}"),
        ]
    }
}

/// An s3s-fs server holding the sample ImageFolder, and the proxy every client reaches it through.
struct Rig {
    server: S3Server,
    proxy: FaultProxy,
}

impl Rig {
    fn start() -> Self {
        let server = S3Server::start();
        server.upload_dir(&sample_images(), PREFIX);
        let proxy = FaultProxy::start(server.addr());
        Self { server, proxy }
    }

    /// `tresnet-coordinator run` of the sample data from s3:// through the proxy, in the shape every
    /// run here has, with `knobs` and `extra`.
    fn command(&self, out: &Path, knobs: Knobs, extra: &[&str]) -> Command {
        let data = format!("s3://{BUCKET}/{PREFIX}");
        let mut args: Vec<String> = SHAPE.iter().map(|s| s.to_string()).collect();
        args.extend(knobs.args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = coordinator_run_on(Path::new(&data), "imagefolder", out, &args);
        cmd.envs(S3Server::env_at(&self.proxy.endpoint()));
        cmd
    }

    /// Journal records on the store under `s3://BUCKET/prefix`.
    fn store_records(&self, prefix: &str) -> usize {
        records_in(&self.server.root().join(BUCKET).join(prefix))
    }
}

/// `cmd` (a coordinator) with its local workers slowed down by [`BATCH_DELAY_MS`] per batch.
fn slowed(mut cmd: Command) -> Command {
    cmd.env(tresnet_tests::BATCH_DELAY_ENV, BATCH_DELAY_MS);
    cmd
}

/// Journal records (`shard-XXXXXXXX.pb`) in a folder (a run's local journal, or s3s-fs's copy of one).
fn records_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with("shard-") && n.ends_with(".pb")
            })
            .count()
    })
}

/// Waits (bounded) until `done()`, giving up when the run has `ended` first; `what` names the
/// evidence in the panic.
fn wait_until(what: &str, ended: &AtomicBool, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            !ended.load(Ordering::Relaxed),
            "the run ended before the {what} the fault waits for"
        );
        assert!(
            start.elapsed() < EVIDENCE_DEADLINE,
            "no {what} within {EVIDENCE_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a run observed from outside, besides its run directory.
struct Observed {
    status: ExitStatus,
    /// The coordinator's /metrics once its reports were written (or its last scrape, if it failed).
    coordinator: String,
    /// `tresnet_worker_store_retries_total` summed over the workers, each at its last scrape.
    worker_store_retries: f64,
    /// Workers whose /metrics answered at least once.
    workers_scraped: usize,
}

/// `tresnet_worker_store_retries_total` of each live worker (child) of the coordinator `pid`, now.
fn scrape_workers(pid: u32) -> BTreeMap<u32, f64> {
    let mut out = BTreeMap::new();
    for worker in children_of(pid) {
        for port in listening_ports(worker) {
            if let Some((200, text)) = http_get(&format!("127.0.0.1:{port}"), "/metrics")
                && let Some(v) = metric_sum(&text, "tresnet_worker_store_retries_total")
            {
                out.insert(worker, v);
            }
        }
    }
    out
}

/// What a fault injector sees of the run it acts on.
struct RunView<'a> {
    /// Set once the run has ended; evidence waits give up then.
    ended: &'a AtomicBool,
    coordinator: u32,
}

impl RunView<'_> {
    /// The workers' `tresnet_worker_store_retries_total`, summed, now.
    fn worker_store_retries(&self) -> f64 {
        scrape_workers(self.coordinator).values().sum()
    }
}

/// Runs `cmd` with /metrics on the coordinator and its workers, calls `inject` on a thread of its own
/// meanwhile, and scrapes both until the coordinator has written its reports; returns what `inject`
/// returned too.
fn observed_run<T: Send>(
    mut cmd: Command,
    inject: impl FnOnce(&RunView) -> T + Send,
) -> (Observed, T) {
    cmd.args(["--metrics-listen", "127.0.0.1:0"])
        // Long enough for the last scrape; SIGTERM ends the wait.
        .args(["--metrics-linger-secs", "300"])
        .arg("--worker-arg=--metrics-listen=127.0.0.1:0")
        // object_store logs each retry it makes (at info): what a failure here needs explained.
        .env("RUST_LOG", "warn,object_store=info");
    let mut coord = Watched::spawn(cmd, "coordinator");
    // The coordinator listens before it starts its workers, so the first such line is its own. The
    // workers' lines go to the same stderr, at the same moment, and may interleave; their listeners
    // are found by process instead.
    let cm = coord.metrics_addr();
    let mut workers: BTreeMap<u32, f64> = BTreeMap::new();
    let mut coordinator = String::new();
    let mut exited = None;
    let ended = AtomicBool::new(false);
    let view = RunView {
        ended: &ended,
        coordinator: coord.child.id(),
    };
    let injected = std::thread::scope(|s| {
        let injector = s.spawn(|| inject(&view));
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < RUN_DEADLINE,
                "the run did not finish within {RUN_DEADLINE:?}"
            );
            if let Some(st) = coord.child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            // A worker exits once the job is done; its last answer stands.
            workers.extend(scrape_workers(coord.child.id()));
            if let Some((200, text)) = http_get(&cm, "/metrics") {
                coordinator = text;
            }
            if let Some((503, body)) = http_get(&cm, "/readyz")
                && body.contains("finished")
            {
                if let Some((200, text)) = http_get(&cm, "/metrics") {
                    coordinator = text;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ended.store(true, Ordering::Relaxed);
        injector.join().expect("the fault injection failed")
    });
    let status = exited.unwrap_or_else(|| {
        let _ = Command::new("kill")
            .args(["-TERM", &coord.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(st) = coord.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the coordinator did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let observed = Observed {
        status,
        coordinator,
        worker_store_retries: workers.values().sum(),
        workers_scraped: workers.len(),
    };
    (observed, injected)
}

/// A `scheduling` count of summary.json, which must be there.
fn scheduling(s: &serde_json::Value, field: &str) -> u64 {
    s["scheduling"][field].as_u64().unwrap_or_else(|| {
        panic!(
            "summary.json has no scheduling.{field}: {}",
            s["scheduling"]
        )
    })
}

/// The clean report, reached through the faults, with the retries that got there counted in
/// summary.json and on /metrics.
fn assert_recovered(out: &Path, obs: &Observed, what: &str) {
    assert!(
        obs.status.success(),
        "{what}: the run failed ({})",
        obs.status
    );
    assert_same_report(reference(), out, what);
    let s = summary(out);
    assert_eq!(s["bad_samples"], 0, "{what}: {}", s["bad"]);
    assert_eq!(s["failed_samples"], 0, "{what}: {}", s["failed_shards"]);
    let store_retries = scheduling(&s, "store_retries");
    let environment_faults = scheduling(&s, "environment_faults");
    let retries = scheduling(&s, "retries");
    assert!(
        store_retries > 0 || environment_faults > 0,
        "{what}: the faults left no trace in summary.json: {}",
        s["scheduling"]
    );
    let coordinator = |name: &str| {
        metric(&obs.coordinator, name)
            .unwrap_or_else(|| panic!("{what}: {name} missing from:\n{}", obs.coordinator))
    };
    // The report is a snapshot taken when the last shard was accounted for; /metrics goes on counting
    // what arrives after it (a speculative copy's trailer or hand-back), so it can only be ahead.
    for (name, n) in [
        ("store_retries", store_retries),
        ("environment_faults", environment_faults),
        ("retries", retries),
    ] {
        let m = coordinator(&format!("tresnet_coordinator_{name}_total"));
        assert!(
            m >= n as f64 && (n == 0 || m > 0.0),
            "{what}: tresnet_coordinator_{name}_total {m} against {n} in summary.json"
        );
    }
    assert_eq!(obs.workers_scraped, 2, "{what}: workers' /metrics not seen");
    if store_retries > 0 {
        assert!(
            obs.worker_store_retries > 0.0,
            "{what}: no tresnet_worker_store_retries_total on the workers' /metrics, {store_retries} \
             in summary.json"
        );
    }
}

/// The run directory of a clean run through the proxy (no faults), shared by the tests of this
/// process; in the target's scratch folder, replaced by each test process.
fn reference() -> &'static Path {
    static REFERENCE: OnceLock<PathBuf> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-reference");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rig = Rig::start();
        let out = dir.join("run");
        let (obs, ()) = observed_run(rig.command(&out, TRANSIENT, &[]), |_| {});
        assert!(
            obs.status.success(),
            "the clean run failed ({})",
            obs.status
        );
        let stats = rig.proxy.stats();
        assert_eq!(stats.injected(), 0, "{stats:?}");
        // Every object came through the proxy.
        assert!(stats.forwarded >= sample_dataset_size(), "{stats:?}");
        let s = summary(&out);
        assert_eq!(s["samples"], sample_dataset_size(), "{s}");
        assert_eq!(s["bad_samples"], 0, "{s}");
        assert_eq!(s["failed_samples"], 0, "{s}");
        // Nothing failed, so nothing may be counted as retried.
        assert_eq!(scheduling(&s, "store_retries"), 0, "{}", s["scheduling"]);
        assert_eq!(scheduling(&s, "environment_faults"), 0);
        assert_eq!(scheduling(&s, "retries"), 0);
        for name in ["store_retries", "environment_faults", "retries"] {
            let series = format!("tresnet_coordinator_{name}_total");
            assert_eq!(metric(&obs.coordinator, &series), Some(0.0), "{series}");
        }
        assert_eq!(obs.worker_store_retries, 0.0);
        let _ = std::fs::remove_dir_all(tresnet_tests::dataset_cache_of(&out));
        out
    })
}

#[test]
fn a_clean_run_through_the_proxy_is_the_reference() {
    // The assertions are in reference(); the other tests compare against it.
    assert!(reference().join("summary.json").is_file());
}

/// A fraction of requests answered with an error or cut, from the start (the coordinator's listing
/// included): the run ends with the clean report.
fn fraction_case(fault: Fault, what: &str) {
    let rig = Rig::start();
    rig.proxy.set_fault(fault);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // Slowed down like the other cases, so that the workers' /metrics are scraped after the faults.
    let (obs, ()) = observed_run(slowed(rig.command(&out, TRANSIENT, &[])), |_| {});
    let stats = rig.proxy.stats();
    assert!(stats.injected() > 0, "{what}: nothing injected: {stats:?}");
    assert_recovered(&out, &obs, &format!("{what} ({:?})", rig.proxy.stats()));
}

#[test]
fn every_third_request_throttled_with_503_slowdown_changes_nothing() {
    fraction_case(
        Fault::SlowDown { every: 3 },
        "503 SlowDown on every 3rd request",
    );
}

#[test]
fn every_third_request_failing_with_500_changes_nothing() {
    fraction_case(
        Fault::InternalError { every: 3 },
        "500 InternalError on every 3rd request",
    );
}

#[test]
fn every_second_object_body_cut_halfway_changes_nothing() {
    fraction_case(
        Fault::CutBody { every: 2 },
        "every 2nd object body cut halfway",
    );
}

#[test]
fn a_burst_of_refused_connections_changes_nothing() {
    let rig = Rig::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let journal = out.join("journal");
    let extra = [NO_SPECULATION];
    let (obs, ()) = observed_run(slowed(rig.command(&out, TRANSIENT, &extra)), |run| {
        wait_until("journal record", run.ended, || records_in(&journal) > 0);
        rig.proxy.set_fault(Fault::Refuse);
        wait_until("refused request", run.ended, || {
            rig.proxy.stats().refused > 0
        });
        std::thread::sleep(REFUSE_BURST);
        rig.proxy.set_fault(Fault::PassThrough);
    });
    let what = format!("a refuse burst ({:?})", rig.proxy.stats());
    assert_recovered(&out, &obs, &what);
}

#[test]
fn a_stall_longer_than_the_store_timeout_changes_nothing() {
    let rig = Rig::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let journal = out.join("journal");
    let extra = [NO_SPECULATION];
    let (obs, counted_while_stalled) =
        observed_run(slowed(rig.command(&out, TRANSIENT, &extra)), |run| {
            wait_until("journal record", run.ended, || records_in(&journal) > 0);
            rig.proxy.set_fault(Fault::Stall);
            wait_until("stalled request", run.ended, || {
                rig.proxy.stats().stalled > 0
            });
            // The stalled attempts time out after STORE_TIMEOUT and are retried into the stall: the
            // workers' /metrics show those retries as they happen, while the shard is still stuck,
            // not only once it is done (a worker's last shard ends just before it exits).
            let start = Instant::now();
            let mut counted = 0.0;
            while counted == 0.0 && start.elapsed() < STORE_TIMEOUT * 3 {
                counted = run.worker_store_retries();
                std::thread::sleep(Duration::from_millis(50));
            }
            rig.proxy.set_fault(Fault::PassThrough);
            counted
        });
    let what = format!("a stall past the store timeout ({:?})", rig.proxy.stats());
    assert!(
        counted_while_stalled > 0.0,
        "{what}: the workers' /metrics showed no store retry while the stalled requests were being \
         retried ({:?} after the first stall)",
        STORE_TIMEOUT * 3
    );
    assert_recovered(&out, &obs, &what);
}

/// Where a case keeps its journal: the run directory's default, or a prefix on the S3 server.
#[derive(Clone, Copy)]
enum JournalAt {
    Local,
    Store(&'static str),
}

impl JournalAt {
    fn args(self) -> Vec<String> {
        match self {
            JournalAt::Local => vec![],
            JournalAt::Store(prefix) => vec![format!("--journal=s3://{BUCKET}/{prefix}")],
        }
    }

    /// Records written so far by the run in `out`.
    fn records(self, rig: &Rig, out: &Path) -> usize {
        match self {
            JournalAt::Local => records_in(&out.join("journal")),
            JournalAt::Store(prefix) => rig.store_records(prefix),
        }
    }
}

/// SIGSTOP of the S3 server once a shard is journaled, held for two store timeouts after a request
/// reached it, then SIGCONT: the requests time out, are retried, and the run ends clean.
fn frozen_store_case(journal: JournalAt, what: &str) {
    let rig = Rig::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut extra = journal.args();
    extra.push(NO_SPECULATION.to_string());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (obs, ()) = observed_run(slowed(rig.command(&out, TRANSIENT, &extra)), |run| {
        wait_until("journal record", run.ended, || {
            journal.records(&rig, &out) > 0
        });
        let seen = rig.proxy.stats().object_gets;
        rig.server.signal("STOP");
        // A worker's fetch, not only the coordinator's journal write (whose retries are its own).
        wait_until("object GET to the stopped server", run.ended, || {
            rig.proxy.stats().object_gets > seen
        });
        std::thread::sleep(STORE_TIMEOUT * 2);
        rig.server.signal("CONT");
    });
    assert_recovered(&out, &obs, &format!("{what} ({:?})", rig.proxy.stats()));
}

#[test]
fn a_store_frozen_past_the_timeout_changes_nothing_journal_local() {
    frozen_store_case(JournalAt::Local, "SIGSTOP of s3s-fs, local journal");
}

#[test]
fn a_store_frozen_past_the_timeout_changes_nothing_journal_on_the_store() {
    frozen_store_case(
        JournalAt::Store("runs/frozen/journal"),
        "SIGSTOP of s3s-fs, journal on the store",
    );
}

/// SIGKILL of the S3 server once a shard is journaled; restarted on the same folder (another port,
/// which the proxy follows) shortly after a request failed on it: the run ends clean.
fn killed_store_case(journal: JournalAt, what: &str) {
    let mut rig = Rig::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut extra = journal.args();
    extra.push(NO_SPECULATION.to_string());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let cmd = slowed(rig.command(&out, TRANSIENT, &extra));
    let Rig { server, proxy } = &mut rig;
    let (obs, ()) = observed_run(cmd, |run| {
        let records = || match journal {
            JournalAt::Local => records_in(&out.join("journal")),
            JournalAt::Store(prefix) => records_in(&server.root().join(BUCKET).join(prefix)),
        };
        wait_until("journal record", run.ended, || records() > 0);
        let failed = proxy.stats().object_get_backend_errors;
        server.kill();
        // A worker's fetch, not only the coordinator's journal write (whose retries are its own).
        wait_until("object GET failing on the dead server", run.ended, || {
            proxy.stats().object_get_backend_errors > failed
        });
        std::thread::sleep(RESTART_AFTER);
        server.restart();
        proxy.set_backend(server.addr());
    });
    assert_recovered(&out, &obs, &format!("{what} ({:?})", rig.proxy.stats()));
}

#[test]
fn a_store_killed_and_restarted_changes_nothing_journal_local() {
    killed_store_case(
        JournalAt::Local,
        "SIGKILL + restart of s3s-fs, local journal",
    );
}

#[test]
fn a_store_killed_and_restarted_changes_nothing_journal_on_the_store() {
    killed_store_case(
        JournalAt::Store("runs/killed/journal"),
        "SIGKILL + restart of s3s-fs, journal on the store",
    );
}

/// Per class name, the support in `run`'s per_class.parquet.
fn class_support(run: &Path) -> BTreeMap<String, u64> {
    let f = std::fs::File::open(run.join("per_class.parquet")).unwrap();
    use polars::prelude::SerReader;
    let df = polars::prelude::ParquetReader::new(f).finish().unwrap();
    let names = df.column("name").unwrap().str().unwrap().clone();
    let support = df.column("support").unwrap().u64().unwrap().clone();
    (0..df.height())
        .map(|i| (names.get(i).unwrap().to_string(), support.get(i).unwrap()))
        .collect()
}

/// A run whose shards `failed` (with samples `failed_keys`) each failed `--max-failures` leases shows
/// them in every place a user looks: each shard's reasons, one per lease; per class, support short of
/// the clean run's by exactly its failed samples; report.html's headline and failed-shards table;
/// `gate --require-samples` refuses it (exit 1) and `compare` against the clean run refuses to pair it,
/// naming the missing samples.
fn failed_shards_show_everywhere(out: &Path, failed: &[serde_json::Value], failed_keys: &[String]) {
    for shard in failed {
        assert_eq!(
            shard["reasons"].as_array().unwrap().len(),
            tresnet_coordinator::cli::DEFAULT_MAX_FAILURES as usize,
            "{shard}"
        );
    }
    let (clean, run) = (class_support(reference()), class_support(out));
    for (class, n) in &clean {
        let missing = failed_keys
            .iter()
            .filter(|k| k.split('/').next() == Some(class.as_str()))
            .count() as u64;
        assert_eq!(n - run[class], missing, "per-class support of {class}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for needle in [
        format!(
            "<th>failed samples</th><td class=\"num\">{} ({} shards)</td>",
            failed_keys.len(),
            failed.len()
        ),
        format!("<h2>Failed shards ({})</h2>", failed.len()),
        "<table id=\"failed-shards\">".to_string(),
    ] {
        assert!(html.contains(&needle), "report.html lacks {needle}");
    }

    let coordinator = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(tresnet_tests::bin("tresnet-coordinator"))
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let dir = tempfile::tempdir().unwrap();
    let baseline = dir.path().join("baseline.json");
    let (code, text) = coordinator(&[
        "gate".as_ref(),
        "--run".as_ref(),
        reference().as_os_str(),
        "--baseline".as_ref(),
        baseline.as_os_str(),
        "--write-baseline".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    let total = sample_dataset_size().to_string();
    let (code, text) = coordinator(&[
        "gate".as_ref(),
        "--run".as_ref(),
        out.as_os_str(),
        "--baseline".as_ref(),
        baseline.as_os_str(),
        "--require-samples".as_ref(),
        total.as_ref(),
    ]);
    assert_eq!(
        code,
        Some(1),
        "gate passed a run with failed shards: {text}"
    );
    let evaluated = sample_dataset_size() - failed_keys.len() as u64;
    assert!(
        text.contains("samples") && text.contains(&evaluated.to_string()),
        "{text}"
    );
    let (code, text) = coordinator(&["compare".as_ref(), reference().as_os_str(), out.as_os_str()]);
    assert_ne!(
        code,
        Some(0),
        "compare paired a run with failed shards: {text}"
    );
    let mut sorted = failed_keys.to_vec();
    sorted.sort();
    assert!(
        text.contains("did not evaluate the same samples")
            && text.contains(&format!("{} only in the first", failed_keys.len()))
            && text.contains(&sorted[0]),
        "{text}"
    );
}

/// The store goes away for good once the first shards' objects are fetched (after the listing): the
/// shards left fail with the store's error after `--max-failures` leases, the run exits 1 and counts
/// no bad sample, and the failed shards show in summary, per class, report.html, gate and compare;
/// once the store is back, the same command re-fetches exactly the failed shards' objects and ends
/// with the clean report.
#[test]
fn a_permanent_outage_fails_the_shards_left_and_a_rerun_completes_them() {
    let rig = Rig::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // Without speculation each object is fetched by one lease at a time, so that the rerun's GETs
    // can be counted.
    let extra = [NO_SPECULATION];
    let journal = out.join("journal");

    let mut cmd = slowed(rig.command(&out, OUTAGE, &extra));
    cmd.env("RUST_LOG", "warn,object_store=info");
    let mut first = Watched::spawn(cmd, "coordinator");
    // The store goes down once the objects of the shards the two workers prefetch first (two each)
    // have come through: the other shards are fetched only when one of those completes, after its
    // batch delays, so they meet the outage. (Waiting for the first journal record instead raced with
    // the next shard's fetch, which starts the moment that record is written.)
    const FIRST_FETCHED: u64 = 2 * 2 * SHARD_SIZE;
    let start = Instant::now();
    while rig.proxy.stats().object_gets < FIRST_FETCHED {
        assert!(
            first.child.try_wait().unwrap().is_none(),
            "the run ended before {FIRST_FETCHED} objects were fetched"
        );
        assert!(
            start.elapsed() < EVIDENCE_DEADLINE,
            "{FIRST_FETCHED} objects not fetched within {EVIDENCE_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.proxy.set_fault(Fault::Down);
    let fetched_before = rig.proxy.stats().object_gets;
    assert!(
        fetched_before < sample_dataset_size(),
        "every object was fetched before the outage ({fetched_before})"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = first.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < RUN_DEADLINE,
            "the run did not end during the outage"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "the outage did not fail the run");
    let s = summary(&out);
    assert_eq!(
        s["bad_samples"], 0,
        "store errors counted as bad: {}",
        s["bad"]
    );
    let failed = s["failed_shards"].as_array().unwrap().clone();
    assert!(!failed.is_empty(), "no shard failed: {s}");
    let mut failed_keys = Vec::new();
    for shard in &failed {
        let reasons = shard["reasons"].as_array().unwrap();
        assert!(!reasons.is_empty(), "{shard}");
        for r in reasons {
            let r = r.as_str().unwrap();
            assert!(
                r.contains(&format!("s3://{BUCKET}/{PREFIX}"))
                    && r.to_lowercase().contains("refused"),
                "the reason does not name the store error: {r}"
            );
        }
        failed_keys.extend(
            shard["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string()),
        );
    }
    assert_eq!(s["failed_samples"], failed_keys.len(), "{s}");
    assert_eq!(
        s["samples"].as_u64().unwrap() + failed_keys.len() as u64,
        sample_dataset_size(),
        "{s}"
    );
    // Every lease of a failed shard was handed back for the store, none journaled.
    let shards = sample_dataset_size().div_ceil(SHARD_SIZE) as usize;
    assert_eq!(records_in(&journal) + failed.len(), shards);
    assert!(
        scheduling(&s, "environment_faults") >= 3 * failed.len() as u64,
        "{}",
        s["scheduling"]
    );
    drop(first);
    failed_shards_show_everywhere(&out, &failed, &failed_keys);

    // The store is back: the same command.
    rig.proxy.set_fault(Fault::PassThrough);
    let gets_before = rig.server.requests("GET").len();
    run_ok(slowed(rig.command(&out, OUTAGE, &extra)));
    assert_same_report(reference(), &out, "rerun after a permanent outage");
    let objects = format!("/{BUCKET}/{PREFIX}/");
    let mut fetched: Vec<String> = rig.server.requests("GET")[gets_before..]
        .iter()
        .filter_map(|uri| uri.strip_prefix(&objects).map(str::to_string))
        .collect();
    fetched.sort();
    failed_keys.sort();
    assert_eq!(
        fetched, failed_keys,
        "the rerun did not re-fetch exactly the failed shards"
    );
}
