//! The harness's test watchdog (tests/src/watchdog.rs) on processes that never end: past the test's
//! deadline it kills them, so the test's waits return, and prints their logs; a test's processes are
//! found whether the harness watched them or they only carry its mark.

use std::process::Command;
use std::time::{Duration, Instant};

use tresnet_tests::{Watched, watchdog};

/// Deadline of the tests here: long enough for the processes to start and print.
const DEADLINE: Duration = Duration::from_secs(3);
/// Their waits give up after this: the watchdog must have acted well before.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_watched_process_past_the_deadline_is_killed_and_its_log_printed() {
    watchdog::set_deadline(DEADLINE);
    let start = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hung-worker-says-hello >&2; exec sleep 600"]);
    let mut w = Watched::spawn(cmd, "hung");
    w.wait_for("hung-worker-says-hello");
    let status = w.wait_exit(WAIT);
    assert!(!status.success(), "{status}");
    assert!(
        start.elapsed() < WAIT / 2,
        "killed after {:?}",
        start.elapsed()
    );
    let reports = watchdog::reports();
    let mine = reports
        .iter()
        .find(|r| r.contains("a_watched_process_past_the_deadline"))
        .unwrap_or_else(|| panic!("{reports:?}"));
    assert!(
        mine.contains("sleep 600") && mine.contains("[hung] hung-worker-says-hello"),
        "{mine}"
    );
    // The other test's process is not this one's.
    assert!(!mine.contains("partial-output"), "{mine}");
}

#[test]
fn a_marked_process_run_to_completion_is_killed_at_the_deadline() {
    watchdog::set_deadline(DEADLINE);
    let start = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo partial-output; exec sleep 600"]);
    watchdog::mark(&mut cmd);
    // `output()` waits for the end: only the watchdog can bring it.
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        start.elapsed() < WAIT / 2,
        "killed after {:?}",
        start.elapsed()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partial-output\n");
}

/// Set only by [`a_test_hanging_without_processes_fails_its_binary`] for the run of itself it starts.
const SELF_TEST_ENV: &str = "TRESNET_WATCHDOG_SELF_TEST";

/// Hangs (without any process to kill) when [`SELF_TEST_ENV`] is set; otherwise returns at once.
#[test]
#[ignore = "run by a_test_hanging_without_processes_fails_its_binary"]
fn hangs_without_processes() {
    if std::env::var_os(SELF_TEST_ENV).is_none() {
        return;
    }
    watchdog::enroll();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_test_hanging_without_processes_fails_its_binary() {
    let start = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "hangs_without_processes"])
        .env(SELF_TEST_ENV, "1")
        .env(watchdog::DEADLINE_ENV, "1")
        .env(watchdog::GRACE_ENV, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{err}");
    assert!(start.elapsed() < WAIT, "exited after {:?}", start.elapsed());
    assert!(
        err.contains("hangs_without_processes has run for")
            && err.contains("did not end within 1s"),
        "{err}"
    );
}
