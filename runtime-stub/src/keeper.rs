//! The keeper: the process that builds a session's container and holds it while ranks
//! use it (see `session.rs` for the protocol from the rank's side).
//!
//! It is a daemon (double fork, own session, no stdio of the caller), so that it is no
//! rank's child and no rank's death takes the container away from the others. It
//! counts members by pid — with a pidfd where the kernel has them (5.3+), else by
//! polling — and leaves `linger` after the last one is gone. When it leaves, the
//! namespaces lose their last process and the kernel takes the mounts down with them;
//! the FUSE server, its child, dies with it (`PR_SET_PDEATHSIG`).

use crate::daemon;
use crate::fail::{Context, Error, Result};
use crate::session::JOINED;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::kill;
use nix::sys::socket::{getsockopt, sendmsg, sockopt::PeerCredentials, ControlMessage, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setsid, ForkResult, Pid, Uid};
use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Starts a keeper that runs `build` (which must leave the calling process inside the
/// finished container) and then serves joins on `listener`. Returns once the keeper is
/// ready, or with the error that stopped it. The keeper first moves off the bundle
/// file's pages onto a private copy (`private_pages.rs`); if that fails, it goes on
/// from the file's pages, as any other program does.
pub fn start(listener: UnixListener, linger: Duration, build: impl FnOnce() -> Result<bool>) -> Result<()> {
    let (middle, report) = daemon::fork_reporting("the container keeper", |report| {
        let _ = setsid();
        // SAFETY: single-threaded; the middle process exits at once, so the keeper is
        // re-parented away from the rank.
        if let Ok(ForkResult::Child) = unsafe { fork() } {
            let _ = crate::private_pages::take();
            run_keeper(listener, report, linger, build);
        }
        // SAFETY: leave without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(0) }
    })?;
    let _ = waitpid(middle, None);
    // A keeper that neither reports nor dies (wedged while building) must not hold
    // this run forever; the socket it holds is gone around by later runs (session.rs).
    let mut ready = [PollFd::new(report.as_fd(), PollFlags::POLLIN)];
    let ms = START_WAIT.as_millis() as i32;
    if !matches!(poll(&mut ready, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(1)) {
        return Err(Error(format!("the container keeper did not start in {} s", START_WAIT.as_secs())));
    }
    // One line: the FUSE server inherits the pipe, so it may never reach EOF.
    let mut report_line = String::new();
    let _ = BufReader::new(report).read_line(&mut report_line);
    read_report(report_line.trim_end())
}

/// How long a run waits for the keeper it started to build the container (extract
/// mode unpacks the image meanwhile).
const START_WAIT: Duration = Duration::from_secs(600);

/// The keeper's one line: `R` when ready, `E` and the message when it failed.
fn read_report(line: &str) -> Result<()> {
    if line.starts_with('R') {
        return Ok(());
    }
    match line.strip_prefix('E') {
        Some(message) => Err(Error(message.to_string())),
        None => Err(Error("the container keeper died while starting".into())),
    }
}

fn run_keeper(listener: UnixListener, mut report: File, linger: Duration, build: impl FnOnce() -> Result<bool>) -> ! {
    daemon::ignore_job_signals();
    daemon::name("bundle-keeper");
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
    daemon::silence_stdio();
    serve(listener, &ns, linger);
    std::process::exit(0)
}

fn fail(mut report: File, e: Error) -> ! {
    let _ = report.write_all(format!("E{}\n", e.0.replace('\n', " ")).as_bytes());
    std::process::exit(1)
}

/// The namespaces a rank must join: user (if we made one) and mount.
fn namespace_fds(own_user: bool) -> Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    if own_user {
        fds.push(open_namespace("/proc/self/ns/user")?);
    }
    fds.push(open_namespace("/proc/self/ns/mnt")?);
    Ok(fds)
}

fn open_namespace(path: &str) -> Result<OwnedFd> {
    Ok(File::open(path).context(|| format!("cannot open {path}"))?.into())
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

    /// For a child of ours: whether it still runs (a dead child is a zombie until
    /// reaped, which `kill(pid, 0)` would count as alive).
    fn child_alive(&self) -> bool {
        matches!(waitpid(self.pid, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive))
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

/// How often processes are polled where the kernel has no pidfd.
const POLL: Duration = Duration::from_millis(200);

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
    // The FUSE server: when it dies the mount is dead, and a rank that joined would find
    // nothing to run. Leave at once; the next run starts a new container.
    let helpers: Vec<Member> = daemon::helpers().into_iter().map(Member::new).collect();
    loop {
        // Without pidfds (kernels before 5.3), processes are polled.
        let polling = members.iter().chain(&helpers).any(|m| m.pidfd.is_none());
        let idle_left = patience.saturating_sub(idle_since.elapsed());
        let timeout = match (members.is_empty(), polling) {
            (true, true) => idle_left.min(POLL),
            (true, false) => idle_left,
            (false, true) => POLL,
            (false, false) => Duration::from_secs(3600),
        };
        wait_for_event(&listener, members.iter().chain(&launchers).chain(&helpers), timeout);
        if helpers.iter().any(|h| !h.child_alive()) {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::read_report;

    #[test]
    fn a_keeper_error_reaches_the_user_whole() {
        assert!(read_report("R").is_ok());
        assert_eq!(read_report("EEMFILE: too many open files").unwrap_err().0, "EMFILE: too many open files");
        assert_eq!(read_report("").unwrap_err().0, "the container keeper died while starting");
    }
}
