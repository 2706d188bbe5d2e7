//! The keeper: the process that builds a session's container and holds it while ranks
//! use it (see `session.rs` for the protocol from the rank's side).
//!
//! It is a daemon (double fork, own session, no stdio of the caller), so that it is no
//! rank's child and no rank's death takes the container away from the others. It
//! counts members by pid — with a pidfd where the kernel has them (5.3+), else by
//! polling — and leaves `linger` after the last one is gone. When it leaves, the
//! namespaces lose their last process and the kernel takes the mounts down with them;
//! the FUSE server, its child, dies with it (`PR_SET_PDEATHSIG`).

use crate::fail::{Error, Result};
use crate::session::JOINED;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::socket::{getsockopt, sendmsg, sockopt::PeerCredentials, ControlMessage, MsgFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe, setsid, ForkResult, Pid, Uid};
use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Starts a keeper that runs `build` (which must leave the calling process inside the
/// finished container) and then serves joins on `listener`. Returns once the keeper is
/// ready, or with the error that stopped it.
pub fn start(listener: UnixListener, linger: Duration, build: impl FnOnce() -> Result<bool>) -> Result<()> {
    let (report_r, report_w) = pipe()?;
    // SAFETY: single-threaded; the children run only our own code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(report_r);
            let _ = setsid();
            // SAFETY: as above. The middle process exits at once, so the keeper is
            // re-parented away from the rank.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                run_keeper(listener, File::from(report_w), linger, build);
            }
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            drop(listener);
            let _ = waitpid(child, None);
            // One line: the FUSE server inherits the pipe, so it may never reach EOF.
            let mut report = String::new();
            let _ = BufReader::new(File::from(report_r)).read_line(&mut report);
            let report = report.trim_end();
            match report.strip_prefix('R') {
                Some(_) => Ok(()),
                None if report.is_empty() => Err(Error("the container keeper died while starting".into())),
                None => Err(Error(report.trim_start_matches('E').to_string())),
            }
        }
    }
}

fn run_keeper(listener: UnixListener, mut report: File, linger: Duration, build: impl FnOnce() -> Result<bool>) -> ! {
    ignore_job_signals();
    let own_user = match build() {
        Ok(own_user) => own_user,
        Err(e) => fail(report, e),
    };
    let ns = match namespace_fds(own_user) {
        Ok(ns) => ns,
        Err(e) => fail(report, e),
    };
    let _ = report.write_all(b"R\n");
    drop(report);
    crate::fuse::silence_stdio();
    serve(listener, &ns, linger);
    std::process::exit(0)
}

fn fail(mut report: File, e: Error) -> ! {
    let _ = report.write_all(format!("E{}\n", e.0.replace('\n', " ")).as_bytes());
    std::process::exit(1)
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

/// The namespaces a rank must join: user (if we made one) and mount.
fn namespace_fds(own_user: bool) -> Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    if own_user {
        fds.push(File::open("/proc/self/ns/user")?.into());
    }
    fds.push(File::open("/proc/self/ns/mnt")?.into());
    Ok(fds)
}

struct Member {
    pid: Pid,
    /// Readable when the process has exited; `None` on kernels without pidfd.
    pidfd: Option<OwnedFd>,
}

impl Member {
    fn new(pid: Pid) -> Member {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        // SAFETY: a non-negative return is a descriptor we now own.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
        Member { pid, pidfd }
    }

    fn alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                !matches!(poll(&mut p, PollTimeout::ZERO), Ok(1))
            }
            None => kill(self.pid, None) != Err(Errno::ESRCH),
        }
    }
}

/// The rank that started us joins right after we report ready; if it died before
/// that, we still leave, after this long.
const FIRST_JOIN_GRACE: Duration = Duration::from_secs(10);

/// Serves joins until the last member is gone and the linger is over. The linger ends
/// early when every launcher that started a member (the batch script's shell, `srun`'s
/// step daemon, `mpirun`'s node daemon) has exited too: a container never outlives its
/// job, whatever the process tracking of the resource manager.
fn serve(listener: UnixListener, ns: &[OwnedFd], linger: Duration) {
    let _ = listener.set_nonblocking(true);
    let me = Uid::effective();
    let mut members: Vec<Member> = Vec::new();
    let mut launchers: Vec<Member> = Vec::new();
    let mut idle_since = Instant::now();
    let mut patience = linger.max(FIRST_JOIN_GRACE);
    let mut joined = false;
    loop {
        let timeout = if members.is_empty() {
            patience.saturating_sub(idle_since.elapsed())
        } else if members.iter().any(|m| m.pidfd.is_none()) {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3600)
        };
        wait_for_event(&listener, members.iter().chain(&launchers), timeout);
        while let Ok((stream, _)) = listener.accept() {
            if let Some(pid) = admit(&stream, me, ns) {
                if let Some(parent) = parent_of(pid).filter(|p| !launchers.iter().any(|l| l.pid == *p)) {
                    launchers.push(Member::new(parent));
                }
                members.push(Member::new(pid));
                patience = linger;
                joined = true;
            }
        }
        let before = members.len();
        members.retain(Member::alive);
        launchers.retain(Member::alive);
        if members.is_empty() {
            if before > 0 {
                idle_since = Instant::now();
            }
            let job_over = joined && launchers.is_empty();
            if job_over || idle_since.elapsed() >= patience {
                // Closing the socket frees its name at once; a rank that connected in
                // the meantime sees it close, and starts a new keeper.
                return;
            }
        }
    }
}

/// The parent of a process (field 4 of /proc/PID/stat).
fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
    Some(Pid::from_raw(ppid))
}

fn wait_for_event<'a>(listener: &UnixListener, watched: impl Iterator<Item = &'a Member>, timeout: Duration) {
    let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    fds.extend(watched.filter_map(|m| m.pidfd.as_ref()).map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)));
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let _ = poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
}

/// Registers the peer (same user only) and hands it the namespaces.
fn admit(stream: &UnixStream, me: Uid, ns: &[OwnedFd]) -> Option<Pid> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let cred = getsockopt(stream, PeerCredentials).ok()?;
    if cred.uid() != me.as_raw() {
        return None;
    }
    let mut req = [0u8; 1];
    (&*stream).read_exact(&mut req).ok()?;
    let pid = Pid::from_raw(cred.pid());
    let raw: Vec<i32> = ns.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&[JOINED])], &cmsg, MsgFlags::empty(), None).ok()?;
    Some(pid)
}
