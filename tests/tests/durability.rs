//! Durable means verified: a damaged journal record, or one copied from another job's journal, is
//! refused on resume with an error naming it (local and on S3), or moved into `quarantine/` and
//! recomputed with `--quarantine-corrupt-journal`, ending with the clean run's report; and a full disk
//! while the reports are written leaves the previous ones intact.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tresnet_tests::s3::{BUCKET, S3Server};
use tresnet_tests::{assert_same_report, bin, coordinator_run, run_ok};

/// One local worker, six shards of four samples.
const SHAPE: [&str; 6] = [
    "--local-workers",
    "1",
    "--shard-size",
    "4",
    "--batch-size",
    "2",
];

/// The files [`assert_same_report`] compares, copied from `run` into a fresh `dest`.
fn keep_report(run: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for f in ["summary.json", "predictions.parquet"] {
        std::fs::copy(run.join(f), dest.join(f)).unwrap();
    }
}

/// Flips two bytes inside a record's payload (near its end, well past the envelope's header): the
/// record still decodes, and without a checksum would change a prediction silently.
fn edit_two_bytes(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 12;
    bytes[at] ^= 0x40;
    bytes[at + 1] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "the run should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn damaged_or_foreign_journal_records_are_refused_by_name_or_quarantined_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(coordinator_run(&run, &SHAPE));
    let clean = dir.path().join("clean");
    keep_report(&run, &clean);
    let summary_before = std::fs::read(run.join("summary.json")).unwrap();
    // Another job (another top-k) over the same dataset and shards, whose records a careless copy
    // could mix in.
    let other = dir.path().join("other");
    let mut other_args = SHAPE.to_vec();
    other_args.extend(["--top-k", "3"]);
    run_ok(coordinator_run(&other, &other_args));

    let journal = run.join("journal");
    let damaged = journal.join("shard-00000002.pb");
    let intact = std::fs::read(&damaged).unwrap();
    edit_two_bytes(&damaged);
    let damaged_bytes = std::fs::read(&damaged).unwrap();
    let err = failed(&coordinator_run(&run, &SHAPE).output().unwrap());
    assert!(
        err.contains(&damaged.display().to_string()) && err.contains("checksum does not match"),
        "{err}"
    );
    assert!(err.contains("--quarantine-corrupt-journal"), "{err}");
    // Refused before anything was written: the previous report stands.
    assert_eq!(
        std::fs::read(run.join("summary.json")).unwrap(),
        summary_before
    );

    // A record of the other job under this journal's name for the same shard: intact, but foreign.
    std::fs::write(&damaged, &intact).unwrap();
    let foreign = journal.join("shard-00000004.pb");
    std::fs::copy(other.join("journal/shard-00000004.pb"), &foreign).unwrap();
    let err = failed(&coordinator_run(&run, &SHAPE).output().unwrap());
    assert!(
        err.contains(&foreign.display().to_string()) && err.contains("another job"),
        "{err}"
    );
    std::fs::write(&damaged, &damaged_bytes).unwrap();

    // With the flag both are moved aside, their shards computed again, and the report is the clean one.
    let mut args = SHAPE.to_vec();
    args.push("--quarantine-corrupt-journal");
    let out = run_ok(coordinator_run(&run, &args));
    let log = String::from_utf8_lossy(&out.stderr);
    let quarantine = journal.join("quarantine");
    let moved = names_in(&quarantine);
    assert_eq!(moved.len(), 2, "{moved:?}");
    for name in ["shard-00000002.pb", "shard-00000004.pb"] {
        let q = moved
            .iter()
            .find(|m| m.starts_with(&format!("{name}.")))
            .unwrap_or_else(|| panic!("{name} is not in {}: {moved:?}", quarantine.display()));
        assert!(
            log.contains(&journal.join(name).display().to_string())
                && log.contains(&quarantine.join(q).display().to_string()),
            "the warning does not name {name} and where it went:\n{log}"
        );
        assert!(journal.join(name).is_file(), "{name} was not recomputed");
    }
    // Sorted by name, shard 2's copy comes first.
    assert_eq!(
        std::fs::read(quarantine.join(&moved[0])).unwrap(),
        damaged_bytes,
        "the quarantined record is not the damaged one"
    );
    assert_same_report(&clean, &run, "after quarantining two records");
    // The journal is whole again: a plain rerun verifies every record.
    run_ok(coordinator_run(&run, &SHAPE));
}

/// The same on a journal kept on S3: the damaged object is refused by its URL, then copied under
/// `quarantine/` and deleted, and its shard recomputed into the clean report.
#[test]
fn a_damaged_record_of_an_s3_journal_is_refused_by_url_or_quarantined() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let prefix = "runs/d/journal";
    let journal = format!("s3://{BUCKET}/{prefix}");
    let run_with = |run: &Path, extra: &[&str]| {
        let mut args = SHAPE.to_vec();
        args.extend(["--journal", &journal]);
        args.extend(extra);
        let mut cmd = coordinator_run(run, &args);
        cmd.envs(server.env());
        cmd
    };
    let run = dir.path().join("run");
    run_ok(run_with(&run, &[]));
    let clean = dir.path().join("clean");
    keep_report(&run, &clean);

    // s3s-fs keeps object `s3://BUCKET/key` as the file `root/BUCKET/key`.
    let folder = server.root().join(BUCKET).join(prefix);
    let object = folder.join("shard-00000001.pb");
    edit_two_bytes(&object);
    let damaged_bytes = std::fs::read(&object).unwrap();
    let err = failed(&run_with(&run, &[]).output().unwrap());
    let url = format!("{journal}/shard-00000001.pb");
    assert!(
        err.contains(&url) && err.contains("checksum does not match"),
        "{err}"
    );

    let out = run_ok(run_with(&run, &["--quarantine-corrupt-journal"]));
    let log = String::from_utf8_lossy(&out.stderr);
    let moved = names_in(&folder.join("quarantine"));
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(moved[0].starts_with("shard-00000001.pb."), "{moved:?}");
    assert!(
        log.contains(&url) && log.contains(&format!("{journal}/quarantine/{}", moved[0])),
        "the warning does not name the record and where it went:\n{log}"
    );
    assert_eq!(
        std::fs::read(folder.join("quarantine").join(&moved[0])).unwrap(),
        damaged_bytes
    );
    assert!(object.is_file(), "shard 1 was not recomputed");
    assert_same_report(&clean, &run, "after quarantining an S3 record");
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped (also when the test panics).
struct Tmpfs {
    at: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root, or no CAP_SYS_ADMIN in this container).
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let at = parent.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Tmpfs {
            at,
            _parent: parent,
        })
    }

    /// Fills the file system: writes to a filler file until the kernel says it is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.at.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
                    break;
                }
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Reports are written to a temporary name and renamed: with the disk full, `report` (which rewrites
/// every derived file) and a rerun of `run` (which rewrites the stored ones too) fail naming the file
/// and ENOSPC, and every previous file is left byte for byte, with no temporary behind.
#[test]
fn a_full_disk_leaves_the_previous_reports_intact() {
    let Some(disk) = Tmpfs::mount("64m") else {
        eprintln!("skipped: mounting a tmpfs needs root (the atomic-write unit tests still run)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made");
    run_ok(coordinator_run(&made, &SHAPE));
    let run = disk.at.join("run");
    copy_dir(&made, &run);
    let report = |run: &Path| {
        let mut c = Command::new(bin("tresnet-coordinator"));
        c.arg("report").arg(run);
        c
    };
    // On a disk with room, both rewrite the run directory fine.
    run_ok(report(&run));
    let rerun = || {
        let mut c = coordinator_run(&run, &SHAPE);
        // The workers' dataset cache stays off the small disk.
        c.env(
            "TRESNET_DATASET_CACHE_DIR",
            dir.path().join("dataset-cache"),
        );
        c
    };
    run_ok(rerun());
    let before: Vec<(String, Vec<u8>)> = names_in(&run)
        .into_iter()
        .filter(|n| run.join(n).is_file())
        .map(|n| {
            let bytes = std::fs::read(run.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    assert!(before.iter().any(|(n, _)| n == "summary.json"));

    disk.fill();
    let err = failed(&report(&run).output().unwrap());
    assert!(
        err.contains(&run.join("summary.json").display().to_string())
            && err.contains("No space left on device"),
        "{err}"
    );
    let err = failed(&rerun().output().unwrap());
    assert!(
        err.contains(&run.display().to_string()) && err.contains("No space left on device"),
        "{err}"
    );
    for (name, bytes) in &before {
        assert_eq!(
            &std::fs::read(run.join(name)).unwrap(),
            bytes,
            "{name} changed on a full disk"
        );
    }
    let files_now: Vec<String> = names_in(&run)
        .into_iter()
        .filter(|n| run.join(n).is_file())
        .collect();
    assert_eq!(
        files_now,
        before.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "a temporary file was left behind"
    );
}
