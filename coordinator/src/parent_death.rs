//! Local workers die with their coordinator, SIGKILL of the coordinator included: the kernel sends each
//! one SIGKILL when the coordinator goes (`PR_SET_PDEATHSIG`), so no orphan keeps a device busy or
//! computes for a coordinator that is gone.
//!
//! SIGKILL rather than SIGTERM: a worker's SIGTERM drain hands its leases back to the coordinator,
//! which is exactly what is gone, and a worker in the middle of a long forward pass would linger for it;
//! nothing it holds is worth keeping (a rerun recomputes what the journal lacks).
//!
//! Linux delivers the signal when the *thread* that forked the worker exits, not the process. The
//! coordinator spawns its workers from the thread that drives its async runtime (`block_on` in `main`,
//! or a runtime worker), which lives as long as the process; never spawn them from `spawn_blocking`,
//! whose threads exit when idle.

#![allow(unsafe_code)]

/// Makes the child that `cmd` starts receive SIGKILL when this process goes.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls
    // are allowed: prctl and getppid are plain system calls, and the error path builds an io::Error
    // from an errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The coordinator may have died between fork and prctl, before there was anything to
            // deliver the signal on its death: then the worker is already an orphan and must not start.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
