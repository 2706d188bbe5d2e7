//! The user and mount namespaces every bundle runs in.
//!
//! The caller keeps their own uid and gid inside (mapped to themselves, not to root):
//! MPI's PMIx checks the peer's credentials, and files the application writes to the
//! host must belong to the user. Network, PID, IPC and UTS namespaces stay the host's.

use crate::fail::{Error, Result};
use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{Gid, Uid};
use std::fs;

/// Enters new user and mount namespaces with uid and gid mapped to themselves. (How
/// mounts propagate is the first of the start-up steps, `steps.rs`.)
pub fn enter(uid: Uid, gid: Gid) -> Result<()> {
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        return Err(explain_unshare(e));
    }
    // An unprivileged process may map only its own ids, and only after giving up
    // setgroups(2) (which could otherwise drop a group that denies access).
    fs::write("/proc/self/setgroups", "deny").map_err(|e| Error(format!("cannot write /proc/self/setgroups: {e}")))?;
    fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))
        .map_err(|e| Error(format!("cannot write /proc/self/uid_map: {e}")))?;
    fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
        .map_err(|e| Error(format!("cannot write /proc/self/gid_map: {e}")))?;
    Ok(())
}

/// Kernel mode, as root: a mount namespace is all we need (and a user namespace would
/// only take away the right to mount a block device).
pub fn enter_mount_only() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| Error(format!("cannot create a mount namespace: {e}")))
}

fn explain_unshare(e: Errno) -> Error {
    let hint = match e {
        Errno::EPERM | Errno::EACCES => {
            "unprivileged user namespaces are disabled on this host \
             (see sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces, \
             or an AppArmor/SELinux policy); ask the administrators to enable them"
        }
        Errno::ENOSPC | Errno::EUSERS => {
            "the limit on user namespaces is reached (sysctl user.max_user_namespaces); \
             ask the administrators to raise it"
        }
        Errno::EINVAL => "this kernel does not support user namespaces",
        _ => "the kernel refused",
    };
    Error(format!("cannot create a user namespace ({e}): {hint}"))
}
