//! One container per node per job: finding it, or having it made, and joining it.
//!
//! Ranks of one job on one node, run by one user from one image, share one user and
//! mount namespace and one image mount. Cross-memory attach (single-copy MPI transfers)
//! works only between processes of one user namespace, and 64 ranks then cost one mount.
//!
//! The container is held by a *keeper* process (`keeper.rs`), not by any rank: ranks
//! come and go, the keeper counts them and leaves after the last one (plus a short
//! linger, so that a job script calling the bundle in a loop mounts once). A rank:
//! 1. derives the session key from the job (PMIx namespace, Slurm job and step, or the
//!    launcher daemon that is every local rank's parent), the image and its own view;
//! 2. connects to the keeper's socket and asks to join: the keeper registers the rank's
//!    pid and passes back its namespace descriptors;
//! 3. if nobody listens, binds the socket itself and starts a keeper with it;
//! 4. `setns` into the user and mount namespaces (its root is now the image) and execs.
//!
//! The socket is in the abstract namespace (`@bundle/UID/KEY`): binding a name there is
//! atomic, so it is also the lock that lets exactly one of 64 simultaneous ranks start
//! the keeper while the others queue on it; and the name disappears with the keeper,
//! so nothing is ever left in the file system. Both ends check the other's uid.
//! Only the rank that starts a keeper reads the image tables; a joining rank's
//! start-up is a connect, one message and two `setns`.

use crate::fail::{Context, Error, Result};
use nix::cmsg_space;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{getsockopt, recvmsg, sockopt::PeerCredentials, ControlMessageOwned, MsgFlags};
use nix::unistd::Uid;
use std::fs;
use std::io::{ErrorKind, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The keeper's reply to a join: this byte, then the namespace descriptors.
pub const JOINED: u8 = b'J';

enum Answer {
    Joined(Vec<OwnedFd>),
    /// Nobody listens under this name.
    NoKeeper,
    /// A keeper of another user holds the name.
    Foreign,
    /// The keeper went away while we asked (it was leaving, or failed to start).
    Retry,
    /// The keeper holds the name but did not answer in [`JOIN_WAIT`]: it is wedged.
    Silent,
}

/// How long a join waits for the keeper's answer. A keeper answers in microseconds once
/// it serves; ranks that arrive while it builds the container wait for the build, which
/// in extract mode unpacks the image (a few GB a minute).
const JOIN_WAIT: Duration = Duration::from_secs(120);

/// Joins the session's container, starting a keeper with `start` (which gets the bound
/// socket) if none is running. On return this process is inside the container's
/// namespaces, its root the image.
pub fn attach(key: &str, start: impl FnOnce(UnixListener) -> Result<()>) -> Result<()> {
    let me = Uid::effective();
    let mut name = format!("bundle/{me}/{key}");
    let mut start = Some(start);
    for _ in 0..200 {
        let addr =
            SocketAddr::from_abstract_name(&name).context(|| format!("cannot name the session socket @{name}"))?;
        match ask(&addr, me) {
            Answer::Joined(fds) => return enter(fds),
            Answer::Retry => continue,
            Answer::Foreign => {
                eprintln!(
                    "bundle: warning: another user holds the session name {name}; this run gets a container of its own"
                );
                name = format!("bundle/{me}/{key}/{}", std::process::id());
            }
            // A wedged keeper must not hang every later run of the job: go around it.
            Answer::Silent => {
                eprintln!(
                    "bundle: warning: the container keeper of @{name} did not answer in {} s; this run gets a \
                     container of its own",
                    JOIN_WAIT.as_secs()
                );
                name = format!("bundle/{me}/{key}/{}", std::process::id());
            }
            Answer::NoKeeper => match UnixListener::bind_addr(&addr) {
                Ok(listener) => match start.take() {
                    Some(start) => start(listener)?,
                    None => {
                        return Err(Error("the container keeper stopped while starting; see the error above".into()))
                    }
                },
                // Another rank bound it an instant ago and is about to listen.
                Err(e) if e.kind() == ErrorKind::AddrInUse => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(Error(format!("cannot create the session socket @{name}: {e}"))),
            },
        }
    }
    Err(Error("could not join or start the container keeper".into()))
}

/// Asks the keeper at `addr` to register us.
fn ask(addr: &SocketAddr, me: Uid) -> Answer {
    let mut s = match UnixStream::connect_addr(addr) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Answer::NoKeeper,
        Err(_) => return Answer::Retry,
    };
    match getsockopt(&s, PeerCredentials) {
        Ok(c) if c.uid() == me.as_raw() => {}
        _ => return Answer::Foreign,
    }
    let _ = s.set_read_timeout(Some(JOIN_WAIT));
    let _ = s.set_write_timeout(Some(JOIN_WAIT));
    if s.write_all(b"j").is_err() {
        return Answer::Retry;
    }
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = cmsg_space!([std::os::fd::RawFd; 2]);
    let msg = match recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN) => return Answer::Silent,
        Err(_) => return Answer::Retry,
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.bytes == 1 && byte[0] == JOINED && !fds.is_empty() {
        Answer::Joined(fds)
    } else {
        Answer::Retry
    }
}

/// `setns` into what the keeper sent: its user namespace (absent in kernel mode, as
/// root) and then its mount namespace.
fn enter(fds: Vec<OwnedFd>) -> Result<()> {
    let (user, mnt) = match fds.len() {
        2 => (Some(&fds[0]), &fds[1]),
        _ => (None, &fds[0]),
    };
    if let Some(user) = user {
        setns(user, CloneFlags::CLONE_NEWUSER).context(|| "cannot join the container's user namespace".to_string())?;
    }
    setns(mnt, CloneFlags::CLONE_NEWNS).context(|| "cannot join the container's mount namespace".to_string())?;
    Ok(())
}

/// The session key: a digest of everything two processes must have in common to share
/// a container (image, mode, the paths bound for them, and the job).
pub fn key(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    bundle_format::hex(&h.finalize()[..16])
}

/// Which job this process belongs to, as its launcher tells, without any flag:
/// `--bundle-share`/`BUNDLE_SHARE` first (`off`: a container of our own), then the PMIx
/// namespace (`mpirun`, `srun --mpi=pmix`), then Slurm's job and step, and otherwise
/// the parent process — `mpirun`'s and `srun`'s per-node daemons are the parent of
/// every local rank, and a job script's shell the parent of every run in a loop.
pub fn job(flag: Option<&str>) -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match flag.map(str::to_string).or_else(|| var("BUNDLE_SHARE")) {
        Some(off) if ["off", "0", "no", "false"].contains(&off.as_str()) => {
            return format!("private:{}", std::process::id())
        }
        Some(key) => return format!("key:{key}"),
        None => {}
    }
    if let Some(ns) = var("PMIX_NAMESPACE") {
        return format!("pmix:{ns}");
    }
    if let Some(job) = var("SLURM_JOB_ID") {
        return format!("slurm:{job}.{}", var("SLURM_STEP_ID").unwrap_or_else(|| "batch".into()));
    }
    let ppid = nix::unistd::getppid();
    format!("parent:{ppid}:{}", start_time(ppid.as_raw()).unwrap_or_default())
}

/// A process's start time (field 22 of /proc/PID/stat), so that a reused pid is a
/// different parent.
fn start_time(pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(19).map(str::to_string)
}
