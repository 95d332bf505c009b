//! Across real network boundaries: the coordinator and two workers each in a Linux network namespace of
//! their own, joined by veth pairs to a bridge in a fourth (so no packet touches the machine's own
//! network), with addresses of 10.231.0.0/24. A worker partitioned past its lease, the coordinator
//! partitioned from every worker, and a worker's host gone all end with the clean report; TLS and the
//! token work with the coordinator on its namespace's address, verified by IP and by name.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tresnet_tests::{
    Watched, assert_same_report, coordinator_run, journal_records, run_ok, sample_dataset_size,
    summary, wait_until, worker_command,
};

/// Shards of 2 samples and batches of 2 in every run here, so their reports compare exactly.
const SHARDING: [&str; 4] = ["--shard-size", "2", "--batch-size", "2"];
/// Bound on anything that involves a whole run on a loaded 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// The runs' lease timeout: short, so that a partition outlives it within a quick test.
const LEASE_TIMEOUT: Duration = Duration::from_millis(2000);
/// Workers' RPC deadline: they notice a partition within about this long and start retrying.
const RPC_TIMEOUT_MS: &str = "1000";
/// Workers' patience: far longer than any partition here, so they wait the partition out.
const PATIENCE_MS: &str = "60000";
/// Each worker sleeps this long per batch, so that shards are in flight when the network breaks.
const BATCH_DELAY_MS: &str = "400";
/// The test subnet, used only inside the namespaces a test creates.
const SUBNET: &str = "10.231.0";

/// One case at a time: each runs three processes on the same two cores, and the partitions are timed.
static SERIAL: Mutex<()> = Mutex::new(());
static NETS: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip args`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hosts in namespaces of their own on one bridge (itself in a namespace), deleted when dropped.
struct Net {
    prefix: String,
    hosts: Vec<&'static str>,
}

impl Net {
    /// `hosts` get 10.231.0.1, .2, ... in that order; `None` (reason printed) where namespaces cannot be made.
    fn new(hosts: &[&'static str]) -> Option<Net> {
        let prefix = format!(
            "tresnet-{}-{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let sw = format!("{prefix}-sw");
        let probe = Command::new("ip")
            .args(["netns", "add", &sw])
            .output()
            .unwrap();
        if !probe.status.success() {
            eprintln!(
                "SKIPPED: cannot create network namespaces (needs root): {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            );
            return None;
        }
        // Made before anything else can fail, so that its Drop deletes what was created.
        let mut net = Net {
            prefix,
            hosts: Vec::new(),
        };
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, host) in hosts.iter().enumerate() {
            let ns = net.ns(host);
            ip(&["netns", "add", &ns]);
            net.hosts.push(host);
            let port = format!("{host}0");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{SUBNET}.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Some(net)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn addr(&self, host: &str) -> String {
        let i = self.hosts.iter().position(|h| *h == host).unwrap();
        format!("{SUBNET}.{}", i + 1)
    }

    /// `inner` (program, arguments, environment) run inside `host`'s namespace.
    fn exec(&self, host: &str, inner: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)])
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// Cuts (`false`) or restores (`true`) `host`'s link to the bridge: a partition without a reset.
    fn link(&self, host: &str, up: bool) {
        let sw = format!("{}-sw", self.prefix);
        let port = format!("{host}0");
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }

    /// The host is gone: its cable first (no FIN or RST reaches anyone), then `process`, then the
    /// namespace.
    fn destroy(&self, host: &str, process: &mut Watched) {
        let sw = format!("{}-sw", self.prefix);
        ip(&["-n", &sw, "link", "del", &format!("{host}0")]);
        process.child.kill().unwrap();
        process.child.wait().unwrap();
        ip(&["netns", "del", &self.ns(host)]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in self
            .hosts
            .iter()
            .map(|h| h.to_string())
            .chain(["sw".into()])
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}-{host}", self.prefix)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A clean run of the sample dataset with one local worker: the report every faulted run must equal.
fn clean_run(dir: &Path) -> std::path::PathBuf {
    let clean = dir.join("clean");
    let mut args = vec!["--local-workers", "1"];
    args.extend(SHARDING);
    run_ok(coordinator_run(&clean, &args));
    clean
}

/// The coordinator in namespace "coord", listening on its own (non-loopback) address; returns it with
/// the gRPC URL workers use.
fn coordinator(net: &Net, run: &Path, extra: &[&str]) -> (Watched, String) {
    let listen = format!("{}:0", net.addr("coord"));
    let lease = LEASE_TIMEOUT.as_millis().to_string();
    let mut args = vec![
        "--local-workers",
        "0",
        "--listen",
        &listen,
        "--lease-timeout-ms",
        &lease,
    ];
    args.extend(SHARDING);
    args.extend(extra);
    let coord = Watched::spawn(
        net.exec("coord", &coordinator_run(run, &args)),
        "coordinator",
    );
    let addr = coord
        .wait_for("coordinator listening on ")
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(
        addr.starts_with(&format!("{}:", net.addr("coord"))),
        "bound {addr}, not the namespace's address"
    );
    (coord, format!("http://{addr}"))
}

/// A worker in `host`'s namespace with short deadlines and long patience.
fn worker(net: &Net, host: &str, url: &str) -> Watched {
    let mut c = worker_command(url);
    c.args(["--worker-id", host])
        .args(["--rpc-timeout-ms", RPC_TIMEOUT_MS])
        .args(["--coordinator-patience-ms", PATIENCE_MS])
        .env(tresnet_tests::BATCH_DELAY_ENV, BATCH_DELAY_MS);
    Watched::spawn(net.exec(host, &c), host)
}

/// Waits for the first journaled shard of `run` (work has started), failing if `coord` exits first.
fn wait_for_first_record(coord: &mut Watched, run: &Path) {
    wait_until(RUN_LIMIT, "a first journal record", || {
        assert!(
            coord.child.try_wait().unwrap().is_none(),
            "the run ended before the fault could be injected"
        );
        !journal_records(&run.join("journal")).is_empty()
    });
}

/// The run ended with exit 0 and the clean run's report, every sample counted once; returns its
/// scheduling counters.
fn assert_clean_end(
    coord: &mut Watched,
    clean: &Path,
    run: &Path,
    what: &str,
) -> serde_json::Value {
    let status = coord.wait_exit(RUN_LIMIT);
    assert!(
        status.success(),
        "{what}: {status}: {}",
        coord.stderr_at_exit()
    );
    let s = summary(run);
    assert_eq!(s["samples"], sample_dataset_size(), "{what}: {s}");
    assert_eq!(s["failed_samples"], 0, "{what}: {s}");
    assert_eq!(s["bad_samples"], 0, "{what}: {s}");
    assert_same_report(clean, run, what);
    s["scheduling"].clone()
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_worker_partitioned_past_its_lease_is_counted_once() {
    let _one = serial();
    let Some(net) = Net::new(&["coord", "a", "b"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_run(dir.path());
    let run = dir.path().join("run");
    // No speculation: a second copy of a shard then only comes from the partitioned worker's expiry.
    let (mut coord, url) = coordinator(&net, &run, &["--no-speculation"]);
    // The coordinator's address is not reachable from the machine's own network: traffic stays inside.
    let from_outside = std::net::TcpStream::connect_timeout(
        &url["http://".len()..].parse().unwrap(),
        Duration::from_millis(500),
    );
    assert!(
        from_outside.is_err(),
        "{url} answered outside the namespaces"
    );
    let _a = worker(&net, "a", &url);
    let _b = worker(&net, "b", &url);
    wait_for_first_record(&mut coord, &run);
    net.link("a", false);
    std::thread::sleep(LEASE_TIMEOUT * 2);
    net.link("a", true);
    let sched = assert_clean_end(
        &mut coord,
        &clean,
        &run,
        "a worker partitioned past its lease",
    );
    assert!(
        sched["lease_expiries"].as_u64().unwrap() >= 1,
        "no lease of the partitioned worker expired: {sched}"
    );
}

#[test]
fn a_coordinator_partitioned_from_every_worker_completes_once_healed() {
    let _one = serial();
    let Some(net) = Net::new(&["coord", "a", "b"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_run(dir.path());
    let run = dir.path().join("run");
    let (mut coord, url) = coordinator(&net, &run, &[]);
    let a = worker(&net, "a", &url);
    let b = worker(&net, "b", &url);
    wait_for_first_record(&mut coord, &run);
    net.link("coord", false);
    // Several RPC deadlines and longer than a lease: both sides notice.
    std::thread::sleep(LEASE_TIMEOUT * 2);
    net.link("coord", true);
    assert_clean_end(&mut coord, &clean, &run, "the coordinator partitioned away");
    let felt = [&a, &b]
        .iter()
        .map(|w| {
            w.stderr_so_far()
                .matches("coordinator not answering")
                .count()
        })
        .sum::<usize>();
    assert!(felt > 0, "no worker noticed the partition");
}

#[test]
fn a_worker_whose_host_is_gone_has_its_shards_retried() {
    let _one = serial();
    let Some(net) = Net::new(&["coord", "a", "b"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_run(dir.path());
    let run = dir.path().join("run");
    let (mut coord, url) = coordinator(&net, &run, &["--no-speculation"]);
    let mut a = worker(&net, "a", &url);
    let _b = worker(&net, "b", &url);
    wait_for_first_record(&mut coord, &run);
    net.destroy("a", &mut a);
    let sched = assert_clean_end(&mut coord, &clean, &run, "a worker's host gone");
    assert!(
        sched["lease_expiries"].as_u64().unwrap() >= 1,
        "the lost worker's leases never expired: {sched}"
    );
}

/// A CA and a coordinator certificate it signs for `names` (DNS names or IP addresses), as PEM files
/// in `dir`: (CA, certificate, key).
fn pki(dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn tls_and_the_token_work_on_a_non_loopback_address() {
    let _one = serial();
    let Some(net) = Net::new(&["coord", "a", "b"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_run(dir.path());
    let run = dir.path().join("run");
    let coord_ip = net.addr("coord");
    let (ca, cert, key) = pki(dir.path(), &["coordinator.test", &coord_ip]);
    let token = dir.path().join("token");
    std::fs::write(&token, "netns-token").unwrap();
    let (cert, key, ca, token) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
        token.display().to_string(),
    );
    let (mut coord, url) = coordinator(
        &net,
        &run,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--token-file",
            &token,
        ],
    );
    let url = url.replace("http://", "https://");
    let tls_worker = |host: &str, extra: &[&str]| {
        let mut c = worker_command(&url);
        c.args(["--worker-id", host])
            .args(["--tls-ca", &ca, "--token-file", &token])
            .args(extra);
        Watched::spawn(net.exec(host, &c), host)
    };
    // A name the certificate does not carry is refused, across the bridge as on loopback.
    let mut wrong = tls_worker("a", &["--tls-domain", "elsewhere.test"]);
    assert!(!wrong.wait_exit(RUN_LIMIT).success());
    assert!(
        wrong
            .stderr_at_exit()
            .contains("certificate not valid for name \"elsewhere.test\""),
        "{}",
        wrong.stderr_at_exit()
    );
    // One worker verifies the coordinator's IP address, the other its name.
    let mut a = tls_worker("a", &[]);
    let mut b = tls_worker("b", &["--tls-domain", "coordinator.test"]);
    assert_clean_end(&mut coord, &clean, &run, "TLS on the namespace's address");
    // Both handshakes held: each worker heard that the job is over and exited 0 (a refused one exits 1).
    for (w, how) in [(&mut a, "by IP"), (&mut b, "by name")] {
        let status = w.wait_exit(RUN_LIMIT);
        assert!(
            status.success(),
            "the worker verifying {how}: {status}: {}",
            w.stderr_at_exit()
        );
    }
}
