//! A deadline for every cross-process test: no test can hang CI. A test enrolls on its first use of
//! the harness ([`crate::bin`], [`crate::Watched`], [`crate::run_ok`]); past its deadline the watchdog
//! prints the test's name and the logs of its processes, then kills them (and their descendants), so
//! that the test's own waits return and it fails with everything it captured; a test still running a
//! grace period later fails the whole test binary (exit 101) after its processes are killed.
//!
//! A process belongs to a test when the harness started it ([`crate::Watched`]) or when it carries the
//! test's mark in its environment ([`mark`], which the harness's command builders apply and which its
//! children inherit, local workers included).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// The deadline of one test unless [`set_deadline`] or `TRESNET_TEST_DEADLINE_S` says otherwise: the
/// longest tests (Slurm jobs, outage cases with reruns) take a few minutes on a loaded 2-core machine;
/// three times that still ends a hung CI job well inside its own limit.
pub const TEST_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Environment variable overriding [`TEST_DEADLINE`], in seconds.
pub const DEADLINE_ENV: &str = "TRESNET_TEST_DEADLINE_S";
/// Environment variable a test's processes carry: the name of the test that started them.
pub const OWNER_ENV: &str = "TRESNET_TEST_OWNER";
/// How long a test whose processes were killed gets to fail on its own before the binary exits: its
/// waits return within seconds once the processes are gone.
const GRACE: Duration = Duration::from_secs(60);
/// Environment variable overriding [`GRACE`], in seconds (the watchdog's own test shortens it).
pub const GRACE_ENV: &str = "TRESNET_TEST_GRACE_S";
/// How often the watchdog looks at the clock: deadlines are minutes, a second late is nothing.
const TICK: Duration = Duration::from_millis(250);
/// The last lines of each process's log printed at a deadline (the test prints all of them).
const LOG_TAIL: usize = 200;

struct Test {
    name: String,
    started: Instant,
    limit: Duration,
    fired: Option<Instant>,
}

struct Tracked {
    pid: u32,
    name: String,
    owner: ThreadId,
    log: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct State {
    tests: HashMap<ThreadId, Test>,
    procs: Vec<Tracked>,
    reports: Vec<String>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(watch)
            .expect("start the test watchdog");
        Mutex::new(State::default())
    })
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    state().lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the test of its thread when the thread ends (the test is over).
struct Enrolled(ThreadId);

impl Drop for Enrolled {
    fn drop(&mut self) {
        let mut st = lock();
        st.tests.remove(&self.0);
        st.procs.retain(|p| p.owner != self.0);
    }
}

thread_local! {
    static ENROLLED: Option<Enrolled> = enroll_this_thread();
}

fn default_limit() -> Duration {
    std::env::var(DEADLINE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(TEST_DEADLINE, Duration::from_secs)
}

/// libtest runs each test on a thread named after it; other threads (helpers a test spawns, or a
/// `main` thread) are not tests.
fn test_name() -> Option<String> {
    let t = std::thread::current();
    t.name()
        .filter(|n| *n != "main" && *n != "test-watchdog")
        .map(str::to_string)
}

fn enroll_this_thread() -> Option<Enrolled> {
    let name = test_name()?;
    let id = std::thread::current().id();
    lock().tests.insert(
        id,
        Test {
            name,
            started: Instant::now(),
            limit: default_limit(),
            fired: None,
        },
    );
    Some(Enrolled(id))
}

/// Puts the calling test under the watchdog (idempotent).
pub fn enroll() {
    ENROLLED.with(|_| ());
}

/// Gives the calling test `limit` from its start instead of the default.
pub fn set_deadline(limit: Duration) {
    enroll();
    if let Some(t) = lock().tests.get_mut(&std::thread::current().id()) {
        t.limit = limit;
    }
}

/// Marks `cmd` (and so every process it starts) as the calling test's.
pub fn mark(cmd: &mut Command) {
    enroll();
    if let Some(name) = test_name() {
        cmd.env(OWNER_ENV, name);
    }
}

/// Remembers a process the calling test started, with its log (filled as it prints), to print and kill
/// at the test's deadline.
pub fn track(pid: u32, name: &str, log: Arc<Mutex<Vec<String>>>) {
    enroll();
    let owner = std::thread::current().id();
    lock().procs.push(Tracked {
        pid,
        name: name.to_string(),
        owner,
        log,
    });
}

/// What the watchdog printed at each deadline it enforced in this process.
pub fn reports() -> Vec<String> {
    lock().reports.clone()
}

/// Straight to the process's stderr: `eprintln!` would go to the capture of the test whose thread
/// started the watchdog (threads inherit it), shown only if that test fails normally.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn watch() {
    let grace = std::env::var(GRACE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(GRACE, Duration::from_secs);
    loop {
        std::thread::sleep(TICK);
        let mut st = lock();
        let now = Instant::now();
        let mut exit = None;
        let due: Vec<ThreadId> = st
            .tests
            .iter()
            .filter(|(_, t)| t.fired.is_none() && now - t.started > t.limit)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let report = enforce(&st, id);
            say(&report);
            st.reports.push(report);
            if let Some(t) = st.tests.get_mut(&id) {
                t.fired = Some(now);
            }
        }
        if let Some(t) = st
            .tests
            .values()
            .find(|t| t.fired.is_some_and(|f| now - f > grace))
        {
            exit = Some(t.name.clone());
        }
        if let Some(name) = exit {
            say(&format!(
                "test watchdog: {name} did not end within {grace:?} of its processes being killed; \
                 killing every process of this test binary and exiting"
            ));
            for pid in descendants(std::process::id()) {
                kill(pid);
            }
            std::process::exit(101);
        }
    }
}

/// Prints nothing itself: returns the report of the test on thread `id`, having killed its processes.
fn enforce(st: &State, id: ThreadId) -> String {
    let t = &st.tests[&id];
    let mut report = format!(
        "test watchdog: {} has run for {:.0?}, past its deadline of {:?} ({DEADLINE_ENV} to change it); \
         killing its processes",
        t.name,
        t.started.elapsed(),
        t.limit
    );
    let only_test = st.tests.len() == 1;
    let tracked: Vec<&Tracked> = st.procs.iter().filter(|p| p.owner == id).collect();
    let mut victims: Vec<u32> = Vec::new();
    for pid in descendants(std::process::id()) {
        let owner = owner_of(pid);
        let mine = tracked.iter().any(|p| p.pid == pid)
            || owner.as_deref() == Some(t.name.as_str())
            || (owner.is_none() && only_test);
        if mine {
            victims.push(pid);
        }
    }
    // Children of a victim die with it (local workers) or are killed here all the same.
    let mut all = victims.clone();
    for &v in &victims {
        all.extend(descendants(v));
    }
    all.sort_unstable();
    all.dedup();
    for pid in &all {
        report += &format!("\n  pid {pid}: {}", cmdline(*pid));
    }
    for p in &tracked {
        let log = p.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.len().saturating_sub(LOG_TAIL);
        report += &format!(
            "\n---- {} (pid {}): last {} of {} stderr lines ----",
            p.name,
            p.pid,
            log.len() - skip,
            log.len()
        );
        for l in &log[skip..] {
            report += &format!("\n[{}] {l}", p.name);
        }
    }
    for pid in all {
        kill(pid);
    }
    report
}

/// Every live descendant of `root` (from /proc: each process's parent).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command name may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// The test a process was started for, from its environment.
fn owner_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{OWNER_ENV}=");
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(&prefix).map(str::to_string)
    })
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}
