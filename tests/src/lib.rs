//! Helpers for the cross-process tests: locating the built binaries and generated fixtures, running
//! the coordinator, and reading its run directory.

pub mod azurite;
pub mod fault_proxy;
pub mod gcs;
pub mod s3;
pub mod watchdog;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use polars::prelude::*;

/// The worker's per-batch delay test hook (milliseconds; the tests' workers have it, see
/// `worker/src/test_hooks.rs`): set on a coordinator, it reaches its local workers too.
pub use tresnet_worker::test_hooks::BATCH_DELAY_ENV;

/// A binary of this workspace, built next to the test executable (`cargo test --workspace
/// --all-targets`, as ops/test.sh runs it, builds them all), or in `TRESNET_BIN_DIR` when set (to test
/// release builds, or binaries copied away from a target directory that other checkouts share).
pub fn bin(name: &str) -> PathBuf {
    // Every cross-process test comes here first: it runs under the watchdog's deadline from now on.
    watchdog::enroll();
    // Checkouts sharing one target directory overwrite each other's binaries; this pins a copy.
    if let Some(dir) = std::env::var_os("TRESNET_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run the tests through ops/test.sh (cargo test --workspace --all-targets)",
        p.display()
    );
    p
}

fn env_dir(var: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests through ops/test.sh, which generates the fixtures")
    });
    assert!(
        dir.join("COMPLETE").exists(),
        "{} is incomplete; rerun ops/test.sh",
        dir.display()
    );
    dir
}

/// Every file below `root`, recursively.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .flatten()
    {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Waits until `child` accepts connections on 127.0.0.1:`port`; when it exits first or `limit` passes,
/// kills and reaps it and returns false (the caller retries on another port or reports the failure).
pub fn wait_listening(child: &mut Child, port: u16, limit: Duration) -> bool {
    let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies the folder tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Samples in the sample ImageFolder (every file is one image).
pub fn sample_dataset_size() -> u64 {
    files_under(&sample_images()).len() as u64
}

/// Seeded model fixtures (ops/reference/gen_model_fixtures.py).
pub fn model_fixtures() -> PathBuf {
    env_dir("TRESNET_FIXTURES")
}

/// The ImageFolder of real photos (ops/reference/make_sample_dataset.py).
pub fn sample_images() -> PathBuf {
    env_dir("TRESNET_SAMPLE_DATA").join("images")
}

pub fn tresnet_m_weights() -> PathBuf {
    model_fixtures().join("tresnet_m_224").join("timm.pth")
}

/// `tresnet-coordinator run` with the sample dataset and seeded TResNet-M at 64 px, plus `extra` args.
pub fn coordinator_run(out: &Path, extra: &[&str]) -> Command {
    coordinator_run_on(&sample_images(), "imagefolder", out, extra)
}

/// Like [`coordinator_run`] on another dataset location and format.
pub fn coordinator_run_on(data: &Path, format: &str, out: &Path, extra: &[&str]) -> Command {
    coordinator_run_with(&tresnet_m_weights(), data, format, out, extra)
}

/// Like [`coordinator_run_on`] with another TResNet-M checkpoint.
pub fn coordinator_run_with(
    weights: &Path,
    data: &Path,
    format: &str,
    out: &Path,
    extra: &[&str],
) -> Command {
    let mut c = coordinator_run_unsized(weights, data, format, out, extra);
    // The seeded model has a 1000-class head; the sample folders map to its first classes.
    c.args(["--num-classes", "1000"]);
    c
}

/// `run` of a TResNet-M checkpoint without `--num-classes`: the class count is what the dataset or
/// the checkpoint's head says.
pub fn coordinator_run_unsized(
    weights: &Path,
    data: &Path,
    format: &str,
    out: &Path,
    extra: &[&str],
) -> Command {
    let mut c = coordinator_command("run");
    c.args(["--model", "tresnet_m", "--weights"])
        .arg(weights)
        .arg("--data")
        .arg(data)
        .args([
            "--format",
            format,
            "--resolution",
            "64",
            "--worker-threads",
            "1",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        // Each run's workers get a dataset cache of their own (next to its run directory), so that no
        // test reads objects another test (or an earlier test run) cached.
        .env("TRESNET_DATASET_CACHE_DIR", dataset_cache_of(out));
    c
}

/// A `tresnet-worker` serving the coordinator at `url` with one decode thread: how every test starts a
/// worker process of its own (it adds `--worker-id` and its flags, then spawns it, in a network
/// namespace or not). It takes the fixed layout rule instead of timing the candidates, so that two
/// runs compare bit for bit (a measured choice may differ between runs, within the parity bound)
/// whatever the environment the tests run in exports, and it ignores the environment's token.
pub fn worker_command(url: &str) -> Command {
    let mut c = Command::new(bin("tresnet-worker"));
    watchdog::mark(&mut c);
    c.args(["--coordinator", url, "--threads", "1"])
        .env("TRESNET_MEASURE_LAYOUT", "false")
        .env_remove("TRESNET_TOKEN")
        .stdin(Stdio::null());
    c
}

/// A `tresnet-coordinator SUBCOMMAND` whose local workers are this build's, take the fixed layout rule
/// (see [`worker_command`]) and ignore the environment's token: how tests start a coordinator that
/// starts workers, whatever the environment the tests run in exports.
pub fn coordinator_command(subcommand: &str) -> Command {
    let mut c = Command::new(bin("tresnet-coordinator"));
    watchdog::mark(&mut c);
    c.arg(subcommand)
        .env("TRESNET_WORKER_BIN", bin("tresnet-worker"))
        .env("TRESNET_MEASURE_LAYOUT", "false")
        .env_remove("TRESNET_TOKEN")
        .stdin(Stdio::null());
    c
}

/// A sweep file for the tests: `tresnet_m` checkpoints on one dataset of 1000 classes, over a grid of
/// resolutions and crop modes, with `[run]` settings (flag names as keys, TOML values). The one
/// writer of the sweep TOML the tests read, so a change of the format is made once.
pub struct SweepToml {
    out: Option<String>,
    weights: Vec<(PathBuf, String)>,
    dataset: (String, String),
    resolutions: Vec<u32>,
    crop_modes: Vec<String>,
    run: Vec<(String, String)>,
}

impl SweepToml {
    /// The seeded `tresnet_m` checkpoint on dataset `name` at `data` (a path or URL), at resolution
    /// 64, output under `runs`, one local worker with one decode thread.
    pub fn new(name: &str, data: &str) -> Self {
        Self {
            out: Some("runs".into()),
            weights: vec![(tresnet_m_weights(), "seeded".into())],
            dataset: (name.into(), data.into()),
            resolutions: vec![64],
            crop_modes: Vec::new(),
            run: vec![
                ("local-workers".into(), "1".into()),
                ("worker-threads".into(), "1".into()),
            ],
        }
    }

    /// Checkpoints with their labels, in place of the seeded one.
    pub fn weights(mut self, weights: &[(&Path, &str)]) -> Self {
        self.weights = weights
            .iter()
            .map(|(p, l)| (p.to_path_buf(), l.to_string()))
            .collect();
        self
    }

    /// No `out` key: the sweep writes where `--out` says.
    pub fn no_out(mut self) -> Self {
        self.out = None;
        self
    }

    pub fn resolutions(mut self, resolutions: &[u32]) -> Self {
        self.resolutions = resolutions.to_vec();
        self
    }

    pub fn crop_modes(mut self, modes: &[&str]) -> Self {
        self.crop_modes = modes.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Sets `[run]`'s `key` to the TOML `value` (`"4"`, `"true"`, `"[\"--flag\"]"`), replacing it if set.
    pub fn run(mut self, key: &str, value: &str) -> Self {
        match self.run.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.into(),
            None => self.run.push((key.into(), value.into())),
        }
        self
    }

    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        if let Some(out) = &self.out {
            let _ = writeln!(t, "out = {out:?}");
        }
        let _ = writeln!(t, "resolutions = {:?}", self.resolutions);
        if !self.crop_modes.is_empty() {
            let _ = writeln!(t, "crop_modes = {:?}", self.crop_modes);
        }
        let weights: Vec<String> = self
            .weights
            .iter()
            .map(|(p, l)| format!("{{ path = {:?}, label = {l:?} }}", p.display().to_string()))
            .collect();
        let _ = writeln!(
            t,
            "\n[[model]]\nname = \"tresnet_m\"\nweights = [{}]",
            weights.join(", ")
        );
        let (name, data) = &self.dataset;
        let _ = writeln!(
            t,
            "\n[[dataset]]\nname = {name:?}\ndata = {data:?}\nnum_classes = 1000\n\n[run]"
        );
        for (k, v) in &self.run {
            let _ = writeln!(t, "{k} = {v}");
        }
        t
    }

    /// Writes the file as `dir/sweep.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let file = dir.join("sweep.toml");
        std::fs::write(&file, self.text()).unwrap();
        file
    }
}

/// The dataset cache folder [`coordinator_run_on`] gives the workers of the run in `out`.
pub fn dataset_cache_of(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy());
    out.with_file_name(format!("{name}.dataset-cache"))
}

/// Starts a coordinator with `--listen 127.0.0.1:0` and returns it with the address it bound.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    watchdog::mark(&mut cmd);
    cmd.args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("start coordinator");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[coordinator] {line}");
            if let Some(rest) = line.strip_prefix("coordinator listening on ") {
                let addr = rest
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("coordinator did not report its address");
    (child, addr)
}

pub fn summary(run: &Path) -> serde_json::Value {
    let p = run.join("summary.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Per sample key: index, top-k classes and top-k logits from `predictions.parquet`.
pub type Predictions = BTreeMap<String, (u64, Vec<u32>, Vec<f32>)>;

pub fn predictions(run: &Path) -> Predictions {
    let f = std::fs::File::open(run.join("predictions.parquet")).unwrap();
    let df = ParquetReader::new(f).finish().unwrap();
    let index = df.column("index").unwrap().u64().unwrap().clone();
    let key = df.column("key").unwrap().str().unwrap().clone();
    let ti = df.column("topk_indices").unwrap().list().unwrap().clone();
    let tl = df.column("topk_logits").unwrap().list().unwrap().clone();
    let mut out = BTreeMap::new();
    for i in 0..df.height() {
        let classes: Vec<u32> = ti
            .get_as_series(i)
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        let logits: Vec<f32> = tl
            .get_as_series(i)
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        out.insert(
            key.get(i).unwrap().to_string(),
            (index.get(i).unwrap(), classes, logits),
        );
    }
    out
}

/// Everything in the report that must not depend on how the run got there (kills, restarts).
pub fn assert_same_report(clean: &Path, other: &Path, what: &str) {
    let (a, b) = (summary(clean), summary(other));
    for field in [
        "samples",
        "correct1",
        "correct5",
        "bad_samples",
        "failed_samples",
        "top1",
        "top5",
        "nll",
        "ece",
    ] {
        assert_eq!(a[field], b[field], "{what}: {field} differs");
    }
    assert_eq!(
        predictions(clean),
        predictions(other),
        "{what}: predictions differ"
    );
}

pub fn run_ok(mut cmd: Command) -> std::process::Output {
    // Past the test's deadline the watchdog kills it, and the failure below prints what it wrote.
    watchdog::mark(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "coordinator failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The TCP ports process `pid` listens on: its socket descriptors matched against the kernel's tables
/// (Linux). For the listeners of processes that share one stderr, whose announcements may interleave.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        for f in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            const LISTEN: &str = "0A";
            if f.len() > 9 && f[3] == LISTEN && inodes.contains(f[9]) {
                let port = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A child process whose stderr is echoed (prefixed with its name) and remembered, so a test can wait
/// for a line it prints (a bound address, say).
pub struct Watched {
    pub child: Child,
    seen: std::sync::Mutex<(Vec<String>, mpsc::Receiver<String>)>,
}

impl Watched {
    pub fn spawn(mut cmd: Command, name: &str) -> Watched {
        watchdog::mark(&mut cmd);
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // The watchdog prints it if the test outlives its deadline.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        watchdog::track(child.id(), name, log.clone());
        let name = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        Watched {
            child,
            seen: std::sync::Mutex::new((Vec::new(), rx)),
        }
    }

    /// The rest of the first stderr line that starts with `prefix`, waiting up to a minute for it.
    pub fn wait_for(&self, prefix: &str) -> String {
        let mut g = self.seen.lock().unwrap();
        let (seen, rx) = &mut *g;
        if let Some(l) = seen.iter().find(|l| l.starts_with(prefix)) {
            return l[prefix.len()..].to_string();
        }
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
            seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    /// Moves every line printed so far (waiting up to `linger` for more) into the remembered ones, and
    /// returns them all, one per line.
    fn collect(&self, linger: Duration) -> String {
        let mut g = self.seen.lock().unwrap();
        let (seen, rx) = &mut *g;
        let until = Instant::now() + linger;
        while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            seen.push(line);
        }
        seen.join("\n")
    }

    /// Everything it has printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.collect(Duration::ZERO)
    }

    /// Everything it printed on stderr, once it has exited: waits (up to a few seconds) for the pipe to
    /// close, which it does when the process and any children that share its stderr are gone.
    pub fn stderr_at_exit(&self) -> String {
        self.collect(Duration::from_secs(5))
    }

    /// The first stderr line containing `needle`, waiting up to `limit` for it.
    pub fn wait_for_line_containing(&self, needle: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            if let Some(l) = self.stderr_so_far().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < until,
                "no stderr line containing {needle:?} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its exit status, waiting up to `limit` for it.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "process {} did not exit within {limit:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `host:port` printed by a `--metrics-listen` listener.
    pub fn metrics_addr(&self) -> String {
        self.wait_for(tresnet_common::observability::LISTENING_PREFIX)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over plain HTTP/1.1: (status code, body), or `None` if nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    // axum answers small bodies with Content-Length, never chunked, so the body is the rest.
    Some((code, body.to_string()))
}

/// The value of `series` (a metric name with its `{labels}`, if any) in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of the metric family `name` (any labels) in a Prometheus text exposition,
/// or `None` if it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else {
                rest
            };
            // Not a longer name that starts with this one.
            value.starts_with(' ').then(|| value.trim().parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Waits until `progress()` (journaled shards, say) reaches `at_least` while the run is still going,
/// then SIGKILLs the coordinator `child` and its worker processes: a crash in the middle of a run.
/// Returns the progress seen at the kill.
pub fn kill_run_midway(child: &mut Child, at_least: usize, progress: impl Fn() -> usize) -> usize {
    let start = Instant::now();
    let seen = loop {
        let n = progress();
        if n >= at_least {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let workers = children_of(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    for w in workers {
        let _ = Command::new("kill").args(["-9", &w.to_string()]).status();
    }
    seen
}

/// A port on 127.0.0.1 that was free a moment ago, for a process that must be told its address before
/// the one that listens on it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shard records (`*.pb`) in a local journal folder.
pub fn journal_records(journal: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(journal)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pb"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The shard record in a journal file, out of its `JournalRecord` envelope (not verified: the
/// coordinator does that; tests read what it wrote).
pub fn read_journal_record(
    path: &Path,
) -> Result<tresnet_common::protocol::pb::ShardRecord, String> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let sealed = tresnet_common::protocol::pb::JournalRecord::decode(bytes.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tresnet_common::protocol::pb::ShardRecord::decode(sealed.payload.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Polls `cond` every 50 ms until it holds; fails the test naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends the signal `name` (as `kill -s` spells it: TERM, INT, STOP, CONT, KILL) to `pid`.
pub fn send_signal(pid: u32, name: &str) {
    let st = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -s {name} {pid} failed");
}

/// Whether process `pid` is gone: no longer there, or a zombie that nothing has reaped (an orphan's
/// new parent in a container may never reap it).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// A finished command's stdout then stderr, for assertion messages and searches.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
