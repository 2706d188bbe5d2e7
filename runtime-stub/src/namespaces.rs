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

/// How every "no user namespace here" error begins: the keeper reports its errors to
/// the rank as a line of text, and the rank tells this one by it (to fall back to host
/// mode when the mode was not forced).
pub const UNAVAILABLE: &str = "cannot create a user namespace";

/// Whether `e` says that no user namespace can be made here.
pub fn is_unavailable(e: &Error) -> bool {
    e.0.starts_with(UNAVAILABLE)
}

/// A limit on unprivileged user namespaces that the host's settings show, with the fix
/// an administrator can apply; `None` when none is set (a seccomp filter, or a limit in
/// an enclosing namespace, shows only when `unshare` fails).
pub fn known_limit() -> Option<String> {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some(
            "user namespaces are disabled (sysctl user.max_user_namespaces=0); an administrator can \
             enable them with `sysctl -w user.max_user_namespaces=15000`"
                .into(),
        );
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some(
            "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0); an \
             administrator can enable them with `sysctl -w kernel.unprivileged_userns_clone=1`"
                .into(),
        );
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Some(
            "AppArmor restricts unprivileged user namespaces \
             (sysctl kernel.apparmor_restrict_unprivileged_userns=1); an administrator can allow \
             bundles with an AppArmor profile that grants `userns,`, or set the sysctl to 0"
                .into(),
        );
    }
    None
}

fn explain_unshare(e: Errno) -> Error {
    let hint = known_limit().unwrap_or_else(|| {
        match e {
            Errno::EPERM | Errno::EACCES => {
                "a security policy forbids it (a seccomp filter, as inside many containers, or \
                 SELinux); run with --bundle-mode=host, or ask the administrators to allow \
                 unprivileged user namespaces"
            }
            Errno::ENOSPC | Errno::EUSERS => {
                "the limit on user namespaces is reached (user.max_user_namespaces, here or in an \
                 enclosing namespace); run with --bundle-mode=host, or ask the administrators to \
                 raise it"
            }
            Errno::EINVAL => "this kernel does not support user namespaces; run with --bundle-mode=host",
            _ => "the kernel refused; run with --bundle-mode=host",
        }
        .to_string()
    });
    Error(format!("{UNAVAILABLE} ({e}): {hint}"))
}
