//! Slurm, for real: ops/slurm/tresnet-eval.sbatch submitted with `sbatch` to a Slurm cluster that
//! ops/slurm_cluster.sh starts on this machine (munged, slurmctld and two slurmd nodes, no systemd):
//! the job's run directory equals a local run's; a worker step cancelled mid-run and the whole job
//! requeued mid-run both end with the clean report.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tresnet_tests::{
    assert_same_report, bin, coordinator_run, journal_records, run_ok, sample_dataset_size,
    sample_images, summary, tresnet_m_weights, wait_until,
};

/// Shards of 2 samples and batches of 2 in every run here, so their reports compare exactly.
const SHARDING: [&str; 4] = ["--shard-size", "2", "--batch-size", "2"];
/// Bound on one Slurm job (two debug-build workers loading TResNet-M, 24 images) on a loaded 2-core
/// machine; a clean job takes about 40 s.
const JOB_LIMIT: Duration = Duration::from_secs(240);
/// Lease timeout of the jobs here: a cancelled worker's shards come back within it, short so the
/// test is quick, long enough for a shard of a slowed worker (300 ms per batch) to renew its lease.
const LEASE_TIMEOUT_MS: &str = "3000";

/// One case at a time: each runs a two-node job on the same two cores, and the clean run is shared.
static SERIAL: Mutex<()> = Mutex::new(());
static CLEAN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A clean local run (two local workers) of the job the Slurm cases submit.
fn clean_run() -> &'static Path {
    &CLEAN
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let clean = dir.path().join("clean");
            let mut args = vec!["--local-workers", "2"];
            args.extend(SHARDING);
            run_ok(coordinator_run(&clean, &args));
            (dir, clean)
        })
        .1
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/slurm_cluster.sh")
}

fn sbatch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/slurm/tresnet-eval.sbatch")
}

/// A Slurm cluster of its own (ops/slurm_cluster.sh start), stopped when dropped, also on panic.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts one, or returns `None` (with the reason printed) on a machine that cannot run Slurm.
    fn start() -> Option<Cluster> {
        let installed = Command::new("sh")
            .args(["-c", "command -v slurmctld && command -v munged"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !installed && !root {
            eprintln!(
                "SKIPPED: Slurm is not installed and only root can install it (source ops/slurm_cluster.sh as root)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(cluster_script())
            .arg("start")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let cluster = Cluster { dir };
        assert!(
            out.status.success(),
            "ops/slurm_cluster.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }

    /// `prog` (sbatch, squeue, scontrol, scancel) talking to this cluster.
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", self.dir.path().join("slurm.conf"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `prog args` against this cluster and returns its stdout; panics naming it if it fails.
    fn query(&self, prog: &str, args: &[&str]) -> String {
        let out = self.cmd(prog).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sbatch --wait` of the README's script with `run` flags for `out`, started in the background
    /// (its job is the only one in this cluster, so `squeue` finds it).
    /// `batch_delay_ms`: the workers' per-batch delay test hook; sbatch and srun hand the variable on to
    /// every worker step.
    fn submit(&self, out: &Path, batch_delay_ms: Option<&str>, extra: &[&str]) -> Submitted {
        let logs = out.with_extension("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut c = self.cmd("sbatch");
        c.arg("--wait")
            .arg(format!("--output={}/job-%j.out", logs.display()))
            .arg(sbatch_script())
            .arg("run")
            .args(["--model", "tresnet_m", "--weights"])
            .arg(tresnet_m_weights())
            .arg("--data")
            .arg(sample_images())
            .args(["--format", "imagefolder", "--resolution", "64"])
            .args([
                "--num-classes",
                "1000",
                "--lease-timeout-ms",
                LEASE_TIMEOUT_MS,
            ])
            .args(SHARDING)
            .args(extra)
            .arg("--out")
            .arg(out)
            .current_dir(&logs)
            .env(
                "TRESNET_BIN_DIR",
                bin("tresnet-coordinator").parent().unwrap(),
            )
            .env("TRESNET_WORKER_ARGS", "--threads 1")
            .env_remove("TRESNET_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match batch_delay_ms {
            Some(ms) => c.env(tresnet_tests::BATCH_DELAY_ENV, ms),
            None => c.env_remove(tresnet_tests::BATCH_DELAY_ENV),
        };
        let child = c.spawn().expect("start sbatch");
        Submitted { child, logs }
    }

    /// The id of the one job in this cluster, waiting (bounded) for it to appear.
    fn job_id(&self) -> String {
        let mut id = String::new();
        wait_until(Duration::from_secs(30), "the job in squeue", || {
            id = self.query("squeue", &["-h", "-o", "%i"]).trim().to_string();
            !id.is_empty()
        });
        id
    }

    /// The running worker steps of `job` (`JOB.STEP` ids), waiting (bounded) until there are two.
    fn worker_steps(&self, job: &str) -> Vec<String> {
        let mut steps = Vec::new();
        wait_until(JOB_LIMIT, "two worker steps", || {
            steps = self
                .query("squeue", &["-h", "-s", "-j", job, "-o", "%i %j"])
                .lines()
                .filter(|l| l.ends_with(" tresnet-worker"))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect();
            steps.len() == 2
        });
        steps
    }

    /// A job field (`JobState`, `Reason`, `Restarts`) as `scontrol show job` prints it.
    fn job_field(&self, job: &str, field: &str) -> String {
        let text = self.query("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their slurmstepd processes outlive slurmd), then the daemons, by PID.
        let _ = self
            .cmd("scancel")
            .arg("--full")
            .arg("--user=root")
            .status();
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until {
            match self.cmd("squeue").args(["-h", "-o", "%i"]).output() {
                Ok(o) if o.status.success() && !o.stdout.is_empty() => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                _ => break,
            }
        }
        let _ = Command::new("bash")
            .arg(cluster_script())
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .status();
    }
}

/// A running `sbatch --wait`.
struct Submitted {
    child: std::process::Child,
    logs: PathBuf,
}

impl Submitted {
    /// Everything the job wrote to its output files (every attempt appends to them).
    fn job_output(&self) -> String {
        let mut text = String::new();
        for e in std::fs::read_dir(&self.logs).unwrap().flatten() {
            text += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
        text
    }

    /// Waits (bounded) for `sbatch --wait` to return, and asserts that the job exited 0.
    fn wait_success(mut self) -> String {
        let until = Instant::now() + JOB_LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                panic!(
                    "the job did not end within {JOB_LIMIT:?}:\n{}",
                    self.job_output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        let output = self.job_output();
        assert!(
            status.success(),
            "sbatch --wait: {status}\n{err}\njob output:\n{output}"
        );
        output
    }
}

impl Drop for Submitted {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The job's report accounts for every sample once and equals the clean local run's.
fn assert_clean_report(run: &Path, what: &str) {
    let s = summary(run);
    assert_eq!(s["samples"], sample_dataset_size(), "{what}: {s}");
    assert_eq!(s["failed_samples"], 0, "{what}: {s}");
    assert_eq!(s["bad_samples"], 0, "{what}: {s}");
    assert_same_report(clean_run(), run, what);
}

/// Waits until the job has journaled its first shard (work has started).
fn wait_for_first_record(run: &Path) {
    wait_until(JOB_LIMIT, "a first journal record", || {
        !journal_records(&run.join("journal")).is_empty()
    });
}

#[test]
fn the_readme_sbatch_equals_a_local_run() {
    let _one = serial();
    clean_run();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("slurm");
    let output = cluster.submit(&run, None, &[]).wait_success();
    assert_clean_report(&run, "sbatch on two nodes");
    // One worker per node, each its own step, on both nodes; the token is per job and never printed.
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("outcome.json")).unwrap()).unwrap();
    let workers = outcome["workers"].to_string();
    for node in ["n1-", "n2-"] {
        assert!(workers.contains(node), "no worker on {node}: {workers}");
    }
    assert!(output.contains("coordinator at http://"), "{output}");
    assert!(!output.contains("TRESNET_TOKEN="), "{output}");
}

#[test]
fn a_cancelled_worker_step_leaves_the_clean_report() {
    let _one = serial();
    clean_run();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("slurm");
    let job = cluster.submit(&run, Some("300"), &[]);
    let id = cluster.job_id();
    let steps = cluster.worker_steps(&id);
    wait_for_first_record(&run);
    cluster.query("scancel", &[&steps[0]]);
    let output = job.wait_success();
    assert!(
        output.contains(&format!("STEP {} ON", steps[0])) && output.contains("CANCELLED"),
        "the step was not cancelled:\n{output}"
    );
    assert_clean_report(&run, "after scancel of one worker step");
}

#[test]
fn a_requeued_job_resumes_to_the_clean_report() {
    let _one = serial();
    clean_run();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("slurm");
    let job = cluster.submit(&run, Some("300"), &["--drain-timeout-ms", "5000"]);
    let id = cluster.job_id();
    cluster.worker_steps(&id);
    wait_for_first_record(&run);
    let before: Vec<(PathBuf, SystemTime)> = journal_records(&run.join("journal"))
        .into_iter()
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    cluster.query("scontrol", &["requeue", &id]);
    // Slurm holds a requeued job back (BeginTime, about two minutes); an operator may release it.
    wait_until(Duration::from_secs(60), "the job requeued", || {
        cluster.job_field(&id, "JobState") == "PENDING"
    });
    cluster.query(
        "scontrol",
        &["update", &format!("JobId={id}"), "StartTime=now"],
    );
    let output = job.wait_success();
    assert_eq!(cluster.job_field(&id, "Restarts"), "1", "{output}");
    assert!(output.contains("attempt 1"), "{output}");
    assert!(
        output.contains("run interrupted by SIGTERM"),
        "the first attempt did not drain:\n{output}"
    );
    assert_clean_report(&run, "after scontrol requeue");
    // The second attempt resumed from the journal: records from before the requeue were not rewritten.
    for (p, t) in before {
        let now = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(now, t, "{} was written again", p.display());
    }
}
