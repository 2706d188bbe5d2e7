//! One container per node per job: finding it, or having it made, and joining it.
//!
//! Ranks of one job on one node, run by one user from one image, share one user and
//! mount namespace and one image mount. Cross-memory attach (single-copy MPI transfers)
//! works only between processes of one user namespace, and 64 ranks then cost one mount.
//!
//! The container is held by a *keeper* process (`keeper.rs`), not by any rank: ranks
//! come and go, the keeper counts them and leaves after the last one (plus a short
//! linger, so that a job script calling the bundle in a loop mounts once). A rank:
//! 1. derives the session key from the job (Slurm job and step, PMIx namespace, or the
//!    launcher daemon that is every local rank's parent), the image and its own view;
//! 2. connects to the keeper's socket and asks to join: the keeper registers the rank's
//!    pid and passes back its namespace descriptors;
//! 3. if nobody answers, takes the session lock, checks again, and starts the keeper;
//! 4. `setns` into the user and mount namespaces (its root is now the image) and execs.
//!
//! Only the rank that starts a keeper reads the image tables; a joining rank's start-up
//! is a connect, one message and two `setns`.

use crate::fail::{Context, Error, Result};
use nix::cmsg_space;
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::unistd::Uid;
use std::fs::{self, OpenOptions};
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The keeper's reply to a join: this byte, then the namespace descriptors.
pub const JOINED: u8 = b'J';

/// Where a session's socket and lock live.
pub struct Rendezvous {
    pub socket: PathBuf,
    pub lock: PathBuf,
}

impl Rendezvous {
    /// `$XDG_RUNTIME_DIR/bundle`, else `/tmp/bundle-UID`: a directory only we can use.
    pub fn for_key(key: &str) -> Result<Rendezvous> {
        let uid = Uid::effective();
        let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(d) if d.is_dir() => d.join("bundle"),
            _ => PathBuf::from(format!("/tmp/bundle-{uid}")),
        };
        private_dir(&dir, uid)?;
        Ok(Rendezvous { socket: dir.join(format!("{key}.sock")), lock: dir.join(format!("{key}.lock")) })
    }
}

/// Creates `dir` mode 0700, or checks that an existing one is ours and private: another
/// user must not be able to plant a socket there and hand us their namespaces.
fn private_dir(dir: &Path, uid: Uid) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error(format!("cannot create {}: {e}", dir.display()))),
    }
    let m = fs::symlink_metadata(dir).context(|| format!("cannot read {}", dir.display()))?;
    if !m.is_dir() || m.uid() != uid.as_raw() || m.mode() & 0o077 != 0 {
        return Err(Error(format!(
            "{} is not a private directory of yours (owner {}, mode {:o}); remove it or set XDG_RUNTIME_DIR",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Joins the session's container, starting a keeper with `start` if none is running.
/// On return this process is inside the container's namespaces, its root the image.
pub fn attach(rv: &Rendezvous, start: impl FnOnce() -> Result<()>) -> Result<()> {
    // Fast path: a keeper is there (every rank but the first, and warm starts).
    if let Some(fds) = try_join(&rv.socket) {
        return enter(fds);
    }
    let _held = lock(&rv.lock)?;
    // Whoever held the lock before us may have started one.
    if let Some(fds) = try_join(&rv.socket) {
        return enter(fds);
    }
    let _ = fs::remove_file(&rv.socket);
    if let Err(e) = start() {
        let _ = fs::remove_file(&rv.socket);
        return Err(e);
    }
    match try_join(&rv.socket) {
        Some(fds) => enter(fds),
        None => Err(Error("the container keeper started but does not answer".into())),
    }
}

/// Takes the session lock. A keeper that leaves removes the lock file while holding it,
/// so a lock taken on a file that is no longer at `path` is worthless: take it again.
fn lock(path: &Path) -> Result<Flock<fs::File>> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .context(|| format!("cannot open {}", path.display()))?;
        let held = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error(format!("cannot lock {}: {e}", path.display())))?;
        let same = match (fs::metadata(path), held.metadata()) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok(held);
        }
    }
}

/// Asks the keeper at `socket` to register us; `None` if there is no keeper (or it is
/// on its way out, in which case the caller retries under the lock).
fn try_join(socket: &Path) -> Option<Vec<OwnedFd>> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(b"j").ok()?;
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = cmsg_space!([std::os::fd::RawFd; 2]);
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    (msg.bytes == 1 && byte[0] == JOINED && !fds.is_empty()).then_some(fds)
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
