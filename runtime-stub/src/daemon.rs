//! What the stub's background processes (the keeper, the FUSE server) have in common:
//! they are forked with a pipe on which they say when they are ready (or why not), they
//! ignore the signals meant for the application, and they hold none of its stdio.

use crate::fail::{Context, Result};
use nix::fcntl::{open, OFlag};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{fork, pipe, ForkResult, Pid};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// The helpers this process forked (the keeper's FUSE server): the container depends on
/// them, so the keeper watches them.
static HELPERS: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

/// The processes [`fork_reporting`] made in this process.
pub fn helpers() -> Vec<Pid> {
    HELPERS.lock().map(|h| h.clone()).unwrap_or_default()
}

/// Forks `what`: the child runs `child` with the write end of a pipe and exits with the
/// status it returns; the parent gets the child's pid and the read end, on which the
/// child reports. Call only while single-threaded.
pub fn fork_reporting(what: &str, child: impl FnOnce(File) -> i32) -> Result<(Pid, File)> {
    let (report_r, report_w) = pipe().context(|| format!("cannot make a pipe for {what}"))?;
    // SAFETY: we are single-threaded here, so the child may run arbitrary code.
    match unsafe { fork() }.context(|| format!("cannot fork {what}"))? {
        ForkResult::Child => {
            drop(report_r);
            std::process::exit(child(File::from(report_w)))
        }
        ForkResult::Parent { child } => {
            if let Ok(mut h) = HELPERS.lock() {
                h.push(child);
            }
            Ok((child, File::from(report_r)))
        }
    }
}

/// Names this process as `ps -e`, `top` and `pgrep` show it (`bundle-keeper`,
/// `bundle-fuse`), so that an administrator can tell it from the application, whose
/// command line it still carries.
pub fn name(name: &str) {
    if let Ok(n) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&n);
    }
}

/// Signals meant for the application (a terminal's ^C, `scancel`'s SIGTERM) must not
/// take the container away while the application is still handling them.
pub fn ignore_job_signals() {
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
}

/// A daemon keeps no terminal or pipe of the caller open: `$(./app.sif)` must see EOF
/// when the application closes its output.
pub fn silence_stdio() {
    if let Ok(null) = open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
